"""What enable/disable do to processors the user installed, nesting, shared denoisers, and the
processors entropy-attn replaces (issue #10 items 1-3, 11, 12; issue #14 item 3, exclude=).

Everything runs the tiny SD UNet (random weights, offline) on CPU: its training latent is 16x16
(128 px), so a 16x16 latent is N == T everywhere and 8x12 (64x96 px) changes every
self-attention scale.
"""

from __future__ import annotations

import ast
import re

import pytest
import torch
from helpers import assert_close

import entropy_attn
from entropy_attn.integration.probe import attention_modules
from entropy_attn.integration.processors import EntropyClassicAttnProcessor
from entropy_attn.tiny.pipelines import tiny_sd_pipeline

pytest.importorskip("diffusers")
from diffusers.models.attention_processor import (  # noqa: E402
    AttnProcessor,
    AttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
    SlicedAttnProcessor,
)

SELF_LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


def unet_inputs(pipe, latent=(8, 12), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, *latent, generator=g)
    context = torch.randn(batch, 77, pipe.unet.config.cross_attention_dim, generator=g)
    return latents, torch.tensor(500), context


def run(pipe, inputs, **kwargs):
    with torch.no_grad():
        return pipe.unet(*inputs, **kwargs).sample


def processors(unet) -> dict:
    return {name: module.processor for name, module in attention_modules(unet).items()}


def install_ip_adapter(unet) -> dict:
    """A real IP-Adapter processor (with weights of its own) on every cross-attention layer."""
    installed = {}
    for name, module in attention_modules(unet).items():
        if module.is_cross_attention:
            installed[name] = IPAdapterAttnProcessor2_0(
                hidden_size=module.to_q.out_features,
                cross_attention_dim=unet.config.cross_attention_dim,
            )
            module.set_processor(installed[name])
    return installed


def assert_same_objects(actual: dict, expected: dict, what: str) -> None:
    wrong = [name for name in expected if actual[name] is not expected[name]]
    assert not wrong, f"{what}: {len(wrong)} layer(s) hold another processor, e.g. {wrong[0]}"


# ---------------------------------------------------------------------------------------------
# Item 1: processors installed after enable survive disable and a second enable


def test_item1_ip_adapter_installed_after_enable_survives_disable():
    pipe = tiny_sd_pipeline()
    stock = processors(pipe.unet)
    handle = entropy_attn.enable(pipe)
    ip = install_ip_adapter(pipe.unet)
    assert handle.active  # its self-attention processors are still installed
    entropy_attn.disable(pipe)
    now = processors(pipe.unet)
    assert_same_objects(now, ip, "IP-Adapter layers after disable")
    assert_same_objects(now, {n: p for n, p in stock.items() if n not in ip}, "other layers")
    assert not handle.active


def test_item1_second_enable_judges_the_processors_installed_now():
    pipe = tiny_sd_pipeline()
    stock = processors(pipe.unet)
    entropy_attn.enable(pipe)
    ip = install_ip_adapter(pipe.unet)
    handle = entropy_attn.enable(pipe, record_entropy=True)
    now = processors(pipe.unet)
    assert_same_objects(now, ip, "IP-Adapter layers after a second enable")
    own = {n: p for n, p in now.items() if n not in ip}
    assert all(p.recorder is handle.recorder for p in own.values())
    # The original processors are still what the layers had before entropy-attn touched them.
    assert handle.original_processors.keys() == own.keys()
    assert_same_objects(handle.original_processors, {n: stock[n] for n in own}, "originals")
    # Selecting an IP-Adapter layer is refused, as it is before any enable, and changes nothing.
    with pytest.raises(ValueError, match="IPAdapterAttnProcessor2_0"):
        entropy_attn.enable(pipe, layers="all")
    assert_same_objects(processors(pipe.unet), now, "after the refused enable")
    entropy_attn.disable(pipe)
    now = processors(pipe.unet)
    assert_same_objects(now, ip, "IP-Adapter layers after disable")
    assert_same_objects(now, {n: p for n, p in stock.items() if n not in ip}, "other layers")


def test_item1_set_attn_processor_after_enable_wins_and_deactivates_the_handle():
    pipe = tiny_sd_pipeline()
    inputs = unet_inputs(pipe, latent=(16, 16))
    handle = entropy_attn.enable(pipe)
    pipe.unet.set_attn_processor(AttnProcessor())
    assert not handle.active
    users = processors(pipe.unet)
    expected = run(pipe, inputs)
    entropy_attn.disable(pipe)
    assert_same_objects(processors(pipe.unet), users, "user's processors after disable")
    # A new enable replaces the user's processors; its disable puts the user's back.
    again = entropy_attn.enable(pipe)
    assert again.active
    assert all(type(p) is EntropyClassicAttnProcessor for p in again.installed.values())
    assert torch.equal(run(pipe, inputs), expected)  # N == T: the classic math, bit for bit
    entropy_attn.disable(pipe)
    assert_same_objects(processors(pipe.unet), users, "user's processors after re-enable")


# ---------------------------------------------------------------------------------------------
# Item 2: nested use restores the outer state (stack semantics)


def test_item2_nested_enabled_restores_the_outer_enable():
    pipe = tiny_sd_pipeline()
    inputs = unet_inputs(pipe)
    stock_processors = processors(pipe.unet)
    stock = run(pipe, inputs)
    with entropy_attn.enabled(pipe) as outer:
        outer_processors = processors(pipe.unet)
        outer_out = run(pipe, inputs)
        with entropy_attn.enabled(pipe, train_size=64) as inner:  # another T: other numbers
            assert inner.active and not outer.active
            inner_out = run(pipe, inputs)
        assert outer.active and not inner.active
        assert_same_objects(processors(pipe.unet), outer_processors, "after the inner block")
        assert torch.equal(run(pipe, inputs), outer_out)
    assert not outer.active
    assert_same_objects(processors(pipe.unet), stock_processors, "after the outer block")
    assert torch.equal(run(pipe, inputs), stock)
    assert (outer_out - stock).abs().max() > 1e-4
    assert (inner_out - outer_out).abs().max() > 1e-4


def test_item2_plain_enable_with_recording_keeps_recording_after_a_with_block():
    pipe = tiny_sd_pipeline()
    inputs = unet_inputs(pipe)
    layers = len(attention_modules(pipe.unet))
    handle = entropy_attn.enable(pipe, record_entropy=True)
    run(pipe, inputs)
    with entropy_attn.enabled(pipe):
        run(pipe, inputs)  # the inner enable does not record; the outer handle is covered
    assert handle.active
    run(pipe, inputs)
    rows = handle.entropy_rows()
    assert [r["step"] for r in rows] == [0] * layers + [1] * layers
    assert [r["entropy"] for r in rows[:layers]] == [r["entropy"] for r in rows[layers:]]
    entropy_attn.disable(pipe)


def test_item2_handles_disabled_out_of_order_still_restore_the_originals():
    pipe = tiny_sd_pipeline()
    inputs = unet_inputs(pipe)
    stock_processors = processors(pipe.unet)
    stock = run(pipe, inputs)
    first = entropy_attn.enable(pipe)
    first_out = run(pipe, inputs)
    second = entropy_attn.enable(pipe, train_size=64)
    second_processors = processors(pipe.unet)
    first.disable()  # covered by the second: nothing to put back yet
    assert second.active and not first.active
    assert_same_objects(processors(pipe.unet), second_processors, "after the first's disable")
    second.disable()
    assert_same_objects(processors(pipe.unet), stock_processors, "after both")
    assert torch.equal(run(pipe, inputs), stock)
    assert (first_out - stock).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# Item 3: pipelines sharing one denoiser


def test_item3_pipelines_sharing_a_unet_share_its_handles():
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = tiny_sd_pipeline()
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    assert img2img.unet is pipe.unet
    stock = processors(pipe.unet)
    handle = entropy_attn.enable(pipe)
    assert handle.denoiser is img2img.unet
    ip = install_ip_adapter(img2img.unet)
    # The second pipeline's enable is a second enable on the same denoiser: rule 1 applies.
    second = entropy_attn.enable(img2img, record_entropy=True)
    assert_same_objects(processors(pipe.unet), ip, "IP-Adapter after the img2img enable")
    second.disable()
    assert handle.active  # the first pipeline's enable is in force again
    entropy_attn.disable(img2img)  # the handle belongs to the UNet: either pipeline undoes it
    assert not handle.active
    now = processors(pipe.unet)
    assert_same_objects(now, ip, "IP-Adapter after disable")
    assert_same_objects(now, {n: p for n, p in stock.items() if n not in ip}, "other layers")


# ---------------------------------------------------------------------------------------------
# Item 11: attention slicing keeps its slices on the PyTorch path


def test_item11_attention_slicing_keeps_its_slice_size(monkeypatch):
    pipe = tiny_sd_pipeline()
    train = unet_inputs(pipe, latent=(16, 16))
    other = unet_inputs(pipe)
    with entropy_attn.enabled(pipe, backend="torch"):  # unsliced entropy-attn, for reference
        unsliced = run(pipe, other)
    pipe.enable_attention_slicing(slice_size=1)
    sliced_stock = run(pipe, train)
    entropy_attn.enable(pipe, backend="torch")
    installed = processors(pipe.unet).values()
    assert {type(p) for p in installed} == {EntropyClassicAttnProcessor}
    assert {getattr(p, "slice_size", None) for p in installed} == {1}

    scores = []
    baddbmm = torch.baddbmm

    def spy(input, batch1, batch2, **kwargs):
        scores.append(batch1.shape[0])
        return baddbmm(input, batch1, batch2, **kwargs)

    monkeypatch.setattr(torch, "baddbmm", spy)
    sliced = run(pipe, other)
    monkeypatch.setattr(torch, "baddbmm", baddbmm)
    # batch 2 x heads 2 or 4: the scores of one (batch, head) at a time, as SlicedAttnProcessor.
    assert scores and set(scores) == {1}, f"score batches {sorted(set(scores))}"
    assert len(scores) == sum(2 * m.heads for m in attention_modules(pipe.unet).values())
    assert_close(sliced, unsliced, atol=2e-6, rtol=0, what="sliced vs unsliced entropy-attn")
    assert torch.equal(run(pipe, train), sliced_stock)  # N == T: stock sliced, bit for bit
    entropy_attn.disable(pipe)
    assert all(type(p) is SlicedAttnProcessor for p in processors(pipe.unet).values())


@pytest.mark.interpreter
def test_item11_sliced_layer_on_the_fused_kernel_is_not_sliced(monkeypatch):
    """On the fused kernel (CUDA; here TRITON_INTERPRET=1) a sliced layer attends in one call:
    the kernel never materialises the scores, so slicing would only cost launches."""
    from entropy_attn.op import api as ops

    pipe = tiny_sd_pipeline()
    name = "mid_block.attentions.0.transformer_blocks.0.attn1"  # 4x6 tokens at 64x96 px
    attn = pipe.unet.get_submodule(name)
    attn.set_processor(SlicedAttnProcessor(1))
    hidden = torch.randn(2, 24, attn.to_q.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stock = attn(hidden)
    calls = []
    kernel = ops._attention_fwd

    def spy(query, *args):
        calls.append(tuple(query.shape))
        return kernel(query, *args)

    monkeypatch.setattr(ops, "_attention_fwd", spy)
    with torch.no_grad(), entropy_attn.enabled(pipe, backend="triton", train_size=(64, 96)):
        ours = attn(hidden)  # N == T: the mid block sees 4x6 tokens at 64x96 px
    assert calls == [(2, attn.heads, 24, attn.to_q.out_features // attn.heads)]
    assert_close(ours, stock, atol=2e-6, rtol=0, what="fused kernel vs sliced stock")


# ---------------------------------------------------------------------------------------------
# Item 12: bit-identity at N == T for the classic AttnProcessor too


def test_item12_classic_attn_processor_is_bit_identical_at_the_training_size():
    pipe = tiny_sd_pipeline()
    train = unet_inputs(pipe, latent=(16, 16))
    other = unet_inputs(pipe)
    mask = torch.ones(2, 77, dtype=torch.bool)
    mask[:, 20:] = False
    with entropy_attn.enabled(pipe, backend="torch"):
        modern = run(pipe, other)  # AttnProcessor2_0 replaced: SDPA math
    pipe.unet.set_attn_processor(AttnProcessor())
    stock = run(pipe, train)
    stock_masked = run(pipe, train, encoder_attention_mask=mask)
    with entropy_attn.enabled(pipe, backend="torch"):
        assert {type(p) for p in processors(pipe.unet).values()} == {EntropyClassicAttnProcessor}
        ours = run(pipe, train)
        ours_masked = run(pipe, train, encoder_attention_mask=mask)
        classic = run(pipe, other)
    assert torch.equal(ours, stock)
    assert torch.equal(ours_masked, stock_masked)
    assert (stock_masked - stock).abs().max() > 1e-4  # the mask matters
    # Away from T the classic math gives entropy-attn's numbers (to rounding).
    assert_close(classic, modern, atol=2e-6, rtol=0, what="classic vs SDPA at 64x96")


# ---------------------------------------------------------------------------------------------
# Issue 14 item 3: enable's hint to exclude a layer keeps the paper's default for the others


def test_issue14_exclude_hint_keeps_self_attention_only():
    class CustomProcessor(AttnProcessor2_0):
        pass

    pipe = tiny_sd_pipeline()
    special = CustomProcessor()
    pipe.unet.get_submodule(SELF_LAYER).set_processor(special)
    with pytest.raises(ValueError, match="CustomProcessor") as error:
        entropy_attn.enable(pipe)
    hint = re.search(r"exclude=(\[[^\]]*\])", str(error.value))
    assert hint, str(error.value)
    exclude = ast.literal_eval(hint.group(1))
    assert exclude == [SELF_LAYER]
    handle = entropy_attn.enable(pipe, exclude=exclude)  # as the message says
    modules = attention_modules(pipe.unet)
    assert modules[SELF_LAYER].processor is special
    assert SELF_LAYER not in handle.installed
    expected = sorted(n for n, m in modules.items() if not m.is_cross_attention and n != SELF_LAYER)
    assert sorted(handle.rescaled_layers) == expected
    rescaled = {n: p.rescale for n, p in handle.installed.items()}
    assert rescaled == {n: n in expected for n in modules if n != SELF_LAYER}
    table = {row.name: row.changed for row in entropy_attn.layer_table(pipe, 64, exclude=exclude)}
    assert table == {n: n in expected for n in modules}
    entropy_attn.disable(pipe)
    assert modules[SELF_LAYER].processor is special
    # A callable works too; names that are not layers, and other types, are refused.
    handle = entropy_attn.enable(pipe, exclude=lambda name, module: name == SELF_LAYER)
    assert sorted(handle.rescaled_layers) == expected
    entropy_attn.disable(pipe)
    with pytest.raises(ValueError, match="exclude names 'down_blocks.0.attn1'"):
        entropy_attn.enable(pipe, exclude=["down_blocks.0.attn1", SELF_LAYER])
    with pytest.raises(TypeError, match="exclude must be"):
        entropy_attn.enable(pipe, exclude=3)


def test_item10_huge_train_size_is_a_named_error():
    """#10 item 10: ``train_size=2**20`` raised PyTorch's storage-size RuntimeError from the token
    probe; now a ValueError naming ``train_size`` (and ``size`` for the layer table), before
    anything is changed."""
    pipe = tiny_sd_pipeline()
    before = dict(pipe.unet.attn_processors)
    with pytest.raises(ValueError, match=r"train_size \(1048576, 1048576\) gives a 131072x131072"):
        entropy_attn.enable(pipe, train_size=2**20)
    assert pipe.unet.attn_processors == before
    with pytest.raises(ValueError, match=r"^size .* tokens: more than the 1073741824"):
        entropy_attn.layer_table(pipe, size=(2**18 + 8, 2**18))
