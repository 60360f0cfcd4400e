"""Turn benchmark result files into Markdown tables and a TFLOP/s plot, with the targets checked.

Usage::

    python benchmarks/report.py benchmarks/results/<file>.json [more.json ...]
        [--out-dir DIR] [--no-plot]

For each result file it writes ``<stem>.md`` and ``<stem>-tflops.png`` (next to the file unless
``--out-dir``). Every number in the report comes from that one file (medians of the timed rounds,
the ``extra_info`` the benchmarks recorded, the ``environment`` section), so every ratio compares
numbers measured in the same run on the same device; files are never mixed.

Targets (from the speed issue), each marked met / not met with the measured worst ratio:

* kernel vs the fastest SDPA backend (CUDA, entropy off): >= 1.00x at head dim 64, >= 0.90x at
  head dims 40/80/160, for self-attention with 784 <= N <= 16384 and cross-attention with 77 keys
  (queries in the same range);
* entropy on vs off (CUDA kernel): at most 5% slower, every measured shape;
* fused entropy vs the materialising PyTorch entropy (CUDA): >= 20x faster on self-attention with
  784 <= N <= 16384 (at tiny N both are launch-bound), and O(N) memory: the fused call's own peak
  memory at most 2 x (output + entropy bytes) + 1 MiB on every measured shape;
* SD-2.1-base UNet step at 768² (CUDA): ``enable`` at most 2% slower than stock, with entropy
  recording at most 8% slower;
* CPU: ``enable`` at most 5% slower than stock for the UNet step, every measured size;
* CPU (issue #11): host cost of one ``attention()`` call on the CUDA dispatch path (launch stubbed)
  at most 20 µs; ``attention(backend="torch")`` at most 1.5x a bare SDPA call on a tiny tensor;
  the CPU entropy path at most 2.0x plain SDPA at (2, 5, 1024, 64); the CPU UNet step with
  entropy recording at most 1.3x stock.

A target with no measurement in a file is "not measured" there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIN_TOKENS = 784
MAX_TOKENS = 16384
TEXT_TOKENS = 77
MIB = 2**20
CUDA_SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class Entry:
    """One benchmark of a result file: its ``extra_info`` and the median of its rounds."""

    name: str
    info: dict[str, Any]
    median_s: float
    rounds: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.info.get(key, default)

    @property
    def is_attention(self) -> bool:
        return self.get("impl") in ("entropy_attn", "sdpa", "materialise", "lse")

    @property
    def shape_key(self) -> tuple:
        """Entries with the same key timed the same attention call shape on the same device."""
        return tuple(
            self.get(k)
            for k in (
                "device",
                "dtype",
                "suite",
                "attention",
                "batch",
                "heads",
                "seq_q",
                "seq_k",
                "head_dim",
            )
        )

    @property
    def tflops(self) -> float | None:
        flops = self.get("flops")
        return flops / self.median_s / 1e12 if flops and self.median_s else None

    @property
    def shape(self) -> str:
        return "x".join(str(self.get(k)) for k in ("batch", "heads", "seq_q", "seq_k", "head_dim"))


@dataclass
class ResultFile:
    """A loaded result file."""

    path: Path
    environment: dict[str, Any]
    entries: list[Entry]
    skipped: list[dict[str, str]]
    datetime: str | None
    parity: list[dict[str, Any]] = field(default_factory=list)  # benchmarks/gpu_check.py

    @property
    def device_name(self) -> str:
        return self.environment.get("device_name") or "unknown device (no environment section)"


def load_result(path: str | Path) -> ResultFile:
    """Read a pytest-benchmark JSON written by ``benchmarks/run.py``."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = []
    for bench in data.get("benchmarks", []):
        stats = bench.get("stats") or {}
        median = stats.get("median")
        if median is None or not math.isfinite(median) or median <= 0:
            continue
        entries.append(
            Entry(
                name=bench.get("fullname") or bench.get("name", "?"),
                info=dict(bench.get("extra_info") or {}),
                median_s=float(median),
                rounds=int(stats.get("rounds") or len(stats.get("data") or [])),
            )
        )
    return ResultFile(
        path=path,
        environment=data.get("environment") or {},
        entries=entries,
        skipped=list(data.get("skipped") or []),
        datetime=data.get("datetime"),
        parity=list(data.get("parity") or []),
    )


# ---------------------------------------------------------------------------------------------
# Comparisons (all within one file)


@dataclass
class ShapeRow:
    """Everything timed on one attention shape, for one entropy-attn backend."""

    key: tuple
    case: str
    candidate_variant: str | None
    off: Entry | None = None
    on: Entry | None = None
    sdpa: dict[str, Entry] = field(default_factory=dict)
    materialise: Entry | None = None
    lse: Entry | None = None  # the LSE identity with stock SDPA (benchmarks/gpu_check.py)

    @property
    def sample(self) -> Entry:
        for entry in (self.off, self.on, self.materialise, self.lse, *self.sdpa.values()):
            if entry is not None:
                return entry
        raise ValueError("empty row")

    @property
    def fastest_sdpa(self) -> tuple[str, Entry] | None:
        if not self.sdpa:
            return None
        return min(self.sdpa.items(), key=lambda item: item[1].median_s)

    @property
    def speed_vs_sdpa(self) -> float | None:
        """Fastest SDPA time / entropy-attn time (entropy off): > 1 means entropy-attn is faster."""
        fastest = self.fastest_sdpa
        if fastest is None or self.off is None:
            return None
        return fastest[1].median_s / self.off.median_s

    @property
    def on_over_off(self) -> float | None:
        if self.on is None or self.off is None:
            return None
        return self.on.median_s / self.off.median_s

    @property
    def fused_speedup(self) -> float | None:
        """Materialising time / fused entropy-on time."""
        if self.on is None or self.materialise is None:
            return None
        return self.materialise.median_s / self.on.median_s

    @property
    def lse_speedup(self) -> float | None:
        """LSE-identity time / fused entropy-on time."""
        if self.on is None or self.lse is None:
            return None
        return self.lse.median_s / self.on.median_s


def shape_rows(result: ResultFile) -> list[ShapeRow]:
    """Group the attention entries of one file by shape; one row per entropy-attn backend."""
    by_key: dict[tuple, list[Entry]] = defaultdict(list)
    for entry in result.entries:
        if entry.is_attention:
            by_key[entry.shape_key].append(entry)
    rows = []
    for key, entries in by_key.items():
        sdpa = {e.get("variant"): e for e in entries if e.get("impl") == "sdpa"}
        materialise = next((e for e in entries if e.get("impl") == "materialise"), None)
        lse = next((e for e in entries if e.get("impl") == "lse"), None)
        variants = sorted({e.get("variant") for e in entries if e.get("impl") == "entropy_attn"})
        for variant in variants or [None]:
            row = ShapeRow(
                key=key,
                case=entries[0].get("case", "?"),
                candidate_variant=variant,
                sdpa=sdpa,
                materialise=materialise,
                lse=lse,
            )
            for e in entries:
                if e.get("impl") == "entropy_attn" and e.get("variant") == variant:
                    if e.get("entropy"):
                        row.on = e
                    else:
                        row.off = e
            rows.append(row)
    rows.sort(key=_row_order)
    return rows


def _row_order(row: ShapeRow) -> tuple:
    e = row.sample
    return (
        str(e.get("device")),
        str(e.get("dtype")),
        str(e.get("suite")),
        str(e.get("attention")),
        e.get("image_size") or 0,
        e.get("level") or 0,
        e.get("seq_q") or 0,
        e.get("head_dim") or 0,
        str(row.candidate_variant),
    )


@dataclass(frozen=True)
class UnetRow:
    """One UNet step or one whole generation (model, size, device, dtype) in its three modes."""

    device: str
    dtype: str
    model: str
    image_size: int
    modes: dict[str, Entry]
    impl: str = "unet"

    def ratio(self, mode: str) -> float | None:
        stock, other = self.modes.get("stock"), self.modes.get(mode)
        if stock is None or other is None:
            return None
        return other.median_s / stock.median_s


def unet_rows(result: ResultFile, impl: str = "unet") -> list[UnetRow]:
    """Group the entries of one file with ``impl`` (``"unet"``: one step, ``"generation"``: a
    whole generation) by (device, dtype, model, size)."""
    groups: dict[tuple, dict[str, Entry]] = defaultdict(dict)
    for entry in result.entries:
        if entry.get("impl") == impl:
            key = (
                entry.get("device"),
                entry.get("dtype"),
                entry.get("model"),
                entry.get("image_size"),
            )
            groups[key][entry.get("variant")] = entry
    rows = [UnetRow(*key, modes=modes, impl=impl) for key, modes in groups.items()]
    rows.sort(key=lambda r: (str(r.device), str(r.model), r.image_size or 0, str(r.dtype)))
    return rows


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Check:
    """One measured value of a target: where, the ratio, and whether it meets the threshold."""

    where: str
    ratio: float
    met: bool


@dataclass
class Target:
    """A target over all in-scope measurements of a file; met only if every check is met."""

    name: str
    threshold: str
    scope: str
    higher_is_better: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.checks:
            return "not measured"
        return "met" if all(check.met for check in self.checks) else "not met"

    @property
    def worst(self) -> Check | None:
        if not self.checks:
            return None
        pick = min if self.higher_is_better else max
        return pick(self.checks, key=lambda check: check.ratio)


def _in_kernel_scope(e: Entry) -> bool:
    seq_q, seq_k = e.get("seq_q") or 0, e.get("seq_k") or 0
    in_range = MIN_TOKENS <= seq_q <= MAX_TOKENS
    return in_range and seq_k in (seq_q, TEXT_TOKENS)


def _fused_in_scope(row: ShapeRow) -> bool:
    """The 20x target's scope: CUDA kernel, self-attention, MIN_TOKENS <= N <= MAX_TOKENS."""
    on = row.on
    if on is None or not _is_cuda_kernel(row) or on.get("seq_k") != on.get("seq_q"):
        return False
    return MIN_TOKENS <= (on.get("seq_q") or 0) <= MAX_TOKENS


def _is_sd21_768(row: UnetRow) -> bool:
    return (
        row.impl == "unet"
        and row.device == "cuda"
        and row.model == "sd21-base"
        and row.image_size == 768
    )


def _is_cuda_kernel(row: ShapeRow) -> bool:
    return row.sample.get("device") == "cuda" and row.candidate_variant == "triton"


def _where(row: ShapeRow) -> str:
    return f"{row.sample.get('dtype')} {row.case}"


def evaluate_targets(result: ResultFile) -> list[Target]:
    """Check every target against one file's measurements."""
    rows = shape_rows(result)
    kernel_rows = [r for r in rows if _is_cuda_kernel(r)]

    def speed_target(name: str, head_dims: Iterable[int], minimum: float) -> Target:
        dims = tuple(head_dims)
        target = Target(
            name=name,
            threshold=f">= {minimum:.2f}x (fastest SDPA time / entropy-attn time)",
            scope=f"CUDA, entropy off, head dim {'/'.join(map(str, dims))}, "
            f"{MIN_TOKENS} <= N <= {MAX_TOKENS}, self-attention or {TEXT_TOKENS} keys",
            higher_is_better=True,
        )
        for row in kernel_rows:
            ratio = row.speed_vs_sdpa
            if ratio is None or row.off is None or not _in_kernel_scope(row.off):
                continue
            if row.off.get("head_dim") in dims:
                target.checks.append(Check(_where(row), ratio, ratio >= minimum))
        return target

    targets = [
        speed_target("kernel vs fastest SDPA, head dim 64", [64], 1.00),
        speed_target("kernel vs fastest SDPA, head dims 40/80/160", [40, 80, 160], 0.90),
    ]

    on_off = Target(
        name="entropy on vs off",
        threshold="<= 1.05x (entropy-on time / entropy-off time)",
        scope="CUDA kernel, every measured shape",
        higher_is_better=False,
    )
    fused = Target(
        name="fused vs materialising entropy",
        threshold=">= 20x (materialising time / fused entropy-on time)",
        scope=f"CUDA, self-attention, {MIN_TOKENS} <= N <= {MAX_TOKENS}",
        higher_is_better=True,
    )
    fused_lse = Target(
        name="fused vs the LSE identity with stock SDPA",
        threshold=">= 1.5x (LSE-identity time / fused entropy-on time)",
        scope="CUDA kernel, every measured shape",
        higher_is_better=True,
    )
    memory = Target(
        name="fused entropy memory is O(N)",
        threshold="call's extra peak <= 2 x (output + entropy bytes) + 1 MiB "
        "(value: extra peak / (output + entropy))",
        scope="CUDA kernel with entropy, every measured shape",
        higher_is_better=False,
    )
    for row in kernel_rows:
        if (ratio := row.on_over_off) is not None:
            on_off.checks.append(Check(_where(row), ratio, ratio <= 1.05))
        speedup = row.fused_speedup
        on = row.on
        if speedup is not None and _fused_in_scope(row):
            fused.checks.append(Check(_where(row), speedup, speedup >= 20.0))
        if (lse_ratio := row.lse_speedup) is not None and _is_cuda_kernel(row):
            fused_lse.checks.append(Check(_where(row), lse_ratio, lse_ratio >= 1.5))
        if on is not None and on.get("peak_extra_bytes") is not None:
            floor = (on.get("out_bytes") or 0) + (on.get("entropy_bytes") or 0)
            if floor > 0:
                extra = on.get("peak_extra_bytes")
                memory.checks.append(Check(_where(row), extra / floor, extra <= 2 * floor + MIB))
    targets += [on_off, fused, fused_lse, memory]

    unet = unet_rows(result)
    for mode, limit in (("enable", 1.02), ("enable-record-entropy", 1.08)):
        target = Target(
            name=f"SD-2.1 UNet step at 768², {mode} vs stock",
            threshold=f"<= {limit:.2f}x ({mode} time / stock time)",
            scope="CUDA, sd21-base, 768x768",
            higher_is_better=False,
        )
        for row in unet:
            if _is_sd21_768(row) and (ratio := row.ratio(mode)) is not None:
                where = f"{row.dtype} {row.model} {row.image_size}px"
                target.checks.append(Check(where, ratio, ratio <= limit))
        targets.append(target)
    cpu = Target(
        name="CPU UNet step, enable vs stock",
        threshold="<= 1.05x (enable time / stock time)",
        scope="CPU, every measured UNet and size",
        higher_is_better=False,
    )
    for row in unet:
        if row.device == "cpu" and (ratio := row.ratio("enable")) is not None:
            where = f"{row.dtype} {row.model} {row.image_size}px"
            cpu.checks.append(Check(where, ratio, ratio <= 1.05))
    targets.append(cpu)
    return targets + host_targets(result)


# Host-cost and CPU-speed targets of issue #11 (CPU measurements).
HOST_BUDGET_S = 20e-6
HOST_TRITON_VARIANTS = ("triton-attention-off", "triton-attention-on", "triton-dispatch-off")
CPU_ENTROPY_SUITE = "cpu-entropy"


def host_entries(result: ResultFile, impl: str = "host") -> dict[str, Entry]:
    """The host-cost entries of one file (``impl`` ``"host"``: attention calls, or
    ``"host-processor"``: processor calls) by variant."""
    return {e.get("variant"): e for e in result.entries if e.get("impl") == impl}


def host_targets(result: ResultFile) -> list[Target]:
    """Issue #11's CPU targets: host cost of the CUDA dispatch path, the PyTorch path's overhead,
    the CPU entropy path, and the CPU UNet step with entropy recording."""
    host = host_entries(result)
    budget = Target(
        name="host cost per attention() call, CUDA path",
        threshold=f"<= 1.00 (host µs per call / {HOST_BUDGET_S * 1e6:.0f} µs)",
        scope="CPU, Triton dispatch with the launch stubbed, thread CPU time",
        higher_is_better=False,
    )
    for variant in HOST_TRITON_VARIANTS:
        if (entry := host.get(variant)) is not None:
            ratio = entry.median_s / HOST_BUDGET_S
            budget.checks.append(Check(variant, ratio, ratio <= 1.0))
    torch_path = Target(
        name="PyTorch path overhead",
        threshold="<= 1.50x (attention(backend='torch') / bare SDPA, tiny tensor)",
        scope="CPU, (1, 1, 8, 16) fp32",
        higher_is_better=False,
    )
    if (ours := host.get("torch-path-tiny")) and (bare := host.get("sdpa-tiny")):
        ratio = ours.median_s / bare.median_s
        torch_path.checks.append(Check("torch-path-tiny", ratio, ratio <= 1.5))
    entropy = Target(
        name="CPU entropy path vs plain SDPA",
        threshold="<= 2.00x (attention(return_entropy=True, backend='torch') / SDPA)",
        scope="CPU, (2, 5, 1024, 64)",
        higher_is_better=False,
    )
    for row in shape_rows(result):
        sdpa = row.sdpa.get("default")
        if (
            row.sample.get("suite") == CPU_ENTROPY_SUITE
            and row.candidate_variant == "torch"
            and row.on is not None
            and sdpa is not None
        ):
            ratio = row.on.median_s / sdpa.median_s
            entropy.checks.append(Check(_where(row), ratio, ratio <= 2.0))
    record = Target(
        name="CPU UNet step, enable-record-entropy vs stock",
        threshold="<= 1.30x (enable-record-entropy time / stock time)",
        scope="CPU, every measured UNet and size",
        higher_is_better=False,
    )
    for row in unet_rows(result):
        if row.device == "cpu" and (ratio := row.ratio("enable-record-entropy")) is not None:
            where = f"{row.dtype} {row.model} {row.image_size}px"
            record.checks.append(Check(where, ratio, ratio <= 1.3))
    return [budget, torch_path, entropy, record]


def _host_lines(result: ResultFile) -> list[str]:
    """One table of the host-cost entries: per-call time and the ratio to the bare SDPA call."""
    host = host_entries(result)
    bare = host.get("sdpa-tiny")
    rows = []
    for variant, entry in sorted(host.items(), key=lambda item: str(item[0])):
        ratio = entry.median_s / bare.median_s if bare else None
        rows.append([str(variant), str(entry.get("baseline")), fmt_time(entry.median_s),
                     fmt_ratio(ratio)])  # fmt: skip
    processors = host_entries(result, "host-processor")
    stock = processors.get("AttnProcessor2_0")
    for variant, entry in sorted(processors.items(), key=lambda item: str(item[0])):
        ratio = entry.median_s / stock.median_s if stock else None
        rows.append([str(variant), str(entry.get("baseline")), fmt_time(entry.median_s),
                     f"{fmt_ratio(ratio)} of AttnProcessor2_0"])  # fmt: skip
    return _table(["call", "what", "median per call", "vs bare SDPA"], rows)


# ---------------------------------------------------------------------------------------------
# Markdown


def fmt_time(seconds: float | None) -> str:
    """``12.3 µs``, ``4.567 ms`` or ``1.234 s``."""
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds:.3f} s"


def fmt_ratio(ratio: float | None) -> str:
    """``1.04x``; two significant digits below 0.1 (``0.0031x``)."""
    if ratio is None:
        return "—"
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def fmt_tflops(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def fmt_mib(value: int | float | None) -> str:
    return "—" if value is None else f"{value / MIB:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _mark(ok: bool) -> str:
    return "met" if ok else "not met"


def _environment_lines(result: ResultFile) -> list[str]:
    env = result.environment
    versions = env.get("versions") or {}
    gpu = env.get("gpu") or {}
    pairs = [
        ("device", result.device_name),
        ("devices used", ", ".join(env.get("devices_used") or []) or "—"),
        ("date", env.get("date") or result.datetime or "—"),
        ("CPU", f"{env.get('cpu_model', '—')} ({env.get('cpu_count', '?')} logical CPUs)"),
        ("torch threads", str(env.get("torch_num_threads", "—"))),
        (
            "load average at start / end",
            f"{env.get('load_average_start')} / {env.get('load_average_end')}",
        ),
        (
            "GPU",
            f"{gpu.get('name')}, sm {gpu.get('compute_capability')}, "
            f"{fmt_mib(gpu.get('total_memory_bytes'))} MiB"
            if gpu
            else "—",
        ),
        ("NVIDIA driver", str(env.get("nvidia_driver") or "—")),
        ("CUDA runtime (torch)", str(env.get("cuda_runtime") or "—")),
        ("cuDNN", str(env.get("cudnn") or "—")),
        ("TRITON_INTERPRET", str(env.get("triton_interpret", "—"))),
    ]
    pairs += [(name, str(version)) for name, version in versions.items()]
    return _table(["", ""], [[k, v] for k, v in pairs])


def _target_lines(targets: list[Target]) -> list[str]:
    rows = []
    for t in targets:
        worst = t.worst
        rows.append(
            [
                t.name,
                t.threshold,
                t.scope,
                fmt_ratio(worst.ratio) if worst else "—",
                worst.where if worst else "—",
                f"{sum(c.met for c in t.checks)}/{len(t.checks)}",
                t.status,
            ]
        )
    header = ["target", "threshold", "scope", "measured (worst)", "where", "checks met", "status"]
    return _table(header, rows)


def _kernel_lines(rows: list[ShapeRow]) -> list[str]:
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
        if ratio is not None and _is_cuda_kernel(row) and _in_kernel_scope(row.off):
            minimum = {64: 1.00, 40: 0.90, 80: 0.90, 160: 0.90}.get(row.off.get("head_dim"))
            if minimum is not None:
                target = f">= {minimum:.2f}x: {_mark(ratio >= minimum)}"
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
    return _table(header, table)


def _entropy_lines(rows: list[ShapeRow]) -> list[str]:
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
        target = _mark(ratio <= 1.05) if _is_cuda_kernel(row) else "— (CUDA kernel only)"
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
    return _table(header, table)


def _fused_lines(rows: list[ShapeRow]) -> list[str]:
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
        in_scope = _fused_in_scope(row)
        floor = (on.get("out_bytes") or 0) + (on.get("entropy_bytes") or 0)
        extra = on.get("peak_extra_bytes")
        memory = "—"
        if _is_cuda_kernel(row) and extra is not None and floor > 0:
            memory = _mark(extra <= 2 * floor + MIB)
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
                _mark(speedup >= 20.0) if in_scope else "— (out of scope)",
                memory,
            ]
        )
    return _table(header, table)


def _lse_lines(rows: list[ShapeRow]) -> list[str]:
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
                _mark(ratio >= 1.5) if _is_cuda_kernel(row) else "—",
            ]
        )
    return _table(header, table) if table else []


def _unet_lines(rows: list[UnetRow]) -> list[str]:
    header = [
        "device",
        "dtype",
        "model",
        "image",
        "stock",
        "enable",
        "enable/stock",
        "record entropy",
        "record/stock",
        "peak MiB stock / enable / record",
        "target",
    ]
    table = []
    for row in rows:
        stock = row.modes.get("stock")
        enable = row.modes.get("enable")
        record = row.modes.get("enable-record-entropy")
        r_enable, r_record = row.ratio("enable"), row.ratio("enable-record-entropy")
        target = "—"
        if _is_sd21_768(row):
            parts = []
            if r_enable is not None:
                parts.append(f"enable <= 1.02x: {_mark(r_enable <= 1.02)}")
            if r_record is not None:
                parts.append(f"record <= 1.08x: {_mark(r_record <= 1.08)}")
            target = "; ".join(parts) or "—"
        elif row.impl == "unet" and row.device == "cpu" and r_enable is not None:
            target = f"enable <= 1.05x: {_mark(r_enable <= 1.05)}"
        peaks = " / ".join(
            fmt_mib(e.get("peak_mem_bytes") if e else None) for e in (stock, enable, record)
        )
        table.append(
            [
                str(row.device),
                str(row.dtype),
                str(row.model),
                f"{row.image_size}px",
                fmt_time(stock.median_s if stock else None),
                fmt_time(enable.median_s if enable else None),
                fmt_ratio(r_enable),
                fmt_time(record.median_s if record else None),
                fmt_ratio(r_record),
                peaks,
                target,
            ]
        )
    return _table(header, table)


def render_markdown(result: ResultFile, plot_name: str | None = None) -> str:
    """The whole report of one result file as Markdown."""
    rows = shape_rows(result)
    unet = unet_rows(result)
    generation = unet_rows(result, "generation")
    targets = evaluate_targets(result)
    lines = [
        f"# Benchmark report: {result.path.name}",
        "",
        f"Device: **{result.device_name}**. Every number below comes from `{result.path.name}` "
        "(median seconds per call over the timed rounds; TFLOP/s = 4·B·H·Lq·Lk·D / median), so "
        "every ratio compares measurements from the same run on this device.",
        "",
        "## Environment",
        "",
        *_environment_lines(result),
        "",
        "## Targets",
        "",
        *_target_lines(targets),
        "",
    ]
    if rows:
        lines += [
            "## Attention: entropy-attn vs PyTorch SDPA",
            "",
            "entropy-attn with entropy off; `speed vs fastest SDPA` = fastest SDPA time / "
            "entropy-attn time (> 1: entropy-attn is faster). Peak memory is "
            "`torch.cuda.max_memory_allocated` for one call, inputs included (CUDA only).",
            "",
            *_kernel_lines(rows),
            "",
            "## Entropy on vs off",
            "",
            *_entropy_lines(rows),
            "",
            "## Fused vs materialising entropy",
            "",
            "`extra MiB`: peak memory of the call minus memory allocated before it.",
            "",
            *_fused_lines(rows),
            "",
        ]
        lse_table = _lse_lines(rows)
        if lse_table:
            lines += [
                "## Fused vs the LSE identity (stock SDPA)",
                "",
                "The strongest unfused entropy: one SDPA call with values `[V | K]` and its "
                "log-sum-exp, `H = LSE - scale <q, mean key>` (O(N) memory, like the kernel).",
                "",
                *lse_table,
                "",
            ]
    if host_entries(result) or host_entries(result, "host-processor"):
        lines += [
            "## Host cost per call",
            "",
            "CPU time of the calling thread per call (`time.thread_time`), Triton's launch stubbed "
            "out: the Python between the caller and the kernel.",
            "",
            *_host_lines(result),
            "",
        ]
    if unet:
        lines += ["## UNet step", "", *_unet_lines(unet), ""]
    if generation:
        steps = sorted({e.get("steps") for r in generation for e in r.modes.values()}, key=str)
        lines += [
            "## Whole generation",
            "",
            f"`pipe(prompt, ...)` with {', '.join(map(str, steps))} steps and classifier-free "
            "guidance: text encoding, every denoising step, the autoencoder's decode. No target "
            "covers it; it shows what the UNet-step ratios mean for a user's call.",
            "",
            *_unet_lines(generation),
            "",
        ]
    lines += _gpu_check_lines(result)
    if plot_name:
        lines += ["## TFLOP/s vs N", "", f"![TFLOP/s vs N per head dim]({plot_name})", ""]
    if result.skipped:
        lines += [
            "## Skipped",
            "",
            *_table(["test", "reason"], [[s["test"], s["reason"]] for s in result.skipped]),
            "",
        ]
    return "\n".join(lines)


def _gpu_check_lines(result: ResultFile) -> list[str]:
    """Parity against fp64 and host cost per call, as ``benchmarks/gpu_check.py`` records them."""
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
                _mark(bool(p.get("ok"))),
            ]
            for p in result.parity
        ]
        lines += [
            "## Parity against fp64",
            "",
            "Output within 2 x SDPA's own error + 1 ulp; entropy within 5e-5 + 2e-5 |H| nats.",
            "",
            *_table(header, table),
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
            *_table(["call", "median per call", "how"], table),
            "",
        ]
    return lines


# ---------------------------------------------------------------------------------------------
# Plot


def _series_label(row: ShapeRow) -> str:
    e = row.sample
    return f"{e.get('suite')} H{e.get('heads')}"


def plot_tflops(result: ResultFile, path: Path) -> bool:
    """TFLOP/s vs N (self-attention), one panel per (device, dtype, head dim); ``False`` if
    there is nothing to plot."""
    rows = [r for r in shape_rows(result) if r.sample.get("seq_q") == r.sample.get("seq_k")]
    panels: dict[tuple, list[ShapeRow]] = defaultdict(list)
    for row in rows:
        e = row.sample
        panels[(e.get("device"), e.get("dtype"), e.get("head_dim"))].append(row)
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, Callable[[ShapeRow], Entry | None]] = {
        "entropy-attn": lambda r: r.off,
        "entropy-attn + entropy": lambda r: r.on,
        "fastest SDPA": lambda r: r.fastest_sdpa[1] if r.fastest_sdpa else None,
        "materialising entropy": lambda r: r.materialise,
    }
    keys = sorted(panels, key=lambda k: (str(k[0]), str(k[1]), k[2] or 0))
    columns = min(3, len(keys))
    grid_rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(
        grid_rows, columns, figsize=(5.5 * columns, 4 * grid_rows), squeeze=False
    )
    markers = "osd^v<>p*h"
    for ax, key in zip(axes.flat, keys, strict=False):
        by_series: dict[str, list[ShapeRow]] = defaultdict(list)
        for row in panels[key]:
            by_series[f"{_series_label(row)} [{row.candidate_variant}]"].append(row)
        for color_index, (line_name, pick) in enumerate(lines.items()):
            for marker_index, (series, series_rows) in enumerate(sorted(by_series.items())):
                points = sorted(
                    (entry.get("seq_q"), entry.tflops)
                    for entry in map(pick, series_rows)
                    if entry is not None and entry.tflops is not None
                )
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                ax.plot(
                    xs,
                    ys,
                    marker=markers[marker_index % len(markers)],
                    color=f"C{color_index}",
                    label=f"{line_name} · {series}",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (tokens)")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"{key[0]} {key[1]}, head dim {key[2]}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"{result.device_name} ({result.path.name})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# CLI


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
