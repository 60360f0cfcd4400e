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

With ``--peers WHEEL`` (a CUDA build of PyTorch, downloaded, never installed: ``pip download
--no-deps torch==2.14.1 -d DIR``) it also reads the FlashAttention-2 forward kernels that SDPA's
FLASH backend runs (``pytorch_flash::flash_fwd_kernel``) out of the wheel's
``torch/lib/libtorch_cuda.so``: for each of our head dims, the template PyTorch pads it to and
the tile its launcher picks on A100 and H100 (fp16, non-causal, no dropout, N = 4096), counted by
the same method (``tests/sass_count.py``, work kept out of line included), side by side with
ours; and the throughput model calibrated against published measurements (``PUBLISHED``),
our predicted TFLOP/s labelled as a model. Nothing of the wheel is written into the results but
the counts and the kernels' names.

Writes ``<output>.json`` (one record per compiled variant) and ``<output>.md`` (the tables);
the default output is ``benchmarks/results/static-sm90-sm80-triton<version>``
(``-peers-torch<version>`` with ``--peers``).

The parts: this script compiles our kernel and writes the tables; ``static_model`` holds the
throughput model and its calibration, ``static_peers`` reads and counts FA2 out of the wheel.
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
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.static_model import tile_cycles  # noqa: E402
from benchmarks.static_peers import peer_markdown, peer_records  # noqa: E402

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


# ptxas's C7514 note (tests/aot_compile.py: wgmma_serialized); None: no wgmma, or not checked.
SERIALISED = {True: "YES (C7514)", False: "no", None: "—"}


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


def render_markdown(
    records: list[dict], triton_version: str, peers: list[dict] | None = None
) -> str:
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
    if peers:
        lines += ["", *peer_markdown(records, peers)]
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
        "--peers",
        type=Path,
        metavar="WHEEL",
        help="a CUDA torch wheel (pip download --no-deps torch==2.14.1): count its"
        " FlashAttention-2 kernels next to ours and calibrate the throughput model",
    )
    parser.add_argument(
        "--ours",
        type=Path,
        metavar="JSON",
        help="with --peers: take our counts from this result JSON instead of compiling",
    )
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
        markdown = render_markdown(payload["records"], payload["triton"], payload.get("peers"))
        args.render.with_suffix(".md").write_text(markdown)
        print(markdown)
        return 0
    import triton

    def progress(line: str) -> None:
        print(line, flush=True)

    if args.ours is not None:
        if args.peers is None:
            raise SystemExit("--ours needs --peers")
        ours = json.loads(args.ours.read_text())
        records, triton_version = ours["records"], ours["triton"]
    else:
        batch = variants(
            args.arch, args.head_dims, args.dtype, which="all" if args.all_configs else "first"
        )
        triton_version = triton.__version__
        progress(f"compiling {len(batch)} variants with Triton {triton_version}")
        records = compile_variants(batch, jobs=args.jobs, progress=progress)
    peers = None
    if args.peers is not None:
        peers = peer_records(args.peers, args.arch, args.head_dims, progress=progress)
    output = args.output or REPO_ROOT / "benchmarks" / "results" / (
        f"static-sm{'-sm'.join(map(str, args.arch))}-triton{triton_version}"
        + ("-all" if args.all_configs else "")
        + (f"-peers-torch{peers[0]['torch']}" if peers else "")
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {"triton": triton_version, "records": records}
    if peers:
        payload["peers"] = peers
    json_path, markdown_path = (output.parent / f"{output.name}{s}" for s in (".json", ".md"))
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    markdown = render_markdown(records, triton_version, peers)
    markdown_path.write_text(markdown)
    print(markdown)
    print(f"results: {json_path} and {markdown_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
