"""The speed targets, checked against the measurements of one result file.

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

from collections.abc import Iterable
from dataclasses import dataclass, field

from benchmarks.report_format import MIB
from benchmarks.report_results import Entry, ResultFile, ShapeRow, UnetRow, shape_rows, unet_rows

MIN_TOKENS = 784
MAX_TOKENS = 16384
TEXT_TOKENS = 77


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


def in_kernel_scope(e: Entry) -> bool:
    """The kernel-speed scope: MIN_TOKENS <= Lq <= MAX_TOKENS, self-attention or text keys."""
    seq_q, seq_k = e.get("seq_q") or 0, e.get("seq_k") or 0
    in_range = MIN_TOKENS <= seq_q <= MAX_TOKENS
    return in_range and seq_k in (seq_q, TEXT_TOKENS)


def fused_in_scope(row: ShapeRow) -> bool:
    """The 20x target's scope: CUDA kernel, self-attention, MIN_TOKENS <= N <= MAX_TOKENS."""
    on = row.on
    if on is None or not is_cuda_kernel(row) or on.get("seq_k") != on.get("seq_q"):
        return False
    return MIN_TOKENS <= (on.get("seq_q") or 0) <= MAX_TOKENS


def is_sd21_768(row: UnetRow) -> bool:
    """The UNet-step target's row: one CUDA step of SD-2.1-base at 768 px."""
    return (
        row.impl == "unet"
        and row.device == "cuda"
        and row.model == "sd21-base"
        and row.image_size == 768
    )


def is_cuda_kernel(row: ShapeRow) -> bool:
    """A row of our Triton kernel timed on CUDA (the CUDA targets count only these)."""
    return row.sample.get("device") == "cuda" and row.candidate_variant == "triton"


def _where(row: ShapeRow) -> str:
    return f"{row.sample.get('dtype')} {row.case}"


def evaluate_targets(result: ResultFile) -> list[Target]:
    """Check every target against one file's measurements."""
    rows = shape_rows(result)
    kernel_rows = [r for r in rows if is_cuda_kernel(r)]

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
            if ratio is None or row.off is None or not in_kernel_scope(row.off):
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
        if speedup is not None and fused_in_scope(row):
            fused.checks.append(Check(_where(row), speedup, speedup >= 20.0))
        if (lse_ratio := row.lse_speedup) is not None and is_cuda_kernel(row):
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
            if is_sd21_768(row) and (ratio := row.ratio(mode)) is not None:
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
