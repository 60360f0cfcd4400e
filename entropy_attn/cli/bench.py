"""``entropy-attn bench``: run ``benchmarks/run.py`` of the source checkout, arguments passed on."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .._extras import missing
from .common import CLIError


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "bench",
        help="run the benchmark suite (benchmarks/run.py of a source checkout)",
        description=(
            "Runs `python benchmarks/run.py ARGS` from the repository this package is installed "
            "from; every argument after `bench` is passed on (e.g. `entropy-attn bench --cpu`; "
            "`entropy-attn bench -- --help` shows run.py's own options). Results go to "
            "benchmarks/results/ unless run.py's --output says otherwise."
        ),
    )
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for run.py")
    parser.set_defaults(func=run)
    return parser


def benchmarks_runner() -> Path:
    """``benchmarks/run.py`` of the source checkout this package is imported from."""
    return Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def run(args: argparse.Namespace) -> int:
    """Run ``entropy-attn bench``; returns run.py's exit code."""
    runner = benchmarks_runner()
    if not runner.is_file():
        raise CLIError(
            f"entropy-attn bench runs the benchmark suite in the repository's benchmarks/ folder "
            f"({runner} is not there: an installed package does not include it). Clone the "
            'repository, install it with `pip install -e ".[dev]"` and run `entropy-attn bench` '
            "(or `python benchmarks/run.py`) from the clone."
        )
    absent = missing(("pytest", "pytest_benchmark"))
    if absent:
        raise CLIError(
            f"the benchmarks run under {' and '.join(absent)}, which "
            f'{"is" if len(absent) == 1 else "are"} not installed: pip install -e ".[dev]" '
            "in the clone"
        )
    forwarded = list(args.bench_args)
    if forwarded[:1] == ["--"]:
        forwarded = forwarded[1:]
    command = [sys.executable, str(runner), *forwarded]
    print("running: " + " ".join(command), flush=True)
    return subprocess.call(command, cwd=runner.parent.parent)
