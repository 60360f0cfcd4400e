"""Assertions that report what went wrong: max and mean error and the first bad index."""

from __future__ import annotations

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def randn(shape, dtype, generator, device=DEVICE, scale=1.0) -> torch.Tensor:
    """Seeded normal tensor made on the CPU (same numbers on every device), then moved."""
    return (torch.randn(shape, generator=generator, dtype=torch.float32) * scale).to(
        device=device, dtype=dtype
    )


def error_report(actual: torch.Tensor, expected: torch.Tensor, bad: torch.Tensor | None = None):
    diff = (actual.double() - expected.double()).abs()
    first = None
    if bad is not None and bool(bad.any()):
        first = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
    else:
        flat = int(torch.nan_to_num(diff, nan=float("inf")).argmax())
        first = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    return (
        f"max abs err {diff.max().item():.3e}, mean abs err {diff.mean().item():.3e}, "
        f"first bad index {first}: actual {actual[first].item():.6g} "
        f"expected {expected[first].item():.6g}"
    )


def assert_close(actual, expected, *, atol: float, rtol: float, what: str = "") -> None:
    """Elementwise ``|a - e| <= atol + rtol |e|`` (no NaN allowed), with a readable report."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a, e = actual.double().cpu(), expected.double().cpu()
    bad = ~((a - e).abs() <= atol + rtol * e.abs())
    if bool(bad.any()):
        raise AssertionError(f"{what}: {error_report(a, e, bad)} (atol {atol}, rtol {rtol})")


def max_err(actual, expected) -> float:
    return (actual.double().cpu() - expected.double().cpu()).abs().max().item()


# A tiny FLUX transformer and its inputs, shared by tests/test_dit.py and tests/cp_harness.py.
FLUX_TEXT_TOKENS = 8  # text tokens of flux_inputs (divisible by a context-parallel world of 2)


def tiny_flux(num_single_layers: int = 1, seed: int | None = None):
    """``FluxTransformer2DModel`` of ``TINY_FLUX_TRANSFORMER`` (:mod:`entropy_attn.tiny.pipelines`),
    random weights, eval; ``seed`` seeds the weights (the context-parallel workers and their
    reference must agree)."""
    import diffusers

    from entropy_attn.tiny.pipelines import TINY_FLUX_TRANSFORMER

    if seed is not None:
        torch.manual_seed(seed)
    config = dict(TINY_FLUX_TRANSFORMER, num_single_layers=num_single_layers)
    return diffusers.FluxTransformer2DModel(**config).eval()


def flux_inputs(latent_h: int, latent_w: int, seed: int = 0) -> dict:
    """Seeded forward inputs of :func:`tiny_flux` for a ``latent_h x latent_w`` latent (FLUX
    packs 2x2 latent pixels per token) and :data:`FLUX_TEXT_TOKENS` text tokens."""
    g = torch.Generator().manual_seed(seed)
    h, w = latent_h // 2, latent_w // 2
    ids = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1)
    img_ids = torch.cat([torch.zeros(h * w, 1), ids.reshape(-1, 2).float()], dim=1)
    text = FLUX_TEXT_TOKENS
    return dict(
        hidden_states=torch.randn(1, h * w, 16, generator=g),
        encoder_hidden_states=torch.randn(1, text, 32, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g),
        timestep=torch.tensor([0.5]),
        img_ids=img_ids,
        txt_ids=torch.zeros(text, 3),
    )
