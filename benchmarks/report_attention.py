"""The report's attention sections: what was timed on one shape, side by side.

entropy-attn (entropy off) vs each SDPA backend; entropy on vs off; the fused entropy vs the
materialising PyTorch entropy (time and memory); the fused entropy vs the LSE identity on stock
SDPA. Each returns the lines of one Markdown table, with the targets' marks where they apply.
"""

from __future__ import annotations

from benchmarks.report_format import (
    MIB,
    fmt_mib,
    fmt_ratio,
    fmt_tflops,
    fmt_time,
    mark,
    markdown_table,
)
from benchmarks.report_results import ShapeRow
from benchmarks.report_targets import fused_in_scope, in_kernel_scope, is_cuda_kernel

CUDA_SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def kernel_lines(rows: list[ShapeRow]) -> list[str]:
    """entropy-attn (entropy off) vs each SDPA backend per shape, with the speed target's mark."""
    present = {name for row in rows for name in row.sdpa}
    if any(row.sample.get("device") == "cuda" for row in rows):
        present |= set(CUDA_SDPA_BACKENDS)  # a refused backend still gets its column
    order = {name: index for index, name in enumerate(CUDA_SDPA_BACKENDS)}
    sdpa_names = sorted(present, key=lambda name: (order.get(name, len(order)), name))
    header = [
        "device",
        "dtype",
        "case",
        "BxHxLqxLkxD",
        "entropy-attn",
        "time (entropy off)",
        "TFLOP/s",
        "peak MiB",
    ]
    header += [f"SDPA {name}" for name in sdpa_names]
    header += ["fastest SDPA", "TFLOP/s", "peak MiB", "speed vs fastest SDPA", "target"]
    table = []
    for row in rows:
        e = row.sample
        fastest = row.fastest_sdpa
        ratio = row.speed_vs_sdpa
        target = "—"
        if ratio is not None and is_cuda_kernel(row) and in_kernel_scope(row.off):
            minimum = {64: 1.00, 40: 0.90, 80: 0.90, 160: 0.90}.get(row.off.get("head_dim"))
            if minimum is not None:
                target = f">= {minimum:.2f}x: {mark(ratio >= minimum)}"
        cells = [
            str(e.get("device")),
            str(e.get("dtype")),
            row.case,
            e.shape,
            row.candidate_variant or "—",
            fmt_time(row.off.median_s if row.off else None),
            fmt_tflops(row.off.tflops if row.off else None),
            fmt_mib(row.off.get("peak_mem_bytes") if row.off else None),
        ]
        cells += [
            fmt_time(row.sdpa[name].median_s) if name in row.sdpa else "skipped/absent"
            for name in sdpa_names
        ]
        cells += [
            fastest[0] if fastest else "—",
            fmt_tflops(fastest[1].tflops) if fastest else "—",
            fmt_mib(fastest[1].get("peak_mem_bytes")) if fastest else "—",
            fmt_ratio(ratio),
            target,
        ]
        table.append(cells)
    return markdown_table(header, table)


def entropy_lines(rows: list[ShapeRow]) -> list[str]:
    """Entropy on vs off per shape, with the <= 1.05x target's mark on the CUDA kernel."""
    header = [
        "device",
        "dtype",
        "case",
        "entropy-attn",
        "entropy off",
        "entropy on",
        "on/off",
        "target <= 1.05x",
    ]
    table = []
    for row in rows:
        ratio = row.on_over_off
        if ratio is None:
            continue
        target = mark(ratio <= 1.05) if is_cuda_kernel(row) else "— (CUDA kernel only)"
        table.append(
            [
                str(row.sample.get("device")),
                str(row.sample.get("dtype")),
                row.case,
                row.candidate_variant or "—",
                fmt_time(row.off.median_s),
                fmt_time(row.on.median_s),
                fmt_ratio(ratio),
                target,
            ]
        )
    return markdown_table(header, table)


def fused_lines(rows: list[ShapeRow]) -> list[str]:
    """Fused vs materialising entropy per shape: times, extra memory, the 20x and O(N) marks."""
    header = [
        "device",
        "dtype",
        "case",
        "entropy-attn",
        "fused (entropy on)",
        "materialising",
        "speedup",
        "fused extra MiB",
        "materialising extra MiB",
        "output+entropy MiB",
        "target >= 20x",
        "O(N) memory",
    ]
    table = []
    for row in rows:
        if row.on is None or row.materialise is None:
            continue
        speedup = row.fused_speedup
        on = row.on
        in_scope = fused_in_scope(row)
        floor = (on.get("out_bytes") or 0) + (on.get("entropy_bytes") or 0)
        extra = on.get("peak_extra_bytes")
        memory = "—"
        if is_cuda_kernel(row) and extra is not None and floor > 0:
            memory = mark(extra <= 2 * floor + MIB)
        table.append(
            [
                str(on.get("device")),
                str(on.get("dtype")),
                row.case,
                row.candidate_variant or "—",
                fmt_time(on.median_s),
                fmt_time(row.materialise.median_s),
                fmt_ratio(speedup),
                fmt_mib(on.get("peak_extra_bytes")),
                fmt_mib(row.materialise.get("peak_extra_bytes")),
                fmt_mib(floor),
                mark(speedup >= 20.0) if in_scope else "— (out of scope)",
                memory,
            ]
        )
    return markdown_table(header, table)


def lse_lines(rows: list[ShapeRow]) -> list[str]:
    """Fused entropy vs the LSE identity with stock SDPA (``benchmarks/gpu_check.py``)."""
    header = [
        "device",
        "dtype",
        "case",
        "fused (entropy on)",
        "LSE identity (SDPA)",
        "LSE kernel",
        "fused vs LSE",
        "target >= 1.5x",
    ]
    table = []
    for row in rows:
        if row.on is None or row.lse is None:
            continue
        ratio = row.lse_speedup
        table.append(
            [
                str(row.on.get("device")),
                str(row.on.get("dtype")),
                row.case,
                fmt_time(row.on.median_s),
                fmt_time(row.lse.median_s),
                str(row.lse.get("variant")),
                fmt_ratio(ratio),
                mark(ratio >= 1.5) if is_cuda_kernel(row) else "—",
            ]
        )
    return markdown_table(header, table) if table else []
