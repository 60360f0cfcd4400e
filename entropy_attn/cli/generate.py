"""``entropy-attn generate``: one image at any size with entropy-attn (and stock with --compare)."""

from __future__ import annotations

import argparse
import time

from ..fixes.positions import PRESETS
from ..integration import enabled
from ..science.evaluation import format_size
from .common import (
    CLIError,
    add_runtime_options,
    announce_out,
    check_out,
    check_steps,
    generate_image,
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
    require_prompts,
)
from .output import image_grid, slug

DEFAULT_OUT = "entropy-attn-out"


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "generate",
        help="one image at any size, optionally next to stock",
        description="Generate one image with entropy-attn at --size (with --compare also stock).",
    )
    parser.add_argument("--model", required=True, help=model_help())
    parser.add_argument("--prompt", required=True)
    parser.add_argument(
        "--size",
        required=True,
        help="WIDTHxHEIGHT or S (square) in pixels, e.g. 768x512 or 768 (the Python API takes "
        "(height, width))",
    )
    parser.add_argument(
        "--compare", action="store_true", help="also stock, plus a side-by-side PNG"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default: built in 4, real 30)"
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})"
    )
    fixes = parser.add_argument_group(
        "size fixes beside the scale (enable's options; docs/usage.md, Size fixes)"
    )
    fixes.add_argument(
        "--positions",
        choices=PRESETS,
        default="stock",
        help="position preset for RoPE DiTs ('interpolate' also SD3); default: stock",
    )
    fixes.add_argument(
        "--redilate", action="store_true", help="UNets: ScaleCrafter's re-dilated convolutions"
    )
    fixes.add_argument(
        "--no-scale",
        action="store_true",
        help="the fixes above without the paper's scale (needs --positions or --redilate)",
    )
    add_runtime_options(parser)
    parser.set_defaults(func=run)
    return parser


def enable_options(args: argparse.Namespace) -> tuple[str, dict]:
    """The method's name (file names, labels) and ``enable``'s keyword arguments."""
    if args.no_scale and args.positions == "stock" and not args.redilate:
        raise CLIError("--no-scale without --positions or --redilate would generate stock")
    options = {"positions": args.positions, "redilate": args.redilate, "scale": not args.no_scale}
    name = "entropy-attn" + ("-no-scale" if args.no_scale else "")
    if args.positions != "stock":
        name += f"-{args.positions}"
    if args.redilate:
        name += "-redilate"
    return name, options


def run(args: argparse.Namespace) -> int:
    """Run ``entropy-attn generate``; returns the exit code."""
    size = parse_sizes([args.size], "--size")[0]
    check_steps(args.steps)
    spec = args.model
    check_model_name(spec)
    require_prompts(spec, "generate")
    ours, fixes = enable_options(args)
    device = resolve_device(args.device)
    dtype = model_dtype(spec, args.dtype, device)
    options = {"dtype": dtype, "device": device, "force": args.force}
    check_sizes(spec, [size], "--size", **options)
    require()
    steps = default_steps(spec, args.steps)
    check_out(args.out)
    pipe = load_pipeline(spec, device=device, dtype=dtype)
    check_sizes(pipe, [size], "--size", **options)
    with enabled(pipe, **fixes):  # refuses a fix the model has not, before anything is drawn
        pass
    out = make_out(args.out)
    announce_out(out)
    methods = ("stock", ours) if args.compare else (ours,)
    stem = f"{slug(args.prompt)}-{format_size(size)}-seed{args.seed}"
    images = []
    for method in methods:
        start = time.perf_counter()
        label = f"{method} {format_size(size)}"
        if method == ours:
            with enabled(pipe, **fixes):
                image = generate_image(
                    pipe, args.prompt, size, steps, args.seed, args.guidance_scale, label=label
                )
        else:
            image = generate_image(
                pipe, args.prompt, size, steps, args.seed, args.guidance_scale, label=label
            )
        seconds = time.perf_counter() - start
        path = out / f"{stem}-{method}.png"
        image.save(path)
        images.append(image)
        print(f"{method}: {path} ({seconds:.2f} s, {steps} steps)", flush=True)
    if args.compare:
        path = out / f"{stem}-compare.png"
        image_grid(
            [(m, [im]) for m, im in zip(methods, images, strict=True)], [format_size(size)]
        ).save(path)
        print(f"side by side: {path}")
    return 0
