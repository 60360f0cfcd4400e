"""Every path that needs an optional library says, in one line, which extra installs it."""

from __future__ import annotations

import sys

import pytest
import torch

import entropy_attn
from entropy_attn import cli
from entropy_attn._extras import MissingExtra, install_line, require


def _hide(monkeypatch, *modules):
    """Make ``modules`` unimportable, as if not installed (``import x`` raises ImportError)."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _one_line(message: str, *needles: str) -> None:
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def test_install_line_names_the_extras():
    assert install_line(["diffusers"]) == 'pip install "entropy-attn[diffusers]"'
    assert install_line(["sklearn", "transformers"]) == 'pip install "entropy-attn[diffusers,zoo]"'
    assert install_line(["triton"]) == 'pip install "entropy-attn[triton]"'
    require("torch", "numpy", what="nothing")  # installed: no error


def test_tiny_pipelines_name_the_diffusers_extra(monkeypatch):
    from entropy_attn.tiny.pipelines import tiny_sd_pipeline
    from entropy_attn.tiny.variants import tiny_sd_img2img_pipeline

    _hide(monkeypatch, "diffusers")
    for builder in (tiny_sd_pipeline, tiny_sd_img2img_pipeline):
        with pytest.raises(ImportError) as error:
            builder()
        assert isinstance(error.value, MissingExtra)
        _one_line(str(error.value), builder.__name__, "diffusers", "entropy-attn[diffusers]")


def test_enable_and_layer_table_name_the_diffusers_extra(monkeypatch):
    _hide(monkeypatch, "diffusers")
    for call in (entropy_attn.enable, lambda m: entropy_attn.layer_table(m, (64, 64))):
        with pytest.raises(MissingExtra) as error:
            call(torch.nn.Linear(2, 2))
        _one_line(str(error.value), "needs diffusers", 'pip install "entropy-attn[diffusers]"')


def test_zoo_names_its_extras(monkeypatch):
    from entropy_attn import zoo
    from entropy_attn.zoo import data

    _hide(monkeypatch, "sklearn")
    with pytest.raises(MissingExtra) as error:
        data.load_digits()
    _one_line(str(error.value), "scikit-learn", 'pip install "entropy-attn[zoo]"')
    _hide(monkeypatch, "transformers")
    with pytest.raises(MissingExtra) as error:
        zoo.load_pipeline("digits-unet")
    _one_line(str(error.value), "load_pipeline", "transformers", "entropy-attn[diffusers]")


def test_triton_backend_names_the_triton_extra(monkeypatch):
    from entropy_attn.op import api as ops

    _hide(monkeypatch, "triton")
    q = torch.zeros(1, 1, 4, 8)
    with pytest.raises(MissingExtra) as error:
        entropy_attn.attention(q, q, q, backend="triton")
    _one_line(str(error.value), "backend='triton'", 'pip install "entropy-attn[triton]"')
    monkeypatch.setattr(ops, "_kernels", None)
    with pytest.raises(MissingExtra) as error:
        ops._import_kernel()
    _one_line(str(error.value), "fused kernel", 'pip install "entropy-attn[triton]"')


@pytest.mark.parametrize(
    "argv,hidden,needle",
    [
        (["demo"], ("matplotlib",),
         'needs matplotlib, which is not installed: pip install "entropy-attn[diffusers]"'),
        (["layers", "--model", "digits-unet", "--size", "16"], ("diffusers",),
         'pip install "entropy-attn[diffusers]"'),
        (["bench", "--cpu"], ("pytest_benchmark",),
         'pytest_benchmark, which is not installed: pip install -e ".[dev]"'),
    ],
)  # fmt: skip
def test_cli_names_the_extra_and_exits_2(argv, hidden, needle, monkeypatch, capsys):
    _hide(monkeypatch, *hidden)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"entropy-attn {argv[0]}: "), err
    assert needle in err, err
