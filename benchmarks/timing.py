"""Timing, memory and the record of one benchmark.

``timed_rounds`` runs ``benchmark.pedantic`` with the timer from the test's ``benchmark``
marker (``cuda_sync_timer`` on CUDA: it synchronises the device before reading the clock, so a
round's time covers the GPU work it queued). Each round runs ``iterations`` back-to-back calls and
reports their mean; pytest-benchmark keeps every round's value (raw data in the JSON) and the
median over rounds is the figure the report uses. Warm-up (compilation, Triton autotuning, cuDNN
plan selection) happens before timing and is excluded; so is input creation.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from benchmarks.cases import dtype_name

WARMUP_CALLS = 3


def cuda_sync_timer() -> float:
    """A pytest-benchmark timer for GPU work: drain the CUDA queue, then read the wall clock."""
    torch.cuda.synchronize()
    return time.perf_counter()


@dataclass(frozen=True)
class TimingPlan:
    """How long to time one benchmark.

    Attributes:
        budget_s: target total time of the timed rounds.
        min_rounds: at least this many rounds (the median is over rounds).
        max_rounds: at most this many rounds (bounds the raw data kept in the result file).
        round_s: each round runs enough back-to-back calls to last about this long, so that the
            timer's own cost (a device synchronisation) is small against what it measures. At 0
            every round is one call and there are exactly ``min_rounds`` rounds.
        warmup_rounds: untimed rounds before the timed ones (after the caller's own warm-up).
    """

    budget_s: float
    min_rounds: int = 10
    max_rounds: int = 100
    round_s: float = 1e-3
    warmup_rounds: int = 2


def timed_rounds(
    benchmark, fn: Callable[[], object], timer: Callable[[], float], plan: TimingPlan
) -> dict[str, int]:
    """Time ``fn`` with ``benchmark.pedantic``; ``fn`` must already be warmed up.

    Returns the chosen ``{"rounds": ..., "iterations": ...}`` (also stored in ``extra_info``).
    """
    if plan.round_s <= 0:  # calls of seconds (a whole generation): one a round, no calibration
        iterations, rounds = 1, plan.min_rounds
    else:
        calls = 0
        start = timer()
        while True:
            fn()
            calls += 1
            elapsed = timer() - start
            if elapsed >= plan.round_s or calls >= 1000:
                break
        per_call = max(elapsed / calls, 1e-9)
        iterations = max(1, math.ceil(plan.round_s / per_call))
        rounds = math.ceil(plan.budget_s / (per_call * iterations))
        rounds = min(max(rounds, plan.min_rounds), plan.max_rounds)
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=plan.warmup_rounds)
    return {"rounds": rounds, "iterations": iterations}


def median_seconds(benchmark) -> float | None:
    """Median seconds per call of the finished benchmark (``None`` with ``--benchmark-disable``)."""
    stats = getattr(benchmark, "stats", None)
    if not stats:
        return None
    return float(stats.stats.median)


def cuda_peak_memory(fn: Callable[[], object]) -> tuple[int, int]:
    """``(peak, extra)`` bytes of one call of ``fn`` on CUDA.

    ``peak`` is ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` (inputs
    included); ``extra`` is ``peak`` minus what was allocated before the call (what the call itself
    needs, output included).
    """
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del result
    return int(peak), int(peak - before)


def warm_up(fn: Callable[[], object], calls: int = WARMUP_CALLS) -> None:
    """Run ``fn`` a few times untimed (compilation, autotuning, allocator); errors propagate."""
    for _ in range(calls):
        fn()


def probe(fn: Callable[[], object], what: str, calls: int = WARMUP_CALLS) -> None:
    """Warm a baseline up; skip the test, saying why, if it raises (unsupported shape, dtype, OOM).

    Only for baselines that may legitimately refuse a call; entropy-attn itself uses
    :func:`warm_up`, so that its errors fail the benchmark instead of hiding as skips.

    Warnings raised on the way (SDPA lists why each backend refused) go into the skip reason,
    which ``benchmarks/conftest.py`` copies into the result file.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for _ in range(calls):
                fn()
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
            if isinstance(error, torch.cuda.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            notes = "; ".join(sorted({str(w.message).strip() for w in caught}))
            message = f"{type(error).__name__}: {str(error).strip()}"
            reason = f"{what} raised {message}" + (f" [warnings: {notes}]" if notes else "")
            pytest.skip(reason[:1500])


def record(
    benchmark,
    *,
    device: str,
    dtype: torch.dtype,
    impl: str,
    variant: str,
    entropy: bool,
    baseline: str,
    flops: int | None = None,
    peak_bytes: int | None = None,
    extra_bytes: int | None = None,
    **info: Any,
) -> None:
    """Write what the benchmark measured into ``benchmark.extra_info``.

    Args:
        impl: ``"entropy_attn"``, ``"sdpa"``, ``"materialise"`` or ``"unet"``.
        variant: the backend within ``impl`` (``"triton"``, ``"torch"``, an SDPA backend name,
            ``"default"``) or the UNet mode.
        baseline: plain-words name of what was timed.
        flops: forward FLOPs (``AttentionCase.info()`` supplies it); with the median it gives
            TFLOP/s.
        peak_bytes, extra_bytes: from :func:`cuda_peak_memory` (``None`` off CUDA).
    """
    median = median_seconds(benchmark)
    benchmark.extra_info.update(info)
    benchmark.extra_info.update(
        {
            "device": device,
            "dtype": dtype_name(dtype),
            "impl": impl,
            "variant": variant,
            "entropy": entropy,
            "baseline": baseline,
            "median_s": median,
            "peak_mem_bytes": peak_bytes,
            "peak_extra_bytes": extra_bytes,
        }
    )
    if flops is not None:
        benchmark.extra_info["flops"] = flops
        benchmark.extra_info["tflops"] = flops / median / 1e12 if median else None
