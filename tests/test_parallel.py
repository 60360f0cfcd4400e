"""Context parallelism (diffusers' Ulysses and ring attention) with entropy-attn.

The merge of attention over key shards is checked as a pure function against one shard holding
every key (float64). The whole path runs in two CPU processes over gloo (``cp_harness``, whose
patches of diffusers' accelerator assumptions stay in those processes): a tiny FLUX transformer at
a size other than its training size, Ulysses and ring, ``enable`` before and after
``enable_parallelism``; its output must equal the single-process entropy-attn output and its
recorded entropy the single-process recording.
"""

from __future__ import annotations

import types

import pytest
import torch
from helpers import assert_close, randn

import entropy_attn
from entropy_attn.parallel import (
    ShardAttention,
    check_parallel_config,
    cp_degree,
    global_key_tokens,
    merge_attention,
)
from entropy_attn.reference import attention_entropy, attention_logsumexp

diffusers = pytest.importorskip("diffusers")
cp_harness = pytest.importorskip("cp_harness")

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not built"
)


def whole_and_shards(generator, splits, scale):
    q = randn((2, 3, 7, 16), torch.float64, generator, "cpu")
    k = randn((2, 3, sum(splits), 16), torch.float64, generator, "cpu")
    v = randn((2, 3, sum(splits), 16), torch.float64, generator, "cpu")

    def attend(keys, values):
        lse = attention_logsumexp(q, keys, scale)
        out = torch.softmax(scale * q @ keys.transpose(-1, -2), -1) @ values
        return out, lse, attention_entropy(q, keys, scale)

    shards = [attend(ks, vs) for ks, vs in zip(k.split(splits, 2), v.split(splits, 2), strict=True)]
    return attend(k, v), shards


@pytest.mark.parametrize("scale", [0.25, 8.0], ids=["soft", "sharp"])
def test_merge_over_key_shards_equals_one_shard_float64(generator, scale):
    """Three uneven key shards; at scale 8 the logits span hundreds of nats, so shard weights
    differ by many orders of magnitude."""
    (out, lse, entropy), shards = whole_and_shards(generator, [5, 1, 11], scale)
    outs, lses, entropies = zip(*shards, strict=True)
    merged_out, merged_lse, merged_entropy = merge_attention(outs, lses, entropies)
    assert_close(merged_out, out, atol=1e-12, rtol=1e-12, what="merged output")
    assert_close(merged_lse, lse, atol=1e-12, rtol=1e-12, what="merged lse")
    assert_close(merged_entropy, entropy, atol=1e-10, rtol=0, what="merged entropy")
    # The issue's form, H = LSE - sum_b exp(lse_b - LSE) e_b with e_b = lse_b - H_b (the mean
    # logit within shard b), is the same number.
    issue_form = merged_lse - sum(
        torch.exp(lse_b - merged_lse) * (lse_b - h_b)
        for lse_b, h_b in zip(lses, entropies, strict=True)
    )
    assert_close(issue_form, entropy, atol=1e-9, rtol=0, what="LSE - sum w_b e_b")
    only_out, only_lse = merge_attention(outs, lses)
    assert torch.equal(only_out, merged_out) and torch.equal(only_lse, merged_lse)


def test_merge_rejects_mismatched_shards(generator):
    (_, _, _), shards = whole_and_shards(generator, [3, 4], 0.5)
    outs, lses, entropies = zip(*shards, strict=True)
    with pytest.raises(ValueError, match="outs and lses"):
        merge_attention(outs, lses[:1])
    with pytest.raises(ValueError, match="entropies must have one entry per shard"):
        merge_attention(outs, lses, entropies[:1])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_shard_attention_over_key_shards_equals_whole_attention(generator, backend):
    """The per-shard op that diffusers' ring calls, in one process: called on two key shards
    (diffusers' (B, L, H, D) layout), its merged entropy is the entropy over all keys; "triton"
    is the fused kernel's log-sum-exp and entropy (interpreted here)."""
    q = randn((1, 10, 2, 16), torch.float32, generator, "cpu")
    k = randn((1, 14, 2, 16), torch.float32, generator, "cpu")
    v = randn((1, 14, 2, 16), torch.float32, generator, "cpu")
    op = ShardAttention(backend, return_entropy=True)
    parts = [
        op(None, q, ks, vs, scale=0.4, return_lse=True)
        for ks, vs in zip(k.split(7, 1), v.split(7, 1), strict=True)
    ]
    outs, lses = zip(*parts, strict=True)
    assert lses[0].shape == (1, 10, 2)  # diffusers' (B, L, H) layout of the LSE
    out = merge_attention([o.transpose(1, 2) for o in outs], [x.transpose(1, 2) for x in lses])[0]
    whole, entropy = entropy_attn.attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.4, return_entropy=True
    )
    assert_close(out, whole, atol=1e-6, rtol=0, what="ring-merged output")
    assert_close(op.entropy(), entropy, atol=1e-5, rtol=0, what="ring-merged entropy")
    with pytest.raises(NotImplementedError, match="forward-only"):
        ShardAttention.backward(None, out)


def test_parallel_config_is_carried_only_to_processors_that_take_one():
    """disable hands diffusers' config to a processor it puts back only where diffusers would
    have (the attribute exists and is unset); a set config and other processors are kept."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    from entropy_attn.processors import carry_parallel_config

    source, config = FluxAttnProcessor(), object()
    source._parallel_config = config
    unset, classic = FluxAttnProcessor(), AttnProcessor2_0()
    carry_parallel_config(source, unset)
    carry_parallel_config(source, classic)
    assert unset._parallel_config is config and not hasattr(classic, "_parallel_config")
    other = object()
    kept = FluxAttnProcessor()
    kept._parallel_config = other
    carry_parallel_config(source, kept)
    assert kept._parallel_config is other


def test_backend_without_context_parallelism_is_refused():
    from entropy_attn.processors import check_context_parallel_backend

    check_context_parallel_backend("native", "layer")  # diffusers' ring/Ulysses: accepted
    with pytest.raises(ValueError, match="'_native_efficient', which has no context parallelism"):
        check_context_parallel_backend("_native_efficient", "layer")


def test_key_count_and_refusals():
    ring = types.SimpleNamespace(
        context_parallel_config=diffusers.ContextParallelConfig(ring_degree=2),
        tensor_parallel_config=None,
    )
    assert cp_degree(ring) == 2 and global_key_tokens(34, ring) == 68
    assert cp_degree(None) == 1 and global_key_tokens(34, None) == 34
    check_parallel_config(ring)  # supported: no error
    uneven = types.SimpleNamespace(
        context_parallel_config=types.SimpleNamespace(
            ring_degree=1, ulysses_degree=2, ulysses_anything=True
        )
    )
    with pytest.raises(ValueError, match="ulysses_anything=True"):
        check_parallel_config(uneven)
    tensor = types.SimpleNamespace(tensor_parallel_config=object(), context_parallel_config=None)
    with pytest.raises(ValueError, match="tensor parallelism"):
        check_parallel_config(tensor)


def test_enable_refuses_unsupported_parallelism_and_changes_nothing():
    model = cp_harness.tiny_flux()
    before = dict(model.attn_processors)
    model._parallel_config = types.SimpleNamespace(
        tensor_parallel_config=None,
        context_parallel_config=types.SimpleNamespace(
            ring_degree=2, ulysses_degree=1, ring_anything=True
        ),
    )
    with pytest.raises(ValueError, match="ring_anything=True"):
        entropy_attn.enable(model, **cp_harness.FLUX_OPTIONS)
    assert all(model.attn_processors[name] is p for name, p in before.items())


# Two processes over gloo. A latent of 12x20 (6x10 packed tokens + 8 text tokens, 34 per rank)
# is not the training size (16x16), so entropy-attn changes every layer's scale.
LATENT = (12, 20)
ORDERS = ["enable_first", "parallel_first"]
MODES = ["ulysses", "ring"]


@pytest.fixture(scope="module")
def single_process():
    """The single-process stock output, entropy-attn output and recording."""
    inputs = cp_harness.flux_inputs(*LATENT)
    model = cp_harness.tiny_flux()
    stock = cp_harness.run_model(model, inputs)
    handle = entropy_attn.enable(model, record_entropy=True, **cp_harness.FLUX_OPTIONS)
    ours = cp_harness.run_model(model, inputs)
    return {"stock": stock, "ours": ours, "rows": handle.entropy_rows()}


@pytest.fixture(scope="module")
def two_processes():
    """Every scenario of ``cp_harness.all_scenarios`` on both ranks (one spawn for all)."""
    return cp_harness.run_workers(cp_harness.all_scenarios, world=2, latent=LATENT)


@pytest.mark.parametrize("mode", MODES)
def test_stock_context_parallel_equals_single_process(mode, single_process, two_processes):
    """The harness itself: stock diffusers Ulysses/ring over gloo give the single-process output."""
    for rank, results in enumerate(two_processes):
        assert_close(
            results[mode, "stock"], single_process["stock"], atol=1e-6, rtol=0,
            what=f"stock {mode}, rank {rank}",
        )  # fmt: skip


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", MODES)
def test_entropy_attn_under_context_parallel_equals_single_process(
    mode, order, single_process, two_processes
):
    ours, stock = single_process["ours"], single_process["stock"]
    # The method changes this size's output by far more than the tolerance.
    assert (ours - stock).abs().max() > 1e-4
    for rank, results in enumerate(two_processes):
        assert_close(results[mode, order], ours, atol=1e-6, rtol=0, what=f"{mode} {order} {rank}")


@pytest.mark.parametrize("mode", MODES)
def test_users_diffusers_backend_under_context_parallel_gets_the_global_scale(
    mode, single_process, two_processes
):
    """set_attention_backend("native") before enable: the calls go to diffusers' own CP template
    for that backend, with the scale from the global N."""
    for rank, results in enumerate(two_processes):
        assert_close(
            results[mode, "user_backend"], single_process["ours"], atol=1e-6, rtol=0,
            what=f"{mode} user backend, rank {rank}",
        )  # fmt: skip


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", MODES)
def test_recorded_entropy_under_context_parallel_equals_single_process(
    mode, order, single_process, two_processes
):
    expected = single_process["rows"]
    assert len(expected) == 2  # one double- and one single-stream block, one step
    for rank, results in enumerate(two_processes):
        rows = results[mode, f"{order}_rows"]
        assert [{k: v for k, v in r.items() if k != "entropy"} for r in rows] == [
            {k: v for k, v in r.items() if k != "entropy"} for r in expected
        ]
        got = torch.tensor([r["entropy"] for r in rows], dtype=torch.float64)
        want = torch.tensor([r["entropy"] for r in expected], dtype=torch.float64)
        assert_close(got, want, atol=1e-5, rtol=0, what=f"{mode} {order} rank {rank} entropy")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", MODES)
def test_disable_under_context_parallel_gives_stock_context_parallel(mode, order, two_processes):
    """After disable the processors put back run diffusers' own CP (bit for bit: same code, same
    inputs), also when enable_parallelism came after enable and never reached them."""
    for results in two_processes:
        assert torch.equal(results[mode, f"{order}_disabled"], results[mode, "stock"])


# Wan 2.1 through a stand-in for the generic dispatcher path (cp_harness.GenericDispatch).


@pytest.fixture(scope="module")
def wan_single_process():
    inputs = cp_harness.wan_inputs(*cp_harness.WAN_SIZE)
    model = cp_harness.tiny_wan()
    stock = cp_harness.run_model(model, inputs)
    ours, rows = cp_harness.run_wan_generic(model, inputs)
    return {"stock": stock, "ours": ours, "rows": rows}


@pytest.mark.parametrize("mode", MODES)
def test_wan_stock_context_parallel_equals_single_process(mode, wan_single_process, two_processes):
    for rank, results in enumerate(two_processes):
        assert_close(
            results[mode, "wan_stock"], wan_single_process["stock"], atol=1e-6, rtol=0,
            what=f"Wan stock {mode}, rank {rank}",
        )  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_wan_generic_path_pieces_under_context_parallel_equal_single_process(
    mode, wan_single_process, two_processes
):
    """The pieces a dispatcher wrapper plugs in (global N, context_parallel_attention, cp_mean):
    Wan's self-attention through CP, its cross-attention local, output and per-call entropy as
    in one process."""
    ours, stock = wan_single_process["ours"], wan_single_process["stock"]
    assert (ours - stock).abs().max() > 1e-4  # the size is not the training size
    want = torch.tensor(wan_single_process["rows"], dtype=torch.float64)
    assert len(want) == 4  # two blocks, self- and cross-attention
    for rank, results in enumerate(two_processes):
        assert_close(results[mode, "wan_generic"], ours, atol=1e-6, rtol=0, what=f"Wan {mode}")
        got = torch.tensor(results[mode, "wan_generic_rows"], dtype=torch.float64)
        assert_close(got, want, atol=1e-5, rtol=0, what=f"Wan {mode} rank {rank} entropy")


@pytest.mark.slow
def test_unified_ring_and_ulysses_on_four_processes(single_process):
    """ring_degree=2 x ulysses_degree=2 over four gloo processes (diffusers' unified template):
    the same equalities as above. Slow: four processes start on two cores."""
    results = cp_harness.run_workers(
        cp_harness.flux_scenarios, world=4, latent=LATENT, modes=("unified",)
    )
    expected = single_process["rows"]
    for rank, result in enumerate(results):
        assert_close(result["unified", "stock"], single_process["stock"], atol=1e-6, rtol=0)
        assert_close(result["unified", "user_backend"], single_process["ours"], atol=1e-6, rtol=0)
        for order in ORDERS:
            what = f"unified {order}, rank {rank}"
            assert_close(
                result["unified", order], single_process["ours"], atol=1e-6, rtol=0, what=what
            )
            got = torch.tensor([r["entropy"] for r in result["unified", f"{order}_rows"]])
            want = torch.tensor([r["entropy"] for r in expected])
            assert_close(got, want, atol=1e-5, rtol=0, what=what + " entropy")
            assert torch.equal(result["unified", f"{order}_disabled"], result["unified", "stock"])
