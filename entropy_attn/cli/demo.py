"""``entropy-attn demo``: stock vs entropy-attn at half, the training and 1.5x the training size."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from .. import analysis
from ..evaluation import METHODS, format_size
from ..integration import layer_table
from .common import (
    DEFAULT_PROMPT,
    DIFFUSERS_MODULES,
    PLOT_MODULES,
    add_runtime_options,
    announce_out,
    check_memory,
    check_out,
    check_steps,
    generate_image,
    make_out,
    require,
    resolve_device,
    sizes_around,
)
from .models import (
    check_model_name,
    default_steps,
    load_pipeline,
    model_dtype,
    model_help,
    vae_channels,
)
from .output import ENTROPY_COLUMNS, format_table, image_grid, write_csv

DEFAULT_MODEL = "tiny-sd"
DEFAULT_OUT = "entropy-attn-demo"


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "demo",
        help="stock vs entropy-attn at a smaller, the training and a larger size",
        description=(
            "Generate one prompt at half, the training and 1.5x the training size, stock and "
            "with entropy-attn (same seed); write a labelled grid (grid.png), a per-layer "
            "entropy plot (entropy.png, entropy.csv) and the images; print the layer table and "
            "timings. Without --model it runs the built-in tiny-sd pipeline (random weights: "
            "the images are noise-like, the mechanics are real)."
        ),
    )
    parser.add_argument("--model", default=None, help=model_help(DEFAULT_MODEL))
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default: built in 4, real 30)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    add_runtime_options(parser)
    parser.set_defaults(func=run)
    return parser


def size_table(pipe, sizes: Sequence[tuple[int, int]]) -> str:
    """One row per attention layer; N and lambda for each size."""
    tables = [layer_table(pipe, size) for size in sizes]
    columns = ["name", "kind", "heads", "head_dim", "T"]
    for size in sizes:
        columns += [f"N@{format_size(size)}", f"lambda@{format_size(size)}"]
    rows = []
    for infos in zip(*tables, strict=True):
        first = infos[0]
        row = {
            "name": first.name,
            "kind": first.kind,
            "heads": first.heads,
            "head_dim": first.head_dim,
            "T": first.train_tokens,
        }
        for size, info in zip(sizes, infos, strict=True):
            row[f"N@{format_size(size)}"] = info.n_tokens
            row[f"lambda@{format_size(size)}"] = info.scale
        rows.append(row)
    return format_table(rows, columns, "text")


def run(args: argparse.Namespace) -> int:
    """Run ``entropy-attn demo``; returns the exit code."""
    spec = args.model or DEFAULT_MODEL
    check_steps(args.steps)
    check_model_name(spec)
    device = resolve_device(args.device)
    require(DIFFUSERS_MODULES + PLOT_MODULES)
    dtype = model_dtype(spec, args.dtype, device)
    steps = default_steps(spec, args.steps)
    check_out(args.out)
    pipe = load_pipeline(spec, device=device, dtype=dtype)
    train = analysis.training_size(pipe)
    sizes = sizes_around(train)
    check_memory(
        sizes, vae_channels(pipe), dtype=dtype, device=device, force=args.force, option="size"
    )
    out = make_out(args.out)
    announce_out(out)
    print(
        f"model {spec}: training size {format_size(train)}; sizes "
        f"{', '.join(format_size(s) for s in sizes)}; {steps} steps, seed {args.seed}, "
        f"{device} {str(dtype).removeprefix('torch.')}"
    )
    print(f'prompt: "{args.prompt}"\n')
    print("Attention layers (N: key tokens now, T: at the training size, lambda: softmax scale):")
    print(size_table(pipe, sizes), flush=True)
    images: dict[str, list] = {method: [] for method in METHODS}
    series: dict[str, list] = {}
    timings = []
    csv_rows = []
    for size in sizes:
        for method in METHODS:
            with analysis.recording(pipe, size, method=method) as rec:
                start = time.perf_counter()
                image = generate_image(
                    pipe,
                    args.prompt,
                    size,
                    steps,
                    args.seed,
                    args.guidance_scale,
                    label=f"{method} {format_size(size)}",
                )
                seconds = time.perf_counter() - start
                rows = rec.layers()
            image.save(out / f"{method}-{format_size(size)}.png")
            images[method].append(image)
            series[f"{format_size(size)} {method}"] = rows
            csv_rows += [row.as_dict() for row in rows]
            timings.append(
                {
                    "size": format_size(size),
                    "method": method,
                    "seconds": seconds,
                    "mean self-attn entropy": analysis.mean_self_entropy(rows),
                }
            )
    grid = image_grid(
        [(method, images[method]) for method in METHODS], [format_size(s) for s in sizes]
    )
    grid.save(out / "grid.png", optimize=True)
    analysis.plot_layer_entropy(
        series,
        out / "entropy.png",
        title=f"{spec}: per-layer self-attention entropy, stock vs entropy-attn",
    )
    write_csv(out / "entropy.csv", csv_rows, ENTROPY_COLUMNS)
    print("Generation (seconds include entropy recording) and mean self-attention entropy:")
    print(format_table(timings, list(timings[0]), "text"))
    print(f"wrote {out / 'grid.png'}, {out / 'entropy.png'}, {out / 'entropy.csv'} and the images")
    return 0
