"""The kernel compiles for real NVIDIA GPUs, checked here without one.

``tests/aot_compile.py`` runs in a subprocess without ``TRITON_INTERPRET`` and asks Triton to
compile the kernel to a cubin for sm_80 (A100) and sm_90 (H100) with Triton's bundled ``ptxas``:
the same lowering a CUDA launch does, specialised on the strides of a real layout. This catches
code that the interpreter accepts but the compiler does not, autotuning configs that overflow
shared memory, a matmul that misses the tensor cores, key/value loads that are not pipelined
(``cp.async``) and head dims whose every config spills registers. Timing still needs a GPU.
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
pytestmark = [
    pytest.mark.skipif(not PTXAS.exists(), reason="Triton's bundled ptxas is missing"),
    pytest.mark.slow,  # compiles every variant with ptxas: minutes of CPU
    pytest.mark.xdist_group("aot-compile"),  # one worker runs the module fixture once
]

# Usable shared memory per block: A100 163 KiB, H100 227 KiB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
VARIANTS = [
    # dtype, head dim, sm, entropy, layout, configs ("all" autotuning configs or the "first").
    # "bhld": contiguous (B, H, L, D); "blhd": the (B, L, H, D) view diffusers' processors pass.
    ("fp16", 64, 90, True, "blhd", "all"),
    ("fp16", 64, 90, False, "bhld", "first"),
    ("fp16", 40, 90, True, "blhd", "all"),
    ("fp16", 80, 80, False, "blhd", "all"),
    ("bf16", 80, 90, True, "blhd", "first"),
    ("fp16", 160, 90, False, "blhd", "all"),
    ("fp16", 160, 80, True, "bhld", "first"),
    ("fp32", 40, 80, True, "blhd", "first"),
    ("bf16", 256, 90, True, "bhld", "first"),
    ("fp32", 256, 90, True, "bhld", "all"),  # the pruner must leave only configs that fit
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


def _variant(record: dict) -> tuple:
    keys = ("dtype", "head_dim", "arch", "entropy", "layout")
    return tuple(record[k] for k in keys)


def test_every_variant_compiles_to_a_cubin(compiled):
    assert {_variant(r) for r in compiled} == {tuple(v[:5]) for v in VARIANTS}
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


def test_stride_hints_reach_the_compiler(compiled):
    """Head dims 40/80/160 in diffusers' layout have head strides of 40/80/160 elements, not
    multiples of 16: only the launcher's STRIDE_ALIGN tells the compiler rows are 16-byte
    aligned."""
    for r in compiled:
        expected = 16 if r["head_dim"] % 16 == 0 else 8
        assert r["stride_align"] == expected, r


def test_key_and_value_loads_are_pipelined(compiled):
    """Every half-precision config with more than one stage copies the next key/value tiles
    asynchronously (cp.async) while it computes on the current ones, in both layouts."""
    half = [r for r in compiled if r["dtype"] in ("fp16", "bf16") and r["config"]["stages"] > 1]
    assert {r["layout"] for r in half} == {"bhld", "blhd"}
    for r in half:
        assert r["cp_async"], r


def test_each_head_dim_has_a_config_without_spills(compiled):
    """Autotuning can pick a config that keeps everything in registers (no stack) for every
    variant whose configs were all compiled."""
    if any(r["stack_bytes"] is None for r in compiled):
        pytest.skip("Triton's bundled cuobjdump is missing: register usage unknown")
    full = {tuple(v[:5]) for v in VARIANTS if v[5] == "all" and v[0] != "fp32"}
    for variant in full:
        stacks = [r["stack_bytes"] for r in compiled if _variant(r) == variant]
        assert len(stacks) > 1 and min(stacks) == 0, (variant, stacks)
