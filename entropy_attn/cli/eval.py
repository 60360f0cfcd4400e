"""``entropy-attn eval``: the paper's Tables 1-2 protocol (FID / CLIP score per size), resumable
and shardable with ``accelerate launch``."""

from __future__ import annotations

import argparse

from .. import evaluation
from .._quiet import quiet_library_logs
from ..evaluation import METHODS
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
    check_model_name,
    check_sizes,
    default_steps,
    load_pipeline,
    model_dtype,
    model_help,
)

DEFAULT_OUT = "entropy-attn-eval"


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "eval",
        help="paper Tables 1-2: FID and CLIP score per size, stock vs entropy-attn",
        description=(
            "Generate one image per prompt at each size, stock and entropy-attn (seed + prompt "
            "index, same noise for both), saved as they are made (a rerun resumes), then compute "
            "FID against --reference-images and CLIP score, and write results.csv and "
            "results.md. Under `accelerate launch` each process takes a shard of the prompts."
        ),
    )
    parser.add_argument("--model", required=True, help=model_help())
    parser.add_argument("--prompts", required=True, help="text file, one prompt per line")
    parser.add_argument("--reference-images", default=None, help="folder of real images (for FID)")
    parser.add_argument(
        "--sizes", nargs="+", required=True, help="sizes (WIDTHxHEIGHT or S), e.g. 224 768x512"
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
