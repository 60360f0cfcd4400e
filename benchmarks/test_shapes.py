"""The benchmark shapes are the ones the speed issue names (cheap checks, no timing)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from benchmarks.baselines import materialised_attention_entropy
from benchmarks.cases import AttentionCase, dit_cases, gpu_cases, latent_side, sd_cases
from benchmarks.run import result_path


@pytest.mark.parametrize(
    ("image_size", "sides"),
    [(224, (28, 14, 7)), (512, (64, 32, 16)), (768, (96, 48, 24)), (1024, (128, 64, 32))],
)
def test_latent_sides(image_size: int, sides: tuple[int, int, int]) -> None:
    assert tuple(latent_side(image_size, level) for level in range(3)) == sides


def test_sd21_self_attention_shapes() -> None:
    cases = {(c.image_size, c.level): c for c in sd_cases("sd21", "self")}
    assert len(cases) == 12
    at_768 = [cases[(768, level)] for level in range(3)]
    assert [(c.batch, c.heads, c.seq_q, c.seq_k, c.head_dim) for c in at_768] == [
        (2, 5, 9216, 9216, 64),
        (2, 10, 2304, 2304, 64),
        (2, 20, 576, 576, 64),
    ]
    assert [c.train_tokens for c in at_768] == [4096, 1024, 256]
    assert cases[(512, 0)].scale == pytest.approx(1 / 8)  # N == T: the stock scale


def test_sd1x_and_cross_attention_shapes() -> None:
    sd1x = sd_cases("sd1x", "self", image_sizes=(224,))
    assert [(c.heads, c.head_dim, c.seq_q) for c in sd1x] == [
        (8, 40, 784),
        (8, 80, 196),
        (8, 160, 49),
    ]
    cross = sd_cases("sd21", "cross", image_sizes=(224,))
    assert {c.seq_k for c in cross} == {77}
    assert all(c.train_tokens is None and c.scale == pytest.approx(1 / 8) for c in cross)


def test_dit_and_totals() -> None:
    dit = dit_cases()
    assert {c.head_dim for c in dit} == {64, 128}
    assert max(c.seq_q for c in dit) == 16384
    assert len(gpu_cases()) == 12 * 4 + 6
    case = AttentionCase("x", "self", 2, 3, 5, 7, 11)
    assert case.flops == 4 * 2 * 3 * 5 * 7 * 11


def test_materialised_entropy_matches_definition() -> None:
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    out, entropy = materialised_attention_entropy(q, k, v, 0.3)
    probs = torch.softmax(q @ k.transpose(-2, -1) * 0.3, dim=-1)
    torch.testing.assert_close(out, (probs @ v).to(out.dtype), rtol=1e-5, atol=1e-6)
    expected = -(probs * probs.log()).sum(-1)
    torch.testing.assert_close(entropy.double(), expected, rtol=1e-5, atol=1e-6)


def test_result_path_does_not_overwrite(tmp_path: Path) -> None:
    day = dt.date(2000, 1, 2)
    first = result_path("cpu-test", day, tmp_path)
    assert first.name == "cpu-test-2000-01-02.json"
    first.write_text("{}")
    assert result_path("cpu-test", day, tmp_path).name == "cpu-test-2000-01-02-2.json"
