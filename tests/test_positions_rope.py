"""Position presets on the generic path's RoPE backbones, against hand-written references.

FLUX.2, Chroma, Qwen-Image, Z-Image, Wan, HunyuanVideo, LTX-Video and CogVideoX, tiny configs of
the real diffusers classes (from tests/test_generic.py). For each: every preset is the identity
(bit for bit) at and below the training size; above it, the whole model under a preset equals the
stock model whose rotary embedder is replaced by a hand-written one (frequencies and layouts
written out below, per axis, independently of entropy_attn.fixes.positions); disable and nesting
leave the embedders as they were.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_close
from test_generic import IMAGE_TRAIN, TEXT, TINY, VIDEO_TRAIN, maker, text_tokens, train_options

import entropy_attn
from entropy_attn.integration.families import FAMILIES

diffusers = pytest.importorskip("diffusers")

PRESETS = ("interpolate", "ntk", "yarn")
NAMES = [
    "flux2",
    "chroma",
    "qwen-image",
    "z-image",
    "wan-t2v",
    "hunyuan-video",
    "ltx-video",
    "cogvideox",
]
# Larger than the training latent (frames 2, 16 x 16) along every axis, by other factors per axis.
VIDEO_BIG, IMAGE_BIG = (3, 26, 34), (1, 26, 34)  # odd token counts: 13 x 17
VIDEO_SMALL, IMAGE_SMALL = (2, 8, 12), (1, 8, 12)
LTX_SCALE = (8 / 25, 32, 32)  # what LTXPipeline passes: temporal / frame rate, spatial, spatial


def build(name, **changes):
    """test_generic's tiny model; CogVideoX with head dim 16, so that its rotary split
    (frames D / 4, rows and columns 3 D / 8) gives even dims, as every released config does."""
    cls, config = TINY[name]
    if name == "cogvideox":
        config = dict(config, attention_head_dim=16)
    torch.manual_seed(0)
    return getattr(diffusers, cls)(**dict(config, **changes)).eval()


def is_video(model):
    return FAMILIES[type(model).__name__].video


def latents(model):
    if is_video(model):
        return VIDEO_TRAIN, VIDEO_SMALL, VIDEO_BIG
    return IMAGE_TRAIN, IMAGE_SMALL, IMAGE_BIG


# ---------------------------------------------------------------------------------------------
# Inputs: the family's forward inputs, with real position ids / rotary where the pipeline makes
# them (the probe's zeros would hide every position)


def flux_ids(rows, cols, axes):
    ids = torch.zeros(rows, cols, axes)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(-1, axes)


def text_ids(axes):
    ids = torch.zeros(TEXT, axes)
    if axes == 4:  # FLUX.2 puts the text's sequence index on its fourth axis
        ids[:, 3] = torch.arange(TEXT)
    return ids


def cogvideox_rotary(model, latent):
    """What CogVideoXPipeline passes (its own method, on the pipeline's attributes)."""
    frames, height, width = latent
    pipe = SimpleNamespace(transformer=model, vae_scale_factor_spatial=8)
    return diffusers.CogVideoXPipeline._prepare_rotary_positional_embeddings(
        pipe, height * 8, width * 8, frames, torch.device("cpu")
    )


def inputs(model, name, latent, ltx_scale=None):
    family = FAMILIES[type(model).__name__]
    kwargs = family.inputs(dict(model.config), *latent, text_tokens(name), maker(0))
    if name in ("flux2", "chroma"):
        axes = kwargs["img_ids"].shape[-1]
        kwargs["img_ids"] = flux_ids(latent[1] // 2, latent[2] // 2, axes)
        kwargs["txt_ids"] = text_ids(axes)
    if name == "cogvideox":
        kwargs["image_rotary_emb"] = cogvideox_rotary(model, latent)
    if name == "ltx-video" and ltx_scale is not None:
        kwargs["rope_interpolation_scale"] = ltx_scale
    return kwargs


def forward(model, kwargs):
    with torch.no_grad():
        out = model(**kwargs, return_dict=False)[0]
    return out[0] if isinstance(out, list) else out


# ---------------------------------------------------------------------------------------------
# Hand-written references: frequencies per preset, and each embedder's layout


def theta_freqs(dim, theta, preset, s, t, step=1.0):
    """Rotary frequencies step x theta ** (-2k / dim) of one axis (per token, positions ``step``
    apart) under a preset (factor s, t tokens at the training size)."""
    out = []
    for k in range(dim // 2):
        base = step * theta ** (-2 * k / dim)
        if s <= 1:
            out.append(base)
        elif preset == "interpolate":
            out.append(base / s)
        elif preset == "ntk" and dim == 2:  # one frequency: the base's 0-th power stays
            out.append(base)
        elif preset == "ntk":
            out.append(step * (theta * s ** (dim / (dim - 2))) ** (-2 * k / dim))
        else:
            turns = t * base / (2 * math.pi)
            gamma = min(1.0, max(0.0, (turns - 1) / 31))
            out.append((1 - gamma) * base / s + gamma * base)
    return torch.tensor(out, dtype=torch.float64)


def mscale_of(preset, factors):
    s = max(factors)
    return 0.1 * math.log(s) + 1 if preset == "yarn" and s > 1 else 1.0


def real_layout(positions, freqs, mscale):
    cos, sin = [], []
    for pos, f in zip(positions, freqs, strict=True):
        angles = pos.double()[:, None] * f[None, :]
        cos.append(angles.cos().repeat_interleave(2, 1))
        sin.append(angles.sin().repeat_interleave(2, 1))
    return (torch.cat(cos, 1) * mscale).float(), (torch.cat(sin, 1) * mscale).float()


def complex_layout(positions, freqs, mscale):
    angles = torch.cat(
        [p.double()[:, None] * f[None, :] for p, f in zip(positions, freqs, strict=True)], 1
    )
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64) * mscale


def grid(*extent):
    axes = torch.meshgrid(*[torch.arange(n) for n in extent], indexing="ij")
    return [a.reshape(-1) for a in axes]


def reference(model, name, preset, train, big):
    """Patch the stock model's embedder with the hand-written preset; returns an undo."""
    if name in ("flux2", "chroma"):
        embed = model.pos_embed
        t, n = (train[1] // 2, train[2] // 2), (big[1] // 2, big[2] // 2)
        factors = (n[0] / t[0], n[1] / t[1])

        def ids_forward(ids):
            freqs = []
            for axis, dim in enumerate(embed.axes_dim):
                s, length = {1: (factors[0], t[0]), 2: (factors[1], t[1])}.get(axis, (1.0, 1))
                freqs.append(theta_freqs(dim, embed.theta, preset, s, length))
            positions = [ids[:, a] for a in range(len(embed.axes_dim))]
            return real_layout(positions, freqs, mscale_of(preset, factors))

        embed.forward = ids_forward
        return lambda: delattr(embed, "forward")
    if name == "z-image":
        embedder = model.rope_embedder
        t, n = (train[1] // 2, train[2] // 2), (big[1] // 2, big[2] // 2)
        factors = (n[0] / t[0], n[1] / t[1])

        class Reference:
            def __call__(self, ids):
                freqs = []
                for axis, dim in enumerate(embedder.axes_dims):
                    s, length = {1: (factors[0], t[0]), 2: (factors[1], t[1])}.get(axis, (1.0, 1))
                    freqs.append(theta_freqs(dim, embedder.theta, preset, s, length))
                positions = [ids[:, a] for a in range(3)]
                return complex_layout(positions, freqs, mscale_of(preset, factors))

        model.rope_embedder = Reference()
        return lambda: setattr(model, "rope_embedder", embedder)
    if name == "qwen-image":
        embed = model.pos_embed
        t, n = (train[1] // 2, train[2] // 2), (big[1] // 2, big[2] // 2)
        factors = (n[0] / t[0], n[1] / t[1])
        freqs = [
            theta_freqs(embed.axes_dim[0], embed.theta, preset, 1.0, 1),
            theta_freqs(embed.axes_dim[1], embed.theta, preset, factors[0], t[0]),
            theta_freqs(embed.axes_dim[2], embed.theta, preset, factors[1], t[1]),
        ]
        mscale = mscale_of(preset, factors)

        def qwen_forward(video_fhw, device=None, max_txt_seq_len=None):
            frame, height, width = video_fhw[0][0]
            f, h, w = grid(frame, height, width)
            # scale_rope: rows -(h - h // 2) .. h // 2 - 1, columns likewise; text after them.
            image = [f, h - (height - height // 2), w - (width - width // 2)]
            start = max(height // 2, width // 2)
            text = torch.arange(start, start + int(max_txt_seq_len))
            return complex_layout(image, freqs, mscale), complex_layout([text] * 3, freqs, mscale)

        embed.forward = qwen_forward
        return lambda: delattr(embed, "forward")
    if name in ("wan-t2v", "hunyuan-video"):
        embed = model.rope
        if name == "wan-t2v":
            p_t, p, _ = embed.patch_size
            dims, theta = (embed.t_dim, embed.h_dim, embed.w_dim), 10000.0
        else:
            p_t, p = embed.patch_size_t, embed.patch_size
            dims, theta = tuple(embed.rope_dim), embed.theta
        t = (train[0] // p_t, train[1] // p, train[2] // p)

        def video_forward(hidden_states):
            frames, height, width = hidden_states.shape[2:]
            n = (frames // p_t, height // p, width // p)
            factors = [a / b for a, b in zip(n, t, strict=True)]
            freqs = [
                theta_freqs(d, theta, preset, s, length)
                for d, s, length in zip(dims, factors, t, strict=True)
            ]
            cos, sin = real_layout(grid(*n), freqs, mscale_of(preset, factors))
            if name == "wan-t2v":
                return cos[None, :, None], sin[None, :, None]
            return cos, sin

        embed.forward = video_forward
        return lambda: delattr(embed, "forward")
    if name == "cogvideox":
        # CogVideoX 1.0's pipeline fits the grid into its config's (sample // patch = 4 x 4
        # here), so at the training size (8 x 8 tokens) positions are 0.5 apart.
        p = model.config.patch_size
        head = model.config.attention_head_dim
        dims = (head // 4, head // 8 * 3, head // 8 * 3)
        t = (train[0], train[1] // p, train[2] // p)
        n = (big[0], big[1] // p, big[2] // p)
        steps = (1.0, model.config.sample_height // p / t[1], model.config.sample_width // p / t[2])
        factors = [a / b for a, b in zip(n, t, strict=True)]
        freqs = [
            theta_freqs(d, 10000.0, preset, s, length, step)
            for d, s, length, step in zip(dims, factors, t, steps, strict=True)
        ]
        rotary = real_layout(grid(*n), freqs, mscale_of(preset, factors))
        return rotary  # passed as image_rotary_emb to the stock model
    raise AssertionError(name)


def ltx_reference(model, preset, train, big, ltx_scale):
    """LTX-Video: angle f_k (2 g - 1), f_k = (pi / 2) theta ** (k / (K - 1)), g = position x
    step (scale x patch / base, or 1 without a scale); a preset rescales f_k by what it does
    to the per-token frequency 2 f_k step. Frequency-major layout, dim % 6 padding first."""
    embed = model.rope
    count = embed.dim // 6
    base_sizes = (embed.base_num_frames, embed.base_height, embed.base_width)
    step = [1.0] * 3 if ltx_scale is None else [ltx_scale[i] / base_sizes[i] for i in range(3)]
    factors = [b / a for a, b in zip(train, big, strict=True)]
    f = [(math.pi / 2) * embed.theta ** (k / (count - 1)) for k in range(count)]
    scaled = []
    for axis in range(3):
        s, length = factors[axis], train[axis]
        row = []
        for k in range(count):
            omega = 2 * f[k] * step[axis]
            if preset == "interpolate":
                new = omega / s
            elif preset == "ntk":  # the fastest kept, the slowest divided by s, geometric between
                new = omega * s ** (-(count - 1 - k) / (count - 1))
            else:
                turns = length * omega / (2 * math.pi)
                gamma = min(1.0, max(0.0, (turns - 1) / 31))
                new = (1 - gamma) * omega / s + gamma * omega
            row.append(f[k] * new / omega)
        scaled.append(row)
    positions = grid(*big)
    angles = torch.zeros(len(positions[0]), count, 3, dtype=torch.float64)
    for axis in range(3):
        g = positions[axis].double() * step[axis]
        angles[:, :, axis] = (
            torch.tensor(scaled[axis], dtype=torch.float64)[None] * (2 * g - 1)[:, None]
        )
    angles = angles.reshape(len(positions[0]), -1)
    mscale = mscale_of(preset, factors)
    cos = angles.cos().float().repeat_interleave(2, 1)
    sin = angles.sin().float().repeat_interleave(2, 1)
    pad = embed.dim % 6
    cos = torch.cat([torch.ones(cos.shape[0], pad), cos], 1) * mscale
    sin = torch.cat([torch.zeros(sin.shape[0], pad), sin], 1) * mscale
    return cos[None], sin[None]


def reference_output(model, name, preset, ltx_scale=None):
    """The stock model at the big latent with the hand-written rotary embedding."""
    train, _, big = latents(model)
    kwargs = inputs(model, name, big, ltx_scale)
    if name == "cogvideox":
        kwargs["image_rotary_emb"] = reference(model, name, preset, train, big)
        return forward(model, kwargs)
    if name == "ltx-video":
        model.rope.forward = lambda *args, **kw: ltx_reference(model, preset, train, big, ltx_scale)
        undo = lambda: delattr(model.rope, "forward")  # noqa: E731
    else:
        undo = reference(model, name, preset, train, big)
    try:
        return forward(model, kwargs)
    finally:
        undo()


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", NAMES)
def test_presets_are_bit_identical_at_and_below_the_training_size(name, preset):
    model = build(name)
    train, small, _ = latents(model)
    stock = {latent: forward(model, inputs(model, name, latent)) for latent in (train, small)}
    with entropy_attn.enabled(model, positions=preset, scale=False, **train_options(model, name)):
        for latent, want in stock.items():
            assert torch.equal(forward(model, inputs(model, name, latent)), want), latent


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", NAMES)
def test_presets_match_hand_written_rope_above_the_training_size(name, preset):
    """Every axis longer than at the training size (frames 3/2, rows 3/2, columns 2): the whole
    model under the preset equals the stock model with the hand-written rotary embedding."""
    model = build(name)
    _, _, big = latents(model)
    stock = forward(model, inputs(model, name, big))
    want = reference_output(model, name, preset)
    with entropy_attn.enabled(model, positions=preset, scale=False, **train_options(model, name)):
        ours = forward(model, inputs(model, name, big))
    assert_close(ours, want, atol=2e-5, rtol=2e-5, what=f"{name} {preset}")
    assert (ours - stock).abs().max() > 1e-4, "the preset changed nothing"
    assert torch.equal(forward(model, inputs(model, name, big)), stock)


@pytest.mark.parametrize("preset", PRESETS)
def test_ltx_video_presets_with_the_pipelines_interpolation_scale(preset):
    """LTXPipeline passes rope_interpolation_scale, so positions are in units of the base size
    (2048 px, 20 frames); the presets act on the per-token frequencies all the same."""
    model = build("ltx-video")
    _, small, big = latents(model)
    want_small = forward(model, inputs(model, "ltx-video", small, LTX_SCALE))
    want = reference_output(model, "ltx-video", preset, LTX_SCALE)
    options = train_options(model, "ltx-video")
    with entropy_attn.enabled(model, positions=preset, scale=False, **options):
        ours = forward(model, inputs(model, "ltx-video", big, LTX_SCALE))
        assert torch.equal(forward(model, inputs(model, "ltx-video", small, LTX_SCALE)), want_small)
    assert_close(ours, want, atol=2e-5, rtol=2e-5, what=f"ltx-video {preset} with the scale")


def hooks_state(model):
    return {
        name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), "forward" in m.__dict__)
        for name, m in model.named_modules()
    } | {"rope_embedder": model.__dict__.get("rope_embedder")}


@pytest.mark.parametrize(
    "name", ["wan-t2v", "ltx-video", "cogvideox", "z-image", "qwen-image", "flux2"]
)
def test_disable_and_nesting_leave_the_embedders_as_they_were(name):
    """One backbone per way of installing (forward hook, hook with keyword arguments, pre-hook
    on the transformer, the Z-Image attribute): the newest call in force wins, the outer one
    resumes, and disable leaves every hook and attribute as it found them."""
    model = build(name)
    _, _, big = latents(model)
    options = dict(train_options(model, name), scale=False)
    before = hooks_state(model)
    stock = forward(model, inputs(model, name, big))
    alone = {}
    for preset in ("ntk", "interpolate"):
        with entropy_attn.enabled(model, positions=preset, **options):
            alone[preset] = forward(model, inputs(model, name, big))
    assert (alone["ntk"] - alone["interpolate"]).abs().max() > 1e-4
    with entropy_attn.enabled(model, positions="ntk", **options):
        with entropy_attn.enabled(model, positions="interpolate", **options):
            assert torch.equal(forward(model, inputs(model, name, big)), alone["interpolate"])
        assert torch.equal(forward(model, inputs(model, name, big)), alone["ntk"])
    assert torch.equal(forward(model, inputs(model, name, big)), stock)
    assert hooks_state(model) == before
    entropy_attn.enable(model, positions="yarn", **options)
    entropy_attn.disable(model)
    assert hooks_state(model) == before


def test_yarn_temperature_is_replaced_by_the_scale_on_a_video_backbone():
    model = build("wan-t2v")
    _, _, big = latents(model)
    hidden = torch.zeros(1, 4, *big)
    mscale = 0.1 * math.log(17 / 8) + 1  # the largest factor: 17 columns of tokens, 8 at training
    options = train_options(model, "wan-t2v")
    with entropy_attn.enabled(model, positions="yarn", scale=False, **options):
        warm = model.rope(hidden)
    with entropy_attn.enabled(model, positions="yarn", **options):
        cold = model.rope(hidden)
    assert_close(warm[0], cold[0] * mscale, atol=1e-6, rtol=1e-6, what="cos")
    assert_close(warm[1], cold[1] * mscale, atol=1e-6, rtol=1e-6, what="sin")


def test_wan22_presets_reach_both_experts():
    experts = [build("wan-t2v"), build("wan-t2v")]
    pipe = diffusers.WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        transformer=experts[0],
        transformer_2=experts[1],
        boundary_ratio=0.875,
    )
    hidden = torch.zeros(1, 4, *VIDEO_BIG)
    stock = [model.rope(hidden) for model in experts]
    before = [hooks_state(model) for model in experts]
    options = dict(text_tokens=TEXT, train_size=128, train_frames=5, scale=False)
    with entropy_attn.enabled(pipe, positions="interpolate", **options):
        ours = [model.rope(hidden) for model in experts]
    assert torch.equal(ours[1][0], ours[0][0]) and torch.equal(ours[1][1], ours[0][1])
    for (cos, _), (stock_cos, _) in zip(ours, stock, strict=True):
        assert (cos - stock_cos).abs().max() > 1e-3
    assert [hooks_state(model) for model in experts] == before


def test_backbones_without_rotary_positions_are_refused_naming_the_argument():
    """CogVideoX-2b (sin-cos positions) and Qwen-Image's layered 3D RoPE have no preset."""
    model = build("cogvideox", use_rotary_positional_embeddings=False)
    processors = dict(model.attn_processors)
    with pytest.raises(ValueError, match="positions='ntk' does not apply to .*no rotary"):
        entropy_attn.enable(model, positions="ntk", **train_options(model, "cogvideox"))
    assert all(model.attn_processors[k] is v for k, v in processors.items())
    model = build("qwen-image", use_layer3d_rope=True)
    with pytest.raises(ValueError, match="QwenEmbedLayer3DRope has no preset"):
        entropy_attn.enable(model, positions="yarn", **train_options(model, "qwen-image"))


def copied(model, how):
    import copy
    import pickle

    return copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", ["flux2", "z-image", "wan-t2v", "ltx-video", "cogvideox"])
def test_a_model_with_a_preset_copies_and_pickles(name, how):
    """Every way of installing (hooks with and without keyword arguments, the transformer's
    pre-hooks, the Z-Image stand-in) survives deepcopy and pickle: the copy runs the preset on
    its own, and disable on either leaves the other as it was."""
    model = build(name)
    _, _, big = latents(model)
    stock = forward(model, inputs(model, name, big))
    entropy_attn.enable(model, positions="yarn", scale=False, **train_options(model, name))
    want = forward(model, inputs(model, name, big))
    twin = copied(model, how)
    assert torch.equal(forward(twin, inputs(twin, name, big)), want)
    entropy_attn.disable(twin)
    assert torch.equal(forward(twin, inputs(twin, name, big)), stock)
    assert torch.equal(forward(model, inputs(model, name, big)), want)
    entropy_attn.disable(model)
    assert torch.equal(forward(model, inputs(model, name, big)), stock)


def test_presets_are_refused_under_context_parallelism():
    """Under diffusers' context parallelism each rank sees a slice of the positions (and of the
    rotary embedding), so a preset would scale by a per-rank size: enable refuses it, naming
    the argument, and a preset enabled before enable_parallelism raises where it would apply."""
    parallel = SimpleNamespace(
        context_parallel_config=SimpleNamespace(ring_degree=1, ulysses_degree=2)
    )
    model = build("wan-t2v")
    options = dict(train_options(model, "wan-t2v"), scale=False)
    model._parallel_config = parallel
    with pytest.raises(ValueError, match="positions='ntk' cannot run under context parallel"):
        entropy_attn.enable(model, positions="ntk", **options)
    assert not model.rope._forward_hooks
    model._parallel_config = None
    with entropy_attn.enabled(model, positions="ntk", **options):
        model._parallel_config = parallel
        assert torch.equal(
            model.rope(torch.zeros(1, 4, *VIDEO_TRAIN))[0],
            build("wan-t2v").rope(torch.zeros(1, 4, *VIDEO_TRAIN))[0],
        )
        with pytest.raises(RuntimeError, match="positions='ntk' cannot run under context"):
            model.rope(torch.zeros(1, 4, *VIDEO_BIG))
        model._parallel_config = None


@pytest.mark.parametrize("preset", PRESETS)
def test_ltx_video_coords_path_equals_the_interpolation_scale_path(preset):
    """LTXConditionPipeline passes pixel coordinates (``video_coords``) instead of sizes and a
    scale; the same coordinates give the same rotary embedding under a preset."""
    model = build("ltx-video")
    _, _, big = latents(model)
    positions = torch.stack(grid(*big)).double()  # (3, L): frames, rows, columns
    coords = positions * torch.tensor(LTX_SCALE, dtype=torch.float64)[:, None]
    with_coords = dict(inputs(model, "ltx-video", big), video_coords=coords[None].float())
    options = dict(train_options(model, "ltx-video"), scale=False)
    with entropy_attn.enabled(model, positions=preset, **options):
        from_scale = forward(model, inputs(model, "ltx-video", big, LTX_SCALE))
        from_coords = forward(model, with_coords)
    assert_close(from_coords, from_scale, atol=2e-5, rtol=2e-5, what=f"video_coords {preset}")
    assert (from_coords - forward(model, with_coords)).abs().max() > 1e-4


def test_cogvideox_15_presets_step_positions_by_one():
    """CogVideoX 1.5 (``patch_size_t`` set): its pipeline slices positions 0, 1, ... from a
    table of the config's size (and cannot build one past it), so above the training size the
    caller passes its own rotary embedding (here: positions 0, 1, ... run on); a preset
    replaces it, continuing the positions per axis, frames in steps of ``patch_size_t``."""
    model = build("cogvideox", patch_size_t=2, sample_height=16, sample_width=16)
    train, big = (2, 16, 16), (4, 26, 34)  # tokens: 1 x 8 x 8 -> 2 x 13 x 17
    options = dict(train_options(model, "cogvideox"), scale=False)
    head = model.config.attention_head_dim
    dims = (head // 4, head // 8 * 3, head // 8 * 3)
    t, n = (1, 8, 8), (2, 13, 17)
    factors = [a / b for a, b in zip(n, t, strict=True)]

    def rotary(preset):
        freqs = [
            theta_freqs(d, 10000.0, preset, s, length)
            for d, s, length in zip(dims, factors, t, strict=True)
        ]
        return real_layout(grid(*n), freqs, mscale_of(preset, factors))

    stock_train = forward(model, inputs(model, "cogvideox", train))
    family = FAMILIES["CogVideoXTransformer3DModel"]
    big_inputs = family.inputs(dict(model.config), *big, TEXT, maker(0))
    big_inputs["image_rotary_emb"] = rotary("stock")
    stock_big = forward(model, big_inputs)
    for preset in PRESETS:
        with entropy_attn.enabled(model, positions=preset, **options):
            assert torch.equal(forward(model, inputs(model, "cogvideox", train)), stock_train)
            ours = forward(model, big_inputs)
        want = forward(model, dict(big_inputs, image_rotary_emb=rotary(preset)))
        assert_close(ours, want, atol=2e-5, rtol=2e-5, what=f"1.5 {preset}")
        assert (ours - stock_big).abs().max() > 1e-4
