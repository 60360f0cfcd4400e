"""``benchmarks/interleaved_unet.py``: one tiny round end to end, the interleaving, the ratios and
the two-call mode's patch (plain tests: they run with ``python -m pytest``)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import interleaved_unet

pytest.importorskip("diffusers", reason="the UNet A/B needs diffusers")


def test_summary_takes_per_round_ratios():
    samples = {
        "stock": [1.0, 2.0, 1.0],
        "enable": [1.1, 2.0, 1.3],
        "record": [1.2, 2.6, 1.2],
        "record-two-calls": [2.0, 4.0, 2.0],
    }
    rows = interleaved_unet.summary(samples)
    assert rows["stock"]["ratio_median"] == 1.0
    assert rows["enable"]["ratio_median"] == pytest.approx(1.1)  # 1.1, 1.0, 1.3
    assert (rows["record"]["ratio_min"], rows["record"]["ratio_max"]) == pytest.approx((1.2, 1.3))
    assert rows["record-two-calls"]["median_s"] == 2.0


def _count_calls(monkeypatch, module, *names) -> dict[str, int]:
    """Wrap ``module``'s functions ``names`` so that each call is counted; the live counts."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(module, name)

        def counted(*args, name=name, real=real):
            counts[name] += 1
            return real(*args)

        monkeypatch.setattr(module, name, counted)
    return counts


def test_two_call_mode_uses_sdpa_plus_entropy_lse_and_restores_the_one_call(monkeypatch):
    from entropy_attn.op import api as ops

    counts = _count_calls(monkeypatch, ops, "entropy_lse")
    one_call = ops.attention_lse
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=generator) for _ in range(3))
    with interleaved_unet.two_call_entropy():
        out, ent = ops.attention_lse(q, k, v, 0.3)
    assert ops.attention_lse is one_call and counts == {"entropy_lse": 1}
    assert torch.equal(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3))
    assert torch.allclose(ent, one_call(q, k, v, 0.3)[1], atol=2e-6)


def test_one_round_end_to_end(tmp_path, monkeypatch):
    from entropy_attn.op import api as ops

    counts = _count_calls(monkeypatch, ops, "attention_lse", "entropy_lse")
    output = tmp_path / "ab"
    assert interleaved_unet.main(["--rounds", "2", "--steps", "1", "--latents", "8"]
                                 + ["--output", str(output)]) == 0  # fmt: skip
    payload = json.loads(output.with_name("ab.json").read_text())
    (size,) = payload["sizes"]
    assert size["latent"] == 8 and set(size["samples_s"]) == set(interleaved_unet.MODES)
    assert all(len(times) == 2 for times in size["samples_s"].values())
    assert size["summary"]["stock"]["ratio_median"] == 1.0
    # warm-up + 2 rounds, 2 self-attention layers a step: both entropy paths really ran
    assert counts["attention_lse"] >= 6 and counts["entropy_lse"] >= 6
    assert "| 64 px | record-two-calls |" in output.with_name("ab.md").read_text()
