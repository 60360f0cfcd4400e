"""ScaleCrafter-style re-dilation on a real UNet2DConditionModel, against a hand-built copy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

import entropy_attn
from entropy_attn.fixes import redilation

OPTIONS = {"train_size": 8, "vae_scale_factor": 1, "text_tokens": 2}


def _unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=8,
        attention_head_dim=2,
    ).eval()


def _call(unet, size, timestep):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        return unet(
            torch.randn(2, 1, *size, generator=g),
            torch.tensor(timestep),
            encoder_hidden_states=torch.randn(2, 2, 8, generator=g),
        ).sample


class _HandDilated(torch.nn.Module):
    """Reference: resize by ceil(r)/r per axis, conv with dilation ceil(r), resize back."""

    def __init__(self, conv, ratios):
        super().__init__()
        self.conv = conv
        self.dilation = tuple(max(1, -(-r // 1)) if r > 1 else 1 for r in ratios)
        self.dilation = tuple(int(d) for d in self.dilation)
        self.ratios = ratios

    def forward(self, x):
        conv = self.conv
        h, w = x.shape[-2:]
        out_h = (h + 2 * conv.padding[0] - (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
        out_w = (w + 2 * conv.padding[1] - (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
        size = (
            round(h * self.dilation[0] / self.ratios[0]) if self.ratios[0] > 1 else h,
            round(w * self.dilation[1] / self.ratios[1]) if self.ratios[1] > 1 else w,
        )
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear")
        padding = (self.dilation[0] * conv.padding[0], self.dilation[1] * conv.padding[1])
        y = F.conv2d(x, conv.weight, conv.bias, conv.stride, padding, self.dilation)
        if y.shape[-2:] != (out_h, out_w):
            y = F.interpolate(y, size=(out_h, out_w), mode="bilinear")
        return y


def _reference(unet, ratios):
    ref = copy.deepcopy(unet)
    names = redilation.selected_convs(ref, None)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = ref.get_submodule(parent_name)
        setattr(parent, child, _HandDilated(getattr(parent, child), ratios))
    return ref


def test_default_selection_is_scalecrafters():
    unet = _unet()
    names = set(redilation.selected_convs(unet, None))
    want = {
        "down_blocks.1.resnets.0.conv1",
        "down_blocks.1.resnets.0.conv2",
        "down_blocks.1.downsamplers.0.conv",
        "down_blocks.2.resnets.0.conv1",
        "down_blocks.2.resnets.0.conv2",
        "mid_block.resnets.0.conv1",
        "mid_block.resnets.0.conv2",
        "mid_block.resnets.1.conv1",
        "mid_block.resnets.1.conv2",
        *(f"up_blocks.{b}.resnets.{r}.conv{c}" for b in (0, 1) for r in (0, 1) for c in (1, 2)),
        "up_blocks.0.upsamplers.0.conv",
        "up_blocks.1.upsamplers.0.conv",
    }
    assert names == want


@pytest.mark.parametrize(
    "size, ratios", [((16, 16), (2.0, 2.0)), ((12, 12), (1.5, 1.5)), ((8, 16), (1.0, 2.0))]
)
def test_redilated_unet_matches_hand_built_reference(size, ratios):
    unet = _unet()
    want = _call(_reference(unet, ratios), size, 900)
    stock_late = _call(unet, size, 100)
    with entropy_attn.enabled(unet, redilate=True, scale=False, **OPTIONS):
        got = _call(unet, size, 900)
        late = _call(unet, size, 100)  # below redilate_min_timestep: stock convs
    err = (got - want).abs().max().item()
    assert err <= 1e-5, err
    assert (got - _call(unet, size, 900)).abs().max() > 1e-3, "re-dilation changed the output"
    assert torch.equal(late, stock_late)


def test_identity_at_and_below_training_size_and_timestep_threshold():
    unet = _unet()
    stock = {size: _call(unet, size, 900) for size in ((8, 8), (4, 8))}
    with entropy_attn.enabled(unet, redilate=True, **OPTIONS):
        for size, want in stock.items():
            if size == (8, 8):
                assert torch.equal(_call(unet, size, 900), want)
    with entropy_attn.enabled(unet, redilate=True, scale=False, **OPTIONS):
        assert torch.equal(_call(unet, (4, 8), 900), stock[(4, 8)])
    ratios = (2.0, 2.0)
    want = _call(_reference(unet, ratios), (16, 16), 700)
    stock_700 = _call(unet, (16, 16), 700)
    with entropy_attn.enabled(
        unet, redilate=True, scale=False, redilate_min_timestep=800, **OPTIONS
    ):
        assert torch.equal(_call(unet, (16, 16), 700), stock_700)
    with entropy_attn.enabled(
        unet, redilate=True, scale=False, redilate_min_timestep=700, **OPTIONS
    ):
        assert (_call(unet, (16, 16), 700) - want).abs().max() <= 1e-5


def test_lifecycle_restores_convs_and_user_hooks_and_nests():
    unet = _unet()
    conv = unet.mid_block.resnets[0].conv1
    seen = []
    user = conv.register_forward_pre_hook(lambda m, a: seen.append(m.dilation))
    hooks = (dict(conv._forward_pre_hooks), dict(conv._forward_hooks))
    unet_hooks = dict(unet._forward_pre_hooks)
    settings = (conv.dilation, conv.padding)
    stock = _call(unet, (16, 16), 900)
    with entropy_attn.enabled(unet, redilate=True, **OPTIONS):
        outer = _call(unet, (16, 16), 900)
        with entropy_attn.enabled(unet, redilate=True, redilate_min_timestep=950, **OPTIONS):
            assert not torch.equal(_call(unet, (16, 16), 900), outer), "inner setting applies"
        with entropy_attn.enabled(unet, **OPTIONS):  # defaults: the outer re-dilation carries on
            assert torch.equal(_call(unet, (16, 16), 900), outer)
        assert torch.equal(_call(unet, (16, 16), 900), outer)
    assert (conv.dilation, conv.padding) == settings
    assert (dict(conv._forward_pre_hooks), dict(conv._forward_hooks)) == hooks
    assert dict(unet._forward_pre_hooks) == unet_hooks
    assert torch.equal(_call(unet, (16, 16), 900), stock)
    assert seen and seen[-1] == (1, 1)
    user.remove()


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_redilated_unet_copies_and_pickles(how):
    import pickle

    unet = _unet()
    stock = _call(unet, (16, 16), 900)
    entropy_attn.enable(unet, redilate=True, **OPTIONS)
    want = _call(unet, (16, 16), 900)
    twin = copy.deepcopy(unet) if how == "deepcopy" else pickle.loads(pickle.dumps(unet))
    assert torch.equal(_call(twin, (16, 16), 900), want)
    entropy_attn.disable(twin)
    assert torch.equal(_call(twin, (16, 16), 900), stock)
    assert torch.equal(_call(unet, (16, 16), 900), want)
    entropy_attn.disable(unet)


def test_redilation_arguments_are_checked():
    unet = _unet()
    with pytest.raises(ValueError, match="redilate_blocks is given but redilate is False"):
        entropy_attn.enable(unet, redilate_blocks=lambda n, c: True)
    with pytest.raises(ValueError, match="redilate_min_timestep is given but redilate is False"):
        entropy_attn.enable(unet, redilate_min_timestep=100)
    with pytest.raises(ValueError, match="selects no convolution"):
        entropy_attn.enable(unet, redilate=True, redilate_blocks=lambda n, c: False)
    with pytest.raises(TypeError, match="redilate must be a bool"):
        entropy_attn.enable(unet, redilate="yes")
    with pytest.raises(ValueError, match="positions='ntk' does not apply"):
        entropy_attn.enable(unet, positions="ntk")
    assert entropy_attn.integration.handle.DenoiserState.of(unet) is None
