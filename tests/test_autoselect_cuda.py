"""``backend="auto"``'s timing on a real GPU: CUDA events, a decision with both times, and CUDA
graph capture that uses the decision made before it (or SDPA) and never times."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import entropy_attn
from entropy_attn.op import autoselect

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU only")


class CountingTimer:
    def __init__(self):
        self.calls = 0

    def __call__(self, candidates):
        self.calls += 1
        return autoselect.cuda_event_timer(candidates)


@pytest.fixture
def timer(tmp_path):
    counting = CountingTimer()
    previous = autoselect.set_selector(autoselect.AutoSelector(timer=counting, folder=tmp_path))
    yield counting
    autoselect.set_selector(previous)


def diffusers_qkv(seq=4096, heads=5, head_dim=64):
    generator = torch.Generator(device="cuda").manual_seed(0)
    return tuple(
        torch.randn(2, seq, heads, head_dim, generator=generator, device="cuda")
        .half()
        .transpose(1, 2)
        for _ in range(3)
    )


def test_auto_times_both_once_and_keeps_the_faster(timer):
    query, key, value = diffusers_qkv()
    out = entropy_attn.attention(query, key, value, 0.11)
    entropy_attn.attention(query, key, value, 0.11)
    assert timer.calls == 1
    (decision,) = autoselect.selector().decisions()[torch.cuda.get_device_name()].values()
    assert decision["fused_s"] > 0 and decision["sdpa_s"] > 0
    faster = decision["fused_s"] <= decision["sdpa_s"] * (1 - autoselect.MARGIN)
    assert decision["backend"] == ("triton" if faster else "torch")
    ref = F.scaled_dot_product_attention(query, key, value, scale=0.11)
    torch.testing.assert_close(out, ref, atol=4e-3, rtol=4e-3)


@pytest.mark.parametrize("decided_before", [True, False])
def test_cuda_graph_capture_never_times(timer, decided_before):
    query, key, value = diffusers_qkv(seq=1000)

    def step():
        return entropy_attn.attention(query, key, value, 0.11)

    if decided_before:  # warm-up on a side stream, as CUDA graph capture asks
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
    else:  # compile the candidates outside the capture, without deciding
        entropy_attn.attention(query, key, value, 0.11, backend="triton")
        F.scaled_dot_product_attention(query, key, value, scale=0.11)
        torch.cuda.synchronize()
    calls = timer.calls
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    assert timer.calls == calls == (1 if decided_before else 0)
    graph.replay()
    torch.cuda.synchronize()
    ref = F.scaled_dot_product_attention(query, key, value, scale=0.11)
    torch.testing.assert_close(out, ref, atol=4e-3, rtol=4e-3)
