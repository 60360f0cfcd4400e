"""CUDA kernel benchmarks: entropy-attn's fused forward against PyTorch on real diffusion shapes.

What is timed, per shape (``benchmarks.cases.gpu_cases``) and dtype (fp16, bf16), all in one run
and, per shape and dtype, back to back, so every ratio the report prints compares numbers taken
moments apart on one GPU. ``test_attention``'s ``impl`` is one of:

* ``entropy_attn-off`` / ``entropy_attn-on``: ``entropy_attn.attention(q, k, v, scale,
  backend="triton")`` with ``return_entropy`` off and on (the fused online entropy);
* ``sdpa-<BACKEND>``: ``F.scaled_dot_product_attention(q, k, v, scale=scale)`` forced, one at a
  time, onto FLASH_ATTENTION, EFFICIENT_ATTENTION, CUDNN_ATTENTION and MATH with
  ``torch.nn.attention.sdpa_kernel``. A backend that refuses the shape/dtype is skipped and the
  reason (PyTorch's own warnings) is written into the result file.
* ``materialise``: the straightforward PyTorch entropy (full softmax matrix, then
  ``-(A * A.log()).sum(-1)``, plus ``A V``). Skipped, with the reason, when it would not fit.
* ``lse``: the strongest unfused entropy, the log-sum-exp identity with stock SDPA
  (``benchmarks.baselines.lse_attention_entropy``: one SDPA call with values ``[V | K]``, then
  ``H = LSE - scale <q, mean key>``); its variant is the SDPA kernel that returned the LSE.

Each benchmark records in ``extra_info``: shapes, dtype, scale, which implementation/baseline,
median seconds, TFLOP/s (``4*B*H*Lq*Lk*D / median``; the entropy's extra arithmetic is not
counted), peak memory (``torch.cuda.max_memory_allocated`` after a reset, inputs included) and the
call's own extra memory.

Excluded from the times: input creation, the first calls (Triton compilation and autotuning, cuDNN
plan selection), the peak-memory call, and Python set-up of the SDPA backend context (entered once
around all rounds). Included: Python dispatch and kernel launch of each call, which is what a
UNet layer pays too. Inputs are contiguous ``(B, H, L, D)``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import entropy_attn
from benchmarks.baselines import (
    lse_attention_entropy,
    materialised_attention_entropy,
    materialised_bytes,
)
from benchmarks.cases import (
    SDPA_BACKEND_NAMES,
    AttentionCase,
    dtype_name,
    gpu_cases,
    group_name,
    make_qkv,
    output_bytes,
)
from benchmarks.timing import (
    TimingPlan,
    cuda_peak_memory,
    cuda_sync_timer,
    probe,
    record,
    timed_rounds,
    warm_up,
)

pytestmark = [
    pytest.mark.gpu_bench,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="CUDA kernel benchmarks need a CUDA GPU; the CPU suite is `-m cpu_bench`",
    ),
    pytest.mark.benchmark(timer=cuda_sync_timer),
]

DEVICE = "cuda"
DTYPES = (torch.float16, torch.bfloat16)
CASES = gpu_cases()


def _case_id(case: AttentionCase) -> str:
    return case.id


@pytest.fixture(autouse=True)
def _release_cached_memory():
    """Return cached blocks after each benchmark so the next one's peak memory starts clean."""
    yield
    torch.cuda.empty_cache()


IMPLS = (
    "entropy_attn-off",
    "entropy_attn-on",
    *(f"sdpa-{name}" for name in SDPA_BACKEND_NAMES),
    "materialise",
    "lse",
)


# ``impl`` varies fastest: every implementation of one (shape, dtype) runs back to back, so the
# ratios between them are measured minutes apart at most.
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_attention(
    benchmark, case: AttentionCase, dtype: torch.dtype, impl: str, cuda_plan: TimingPlan
) -> None:
    """One attention implementation on one shape and dtype (see the module docstring)."""
    query, key, value = make_qkv(case, dtype, DEVICE)
    scale = case.scale
    where = f"at {case.id} {dtype_name(dtype)}"
    sdpa_context = contextlib.nullcontext()
    if impl.startswith("entropy_attn-"):
        entropy = impl == "entropy_attn-on"
        variant = "triton"
        baseline = "entropy_attn.attention(backend='triton')"

        def fn():
            return entropy_attn.attention(
                query, key, value, scale, return_entropy=entropy, backend="triton"
            )

    elif impl.startswith("sdpa-"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        entropy = False
        variant = impl.removeprefix("sdpa-")
        backend = getattr(SDPBackend, variant, None)
        if backend is None:
            pytest.skip(f"SDPBackend.{variant} does not exist in torch {torch.__version__}")
        baseline = f"F.scaled_dot_product_attention(scale=) forced to {variant}"
        sdpa_context = sdpa_kernel([backend])

        def fn():
            return F.scaled_dot_product_attention(query, key, value, scale=scale)

    elif impl == "lse":
        entropy = True
        variant = "sdpa"
        baseline = "LSE identity with stock SDPA: values [V | K], H = LSE - scale <q, mean key>"

        def fn():
            return lse_attention_entropy(query, key, value, scale)

    else:
        entropy = True
        variant = "torch"
        baseline = "softmax(Q K^T * scale) materialised in fp32, -(A * A.log()).sum(-1), A V"
        needed = materialised_bytes(case, dtype)
        free, _total = torch.cuda.mem_get_info()
        if needed > 0.9 * free:
            pytest.skip(
                f"materialised entropy {where} needs about {needed / 2**30:.1f} GiB for the "
                f"(B, H, Lq, Lk) matrices; {free / 2**30:.1f} GiB free"
            )

        def fn():
            return materialised_attention_entropy(query, key, value, scale)

    benchmark.group = group_name(case, dtype, DEVICE)
    with sdpa_context:  # entered once around warm-up and all rounds: its cost is not timed
        if impl.startswith("entropy_attn-"):
            warm_up(fn)
        else:
            probe(fn, f"{impl} {where}")
        peak, extra = cuda_peak_memory(fn)
        if impl == "lse":
            variant = fn()[2]  # the SDPA kernel that returned the LSE
        plan_used = timed_rounds(benchmark, fn, cuda_sync_timer, cuda_plan)
    record(
        benchmark,
        device=DEVICE,
        dtype=dtype,
        impl=impl.split("-", 1)[0],
        variant=variant,
        entropy=entropy,
        baseline=baseline,
        peak_bytes=peak,
        extra_bytes=extra,
        **case.info(),
        **output_bytes(case, dtype, entropy),
        **plan_used,
    )
