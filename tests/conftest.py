"""Test setup: without CUDA, Triton kernels run through the CPU interpreter.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is defined, i.e. before
``entropy_attn.kernels`` is first imported; conftest runs before the test modules are imported.
Under pytest-xdist (``-n auto`` in pyproject's addopts) every worker is a process that imports
this file first, so the same holds there.

Tests marked ``slow`` are deselected by the default run (pyproject's addopts); ``python -m pytest
-m slow`` runs them, and ``.ci/run`` runs both.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# xdist workers share the cores: one torch thread pool per core in every worker would
# oversubscribe them (each worker would start os.cpu_count() threads).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core (xdist's rule) without CUDA; two on a CUDA machine, whose
    tests share one GPU and mostly wait for kernel compiles."""
    return 2 if torch.cuda.is_available() else None


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(20230614)


@pytest.fixture(autouse=True)
def _restore_diffusers_active_backend():
    """``set_attention_backend`` also sets diffusers' process-wide active backend (and
    ``reset_attention_backend`` leaves it): every test gets back the one it started with, so a
    later test's stock reference is not computed on another backend."""
    import sys

    dispatch = sys.modules.get("diffusers.models.attention_dispatch")
    saved = None if dispatch is None else dispatch._AttentionBackendRegistry._active_backend
    yield
    dispatch = sys.modules.get("diffusers.models.attention_dispatch")
    if dispatch is not None:
        if saved is None:  # imported during the test: its import-time default
            saved = dispatch.AttentionBackendName(dispatch.DIFFUSERS_ATTN_BACKEND)
        dispatch._AttentionBackendRegistry._active_backend = saved


# Tiny pipelines built once per session (per xdist worker). Shared: tests that only read them
# (layer tables, training sizes, reference images) use these; a test that enables, casts or
# otherwise changes a pipeline builds its own (``tiny_sd_pipeline()`` takes a fraction of a
# second once diffusers is imported).


@pytest.fixture(scope="session")
def tiny_sd():
    """``entropy_attn.tiny.pipelines.tiny_sd_pipeline()`` (seed 0), shared by the session: do
    not modify."""
    pytest.importorskip("diffusers")
    from entropy_attn.tiny.pipelines import tiny_sd_pipeline

    return tiny_sd_pipeline()


@pytest.fixture(scope="session")
def tiny_ldm():
    """``entropy_attn.tiny.pipelines.tiny_ldm_pipeline()`` (seed 0), shared by the session: do
    not modify."""
    pytest.importorskip("diffusers")
    from entropy_attn.tiny.pipelines import tiny_ldm_pipeline

    return tiny_ldm_pipeline()
