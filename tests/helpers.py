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
