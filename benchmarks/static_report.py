"""Static report of the attention kernel: compiled ahead of time for sm_90 and sm_80, no GPU.

Usage (from the repository root)::

    python benchmarks/static_report.py                 # default tiles, writes the result files
    python benchmarks/static_report.py --all-configs   # every tile the autotuner may pick
    python benchmarks/static_report.py --jobs 2 --output benchmarks/results/NAME

For each architecture (sm_90, sm_80), head dim (40, 64, 80, 128, 160) and entropy off / on, it
compiles the kernel the way a launch on real tensors would (``tests/aot_compile.py``: fp16,
diffusers' ``(B, L, H, D)`` layout, N = 4096, Triton's bundled ``ptxas``) with the first tile of
the autotuning list (the tile used without autotuning, ``ENTROPY_ATTN_AUTOTUNE=0``) or, with
``--all-configs``, every tile the pruner keeps, and reads the cubin with the bundled
``cuobjdump``: registers per thread, stack bytes (register spills), shared memory, and the key
loop's instruction counts per logit (all instructions, MMA, ``MUFU.EX2``, FP32 arithmetic) on
the loop's common path (the conditional rescale skipped). These are static counts of one pass
through the loop body, an estimate of the work per logit, not a timing.

Writes ``<output>.json`` (one record per compiled variant) and ``<output>.md`` (the tables);
the default output is ``benchmarks/results/static-sm90-sm80-triton<version>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AOT_SCRIPT = REPO_ROOT / "tests" / "aot_compile.py"
HEAD_DIMS = (40, 64, 80, 128, 160)
ARCHES = (90, 80)
# The target for the default tile at d=64, fp16, sm_90.
TARGET_OFF_PER_LOGIT = 7.0
TARGET_ON_OVER_OFF = 1.08


def variants(
    arches=ARCHES, head_dims=HEAD_DIMS, dtype: str = "fp16", layout: str = "blhd", which="first"
) -> list[list]:
    """Variant lists in ``tests/aot_compile.py``'s format, one per (arch, head dim, entropy)."""
    return [
        [dtype, head_dim, arch, entropy, layout, which]
        for arch in arches
        for head_dim in head_dims
        for entropy in (False, True)
    ]


def compile_variants(batch: list[list], jobs: int = 2, progress=print) -> list[dict]:
    """Compile ``batch`` in ``jobs`` subprocesses of ``tests/aot_compile.py``; records in order."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    chunks = [batch[i::jobs] for i in range(jobs) if batch[i::jobs]]

    def run(chunk: list[list]) -> list[dict]:
        records = []
        with subprocess.Popen(
            [sys.executable, str(AOT_SCRIPT), json.dumps(chunk)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ) as process:
            for line in process.stdout:  # one JSON line per compiled variant, as it finishes
                if line.startswith("{"):
                    records.append(json.loads(line))
                    progress(describe(records[-1]))
            error = process.stderr.read()
        if process.returncode != 0:
            raise RuntimeError(f"aot_compile.py failed:\n{error[-4000:]}")
        return records

    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        results = list(pool.map(run, chunks))
    records = [r for chunk in results for r in chunk]
    order = {tuple(v[:5]): i for i, v in enumerate(batch)}
    return sorted(records, key=lambda r: order[variant_key(r)])


def variant_key(record: dict) -> tuple:
    return tuple(record[k] for k in ("dtype", "head_dim", "arch", "entropy", "layout"))


def tile_name(record: dict) -> str:
    c = record["config"]
    return f"{c['BLOCK_M']}x{c['BLOCK_N']} w{c['warps']} s{c['stages']}"


def describe(record: dict) -> str:
    loop = record.get("inner_loop") or {}
    return (
        f"sm_{record['arch']} d={record['head_dim']} entropy={'on' if record['entropy'] else 'off'}"
        f" {tile_name(record)}: {record['registers']} regs, stack {record['stack_bytes']} B,"
        f" {loop.get('instructions_per_logit')} instr/logit"
    )


def on_over_off(records: list[dict]) -> dict[tuple, float]:
    """Entropy-on over entropy-off instructions per logit, per (arch, head dim, dtype, tile)."""
    per = {}
    for r in records:
        key = (r["arch"], r["head_dim"], r["dtype"], r["layout"], tile_name(r))
        per.setdefault(key, {})[r["entropy"]] = r["inner_loop"]["instructions_per_logit"]
    return {k: v[True] / v[False] for k, v in per.items() if True in v and False in v and v[False]}


def target_lines(records: list[dict], triton_version: str) -> list[str]:
    """The issue's target at d=64, fp16, sm_90, on the default (first) tile."""
    first = [
        r
        for r in records
        if r["arch"] == 90 and r["head_dim"] == 64 and r["dtype"] == "fp16" and r["first"]
    ]
    off = next((r for r in first if not r["entropy"]), None)
    on = next((r for r in first if r["entropy"]), None)
    if off is None or on is None:
        return ["Target (d=64, fp16, sm_90, default tile): not measured."]
    off_count = off["inner_loop"]["instructions_per_logit"]
    ratio = on["inner_loop"]["instructions_per_logit"] / off_count
    met_off = "met" if off_count <= TARGET_OFF_PER_LOGIT else "not met"
    met_on = "met" if ratio <= TARGET_ON_OVER_OFF else "not met"
    return [
        f"Targets at d=64, fp16, sm_90, default tile {tile_name(off)}, Triton {triton_version}:",
        f"- entropy off <= {TARGET_OFF_PER_LOGIT} instructions per logit: {off_count:.2f}"
        f" ({met_off})",
        f"- entropy on <= {TARGET_ON_OVER_OFF}x entropy off: {ratio:.3f}x ({met_on})",
    ]


def render_markdown(records: list[dict], triton_version: str) -> str:
    ratios = on_over_off(records)
    lines = [
        f"# Static kernel report (Triton {triton_version}, compiled ahead of time, no GPU)",
        "",
        "Written by `benchmarks/static_report.py`: fp16, diffusers' (B, L, H, D) layout, N = 4096."
        " Per-logit counts are the key loop's common path (conditional rescale skipped) divided"
        " by the logits one thread handles per key tile; static counts, not timings.",
        "",
        *target_lines(records, triton_version),
        "",
        "| sm | d | entropy | tile | first | regs | stack B | smem KiB | instr/logit | on/off"
        " | MMA/tile | EX2/logit | FP32/logit | loop body (cond.) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        loop = r["inner_loop"] or {}
        key = (r["arch"], r["head_dim"], r["dtype"], r["layout"], tile_name(r))
        ratio = f"{ratios[key]:.3f}" if r["entropy"] and key in ratios else ""
        lines.append(
            f"| {r['arch']} | {r['head_dim']} | {'on' if r['entropy'] else 'off'}"
            f" | {tile_name(r)} | {'yes' if r['first'] else ''} | {r['registers']}"
            f" | {r['stack_bytes']} | {r['shared_bytes'] / 1024:.1f}"
            f" | {loop.get('instructions_per_logit', '')} | {ratio} | {loop.get('mma', '')}"
            f" | {loop.get('ex2_per_logit', '')} | {loop.get('fp32_per_logit', '')}"
            f" | {loop.get('body', '')} ({loop.get('conditional', '')}) |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--all-configs", action="store_true", help="every selectable tile")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHES))
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(HEAD_DIMS))
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16"))
    parser.add_argument("--jobs", type=int, default=2, help="compiler processes (default 2)")
    parser.add_argument("--output", type=Path, default=None, help="result path without suffix")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import triton

    batch = variants(
        args.arch, args.head_dims, args.dtype, which="all" if args.all_configs else "first"
    )
    print(f"compiling {len(batch)} variants with Triton {triton.__version__}", flush=True)
    records = compile_variants(batch, jobs=args.jobs, progress=lambda s: print(s, flush=True))
    output = args.output or REPO_ROOT / "benchmarks" / "results" / (
        f"static-sm{'-sm'.join(map(str, args.arch))}-triton{triton.__version__}"
        + ("-all" if args.all_configs else "")
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {"triton": triton.__version__, "records": records}
    json_path, markdown_path = (output.parent / f"{output.name}{s}" for s in (".json", ".md"))
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    markdown = render_markdown(records, triton.__version__)
    markdown_path.write_text(markdown)
    print(markdown)
    print(f"results: {json_path} and {markdown_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
