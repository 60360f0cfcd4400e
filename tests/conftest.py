"""Test setup: without CUDA, Triton kernels run through the CPU interpreter.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is defined, i.e. before
``entropy_attn.kernels`` is first imported; conftest runs before the test modules are imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(20230614)
