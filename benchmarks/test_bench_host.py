"""Host cost of one attention call: the Python between the caller and the kernel (``cpu_bench``).

What is timed, per call, on this CPU, all in one run with the implementations of a group run back
to back:

* ``test_host_attention``: ``entropy_attn.attention(q, k, v, scale, backend="triton")`` (entropy
  off and on) on the **CUDA dispatch path** with only Triton's own launch replaced by a no-op
  (``JITFunction.run`` of the kernel; the autotuner's benchmarking gets fixed fake timings, so its
  cache holds a pick as on a GPU), and the CUDA autotuning config list installed, so that the
  autotuner's key and cache lookup are paid as on a GPU. Everything else is real: validation,
  backend choice, the launch plan, both output allocations. The same call through
  ``ops.dispatch`` (what the diffusers processors call) is timed too. Input: SD-2.1's first UNet
  level at 224 px (b2 h5 q784 k784 d64) as diffusers' ``(B, L, H, D)`` views, fp32. Next to them:
  a bare ``F.scaled_dot_product_attention`` on a (1, 1, 8, 16) tensor (a small torch op, for
  scale) and ``entropy_attn.attention(backend="torch")`` on the same tiny tensor (the PyTorch
  path's own overhead: target <= 1.5x the bare SDPA call).
* ``test_host_processor``: one call of diffusers' ``AttnProcessor2_0`` and of
  ``entropy_attn.EntropyAttnProcessor`` (backend ``"triton"``, launch stubbed as above) on the
  same ``Attention`` module (320 channels, 5 heads of 64) and hidden states (2, 64, 320), with
  the attention stubbed in both (SDPA returns ``torch.empty_like(query)``) and the q/k/v/out
  projections replaced by ``nn.Identity`` (identical matmuls in both), so what is timed is each
  processor's own host cost.

The timer is ``time.thread_time`` (CPU time of the calling thread), not wall time: on a shared
machine it does not count the time the thread waits for a core, which is what a host-cost figure
must exclude. PyTorch runs with one intra-op thread here (see ``one_thread``). Median over
rounds; each round is the mean of many back-to-back calls.

Runs only where the kernel's CUDA launch cannot happen anyway (no CUDA; ``TRITON_INTERPRET=1``
makes the kernel importable on CPU); on a GPU machine ``benchmarks/gpu_check.py`` measures the
real CUDA host cost.
"""

from __future__ import annotations

import os
import time
from functools import partial

import pytest
import torch
import torch.nn.functional as F

import entropy_attn
from benchmarks.cases import AttentionCase
from benchmarks.timing import TimingPlan, record, timed_rounds, warm_up

pytestmark = [
    pytest.mark.cpu_bench,
    pytest.mark.skipif(
        torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
        reason="the stubbed-launch host-cost benchmark runs only without CUDA (TRITON_INTERPRET=1)",
    ),
    pytest.mark.benchmark(timer=time.thread_time),
]

DTYPE = torch.float32
TIMER = time.thread_time
HOST_CASE = AttentionCase(
    suite="sd21",
    attention="self",
    batch=2,
    heads=5,
    seq_q=784,
    seq_k=784,
    head_dim=64,
    train_tokens=4096,
    image_size=224,
    level=0,
)
TINY_SHAPE = (1, 1, 8, 16)
HOST_IMPLS = (
    "sdpa-tiny",
    "torch-path-tiny",
    "triton-dispatch-off",
    "triton-attention-off",
    "triton-attention-on",
)
PROCESSOR_IMPLS = ("AttnProcessor2_0", "EntropyAttnProcessor")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: host cost is single-threaded Python, and on a shared machine an
    OpenMP region of a tiny op can wait milliseconds for a preempted worker thread (measured:
    2 ms for a (2, 64, 320) division with 2 threads, 23 us with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stubbed_launch(monkeypatch):
    """Triton's launch of the attention kernel as a no-op, with the CUDA config list and fake
    autotuning timings (no GPU to time on), so that the autotuner keys and caches as on CUDA."""
    from entropy_attn.kernels import attention_fwd as fwd

    kernel = fwd._attention_fwd_kernel
    monkeypatch.setattr(kernel.fn, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(kernel, "configs", fwd._cuda_configs())
    monkeypatch.setattr(kernel, "cache", {})
    monkeypatch.setattr(fwd, "interpreting", lambda: False)  # prune as on CUDA

    def fake_bench(*args, config, **kwargs):
        return [float(config.num_warps * config.kwargs["BLOCK_N"])] * 3

    monkeypatch.setattr(kernel, "_bench", fake_bench)
    monkeypatch.setattr(fwd, "_PLANS", {})
    return kernel


def _blhd(case: AttentionCase, seq: int, generator) -> torch.Tensor:
    shape = (case.batch, seq, case.heads, case.head_dim)
    return torch.randn(shape, generator=generator, dtype=DTYPE).transpose(1, 2)


def _host_call(impl: str):
    """The call for ``impl`` and its ``record`` fields."""
    generator = torch.Generator().manual_seed(0)
    case = HOST_CASE
    if impl.endswith("-tiny"):
        tiny = torch.randn(TINY_SHAPE, generator=generator, dtype=DTYPE)
        if impl == "sdpa-tiny":
            call = partial(F.scaled_dot_product_attention, tiny, tiny, tiny, scale=0.25)
            what = "bare F.scaled_dot_product_attention on a (1, 1, 8, 16) tensor"
        else:
            call = partial(entropy_attn.attention, tiny, tiny, tiny, 0.25, backend="torch")
            what = "entropy_attn.attention(backend='torch') on a (1, 1, 8, 16) tensor"
        shape = dict(zip(("batch", "heads", "seq_q", "head_dim"), TINY_SHAPE, strict=True))
        return call, {"baseline": what, "entropy": False, **shape, "seq_k": TINY_SHAPE[2]}
    query, key, value = (_blhd(case, n, generator) for n in (case.seq_q, case.seq_k, case.seq_k))
    entropy = impl.endswith("-on")
    if impl.startswith("triton-dispatch"):
        from entropy_attn.op.api import dispatch

        call = partial(dispatch, query, key, value, case.scale, entropy, "triton")
        what = "entropy_attn.op.api.dispatch(backend='triton'), launch stubbed"
    else:
        call = partial(
            entropy_attn.attention,
            query,
            key,
            value,
            case.scale,
            return_entropy=entropy,
            backend="triton",
        )
        what = "entropy_attn.attention(backend='triton'), launch stubbed"
    return call, {"baseline": what, "entropy": entropy, **case.info()}


@pytest.mark.parametrize("impl", HOST_IMPLS)
def test_host_attention(benchmark, impl: str, stubbed_launch, cpu_plan: TimingPlan) -> None:
    """Per-call host cost of one attention call (see the module docstring)."""
    fn, fields = _host_call(impl)
    benchmark.group = "cpu host cost: attention call"
    _time_and_record(benchmark, fn, cpu_plan, impl="host", variant=impl, **fields)


def _time_and_record(benchmark, fn, plan: TimingPlan, **fields) -> None:
    """Warm ``fn`` up, time it in thread CPU time, and record it with ``fields``."""
    warm_up(fn)
    plan_used = timed_rounds(benchmark, fn, TIMER, plan)
    record(
        benchmark,
        device="cpu",
        dtype=DTYPE,
        timer="thread_time",
        torch_num_threads=torch.get_num_threads(),
        **fields,
        **plan_used,
    )


def _processor_call(impl: str, monkeypatch):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=320, heads=5, dim_head=64).eval()
    # The projections are 320 -> 320 matmuls, milliseconds each on a loaded CPU, identical in both
    # processors: replaced by identities, like the attention itself, so what is left is each
    # processor's own host cost.
    attn.to_q = attn.to_k = attn.to_v = torch.nn.Identity()
    attn.to_out[0] = torch.nn.Identity()
    hidden = torch.randn(2, 64, 320)
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **kw: torch.empty_like(q))
    if impl == "AttnProcessor2_0":
        processor = AttnProcessor2_0()
    else:
        processor = entropy_attn.EntropyAttnProcessor(
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
            train_tokens=64,
            rescale=True,
            backend="triton",
        )

    @torch.inference_mode()
    def call():
        return processor(attn, hidden)

    return call


@pytest.mark.parametrize("impl", PROCESSOR_IMPLS)
def test_host_processor(
    benchmark, impl: str, stubbed_launch, monkeypatch, request, cpu_plan: TimingPlan
) -> None:
    """One processor call, attention stubbed (see the module docstring)."""
    pytest.importorskip("diffusers", reason="the processor benchmark needs diffusers")
    fn = _processor_call(impl, monkeypatch)
    # The stubbed attention leaves its output uninitialised; arithmetic on stray subnormals in it
    # is slow on x86 (milliseconds per call, varying with the memory's old contents) and would
    # swamp what is measured here.
    flushing = torch.set_flush_denormal(True)
    if flushing:
        request.addfinalizer(lambda: torch.set_flush_denormal(False))
    benchmark.group = "cpu host cost: attention processor"
    baseline = (
        f"{impl}.__call__ on hidden states (2, 64, 320), 5 heads of 64, "
        "attention stubbed, projections nn.Identity"
    )
    _time_and_record(
        benchmark,
        fn,
        cpu_plan,
        impl="host-processor",
        variant=impl,
        entropy=False,
        baseline=baseline,
    )
