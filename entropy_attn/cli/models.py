"""The names ``--model`` accepts, and loading a model from a ``--model`` value.

:data:`MODELS` is the one registry of names. Two kinds of entry:

- built in: ``build()`` makes the whole pipeline offline (``tiny-sd``, ``tiny-ldm``, ...: random
  weights, seconds on a CPU; ``digits-unet``, ``digits-dit``: the trained models of
  :mod:`entropy_attn.zoo`, which take class labels 0-9 instead of prompts, ``inputs="labels"``:
  ``demo``, ``eval`` and ``layers`` run them, the prompt commands refuse them);
- shipped architectures: their configs ship in :mod:`entropy_attn.configs` (``layers`` needs
  nothing else); other commands load the weights from ``hub_id`` (local Hugging Face cache, or a
  download).

Anything else is a Hugging Face id (``org/name``) or a local pipeline folder. To add a name, call
:func:`register` with a :class:`ModelName` below the existing ones, e.g.::

    register(ModelName("my-model", "what it is", build=my_pipeline, steps=20))

One file because it is the registry of ``--model`` names and the one place that turns a name
into a pipeline (built-in, zoo, shipped config or hub id), with the checks that give each kind
its one-line error.
"""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import configs
from .._quiet import quiet_library_logs
from ..tiny.pipelines import TINY_PIPELINES
from .common import CLIError, check_memory, check_multiple, resolve_dtype

REAL_STEPS = 30
REAL_ENTROPY_STEPS = 10
HUB_ID_EXAMPLE = "stabilityai/stable-diffusion-2-1-base"


@dataclass(frozen=True)
class ModelName:
    """One name ``--model`` accepts.

    Attributes:
        name: the ``--model`` value.
        summary: a few words for ``--help`` and error messages.
        build: built-in models: builds the pipeline (float32, CPU) with no download.
        hub_id: shipped architectures: where the weights are (Hugging Face id).
        steps: default ``--steps`` of ``demo``, ``generate`` and ``eval``.
        entropy_steps: default ``--steps`` of ``entropy``.
        vae_scale_factor: pixels per latent pixel, if known without loading (checks sizes early).
        inputs: what the pipeline is conditioned on: ``"prompt"`` (text-to-image) or
            ``"labels"`` (the class-conditional digits models of :mod:`entropy_attn.zoo`).
    """

    name: str
    summary: str
    build: Callable[[], Any] | None = None
    hub_id: str | None = None
    steps: int = REAL_STEPS
    entropy_steps: int = REAL_ENTROPY_STEPS
    vae_scale_factor: int | None = None
    inputs: str = "prompt"

    @property
    def builtin(self) -> bool:
        return self.build is not None


MODELS: dict[str, ModelName] = {}


def register(entry: ModelName) -> ModelName:
    """Add a name to :data:`MODELS` (each name once; built in xor shipped)."""
    if entry.name in MODELS:
        raise ValueError(f"model name {entry.name!r} is registered already")
    if (entry.build is None) == (entry.hub_id is None):
        raise ValueError(f"model {entry.name!r}: give exactly one of build= or hub_id=")
    if entry.inputs not in ("prompt", "labels"):
        raise ValueError(f"model {entry.name!r}: inputs must be 'prompt' or 'labels'")
    MODELS[entry.name] = entry
    return entry


for _name, _builder in TINY_PIPELINES.items():
    register(
        ModelName(
            _name,
            "built in, random weights",
            build=_builder,
            steps=4,
            entropy_steps=2,
            vae_scale_factor=8,
        )
    )


def _zoo_builder(name: str) -> Callable[[], Any]:
    def build():
        from diffusers.utils import logging as diffusers_logging

        from .. import zoo

        shown = diffusers_logging.is_progress_bar_enabled()
        diffusers_logging.disable_progress_bar()  # "Loading pipeline components": a few ms
        try:
            with quiet_library_logs():
                return zoo.load_pipeline(name)
        except zoo.WeightsError as error:
            raise CLIError(str(error)) from None
        finally:
            if shown:
                diffusers_logging.enable_progress_bar()

    return build


# entropy_attn.zoo.MODELS (imported lazily)
for _name in ("digits-unet", "digits-dit", "digits-flux"):
    register(
        ModelName(
            _name,
            "trained on 8x8 digits, class labels",
            build=_zoo_builder(_name),
            steps=10,
            entropy_steps=10,
            vae_scale_factor=1,
            inputs="labels",
        )
    )
for _name, _hub_id in configs.HUB_IDS.items():
    register(
        ModelName(
            _name,
            f"shipped config; weights: {_hub_id}",
            hub_id=_hub_id,
            vae_scale_factor=configs.vae_scale_factor(_name),
        )
    )


def builtin_names() -> list[str]:
    """Built-in text-to-image names (random weights)."""
    return [name for name, entry in MODELS.items() if entry.builtin and entry.inputs == "prompt"]


def label_names() -> list[str]:
    """Built-in names that take class labels, not prompts (the trained digits models)."""
    return [name for name, entry in MODELS.items() if entry.inputs == "labels"]


def takes_labels(spec: str) -> bool:
    """``--model`` names a class-conditional model (class labels, no prompts)."""
    entry = MODELS.get(spec)
    return entry is not None and entry.inputs == "labels"


def check_digits_sizes(spec: str, sizes, option: str = "--sizes") -> None:
    """``digits-unet`` halves the image once: its sizes must be even."""
    if spec != "digits-unet":
        return
    for height, width in sizes:
        if height % 2 or width % 2:
            raise CLIError(
                f"{option} {width}x{height}: digits-unet needs even width and height (it halves "
                "the image once)"
            )


def require_prompts(spec: str, command: str) -> None:
    """Refuse a model that takes class labels in a command that needs prompts."""
    if takes_labels(spec):
        raise CLIError(
            f"--model {spec!r} takes class labels (digits 0-9), not prompts: `entropy-attn "
            f"{command}` needs a text-to-image model ({', '.join(builtin_names())}, a shipped "
            f"architecture, a Hugging Face id or a pipeline folder). For {spec} run "
            f"`entropy-attn demo --model {spec}`, `entropy-attn eval --model {spec}` or "
            f"`entropy-attn entropy --model {spec}` (or `entropy-attn layers`)."
        )


def shipped_names() -> list[str]:
    return [name for name, entry in MODELS.items() if not entry.builtin]


def model_help(default: str | None = None) -> str:
    """``--model`` help text listing every registered name."""
    text = (
        f"built in (no download): {', '.join(builtin_names())} (random weights), "
        f"{', '.join(label_names())} (trained on 8x8 digits, class labels: demo, eval, "
        "entropy, layers); shipped architectures (weights "
        f"from their Hugging Face id): {', '.join(shipped_names())}; or a Hugging Face id "
        "(org/name) or a local pipeline folder"
    )
    return text + (f" (default: {default})" if default else "")


# ---------------------------------------------------------------------------------------------
# Checks that need no model


def looks_like_path(spec: str) -> bool:
    """A filesystem path rather than a Hugging Face id (``org/name``, one slash)."""
    return (
        spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or "\\" in spec
        or Path(spec).expanduser().exists()
    )


def check_model_name(spec: str) -> None:
    """A ``--model`` value that is no registered name, folder or ``org/name`` id: refuse it with
    the closest names, before anything is loaded or looked up on the network."""
    if spec in MODELS or looks_like_path(spec) or "/" in spec:
        return
    close = difflib.get_close_matches(spec, list(MODELS), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? It" if close else "it"
    raise CLIError(
        f"--model {spec!r}: {hint} is not a known name, an existing folder or a Hugging Face id "
        f"(org/name). Known names: {', '.join(MODELS)}."
    )


def model_dtype(spec: str, choice: str | None, device: torch.device) -> torch.dtype:
    """``--dtype``; ``auto`` is float32 for built-in models, else :func:`resolve_dtype`."""
    entry = MODELS.get(spec)
    if choice in (None, "auto") and entry is not None and entry.builtin:
        return torch.float32
    return resolve_dtype(choice, device)


def default_steps(spec: str, steps: int | None, *, entropy: bool = False) -> int:
    """``--steps`` or the model's default (built in: 4, entropy 2; real: 30, entropy 10)."""
    if steps is not None:
        return steps
    entry = MODELS.get(spec)
    if entry is None:
        return REAL_ENTROPY_STEPS if entropy else REAL_STEPS
    return entry.entropy_steps if entropy else entry.steps


def _local_vae_config(folder: Path) -> dict | None:
    for component in ("vae", "vqvae"):
        path = folder / component / "config.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _shipped_vae_config(name: str) -> dict | None:
    for component in ("vae", "vqvae"):
        try:
            return configs.load_config(name, component)
        except ValueError:
            continue
    return None


def known_vae_config(spec: str) -> dict | None:
    """The autoencoder config when it can be read without loading (shipped file, local folder)."""
    if spec in configs.ARCHITECTURES:
        return _shipped_vae_config(spec)
    if looks_like_path(spec):
        return _local_vae_config(Path(spec).expanduser())
    return None


def known_vae_factor(spec: str) -> int | None:
    """Pixels per latent pixel, when known without loading weights (``None``: after loading)."""
    entry = MODELS.get(spec)
    if entry is not None and entry.vae_scale_factor is not None:
        return entry.vae_scale_factor
    config = known_vae_config(spec)
    if config and "block_out_channels" in config:
        return 2 ** (len(config["block_out_channels"]) - 1)
    return None


def vae_channels(source) -> int | None:
    """Channels of the autoencoder's full-resolution level, from a pipeline or a VAE config."""
    if isinstance(source, dict):
        channels = source.get("block_out_channels")
    else:
        vae = getattr(source, "vae", None) or getattr(source, "vqvae", None)
        channels = getattr(getattr(vae, "config", None), "block_out_channels", None)
    return int(channels[0]) if channels else None


def check_sizes(
    spec_or_pipe,
    sizes,
    option: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    force: bool,
) -> None:
    """Sizes against the VAE factor and the device's free memory (:func:`common.check_memory`).

    With a ``--model`` value this runs before loading, as far as the factor and the autoencoder
    config are known without weights; with the loaded pipeline it checks what remained.
    """
    if isinstance(spec_or_pipe, str):
        factor = known_vae_factor(spec_or_pipe)
        config = known_vae_config(spec_or_pipe)
        channels = vae_channels(config) if config else None
    else:
        from ..integration import vae_scale_factor_of

        factor = vae_scale_factor_of(spec_or_pipe, None)
        channels = vae_channels(spec_or_pipe)
    check_multiple(sizes, factor, option)
    check_memory(sizes, channels, dtype=dtype, device=device, force=force, option=option)


# ---------------------------------------------------------------------------------------------
# Loading


def _reason(error: Exception, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def missing_model_message(spec: str, reason: str) -> str:
    """One paragraph: the model could not be loaded, and how to provide a local copy."""
    entry = MODELS.get(spec)
    hub_id = entry.hub_id if entry is not None and entry.hub_id else spec
    example = hub_id if "/" in hub_id and not looks_like_path(hub_id) else HUB_ID_EXAMPLE
    return (
        f"Could not load the diffusers pipeline {spec!r} ({reason}). entropy-attn ships no model "
        "weights: --model takes a local folder with a diffusers pipeline (model_index.json) or a "
        "Hugging Face id that is already in the local cache or can be downloaded. To use a model "
        f"offline, run `hf download {example} --local-dir ./model` on a machine with internet "
        "(or `DiffusionPipeline.from_pretrained(...).save_pretrained('./model')`), copy ./model "
        "here and pass --model ./model; set HF_HUB_OFFLINE=1 to stop network look-ups. Without "
        f"a model, --model {' or '.join(builtin_names()[:2])} runs a tiny built-in pipeline "
        "with random weights."
    )


def _local_folder(spec: str, location: str) -> str:
    path = Path(location).expanduser()
    if not (path / "model_index.json").is_file():
        what = "no such folder" if not path.exists() else "no model_index.json in that folder"
        raise CLIError(missing_model_message(spec, what))
    return str(path)


def load_pipeline(spec: str, *, device: torch.device, dtype: torch.dtype):
    """A diffusers pipeline from a ``--model`` value, on ``device``, progress bar off.

    Raises:
        CLIError: the model cannot be found or loaded (the message says how to provide it).
    """
    check_model_name(spec)
    entry = MODELS.get(spec)
    if entry is not None and entry.builtin:
        pipe = entry.build().to(device)
        if dtype != torch.float32:
            with quiet_library_logs():
                pipe = pipe.to(dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    location = entry.hub_id if entry is not None else spec
    if looks_like_path(location):
        location = _local_folder(spec, location)
    try:
        with quiet_library_logs():
            from diffusers import DiffusionPipeline

        with warnings.catch_warnings(), quiet_library_logs():
            # diffusers >= 0.36 renames torch_dtype to dtype; older releases only know torch_dtype.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(location, torch_dtype=dtype)
    except Exception as error:  # any load failure: say what failed and how to provide the model
        raise CLIError(missing_model_message(spec, _reason(error))) from None
    if not any(hasattr(pipe, name) for name in ("unet", "transformer")):
        raise CLIError(
            f"--model {spec!r} is a {type(pipe).__name__} without a unet or transformer; "
            "entropy-attn works on text-to-image diffusion pipelines (SD 1.x/2.x, SDXL, LDM)"
        )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _config_denoiser(location: str):
    """Denoiser on the meta device and VAE factor from a pipeline's configs only (no weights)."""
    import diffusers
    from diffusers import DiffusionPipeline

    from ..integration.denoiser import AUTOENCODERS, autoencoder_factor

    index = DiffusionPipeline.load_config(location)
    for component in ("unet", "transformer"):
        entry = index.get(component)
        if isinstance(entry, list | tuple) and len(entry) == 2:
            cls = getattr(diffusers, entry[1])
            config = cls.load_config(location, subfolder=component)
            with torch.device("meta"):
                denoiser = cls.from_config(config)
            break
    else:
        raise CLIError(f"--model {location!r}: model_index.json names no unet or transformer")
    # The library's rule, on the autoencoder configs model_index.json names ([null, null]: None).
    autoencoders = {}
    for component in AUTOENCODERS:
        entry = index.get(component)
        if component in index:
            named = isinstance(entry, list | tuple) and len(entry) == 2 and entry[1]
            autoencoders[component] = (
                getattr(diffusers, entry[1]).load_config(location, subfolder=component)
                if named
                else None
            )
    return denoiser.eval(), autoencoder_factor(autoencoders)


def load_architecture(spec: str):
    """``(model, vae_scale_factor)`` for the layer table: no weights are loaded.

    Shipped architecture names are built on the meta device from their configs; built-in models
    are built as they are; anything else is read from its configs (local folder or HF id).
    """
    check_model_name(spec)
    if spec in configs.ARCHITECTURES:
        return configs.build_denoiser(spec, device="meta"), configs.vae_scale_factor(spec)
    entry = MODELS.get(spec)
    if entry is not None and entry.builtin:
        pipe = entry.build()
        return pipe, pipe.vae_scale_factor
    location = spec
    if looks_like_path(spec):
        location = _local_folder(spec, spec)
    try:
        return _config_denoiser(location)
    except CLIError:
        raise
    except Exception as error:  # any load failure: say what failed and how to provide the model
        raise CLIError(missing_model_message(spec, _reason(error))) from None


__all__ = [
    "MODELS",
    "check_digits_sizes",
    "ModelName",
    "builtin_names",
    "check_model_name",
    "check_sizes",
    "default_steps",
    "label_names",
    "known_vae_config",
    "known_vae_factor",
    "load_architecture",
    "load_pipeline",
    "missing_model_message",
    "model_dtype",
    "model_help",
    "register",
    "require_prompts",
    "shipped_names",
    "takes_labels",
    "vae_channels",
]
