"""Run the benchmark suites and write ``benchmarks/results/<device-slug>-<YYYY-MM-DD>.json``.

Usage (from the repository root)::

    python benchmarks/run.py            # everything this machine can run (GPU suites need CUDA)
    python benchmarks/run.py --cpu      # only the cheap CPU suite (marker cpu_bench)
    python benchmarks/run.py --smoke --budget 0.05 --output /tmp/smoke.json  # CI: scripts run
    python benchmarks/run.py --gpu      # only the CUDA suites (marker gpu_bench)
    python benchmarks/run.py --gpu --kernel   # CUDA kernel benchmarks, no UNet
    python benchmarks/run.py --gpu --unet     # CUDA UNet-step benchmarks only
    python benchmarks/run.py --cpu -- -k interpreter   # anything after -- goes to pytest

The result file is pytest-benchmark's ``--benchmark-json`` (every round's time is kept) plus an
``environment`` section (device, driver, CUDA, library versions) and the skipped benchmarks with
their reasons, added by ``benchmarks/conftest.py``. A second run on the same day gets ``-2``,
``-3``... instead of overwriting. Afterwards ``benchmarks/report.py`` writes the Markdown report
and plot next to it (``--no-report`` to skip).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.environment import device_slug  # noqa: E402

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# --smoke: the smallest case of every CPU benchmark function (each implementation and mode), so
# that CI proves run.py, the benchmark tests and report.py run, at a fraction of the CPU suite.
SMOKE_SELECTION = (
    "b2h20q49k49d64 or test_triton_interpreter or latent16 or test_tiny_generation_cpu"
)
SUITES = {
    "kernel": ["benchmarks/test_bench_kernel.py", "benchmarks/test_bench_kernel_cpu.py"],
    "unet": ["benchmarks/test_bench_unet.py", "benchmarks/test_bench_unet_cpu.py"],
}


def result_path(slug: str, day: dt.date, results_dir: Path = RESULTS_DIR) -> Path:
    """``<results_dir>/<slug>-<day>.json``, or ``...-2.json`` etc. if that file exists."""
    stem = f"{slug}-{day.isoformat()}"
    path = results_dir / f"{stem}.json"
    counter = 2
    while path.exists():
        path = results_dir / f"{stem}-{counter}.json"
        counter += 1
    return path


def pytest_command(args: argparse.Namespace, json_path: Path) -> list[str]:
    """The pytest command line for the chosen suites."""
    paths = []
    if args.kernel:
        paths += SUITES["kernel"]
    if args.unet:
        paths += SUITES["unet"]
    command = [sys.executable, "-m", "pytest", *(paths or ["benchmarks"])]
    # Always an explicit -m: it replaces pyproject's addopts, which deselects every benchmark.
    if args.cpu:
        command += ["-m", "cpu_bench"]
    elif args.gpu:
        command += ["-m", "gpu_bench"]
    else:
        command += ["-m", "cpu_bench or gpu_bench or unet_bench"]
    command += [
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        "--benchmark-group-by=group",
        "--benchmark-sort=name",
        "--benchmark-columns=median,iqr,min,max,rounds,iterations",
        "-p",
        "no:cacheprovider",
        "-q",
        # One process: pyproject's addopts run tests under pytest-xdist (-n auto), which
        # pytest-benchmark answers by disabling every benchmark.
        "-n",
        "0",
    ]
    if args.smoke:
        command += ["-k", SMOKE_SELECTION]
    if args.budget is not None:
        command.append(f"--bench-budget={args.budget}")
    return command + list(args.pytest_args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cpu", action="store_true", help="only the CPU suite (cpu_bench)")
    where.add_argument("--gpu", action="store_true", help="only the CUDA suites (gpu_bench)")
    where.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest case of every CPU benchmark (implies the CPU suite; for CI)",
    )
    parser.add_argument("--kernel", action="store_true", help="only the attention benchmarks")
    parser.add_argument("--unet", action="store_true", help="only the UNet-step benchmarks")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds of timed rounds per benchmark"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for PyTorch (sets OMP_NUM_THREADS; default: PyTorch's choice)",
    )
    parser.add_argument("--output", type=Path, default=None, help="result file to write")
    parser.add_argument("--no-report", action="store_true", help="do not run report.py after")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    args.cpu = args.cpu or args.smoke
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path = args.output or result_path(device_slug(cpu_only=args.cpu), dt.date.today())
    json_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = pytest_command(args, json_path)
    print("+", " ".join(command), flush=True)
    returncode = subprocess.call(command, cwd=REPO_ROOT, env=env)
    if not json_path.exists():
        print(f"no result file was written ({json_path})", file=sys.stderr)
        return returncode or 1
    print(f"results: {json_path}")
    if not args.no_report:
        from benchmarks import report

        report.main([str(json_path)])
    return returncode


if __name__ == "__main__":
    sys.exit(main())
