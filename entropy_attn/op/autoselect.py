"""``backend="auto"`` on CUDA without entropy: the fused kernel or SDPA, whichever is faster.

The first call of each (GPU, dtype, head dim, layout, query-length bucket, key-length bucket)
times both on the call's own tensors (warm-up first, so Triton's compile and autotuning are not
timed; then interleaved rounds of CUDA events, the median per candidate) and keeps the faster,
as Triton's autotuner keeps the faster tile. The fused kernel must beat SDPA by ``MARGIN`` to be
chosen: on a tie SDPA, the stock code, wins, and timing noise cannot make ``auto`` slower.

Decisions live in memory and in one JSON file per GPU name and library versions (torch, CUDA,
Triton, entropy-attn, the kernel's source) in ``$ENTROPY_ATTN_CACHE_DIR``, else
``$XDG_CACHE_HOME/entropy_attn``, else ``~/.cache/entropy_attn``; a file that does not parse or
names other versions is ignored (and replaced at the next decision). Nothing is timed while a
CUDA graph is being captured: a cached decision is used there, else SDPA (``SAFE_DEFAULT``).
``torch.compile`` never reaches this module while tracing (the op layer puts the choice inside a
custom op, which runs it when the compiled code runs).

``ENTROPY_ATTN_BACKEND`` (``triton`` or ``torch``) overrides the choice for every
``backend="auto"`` call on CUDA; an explicit ``backend=`` overrides everything. The op layer
never asks this module when the entropy is wanted: only the fused kernel gives it in one pass.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ENV_BACKEND = "ENTROPY_ATTN_BACKEND"
ENV_CACHE_DIR = "ENTROPY_ATTN_CACHE_DIR"
FUSED, SDPA = "triton", "torch"
SAFE_DEFAULT = SDPA  # never slower than SDPA, by definition, and capturable
# The fused kernel is kept only when at least this much faster than SDPA.
MARGIN = 0.02
FILE_FORMAT = 1

Timer = Callable[[dict[str, Callable[[], object]]], dict[str, float]]


def warn(message: str) -> None:
    warnings.warn(f"entropy_attn: {message}", UserWarning, stacklevel=4)


def env_override() -> str | None:
    """``ENTROPY_ATTN_BACKEND`` as ``"triton"`` / ``"torch"``, ``None`` when unset or ``auto``."""
    value = os.environ.get(ENV_BACKEND)
    if value is None:  # the common case, kept cheap: this runs on every auto call on CUDA
        return None
    value = value.strip().lower()
    if value in ("", "auto"):
        return None
    if value in (FUSED, SDPA):
        return value
    raise ValueError(f"{ENV_BACKEND} must be 'auto', 'triton' or 'torch', got {value!r}")


def cache_dir() -> Path:
    """The folder of the decision files (see the module docstring)."""
    folder = os.environ.get(ENV_CACHE_DIR)
    if folder:
        return Path(folder)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "entropy_attn"


def layout(tensor: torch.Tensor) -> str:
    """``"bhld"`` (contiguous heads), ``"blhd"`` (a ``(B, L, H, D)`` tensor seen through
    ``transpose(1, 2)``, what diffusers passes) or ``"strided"`` (head dim not unit-stride)."""
    if tensor.stride(-1) != 1:
        return "strided"
    return "blhd" if tensor.stride(1) < tensor.stride(2) else "bhld"


def length_bucket(n: int) -> int:
    """The power of two ``>= n``: one decision per octave of sequence length."""
    return 1 << max(int(n) - 1, 0).bit_length()


def decision_key(query: torch.Tensor, key: torch.Tensor) -> str:
    """The per-GPU part of the key: dtype, head dim, layout, query and key length buckets."""
    dtype = str(query.dtype).removeprefix("torch.")
    return (
        f"{dtype}-d{query.shape[-1]}-{layout(query)}"
        f"-q{length_bucket(query.shape[-2])}-k{length_bucket(key.shape[-2])}"
    )


def library_versions() -> dict[str, str]:
    """What a decision depends on besides the GPU: torch, CUDA, Triton, entropy-attn versions and
    a hash of the kernel's source (a changed kernel is timed again)."""
    versions = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    for name in ("triton", "entropy-attn"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "none"
    try:
        from entropy_attn.kernels import attention_fwd

        source = Path(attention_fwd.__file__).read_bytes()
        versions["kernel"] = hashlib.sha256(source).hexdigest()[:16]
    except (ImportError, OSError):
        versions["kernel"] = "none"
    return versions


def cuda_device_name(tensor: torch.Tensor) -> str:
    return torch.cuda.get_device_name(tensor.device)


def cuda_capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def cuda_event_timer(
    candidates: dict[str, Callable[[], object]],
    warmup: int = 3,
    rounds: int = 5,
    round_s: float = 5e-4,
) -> dict[str, float]:
    """Median seconds per call of each candidate: ``warmup`` calls each (compiles, autotuning),
    then ``rounds`` interleaved rounds, each of enough back-to-back calls to last about
    ``round_s``, timed by CUDA events on the current stream."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()

    def timed(fn, iterations: int) -> float:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iterations):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3 / iterations

    iterations = {
        name: min(max(1, math.ceil(round_s / max(timed(fn, 1), 1e-7))), 64)
        for name, fn in candidates.items()
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            times[name].append(timed(fn, iterations[name]))
    return {name: statistics.median(values) for name, values in times.items()}


class AutoSelector:
    """Times the fused kernel against SDPA once per key and remembers the faster.

    Every dependency on a GPU is injectable, so that the logic runs on the CPU in tests:
    ``timer`` (``{name: fn} -> {name: seconds per call}``), ``device_name`` (tensor -> GPU name),
    ``capturing`` (whether a CUDA graph is being captured), ``versions`` and ``folder``
    (``None``: :func:`cache_dir` at the time of use).
    """

    def __init__(
        self,
        timer: Timer | None = None,
        device_name: Callable[[torch.Tensor], str] | None = None,
        capturing: Callable[[], bool] | None = None,
        versions: Callable[[], dict[str, str]] | None = None,
        folder: Path | None = None,
        margin: float = MARGIN,
    ):
        self.timer = timer or cuda_event_timer
        self.device_name = device_name or cuda_device_name
        self.capturing = capturing or cuda_capturing
        self._versions = versions or library_versions
        self._folder = folder
        self.margin = margin
        self._memory: dict[str, dict[str, dict]] = {}  # GPU name -> key -> decision
        # The same decisions under a key that is cheap to build (no strings), checked first.
        self._fast: dict[tuple, str] = {}
        self._names: dict[object, str] = {}  # torch.device -> GPU name
        self._version_info: dict[str, str] | None = None

    def versions(self) -> dict[str, str]:
        if self._version_info is None:
            self._version_info = dict(self._versions())
        return self._version_info

    def cache_path(self, gpu: str) -> Path:
        """The decision file of ``gpu`` under the current versions."""
        versions = json.dumps(self.versions(), sort_keys=True)
        digest = hashlib.sha256(f"{gpu}\n{versions}".encode()).hexdigest()[:16]
        slug = "".join(c if c.isalnum() else "-" for c in gpu.lower()).strip("-")
        return (self._folder or cache_dir()) / f"auto-{slug}-{digest}.json"

    def _gpu(self, query: torch.Tensor) -> str:
        name = self._names.get(query.device)
        if name is None:
            name = self._names[query.device] = self.device_name(query)
        return name

    def _decisions(self, gpu: str) -> dict[str, dict]:
        decisions = self._memory.get(gpu)
        if decisions is None:
            decisions = self._memory[gpu] = self._read(gpu)
        return decisions

    def _read(self, gpu: str) -> dict[str, dict]:
        """The decisions on disk for ``gpu`` and these versions; ``{}`` when there are none or the
        file is unreadable, malformed or for other versions."""
        path = self.cache_path(gpu)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            warn(f"ignoring the unreadable cache {path}: {error}")
            return {}
        if (
            not isinstance(payload, dict)
            or payload.get("format") != FILE_FORMAT
            or payload.get("gpu") != gpu
            or payload.get("versions") != self.versions()
            or not isinstance(payload.get("decisions"), dict)
        ):
            warn(f"ignoring the cache {path}: not this GPU's or versions'")
            return {}
        return {
            key: value
            for key, value in payload["decisions"].items()
            if isinstance(value, dict) and value.get("backend") in (FUSED, SDPA)
        }

    def _write(self, gpu: str) -> None:
        """Merge this process's decisions for ``gpu`` into its file (atomically replaced)."""
        path = self.cache_path(gpu)
        decisions = {**self._read(gpu), **self._memory[gpu]}
        payload = {
            "format": FILE_FORMAT,
            "gpu": gpu,
            "versions": self.versions(),
            "decisions": decisions,
        }
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
            temporary.replace(path)
        except OSError as error:
            warn(f"cannot write the cache {path}: {error}")

    def lookup(self, query: torch.Tensor, key: torch.Tensor) -> dict | None:
        """The decision already made for this call's key (memory, then disk), else ``None``."""
        return self._decisions(self._gpu(query)).get(decision_key(query, key))

    def choose(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        fused: Callable[[], object],
        sdpa: Callable[[], object],
    ) -> str:
        """``"triton"`` or ``"torch"`` for this call: the cached decision, else (outside CUDA
        graph capture) a timing of ``fused`` against ``sdpa``, else ``SAFE_DEFAULT``."""
        shape, strides = query.shape, query.stride()
        fast = (
            query.get_device(), query.dtype, shape[3], strides[1] < strides[2], strides[3] == 1,
            (shape[2] - 1).bit_length(), (key.shape[2] - 1).bit_length(),
        )  # fmt: skip
        backend = self._fast.get(fast)
        if backend is not None:
            return backend
        gpu = self._gpu(query)
        decisions = self._decisions(gpu)
        entry = decision_key(query, key)
        known = decisions.get(entry)
        if known is None:
            if self.capturing():
                return SAFE_DEFAULT  # not remembered: timed at the next call outside a capture
            known = decisions[entry] = self.decide(fused, sdpa)
            self._write(gpu)
        self._fast[fast] = known["backend"]
        return known["backend"]

    def decide(self, fused: Callable[[], object], sdpa: Callable[[], object]) -> dict:
        """Time both and return the decision record (both times, in seconds per call)."""
        try:
            times = self.timer({FUSED: fused, SDPA: sdpa})
        except Exception as error:  # the fused kernel cannot run this call: SDPA can
            warn(f"the fused kernel failed while timing, using SDPA: {error}")
            return {"backend": SDPA, "fused_s": None, "sdpa_s": None, "error": repr(error)[:300]}
        fused_s, sdpa_s = float(times[FUSED]), float(times[SDPA])
        backend = FUSED if fused_s <= sdpa_s * (1.0 - self.margin) else SDPA
        return {"backend": backend, "fused_s": fused_s, "sdpa_s": sdpa_s}

    def decisions(self) -> dict[str, dict[str, dict]]:
        """Every decision this process knows, per GPU name (a copy)."""
        return {gpu: dict(entries) for gpu, entries in self._memory.items()}

    def forget(self) -> None:
        """Drop the in-memory decisions (the files stay)."""
        self._memory.clear()
        self._fast.clear()


_selector: AutoSelector | None = None


def selector() -> AutoSelector:
    """The process-wide selector that ``backend="auto"`` uses."""
    global _selector
    if _selector is None:
        _selector = AutoSelector()
    return _selector


def set_selector(new: AutoSelector | None) -> AutoSelector | None:
    """Replace the process-wide selector (``None``: a fresh default one at next use); returns
    the previous one, so that a caller can put it back."""
    global _selector
    previous, _selector = _selector, new
    return previous


__all__ = [
    "ENV_BACKEND",
    "ENV_CACHE_DIR",
    "MARGIN",
    "SAFE_DEFAULT",
    "AutoSelector",
    "cache_dir",
    "cuda_event_timer",
    "decision_key",
    "env_override",
    "selector",
    "set_selector",
]
