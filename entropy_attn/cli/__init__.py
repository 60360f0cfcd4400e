"""The ``entropy-attn`` command: demo, generate, layers, entropy, eval, bench.

Run ``entropy-attn --help`` (or ``python -m entropy_attn.cli --help``) and ``entropy-attn
COMMAND --help``. One module per command (``demo``, ``generate``, ``layers``, ``entropy``,
``eval``, ``bench``: each has ``add_parser`` and ``run``); ``models`` holds the registry of model
names and loading, ``common`` the start-up checks shared by the commands, ``output`` the tables
and image grids.

Exit codes: 0 success, 2 a usage problem or something missing (bad argument, optional library,
model or metric weights not found), as argparse does; the message says what and how to fix it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._extras import MissingExtra
from ..science import evaluation
from . import bench, demo, entropy, generate, layers
from . import eval as eval_command
from .common import EXIT_USAGE, CLIError

COMMANDS = (demo, generate, layers, entropy, eval_command, bench)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``entropy-attn`` and its subcommands."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="entropy-attn",
        description=(
            "Training-free variable-size generation for diffusion models (Jin et al., NeurIPS "
            "2023): the self-attention scale sqrt(log_T(N)/d). Commands compare stock and "
            "entropy-attn images, tabulate per-layer N, T and lambda, reproduce the paper's "
            "entropy figures and FID/CLIP tables, and run the benchmarks. Sizes are "
            "WIDTHxHEIGHT in pixels (the Python API takes (height, width))."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``entropy-attn``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"] and argv[1:2] not in (["-h"], ["--help"]):
        # run.py's options are its own: pass everything after `bench` through untouched.
        args = argparse.Namespace(command="bench", func=bench.run, bench_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, MissingExtra, evaluation.MetricUnavailable) as error:
        print(f"entropy-attn {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, NotImplementedError) as error:
        print(f"entropy-attn {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


__all__ = ["COMMANDS", "CLIError", "build_parser", "main"]
