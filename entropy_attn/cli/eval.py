"""``entropy-attn eval``: the paper's Tables 1-2 protocol (FID / CLIP score per size), resumable
and shardable with ``accelerate launch``; for the trained digits models (``digits-unet``,
``digits-dit``) the quality table of :func:`entropy_attn.zoo.evaluate` (offline)."""

from __future__ import annotations

import argparse

from .._quiet import quiet_library_logs
from ..science import evaluation
from ..science.evaluation import METHODS
from .common import (
    CLIError,
    add_runtime_options,
    announce_out,
    check_out,
    check_steps,
    make_out,
    parse_sizes,
    require,
    resolve_device,
)
from .models import (
    check_digits_sizes,
    check_model_name,
    check_sizes,
    default_steps,
    load_pipeline,
    model_dtype,
    model_help,
    takes_labels,
)

DEFAULT_OUT = "entropy-attn-eval"
DIGITS_N_PER_CELL = 300  # zoo.evaluate's default
DIGITS_SIZES = ((8, 8), (4, 4), (12, 12), (16, 16), (8, 16))  # (height, width): zoo's defaults


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "eval",
        help="paper Tables 1-2: FID and CLIP score per size, stock vs entropy-attn",
        description=(
            "Generate one image per prompt at each size, stock and entropy-attn (seed + prompt "
            "index, same noise for both), saved as they are made (a rerun resumes), then compute "
            "FID against --reference-images and CLIP score, and write results.csv and "
            "results.md. Under `accelerate launch` each process takes a shard of the prompts. "
            "With --model digits-unet or digits-dit (trained, shipped, offline; class labels, "
            "no prompts): classifier accuracy, paired McNemar test, blob rate and Frechet "
            "distance per size (entropy_attn.zoo.evaluate), written to quality-<model>.csv and "
            "quality-<model>.md; default sizes 8x8 (training), 4, 12, 16 and 16x8."
        ),
    )
    parser.add_argument("--model", required=True, help=model_help())
    parser.add_argument(
        "--prompts", default=None, help="text file, one prompt per line (text-to-image models)"
    )
    parser.add_argument("--reference-images", default=None, help="folder of real images (for FID)")
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        help="sizes (WIDTHxHEIGHT or S), e.g. 224 768x512 (required except for the digits "
        "models: default 8 4 12 16 16x8)",
    )
    parser.add_argument(
        "--metrics",
        nargs="*",
        default=["fid", "clip"],
        choices=evaluation.METRICS,
        help="metrics to compute (default: fid clip; none: only generate)",
    )
    parser.add_argument("--n", type=int, default=None, help="use the first N prompts")
    parser.add_argument(
        "--n-per-cell",
        type=int,
        default=None,
        help="digits models: samples per size and method, labels 0-9 in turn (default: "
        f"{DIGITS_N_PER_CELL})",
    )
    parser.add_argument(
        "--positions",
        nargs="+",
        default=None,
        choices=("interpolate", "extend"),
        help="digits-dit: position embedding off the training size (default: interpolate)",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default: built in 4, real 30)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per pipeline call")
    parser.add_argument(
        "--fid-features",
        default=None,
        help="feature extractor file (torch.export .pt2 or TorchScript) instead of InceptionV3",
    )
    parser.add_argument(
        "--inception-weights",
        default=None,
        help="InceptionV3 weights file (default: the torch hub cache)",
    )
    parser.add_argument(
        "--fid-size", type=int, default=299, help="images are resized to this square"
    )
    parser.add_argument(
        "--clip-model",
        default=evaluation.DEFAULT_CLIP_MODEL,
        help="CLIP model folder or Hugging Face id in the cache",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_runtime_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``entropy-attn eval``; returns the exit code."""
    if takes_labels(args.model):
        return run_digits(args)
    for option, value in (("--n-per-cell", args.n_per_cell), ("--positions", args.positions)):
        if value is not None:
            raise CLIError(f"{option} applies to the digits models, not --model {args.model!r}")
    for option, value in (("--prompts", args.prompts), ("--sizes", args.sizes)):
        if value is None:
            raise CLIError(f"--model {args.model!r} needs {option}")
    # Cheap checks first: arguments and files, then the model name, then optional libraries.
    if args.fid_size < 16:
        raise CLIError(f"--fid-size must be >= 16 pixels, got {args.fid_size}")
    prompts = evaluation.read_prompts(args.prompts, args.n)
    sizes = parse_sizes(args.sizes, "--sizes")
    check_steps(args.steps)
    metrics = list(dict.fromkeys(args.metrics))
    if "fid" in metrics and not args.reference_images:
        raise CLIError("--metrics fid needs --reference-images DIR")
    spec = args.model
    check_model_name(spec)
    device = resolve_device(args.device)
    dtype = model_dtype(spec, args.dtype, device)
    size_options = {"dtype": dtype, "device": device, "force": args.force}
    check_sizes(spec, sizes, "--sizes", **size_options)
    check_out(args.out)
    require()
    evaluation.check_metrics(
        metrics,
        fid_features=args.fid_features,
        inception_weights=args.inception_weights,
        clip_model=args.clip_model,
    )
    references = evaluation.list_images(args.reference_images) if "fid" in metrics else []
    state = evaluation.process_state(cpu=device.type == "cpu")
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    is_main = state.is_main_process if state else True
    if state is not None and world > 1:  # under accelerate each process has its device
        device = state.device
    steps = default_steps(spec, args.steps)
    out = make_out(args.out)
    if is_main:
        announce_out(out)
    evaluation.check_run_settings(
        out,
        {
            "model": spec,
            "steps": steps,
            "seed": args.seed,
            "guidance_scale": args.guidance_scale,
            "dtype": str(dtype).removeprefix("torch."),
            "prompts": prompts,
        },
        write=is_main,
    )
    tag = f"[process {rank}/{world}] " if world > 1 else ""
    mine = evaluation.shard(len(prompts), rank, world)
    pending = sum(
        not evaluation.image_path(out, method, size, i).is_file()
        for size in sizes
        for method in METHODS
        for i in mine
    )
    pipe = None
    if pending:  # a finished run resumes without loading the model
        pipe = load_pipeline(spec, device=device, dtype=dtype)
        check_sizes(pipe, sizes, "--sizes", **size_options)
    print(
        f"{tag}{len(prompts)} prompts x {len(sizes)} sizes x {len(METHODS)} methods; this "
        f"process: {len(mine)} prompts, {pending} images to generate",
        flush=True,
    )
    with quiet_library_logs():
        report = evaluation.generate_images(
            pipe,
            prompts,
            sizes,
            out,
            steps=steps,
            seed=args.seed,
            guidance_scale=args.guidance_scale,
            batch_size=args.batch_size,
            process_index=rank,
            num_processes=world,
            progress=not args.no_progress,
        )
    print(
        f"{tag}generated {report.generated} new images in {report.seconds:.1f} s; "
        f"{report.skipped} already on disk"
    )
    if state is not None:
        state.wait_for_everyone()
    if not is_main:
        return 0
    del pipe
    rows = evaluation.compute_metrics(
        prompts,
        sizes,
        out,
        metrics=metrics,
        reference_images=references,
        fid_features=args.fid_features,
        inception_weights=args.inception_weights,
        fid_size=args.fid_size,
        clip_model=args.clip_model,
        device=device,
        progress=not args.no_progress,
    )
    description = (
        f"Model `{spec}`, {steps} steps, seeds {args.seed}..{args.seed + len(prompts) - 1}, "
        f"{len(prompts)} prompts from `{args.prompts}`"
        + (
            f", FID against {len(references)} reference images at {args.fid_size}px"
            if references
            else ""
        )
        + "."
    )
    csv_path, md_path = evaluation.write_results(rows, out, description=description)
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {csv_path} and {md_path}")
    return 0


def _refuse_prompt_options(args: argparse.Namespace) -> None:
    """Options of the prompt protocol that the digits table does not use: refused, not ignored."""
    defaults = {
        "--prompts": (args.prompts, None),
        "--reference-images": (args.reference_images, None),
        "--metrics": (args.metrics, ["fid", "clip"]),
        "--n": (args.n, None),
        "--batch-size": (args.batch_size, 1),
        "--fid-features": (args.fid_features, None),
        "--inception-weights": (args.inception_weights, None),
        "--fid-size": (args.fid_size, 299),
        "--clip-model": (args.clip_model, evaluation.DEFAULT_CLIP_MODEL),
        "--guidance-scale": (args.guidance_scale, None),
    }
    given = [option for option, (value, default) in defaults.items() if value != default]
    if given:
        raise CLIError(
            f"{', '.join(given)}: --model {args.model!r} takes class labels and has its own "
            "metrics (classifier accuracy, McNemar, blobs, Frechet); these options are for "
            "text-to-image models. Use --sizes, --n-per-cell, --steps, --seed, --positions."
        )


def run_digits(args: argparse.Namespace) -> int:
    """``eval`` of a trained digits model: :func:`entropy_attn.zoo.evaluate`'s quality table."""
    spec = args.model
    _refuse_prompt_options(args)
    check_steps(args.steps)
    n_per_cell = DIGITS_N_PER_CELL if args.n_per_cell is None else args.n_per_cell
    if n_per_cell < 2:
        raise CLIError(f"--n-per-cell must be >= 2, got {n_per_cell}")
    sizes = parse_sizes(args.sizes, "--sizes") if args.sizes else list(DIGITS_SIZES)
    positions = list(dict.fromkeys(args.positions or ["interpolate"]))
    if "extend" in positions and spec != "digits-dit":
        raise CLIError(f"--positions extend applies to digits-dit (a DiT), not --model {spec!r}")
    device = resolve_device(args.device)
    dtype = model_dtype(spec, args.dtype, device)
    steps = default_steps(spec, args.steps)
    check_sizes(spec, sizes, "--sizes", dtype=dtype, device=device, force=args.force)
    check_digits_sizes(spec, sizes)
    check_out(args.out)
    require()
    from .. import zoo

    pipe = load_pipeline(spec, device=device, dtype=dtype)
    out = make_out(args.out)
    announce_out(out)
    print(
        f"model {spec}: {len(sizes)} sizes x {len(positions)} positions x {len(METHODS)} "
        f"methods x {n_per_cell} samples, DDIM {steps} steps, seed {args.seed}",
        flush=True,
    )
    zoo.evaluate(
        pipe,
        sizes,
        n_per_cell=n_per_cell,
        steps=steps,
        seed=args.seed,
        positions=positions,
        out_dir=out,
        name=spec,
        progress=not args.no_progress,
    )
    csv_path, md_path = out / f"quality-{spec}.csv", out / f"quality-{spec}.md"
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {csv_path} and {md_path}")
    return 0
