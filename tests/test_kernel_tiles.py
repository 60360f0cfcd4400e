"""Tile choice of the CUDA kernel (the pruner runs anywhere) and the conditional rescale.

The conditional rescale keeps a row's old max as the reference until a key tile raises it by
more than ``RESCALE_LOG2`` (8, in log2 units): these tests put the growth just under and just over
that threshold in a later key tile and compare with fp64, through the Triton interpreter on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close

import entropy_attn
from entropy_attn.kernels import attention_fwd as fwd
from entropy_attn.op.reference import attention_entropy


def _tiles(configs) -> list[tuple[int, int, int, int]]:
    return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in configs]


def _pruned(head_dim, dtype=torch.float16, precision="tf32", seq_k=4096, **named):
    query = torch.empty(0, dtype=dtype)
    return _tiles(
        fwd._prune_configs(
            fwd._cuda_configs(),
            {"seq_k": seq_k, "Q": query, **named},
            DOT_PRECISION=precision,
            **fwd.tile_constexprs(head_dim),
        )
    )


@pytest.fixture
def cuda_pruning(monkeypatch):
    """The pruner as it runs for CUDA launches (under the interpreter it keeps its one tile)."""
    monkeypatch.setattr(fwd, "interpreting", lambda: False)
    monkeypatch.delenv("ENTROPY_ATTN_AUTOTUNE", raising=False)
    return monkeypatch


def test_first_tile_per_head_dim(cuda_pruning):
    """sm_90: 128 x 128 with 8 warps up to head dim 80, 128 x 64 with 8 warps up to 160; sm_80:
    128 x 128 up to 64, 128 x 64 at 80, 128 x 32 (2 stages) up to 160; small tiles past 160. Never a
    128 x 64 tile with 4 warps (it spills with entropy)."""
    firsts = {d: _pruned(d)[0] for d in (40, 64, 80, 96, 128, 160, 256)}
    assert firsts == {
        40: (128, 128, 8, 3),
        64: (128, 128, 8, 3),
        80: (128, 128, 8, 3),
        96: (128, 64, 8, 3),
        128: (128, 64, 8, 3),
        160: (128, 64, 8, 3),
        256: (64, 64, 4, 2),
    }
    cuda_pruning.setattr(fwd, "_arch", lambda tensor: 80)
    sm80 = {d: _pruned(d)[0] for d in (40, 64, 80, 128, 160, 256)}
    assert sm80 == {
        40: (128, 128, 8, 3),
        64: (128, 128, 8, 3),
        80: (128, 64, 8, 3),  # sm_80 spills 128 x 128 at width 80
        128: (128, 32, 8, 2),  # and 128 x 64 at 128 (and 128 x 32 with 3 stages at 160)
        160: (128, 32, 8, 2),
        256: (64, 64, 4, 2),
    }
    for arch in (80, 90):
        cuda_pruning.setattr(fwd, "_arch", lambda tensor, arch=arch: arch)
        for head_dim in (40, 64, 80, 128, 160):
            for block_m, block_n, warps, _ in _pruned(head_dim):
                assert block_m * block_n < 128 * 64 or warps == 8, (head_dim, block_m, warps)


def test_autotune_off_keeps_the_first_tile(cuda_pruning):
    every = _pruned(64)
    assert len(every) == 5 and every == fwd.tiles_for(64, 90)
    cuda_pruning.setenv("ENTROPY_ATTN_AUTOTUNE", "0")
    assert _pruned(64) == every[:1]


def test_small_grids_start_with_64_row_tiles(cuda_pruning):
    """SD-2.1 at 256 px, level 1 (B*H = 20, N = 256): two 128-row tiles per head give 40 programs
    on 132 multiprocessors, so the 64-row tile goes first; a DiT at N = 4096 keeps 128 rows."""
    small = _pruned(64, seq_k=256, SEQ_Q_BUCKET=256, BATCH_HEADS_BUCKET=32)
    assert small[0] == (64, 64, 4, 3)
    assert sorted(small) == sorted(_pruned(64, seq_k=256))  # reordered, nothing dropped
    large = _pruned(64, SEQ_Q_BUCKET=4096, BATCH_HEADS_BUCKET=64)
    assert large[0] == (128, 128, 8, 3)


def test_shared_memory_and_key_width_prune(cuda_pruning):
    assert all(n <= 32 for _, n, _, _ in _pruned(64, seq_k=20))  # no key tile wider than keys
    assert _pruned(64, torch.float32, "ieee") == [(32, 32, 4, 2)]  # IEEE fp32: one small tile
    tf32 = _pruned(64, torch.float32, "tf32")
    assert (128, 128, 8, 3) not in tf32 and len(tf32) > 1  # 4-byte elements: 128 x 128 too big
    for head_dim in (40, 64, 80, 96, 128, 160, 256):
        for block_m, block_n, _, stages in _pruned(head_dim):
            width = sum(fwd.head_dim_split(head_dim))
            assert 2 * width * (block_m + 2 * block_n * stages) <= 160 * 1024


def test_grid_size_is_in_the_autotune_key():
    """SD (B*H = 10) and a DiT (B*H = 48) at the same N and head dim tune separately."""
    kernel = fwd._attention_fwd_kernel
    assert "BATCH_HEADS_BUCKET" in kernel.keys
    assert "BATCH_HEADS_BUCKET" in kernel.fn.arg_names


def _rescale_case(growth_log2: float, dtype: torch.dtype, generator: torch.Generator):
    """Queries whose logits sit near 0 in the first key tiles, then jump by ``growth_log2``
    (log2 units) at key 40 (the second 32-key tile under the interpreter), then by 4 * that at
    key 100: both sides of the threshold, twice per row."""
    heads, seq_q, seq_k, head_dim = 2, 40, 130, 16
    query = torch.randn(1, heads, seq_q, head_dim, generator=generator) * 0.1
    key = torch.randn(1, heads, seq_k, head_dim, generator=generator) * 0.1
    value = torch.randn(1, heads, seq_k, head_dim, generator=generator)
    query[..., 0] = 1.0
    key[..., 0] = 0.0
    scale = 0.5
    # logit = scale * q.k = scale * k[..., 0] for the jumping keys (their other entries are 0)
    for position, jump in ((40, growth_log2), (100, 4 * growth_log2)):
        key[0, :, position] = 0.0
        key[0, :, position, 0] = jump / math.log2(math.e) / scale
    return query.to(DEVICE, dtype), key.to(DEVICE, dtype), value.to(DEVICE, dtype), scale


def test_loop_shape_follows_the_gpu():
    """sm_90 loads a tile's values before its softmax (EARLY_V) and keeps 8 partial row sums,
    sm_80 loads them right before their dot and keeps one; both flags are autotuning keys."""
    hopper, ampere = fwd.tile_constexprs(64, 90), fwd.tile_constexprs(64, 80)
    assert (hopper["EARLY_V"], hopper["ROW_PARTS"]) == (True, 8)
    assert (ampere["EARLY_V"], ampere["ROW_PARTS"]) == (False, 1)
    assert {"EARLY_V", "ROW_PARTS"} <= set(fwd._attention_fwd_kernel.keys)


@pytest.mark.parametrize("arch", [90, 80], ids=["sm90-order", "sm80-order"])
@pytest.mark.parametrize("growth_log2", [1.0, 7.9, 8.1, 20.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_conditional_rescale_matches_fp64(growth_log2, dtype, arch, generator, monkeypatch):
    """Both loop shapes (``EARLY_V`` and ``ROW_PARTS`` of sm_90 and of sm_80), interpreted."""
    if DEVICE == "cpu":
        monkeypatch.setattr(fwd, "_arch", lambda tensor: arch)
        monkeypatch.setattr(fwd, "_PLANS", {})
    elif arch != fwd._arch(torch.empty(0, device=DEVICE)):
        pytest.skip("on a GPU the load order is the GPU's own")
    query, key, value, scale = _rescale_case(growth_log2, dtype, generator)
    out, ent = entropy_attn.attention(
        query, key, value, scale, return_entropy=True, backend="triton"
    )
    q64, k64, v64 = query.double(), key.double(), value.double()
    out64 = F.scaled_dot_product_attention(q64, k64, v64, scale=scale)
    ent64 = attention_entropy(q64, k64, scale)
    tolerance = {torch.float32: 2e-5, torch.float16: 2e-3}[dtype]
    assert torch.isfinite(out).all() and torch.isfinite(ent).all()
    assert_close(out, out64, atol=tolerance, rtol=tolerance, what=f"out, growth {growth_log2}")
    assert_close(ent, ent64, atol=5e-5, rtol=2e-5, what=f"entropy, growth {growth_log2}")
