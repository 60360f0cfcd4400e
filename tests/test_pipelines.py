"""Pipelines users combine: ControlNet, img2img, inpainting, LoRA, IP-Adapter, offloading, VAE
slicing/tiling, torch.compile, attention backends. Tiny pipelines with random weights, offline.

The tiny UNet (and a ControlNet, which mirrors its encoder) has self-attention at two levels: the
latent, h/8 x w/8 tokens, trained at 16x16 = 256 (128 px), and one stride-2 convolution down,
ceil(h/16) x ceil(w/16), trained at 8x8 = 64. The independent reference is the *stock* pipeline
with PyTorch SDPA patched, while the UNet or a ControlNet runs, to use ``log_scale(N, T, d)`` for
self-attention calls (T looked up from N by that fact); cross-attention keeps 1/sqrt(d).
"""

from __future__ import annotations

import contextlib
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import entropy_attn

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_dispatch import _AttentionBackendRegistry  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402

from entropy_attn.integration import pipelines  # noqa: E402
from entropy_attn.tiny import pipelines as tiny  # noqa: E402
from entropy_attn.tiny import variants as tiny_pipelines  # noqa: E402

TRAIN = 128  # px: the tiny pipelines' training size
HEIGHT, WIDTH = 64, 96  # a non-square size (latent 8x12) against the 128x128 training size


def train_tokens_by_n(height: int, width: int) -> dict[int, int]:
    """Self-attention keys N -> T of the tiny UNet / ControlNet at (height, width) px."""
    return {
        (height // 8) * (width // 8): 16 * 16,
        math.ceil(height / 16) * math.ceil(width / 16): 8 * 8,
    }


@contextlib.contextmanager
def expected_scale(models, height, width, monkeypatch, train=None):
    """While any of ``models`` runs, SDPA self-attention calls use log_scale(N, T, d).

    ``train`` maps N -> T (default: the tiny UNet's, :func:`train_tokens_by_n`). Yields the list
    of (N, scale) it applied, to check that the patched models did run.
    """
    train = train_tokens_by_n(height, width) if train is None else train
    sdpa = F.scaled_dot_product_attention
    running, applied = [], []

    def scaled(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        n = key.shape[-2]
        if running and scale is None and query.shape[-2] == n and n in train:
            scale = entropy_attn.log_scale(n, train[n], query.shape[-1])
            applied.append((n, scale))
        return sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kw)

    def enter(*args):
        running.append(True)

    def leave(*args):
        running.pop()

    hooks = []
    for model in models:
        hooks.append(model.register_forward_pre_hook(enter))
        hooks.append(model.register_forward_hook(leave))
    monkeypatch.setattr(F, "scaled_dot_product_attention", scaled)
    try:
        yield applied
    finally:
        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
        for hook in hooks:
            hook.remove()


def generate(pipe, height, width, steps=2, **inputs):
    return pipe(
        "a red cat",
        height=height,
        width=width,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **inputs,
    ).images


def condition(height, width, seed=3):
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def processors_of(models) -> list[dict]:
    return [dict(model.attn_processors) for model in models]


def assert_same_objects(before: list[dict], models) -> None:
    for saved, model in zip(before, models, strict=True):
        now = model.attn_processors
        assert now.keys() == saved.keys()
        assert all(now[name] is saved[name] for name in saved), type(model).__name__


def nets_of(pipe) -> list[torch.nn.Module]:
    net = pipe.controlnet
    return list(net.nets) if hasattr(net, "nets") else [net]


# ---------------------------------------------------------------------------------------------
# ControlNet

CONTROLNET_PIPELINES = [
    pytest.param(tiny_pipelines.tiny_sd_controlnet_pipeline, {}, id="sd"),
    pytest.param(tiny_pipelines.tiny_sdxl_controlnet_pipeline, {}, id="sdxl"),
    pytest.param(tiny_pipelines.tiny_sd_controlnet_pipeline, {"controlnets": 2}, id="multi"),
]


def controlnet_inputs(pipe, height, width):
    nets = nets_of(pipe)
    images = [condition(height, width, seed=3 + i) for i in range(len(nets))]
    return {"image": images if len(nets) > 1 else images[0]}


@pytest.mark.parametrize("build,options", CONTROLNET_PIPELINES)
def test_controlnet_is_rescaled_with_its_own_t(build, options, monkeypatch):
    pipe = build(**options)
    nets = nets_of(pipe)
    models = [pipe.unet, *nets]
    inputs = controlnet_inputs(pipe, HEIGHT, WIDTH)
    before = processors_of(models)
    stock = generate(pipe, HEIGHT, WIDTH, **inputs)
    names = ["controlnet"] if len(nets) == 1 else [f"controlnet.nets.{i}" for i in range(len(nets))]
    assert [(n, m) for n, m in pipelines.denoisers(pipe)] == [
        ("unet", pipe.unet),
        *zip(names, nets, strict=True),
    ]
    handle = entropy_attn.enable(pipe)
    assert len(handle.controlnet_handles) == len(nets)
    for net, net_handle in zip(nets, handle.controlnet_handles, strict=True):
        assert net_handle.denoiser is net and net_handle.active
        # T counted on the ControlNet's own architecture: its levels' token counts at 128 px.
        self_layers = {n: t for n, t in net_handle.train_tokens.items() if n.endswith("attn1")}
        assert self_layers and set(self_layers.values()) <= {256, 64}
        assert sorted(net_handle.rescaled_layers) == sorted(self_layers)
    ours = generate(pipe, HEIGHT, WIDTH, **inputs)
    entropy_attn.disable(pipe)
    assert not any(h.active for h in (handle, *handle.controlnet_handles))
    assert_same_objects(before, models)
    with expected_scale(models, HEIGHT, WIDTH, monkeypatch) as applied:
        plain = generate(pipe, HEIGHT, WIDTH, **inputs)
    with expected_scale([pipe.unet], HEIGHT, WIDTH, monkeypatch):
        unet_only = generate(pipe, HEIGHT, WIDTH, **inputs)
    assert applied
    np.testing.assert_allclose(ours, plain, atol=2e-5, rtol=0)
    assert np.abs(ours - stock).max() > 1e-3, "entropy-attn changed nothing at 64x96"
    # The ControlNet's own rescaling is visible in the image.
    assert np.abs(plain - unet_only).max() > 1e-4


@pytest.mark.parametrize("build,options", CONTROLNET_PIPELINES)
def test_controlnet_training_size_is_stock_bit_for_bit(build, options):
    pipe = build(**options)
    models = [pipe.unet, *nets_of(pipe)]
    inputs = controlnet_inputs(pipe, TRAIN, TRAIN)
    before = processors_of(models)
    stock = generate(pipe, TRAIN, TRAIN, **inputs)
    with entropy_attn.enabled(pipe, record_entropy=True) as handle:
        assert all(h.active for h in handle.controlnet_handles)
        ours = generate(pipe, TRAIN, TRAIN, **inputs)
        # Each ControlNet records its own layers, one step per call (two denoising steps,
        # guidance batched), with N == T at the training size.
        for net_handle in handle.controlnet_handles:
            rows = net_handle.entropy_rows()
            assert {r["layer"] for r in rows} == set(net_handle.original_processors)
            assert {r["step"] for r in rows} == {0, 1}
            assert all(r["n_tokens"] == r["train_tokens"] for r in rows if r["kind"] == "self")
    np.testing.assert_array_equal(ours, stock)
    assert_same_objects(before, models)  # the context manager's handle.disable() undid both


def test_controlnet_opt_out_and_refusals(monkeypatch):
    pipe = tiny_pipelines.tiny_sd_controlnet_pipeline()
    net = pipe.controlnet
    net_before = dict(net.attn_processors)
    inputs = controlnet_inputs(pipe, HEIGHT, WIDTH)
    handle = entropy_attn.enable(pipe, controlnet=False)
    assert handle.controlnet_handles == ()
    assert all(net.attn_processors[k] is v for k, v in net_before.items())
    ours = generate(pipe, HEIGHT, WIDTH, **inputs)
    entropy_attn.disable(pipe)
    with expected_scale([pipe.unet], HEIGHT, WIDTH, monkeypatch):
        plain = generate(pipe, HEIGHT, WIDTH, **inputs)
    np.testing.assert_allclose(ours, plain, atol=2e-5, rtol=0)

    with pytest.raises(TypeError, match="controlnet must be a bool"):
        entropy_attn.enable(pipe, controlnet="no")

    # A ControlNet layer with a processor entropy-attn does not reproduce is refused before
    # anything changes, also while an earlier enable is in place.
    class IPAdapterLike(AttnProcessor2_0):
        pass

    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    special = IPAdapterLike()
    net.get_submodule(name).set_processor(special)
    processors = processors_of([pipe.unet, net])
    with pytest.raises(ValueError, match="IPAdapterLike"):
        entropy_attn.enable(pipe)
    assert_same_objects(processors, [pipe.unet, net])
    first = entropy_attn.enable(pipe, layers=lambda n, attn: n != name and n.endswith("attn1"))
    assert net.get_submodule(name).processor is special
    processors = processors_of([pipe.unet, net])
    with pytest.raises(ValueError, match="IPAdapterLike"):
        entropy_attn.enable(pipe)
    assert first.active and first.controlnet_handles[0].active
    assert_same_objects(processors, [pipe.unet, net])
    entropy_attn.disable(pipe)
    assert net.get_submodule(name).processor is special

    # A ControlNet class whose tokens entropy-attn cannot count is named, not skipped.
    other = types.SimpleNamespace(unet=pipe.unet, controlnet=torch.nn.Identity())
    with pytest.raises(ValueError, match="controlnet=False"):
        entropy_attn.enable(other)


def test_controlnet_lifecycle_nests_and_keeps_user_processors():
    pipe = tiny_pipelines.tiny_sd_controlnet_pipeline()
    unet, net = pipe.unet, pipe.controlnet
    models = [unet, net]
    stock = processors_of(models)
    outer = entropy_attn.enable(pipe, record_entropy=True)
    after_outer = processors_of(models)
    with entropy_attn.enabled(pipe, layers="all") as inner:
        assert inner.controlnet_handles[0].denoiser is net
        assert all(h.active for h in (inner, *inner.controlnet_handles))
    # The inner block restores the outer call's processors on both models, still recording.
    assert_same_objects(after_outer, models)
    assert outer.active and outer.controlnet_handles[0].active
    generate(pipe, HEIGHT, WIDTH, **controlnet_inputs(pipe, HEIGHT, WIDTH))
    assert outer.controlnet_handles[0].entropy_rows() and outer.entropy_rows()

    # A processor the user puts on a ControlNet layer after enable survives disable(pipe).
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    users = AttnProcessor2_0()
    net.get_submodule(name).set_processor(users)
    entropy_attn.disable(pipe)
    assert net.get_submodule(name).processor is users
    assert not outer.controlnet_handles[0].active
    expected = dict(stock[1], **{f"{name}.processor": users})
    assert_same_objects([stock[0], expected], models)

    # exclude= names apply to every model that has the layer; a name none has is refused.
    with pytest.raises(ValueError, match="controlnet_down_blocks"):
        entropy_attn.enable(pipe, exclude=["controlnet_down_blocks"])
    assert_same_objects([stock[0], expected], models)
    shared = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    with entropy_attn.enabled(pipe, exclude=[shared]) as handle:
        assert handle.installed and handle.controlnet_handles[0].installed
        assert shared not in handle.installed
        assert shared not in handle.controlnet_handles[0].installed
        assert unet.get_submodule(shared).processor is stock[0][f"{shared}.processor"]
        assert net.get_submodule(shared).processor is stock[1][f"{shared}.processor"]
    assert_same_objects([stock[0], expected], models)


# ---------------------------------------------------------------------------------------------
# Image-to-image and inpainting


def img2img_inputs(pipe, height, width):
    inputs = {"image": condition(height, width), "strength": 1.0}
    if isinstance(pipe, diffusers.StableDiffusionInpaintPipeline):
        mask = torch.zeros(1, 1, height, width)
        mask[..., height // 4 :, width // 3 :] = 1.0
        inputs["mask_image"] = mask
    return inputs


def generate_from_image(pipe, height, width):
    inputs = img2img_inputs(pipe, height, width)
    if isinstance(pipe, diffusers.StableDiffusionXLImg2ImgPipeline):
        # The SDXL img2img pipeline takes its size from the image.
        return pipe(
            "a red cat",
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            **inputs,
        ).images
    return generate(pipe, height, width, **inputs)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(tiny_pipelines.tiny_sd_img2img_pipeline, id="sd-img2img"),
        pytest.param(tiny_pipelines.tiny_sd_inpaint_pipeline, id="sd-inpaint-9ch"),
        pytest.param(tiny_pipelines.tiny_sdxl_img2img_pipeline, id="sdxl-img2img"),
        pytest.param(tiny_pipelines.tiny_sdxl_refiner_pipeline, id="sdxl-refiner-5-ids"),
    ],
)
def test_image_to_image_and_inpainting(build, monkeypatch):
    pipe = build()
    before = processors_of([pipe.unet])
    stock_train = generate_from_image(pipe, TRAIN, TRAIN)
    stock = generate_from_image(pipe, HEIGHT, WIDTH)
    with entropy_attn.enabled(pipe) as handle:
        assert handle.train_latent_size == (16, 16)  # from the UNet config, as for text-to-image
        ours_train = generate_from_image(pipe, TRAIN, TRAIN)
        ours = generate_from_image(pipe, HEIGHT, WIDTH)
    assert_same_objects(before, [pipe.unet])
    with expected_scale([pipe.unet], HEIGHT, WIDTH, monkeypatch) as applied:
        plain = generate_from_image(pipe, HEIGHT, WIDTH)
    assert applied
    assert ours.shape == (1, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(ours_train, stock_train)
    np.testing.assert_allclose(ours, plain, atol=2e-5, rtol=0)
    assert np.abs(ours - stock).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# LoRA, textual inversion, IP-Adapter: they change weights and inputs, not (self-)attention calls


def tiny_lora(unet, seed=5, rank=2) -> dict[str, torch.Tensor]:
    """A PEFT-format LoRA on every attention projection q/k/v/out, non-zero both ways."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if not name.endswith(("attn1", "attn2")):
            continue
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            linear = module.get_submodule(proj)
            down = torch.randn(rank, linear.in_features, generator=g) * 0.3
            up = torch.randn(linear.out_features, rank, generator=g) * 0.3
            state[f"unet.{name}.{proj}.lora_A.weight"] = down
            state[f"unet.{name}.{proj}.lora_B.weight"] = up
    return state


def test_lora_before_and_after_enable_fuse_and_unfuse(monkeypatch):
    pytest.importorskip("peft")
    pipe = tiny.tiny_sd_pipeline()
    stock = generate(pipe, HEIGHT, WIDTH)
    before = processors_of([pipe.unet])
    # LoRA loaded after enable: entropy-attn's processors stay, the LoRA acts inside them.
    handle = entropy_attn.enable(pipe)
    replaced = processors_of([pipe.unet])
    pipe.load_lora_weights(tiny_lora(pipe.unet), adapter_name="tiny")
    assert_same_objects(replaced, [pipe.unet])
    after_enable = generate(pipe, HEIGHT, WIDTH)
    at_train = generate(pipe, TRAIN, TRAIN)
    entropy_attn.disable(pipe)
    assert not handle.active
    assert_same_objects(before, [pipe.unet])
    stock_lora_train = generate(pipe, TRAIN, TRAIN)
    with expected_scale([pipe.unet], HEIGHT, WIDTH, monkeypatch):
        plain = generate(pipe, HEIGHT, WIDTH)
    # LoRA loaded before enable; then fused into the weights and unfused again.
    with entropy_attn.enabled(pipe):
        before_enable = generate(pipe, HEIGHT, WIDTH)
        pipe.fuse_lora()
        fused = generate(pipe, HEIGHT, WIDTH)
        pipe.unfuse_lora()
        unfused = generate(pipe, HEIGHT, WIDTH)
    assert_same_objects(before, [pipe.unet])
    assert np.abs(plain - stock).max() > 1e-3, "the LoRA changed nothing"
    np.testing.assert_allclose(after_enable, plain, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(before_enable, after_enable)
    np.testing.assert_array_equal(at_train, stock_lora_train)
    # Fused weights (W + BA) round differently from the separate LoRA matmuls: fp32 rounding.
    np.testing.assert_allclose(fused, plain, atol=1e-4, rtol=0)
    np.testing.assert_allclose(unfused, plain, atol=1e-4, rtol=0)


def test_textual_inversion(monkeypatch):
    pipe = tiny.tiny_sd_pipeline()
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    embedding = torch.randn(width, generator=torch.Generator().manual_seed(7))
    pipe.load_textual_inversion({"<tiny-cat>": embedding}, token="<tiny-cat>")
    assert "<tiny-cat>" in pipe.tokenizer.get_vocab()

    def run():
        return pipe(
            "a <tiny-cat>",
            height=HEIGHT,
            width=WIDTH,
            num_inference_steps=1,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    with entropy_attn.enabled(pipe):
        ours = run()
    with expected_scale([pipe.unet], HEIGHT, WIDTH, monkeypatch):
        plain = run()
    np.testing.assert_allclose(ours, plain, atol=2e-5, rtol=0)


def install_ip_adapter(unet, tokens=4, image_dim=16):
    """What ``load_ip_adapter`` installs, with random weights: an image projection and
    IPAdapterAttnProcessor2_0 on every cross-attention layer (self-attention keeps its own)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

    cross = unet.config.cross_attention_dim
    with torch.random.fork_rng():
        torch.manual_seed(9)
        processors = {}
        for name, processor in unet.attn_processors.items():
            attn = unet.get_submodule(name.removesuffix(".processor"))
            if name.endswith("attn2.processor"):
                processor = IPAdapterAttnProcessor2_0(
                    hidden_size=attn.to_q.out_features,
                    cross_attention_dim=cross,
                    num_tokens=(tokens,),
                    scale=1.0,
                )
            processors[name] = processor
        unet.set_attn_processor(processors)
        projection = ImageProjection(
            cross_attention_dim=cross, image_embed_dim=image_dim, num_image_text_embeds=tokens
        )
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([projection])
    unet.config.encoder_hid_dim_type = "ip_image_proj"  # as UNet2DConditionModel's loader does
    # (negative, positive) image embeddings for classifier-free guidance: (2, images, dim).
    return torch.randn(2, 1, image_dim, generator=torch.Generator().manual_seed(11))


def test_ip_adapter_is_kept_and_refused_only_when_selected(monkeypatch):
    pipe = tiny.tiny_sd_pipeline()
    image_embeds = install_ip_adapter(pipe.unet)
    unet = pipe.unet
    before = processors_of([unet])

    def run(pipe):
        return generate(pipe, HEIGHT, WIDTH, steps=3, ip_adapter_image_embeds=[image_embeds])

    stock = run(pipe)
    with pytest.raises(ValueError, match="IPAdapterAttnProcessor2_0"):
        entropy_attn.enable(pipe, layers="all")
    assert_same_objects(before, [unet])
    with entropy_attn.enabled(pipe) as handle:  # self-attention only: the IP layers untouched
        ip_layers = [n for n in before[0] if n.endswith("attn2.processor")]
        assert all(unet.attn_processors[n] is before[0][n] for n in ip_layers)
        assert len(handle.rescaled_layers) == 7
        ours = run(pipe)
    assert_same_objects(before, [unet])
    with expected_scale([unet], HEIGHT, WIDTH, monkeypatch):
        plain = run(pipe)
    np.testing.assert_allclose(ours, plain, atol=2e-5, rtol=0)
    assert np.abs(ours - stock).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Offloading, VAE slicing/tiling, device moves, torch.compile


@pytest.mark.parametrize("order", ["offload-then-enable", "enable-then-offload"])
def test_model_cpu_offload_hooks(order, monkeypatch):
    """diffusers refuses ``enable_model_cpu_offload()`` without an accelerator; with
    ``device="cpu"`` it installs accelerate's hooks as on a GPU, executing on the CPU."""
    pipe = tiny_pipelines.tiny_sd_controlnet_pipeline()
    inputs = controlnet_inputs(pipe, HEIGHT, WIDTH)
    models = [pipe.unet, pipe.controlnet]
    before = processors_of(models)
    with entropy_attn.enabled(pipe):
        expected = generate(pipe, HEIGHT, WIDTH, **inputs)
    if order == "offload-then-enable":
        pipe.enable_model_cpu_offload(device="cpu")
        handle = entropy_attn.enable(pipe)
    else:
        handle = entropy_attn.enable(pipe)
        pipe.enable_model_cpu_offload(device="cpu")
    assert all(hasattr(m, "_hf_hook") for m in models)  # accelerate's offload hooks
    assert all(h.active for h in (handle, *handle.controlnet_handles))
    ours = generate(pipe, HEIGHT, WIDTH, **inputs)
    entropy_attn.disable(pipe)
    assert_same_objects(before, models)
    np.testing.assert_array_equal(ours, expected)
    assert all(hasattr(m, "_hf_hook") for m in models)  # disable leaves the user's hooks


@pytest.mark.parametrize("order", ["offload-then-enable", "enable-then-offload"])
def test_sequential_offload_hooks(order):
    """``enable_sequential_cpu_offload`` puts each module's weights on the meta device and loads
    them in accelerate hooks around each forward. The pipeline call itself fails on this stack
    without an accelerator (see README), so the hooks are installed on the denoiser with
    accelerate's ``cpu_offload``, as accelerate's own tests do."""
    from accelerate import cpu_offload

    pipe = tiny.tiny_sd_pipeline()
    with entropy_attn.enabled(pipe):
        expected = generate(pipe, HEIGHT, WIDTH)
    if order == "offload-then-enable":
        cpu_offload(pipe.unet, execution_device=torch.device("cpu"))
        handle = entropy_attn.enable(pipe)
    else:
        handle = entropy_attn.enable(pipe)
        cpu_offload(pipe.unet, execution_device=torch.device("cpu"))
    assert pipe.unet.conv_in.weight.device.type == "meta"
    ours = generate(pipe, HEIGHT, WIDTH)
    handle.disable()
    np.testing.assert_array_equal(ours, expected)


def test_vae_slicing_tiling_device_moves_and_compile(monkeypatch):
    pipe = tiny.tiny_sd_pipeline()
    vae_before = processors_of([pipe.vae])
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()
    # Tiles smaller than the image, so the tiled decoder really runs at 64x96.
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 32, 4
    handle = entropy_attn.enable(pipe)
    assert_same_objects(vae_before, [pipe.vae])  # the VAE keeps its attention
    ours = generate(pipe, HEIGHT, WIDTH, num_images_per_prompt=2)
    pipe.to("cpu")
    pipe.to(torch.float64)
    pipe.to(torch.float32)
    assert handle.active
    moved = generate(pipe, HEIGHT, WIDTH, num_images_per_prompt=2)
    torch._dynamo.reset()
    pipe.unet = torch.compile(pipe.unet, backend="eager")
    compiled = generate(pipe, HEIGHT, WIDTH, num_images_per_prompt=2)
    entropy_attn.disable(pipe)  # acts on the module inside the compiled wrapper
    assert not handle.active
    pipe.unet = pipe.unet._orig_mod
    with expected_scale([pipe.unet], HEIGHT, WIDTH, monkeypatch):
        plain = generate(pipe, HEIGHT, WIDTH, num_images_per_prompt=2)
    np.testing.assert_allclose(ours, plain, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(moved, ours)
    np.testing.assert_allclose(compiled, ours, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# The user's attention backend

FLUX_TEXT = 8  # text tokens in the FLUX backend tests
CPU_BACKENDS = ["native", "_native_math", "flex"]


def flux_model(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return diffusers.FluxTransformer2DModel(**tiny.TINY_FLUX_TRANSFORMER).eval()


def flux_inputs(latent_h, latent_w, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = latent_h // 2, latent_w // 2  # FLUX packs 2x2 latent pixels per token
    ids = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1)
    return dict(
        hidden_states=torch.randn(1, h * w, 16, generator=g),
        encoder_hidden_states=torch.randn(1, FLUX_TEXT, 32, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g),
        timestep=torch.tensor([0.5]),
        img_ids=torch.cat([torch.zeros(h * w, 1), ids.reshape(-1, 2).float()], dim=1),
        txt_ids=torch.zeros(FLUX_TEXT, 3),
    )


def run_flux(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def spy_backend(name, monkeypatch) -> list:
    """Record the ``scale`` each call of diffusers' backend ``name`` receives."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    key = AttentionBackendName(name)
    original = _AttentionBackendRegistry._backends[key]
    scales = []

    def spy(*args, **kwargs):
        scales.append(kwargs.get("scale"))
        return original(*args, **kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, key, spy)
    return scales


def flux_with_expected_scale(model, inputs, train_tokens, monkeypatch):
    """Stock processors, PyTorch SDPA with log_scale(N, T, d) (every FLUX layer is joint or
    single-stream over image + text tokens)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    assert all(p._attention_backend is None for p in model.attn_processors.values())
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", AttentionBackendName.NATIVE)
    sdpa = F.scaled_dot_product_attention

    def scaled(query, key, value, *args, scale=None, **kwargs):
        n, d = key.shape[-2], key.shape[-1]
        return sdpa(query, key, value, *args, scale=entropy_attn.log_scale(n, train_tokens, d))

    monkeypatch.setattr(F, "scaled_dot_product_attention", scaled)
    try:
        return run_flux(model, inputs)
    finally:
        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_flux_keeps_the_users_backend_and_passes_it_the_scale(backend, monkeypatch):
    model = flux_model()
    model.set_attention_backend(backend)
    originals = processors_of([model])
    scales = spy_backend(backend, monkeypatch)
    train_inputs, other_inputs = flux_inputs(16, 16), flux_inputs(8, 12)
    stock_train = run_flux(model, train_inputs)
    handle = entropy_attn.enable(model, text_tokens=FLUX_TEXT, train_size=128)
    train_tokens = 8 * 8 + FLUX_TEXT  # 2x2-packed 16x16 latent + text
    assert set(handle.train_tokens.values()) == {train_tokens}
    scales.clear()
    ours_train = run_flux(model, train_inputs)
    assert scales and all(s is None for s in scales)  # 1/sqrt(d): the backend's own default
    scales.clear()
    ours = run_flux(model, other_inputs)
    n_tokens = 4 * 6 + FLUX_TEXT
    expected = entropy_attn.log_scale(n_tokens, train_tokens, 16)
    assert len(scales) == 2 and all(s == pytest.approx(expected, rel=1e-12) for s in scales)
    entropy_attn.disable(model)
    assert_same_objects(originals, [model])
    assert all(p._attention_backend == backend for p in model.attn_processors.values())
    model.reset_attention_backend()
    plain = flux_with_expected_scale(model, other_inputs, train_tokens, monkeypatch)
    assert torch.equal(ours_train, stock_train)
    # Another attention kernel than the reference's SDPA: fp32 rounding apart.
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)
    assert (ours - run_flux(model, other_inputs)).abs().max() > 1e-4


def test_token_probe_ignores_the_process_wide_backend():
    # set_attention_backend("flex") also makes flex diffusers' process-wide backend; the token
    # probe's meta-device run must not use it (flex refuses meta tensors).
    from entropy_attn.integration import probe

    model = flux_model()
    model.set_attention_backend("flex")
    probe._probe.cache_clear()
    with entropy_attn.enabled(model, text_tokens=FLUX_TEXT, train_size=128) as handle:
        assert set(handle.train_tokens.values()) == {8 * 8 + FLUX_TEXT}


def test_backend_without_scale_and_recording_fall_back_to_entropy_attn(monkeypatch):
    from diffusers.models.attention_dispatch import AttentionBackendName

    model = flux_model()
    model.set_attention_backend("native")
    scales = spy_backend("native", monkeypatch)
    # A backend that takes no scale (as _native_xla): the dispatcher would drop it silently.
    names = _AttentionBackendRegistry._supported_arg_names
    key = AttentionBackendName.NATIVE
    monkeypatch.setitem(names, key, [n for n in names[key] if n != "scale"])
    with pytest.warns(UserWarning, match="takes no softmax scale"):
        entropy_attn.enable(model, text_tokens=FLUX_TEXT, train_size=128)
    scales.clear()  # the token probe's meta run (when not cached) calls the native backend
    other = flux_inputs(8, 12)
    ours = run_flux(model, other)
    assert scales == []  # every layer is rescaled at this size: entropy-attn's op ran
    scales.clear()
    run_flux(model, flux_inputs(16, 16))
    assert len(scales) == 2  # at the training size the backend's default scale is right
    entropy_attn.disable(model)
    monkeypatch.setitem(names, key, [*names[key], "scale"])
    # Recording entropy needs entropy-attn's op: the backend is not called then.
    with entropy_attn.enabled(
        model, text_tokens=FLUX_TEXT, train_size=128, record_entropy=True
    ) as handle:
        scales.clear()
        recorded = run_flux(model, other)
        assert scales == [] and len(handle.entropy_rows()) == 2
    model.reset_attention_backend()
    plain = flux_with_expected_scale(model, other, 8 * 8 + FLUX_TEXT, monkeypatch)
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)


def test_set_attention_backend_after_enable_reaches_entropy_attn(monkeypatch):
    model = flux_model()
    scales = spy_backend("_native_math", monkeypatch)
    with entropy_attn.enabled(model, text_tokens=FLUX_TEXT, train_size=128):
        model.set_attention_backend("_native_math")
        run_flux(model, flux_inputs(8, 12))
        assert len(scales) == 2 and all(s is not None for s in scales)
        model.reset_attention_backend()
        scales.clear()
        run_flux(model, flux_inputs(8, 12))
        assert scales == []


def unet_inputs(unet, height, width):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, height // 8, width // 8, generator=g)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    return latents, torch.tensor(500), context


@pytest.mark.parametrize("backend", ["sdpa", *CPU_BACKENDS])
def test_unet_backend_option(backend, monkeypatch):
    unet = tiny.tiny_sd_pipeline().unet
    inputs = unet_inputs(unet, HEIGHT, WIDTH)
    scales = spy_backend(backend, monkeypatch) if backend != "sdpa" else []
    with torch.no_grad():
        with entropy_attn.enabled(unet, backend="torch"):
            torch_path = unet(*inputs).sample
        with entropy_attn.enabled(unet, backend=backend) as handle:
            assert all(p.backend == backend for n, p in unet.attn_processors.items() if "attn" in n)
            ours = unet(*inputs).sample
        with expected_scale([unet], HEIGHT, WIDTH, monkeypatch):
            plain = unet(*inputs).sample
    assert not handle.active
    if backend == "sdpa":  # on the CPU both are PyTorch SDPA with the same scale
        assert torch.equal(ours, torch_path)
    else:  # the chosen backend ran every layer, rescaled ones with their own scale
        assert len(scales) == len(unet.attn_processors)
        assert sum(s is not None for s in scales) == len(handle.rescaled_layers)
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)


def test_bad_backends_are_refused():
    unet = tiny.tiny_sd_pipeline().unet
    with pytest.raises(ValueError, match="diffusers attention backend"):
        entropy_attn.enable(unet, backend="fastest")
    from diffusers.models import attention_dispatch

    if not attention_dispatch._CAN_USE_FLASH_ATTN:
        with pytest.raises(RuntimeError, match="flash-attn"):
            entropy_attn.enable(unet, backend="flash")
    assert not any(
        isinstance(p, entropy_attn.EntropyAttnProcessor) for p in unet.attn_processors.values()
    )


def tiny_unet2d(in_channels: int, channels: tuple[int, int]):
    """A seeded UNet2DModel trained at 16x16 with self-attention one level down (8x8 = 64
    tokens: AttnDownBlock2D, mid block, AttnUpBlock2D), 3 output channels."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=3,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )


def tiny_super_resolution_pipeline():
    """LDM 4x super-resolution in miniature: a UNet2DModel on [noise | low-res image] (6
    channels) with self-attention one level down (AttnDownBlock2D, mid, AttnUpBlock2D), trained
    at a 16x16 latent (8x8 = 64 tokens there); a VQ autoencoder that doubles the size."""
    from diffusers import DDIMScheduler, LDMSuperResolutionPipeline, VQModel

    unet = tiny_unet2d(in_channels=6, channels=(32, 64))
    vqvae = VQModel(
        block_out_channels=(16, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=3,
        norm_num_groups=8,
    )
    with torch.no_grad():  # sharper attention than random init, so the scale shows in the image
        for module in entropy_attn.integration.probe.attention_modules(unet).values():
            module.to_q.weight.mul_(6.0)
            module.to_k.weight.mul_(6.0)
    pipe = LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet.eval(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def upscale(pipe, height, width):
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return pipe(
        image=image,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


def test_ldm_super_resolution(monkeypatch):
    """UNet2DModel has self-attention but no attn_processors API: its layers are set one by one.
    T comes from its config (16x16 latent -> 64 tokens one level down); sizes are output pixels
    (the VQ autoencoder's factor, 2 here, 4 for the real 4x model). Off size: a 16x24 low-res
    image (output 32x48), 8x12 = 96 tokens one level down."""
    pipe = tiny_super_resolution_pipeline()
    unet = pipe.unet
    assert not hasattr(unet, "attn_processors")
    modules = entropy_attn.integration.probe.attention_modules(unet)
    before = {name: module.processor for name, module in modules.items()}
    stock_train, stock_off = upscale(pipe, 16, 16), upscale(pipe, 16, 24)
    with expected_scale([unet], 32, 48, monkeypatch, train={8 * 12: 64}) as applied:
        reference = upscale(pipe, 16, 24)
    assert applied and {n for n, _ in applied} == {96}

    with entropy_attn.enabled(pipe) as handle:
        assert handle.train_latent_size == (16, 16)
        assert set(handle.installed) == set(modules)
        rows = entropy_attn.layer_table(pipe, (32, 48))
        assert {(r.train_tokens, r.n_tokens) for r in rows} == {(64, 96)}
        assert all(r.scale == pytest.approx(entropy_attn.log_scale(96, 64, 8)) for r in rows)
        np.testing.assert_array_equal(upscale(pipe, 16, 16), stock_train)  # N == T: stock
        out = upscale(pipe, 16, 24)
    assert out.shape == (1, 32, 48, 3)
    np.testing.assert_allclose(out, reference, atol=2e-6)
    assert np.abs(out - stock_off).max() > 1e-4  # the scale changed the picture
    assert all(modules[name].processor is before[name] for name in modules)
    np.testing.assert_array_equal(upscale(pipe, 16, 24), stock_off)

    with entropy_attn.enabled(pipe, train_size=(16, 16)) as handle:  # output pixels: latent 8x8
        assert handle.train_latent_size == (8, 8)
    # A latent the UNet cannot round-trip (17 rows: the skip connection would not match).
    with pytest.raises(
        ValueError, match="latent of height 17 and width 24 cannot run through UNet2DModel"
    ):
        entropy_attn.layer_table(pipe, (34, 48))


def tiny_ddpm_pipeline():
    """A pixel-space DDPMPipeline: UNet2DModel with self-attention one level down."""
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = tiny_unet2d(in_channels=3, channels=(16, 32)).eval()
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pixel_space_ddpm_pipeline():
    """A pipeline with no autoencoder works in pixels: T and N count pixels (factor 1)."""
    pipe = tiny_ddpm_pipeline()

    def run():
        generator = torch.Generator().manual_seed(0)
        return pipe(batch_size=1, generator=generator, num_inference_steps=2, output_type="np")

    stock = run().images
    with entropy_attn.enabled(pipe) as handle:
        assert handle.train_latent_size == (16, 16)
        rows = entropy_attn.layer_table(pipe, (16, 24))
        assert {(r.train_tokens, r.n_tokens) for r in rows} == {(64, 96)}
        np.testing.assert_array_equal(run().images, stock)  # 16x16 pixels: N == T
    with pytest.raises(ValueError, match="train_size"):
        entropy_attn.enable(pipe, train_size=(16, 16), vae_scale_factor=3)


def test_vae_factor_of_pipelines_without_the_attribute():
    """From the autoencoder's blocks; a latent pipeline whose autoencoder is None keeps the
    default 8 rather than being taken for pixel space."""
    from entropy_attn.integration.denoiser import vae_scale_factor_of

    sr = tiny_super_resolution_pipeline()
    assert not hasattr(sr, "vae_scale_factor") and vae_scale_factor_of(sr, None) == 2
    assert vae_scale_factor_of(tiny_ddpm_pipeline(), None) == 1
    sr.register_modules(vqvae=None)
    assert vae_scale_factor_of(sr, None) == 8
    assert vae_scale_factor_of(sr.unet, None) == 8  # a bare model: the documented default


# ---------------------------------------------------------------------------------------------
# Issue 19 item 1: a backend set or reset while enabled is what every layer has after disable


@pytest.mark.parametrize("layout", ["plain", "exclude", "stacked"])
def test_r2_item1_backend_set_while_enabled_survives_disable(layout):
    from entropy_attn.integration.probe import attention_modules

    model = flux_model()
    model.set_attention_backend("_native_math")
    originals = processors_of([model])
    options = {"text_tokens": FLUX_TEXT, "train_size": 128}
    if layout == "exclude":
        options["exclude"] = [next(iter(attention_modules(model)))]

    def enable():
        entropy_attn.enable(model, **options)
        if layout == "stacked":
            entropy_attn.enable(model, **options, record_entropy=True)

    def backends():
        found = [p._attention_backend for p in model.attn_processors.values()]
        return {getattr(backend, "value", backend) for backend in found}  # enum -> its name

    enable()
    model.set_attention_backend("native")
    entropy_attn.disable(model)
    assert_same_objects(originals, [model])
    assert backends() == {"native"}
    enable()
    model.reset_attention_backend()
    entropy_attn.disable(model)
    assert_same_objects(originals, [model])
    assert backends() == {None}
    # A backend named in enable() itself is entropy-attn's choice, not the user's: not kept.
    entropy_attn.enable(model, **options, backend="_native_math")
    entropy_attn.disable(model)
    assert backends() == {None}


# ---------------------------------------------------------------------------------------------
# Issue 19 item 6: perturbed-attention guidance pipelines: PAG layers get the scale, are recorded


@pytest.mark.parametrize(
    "cls_name,build,guidance",
    [
        ("StableDiffusionPAGPipeline", tiny.tiny_sd_pipeline, 5.0),  # CFG: 3 batch chunks
        ("StableDiffusionPAGPipeline", tiny.tiny_sd_pipeline, 1.0),  # no CFG: 2 chunks
        ("StableDiffusionXLPAGPipeline", tiny.tiny_sdxl_pipeline, 5.0),
    ],
)
def test_r2_item6_pag_layers_get_the_scale_and_are_recorded(cls_name, build, guidance, monkeypatch):
    base = build()
    pipe = getattr(diffusers, cls_name)(**base.components, pag_applied_layers=["mid"])
    before, found = processors_of([pipe.unet]), pipe._pag_attn_processors
    layers = len(before[0])

    def run(height=HEIGHT, width=WIDTH):
        return generate(pipe, height, width, pag_scale=3.0, guidance_scale=guidance)

    stock, stock_train = run(), run(128, 128)
    handle = entropy_attn.enable(pipe, record_entropy=True)
    ours = run()
    rows = handle.entropy_rows()
    ours_train = run(128, 128)
    entropy_attn.disable(pipe)
    assert pipe._pag_attn_processors is found
    assert_same_objects(before, [pipe.unet])
    # Reference: the stock PAG pipeline with SDPA patched to log_scale(N, T, d) on self-attention
    # (PAG's guided branch included; its perturbed branch has no softmax).
    with expected_scale([pipe.unet], HEIGHT, WIDTH, monkeypatch) as applied:
        plain = run()
    assert applied
    np.testing.assert_allclose(ours, plain, atol=2e-5, rtol=0)
    assert np.abs(ours - stock).max() > 1e-3
    np.testing.assert_array_equal(ours_train, stock_train)  # at the training size: stock bits
    # Every layer once per step, the PAG layer (mid-block self-attention) included.
    assert len(rows) == 2 * layers and {r["step"] for r in rows} == {0, 1}
    pag_layers = {n.removesuffix(".processor") for n in before[0] if n.startswith("mid_block")}
    pag_rows = [r for r in rows if r["layer"] in pag_layers and r["kind"] == "self"]
    assert pag_rows and len(pag_rows) == 2 * len({r["layer"] for r in pag_rows})
    assert all(r["scale"] != r["head_dim"] ** -0.5 for r in pag_rows)


def test_r2_item6_pag_processors_entropy_attn_cannot_reproduce_are_refused():
    pipe = diffusers.StableDiffusionPAGPipeline(
        **tiny.tiny_sd_pipeline().components, pag_applied_layers=["mid"]
    )
    from diffusers.models.attention_processor import (
        PAGCFGJointAttnProcessor2_0,
        PAGJointAttnProcessor2_0,
    )

    pipe.set_pag_applied_layers(
        ["mid"], pag_attn_processors=(PAGCFGJointAttnProcessor2_0(), PAGJointAttnProcessor2_0())
    )
    before = processors_of([pipe.unet])
    with pytest.raises(ValueError, match=r"perturbed-attention guidance \(PAG\)") as caught:
        entropy_attn.enable(pipe)
    assert "PAGJointAttnProcessor2_0" in str(caught.value)
    assert_same_objects(before, [pipe.unet])
    assert not pipe.unet._forward_pre_hooks


# ---------------------------------------------------------------------------------------------
# Issue 19 items 2 and 3: what diffusers does to processors while enabled


def own_processors(unet) -> list[str]:
    from entropy_attn.integration.attention_base import EntropyAttnBase

    return [n for n, p in unet.attn_processors.items() if isinstance(p, EntropyAttnBase)]


@pytest.mark.parametrize("order", ["enable-then-fuse", "fuse-then-enable"])
def test_r2_item2_fuse_qkv_projections_while_enabled(order):
    pipe = tiny.tiny_sd_pipeline()
    before = processors_of([pipe.unet])
    stock = generate(pipe, HEIGHT, WIDTH)
    with entropy_attn.enabled(pipe) as plain_handle:
        expected = generate(pipe, HEIGHT, WIDTH)
        layers = plain_handle.rescaled_layers
    if order == "enable-then-fuse":
        handle = entropy_attn.enable(pipe)
        pipe.fuse_qkv_projections()
    else:
        pipe.fuse_qkv_projections()
        handle = entropy_attn.enable(pipe)
    assert handle.rescaled_layers == layers  # fused projections: the same layers
    ours = generate(pipe, HEIGHT, WIDTH)
    assert handle.active and len(own_processors(pipe.unet)) == len(before[0])
    np.testing.assert_array_equal(ours, expected)  # same processors, same math: same bits
    entropy_attn.disable(pipe)
    assert own_processors(pipe.unet) == []
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {
        "FusedAttnProcessor2_0"
    }  # as fuse_qkv_projections left them
    pipe.unfuse_qkv_projections()
    assert own_processors(pipe.unet) == []
    assert_same_objects(before, [pipe.unet])
    np.testing.assert_array_equal(generate(pipe, HEIGHT, WIDTH), stock)


def test_r2_item2_enable_fuse_disable_unfuse_without_a_run_between():
    """The issue's sequence with no forward between the calls: nothing of entropy-attn left."""
    pipe = tiny.tiny_sd_pipeline()
    before = processors_of([pipe.unet])
    handle = entropy_attn.enable(pipe)
    pipe.fuse_qkv_projections()
    assert handle.active  # entropy-attn's processors are back over the fused ones
    entropy_attn.disable(pipe)
    pipe.unfuse_qkv_projections()
    assert own_processors(pipe.unet) == []
    assert_same_objects(before, [pipe.unet])


def test_r2_item3_unload_ip_adapter_while_enabled():
    pipe = tiny.tiny_sd_pipeline()
    stock = generate(pipe, HEIGHT, WIDTH)
    with entropy_attn.enabled(pipe):
        expected = generate(pipe, HEIGHT, WIDTH)
    install_ip_adapter(pipe.unet)
    handle = entropy_attn.enable(pipe)
    installed = dict(handle.installed)
    pipe.unload_ip_adapter()
    # Done in full: the image projection and its config entry gone, stock cross-attention back.
    assert pipe.unet.encoder_hid_proj is None and pipe.unet.config.encoder_hid_dim_type is None
    processors = pipe.unet.attn_processors
    assert {type(processors[n]) for n in processors if "attn2" in n} == {AttnProcessor2_0}
    ours = generate(pipe, HEIGHT, WIDTH)
    # entropy-attn's processors carried over: the very objects, still rescaling.
    assert handle.active
    assert all(pipe.unet.get_submodule(n).processor is p for n, p in installed.items())
    np.testing.assert_array_equal(ours, expected)
    entropy_attn.disable(pipe)
    assert own_processors(pipe.unet) == []
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    np.testing.assert_array_equal(generate(pipe, HEIGHT, WIDTH), stock)
