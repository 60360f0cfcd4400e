"""Static report of the attention kernel: compiled ahead of time for sm_90 and sm_80, no GPU.

Usage (from the repository root)::

    python benchmarks/static_report.py                 # default tiles, writes the result files
    python benchmarks/static_report.py --all-configs   # every tile the autotuner may pick
    python benchmarks/static_report.py --jobs 2 --output benchmarks/results/NAME
    python benchmarks/static_report.py --render benchmarks/results/NAME.json  # tables only

For each architecture (sm_90, sm_80), head dim (40, 64, 80, 128, 160) and entropy off / on, it
compiles the kernel the way a launch on real tensors would (``tests/aot_compile.py``: fp16,
diffusers' ``(B, L, H, D)`` layout, N = 4096, Triton's bundled ``ptxas``) with the first tile of
the autotuning list (the tile used without autotuning, ``ENTROPY_ATTN_AUTOTUNE=0``) or, with
``--all-configs``, every tile the pruner keeps, and reads the cubin with the bundled
``cuobjdump``: registers per thread, stack bytes (register spills), shared memory, and the key
loop's instruction counts per logit (all instructions, MMA, ``MUFU.EX2``, FP32 arithmetic) on
the loop's common path (the conditional rescale skipped). These are static counts of one pass
through the loop body, an estimate of the work per logit, not a timing.

Next to the counts, a throughput model (``tile_cycles``): a key tile's cycles per SM as the
largest of its instruction issue, its ``MUFU.EX2`` work and its tensor-core work at the whitepaper
rates of A100/H100 (``SM_THROUGHPUT``), and from it the entropy-on over entropy-off ratio the
counts imply for time when the three overlap perfectly. Also a bound, not a timing.

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
# Per-SM throughput per clock, from NVIDIA's A100 and H100 whitepapers: warp instructions issued
# (four schedulers), MUFU results (16 special-function units; ex2 is one), dense fp16 tensor-core
# flops (1024 FMA on A100, 2048 on H100). The throughput model below divides a key tile's work by
# these: a lower bound on the tile's time if everything overlapped perfectly, not a timing.
SM_THROUGHPUT = {
    80: {"issue": 4, "mufu": 16, "mma_flops": 2048},
    90: {"issue": 4, "mufu": 16, "mma_flops": 4096},
}


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


# ptxas's C7514 note (tests/aot_compile.py: wgmma_serialized); None: no wgmma, or not checked.
SERIALISED = {True: "YES (C7514)", False: "no", None: "—"}


def tile_cycles(record: dict) -> dict[str, float] | None:
    """Cycles per SM for one key tile by the throughput model: issue (instructions of the loop's
    common path x warps / 4), MUFU (ex2 per thread x threads / 16) and tensor cores
    (``4 * BLOCK_M * BLOCK_N * head dim`` flops of ``Q K^T`` and ``P V`` over the padded head dim,
    main plus tail tile); ``bound`` is the largest. ``None`` without loop counts."""
    loop = record.get("inner_loop") or {}
    rates = SM_THROUGHPUT.get(record["arch"])
    if rates is None or "instructions" not in loop or "ex2" not in loop:
        return None
    from entropy_attn.kernels.attention_fwd import head_dim_split

    config = record["config"]
    threads = 32 * config["warps"]
    padded = sum(head_dim_split(record["head_dim"]))
    cycles = {
        "issue": loop["instructions"] * config["warps"] / rates["issue"],
        "mufu": loop["ex2"] * threads / rates["mufu"],
        "mma": 4 * config["BLOCK_M"] * config["BLOCK_N"] * padded / rates["mma_flops"],
    }
    cycles["bound"] = max(cycles.values())
    return cycles


def modelled_on_over_off(records: list[dict]) -> dict[tuple, float]:
    """Entropy-on over entropy-off tile time by the throughput model (``tile_cycles``)."""
    per = {}
    for r in records:
        cycles = tile_cycles(r)
        if cycles is not None:
            key = (r["arch"], r["head_dim"], r["dtype"], r["layout"], tile_name(r))
            per.setdefault(key, {})[r["entropy"]] = cycles["bound"]
    return {k: v[True] / v[False] for k, v in per.items() if True in v and False in v}


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
    lines = [
        f"Targets at d=64, fp16, sm_90, default tile {tile_name(off)}, Triton {triton_version}:",
        f"- entropy off <= {TARGET_OFF_PER_LOGIT} instructions per logit: {off_count:.2f}"
        f" ({met_off})",
        f"- entropy on <= {TARGET_ON_OVER_OFF}x entropy off: {ratio:.3f}x ({met_on})",
        # The entropy adds t += p * (u - m) for every logit: at least one FMA per logit on the
        # CUDA cores, whatever the rest of the loop costs.
        f"- floor for any kernel that sums the entropy term on the CUDA cores (>= 1 FMA per"
        f" logit): {(off_count + 1) / off_count:.3f}x on this loop,"
        f" {(TARGET_OFF_PER_LOGIT + 1) / TARGET_OFF_PER_LOGIT:.3f}x at {TARGET_OFF_PER_LOGIT}"
        f" instructions per logit",
    ]
    on_cycles, off_cycles = tile_cycles(on), tile_cycles(off)
    if on_cycles is not None and off_cycles is not None:

        def limits(cycles):
            return ", ".join(f"{k} {cycles[k]:.0f}" for k in ("issue", "mufu", "mma"))

        lines.append(
            f"- throughput model (cycles per key tile per SM; a bound, not a timing): entropy off"
            f" {limits(off_cycles)}; on {limits(on_cycles)}: on/off"
            f" {on_cycles['bound'] / off_cycles['bound']:.3f}x"
        )
    return lines


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
        "`model on/off` is the throughput model's entropy-on over entropy-off tile time (cycles"
        " per SM of the largest of issue, MUFU and tensor-core work; see `tile_cycles`), a bound"
        " from static counts, not a timing. `wgmma serialised`: whether ptxas issues each sm_90"
        " wgmma only after the previous one finished (its C7514 note), which the counts do not"
        " show.",
        "",
        "| sm | d | entropy | tile | first | regs | stack B | smem KiB | instr/logit | on/off"
        " | model on/off | MMA/tile | EX2/logit | FP32/logit | loop body (cond.)"
        " | wgmma serialised |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    modelled = modelled_on_over_off(records)
    for r in records:
        loop = r["inner_loop"] or {}
        key = (r["arch"], r["head_dim"], r["dtype"], r["layout"], tile_name(r))
        ratio = f"{ratios[key]:.3f}" if r["entropy"] and key in ratios else ""
        model = f"{modelled[key]:.3f}" if r["entropy"] and key in modelled else ""
        lines.append(
            f"| {r['arch']} | {r['head_dim']} | {'on' if r['entropy'] else 'off'}"
            f" | {tile_name(r)} | {'yes' if r['first'] else ''} | {r['registers']}"
            f" | {r['stack_bytes']} | {r['shared_bytes'] / 1024:.1f}"
            f" | {loop.get('instructions_per_logit', '')} | {ratio} | {model}"
            f" | {loop.get('mma', '')}"
            f" | {loop.get('ex2_per_logit', '')} | {loop.get('fp32_per_logit', '')}"
            f" | {loop.get('body', '')} ({loop.get('conditional', '')})"
            f" | {SERIALISED.get(r.get('wgmma_serialized'), '')} |"
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
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="rewrite the Markdown next to an existing result JSON (no compilation)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        payload = json.loads(args.render.read_text())
        markdown = render_markdown(payload["records"], payload["triton"])
        args.render.with_suffix(".md").write_text(markdown)
        print(markdown)
        return 0
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
