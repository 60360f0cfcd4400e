"""What every command shares: the error type, start-up checks (optional libraries, sizes, memory),
devices and dtypes, output folders, generation with a progress bar."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .._extras import missing, needs_line
from .._quiet import quiet_library_logs
from ..science.evaluation import format_size, parse_size

EXIT_USAGE = 2
DEFAULT_PROMPT = "a photo of a cat sitting on a red car"
# What the commands import (entropy_attn._extras knows the extra that installs each).
DIFFUSERS_MODULES = ("diffusers", "transformers")
PLOT_MODULES = ("matplotlib", "PIL")
# Peak-memory floor: two live activations of the VAE decoder's last (full-resolution) level.
LIVE_TENSORS = 2


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


def require(modules: Sequence[str] = DIFFUSERS_MODULES) -> None:
    """Fail with the install line if an optional library the command imports is missing."""
    absent = missing(tuple(modules))
    if absent:
        raise CLIError(needs_line(absent))


# ---------------------------------------------------------------------------------------------
# Devices and dtypes


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


def check_steps(steps: int | None) -> int | None:
    """``--steps``: ``None`` (the model's default) or a positive count."""
    if steps is not None and steps < 1:
        raise CLIError(f"--steps must be >= 1, got {steps}")
    return steps


# ---------------------------------------------------------------------------------------------
# Sizes: WIDTHxHEIGHT on the command line, (height, width) in Python


def parse_sizes(values: Sequence[str], option: str) -> list[tuple[int, int]]:
    """``["768x512", "512"]`` -> ``[(512, 768), (512, 512)]``: ``(height, width)`` pixels."""
    sizes = []
    for value in values:
        try:
            sizes.append(parse_size(value))
        except ValueError as error:
            raise CLIError(f"{option}: {error}") from None
    return sizes


def check_multiple(sizes: Sequence[tuple[int, int]], factor: int | None, option: str) -> None:
    """Width and height must be multiples of the VAE factor (``None``: not known yet)."""
    if factor is None:
        return
    for height, width in sizes:
        if height % factor or width % factor:
            raise CLIError(
                f"{option} {width}x{height}: width and height must be multiples of {factor} "
                "(the VAE's pixels per latent pixel)"
            )


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


# ---------------------------------------------------------------------------------------------
# Memory: refuse a size that cannot fit before spending minutes on it


def activation_floor_bytes(size: tuple[int, int], vae_channels: int, dtype: torch.dtype) -> int:
    """A lower bound on a generation's peak memory at ``size`` (pixels, ``(height, width)``).

    The VAE decoder's last level runs at full pixel resolution with ``vae_channels`` channels
    (``block_out_channels[0]``); a convolution there holds its input and its output at once.
    Attention is not the largest tensor: entropy-attn's kernel, SDPA's flash/efficient paths and
    the chunked entropy path never hold the ``N x N`` logits.
    """
    height, width = size
    return LIVE_TENSORS * height * width * vae_channels * dtype.itemsize


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: free device memory; CPU: MemAvailable), or ``None``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _gb(count: int) -> str:
    return f"{count / 1e9:.1f} GB"


def check_memory(
    sizes: Sequence[tuple[int, int]],
    vae_channels: int | None,
    *,
    dtype: torch.dtype,
    device: torch.device,
    force: bool,
    option: str,
) -> None:
    """Refuse (unless ``force``) a size whose activation floor exceeds the free memory."""
    if force or vae_channels is None or not sizes:
        return
    free = available_memory(device)
    if free is None:
        return
    largest = max(sizes, key=lambda s: s[0] * s[1])
    need = activation_floor_bytes(largest, vae_channels, dtype)
    if need > free:
        raise CLIError(
            f"{option} {format_size(largest)}: the VAE decoder alone needs at least {_gb(need)} "
            f"there ({LIVE_TENSORS} activations of {vae_channels} channels x "
            f"{format_size(largest)} pixels in {str(dtype).removeprefix('torch.')}), more than "
            f"the {_gb(free)} free on {device}. Use a smaller size, or pass --force to try anyway."
        )


# ---------------------------------------------------------------------------------------------
# Output folders and generation


def check_out(path: str | Path) -> Path:
    """``--out`` can be created or written (checked early; :func:`make_out` creates it later)."""
    out = Path(path).expanduser()
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a folder" if not existing.is_dir() else "is not writable"
        raise CLIError(f"--out {str(path)!r} cannot be created: {str(existing)!r} {what}")
    return out


def make_out(path: str | Path) -> Path:
    """Create ``--out`` (and its parents)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CLIError(f"--out {str(path)!r} cannot be created: {error}") from None
    return out


def announce_out(out: Path) -> None:
    """Say where the command will write, before it starts."""
    print(f"writing to {out.resolve()}/", flush=True)


def generate_image(
    pipe, prompt: str, size: tuple[int, int], steps: int, seed: int, guidance, *, label: str
):
    """One image (PIL) with the pipeline's own progress bar, labelled ``label``."""
    kwargs = {} if guidance is None else {"guidance_scale": guidance}
    show_progress(pipe, label)
    with torch.no_grad(), quiet_library_logs():
        return pipe(
            prompt,
            height=size[0],
            width=size[1],
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="pil",
            **kwargs,
        ).images[0]


def show_progress(pipe, label: str, *, leave: bool = True) -> None:
    """Turn the pipeline's denoising progress bar on, labelled ``label`` (one line per call)."""
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=False, desc=label, leave=leave)


def progress(iterable, *, desc: str, total: int | None = None):
    """``iterable`` with a tqdm bar on stderr (tqdm comes with diffusers and transformers)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--guidance-scale`` and ``--force``."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float16", "bfloat16", "float32"),
        help="weights dtype for real models (default: float16 on CUDA, float32 on CPU; "
        "float32 for built-in models)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance (default: pipeline's)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="run even if the size looks too large for the device's free memory",
    )


@contextlib.contextmanager
def one_cpu_thread(device):
    """One PyTorch CPU thread while a built-in model samples, unless OMP_NUM_THREADS is set.

    The built-in models (digits, tiny pipelines) are so small that extra threads buy nothing,
    and when another process holds a core, threads waiting for each other made the demo 5-8x
    slower (measured on 2 cores). The caller's thread count comes back afterwards.
    """
    import torch

    if torch.device(device).type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class denoiser_progress:
    """A progress bar over the denoiser's forward calls (one per sampling step and batch)."""

    def __init__(self, pipe, *, total: int, desc: str) -> None:
        self.denoiser = pipe.denoiser
        self.total = total
        self.desc = desc

    def __enter__(self):
        from tqdm.auto import tqdm  # comes with diffusers

        self.bar = tqdm(desc=self.desc, total=self.total)
        self.handle = self.denoiser.register_forward_hook(self._step)
        return self.bar

    def _step(self, *_) -> None:  # returns None: the denoiser's output is left as it is
        self.bar.update(1)

    def __exit__(self, *exc) -> None:
        self.handle.remove()
        self.bar.close()


__all__ = [
    "denoiser_progress",
    "one_cpu_thread",
    "DEFAULT_PROMPT",
    "EXIT_USAGE",
    "CLIError",
    "activation_floor_bytes",
    "add_runtime_options",
    "announce_out",
    "available_memory",
    "check_memory",
    "check_multiple",
    "check_out",
    "check_steps",
    "format_size",
    "generate_image",
    "make_out",
    "parse_sizes",
    "progress",
    "require",
    "resolve_device",
    "resolve_dtype",
    "show_progress",
    "sizes_around",
    "sizes_for_entropy",
]
