"""The generic dispatcher path (entropy_attn.integration.generic) on tiny configs of the real
classes.

Video DiTs (Wan 2.1 T2V / I2V, Wan 2.2's two experts, HunyuanVideo, LTX-Video, CogVideoX) and image
DiTs (Qwen-Image, FLUX.2, Z-Image, Chroma), one or two blocks each, random weights. The reference
is the *stock* model with PyTorch SDPA patched to the scale expected for each call, from token
counts written out by hand below (patch sizes, packing, padding), not from the probe.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

import entropy_attn
from entropy_attn import configs
from entropy_attn.integration.families import FAMILIES
from entropy_attn.integration.probe import attention_modules

diffusers = pytest.importorskip("diffusers")

TEXT = 8

_WAN = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=32,
    num_layers=1,
    rope_max_seq_len=32,
)
TINY = {
    "wan-t2v": ("WanTransformer3DModel", _WAN),
    # I2V: 257 CLIP image tokens next to the text; Wan's processor splits them off as
    # "everything before the last 512", so the text must be 512 tokens long.
    "wan-i2v": ("WanTransformer3DModel", dict(_WAN, image_dim=8, added_kv_proj_dim=24)),
    "hunyuan-video": (
        "HunyuanVideoTransformer3DModel",
        dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=10,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=1,
            patch_size_t=1,
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(2, 4, 4),
        ),
    ),
    "ltx-video": (
        "LTXVideoTransformer3DModel",
        dict(
            in_channels=8,
            out_channels=8,
            num_attention_heads=4,
            attention_head_dim=8,
            cross_attention_dim=32,
            num_layers=1,
            caption_channels=16,
        ),
    ),
    "cogvideox": (
        "CogVideoXTransformer3DModel",
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            time_embed_dim=4,
            text_embed_dim=8,
            num_layers=1,
            sample_width=8,
            sample_height=8,
            sample_frames=8,
            max_text_seq_length=TEXT,
            use_rotary_positional_embeddings=True,  # as CogVideoX-5b
        ),
    ),
    "qwen-image": (
        "QwenImageTransformer2DModel",
        dict(
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=3,
            joint_attention_dim=16,
            axes_dims_rope=(8, 4, 4),
        ),
    ),
    "flux2": (
        "Flux2Transformer2DModel",
        dict(
            in_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            axes_dims_rope=(4, 4, 4, 4),
        ),
    ),
    "z-image": (
        "ZImageTransformer2DModel",
        dict(
            in_channels=16,
            dim=32,
            n_layers=1,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            cap_feat_dim=16,
            axes_dims=[8, 4, 4],
            axes_lens=[256, 32, 32],
        ),
    ),
    "chroma": (
        "ChromaTransformer2DModel",
        dict(
            in_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            axes_dims_rope=(4, 4, 8),
            approximator_num_channels=8,
            approximator_hidden_dim=16,
            approximator_layers=1,
        ),
    ),
}
VIDEO_TRAIN, VIDEO_OTHER = (2, 16, 16), (3, 8, 12)  # latent (frames, height, width)
IMAGE_TRAIN, IMAGE_OTHER = (1, 16, 16), (1, 8, 12)

# Hand counts: {keys at the other size: keys at the training size} of the rescaled calls, and
# the key counts of the calls that keep their scale.
#   Wan: patch (1, 2, 2): 2 x 8 x 8 = 128 -> 3 x 4 x 6 = 72 self; text 8 (I2V: image 257, text 512).
#   HunyuanVideo: patch 1: 2 x 16 x 16 + 8 text = 520 -> 3 x 8 x 12 + 8 = 296, joint (dual and
#     single stream); its text refiner attends over the 8 text tokens.
#   LTX-Video: patch 1: 512 -> 288 self; cross to 8 text tokens.
#   CogVideoX: patch 2: 2 x 8 x 8 + 8 text = 136 -> 3 x 4 x 6 + 8 = 80, joint.
#   Qwen-Image, FLUX.2, Chroma: 2x2 packing: 8 x 8 + 8 = 72 -> 4 x 6 + 8 = 32, joint.
#   Z-Image: patch 2, image and caption each padded to a multiple of 32: at 16x16, 64 image tokens,
#     caption 8 -> 32; at 24x24 (its other size), 144 -> 160. Noise refiner (image only) 64 -> 160,
#     main layers 64 + 32 = 96 -> 192; the caption refiner attends over the 32 caption tokens.
EXPECTED = {
    "wan-t2v": ({72: 128}, {TEXT}),
    "wan-i2v": ({72: 128}, {257, 512}),
    "hunyuan-video": ({296: 520}, {TEXT}),
    "ltx-video": ({288: 512}, {TEXT}),
    "cogvideox": ({80: 136}, set()),
    "qwen-image": ({32: 72}, set()),
    "flux2": ({32: 72}, set()),
    "z-image": ({160: 64, 192: 96}, {32}),
    "chroma": ({32: 72}, set()),
}
OTHER = {"z-image": (1, 24, 24)}


def build(name):
    cls, config = TINY[name]
    torch.manual_seed(0)
    return getattr(diffusers, cls)(**config).eval()


def text_tokens(name):
    return 512 if name == "wan-i2v" else TEXT


def maker(seed):
    generator = torch.Generator().manual_seed(seed)

    def make(shape, kind):
        if kind == "mask":
            return torch.ones(shape)
        if kind == "time":
            return torch.full(shape, 500.0)
        if kind == "ids":  # FLUX-style position ids: (tokens, axes), zeros are valid
            return torch.zeros(shape)
        return torch.randn(shape, generator=generator)

    return make


def run(model, name, latent, seed=0):
    family = FAMILIES[type(model).__name__]
    inputs = family.inputs(dict(model.config), *latent, text_tokens(name), maker(seed))
    with torch.no_grad():
        out = model(**inputs, return_dict=False)[0]
    return out[0] if isinstance(out, list) else out  # Z-Image returns a list per sample


def train_options(model, name):
    family = FAMILIES[type(model).__name__]
    frames, height, width = VIDEO_TRAIN if family.video else IMAGE_TRAIN
    options = {
        "text_tokens": text_tokens(name),
        "train_size": (height * family.spatial, width * family.spatial),
    }
    if family.video:
        options["train_frames"] = (frames - 1) * family.temporal + 1
    return options


def train_latent(model):
    return VIDEO_TRAIN if FAMILIES[type(model).__name__].video else IMAGE_TRAIN


def other_latent(model, name):
    return OTHER.get(name, VIDEO_OTHER if FAMILIES[type(model).__name__].video else IMAGE_OTHER)


def stock_state(model):
    return {
        name: (module.processor, getattr(module.processor, "_attention_backend", None))
        for name, module in attention_modules(model).items()
    }


NAMES = list(TINY)


@pytest.mark.parametrize("name", NAMES)
def test_training_size_is_stock_bit_for_bit_and_disable_restores(name):
    model = build(name)
    before = stock_state(model)
    latent = train_latent(model)
    stock = run(model, name, latent)
    handle = entropy_attn.enable(model, **train_options(model, name))
    rescaled, kept = EXPECTED[name]
    assert {handle.train_tokens[n] for n in handle.rescaled_layers} == set(rescaled.values())
    assert handle.rescaled_layers and len(handle.installed) == len(before)
    ours = run(model, name, latent)
    entropy_attn.disable(model)
    assert torch.equal(ours, stock)
    after = stock_state(model)
    assert all(after[n][0] is p and after[n][1] == b for n, (p, b) in before.items())
    assert torch.equal(run(model, name, latent), stock)


def run_with_expected_scale(model, name, latent, monkeypatch):
    """The stock model; SDPA gets log_scale(N, T, d) on the calls counted by hand above."""
    rescaled, kept = EXPECTED[name]
    sdpa = F.scaled_dot_product_attention
    seen = set()

    def scaled(query, key, value, *args, scale=None, **kwargs):
        n, d = key.shape[-2], key.shape[-1]
        assert scale is None  # these processors rely on the default 1/sqrt(d)
        if n in rescaled:
            scale = entropy_attn.log_scale(n, rescaled[n], d)
        else:
            assert n in kept, f"a call with {n} keys that the hand count does not know"
        seen.add(n)
        return sdpa(query, key, value, *args, scale=scale, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", scaled)
    try:
        out = run(model, name, latent)
    finally:
        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    assert seen == set(rescaled) | kept, f"calls seen: {sorted(seen)}"
    return out


@pytest.mark.parametrize("name", NAMES)
def test_other_size_is_stock_with_the_expected_scale(name, monkeypatch):
    model = build(name)
    latent = other_latent(model, name)  # video: another frame count too
    stock = run(model, name, latent)
    expected = run_with_expected_scale(model, name, latent, monkeypatch)
    with entropy_attn.enabled(model, **train_options(model, name)):
        ours = run(model, name, latent)
    assert_close(ours, expected, atol=2e-6, rtol=2e-6, what=f"{name} at {latent}")
    assert (ours - stock).abs().max() > 1e-4


def tiny_wan22_pipeline():
    """WanPipeline with two experts (Wan 2.2 A14B: high-noise transformer, low-noise
    transformer_2); no text encoder or autoencoder is needed to patch and run the experts."""
    transformer, transformer_2 = build("wan-t2v"), build("wan-t2v")
    return diffusers.WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=0.875,
    )


def test_wan22_both_experts(monkeypatch):
    pipe = tiny_wan22_pipeline()
    experts = [pipe.transformer, pipe.transformer_2]
    before = [stock_state(model) for model in experts]
    stock = [run(model, "wan-t2v", VIDEO_TRAIN) for model in experts]
    expected = [
        run_with_expected_scale(model, "wan-t2v", VIDEO_OTHER, monkeypatch) for model in experts
    ]
    # Training size 128 px, 5 frames (latent 2 x 16 x 16); the pipeline's factors are 8 and 4.
    handle = entropy_attn.enable(pipe, text_tokens=TEXT, train_size=128, train_frames=5)
    assert [h.denoiser for h in handle.expert_handles] == [pipe.transformer_2]
    for model, handle_of in zip(experts, [handle, handle.expert_handles[0]], strict=True):
        assert handle_of.denoiser is model and handle_of.rescaled_layers == ["blocks.0.attn1"]
        assert handle_of.train_tokens == {"blocks.0.attn1": 128, "blocks.0.attn2": TEXT}
    for model, ref, ref_other in zip(experts, stock, expected, strict=True):
        assert torch.equal(run(model, "wan-t2v", VIDEO_TRAIN), ref)
        assert_close(run(model, "wan-t2v", VIDEO_OTHER), ref_other, atol=2e-6, rtol=2e-6)
    entropy_attn.disable(pipe)
    for model, state in zip(experts, before, strict=True):
        assert all(stock_state(model)[n][0] is p for n, (p, _) in state.items())


def test_the_dispatcher_is_not_patched_for_other_models():
    from diffusers.models import attention_dispatch
    from diffusers.models.transformers import transformer_wan

    original = attention_dispatch.dispatch_attention_fn
    ours, other = build("wan-t2v"), build("wan-t2v")
    stock_other = run(other, "wan-t2v", VIDEO_OTHER)
    with entropy_attn.enabled(ours, **train_options(ours, "wan-t2v")):
        assert transformer_wan.dispatch_attention_fn is original
        assert torch.equal(run(other, "wan-t2v", VIDEO_OTHER), stock_other)
        assert not torch.equal(run(ours, "wan-t2v", VIDEO_OTHER), stock_other)


def test_entropy_recording_per_call():
    model = build("wan-i2v")
    with entropy_attn.enabled(model, record_entropy=True, **train_options(model, "wan-i2v")) as h:
        run(model, "wan-i2v", VIDEO_OTHER)
        rows = h.entropy_rows()
    by_keys = {row["n_tokens"]: row for row in rows}
    assert len(rows) == 3 and set(by_keys) == {72, 257, 512}
    self_row = by_keys[72]
    assert self_row["kind"] == "self" and self_row["train_tokens"] == 128
    assert self_row["scale"] == pytest.approx(entropy_attn.log_scale(72, 128, 12), rel=1e-12)
    for n in (257, 512):  # image and text cross-attention keep 1/sqrt(d)
        assert by_keys[n]["kind"] == "cross" and by_keys[n]["scale"] == 12**-0.5
    for row in rows:
        assert 0 < row["entropy"] < math.log(row["n_tokens"])


def test_recorded_run_equals_unrecorded_to_rounding():
    model = build("qwen-image")
    options = train_options(model, "qwen-image")
    with entropy_attn.enabled(model, **options):
        plain = run(model, "qwen-image", IMAGE_OTHER)
    with entropy_attn.enabled(model, record_entropy=True, **options) as handle:
        recorded = run(model, "qwen-image", IMAGE_OTHER)
        rows = handle.entropy_rows()
    assert {(r["kind"], r["n_tokens"], r["train_tokens"]) for r in rows} == {("joint", 32, 72)}
    assert_close(recorded, plain, atol=1e-5, rtol=1e-5, what="recorded vs not")


def test_chosen_backend_gets_the_scale_and_survives(monkeypatch):
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    model = build("flux2")
    model.set_attention_backend("_native_math")
    key = AttentionBackendName("_native_math")
    real = _AttentionBackendRegistry._backends[key]
    scales = []

    def spy(*args, **kwargs):
        scales.append((kwargs["key"].shape[1], kwargs.get("scale")))
        return real(*args, **kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, key, spy)
    before = stock_state(model)
    with entropy_attn.enabled(model, **train_options(model, "flux2")):
        run(model, "flux2", IMAGE_OTHER)
    assert scales and {n for n, _ in scales} == {32}
    expected = 16**-0.5 * math.sqrt(math.log(32) / math.log(72))
    assert all(s == pytest.approx(expected, rel=1e-12) for _, s in scales)
    assert stock_state(model) == before  # the same processors, with their backend


@pytest.mark.parametrize("cls", ["Lumina2Transformer2DModel", "LuminaNextDiT2DModel"])
def test_lumina_proportional_attention_is_refused(cls):
    if cls == "Lumina2Transformer2DModel":
        model = diffusers.Lumina2Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=4, hidden_size=24, num_layers=1,
            num_refiner_layers=1, num_attention_heads=3, num_kv_heads=1, multiple_of=16,
            axes_dim_rope=(4, 2, 2), axes_lens=(128, 128, 128), cap_feat_dim=8,
        )  # fmt: skip
    else:
        model = diffusers.LuminaNextDiT2DModel(
            sample_size=16, patch_size=2, in_channels=4, hidden_size=24, num_layers=1,
            num_attention_heads=3, num_kv_heads=1, multiple_of=16, learn_sigma=False,
            cross_attention_dim=8,
        )  # fmt: skip
    before = stock_state(model)
    with pytest.raises(ValueError, match="proportional attention.*second one"):
        entropy_attn.enable(model)
    assert stock_state(model) == before


# Real configurations (shipped, written from published facts), counted on the meta device.


def test_wan21_t2v_14b_hand_count():
    model = configs.build_denoiser("wan2.1-t2v-14b", device="meta")
    # 480x832, 81 frames: latent 21 x 60 x 104; patch (1, 2, 2): 21 x 30 x 52 = 32760 tokens.
    rows = entropy_attn.layer_table(model, (720, 1280), frames=121)
    self_rows = [r for r in rows if r.name.endswith("attn1")]
    cross_rows = [r for r in rows if r.name.endswith("attn2")]
    assert len(self_rows) == len(cross_rows) == 40
    assert {(r.kind, r.train_tokens) for r in self_rows} == {("self", 32760)}
    # 720x1280, 121 frames: latent 31 x 90 x 160 -> 31 x 45 x 80 = 111600 tokens.
    assert {r.n_tokens for r in self_rows} == {111600}
    assert {(r.heads, r.head_dim) for r in rows} == {(40, 128)}
    assert self_rows[0].scale == pytest.approx(entropy_attn.log_scale(111600, 32760, 128))
    assert {(r.kind, r.n_tokens, r.train_tokens, r.changed) for r in cross_rows} == {
        ("cross", 512, 512, False)
    }


def test_qwen_image_hand_count():
    model = configs.build_denoiser("qwen-image", device="meta")
    rows = entropy_attn.layer_table(model, (768, 1024))
    assert len(rows) == 60 and {r.kind for r in rows} == {"joint"}
    # 1024 px: latent 128, 2x2 packing: 64 x 64 = 4096 image tokens + 512 text tokens.
    assert {r.train_tokens for r in rows} == {4096 + 512}
    assert {r.n_tokens for r in rows} == {48 * 64 + 512}
    assert {(r.heads, r.head_dim) for r in rows} == {(24, 128)}


@pytest.mark.parametrize(
    "name,argv,first",
    [
        # Default size: the training size, where nothing changes.
        ("hunyuanvideo", [], ("transformer_blocks.0.attn", "joint", 45 * 80 * 33 + 256, "no")),
        # 720x1280, 121 frames against 480x832, 81 frames (the hand count above).
        (
            "wan2.1-t2v-1.3b",
            ["--size", "1280x720", "--frames", "121"],
            ("blocks.0.attn1", "self", 111600, "yes"),
        ),
    ],
)
def test_layers_command_on_shipped_video_configs(name, argv, first, capsys):
    from entropy_attn import cli

    assert cli.main(["layers", "--model", name, *argv, "--format", "csv"]) == 0
    rows = [line.split(",") for line in capsys.readouterr().out.splitlines()]
    row = next(r for r in rows[1:] if r[0] == first[0])
    assert (row[0], row[1], int(row[4]), "yes" if row[7] == "True" else "no") == first


def test_torch_compile_equals_eager_and_pickles():
    import copy
    import pickle

    model = build("wan-t2v")
    family = FAMILIES["WanTransformer3DModel"]
    inputs = family.inputs(dict(model.config), *VIDEO_OTHER, TEXT, maker(0))
    with torch.no_grad(), entropy_attn.enabled(model, **train_options(model, "wan-t2v")):
        eager = model(**inputs, return_dict=False)[0]
        compiled = torch.compile(model)(**inputs, return_dict=False)[0]
        copied = copy.deepcopy(model)(**inputs, return_dict=False)[0]
        processor = model.blocks[0].attn1.processor
        restored = pickle.loads(pickle.dumps(processor))
    assert_close(compiled, eager, atol=1e-5, rtol=1e-5, what="torch.compile vs eager")
    assert torch.equal(copied, eager)
    assert type(restored) is type(processor) and restored.calls == processor.calls
    assert type(restored.stock) is type(processor.stock)


def _explain(model, inputs):
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(**inputs, return_dict=False)
    torch._dynamo.reset()
    return explained


@pytest.mark.parametrize("name", ["wan-t2v", "wan-i2v", "hunyuan-video"])
def test_torch_compile_traces_the_wrapped_layers_with_each_layers_scale(name, monkeypatch):
    # One graph, no graph break at the wrapped layers. The layers of a model share the stock code
    # (Wan: attn1 rescaled, attn2 kept; HunyuanVideo: joint attention in two block kinds and its
    # text refiner): each traces with its own T. Wan I2V's attn2 makes two calls and runs eagerly
    # (a graph break). One compiled model at two sizes (a graph per key count): each equals
    # eager, and at the other size the stock model with the scales counted by hand.
    model = build(name)
    family = FAMILIES[type(model).__name__]

    def inputs(latent):
        return family.inputs(dict(model.config), *latent, text_tokens(name), maker(0))

    stock = _explain(model, inputs(VIDEO_OTHER))
    expected = run_with_expected_scale(model, name, VIDEO_OTHER, monkeypatch)
    outputs = {}
    with torch.no_grad(), entropy_attn.enabled(model, **train_options(model, name)):
        explained = _explain(model, inputs(VIDEO_OTHER))
        compiled = torch.compile(model, backend="aot_eager")
        for latent in (VIDEO_OTHER, VIDEO_TRAIN):
            outputs[latent] = (
                compiled(**inputs(latent), return_dict=False)[0],
                model(**inputs(latent), return_dict=False)[0],
            )
    torch._dynamo.reset()
    assert stock.graph_break_count == 0
    if name == "wan-i2v":
        assert explained.graph_break_count > 0
        assert all("disable" in str(reason.reason) for reason in explained.break_reasons)
    else:
        assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert_close(outputs[VIDEO_OTHER][0], expected, atol=2e-6, rtol=2e-6, what="vs hand count")
    for latent, (traced, eager) in outputs.items():
        assert_close(traced, eager, atol=1e-5, rtol=1e-5, what=f"compiled vs eager at {latent}")


def test_torch_compile_with_a_graph_break_inside_the_wrapped_layers(monkeypatch):
    # A graph break inside a layer (forced here in entropy-attn's op; a user's attention backend
    # may make one) has torch.compile compile the rebound stock code as a frame of its own, once
    # per layer: Wan's attn1 and attn2 (the same stock code) must not share what it compiled.
    from entropy_attn.integration import generic

    dispatch = generic.dispatch

    def breaking(*args, **kwargs):
        torch._dynamo.graph_break()
        return dispatch(*args, **kwargs)

    monkeypatch.setattr(generic, "dispatch", breaking)
    model = build("wan-t2v")
    inputs = FAMILIES["WanTransformer3DModel"].inputs(
        dict(model.config), *VIDEO_OTHER, TEXT, maker(0)
    )
    with torch.no_grad(), entropy_attn.enabled(model, **train_options(model, "wan-t2v")):
        explained = _explain(model, inputs)
        eager = model(**inputs, return_dict=False)[0]
        compiled = torch.compile(model, backend="aot_eager")(**inputs, return_dict=False)[0]
    torch._dynamo.reset()
    assert explained.graph_break_count >= 2  # the break happened, in both layers
    assert_close(compiled, eager, atol=1e-5, rtol=1e-5, what="compiled vs eager")


def test_torch_compile_records_entropy_eagerly_per_layer():
    # Recording runs each wrapped layer eagerly (a graph break per layer): the same rows as eager.
    model = build("wan-i2v")
    family = FAMILIES["WanTransformer3DModel"]
    inputs = family.inputs(dict(model.config), *VIDEO_OTHER, 512, maker(0))
    options = dict(train_options(model, "wan-i2v"), record_entropy=True)
    with torch.no_grad(), entropy_attn.enabled(model, **options) as handle:
        eager = model(**inputs, return_dict=False)[0]
        eager_rows = handle.entropy_rows()
        handle.reset_entropy()
        compiled = torch.compile(model, backend="aot_eager")(**inputs, return_dict=False)[0]
        compiled_rows = handle.entropy_rows()
    torch._dynamo.reset()
    assert_close(compiled, eager, atol=1e-5, rtol=1e-5, what="compiled vs eager")
    assert len(compiled_rows) == len(eager_rows) == 3
    for traced, row in zip(compiled_rows, eager_rows, strict=True):
        assert {k: v for k, v in traced.items() if k != "entropy"} == {
            k: v for k, v in row.items() if k != "entropy"
        }
        assert traced["entropy"] == pytest.approx(row["entropy"], rel=1e-6, abs=1e-6)


def test_enable_leaves_the_stock_module_in_sys_modules():
    # The rebound stock code runs over a copy of its module's globals; that copy once took the
    # stock module's place in sys.modules (and its name: torch.compile then ran every layer with
    # the first traced layer's interceptor).
    import sys

    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.transformers import transformer_wan

    model = build("wan-t2v")
    with entropy_attn.enabled(model, **train_options(model, "wan-t2v")):
        run(model, "wan-t2v", VIDEO_OTHER)
        function = model.blocks[0].attn1.processor._function
    assert sys.modules[transformer_wan.__name__] is transformer_wan
    assert transformer_wan.dispatch_attention_fn is dispatch_attention_fn
    assert "__name__" not in function.__globals__
    assert function.__globals__["dispatch_attention_fn"] is not dispatch_attention_fn


def test_a_users_processor_is_refused_when_selected_and_kept_when_excluded():
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    class UsersProcessor(WanAttnProcessor):  # same code, but not the class the probe counted
        pass

    model = build("wan-t2v")
    mine = UsersProcessor()
    model.blocks[0].attn1.set_processor(mine)
    before = stock_state(model)
    with pytest.raises(ValueError, match="exclude="):
        entropy_attn.enable(model, **train_options(model, "wan-t2v"))
    assert stock_state(model) == before
    options = dict(train_options(model, "wan-t2v"), exclude=["blocks.0.attn1"])
    with entropy_attn.enabled(model, **options) as handle:
        assert model.blocks[0].attn1.processor is mine
        assert list(handle.installed) == ["blocks.0.attn2"] and not handle.rescaled_layers
    assert stock_state(model) == before


def test_layers_all_rescales_cross_attention_with_its_own_T():
    model = build("wan-i2v")
    options = dict(train_options(model, "wan-i2v"), layers="all", record_entropy=True)
    with entropy_attn.enabled(model, **options) as handle:
        assert sorted(handle.rescaled_layers) == ["blocks.0.attn1", "blocks.0.attn2"]
        run(model, "wan-i2v", VIDEO_OTHER)
        rows = {row["n_tokens"]: row for row in handle.entropy_rows()}
    # The image and text keys do not change with the video size: N == T, the scale stays.
    assert {n: rows[n]["train_tokens"] for n in (257, 512)} == {257: 257, 512: 512}
    assert rows[72]["scale"] == pytest.approx(entropy_attn.log_scale(72, 128, 12), rel=1e-12)


def test_recorded_entropy_of_a_masked_call_uses_the_mask(monkeypatch):
    # HunyuanVideo's joint attention passes the text padding mask to the dispatcher: recorded
    # entropy must count only the keys the mask lets through (here 3 of 8 text tokens are pads).
    from entropy_attn.op.reference import attention_entropy

    model = build("hunyuan-video")
    family = FAMILIES[type(model).__name__]
    inputs = family.inputs(dict(model.config), *VIDEO_OTHER, TEXT, maker(0))
    inputs["encoder_attention_mask"][:, -3:] = 0
    # The oracle: the stock model with SDPA at the expected scale, entropy of each joint call
    # from its own query, key and mask.
    sdpa = F.scaled_dot_product_attention
    oracle = []

    def scaled(query, key, value, attn_mask=None, *args, scale=None, **kwargs):
        n, d = key.shape[-2], key.shape[-1]
        if n == 296:
            scale = entropy_attn.log_scale(n, 520, d)
            masked = attention_entropy(query, key, scale, attn_mask=attn_mask).mean().item()
            unmasked = attention_entropy(query, key, scale).mean().item()
            oracle.append((masked, unmasked))
        return sdpa(query, key, value, attn_mask, *args, scale=scale, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", scaled)
    with torch.no_grad():
        model(**inputs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    options = dict(train_options(model, "hunyuan-video"), record_entropy=True)
    with torch.no_grad(), entropy_attn.enabled(model, **options) as handle:
        model(**inputs)
        rows = [r for r in handle.entropy_rows() if r["kind"] == "joint"]
    assert len(rows) == len(oracle) == 2 and {r["n_tokens"] for r in rows} == {296}
    for row, (masked, unmasked) in zip(rows, oracle, strict=True):
        assert abs(masked - unmasked) > 1e-3  # the mask matters here
        assert row["entropy"] == pytest.approx(masked, abs=1e-4)


def test_cogvideox_training_size_and_frames_come_from_its_config():
    """CogVideoXPipeline's defaults are the config's sample_height/sample_width x 8 and
    sample_frames (so CogVideoX 1.5 configs bring their own); T is counted there."""
    family = FAMILIES["CogVideoXTransformer3DModel"]
    assert family.defaults(configs.load_config("cogvideox-5b", "transformer")) == ((480, 720), 49)
    model = build("cogvideox")  # sample 8 x 8 latent, 8 frames: 64 x 64 px, 2 latent frames
    handle = entropy_attn.enable(model, text_tokens=TEXT)
    # Patch 2: 2 x 4 x 4 = 32 image tokens + 8 text tokens, joint.
    assert set(handle.train_tokens.values()) == {40}
    assert handle.train_latent_size == (8, 8)
    entropy_attn.disable(model)
