"""What machine a benchmark ran on: device name, slug for file names, versions.

Imported by ``benchmarks/conftest.py`` (to store the environment in the result file) and by
``benchmarks/run.py`` (to name the result file). Only the standard library and torch are needed;
every CUDA-only call is guarded, so this runs on machines without a GPU.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys

import torch


def cpu_model() -> str:
    """The CPU model string from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def slugify(text: str) -> str:
    """Lower-case ``text`` and keep ``[a-z0-9]`` runs joined by ``-`` (safe in file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cuda_device_name() -> str | None:
    """Name of CUDA device 0, or ``None`` without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def device_name(cpu_only: bool = False) -> str:
    """Human-readable name of the benchmarked device: the GPU's, or ``cpu (<model>)``."""
    gpu = None if cpu_only else cuda_device_name()
    return gpu if gpu is not None else f"cpu ({cpu_model()})"


def device_slug(cpu_only: bool = False) -> str:
    """File-name slug of the device, e.g. ``nvidia-h100-80gb-hbm3`` or ``cpu-amd-epyc``."""
    gpu = None if cpu_only else cuda_device_name()
    return slugify(gpu) if gpu is not None else "cpu-" + slugify(cpu_model())


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver version reported by ``nvidia-smi``, or ``None`` if it cannot be read."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu_properties() -> dict | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_bytes": int(props.total_memory),
        "multiprocessor_count": int(props.multi_processor_count),
        "device_count": torch.cuda.device_count(),
    }


def _cudnn_version() -> int | None:
    try:
        return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except RuntimeError:
        return None


def collect_environment(devices_used: list[str] | None = None) -> dict:
    """Everything a reader needs to know where a result file came from.

    Args:
        devices_used: device types of the benchmarks in the file (``"cuda"``, ``"cpu"``). The
            file's device is the GPU when any benchmark ran on CUDA, else the CPU.
    """
    used = sorted(set(devices_used or []))
    cpu_only = "cuda" not in used
    return {
        "device_name": device_name(cpu_only=cpu_only),
        "device_slug": device_slug(cpu_only=cpu_only),
        "devices_used": used,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "gpu": _gpu_properties(),
        "nvidia_driver": nvidia_driver_version(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": _cudnn_version(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": _version("triton"),
            "diffusers": _version("diffusers"),
            "transformers": _version("transformers"),
            "entropy_attn": _version("entropy-attn"),
            "pytest_benchmark": _version("pytest-benchmark"),
            "numpy": _version("numpy"),
        },
        "platform": platform.platform(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "date": _dt.date.today().isoformat(),
        "command": " ".join(sys.argv),
    }


__all__ = [
    "collect_environment",
    "cpu_model",
    "cuda_device_name",
    "device_name",
    "device_slug",
    "nvidia_driver_version",
    "slugify",
]
