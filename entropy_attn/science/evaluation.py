"""Evaluation harness: the protocol of the paper's Tables 1-2 (FID and CLIP score across sizes).

For every image size and both methods (``"stock"``: the pipeline untouched; ``"entropy-attn"``:
``entropy_attn.enable(pipe)``) one image per prompt is generated with the seed
``seed + prompt index`` (the same noise for both methods) and written to

    <out>/images/<method>/<W>x<H>/<prompt index:05d>.png

as soon as it exists, so a rerun skips what is on disk (resume). Under ``accelerate launch``
each process takes the prompts whose index is ``process_index mod num_processes``; after all
processes finish, the main process computes the metrics from the files and writes
``<out>/results.csv`` and ``<out>/results.md``.

Metrics use torchmetrics (``pip install "entropy-attn[eval]"``):

- FID: ``torchmetrics.image.fid.FrechetInceptionDistance`` against a folder of reference images.
  Both sides are centre-cropped to a square and resized to ``fid_size`` (default 299, Inception's
  input size) with PIL's bicubic filter, so every size is compared on the same footing. The
  default feature extractor is torch-fidelity's InceptionV3 (2048-d pool features), whose weights
  must already be in the torch hub cache (or given as a file); any module mapping
  ``uint8 (N, 3, S, S)`` to ``(N, F)`` features, saved with ``torch.export`` (``.pt2``) or as
  TorchScript, can replace it.
- CLIP score: ``torchmetrics.multimodal.CLIPScore`` (``100 * max(mean cos(image, prompt), 0)``)
  with a CLIP model from a local folder or the Hugging Face cache (default
  ``openai/clip-vit-large-patch14``, torchmetrics' default).

Missing weights are never downloaded behind the user's back: :class:`MetricUnavailable` says
what is missing and how to get it.

One file because it is one pipeline read top to bottom: prompts and images on disk, generation
per size and method (resumable), then FID and CLIP score over what was generated, and the table;
each stage's file layout is what the next stage reads.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..integration import enabled
from ..sizes import format_size, parse_size

METHODS = ("stock", "entropy-attn")
METRICS = ("fid", "clip")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
RESULT_COLUMNS = ("size", "height", "width", "method", "images", "fid", "clip_score")


# The main process computes every metric from the image files of all processes: no syncing of
# metric states between processes (which would wait for processes that have already finished).
_LOCAL = {"sync_on_compute": False, "dist_sync_on_step": False}


class MetricUnavailable(RuntimeError):
    """A metric cannot run here: a library or model weights are missing (the message says how
    to get them)."""


# ---------------------------------------------------------------------------------------------
# Inputs


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Prompts from a text file, one per line (blank lines skipped); the first ``limit`` ones."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file {str(path)!r} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"prompts file {str(path)!r} has no prompts (one per line expected)")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"n must be >= 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def list_images(folder: str | Path) -> list[Path]:
    """Image files (``.png .jpg .jpeg .webp .bmp``) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"reference-images folder {str(folder)!r} does not exist")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise ValueError(
            f"reference-images folder {str(folder)!r} has no images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return images


def image_path(out_dir: str | Path, method: str, size: tuple[int, int], index: int) -> Path:
    """Where the image of prompt ``index`` at ``size`` for ``method`` is stored."""
    return Path(out_dir) / "images" / method / format_size(size) / f"{index:05d}.png"


def shard(count: int, process_index: int, num_processes: int) -> list[int]:
    """The item indices process ``process_index`` of ``num_processes`` handles (round robin)."""
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(f"bad process index {process_index} of {num_processes}")
    return list(range(process_index, count, num_processes))


def load_image(path: str | Path, square_size: int | None = None) -> torch.Tensor:
    """An image file as ``uint8 (3, H, W)``; with ``square_size``, centre-cropped to a square and
    resized to ``square_size`` with PIL's bicubic filter."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if square_size is not None:
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            if side != square_size:
                image = image.resize((square_size, square_size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def save_image_atomic(image, path: Path) -> None:
    """Write a PIL image as PNG via a temporary file, so an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)


def check_run_settings(out_dir: str | Path, settings: dict, *, write: bool = True) -> None:
    """Refuse to resume a run folder whose images were made with other settings.

    ``<out_dir>/run.json`` keeps the settings images depend on (model, steps, seed, guidance,
    prompts). A rerun must match them; its prompt list may be longer or shorter (``--n``), but
    prompts present in both must be equal, since image ``i`` belongs to prompt ``i``. With
    ``write``, the file is (re)written with the longer prompt list.

    Raises:
        ValueError: naming the settings that differ.
    """
    import json

    path = Path(out_dir) / "run.json"
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    merged = dict(settings)
    if stored is not None:
        differing = [
            key
            for key in sorted(set(stored) | set(settings))
            if key != "prompts" and stored.get(key) != settings.get(key)
        ]
        old, new = stored.get("prompts", []), settings.get("prompts", [])
        common = min(len(old), len(new))
        if old[:common] != new[:common]:
            first = next(i for i in range(common) if old[i] != new[i])
            differing.append(f"prompts (line {first + 1}: {old[first]!r} vs {new[first]!r})")
        if differing:
            raise ValueError(
                f"{path} was written by a run with other settings: {', '.join(differing)}; "
                "its images would not match. Use a new --out folder, or the same settings."
            )
        merged["prompts"] = old if len(old) > len(new) else new
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name("run.json.partial")
        partial.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
        os.replace(partial, path)


# ---------------------------------------------------------------------------------------------
# Generation


@dataclass
class GenerationReport:
    """How many images one process generated and how many it found already on disk."""

    generated: int = 0
    skipped: int = 0
    seconds: float = 0.0


def _progress(iterable, **kwargs):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kwargs)


def generate_images(
    pipe,
    prompts: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    out_dir: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    steps: int = 50,
    seed: int = 0,
    guidance_scale: float | None = None,
    batch_size: int = 1,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = True,
    enable_options: dict | None = None,
) -> GenerationReport:
    """Generate the images of this process's shard that are not on disk yet.

    Args:
        pipe: a diffusers text-to-image pipeline (on its device already).
        prompts: all prompts (the shard is taken here).
        sizes: ``(height, width)`` pixel sizes.
        out_dir: the run folder; images go to :func:`image_path`.
        methods: subset of ``("stock", "entropy-attn")``.
        steps: denoising steps.
        seed: image ``i`` uses ``torch.Generator().manual_seed(seed + i)`` (CPU generator, so the
            noise does not depend on the device or on the sharding).
        guidance_scale: passed to the pipeline when given.
        batch_size: prompts per pipeline call.
        process_index, num_processes: this process's place (``accelerate``'s ``PartialState``).
        progress: show tqdm progress bars.
        enable_options: options for :func:`entropy_attn.enable` (entropy-attn runs).

    Returns:
        A :class:`GenerationReport` for this process.
    """
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"methods entries must be in {METHODS}, got {method!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    report = GenerationReport()
    mine = shard(len(prompts), process_index, num_processes)
    start = time.perf_counter()
    for size in sizes:
        for method in methods:
            pending = [i for i in mine if not image_path(out_dir, method, size, i).is_file()]
            report.skipped += len(mine) - len(pending)
            if not pending:
                continue
            bar = _progress(
                range(len(pending)),
                desc=f"{method} {format_size(size)}",
                disable=not progress,
                position=process_index,
            )
            context = (
                enabled(pipe, **(enable_options or {}))
                if method == "entropy-attn"
                else contextlib.nullcontext()
            )
            with context, torch.no_grad():
                for first in range(0, len(pending), batch_size):
                    batch = pending[first : first + batch_size]
                    kwargs = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
                    images = pipe(
                        [prompts[i] for i in batch],
                        height=size[0],
                        width=size[1],
                        num_inference_steps=steps,
                        generator=[torch.Generator().manual_seed(seed + i) for i in batch],
                        output_type="pil",
                        **kwargs,
                    ).images
                    for index, image in zip(batch, images, strict=True):
                        save_image_atomic(image, image_path(out_dir, method, size, index))
                        report.generated += 1
                    if hasattr(bar, "update"):
                        bar.update(len(batch))
            if hasattr(bar, "close"):
                bar.close()
    report.seconds = time.perf_counter() - start
    return report


# ---------------------------------------------------------------------------------------------
# Metrics


def _need_torchmetrics():
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        raise MetricUnavailable(
            "metrics need torchmetrics: pip install 'entropy-attn[eval]' "
            "(torchmetrics, torch-fidelity, accelerate, tqdm)"
        ) from None


def inception_weights_file() -> Path:
    """Where torch-fidelity's InceptionV3 weights live in the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]


def load_feature_extractor(path: str | Path) -> torch.nn.Module:
    """A custom FID feature extractor: a ``torch.export`` program (``.pt2``, saved with
    ``torch.export.save``; give the batch dimension a ``Dim`` with ``min=1``) or, for other
    suffixes, a TorchScript file (``torch.jit.save``; deprecated by PyTorch but still common)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"fid feature extractor {str(path)!r} does not exist")
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    return torch.jit.load(str(path), map_location="cpu").eval()


def _inception_weights(inception_weights: str | Path | None) -> Path:
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise MetricUnavailable(
            "FID with InceptionV3 needs torch-fidelity: pip install 'entropy-attn[eval]' "
            "(or pass --fid-features FILE with your own feature extractor)"
        ) from None
    weights = Path(inception_weights) if inception_weights else inception_weights_file()
    if not weights.is_file():
        raise MetricUnavailable(
            f"FID needs the InceptionV3 weights file {weights}, which is not there. On a machine "
            "with internet, fetch it into the torch hub cache with\n"
            '    python -c "import torch; torch.hub.load_state_dict_from_url('
            f"'{INCEPTION_URL}')\"\n"
            "and copy it to the same place here (TORCH_HOME/hub/checkpoints), or pass "
            "--inception-weights FILE."
        )
    return weights


def build_fid(
    feature: str | Path | None = None,
    *,
    inception_weights: str | Path | None = None,
    fid_size: int = 299,
    device: str | torch.device = "cpu",
):
    """A ``FrechetInceptionDistance`` that keeps its reference features across ``reset()``.

    Args:
        feature: ``None`` for torch-fidelity's InceptionV3 (2048-d), or a file for
            :func:`load_feature_extractor` (``.pt2`` or TorchScript) of a module mapping
            ``uint8 (N, 3, fid_size, fid_size)`` to ``(N, F)`` features.
        inception_weights: InceptionV3 weights file; default the torch hub cache
            (:func:`inception_weights_file`).
        fid_size: side of the square images the extractor is given.
        device: where features are computed.

    Raises:
        MetricUnavailable: torchmetrics / torch-fidelity / the Inception weights are missing.
    """
    _need_torchmetrics()
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature is not None:
        path = Path(feature)
        if not path.is_file():
            raise ValueError(f"fid feature extractor {str(path)!r} does not exist")
        module = load_feature_extractor(path).to(device)
        metric = FrechetInceptionDistance(
            feature=module,
            reset_real_features=False,
            input_img_size=(3, fid_size, fid_size),
            **_LOCAL,
        )
        return metric.to(device)
    weights = _inception_weights(inception_weights)
    metric = FrechetInceptionDistance(
        feature=2048,
        reset_real_features=False,
        feature_extractor_weights_path=str(weights),
        **_LOCAL,
    )
    return metric.to(device)


def _clip_loader(model: str | Path) -> Callable:
    from transformers import CLIPModel, CLIPProcessor

    location = str(model)
    local = Path(location).expanduser()
    if local.is_dir():
        location = str(local)
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
            try_to_load_from_cache = None
        cached = try_to_load_from_cache(location, "config.json") if try_to_load_from_cache else None
        if not isinstance(cached, str):
            raise MetricUnavailable(
                f"CLIP score needs the CLIP model {location!r}, which is neither a local folder "
                "nor in the Hugging Face cache. On a machine with internet run\n"
                f"    hf download {location} --local-dir ./clip\n"
                "then copy ./clip here and pass --clip-model ./clip (or copy the cache folder, "
                "HF_HOME)."
            )

    def load():
        clip = CLIPModel.from_pretrained(location, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(location, local_files_only=True)
        return _ProjectedFeatures(clip), processor

    return load


class _ProjectedFeatures(torch.nn.Module):
    """A CLIPModel whose ``get_*_features`` return the projected embedding tensor.

    transformers 5 returns a ``BaseModelOutputWithPooling`` (embedding in ``pooler_output``)
    where torchmetrics <= 1.9 expects the tensor that transformers 4 returned.
    """

    def __init__(self, clip) -> None:
        super().__init__()
        self.clip = clip
        self.config = clip.config

    @staticmethod
    def _tensor(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.clip.get_text_features(*args, **kwargs))


def build_clip_score(model: str | Path = DEFAULT_CLIP_MODEL, *, device="cpu"):
    """A torchmetrics ``CLIPScore`` with a CLIP model from a local folder or the HF cache."""
    _need_torchmetrics()
    from torchmetrics.multimodal.clip_score import CLIPScore

    return CLIPScore(model_name_or_path=_clip_loader(model), **_LOCAL).to(device)


def check_metrics(
    metrics: Sequence[str],
    *,
    fid_features: str | Path | None = None,
    inception_weights: str | Path | None = None,
    clip_model: str | Path = DEFAULT_CLIP_MODEL,
) -> None:
    """Fail fast (before generating anything) if a requested metric cannot run here."""
    for metric in metrics:
        if metric not in METRICS:
            raise ValueError(f"metrics entries must be in {METRICS}, got {metric!r}")
    if not metrics:
        return
    _need_torchmetrics()
    if "fid" in metrics:
        if fid_features is not None and not Path(fid_features).is_file():
            raise ValueError(f"fid feature extractor {str(fid_features)!r} does not exist")
        if fid_features is None:
            _inception_weights(inception_weights)
    if "clip" in metrics:
        _clip_loader(clip_model)


@dataclass(frozen=True)
class ResultRow:
    """One line of the results table (``None``: metric not requested)."""

    size: tuple[int, int]
    method: str
    images: int
    fid: float | None
    clip_score: float | None

    def as_dict(self) -> dict:
        return {
            "size": format_size(self.size),
            "height": self.size[0],
            "width": self.size[1],
            "method": self.method,
            "images": self.images,
            "fid": "" if self.fid is None else self.fid,
            "clip_score": "" if self.clip_score is None else self.clip_score,
        }


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def compute_metrics(
    prompts: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    out_dir: str | Path,
    *,
    metrics: Sequence[str] = METRICS,
    reference_images: Sequence[Path] = (),
    methods: Sequence[str] = METHODS,
    fid_features: str | Path | None = None,
    inception_weights: str | Path | None = None,
    fid_size: int = 299,
    clip_model: str | Path = DEFAULT_CLIP_MODEL,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[ResultRow]:
    """FID / CLIP score of every (size, method) from the images on disk.

    Every image of every prompt must be on disk (run :func:`generate_images` first); reference
    features for FID are computed once and reused for all sizes and methods.
    """
    check_metrics(
        metrics,
        fid_features=fid_features,
        inception_weights=inception_weights,
        clip_model=clip_model,
    )
    missing = [
        image_path(out_dir, method, size, i)
        for size in sizes
        for method in methods
        for i in range(len(prompts))
        if not image_path(out_dir, method, size, i).is_file()
    ]
    if missing:
        raise RuntimeError(f"{len(missing)} generated images are missing, e.g. {missing[0]}")
    fid = clip = None
    if "fid" in metrics:
        if len(reference_images) < 2 or len(prompts) < 2:
            raise ValueError("FID needs at least 2 reference images and 2 prompts")
        fid = build_fid(
            fid_features, inception_weights=inception_weights, fid_size=fid_size, device=device
        )
        for batch in _batches(list(reference_images), batch_size):
            images = torch.stack([load_image(p, fid_size) for p in batch]).to(device)
            fid.update(images, real=True)
    if "clip" in metrics:
        clip = build_clip_score(clip_model, device=device)
    rows = []
    for size in sizes:
        for method in methods:
            paths = [image_path(out_dir, method, size, i) for i in range(len(prompts))]
            fid_value = clip_value = None
            bar = _progress(
                range(len(paths)),
                desc=f"metrics {method} {format_size(size)}",
                disable=not progress or (fid is None and clip is None),  # no metric, no bar
            )
            for indices in _batches(list(range(len(paths))), batch_size):
                if fid is not None:
                    images = torch.stack([load_image(paths[i], fid_size) for i in indices])
                    fid.update(images.to(device), real=False)
                if clip is not None:
                    clip.update(
                        [load_image(paths[i]).to(device) for i in indices],
                        [prompts[i] for i in indices],
                    )
                if hasattr(bar, "update"):
                    bar.update(len(indices))
            if hasattr(bar, "close"):
                bar.close()
            if fid is not None:
                fid_value = float(fid.compute())
                fid.reset()
            if clip is not None:
                clip_value = float(clip.compute())
                clip.reset()
            rows.append(ResultRow(size, method, len(paths), fid_value, clip_value))
    return rows


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value) or value == 0:
        return str(value)
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def write_results(
    rows: Sequence[ResultRow], out_dir: str | Path, *, description: str = ""
) -> tuple[Path, Path]:
    """``results.csv`` (full precision) and ``results.md`` (a Markdown table) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.as_dict())
    lines = [description.strip(), ""] if description.strip() else []
    lines += [
        "| size (WxH) | method | images | FID ↓ | CLIP score ↑ |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {format_size(row.size)} | {row.method} | {row.images} | {_fmt(row.fid)} "
            f"| {_fmt(row.clip_score)} |"
        )
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path


def process_state(cpu: bool | None = None):
    """``accelerate``'s ``PartialState`` (set up by ``accelerate launch`` or ``torchrun``), or
    ``None`` when accelerate is not installed.

    Args:
        cpu: processes run on the CPU; default: when CUDA is not available. accelerate only
            forms a multi-process CPU group (gloo) when told so.
    """
    try:
        from accelerate import PartialState
    except ImportError:
        return None
    return PartialState(cpu=not torch.cuda.is_available() if cpu is None else cpu)


__all__ = [
    "DEFAULT_CLIP_MODEL",
    "METHODS",
    "METRICS",
    "GenerationReport",
    "MetricUnavailable",
    "ResultRow",
    "build_clip_score",
    "build_fid",
    "check_metrics",
    "check_run_settings",
    "compute_metrics",
    "format_size",
    "generate_images",
    "image_path",
    "inception_weights_file",
    "list_images",
    "load_feature_extractor",
    "load_image",
    "parse_size",
    "process_state",
    "read_prompts",
    "save_image_atomic",
    "shard",
    "write_results",
]
