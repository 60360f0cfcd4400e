"""Shared pieces of the benchmark suites: real attention shapes, timing, memory, records.

Shapes (all self-attention shapes use the entropy-preserving scale the layer would get at that
size, ``log_scale(N, T, d)``; cross-attention keeps ``1/sqrt(d)`` as the paper does):

* SD-2.1-base UNet self-attention at 224², 512², 768², 1024²: batch 2 (classifier-free guidance),
  5/10/20 heads of dim 64 at UNet levels 0/1/2, ``N`` = latent ``h*w`` at the level (latent =
  image / 8, halved per level with ceil rounding: 224 -> 28, 14, 7). Trained at 512², so
  ``T`` = 4096/1024/256.
* SD 1.x / LDM head dims 40/80/160 (8 heads) at the same levels and sizes.
* Cross-attention of both: the same queries against 77 text keys.
* A DiT shape: batch 2, 24 heads of dim 64 (SD3-medium) and 128 (FLUX.1-dev), image tokens only
  (no joint text tokens), ``N`` = 1024/4096/16384 (512², 1024², 2048² with a /8 VAE and 2x2
  patches), ``T`` = 4096.

Timing: ``timed_rounds`` runs ``benchmark.pedantic`` with the timer from the test's ``benchmark``
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
from dataclasses import asdict, dataclass
from typing import Any

import pytest
import torch

from entropy_attn import log_scale

VAE_DOWNSAMPLE = 8
CFG_BATCH = 2  # classifier-free guidance: conditional and unconditional rows in one batch
TEXT_TOKENS = 77  # CLIP / LDMBert context length
SD_IMAGE_SIZES = (224, 512, 768, 1024)
SD_TRAIN_IMAGE_SIZE = 512
SD21_HEADS = (5, 10, 20)  # levels 0/1/2 of SD-2.1: 320/640/1280 channels, head dim 64
SD21_HEAD_DIM = 64
SD1X_HEADS = 8
SD1X_HEAD_DIMS = (40, 80, 160)  # levels 0/1/2 of SD 1.x and LDM: 320/640/1280 channels, 8 heads
DIT_HEADS = 24
DIT_HEAD_DIMS = (64, 128)  # SD3-medium, FLUX.1-dev
DIT_TOKENS = (1024, 4096, 16384)
DIT_TRAIN_TOKENS = 4096

SDPA_BACKEND_NAMES = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
WARMUP_CALLS = 3


def latent_side(image_size: int, level: int) -> int:
    """Side of the latent grid at a UNet level: image / 8, then halved per level, rounding up."""
    side = math.ceil(image_size / VAE_DOWNSAMPLE)
    for _ in range(level):
        side = math.ceil(side / 2)
    return side


@dataclass(frozen=True)
class AttentionCase:
    """One attention call shape in SDPA layout ``(batch, heads, seq, head_dim)``."""

    suite: str
    attention: str  # "self" or "cross"
    batch: int
    heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    train_tokens: int | None = None  # T of the layer; None keeps 1/sqrt(head_dim)
    image_size: int | None = None
    level: int | None = None

    @property
    def flops(self) -> int:
        """Forward FLOPs counted as ``4 * B * H * Lq * Lk * D`` (two matmuls)."""
        return 4 * self.batch * self.heads * self.seq_q * self.seq_k * self.head_dim

    @property
    def scale(self) -> float:
        """Softmax scale the layer gets: ``log_scale(Lk, T, d)``, or ``1/sqrt(d)`` if no ``T``."""
        if self.train_tokens is None:
            return 1.0 / math.sqrt(self.head_dim)
        return log_scale(self.seq_k, self.train_tokens, self.head_dim)

    @property
    def id(self) -> str:
        """Stable test id, e.g. ``sd21-self-768px-L0-b2h5q9216k9216d64``."""
        where = ""
        if self.image_size is not None:
            where = f"-{self.image_size}px"
        if self.level is not None:
            where += f"-L{self.level}"
        dims = f"b{self.batch}h{self.heads}q{self.seq_q}k{self.seq_k}d{self.head_dim}"
        return f"{self.suite}-{self.attention}{where}-{dims}"

    def info(self) -> dict[str, Any]:
        """Shape fields for ``benchmark.extra_info``."""
        fields = asdict(self)
        fields["case"] = self.id
        fields["scale"] = self.scale
        fields["flops"] = self.flops
        return fields


def sd_cases(model: str, attention: str, image_sizes=SD_IMAGE_SIZES) -> list[AttentionCase]:
    """UNet attention shapes of SD-2.1-base (``model="sd21"``) or SD 1.x/LDM (``"sd1x"``)."""
    cases = []
    for image_size in image_sizes:
        for level in range(3):
            if model == "sd21":
                heads, head_dim = SD21_HEADS[level], SD21_HEAD_DIM
            elif model == "sd1x":
                heads, head_dim = SD1X_HEADS, SD1X_HEAD_DIMS[level]
            else:
                raise ValueError(f"model must be 'sd21' or 'sd1x', got {model!r}")
            tokens = latent_side(image_size, level) ** 2
            train = latent_side(SD_TRAIN_IMAGE_SIZE, level) ** 2
            cross = attention == "cross"
            cases.append(
                AttentionCase(
                    suite=model,
                    attention=attention,
                    batch=CFG_BATCH,
                    heads=heads,
                    seq_q=tokens,
                    seq_k=TEXT_TOKENS if cross else tokens,
                    head_dim=head_dim,
                    train_tokens=None if cross else train,
                    image_size=image_size,
                    level=level,
                )
            )
    return cases


def dit_cases() -> list[AttentionCase]:
    """DiT image self-attention: 24 heads of dim 64 and 128, N = 1024, 4096, 16384."""
    return [
        AttentionCase(
            suite="dit",
            attention="self",
            batch=CFG_BATCH,
            heads=DIT_HEADS,
            seq_q=tokens,
            seq_k=tokens,
            head_dim=head_dim,
            train_tokens=DIT_TRAIN_TOKENS,
        )
        for head_dim in DIT_HEAD_DIMS
        for tokens in DIT_TOKENS
    ]


def gpu_cases() -> list[AttentionCase]:
    """Every shape of the CUDA kernel suite."""
    return [
        *sd_cases("sd21", "self"),
        *sd_cases("sd1x", "self"),
        *sd_cases("sd21", "cross"),
        *sd_cases("sd1x", "cross"),
        *dit_cases(),
    ]


def cpu_cases() -> list[AttentionCase]:
    """Small real shapes for the CPU suite: the 224² image (the paper's small size)."""
    sd21_self = sd_cases("sd21", "self", image_sizes=(224,))
    sd21_cross = sd_cases("sd21", "cross", image_sizes=(224,))
    sd1x_self = sd_cases("sd1x", "self", image_sizes=(224,))
    return [*sd21_self, sd21_cross[0], sd1x_self[0]]


# A shape small enough for the Triton CPU interpreter: two query tiles and two key tiles of 32.
INTERPRETER_CASE = AttentionCase(
    suite="tiny", attention="self", batch=1, heads=2, seq_q=64, seq_k=64, head_dim=16
)


def make_qkv(
    case: AttentionCase, dtype: torch.dtype, device: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded standard-normal ``(query, key, value)`` for ``case``, contiguous SDPA layout."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def randn(seq: int) -> torch.Tensor:
        shape = (case.batch, case.heads, seq, case.head_dim)
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    return randn(case.seq_q), randn(case.seq_k), randn(case.seq_k)


def materialised_attention_entropy(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward entropy: materialise ``A = softmax(scale Q K^T)``, then sum ``A ln A``.

    ``A`` is a full fp32 ``(B, H, Lq, Lk)`` tensor (as diffusers' ``upcast_softmax`` path builds
    it); ``entropy = -(A * A.log()).sum(-1)``; ``out = A V`` in the input dtype. Memory is
    ``O(Lq * Lk)``: this is the baseline the fused kernel's O(N) entropy is measured against.
    """
    probs = torch.softmax(torch.matmul(query, key.transpose(-2, -1)).float() * scale, dim=-1)
    entropy = -(probs * probs.log()).sum(dim=-1)
    out = torch.matmul(probs.to(value.dtype), value)
    return out, entropy


def _sdpa_with_lse(query, key, value, scale: float) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Stock SDPA kernels that also return the log-sum-exp of the scaled logits (natural log):
    ``(out, lse, backend)``. ``value``'s head dim may exceed ``query``'s: queries and keys are
    zero-padded to it (zeros add nothing to the logits), since flash and cuDNN want one head dim.
    On CUDA the first of cuDNN, flash, efficient that accepts the call; on CPU the CPU flash."""
    extra = value.shape[-1] - query.shape[-1]
    query = torch.nn.functional.pad(query, (0, extra))
    key = torch.nn.functional.pad(key, (0, extra))
    aten = torch.ops.aten
    if query.device.type != "cuda":
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, scale=scale)
        return out, lse, "cpu-flash"
    attempts = {
        "CUDNN_ATTENTION": lambda: aten._scaled_dot_product_cudnn_attention(
            query, key, value, None, True, scale=scale
        ),
        "FLASH_ATTENTION": lambda: aten._scaled_dot_product_flash_attention(
            query, key, value, scale=scale
        ),
        "EFFICIENT_ATTENTION": lambda: aten._scaled_dot_product_efficient_attention(
            query, key, value, None, True, scale=scale
        ),
    }
    errors = []
    for name, call in attempts.items():
        try:
            result = call()
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
            errors.append(f"{name}: {type(error).__name__}: {str(error).strip()[:200]}")
            continue
        return result[0], result[1], name
    raise RuntimeError("no SDPA kernel returned the log-sum-exp: " + "; ".join(errors))


def lse_attention_entropy(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The strongest unfused entropy: one stock SDPA call and the log-sum-exp identity.

    ``H_i = LSE_i - scale * <q_i, sum_j A_ij k_j>``, since ``ln A_ij = scale q_i.k_j - LSE_i``.
    One SDPA call attends with values ``[V | K]`` (head dim ``2D``): its first ``D`` columns are the
    output, the last ``D`` the attention-weighted mean key ``sum_j A_ij k_j``; the kernel's own
    log-sum-exp gives ``LSE``; the entropy is formed in fp32. Memory is O(N) like the fused kernel;
    the cost is an attention with twice the value width plus the concatenation. The mean key is
    rounded to the input dtype by SDPA, so in fp16/bf16 the entropy is less exact than the fused
    kernel's (the benchmark records its error).

    Returns ``(out, entropy, backend)``: ``out`` ``(B, H, Lq, D)`` in the input dtype, ``entropy``
    fp32 ``(B, H, Lq)`` in nats, ``backend`` the SDPA kernel that ran.
    """
    head_dim = value.shape[-1]
    out_and_mean_key, lse, backend = _sdpa_with_lse(
        query, key, torch.cat([value, key], dim=-1), scale
    )
    mean_key = out_and_mean_key[..., head_dim:].float()
    lse = lse[..., : query.shape[-2]].float()  # some kernels pad the query axis of the LSE
    entropy = lse - scale * (query.float() * mean_key).sum(-1)
    return out_and_mean_key[..., :head_dim], entropy, backend


def materialised_bytes(case: AttentionCase, dtype: torch.dtype) -> int:
    """Upper estimate of the transient memory of :func:`materialised_attention_entropy`.

    Per logit: the scores in the input dtype, then up to three fp32 tensors alive at once
    (``probs``, ``probs.log()``, their product) and ``probs`` cast back to the input dtype.
    """
    logits = case.batch * case.heads * case.seq_q * case.seq_k
    element = torch.empty((), dtype=dtype).element_size()
    return logits * (2 * element + 3 * 4)


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


def group_name(case: AttentionCase, dtype: torch.dtype, device: str) -> str:
    """pytest-benchmark group: one shape, dtype and device, so its table compares like with like."""
    return f"{device} {dtype_name(dtype)} {case.id}"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


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


def output_bytes(case: AttentionCase, dtype: torch.dtype, entropy: bool) -> dict[str, int]:
    """Bytes of the attention output and (if requested) the fp32 entropy: the O(N) floor."""
    element = torch.empty((), dtype=dtype).element_size()
    out = case.batch * case.heads * case.seq_q * case.head_dim * element
    ent = case.batch * case.heads * case.seq_q * 4 if entropy else 0
    return {"out_bytes": out, "entropy_bytes": ent}


UNET_MODES = ("stock", "enable", "enable-record-entropy")


def unet_inputs(
    config: dict, latent_size: int, dtype: torch.dtype, device: str, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Seeded inputs of one classifier-free-guidance UNet step at a square latent size."""
    generator = torch.Generator(device=device).manual_seed(seed)
    channels = config.get("in_channels", 4)
    context_dim = config["cross_attention_dim"]
    sample_shape = (CFG_BATCH, channels, latent_size, latent_size)
    context_shape = (CFG_BATCH, TEXT_TOKENS, context_dim)
    return {
        "sample": torch.randn(sample_shape, generator=generator, device=device, dtype=dtype),
        "timestep": torch.full((CFG_BATCH,), 500, device=device, dtype=torch.long),
        "encoder_hidden_states": torch.randn(
            context_shape, generator=generator, device=device, dtype=dtype
        ),
    }


def processor_names(unet) -> list[str]:
    """Class names of the attention processors the UNet uses now."""
    return sorted({type(proc).__name__ for proc in unet.attn_processors.values()})


def run_mode(
    benchmark,
    target,
    call: Callable[[], object],
    mode: str,
    timer: Callable[[], float],
    plan: TimingPlan,
    *,
    cuda: bool,
    warmup_calls: int = WARMUP_CALLS,
) -> dict[str, Any]:
    """Time ``call`` with ``target`` (a UNet or a pipeline) in ``mode``; returns fields for
    ``record``.

    ``mode`` is ``"stock"`` (diffusers' own processors), ``"enable"``
    (``entropy_attn.enable(target)``) or ``"enable-record-entropy"``
    (``entropy_attn.enable(target, record_entropy=True)``; whatever the handle records during the
    timed rounds is part of the measured cost). ``entropy_attn.disable(target)`` runs afterwards,
    and the test fails if the stock processor objects are not back.
    """
    import entropy_attn

    if mode not in UNET_MODES:
        raise ValueError(f"mode must be one of {UNET_MODES}, got {mode!r}")
    unet = getattr(target, "unet", target)
    stock = dict(unet.attn_processors)
    enabled = mode != "stock"
    recording = mode == "enable-record-entropy"
    records = None
    if enabled:
        handle = entropy_attn.enable(target, record_entropy=recording)
    try:
        processors = processor_names(unet)
        # ``warm_up``, not ``probe``: a step that raises is a bug, not a shape to skip.
        warm_up(call, warmup_calls)
        peak = extra = None
        if cuda:
            peak, extra = cuda_peak_memory(call)
        plan_used = timed_rounds(benchmark, call, timer, plan)
        if recording:
            records = len(handle.entropy_rows())  # evidence that recording was on
    finally:
        if enabled:
            entropy_attn.disable(target)
    restored = unet.attn_processors
    assert set(restored) == set(stock) and all(restored[k] is v for k, v in stock.items()), (
        "entropy_attn.disable did not put back the stock processor objects"
    )
    return {
        "processors": processors,
        "peak_bytes": peak,
        "extra_bytes": extra,
        "entropy_records": records,
        **plan_used,
    }


def run_unet_mode(
    benchmark,
    unet,
    inputs: dict[str, torch.Tensor],
    mode: str,
    timer: Callable[[], float],
    plan: TimingPlan,
    *,
    cuda: bool,
) -> dict[str, Any]:
    """Time one UNet forward (one denoising step) on ``inputs`` in ``mode`` (see
    :func:`run_mode`)."""

    @torch.inference_mode()
    def step():
        return unet(**inputs, return_dict=False)[0]

    return run_mode(benchmark, unet, step, mode, timer, plan, cuda=cuda)


def record_mode(
    benchmark,
    fields: dict[str, Any],
    *,
    device: str,
    dtype: torch.dtype,
    impl: str,
    mode: str,
    what: str,
    model: str,
    image_size: int,
    batch: int,
    **info: Any,
) -> None:
    """:func:`record` for a UNet step (``impl="unet"``) or a whole generation
    (``impl="generation"``) in ``mode``; ``fields`` is what :func:`run_mode` returned and
    ``what`` names the timed call (``"UNet2DConditionModel step"``)."""
    record(
        benchmark,
        device=device,
        dtype=dtype,
        impl=impl,
        variant=mode,
        entropy=mode == "enable-record-entropy",
        baseline=f"{what}, {mode}",
        model=model,
        image_size=image_size,
        latent_size=image_size // VAE_DOWNSAMPLE,
        batch=batch,
        **info,
        **fields,
    )


GENERATION_STEPS = 50
GUIDANCE_SCALE = 7.5
GENERATION_PROMPT = "a photograph of an astronaut riding a horse"


def generation_call(pipe, image_size: int, steps: int = GENERATION_STEPS, seed: int = 0):
    """One whole text-to-image generation as a zero-argument callable: text encoding, ``steps``
    denoising steps with classifier-free guidance (a UNet batch of 2) and the autoencoder's
    decode, returning the images as a tensor (no PIL conversion)."""
    device = pipe.unet.device

    @torch.inference_mode()
    def generate():
        generator = torch.Generator(device=device).manual_seed(seed)
        return pipe(
            GENERATION_PROMPT,
            height=image_size,
            width=image_size,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE_SCALE,
            generator=generator,
            output_type="pt",
        ).images

    return generate


def run_generation_mode(
    benchmark,
    pipe,
    image_size: int,
    mode: str,
    timer: Callable[[], float],
    plan: TimingPlan,
    *,
    cuda: bool,
    steps: int = GENERATION_STEPS,
) -> dict[str, Any]:
    """Time one whole generation of ``pipe`` at ``image_size``² in ``mode`` (see
    :func:`run_mode`); one untimed generation warms up (Triton autotuning, cuDNN plans)."""
    call = generation_call(pipe, image_size, steps)
    fields = run_mode(benchmark, pipe, call, mode, timer, plan, cuda=cuda, warmup_calls=1)
    return {**fields, "steps": steps, "guidance_scale": GUIDANCE_SCALE}


__all__ = [
    "CFG_BATCH",
    "GENERATION_STEPS",
    "INTERPRETER_CASE",
    "SDPA_BACKEND_NAMES",
    "TEXT_TOKENS",
    "UNET_MODES",
    "WARMUP_CALLS",
    "AttentionCase",
    "TimingPlan",
    "cpu_cases",
    "cuda_peak_memory",
    "cuda_sync_timer",
    "dit_cases",
    "dtype_name",
    "gpu_cases",
    "group_name",
    "latent_side",
    "lse_attention_entropy",
    "make_qkv",
    "materialised_attention_entropy",
    "materialised_bytes",
    "median_seconds",
    "output_bytes",
    "probe",
    "processor_names",
    "record",
    "record_mode",
    "generation_call",
    "run_generation_mode",
    "run_mode",
    "run_unet_mode",
    "sd_cases",
    "timed_rounds",
    "unet_inputs",
    "warm_up",
]
