"""The ``entropy-attn`` command: demo, generate, layers, entropy, eval, bench.

Run ``entropy-attn --help`` (or ``python -m entropy_attn.cli --help``) and ``entropy-attn
COMMAND --help``. Every command that needs a model takes ``--model``: ``tiny-sd`` / ``tiny-ldm``
(built in, random weights, no download), a shipped architecture name (``sd21-base``, ``sd15``,
``sdxl-base``, ``ldm-256``: its Hugging Face id, loaded from the local cache), a Hugging Face id,
or a local folder written by ``save_pretrained`` / ``hf download``.

Exit codes: 0 success, 2 a usage problem or something missing (bad argument, model or metric
weights not found), as argparse does; the message says what and how to fix it.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from . import analysis, evaluation
from .evaluation import METHODS, format_size, parse_size
from .integration import enabled, layer_table

EXIT_USAGE = 2
DEFAULT_PROMPT = "a photo of a cat sitting on a red car"
TINY_STEPS = 4
REAL_STEPS = 30
LAYER_COLUMNS = ("name", "kind", "heads", "head_dim", "N", "T", "lambda", "changed")
# Image grid layout (pixels): row labels on the left, column labels on top.
GRID_PAD = 8
GRID_LABEL_WIDTH = 120
GRID_HEADER_HEIGHT = 24


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


# ---------------------------------------------------------------------------------------------
# Models


def _tiny_pipelines() -> dict[str, Callable]:
    from .tiny import TINY_PIPELINES

    return TINY_PIPELINES


def _architectures() -> dict[str, str]:
    from .configs import HUB_IDS

    return HUB_IDS


HUB_IDS_EXAMPLE = "stabilityai/stable-diffusion-2-1-base"


def _looks_like_path(spec: str) -> bool:
    """A filesystem path rather than a Hugging Face id (``org/name``, one slash)."""
    return (
        spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or "\\" in spec
        or Path(spec).expanduser().exists()
    )


def _reason(error: Exception, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def missing_model_message(spec: str, reason: str) -> str:
    """One paragraph: the model could not be loaded, and how to provide a local copy."""
    hub_id = _architectures().get(spec, spec)
    example = hub_id if "/" in hub_id and not _looks_like_path(hub_id) else HUB_IDS_EXAMPLE
    return (
        f"Could not load the diffusers pipeline {spec!r} ({reason}). entropy-attn ships no model "
        "weights: --model takes a local folder with a diffusers pipeline (model_index.json) or a "
        "Hugging Face id that is already in the local cache or can be downloaded. To use a model "
        f"offline, run `hf download {example} --local-dir ./model` on a machine with internet "
        "(or `DiffusionPipeline.from_pretrained(...).save_pretrained('./model')`), copy ./model "
        "here and pass --model ./model; set HF_HUB_OFFLINE=1 to stop network look-ups. Without "
        "a model, --model tiny-sd or tiny-ldm runs a tiny built-in pipeline with random weights."
    )


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA if available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise CLIError(
            f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device!r}: CUDA is not available here (use --device cpu)")
    return resolved


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on CUDA, float32 elsewhere."""
    names = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    return names[dtype]


def model_dtype(spec: str, choice: str | None, device: torch.device) -> torch.dtype:
    """``--dtype``; ``auto`` is float32 for the tiny pipelines, else :func:`resolve_dtype`."""
    if choice in (None, "auto") and spec in _tiny_pipelines():
        return torch.float32
    return resolve_dtype(choice, device)


def load_pipeline(spec: str, *, device: torch.device, dtype: torch.dtype):
    """A diffusers pipeline from a ``--model`` value, on ``device``.

    Raises:
        CLIError: the model cannot be found or loaded (the message says how to provide it).
    """
    tiny = _tiny_pipelines()
    if spec in tiny:
        return tiny[spec]().to(device)
    location = _architectures().get(spec, spec)
    if _looks_like_path(location):
        path = Path(location).expanduser()
        if not (path / "model_index.json").is_file():
            what = "no such folder" if not path.exists() else "no model_index.json in that folder"
            raise CLIError(missing_model_message(spec, what))
        location = str(path)
    try:
        from diffusers import DiffusionPipeline

        with warnings.catch_warnings():
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


def default_steps(spec: str, steps: int | None) -> int:
    """``--steps``, validated; default 4 for the tiny pipelines and 30 for real models."""
    if steps is not None:
        if steps < 1:
            raise CLIError(f"--steps must be >= 1, got {steps}")
        return steps
    return TINY_STEPS if spec in _tiny_pipelines() else REAL_STEPS


def _config_denoiser(location: str):
    """Denoiser on the meta device and VAE factor from a pipeline's configs only (no weights)."""
    import diffusers
    from diffusers import DiffusionPipeline

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
    factor = 8
    for component in ("vae", "vqvae"):
        entry = index.get(component)
        if isinstance(entry, list | tuple) and len(entry) == 2:
            vae_config = getattr(diffusers, entry[1]).load_config(location, subfolder=component)
            factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
            break
    return denoiser.eval(), factor


def load_architecture(spec: str):
    """``(model, vae_scale_factor)`` for the layer table: no weights are loaded.

    Shipped architecture names are built on the meta device from their configs; tiny pipelines
    are built as they are; anything else is read from its configs (local folder or HF id).
    """
    from . import configs

    if spec in configs.ARCHITECTURES:
        return configs.build_denoiser(spec, device="meta"), configs.vae_scale_factor(spec)
    tiny = _tiny_pipelines()
    if spec in tiny:
        pipe = tiny[spec]()
        return pipe, pipe.vae_scale_factor
    location = spec
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not (path / "model_index.json").is_file():
            what = "no such folder" if not path.exists() else "no model_index.json in that folder"
            raise CLIError(missing_model_message(spec, what))
        location = str(path)
    try:
        return _config_denoiser(location)
    except CLIError:
        raise
    except Exception as error:  # any load failure: say what failed and how to provide the model
        raise CLIError(missing_model_message(spec, _reason(error))) from None


# ---------------------------------------------------------------------------------------------
# Sizes


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def sizes_around(train: tuple[int, int], multiple: int = 64) -> list[tuple[int, int]]:
    """Half, training and 1.5x training size, rounded to ``multiple`` pixels (at least one)."""
    height, width = train
    return [
        (_round_to(height / 2, multiple), _round_to(width / 2, multiple)),
        (height, width),
        (_round_to(height * 1.5, multiple), _round_to(width * 1.5, multiple)),
    ]


def sizes_for_entropy(train: tuple[int, int], multiple: int = 32) -> list[tuple[int, int]]:
    """Five sizes from half to 1.5x the training size (the spread of the paper's Fig. 5)."""
    height, width = train
    return sorted(
        {
            (_round_to(height * f, multiple), _round_to(width * f, multiple))
            for f in (0.5, 0.75, 1.0, 1.25, 1.5)
        }
    )


def _parse_sizes(values: Sequence[str], option: str) -> list[tuple[int, int]]:
    sizes = []
    for value in values:
        try:
            sizes.append(parse_size(value))
        except ValueError as error:
            raise CLIError(f"{option}: {error}") from None
    return sizes


def _check_multiple(sizes: Sequence[tuple[int, int]], factor: int, option: str) -> None:
    for height, width in sizes:
        if height % factor or width % factor:
            raise CLIError(
                f"{option} {width}x{height}: width and height must be multiples of {factor} "
                "(the VAE's pixels per latent pixel)"
            )


# ---------------------------------------------------------------------------------------------
# Images


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def grid_size(column_widths: Sequence[int], row_heights: Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` of :func:`image_grid` for these column widths and row heights."""
    width = GRID_LABEL_WIDTH + sum(column_widths) + GRID_PAD * (len(column_widths) + 1)
    height = GRID_HEADER_HEIGHT + sum(row_heights) + GRID_PAD * (len(row_heights) + 1)
    return width, height


def image_grid(rows: Sequence[tuple[str, Sequence]], column_labels: Sequence[str]):
    """A labelled grid of PIL images: ``rows`` is ``[(row label, [image per column]), ...]``.

    Each image keeps its own size (so sizes compare at a glance), centred in its cell; a column
    is as wide as its widest image and a row as tall as its tallest.
    """
    from PIL import Image, ImageDraw

    if not rows or any(len(images) != len(column_labels) for _, images in rows):
        raise ValueError("every row needs one image per column label")
    column_widths = [max(images[c].width for _, images in rows) for c in range(len(column_labels))]
    row_heights = [max(image.height for image in images) for _, images in rows]
    canvas = Image.new("RGB", grid_size(column_widths, row_heights), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    x = GRID_LABEL_WIDTH + GRID_PAD
    for label, width in zip(column_labels, column_widths, strict=True):
        draw.text(
            (x + width / 2, GRID_HEADER_HEIGHT / 2 + 2), label, fill="black", font=font, anchor="mm"
        )
        x += width + GRID_PAD
    y = GRID_HEADER_HEIGHT + GRID_PAD
    for (label, images), height in zip(rows, row_heights, strict=True):
        draw.text((GRID_PAD, y + height / 2), label, fill="black", font=font, anchor="lm")
        x = GRID_LABEL_WIDTH + GRID_PAD
        for image, width in zip(images, column_widths, strict=True):
            canvas.paste(image, (x + (width - image.width) // 2, y + (height - image.height) // 2))
            x += width + GRID_PAD
        y += height + GRID_PAD
    return canvas


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "image"


def _generate(pipe, prompt: str, size: tuple[int, int], steps: int, seed: int, guidance):
    kwargs = {} if guidance is None else {"guidance_scale": guidance}
    with torch.no_grad():
        return pipe(
            prompt,
            height=size[0],
            width=size[1],
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="pil",
            **kwargs,
        ).images[0]


# ---------------------------------------------------------------------------------------------
# Tables


def layer_rows(infos) -> list[dict]:
    """:class:`~entropy_attn.LayerInfo` list -> dicts with :data:`LAYER_COLUMNS` keys."""
    return [
        {
            "name": info.name,
            "kind": info.kind,
            "heads": info.heads,
            "head_dim": info.head_dim,
            "N": info.n_tokens,
            "T": info.train_tokens,
            "lambda": info.scale,
            "changed": info.changed,
        }
        for info in infos
    ]


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str], fmt: str) -> str:
    """Rows as ``text`` (aligned columns), ``markdown`` or ``csv`` (full float precision)."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {c: repr(row[c]) if isinstance(row[c], float) else row[c] for c in columns}
            )
        return buffer.getvalue()
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    if fmt == "markdown":
        numeric = [all(_is_number(r[c]) for r in rows) for c in columns]
        lines = ["| " + " | ".join(columns) + " |"]
        lines.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines) + "\n"
    if fmt == "text":
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += [
            "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
            for row in cells
        ]
        return "\n".join(lines) + "\n"
    raise ValueError(f"format must be text, markdown or csv, got {fmt!r}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows({c: row[c] for c in columns} for row in rows)


def _size_table(pipe, sizes: Sequence[tuple[int, int]]) -> str:
    """One row per attention layer; N and lambda for each size (the demo's layer table)."""
    tables = [layer_table(pipe, size) for size in sizes]
    columns = ["name", "kind", "heads", "head_dim", "T"]
    for size in sizes:
        columns += [f"N@{format_size(size)}", f"lambda@{format_size(size)}"]
    rows = []
    for infos in zip(*tables, strict=True):
        first = infos[0]
        row = {
            "name": first.name,
            "kind": first.kind,
            "heads": first.heads,
            "head_dim": first.head_dim,
            "T": first.train_tokens,
        }
        for size, info in zip(sizes, infos, strict=True):
            row[f"N@{format_size(size)}"] = info.n_tokens
            row[f"lambda@{format_size(size)}"] = info.scale
        rows.append(row)
    return format_table(rows, columns, "text")


# ---------------------------------------------------------------------------------------------
# Commands


def _mkdir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CLIError(f"--out {path!r} cannot be created: {error}") from None
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    """``entropy-attn demo``: stock vs entropy-attn at half, the training and 1.5x size."""
    spec = args.model or "tiny-sd"
    device = resolve_device(args.device)
    dtype = model_dtype(spec, args.dtype, device)
    steps = default_steps(spec, args.steps)
    out = _mkdir(args.out)
    pipe = load_pipeline(spec, device=device, dtype=dtype)
    train = analysis.training_size(pipe)
    sizes = sizes_around(train)
    print(
        f"model {spec}: training size {format_size(train)}; sizes "
        f"{', '.join(format_size(s) for s in sizes)}; {steps} steps, seed {args.seed}, "
        f"{device} {str(dtype).removeprefix('torch.')}"
    )
    print(f'prompt: "{args.prompt}"\n')
    print("Attention layers (N: key tokens now, T: at the training size, lambda: softmax scale):")
    print(_size_table(pipe, sizes))
    images: dict[str, list] = {method: [] for method in METHODS}
    series: dict[str, list] = {}
    timings = []
    csv_rows = []
    for size in sizes:
        for method in METHODS:
            with analysis.recording(pipe, size, method=method) as rec:
                start = time.perf_counter()
                image = _generate(pipe, args.prompt, size, steps, args.seed, args.guidance_scale)
                seconds = time.perf_counter() - start
                rows = rec.layers()
            image.save(out / f"{method}-{format_size(size)}.png")
            images[method].append(image)
            series[f"{format_size(size)} {method}"] = rows
            csv_rows += [row.as_dict() for row in rows]
            timings.append(
                {
                    "size": format_size(size),
                    "method": method,
                    "seconds": seconds,
                    "mean self-attn entropy": analysis.mean_self_entropy(rows),
                }
            )
    grid = image_grid(
        [(method, images[method]) for method in METHODS], [format_size(s) for s in sizes]
    )
    grid.save(out / "grid.png", optimize=True)
    analysis.plot_layer_entropy(
        series,
        out / "entropy.png",
        title=f"{spec}: per-layer self-attention entropy, stock vs entropy-attn",
    )
    _write_csv(out / "entropy.csv", csv_rows, _ENTROPY_COLUMNS)
    print("Generation (seconds include entropy recording) and mean self-attention entropy:")
    print(format_table(timings, list(timings[0]), "text"))
    print(f"wrote {out / 'grid.png'}, {out / 'entropy.png'}, {out / 'entropy.csv'} and the images")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``entropy-attn generate``: one image with entropy-attn (and stock with --compare)."""
    device = resolve_device(args.device)
    spec = args.model
    dtype = model_dtype(spec, args.dtype, device)
    steps = default_steps(spec, args.steps)
    size = _parse_sizes([args.size], "--size")[0]
    out = _mkdir(args.out)
    pipe = load_pipeline(spec, device=device, dtype=dtype)
    _check_multiple([size], int(getattr(pipe, "vae_scale_factor", 8)), "--size")
    methods = METHODS if args.compare else ("entropy-attn",)
    stem = f"{_slug(args.prompt)}-{format_size(size)}-seed{args.seed}"
    images = []
    for method in methods:
        start = time.perf_counter()
        if method == "entropy-attn":
            with enabled(pipe):
                image = _generate(pipe, args.prompt, size, steps, args.seed, args.guidance_scale)
        else:
            image = _generate(pipe, args.prompt, size, steps, args.seed, args.guidance_scale)
        seconds = time.perf_counter() - start
        path = out / f"{stem}-{method}.png"
        image.save(path)
        images.append(image)
        print(f"{method}: {path} ({seconds:.2f} s, {steps} steps)")
    if args.compare:
        path = out / f"{stem}-compare.png"
        image_grid(
            [(m, [im]) for m, im in zip(methods, images, strict=True)], [format_size(size)]
        ).save(path)
        print(f"side by side: {path}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    """``entropy-attn layers``: the per-layer N, T and lambda table, without running anything."""
    model, factor = load_architecture(args.model)
    size = _parse_sizes([args.size], "--size")[0]
    _check_multiple([size], factor, "--size")
    options = {"layers": args.layers, "vae_scale_factor": factor}
    if args.train_size:
        options["train_size"] = _parse_sizes([args.train_size], "--train-size")[0]
    try:
        infos = layer_table(model, size, **options)
    except NotImplementedError as error:
        raise CLIError(f"--model {args.model!r}: {error}") from None
    text = format_table(layer_rows(infos), LAYER_COLUMNS, args.format)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


_ENTROPY_COLUMNS = (
    "method",
    "height",
    "width",
    "layer",
    "kind",
    "heads",
    "head_dim",
    "query_tokens",
    "n_tokens",
    "ln_n",
    "train_tokens",
    "scale",
    "entropy",
    "calls",
)
_FIT_COLUMNS = ("method", "train_tokens", "points", "slope", "intercept", "rms")


def cmd_entropy(args: argparse.Namespace) -> int:
    """``entropy-attn entropy``: paper Figs. 5-6 from recorded entropy, plus CSV files."""
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    spec = args.model
    device = resolve_device(args.device)
    out = _mkdir(args.out)
    prompts = evaluation.read_prompts(args.prompts) if args.prompts else None
    if args.random_weights:
        from . import configs

        if spec not in configs.ARCHITECTURES:
            raise CLIError(
                f"--random-weights needs a shipped architecture name "
                f"({', '.join(sorted(configs.ARCHITECTURES))}), got --model {spec!r}"
            )
        if prompts is not None:
            raise CLIError("--prompts needs a pipeline; --random-weights runs the bare UNet")
        dtype = resolve_dtype(args.dtype, device)
        # float32 is what the configs build; passing it would only cast (and warn).
        model = configs.build_denoiser(
            spec, device=device, dtype=None if dtype == torch.float32 else dtype
        )
        factor = configs.vae_scale_factor(spec)
        steps = args.steps or 1
    else:
        dtype = model_dtype(spec, args.dtype, device)
        model = load_pipeline(spec, device=device, dtype=dtype)
        factor = int(getattr(model, "vae_scale_factor", 8))
        steps = args.steps or (2 if spec in _tiny_pipelines() else 10)
        prompts = prompts or [DEFAULT_PROMPT]
    train = analysis.training_size(model, factor)
    sizes = (
        _parse_sizes(args.sizes, "--sizes") if args.sizes else sizes_for_entropy(train, factor * 4)
    )
    _check_multiple(sizes, factor, "--sizes")
    print(
        f"model {spec}{' (random weights, bare UNet)' if args.random_weights else ''}: "
        f"training size {format_size(train)}; sizes {', '.join(format_size(s) for s in sizes)}; "
        f"{steps} steps x {len(prompts or [None])} prompt(s), seed {args.seed}"
    )
    rows: list[analysis.LayerEntropy] = []
    per_size: dict[tuple[int, int], dict[str, list]] = {}
    start = time.perf_counter()
    for size in sizes:
        per_size[size] = analysis.compare_layer_entropy(
            model,
            size,
            steps=steps,
            seed=args.seed,
            guidance_scale=args.guidance_scale,
            vae_scale_factor=factor,
            **({"prompts": prompts} if prompts is not None else {}),
        )
        for method in METHODS:
            rows += per_size[size][method]
    seconds = time.perf_counter() - start
    _write_csv(out / "entropy.csv", [r.as_dict() for r in rows], _ENTROPY_COLUMNS)
    fits = analysis.fit_levels(rows)
    fit_rows = [
        {
            "method": f.method,
            "train_tokens": f.train_tokens,
            "points": len(f.n_values),
            "slope": f.fit.slope,
            "intercept": f.fit.intercept,
            "rms": f.fit.rms,
        }
        for f in fits
    ]
    _write_csv(out / "fits.csv", fit_rows, _FIT_COLUMNS)
    summary = [
        {
            "size": format_size(size),
            "stock": analysis.mean_self_entropy(per_size[size]["stock"]),
            "entropy-attn": analysis.mean_self_entropy(per_size[size]["entropy-attn"]),
        }
        for size in sizes
    ]
    for row in summary:
        row["difference"] = row["entropy-attn"] - row["stock"]
    print("\nMean self-attention entropy (nats) per size:")
    print(format_table(summary, list(summary[0]), "text"))
    print("Least-squares fit of level-mean entropy vs ln N (paper Fig. 5), per UNet level T:")
    print(format_table(fit_rows, _FIT_COLUMNS, "text") if fit_rows else "(needs >= 2 sizes)\n")
    written = [out / "entropy.csv", out / "fits.csv"]
    if fits:
        written.append(
            analysis.plot_entropy_vs_log_n(
                fits, out / "fig5_entropy_vs_log_n.png", title=f"{spec}: entropy vs ln N"
            )
        )
    small, large = min(sizes, key=lambda s: s[0] * s[1]), max(sizes, key=lambda s: s[0] * s[1])
    series = {
        f"{format_size(size)} {method}": per_size[size][method]
        for size in dict.fromkeys([small, large])
        for method in METHODS
    }
    written.append(
        analysis.plot_layer_entropy(
            series,
            out / "fig6_layer_entropy.png",
            title=f"{spec}: per-layer self-attention entropy",
        )
    )
    print(f"{seconds:.1f} s; wrote {', '.join(str(p) for p in written)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``entropy-attn eval``: Tables 1-2 protocol, resumable and shardable with accelerate."""
    if args.fid_size < 16:
        raise CLIError(f"--fid-size must be >= 16 pixels, got {args.fid_size}")
    on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    state = evaluation.process_state(cpu=on_cpu)
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    is_main = state.is_main_process if state else True
    # Under accelerate each process has its device; a single process honours --device.
    device = state.device if state is not None and world > 1 else resolve_device(args.device)
    metrics = list(dict.fromkeys(args.metrics))
    evaluation.check_metrics(
        metrics,
        fid_features=args.fid_features,
        inception_weights=args.inception_weights,
        clip_model=args.clip_model,
    )
    prompts = evaluation.read_prompts(args.prompts, args.n)
    references = []
    if "fid" in metrics:
        if not args.reference_images:
            raise CLIError("--metrics fid needs --reference-images DIR")
        references = evaluation.list_images(args.reference_images)
    sizes = _parse_sizes(args.sizes, "--sizes")
    spec = args.model
    dtype = model_dtype(spec, args.dtype, device)
    steps = default_steps(spec, args.steps)
    out = _mkdir(args.out)
    evaluation.check_run_settings(
        out,
        {
            "model": spec,
            "steps": steps,
            "seed": args.seed,
            "guidance_scale": args.guidance_scale,
            "dtype": str(dtype).removeprefix("torch."),
            "prompts": prompts,
        },
        write=is_main,
    )
    tag = f"[process {rank}/{world}] " if world > 1 else ""
    mine = evaluation.shard(len(prompts), rank, world)
    pending = sum(
        not evaluation.image_path(out, method, size, i).is_file()
        for size in sizes
        for method in METHODS
        for i in mine
    )
    pipe = None
    if pending:  # a finished run resumes without loading the model
        pipe = load_pipeline(spec, device=device, dtype=dtype)
        _check_multiple(sizes, int(getattr(pipe, "vae_scale_factor", 8)), "--sizes")
    print(
        f"{tag}{len(prompts)} prompts x {len(sizes)} sizes x {len(METHODS)} methods; this "
        f"process: {len(mine)} prompts, {pending} images to generate"
    )
    report = evaluation.generate_images(
        pipe,
        prompts,
        sizes,
        out,
        steps=steps,
        seed=args.seed,
        guidance_scale=args.guidance_scale,
        batch_size=args.batch_size,
        process_index=rank,
        num_processes=world,
        progress=not args.no_progress,
    )
    print(
        f"{tag}generated {report.generated} new images in {report.seconds:.1f} s; "
        f"{report.skipped} already on disk"
    )
    if state is not None:
        state.wait_for_everyone()
    if not is_main:
        return 0
    del pipe
    rows = evaluation.compute_metrics(
        prompts,
        sizes,
        out,
        metrics=metrics,
        reference_images=references,
        fid_features=args.fid_features,
        inception_weights=args.inception_weights,
        fid_size=args.fid_size,
        clip_model=args.clip_model,
        device=device,
        progress=not args.no_progress,
    )
    description = (
        f"Model `{spec}`, {steps} steps, seeds {args.seed}..{args.seed + len(prompts) - 1}, "
        f"{len(prompts)} prompts from `{args.prompts}`"
        + (
            f", FID against {len(references)} reference images at {args.fid_size}px"
            if references
            else ""
        )
        + "."
    )
    csv_path, md_path = evaluation.write_results(rows, out, description=description)
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {csv_path} and {md_path}")
    return 0


def benchmarks_runner() -> Path:
    """``benchmarks/run.py`` of the source checkout this package is imported from."""
    return Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def cmd_bench(args: argparse.Namespace) -> int:
    """``entropy-attn bench``: run ``benchmarks/run.py`` with the given arguments."""
    runner = benchmarks_runner()
    if not runner.is_file():
        raise CLIError(
            f"entropy-attn bench runs the benchmark suite in the repository's benchmarks/ folder "
            f"({runner} is not there: an installed package does not include it). Clone the "
            'repository, install it with `pip install -e ".[dev]"` and run `entropy-attn bench` '
            "(or `python benchmarks/run.py`) from the clone."
        )
    forwarded = list(args.bench_args)
    if forwarded[:1] == ["--"]:
        forwarded = forwarded[1:]
    command = [sys.executable, str(runner), *forwarded]
    print("running: " + " ".join(command), flush=True)
    return subprocess.call(command, cwd=runner.parent.parent)


# ---------------------------------------------------------------------------------------------
# Parser


def _model_help(extra: str = "") -> str:
    return (
        "tiny-sd or tiny-ldm (built in, random weights), sd21-base / sd15 / sdxl-base / ldm-256 "
        "(their Hugging Face ids), a Hugging Face id, or a local pipeline folder" + extra
    )


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float16", "bfloat16", "float32"),
        help="weights dtype for real models (default: float16 on CUDA, float32 on CPU)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance (default: pipeline's)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``entropy-attn`` and its subcommands."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="entropy-attn",
        description=(
            "Training-free variable-size generation for diffusion models (Jin et al., NeurIPS "
            "2023): the self-attention scale sqrt(log_T(N)/d). Commands compare stock and "
            "entropy-attn images, tabulate per-layer N, T and lambda, reproduce the paper's "
            "entropy figures and FID/CLIP tables, and run the benchmarks."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="stock vs entropy-attn at a smaller, the training and a larger size",
        description=(
            "Generate one prompt at half, the training and 1.5x the training size, stock and "
            "with entropy-attn (same seed); write a labelled grid (grid.png), a per-layer "
            "entropy plot (entropy.png, entropy.csv) and the images; print the layer table and "
            "timings. Without --model it runs the built-in tiny-sd pipeline (random weights: "
            "the images are noise-like, the mechanics are real)."
        ),
    )
    demo.add_argument("--model", default=None, help=_model_help(" (default: tiny-sd)"))
    demo.add_argument("--out", default="entropy-attn-demo", help="output folder")
    demo.add_argument("--steps", type=int, default=None, help="denoising steps (tiny 4, real 30)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--prompt", default=DEFAULT_PROMPT)
    _add_runtime(demo)
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser(
        "generate",
        help="one image at any size, optionally next to stock",
        description="Generate one image with entropy-attn at --size (with --compare also stock).",
    )
    gen.add_argument("--model", required=True, help=_model_help())
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--size", required=True, help="S or WxH in pixels, e.g. 768 or 768x512")
    gen.add_argument("--compare", action="store_true", help="also stock, plus a side-by-side PNG")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=None, help="denoising steps (tiny 4, real 30)")
    gen.add_argument("--out", default="entropy-attn-out", help="output folder")
    _add_runtime(gen)
    gen.set_defaults(func=cmd_generate)

    layers = sub.add_parser(
        "layers",
        help="per-layer N, T and lambda at a size, without running the model",
        description=(
            "The attention layers at an image size: kind, heads, head dim, N (key tokens now), "
            "T (key tokens at the training size), lambda (softmax scale) and whether entropy-attn "
            "changes it. Nothing runs and no weights are loaded (shipped names are built on the "
            "meta device; a pipeline folder or id is read from its config files)."
        ),
    )
    layers.add_argument(
        "--model",
        required=True,
        help="sd21-base, sd15, sdxl-base, ldm-256 (shipped configs), tiny-sd, tiny-ldm, or a "
        "pipeline folder / Hugging Face id (configs only)",
    )
    layers.add_argument("--size", required=True, help="S or WxH in pixels")
    layers.add_argument("--format", default="text", choices=("text", "markdown", "csv"))
    layers.add_argument(
        "--layers",
        default="self",
        choices=("self", "all"),
        help="which layers entropy-attn rescales (default: self, as the paper)",
    )
    layers.add_argument("--train-size", default=None, help="override the training size (S or WxH)")
    layers.add_argument("--out", default=None, help="write to this file instead of stdout")
    layers.set_defaults(func=cmd_layers)

    ent = sub.add_parser(
        "entropy",
        help="paper Figs. 5-6: attention entropy vs ln N, per layer, stock vs entropy-attn",
        description=(
            "Record mean self-attention entropy per layer at each size, stock and entropy-attn. "
            "Writes entropy.csv (one row per method, size and layer), fits.csv and "
            "fig5_entropy_vs_log_n.png (level-mean entropy vs ln N with least-squares lines and "
            "slopes, paper Fig. 5) and fig6_layer_entropy.png (per-layer entropy at the smallest "
            "and largest size, paper Fig. 6)."
        ),
    )
    ent.add_argument("--model", required=True, help=_model_help())
    ent.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        help="sizes (S or WxH), e.g. 224 384 448 512 768 (default: 0.5x..1.5x train)",
    )
    ent.add_argument("--prompts", default=None, help="text file, one prompt per line")
    ent.add_argument("--out", default="entropy-attn-entropy", help="output folder")
    ent.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps per prompt (tiny 2, real 10; random weights 1)",
    )
    ent.add_argument("--seed", type=int, default=0)
    ent.add_argument(
        "--random-weights",
        action="store_true",
        help="shipped architecture with random weights, bare UNet on Gaussian inputs",
    )
    _add_runtime(ent)
    ent.set_defaults(func=cmd_entropy)

    ev = sub.add_parser(
        "eval",
        help="paper Tables 1-2: FID and CLIP score per size, stock vs entropy-attn",
        description=(
            "Generate one image per prompt at each size, stock and entropy-attn (seed + prompt "
            "index, same noise for both), saved as they are made (a rerun resumes), then compute "
            "FID against --reference-images and CLIP score, and write results.csv and "
            "results.md. Under `accelerate launch` each process takes a shard of the prompts."
        ),
    )
    ev.add_argument("--model", required=True, help=_model_help())
    ev.add_argument("--prompts", required=True, help="text file, one prompt per line")
    ev.add_argument("--reference-images", default=None, help="folder of real images (for FID)")
    ev.add_argument("--sizes", nargs="+", required=True, help="sizes (S or WxH)")
    ev.add_argument(
        "--metrics",
        nargs="*",
        default=["fid", "clip"],
        choices=evaluation.METRICS,
        help="metrics to compute (default: fid clip; none: only generate)",
    )
    ev.add_argument("--n", type=int, default=None, help="use the first N prompts")
    ev.add_argument("--out", default="entropy-attn-eval", help="output folder")
    ev.add_argument("--steps", type=int, default=None, help="denoising steps (tiny 4, real 30)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=1, help="prompts per pipeline call")
    ev.add_argument(
        "--fid-features",
        default=None,
        help="feature extractor file (torch.export .pt2 or TorchScript) instead of InceptionV3",
    )
    ev.add_argument(
        "--inception-weights",
        default=None,
        help="InceptionV3 weights file (default: the torch hub cache)",
    )
    ev.add_argument("--fid-size", type=int, default=299, help="images are resized to this square")
    ev.add_argument(
        "--clip-model",
        default=evaluation.DEFAULT_CLIP_MODEL,
        help="CLIP model folder or Hugging Face id in the cache",
    )
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_runtime(ev)
    ev.set_defaults(func=cmd_eval)

    bench = sub.add_parser(
        "bench",
        help="run the benchmark suite (benchmarks/run.py of a source checkout)",
        description=(
            "Runs `python benchmarks/run.py ARGS` from the repository this package is installed "
            "from; every argument after `bench` is passed on (e.g. `entropy-attn bench --cpu`; "
            "`entropy-attn bench -- --help` shows run.py's own options)."
        ),
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for run.py")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``entropy-attn``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"] and argv[1:2] not in (["-h"], ["--help"]):
        # run.py's options are its own: pass everything after `bench` through untouched.
        args = argparse.Namespace(command="bench", func=cmd_bench, bench_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as error:
        print(f"entropy-attn {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except evaluation.MetricUnavailable as error:
        print(f"entropy-attn {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, NotImplementedError) as error:
        print(f"entropy-attn {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
