"""The report's sections for a result file of ``benchmarks/gpu_check.py``.

Parity against fp64, host cost per call on CUDA, ``backend="auto"``'s decision per shape (with
the two times it was made from and its cost against a bare SDPA call), and the large UNet steps
(stock SDPA vs ``enable(backend="triton")`` vs ``enable()``). A file without these records
(``benchmarks/run.py``'s) gets none of them.
"""

from __future__ import annotations

from benchmarks.report_format import mark, markdown_table
from benchmarks.report_results import ResultFile, UnetRow, unet_rows

# The modes of gpu_check's unet-large stage besides stock: our kernel everywhere, and auto.
LARGE_UNET_OURS = ("enable-triton", "enable-auto")


def gpu_check_lines(result: ResultFile) -> list[str]:
    """The sections only ``benchmarks/gpu_check.py`` records: parity against fp64, host cost per
    call, ``backend="auto"``'s decisions, the large UNet steps."""
    lines = []
    if result.parity:
        header = ["dtype", "B, H, Lq, Lk, D", "layout", "out err", "SDPA err", "entropy err", "ok"]
        table = [
            [
                str(p.get("dtype")),
                ", ".join(map(str, p.get("shape", []))),
                str(p.get("layout")),
                f"{p.get('out_max_err', float('nan')):.2e}",
                f"{p.get('sdpa_max_err', float('nan')):.2e}",
                f"{p.get('entropy_max_err', float('nan')):.2e}",
                mark(bool(p.get("ok"))),
            ]
            for p in result.parity
        ]
        lines += [
            "## Parity against fp64",
            "",
            "Output within 2 x SDPA's own error + 1 ulp; entropy within 5e-5 + 2e-5 |H| nats.",
            "",
            *markdown_table(header, table),
            "",
        ]
    host = [e for e in result.entries if e.get("impl") == "host-cost"]
    if host:
        table = [
            [str(e.get("variant")), f"{e.median_s * 1e6:.1f} us", e.get("baseline")] for e in host
        ]
        lines += [
            "## Host cost per call",
            "",
            *markdown_table(["call", "median per call", "how"], table),
            "",
        ]
    return lines + auto_lines(result.auto) + unet_large_lines(unet_rows(result))


def auto_lines(records: list[dict]) -> list[str]:
    """The ``auto`` stage's table: per shape, the decision, the two times it was made from, and
    the measured cost of ``attention(backend="auto")`` over a bare SDPA call."""
    if not records:
        return []

    def us(seconds: float | None) -> str:
        return "—" if seconds is None else f"{seconds * 1e6:.1f}"

    header = ["case", "key", "chose", "kernel µs", "SDPA µs", "auto call µs", "SDPA call µs"]
    table = []
    for r in records:
        chose = str(r.get("backend")) + (" (cached)" if r.get("cached") else "")
        if r.get("env_override"):
            chose += f" (ENTROPY_ATTN_BACKEND={r['env_override']})"
        table.append(
            [str(r["case"]), str(r["key"]), chose, us(r.get("fused_s")), us(r.get("sdpa_s"))]
            + [us(r["auto_call_s"]), us(r["sdpa_call_s"]), f"{r['auto_over_sdpa']:.3f}"]
        )
    return [
        "## backend='auto' (entropy_attn.op.autoselect)",
        "",
        "Decision per shape (fp16, the kernel kept only when >= 2% faster than SDPA), the two"
        " times it was made from (µs, CUDA-event medians), and `attention(backend='auto')` timed"
        " afterwards against a bare SDPA call (`auto/SDPA`; <= 1 means auto did not lose).",
        "",
        *markdown_table([*header, "auto/SDPA"], table),
        "",
    ]


def unet_large_lines(rows: list[UnetRow]) -> list[str]:
    """The ``unet-large`` stage's table: per model and size, the stock step and ours
    (``enable(backend="triton")``) and ``enable()`` (auto), with their ratios to stock."""
    rows = [row for row in rows if any(mode in row.modes for mode in LARGE_UNET_OURS)]
    if not rows:
        return []

    def ms(row: UnetRow, mode: str) -> str:
        entry = row.modes.get(mode)
        return "—" if entry is None else f"{entry.median_s * 1e3:.2f}"

    def ratio(row: UnetRow, mode: str) -> str:
        value = row.ratio(mode)
        return "—" if value is None else f"{value:.3f}"

    table = [
        [str(row.model), str(row.image_size), ms(row, "stock"), ms(row, "enable-triton")]
        + [ratio(row, "enable-triton"), ms(row, "enable-auto"), ratio(row, "enable-auto")]
        for row in rows
    ]
    header = ["model", "px", "stock ms", "triton ms", "triton/stock", "auto ms", "auto/stock"]
    return [
        "## UNet step at 768 and 1536 px: ours vs stock SDPA",
        "",
        "fp16, batch 2, random weights; median of 5 CUDA-event timed steps after 2 warm-up"
        " steps; `enable(backend='triton')` runs our kernel in every self- and cross-attention,"
        " `enable()` lets `backend='auto'` choose per shape.",
        "",
        *markdown_table(header, table),
        "",
    ]
