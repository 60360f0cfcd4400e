"""``entropy-attn entropy``: the paper's Figs. 5-6 from recorded attention entropy, plus CSVs."""

from __future__ import annotations

import argparse
import time

import torch

from .. import configs
from .._quiet import quiet_library_logs
from ..integration import vae_scale_factor_of
from ..science import analysis, evaluation, plots
from ..science.evaluation import METHODS, format_size
from .common import (
    DEFAULT_PROMPT,
    DIFFUSERS_MODULES,
    PLOT_MODULES,
    CLIError,
    add_runtime_options,
    announce_out,
    check_multiple,
    check_out,
    check_steps,
    denoiser_progress,
    make_out,
    one_cpu_thread,
    parse_sizes,
    progress,
    require,
    resolve_device,
    resolve_dtype,
    show_progress,
    sizes_for_entropy,
)
from .models import (
    check_digits_sizes,
    check_model_name,
    check_sizes,
    default_steps,
    load_pipeline,
    model_dtype,
    model_help,
    require_prompts,
    takes_labels,
)
from .output import ENTROPY_COLUMNS, format_table, write_csv

DEFAULT_OUT = "entropy-attn-entropy"
FIT_COLUMNS = ("method", "train_tokens", "points", "slope", "intercept", "rms")


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "entropy",
        help="paper Figs. 5-6: attention entropy vs ln N, per layer, stock vs entropy-attn",
        description=(
            "Record mean self-attention entropy per layer at each size, stock and entropy-attn. "
            "Writes entropy.csv (one row per method, size and layer), fits.csv and "
            "fig5_entropy_vs_log_n.png (level-mean entropy vs ln N with least-squares lines and "
            "slopes, paper Fig. 5) and fig6_layer_entropy.png (per-layer entropy at the smallest "
            "and largest size, paper Fig. 6)."
        ),
    )
    parser.add_argument("--model", required=True, help=model_help())
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        help="sizes (WIDTHxHEIGHT or S), e.g. 224 384 448 512 768 (default: 0.5x..1.5x train)",
    )
    parser.add_argument("--prompts", default=None, help="text file, one prompt per line")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps per prompt (default: built in 2, real 10; random weights 1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="shipped architecture with random weights, bare UNet on Gaussian inputs",
    )
    add_runtime_options(parser)
    parser.set_defaults(func=run)
    return parser


def _load(args, spec: str, device: torch.device, dtype: torch.dtype, prompts):
    """``(model, vae factor, steps, prompts)`` for the run."""
    if args.random_weights:
        # float32 is what the configs build; passing it would only cast.
        model = configs.build_denoiser(
            spec, device=device, dtype=None if dtype == torch.float32 else dtype
        )
        return model, configs.vae_scale_factor(spec), args.steps or 1, prompts
    model = load_pipeline(spec, device=device, dtype=dtype)
    factor = vae_scale_factor_of(model, None)
    steps = default_steps(spec, args.steps, entropy=True)
    return model, factor, steps, prompts or [DEFAULT_PROMPT]


def run(args: argparse.Namespace) -> int:
    """Run ``entropy-attn entropy``; returns the exit code."""
    check_steps(args.steps)
    spec = args.model
    given_sizes = parse_sizes(args.sizes, "--sizes") if args.sizes else None
    prompts = evaluation.read_prompts(args.prompts) if args.prompts else None
    if args.random_weights:
        if spec not in configs.ARCHITECTURES:
            raise CLIError(
                f"--random-weights needs a shipped architecture name "
                f"({', '.join(configs.ARCHITECTURES)}), got --model {spec!r}"
            )
        if prompts is not None:
            raise CLIError("--prompts needs a pipeline; --random-weights runs the bare UNet")
    check_model_name(spec)
    if takes_labels(spec):
        return run_digits(args, spec, given_sizes)
    require_prompts(spec, "entropy")
    device = resolve_device(args.device)
    if args.random_weights:
        dtype = resolve_dtype(args.dtype, device)
        check_multiple(given_sizes or [], configs.vae_scale_factor(spec), "--sizes")
    else:
        dtype = model_dtype(spec, args.dtype, device)
    options = {"dtype": dtype, "device": device, "force": args.force}
    if given_sizes and not args.random_weights:  # a bare UNet decodes nothing: no VAE memory
        check_sizes(spec, given_sizes, "--sizes", **options)
    check_out(args.out)
    require(DIFFUSERS_MODULES + PLOT_MODULES)
    model, factor, steps, prompts = _load(args, spec, device, dtype, prompts)
    train = analysis.training_size(model, factor)
    sizes = given_sizes or sizes_for_entropy(train, factor * 4)
    check_sizes(model, sizes, "--sizes", **options)
    out = make_out(args.out)
    announce_out(out)
    print(
        f"model {spec}{' (random weights, bare UNet)' if args.random_weights else ''}: "
        f"training size {format_size(train)}; sizes {', '.join(format_size(s) for s in sizes)}; "
        f"{steps} steps x {len(prompts or [None])} prompt(s), seed {args.seed}",
        flush=True,
    )
    rows: list[analysis.LayerEntropy] = []
    per_size: dict[tuple[int, int], dict[str, list]] = {size: {} for size in sizes}
    runs = [(size, method) for size in sizes for method in METHODS]
    start = time.perf_counter()
    for size, method in progress(runs, desc="entropy", total=len(runs)):
        show_progress(model, f"{method} {format_size(size)}", leave=False)
        with quiet_library_logs():
            per_size[size][method] = analysis.layer_entropy(
                model,
                size,
                method=method,
                steps=steps,
                seed=args.seed,
                guidance_scale=args.guidance_scale,
                vae_scale_factor=factor,
                **({"prompts": prompts} if prompts is not None else {}),
            )
        rows += per_size[size][method]
    seconds = time.perf_counter() - start
    write_csv(out / "entropy.csv", [r.as_dict() for r in rows], ENTROPY_COLUMNS)
    fits = analysis.fit_levels(rows)
    fit_rows = [
        {
            "method": f.method,
            "train_tokens": f.train_tokens,
            "points": len(f.n_values),
            "slope": f.fit.slope,
            "intercept": f.fit.intercept,
            "rms": f.fit.rms,
        }
        for f in fits
    ]
    write_csv(out / "fits.csv", fit_rows, FIT_COLUMNS)
    summary = [
        {
            "size": format_size(size),
            "stock": analysis.mean_self_entropy(per_size[size]["stock"]),
            "entropy-attn": analysis.mean_self_entropy(per_size[size]["entropy-attn"]),
        }
        for size in sizes
    ]
    for row in summary:
        row["difference"] = row["entropy-attn"] - row["stock"]
    print("\nMean self-attention entropy (nats) per size:")
    print(format_table(summary, list(summary[0]), "text"))
    print("Least-squares fit of level-mean entropy vs ln N (paper Fig. 5), per UNet level T:")
    print(format_table(fit_rows, FIT_COLUMNS, "text") if fit_rows else "(needs >= 2 sizes)\n")
    written = [out / "entropy.csv", out / "fits.csv"]
    if fits:
        written.append(
            plots.plot_entropy_vs_log_n(
                fits, out / "fig5_entropy_vs_log_n.png", title=f"{spec}: entropy vs ln N"
            )
        )
    small, large = min(sizes, key=lambda s: s[0] * s[1]), max(sizes, key=lambda s: s[0] * s[1])
    series = {
        f"{format_size(size)} {method}": per_size[size][method]
        for size in dict.fromkeys([small, large])
        for method in METHODS
    }
    written.append(
        plots.plot_layer_entropy(
            series,
            out / "fig6_layer_entropy.png",
            title=f"{spec}: per-layer self-attention entropy",
        )
    )
    print(f"{seconds:.1f} s; wrote {', '.join(str(p) for p in written)}")
    return 0


DIGITS_SIZES = ((4, 4), (8, 8), (12, 12), (16, 16))  # (height, width): 0.5x to 2x of 8x8


def run_digits(args: argparse.Namespace, spec: str, sizes) -> int:
    """Figs. 5-6 for a trained digits model, next to the same architecture at random
    initialisation (:func:`entropy_attn.zoo.attention.attention_study`): entropy, entropy / ln N
    and logit variance per layer while sampling digits 0-9."""
    given = [o for o, v in (("--prompts", args.prompts), ("--guidance-scale", args.guidance_scale))
             if v is not None]  # fmt: skip
    if given:
        raise CLIError(
            f"{' and '.join(given)}: --model {spec!r} takes class labels (digits 0-9), not prompts"
        )
    sizes = sizes or list(DIGITS_SIZES)
    check_digits_sizes(spec, sizes)
    device = resolve_device(args.device)
    dtype = model_dtype(spec, args.dtype, device)
    check_sizes(spec, sizes, "--sizes", dtype=dtype, device=device, force=args.force)
    steps = args.steps or 10
    check_out(args.out)
    require(PLOT_MODULES)
    from ..zoo.attention import attention_study
    from ..zoo.report import random_init_pipeline

    pipe = load_pipeline(spec, device=device, dtype=dtype)
    out = make_out(args.out)
    announce_out(out)
    print(
        f"model {spec}: training size {format_size(pipe.train_size)}; sizes "
        f"{', '.join(format_size(s) for s in sizes)}; digits 0-9 x 2, DDIM {steps} steps, seed "
        f"{args.seed}; then the same architecture at random initialisation (2 steps)",
        flush=True,
    )
    start = time.perf_counter()
    summary = []
    for label, model, model_steps in (
        (spec, pipe, steps),
        (f"{spec}-random-init", random_init_pipeline(spec, args.seed), 2),
    ):
        with quiet_library_logs():
            model.to(device=device, dtype=dtype)
        # One bar per model over its denoiser calls (sizes x methods x steps, each call a batch
        # of the 20 samples), with one CPU thread as in the demo.
        calls = len(sizes) * len(METHODS) * model_steps
        with one_cpu_thread(device), denoiser_progress(model, total=calls, desc=label):
            rows = attention_study(
                model, spec, out, sizes=sizes, steps=model_steps, seed=args.seed, label=label
            )
        for size in sizes:
            for method in METHODS:
                chosen = [  # layers seeing one key (N = 1, ln N = 0) have no ratio
                    r
                    for r in rows
                    if (r["height"], r["width"]) == size
                    and r["method"] == method
                    and r["kind"] == "self"
                    and r["entropy_over_ln_n"] is not None
                ]
                if not chosen:
                    continue
                summary.append(
                    {
                        "model": label,
                        "size": format_size(size),
                        "method": method,
                        "entropy": sum(r["entropy"] for r in chosen) / len(chosen),
                        "entropy / ln N": sum(r["entropy_over_ln_n"] for r in chosen) / len(chosen),
                    }
                )
    seconds = time.perf_counter() - start
    print("\nMean self-attention entropy (nats) and entropy / ln N per size:")
    print(format_table(summary, list(summary[0]), "text"))
    names = [
        f"{kind}-{label}.{ext}"
        for label in (spec, f"{spec}-random-init")
        for kind, ext in (("attention", "csv"), ("fig5", "png"), ("fig6", "png"))
    ]
    print(f"{seconds:.1f} s; wrote {', '.join(str(out / n) for n in names)}")
    return 0
