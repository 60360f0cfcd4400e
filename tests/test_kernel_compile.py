"""The kernel compiles for real NVIDIA GPUs, checked here without one.

``tests/aot_compile.py`` runs in a subprocess without ``TRITON_INTERPRET`` and asks Triton to
compile the kernel to a cubin for sm_80 (A100) and sm_90 (H100) with Triton's bundled ``ptxas``:
the same lowering a CUDA launch does. This catches code that the interpreter accepts but the
compiler does not, autotuning configs that overflow shared memory, and a matmul that misses the
tensor cores. Timing still needs a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
pytestmark = pytest.mark.skipif(not PTXAS.exists(), reason="Triton's bundled ptxas is missing")

# Usable shared memory per block: A100 163 KiB, H100 227 KiB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
VARIANTS = [
    # dtype, head dim, sm, entropy, configs ("all" autotuning configs or the "first")
    ("fp16", 64, 90, True, "all"),
    ("fp16", 64, 90, False, "first"),
    ("bf16", 80, 90, True, "first"),
    ("fp16", 160, 80, True, "first"),
    ("fp32", 40, 80, True, "first"),
    ("bf16", 256, 90, True, "first"),
    ("fp32", 256, 90, True, "all"),  # the pruner must leave only configs that fit
]


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("aot_compile.py")
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(VARIANTS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_every_variant_compiles_to_a_cubin(compiled):
    seen = {(r["dtype"], r["head_dim"], r["arch"], r["entropy"]) for r in compiled}
    assert seen == {tuple(v[:4]) for v in VARIANTS}
    assert all(r["cubin_bytes"] > 0 for r in compiled)
    # All configs the autotuner keeps for the main SD shape compile.
    assert sum(r["head_dim"] == 64 and r["entropy"] for r in compiled) >= 5


def test_shared_memory_fits(compiled):
    for r in compiled:
        assert r["shared_bytes"] <= SHARED_LIMIT[r["arch"]], r


def test_half_precision_uses_tensor_cores(compiled):
    for r in compiled:
        if r["dtype"] in ("fp16", "bf16"):
            # Hopper's warpgroup MMA on sm_90, mma.sync on sm_80.
            assert r["wgmma"] if r["arch"] == 90 else r["mma"], r
