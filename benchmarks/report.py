"""Turn benchmark result files into Markdown tables and a TFLOP/s plot, with the targets checked.

Usage::

    python benchmarks/report.py benchmarks/results/<file>.json [more.json ...]
        [--out-dir DIR] [--no-plot]

For each result file it writes ``<stem>.md`` and ``<stem>-tflops.png`` (next to the file unless
``--out-dir``). Every number in the report comes from that one file (medians of the timed rounds,
the ``extra_info`` the benchmarks recorded, the ``environment`` section), so every ratio compares
numbers measured in the same run on the same device; files are never mixed.

The parts, in the order they are used: ``report_results`` (load a file, group its entries into
rows), ``report_targets`` (the speed targets, met / not met), ``report_format`` (cells, tables),
``report_markdown`` (the sections and the whole report), ``report_plot`` (the figure).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report_markdown import render_markdown  # noqa: E402
from benchmarks.report_plot import plot_tflops  # noqa: E402
from benchmarks.report_results import load_result  # noqa: E402


def write_report(path: str | Path, out_dir: str | Path | None = None, plot: bool = True) -> Path:
    """Write ``<stem>.md`` (and ``<stem>-tflops.png``) for one result file; returns the .md."""
    result = load_result(path)
    target_dir = Path(out_dir) if out_dir is not None else result.path.parent
    target_dir.mkdir(parents=True, exist_ok=True)
    stem = result.path.stem
    plot_name = None
    if plot:
        plot_path = target_dir / f"{stem}-tflops.png"
        try:
            if plot_tflops(result, plot_path):
                plot_name = plot_path.name
        except ImportError as error:  # matplotlib missing: the tables still stand
            print(f"no plot ({error})", file=sys.stderr)
    markdown_path = target_dir / f"{stem}.md"
    markdown_path.write_text(render_markdown(result, plot_name), encoding="utf-8")
    return markdown_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Markdown report of benchmark result files")
    parser.add_argument("results", nargs="+", type=Path, help="result JSON files")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: next to each file")
    parser.add_argument("--no-plot", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    for path in args.results:
        written = write_report(path, args.out_dir, plot=not args.no_plot)
        print(f"report: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
