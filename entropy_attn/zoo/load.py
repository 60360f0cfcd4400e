"""The shipped digits models on disk: where their weights are, a check that every file is whole,
and :func:`load_pipeline` (offline ``from_pretrained``)."""

from __future__ import annotations

from pathlib import Path

from .._extras import needs

WEIGHTS = Path(__file__).parent / "weights"
MODELS = ("digits-unet", "digits-dit", "digits-flux")


class WeightsError(OSError):
    """A shipped model's files are missing or damaged; the message (one line) names the file."""


_REINSTALL = (
    "restore it (`git checkout -- entropy_attn/zoo/weights` in a source checkout, or reinstall "
    "entropy-attn)"
)


def weights_folder(name: str) -> Path:
    """The ``save_pretrained`` folder of a shipped model.

    Raises:
        WeightsError: its ``model_index.json`` is missing.
    """
    if name not in MODELS:
        raise ValueError(f"name must be one of {MODELS}, got {name!r}")
    folder = WEIGHTS / name
    index = folder / "model_index.json"
    if not index.is_file():
        raise WeightsError(
            f"the shipped model {name!r} is not installed or damaged: {index} is missing; "
            f"{_REINSTALL}"
        )
    return folder


def _one_line(error: Exception, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_weights(name: str) -> Path:
    """:func:`weights_folder`, with every model component's config and safetensors file checked
    (present, header readable and covering the whole file: a truncated copy fails here).

    Raises:
        WeightsError: naming the missing or damaged file.
    """
    import json

    from safetensors import safe_open

    folder = weights_folder(name)
    index = folder / "model_index.json"
    try:
        components = json.loads(index.read_text())
    except (OSError, ValueError) as error:
        raise WeightsError(
            f"the shipped model {name!r} is damaged: {index} cannot be read "
            f"({_one_line(error)}); {_REINSTALL}"
        ) from None
    for component, entry in components.items():
        if component.startswith("_") or not isinstance(entry, list) or component == "scheduler":
            continue
        config = folder / component / "config.json"
        weights = folder / component / "diffusion_pytorch_model.safetensors"
        for path in (config, weights):
            if not path.is_file():
                raise WeightsError(
                    f"the shipped model {name!r} is damaged: {path} is missing; {_REINSTALL}"
                )
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error types
            raise WeightsError(
                f"the shipped model {name!r} is damaged: {weights} is truncated or not a "
                f"safetensors file ({_one_line(error)}); {_REINSTALL}"
            ) from None
    return folder


@needs("diffusers", "transformers")
def load_pipeline(name: str, device="cpu"):
    """Load a shipped zoo model through ``DiffusionPipeline.from_pretrained`` (offline).

    Returns a :class:`~entropy_attn.zoo.models.DigitsPipeline` in float32 on ``device``:
    ``pipe(labels, height=h, width=w, generator=g)`` -> images ``(n, 1, h, w)`` in [-1, 1];
    ``entropy_attn.enable(pipe)`` works on it unchanged (``vae_scale_factor`` is 1, the
    training size is the denoiser's ``sample_size``).

    Raises:
        WeightsError: a file of the model is missing or damaged (the message names it).
    """
    import torch

    from .models import DigitsDiTPipeline, DigitsFluxPipeline, DigitsUNetPipeline

    cls = {"digits-unet": DigitsUNetPipeline, "digits-flux": DigitsFluxPipeline}.get(
        name, DigitsDiTPipeline
    )
    folder = check_weights(name)
    try:
        pipe = cls.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:  # what check_weights cannot see
        raise WeightsError(
            f"the shipped model {name!r} at {folder} cannot be loaded ({_one_line(error)}); "
            f"{_REINSTALL}"
        ) from None
    return pipe.to(device)
