"""``entropy-attn layers``: the per-layer N, T and lambda table, without running the model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..integration import find_denoiser, layer_table, training_latent_size
from ..integration.families import family_of
from .common import CLIError, check_multiple, parse_sizes, require
from .models import (
    builtin_names,
    check_model_name,
    known_vae_factor,
    label_names,
    load_architecture,
    shipped_names,
)
from .output import LAYER_COLUMNS, format_table, layer_rows


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "layers",
        help="per-layer N, T and lambda at a size, without running the model",
        description=(
            "The attention layers at an image size: kind, heads, head dim, N (key tokens now), "
            "T (key tokens at the training size), lambda (softmax scale) and whether entropy-attn "
            "changes it. Nothing runs and no weights are loaded (shipped names are built on the "
            "meta device; a pipeline folder or id is read from its config files)."
        ),
    )
    parser.add_argument(
        "--model",
        required=True,
        help=f"shipped configs: {', '.join(shipped_names())}; built in: "
        f"{', '.join(builtin_names() + label_names())}; or a pipeline folder / Hugging Face id "
        "(configs only)",
    )
    parser.add_argument(
        "--size",
        default=None,
        help="WIDTHxHEIGHT or S (square) in pixels, e.g. 768x512 (default: the training size)",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="video models: frames at --size (default: the training frame count)",
    )
    parser.add_argument(
        "--train-frames",
        type=int,
        default=None,
        help="video models: override the training frame count",
    )
    parser.add_argument("--format", default="text", choices=("text", "markdown", "csv"))
    parser.add_argument(
        "--layers",
        default="self",
        choices=("self", "all"),
        help="which layers entropy-attn rescales (default: self, as the paper)",
    )
    parser.add_argument(
        "--train-size", default=None, help="override the training size (WIDTHxHEIGHT or S)"
    )
    parser.add_argument("--out", default=None, help="write to this file (default: print to stdout)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``entropy-attn layers``; returns the exit code."""
    size = parse_sizes([args.size], "--size")[0] if args.size else None
    options = {"layers": args.layers}
    if args.train_size:
        options["train_size"] = parse_sizes([args.train_size], "--train-size")[0]
    for option, value in (("frames", args.frames), ("train_frames", args.train_frames)):
        if value is not None:
            options[option] = value
    check_model_name(args.model)
    if size is not None:
        check_multiple([size], known_vae_factor(args.model), "--size")
    require()
    model, factor = load_architecture(args.model)
    if size is None:
        size = _training_size(model, factor, options.get("train_size"))
    check_multiple([size], factor, "--size")
    try:
        infos = layer_table(model, size, vae_scale_factor=factor, **options)
    except NotImplementedError as error:
        raise CLIError(f"--model {args.model!r}: {error}") from None
    except ValueError as error:
        if args.frames is None and args.train_frames is None:
            raise
        raise CLIError(f"--model {args.model!r}: {error}") from None
    text = format_table(layer_rows(infos), LAYER_COLUMNS, args.format)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _training_size(model, factor: int, train_size) -> tuple[int, int]:
    """``(height, width)`` in pixels of the model's training size (the ``--size`` default)."""
    if train_size is not None:
        return train_size
    denoiser = find_denoiser(model)
    family = family_of(denoiser)
    if family is not None:
        height, width = family.defaults(denoiser.config)[0]
    else:
        latent = training_latent_size(denoiser, None if denoiser is model else model)
        height, width = latent[0] * factor, latent[1] * factor
    return height, width
