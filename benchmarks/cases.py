"""Real attention shapes of the benchmark suites, and their inputs and benchmark groups.

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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

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


def group_name(case: AttentionCase, dtype: torch.dtype, device: str) -> str:
    """pytest-benchmark group: one shape, dtype and device, so its table compares like with like."""
    return f"{device} {dtype_name(dtype)} {case.id}"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


def output_bytes(case: AttentionCase, dtype: torch.dtype, entropy: bool) -> dict[str, int]:
    """Bytes of the attention output and (if requested) the fp32 entropy: the O(N) floor."""
    element = torch.empty((), dtype=dtype).element_size()
    out = case.batch * case.heads * case.seq_q * case.head_dim * element
    ent = case.batch * case.heads * case.seq_q * 4 if entropy else 0
    return {"out_bytes": out, "entropy_bytes": ent}
