"""Context parallelism (diffusers' Ulysses and ring attention) with entropy-attn.

The merge of attention over key shards is checked as a pure function against one shard holding
every key (float64). The whole path runs in two CPU processes over gloo (``cp_harness``, whose
patches of diffusers' accelerator assumptions stay in those processes): tiny FLUX and Wan 2.1
transformers (the generic dispatcher path) at a size other than their training size, Ulysses and
ring, ``enable`` before and after ``enable_parallelism``; the output must equal the single-process
entropy-attn output and the recorded entropy the single-process recording.
"""

from __future__ import annotations

import types

import pytest
import torch
from helpers import assert_close, randn

import entropy_attn
from entropy_attn.integration.parallel import (
    ShardAttention,
    check_parallel_config,
    cp_degree,
    global_key_tokens,
    merge_attention,
)
from entropy_attn.op.reference import attention_entropy, attention_logsumexp

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


def test_generic_processor_parallel_config_is_its_stock_processors():
    """What diffusers' enable_parallelism does to every processor with a ``_parallel_config``
    (set it) reaches the stock processor whose code reads it, in both orders, and is still there
    after disable; a stock processor without the attribute gives the wrapper none either."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from entropy_attn.integration.generic import EntropyDispatchProcessor, probe_calls

    model = cp_harness.tiny_flux()
    stock = dict(model.attn_processors)
    entropy_attn.enable(model, **cp_harness.FLUX_OPTIONS)
    config = object()
    for processor in model.attn_processors.values():  # enable_parallelism after enable
        assert isinstance(processor, EntropyDispatchProcessor)
        assert hasattr(processor, "_parallel_config") and processor._parallel_config is None
        processor._parallel_config = config
        assert "_parallel_config" not in vars(processor)
    assert all(p._parallel_config is config for p in stock.values())
    entropy_attn.disable(model)
    assert all(model.attn_processors[n] is p for n, p in stock.items())
    assert all(p._parallel_config is config for p in stock.values())

    other = object()  # enable_parallelism before enable: the wrapper reads the stock's
    stock["transformer_blocks.0.attn.processor"]._parallel_config = other
    entropy_attn.enable(model, **cp_harness.FLUX_OPTIONS)
    assert model.transformer_blocks[0].attn.processor._parallel_config is other
    entropy_attn.disable(model)

    calls = next(iter(probe_calls(model, (1, 8, 8), text_tokens=cp_harness.TEXT).values()))
    bare = EntropyDispatchProcessor(AttnProcessor2_0(), "x", calls=calls, rescale=(True,))
    assert not hasattr(bare, "_parallel_config")


def test_generic_path_refuses_recording_a_masked_call_under_context_parallelism():
    """A masked call made with a context-parallel config cannot be recorded (the shard op takes
    no mask): a clear error naming the layer, before any collective."""
    from entropy_attn.integration.generic import _Call

    model = cp_harness.tiny_flux()
    entropy_attn.enable(model, record_entropy=True, **cp_harness.FLUX_OPTIONS)
    processor = model.transformer_blocks[0].attn.processor
    config = types.SimpleNamespace(
        tensor_parallel_config=None,
        context_parallel_config=types.SimpleNamespace(ring_degree=2, ulysses_degree=1),
    )
    q, mask = torch.zeros(1, 5, 2, 8), torch.ones(1, 5, dtype=torch.bool)
    extra = {"attention_kwargs": None, "backend": None, "parallel_config": config}
    call = _Call("BLHD", q, q, q, mask, 0.0, False, None, False, extra)
    with pytest.raises(ValueError, match="'transformer_blocks.0.attn': recording entropy under"):
        processor.attend_parallel(call, 0)
    entropy_attn.disable(model)


def test_backend_without_context_parallelism_is_refused():
    from entropy_attn.integration.backends import check_context_parallel_backend

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


# Two processes over gloo. FLUX: a latent of 12x20 (6x10 packed tokens + 8 text tokens, 34 per
# rank) is not the training size (16x16). Wan 2.1: 3 latent frames of 8x12 (72 video tokens, 36
# per rank; 6 text tokens, not split) is not its training size (2 frames of 8x8). entropy-attn
# changes every self- or joint-attention layer's scale; Wan's cross-attention keeps its own.
LATENT = (12, 20)
ORDERS = ["enable_first", "parallel_first"]
MODES = ["ulysses", "ring"]
MODELS = {"flux": "", "wan": "wan_"}  # model -> prefix of its keys in the workers' results


def _single(make, inputs, options):
    model = make()
    stock = cp_harness.run_model(model, inputs)
    handle = entropy_attn.enable(model, record_entropy=True, **options)
    ours = cp_harness.run_model(model, inputs)
    return {"stock": stock, "ours": ours, "rows": handle.entropy_rows()}


@pytest.fixture(scope="module")
def single_process():
    """Per model, the single-process stock output, entropy-attn output and recording."""
    return {
        "flux": _single(cp_harness.tiny_flux, cp_harness.flux_inputs(*LATENT),
                        cp_harness.FLUX_OPTIONS),
        "wan": _single(cp_harness.tiny_wan, cp_harness.wan_inputs(*cp_harness.WAN_SIZE),
                       cp_harness.WAN_OPTIONS),
    }  # fmt: skip


@pytest.fixture(scope="module")
def two_processes():
    """Every scenario of ``cp_harness.all_scenarios`` on both ranks (one spawn for all)."""
    return cp_harness.run_workers(cp_harness.all_scenarios, world=2, latent=LATENT)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", MODES)
def test_stock_context_parallel_equals_single_process(model, mode, single_process, two_processes):
    """The harness itself: stock diffusers Ulysses/ring over gloo give the single-process output."""
    for rank, results in enumerate(two_processes):
        assert_close(
            results[mode, MODELS[model] + "stock"], single_process[model]["stock"], atol=1e-6,
            rtol=0, what=f"{model} stock {mode}, rank {rank}",
        )  # fmt: skip


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", MODELS)
def test_entropy_attn_under_context_parallel_equals_single_process(
    model, mode, order, single_process, two_processes
):
    """entropy_attn.enable on the generic path (FLUX, Wan), before or after enable_parallelism:
    the scale of the global N, attention over every rank's keys (Wan's cross-attention local)."""
    ours, stock = single_process[model]["ours"], single_process[model]["stock"]
    # The method changes this size's output by far more than the tolerance.
    assert (ours - stock).abs().max() > 1e-4
    for rank, results in enumerate(two_processes):
        got = results[mode, MODELS[model] + order]
        assert_close(got, ours, atol=1e-6, rtol=0, what=f"{model} {mode} {order} {rank}")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", MODES)
def test_unrecorded_entropy_attn_under_context_parallel_equals_single_process(
    model, mode, single_process, two_processes
):
    """Without recording: entropy-attn's op inside diffusers' templates, no entropy asked."""
    for rank, results in enumerate(two_processes):
        assert_close(
            results[mode, MODELS[model] + "unrecorded"], single_process[model]["ours"],
            atol=1e-6, rtol=0, what=f"{model} {mode} unrecorded, rank {rank}",
        )  # fmt: skip


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", MODES)
def test_users_diffusers_backend_under_context_parallel_gets_the_global_scale(
    model, mode, single_process, two_processes
):
    """set_attention_backend("native") before enable: the calls go to diffusers' own CP template
    for that backend, with the scale from the global N."""
    for rank, results in enumerate(two_processes):
        assert_close(
            results[mode, MODELS[model] + "user_backend"], single_process[model]["ours"],
            atol=1e-6, rtol=0, what=f"{model} {mode} user backend, rank {rank}",
        )  # fmt: skip


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", MODELS)
def test_recorded_entropy_under_context_parallel_equals_single_process(
    model, mode, order, single_process, two_processes
):
    """Every row as in one process (layer, kind, query and key tokens, T, scale) and its entropy:
    merged over key shards and averaged over the ranks; Wan's cross-attention (local keys, split
    queries) averaged over the ranks too."""
    expected = single_process[model]["rows"]
    # FLUX: one double- and one single-stream block; Wan: two blocks, self and cross; one step.
    assert len(expected) == {"flux": 2, "wan": 4}[model]
    for rank, results in enumerate(two_processes):
        rows = results[mode, f"{MODELS[model]}{order}_rows"]
        assert [{k: v for k, v in r.items() if k != "entropy"} for r in rows] == [
            {k: v for k, v in r.items() if k != "entropy"} for r in expected
        ]
        got = torch.tensor([r["entropy"] for r in rows], dtype=torch.float64)
        want = torch.tensor([r["entropy"] for r in expected], dtype=torch.float64)
        what = f"{model} {mode} {order} rank {rank} entropy"
        assert_close(got, want, atol=1e-5, rtol=0, what=what)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", MODELS)
def test_disable_under_context_parallel_gives_stock_context_parallel(
    model, mode, order, two_processes
):
    """After disable the processors put back run diffusers' own CP (bit for bit: same code, same
    inputs), also when enable_parallelism came after enable."""
    prefix = MODELS[model]
    for results in two_processes:
        assert torch.equal(
            results[mode, f"{prefix}{order}_disabled"], results[mode, prefix + "stock"]
        )


@pytest.mark.slow
def test_unified_ring_and_ulysses_on_four_processes(single_process):
    """ring_degree=2 x ulysses_degree=2 over four gloo processes (diffusers' unified template):
    the same equalities as above, FLUX and Wan. Slow: four processes start on two cores."""
    results = cp_harness.run_workers(
        cp_harness.all_scenarios, world=4, latent=LATENT, modes=("unified",)
    )
    for model, prefix in MODELS.items():
        reference = single_process[model]
        for rank, result in enumerate(results):
            what = f"{model} unified, rank {rank}"
            assert_close(
                result["unified", prefix + "stock"], reference["stock"], atol=1e-6, rtol=0,
                what=what + " stock",
            )  # fmt: skip
            assert_close(
                result["unified", prefix + "user_backend"], reference["ours"], atol=1e-6, rtol=0,
                what=what + " user backend",
            )  # fmt: skip
            for order in ORDERS:
                got = result["unified", prefix + order]
                assert_close(got, reference["ours"], atol=1e-6, rtol=0, what=f"{what} {order}")
                rows = result["unified", f"{prefix}{order}_rows"]
                assert [{k: v for k, v in r.items() if k != "entropy"} for r in rows] == [
                    {k: v for k, v in r.items() if k != "entropy"} for r in reference["rows"]
                ]
                got = torch.tensor([r["entropy"] for r in rows])
                want = torch.tensor([r["entropy"] for r in reference["rows"]])
                assert_close(got, want, atol=1e-5, rtol=0, what=f"{what} {order} entropy")
                disabled = result["unified", f"{prefix}{order}_disabled"]
                assert torch.equal(disabled, result["unified", prefix + "stock"])
