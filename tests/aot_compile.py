"""Compile the attention kernel ahead of time for NVIDIA targets, with no GPU present.

Run as a script (``python tests/aot_compile.py VARIANTS_JSON``) without ``TRITON_INTERPRET``:
Triton lowers the kernel to PTX and assembles it with its bundled ``ptxas`` for sm_80 (A100) and
sm_90 (H100), the same compilation a CUDA launch does. Prints one JSON line per compiled variant.

The kernel is specialised the way a launch on real tensors specialises it: the launcher's own
arguments (strides of the given layout, ``STRIDE_ALIGN`` from ``stride_align``) and Triton's
argument specialisation (an integer equal to 1 becomes a constant, a multiple of 16 is marked
divisible by 16, tensor pointers are 16-byte aligned). Without that, the compiler sees unknown
alignment everywhere and the code it emits (no vector loads, no pipelining) is not what runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
from sass_count import Instruction, dump_sass, loop_counts, parse_sass  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from entropy_attn.kernels import attention_fwd as fwd  # noqa: E402

POINTER = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
TORCH_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
BATCH, SEQ = 2, 4096
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def jit_function():
    fn = fwd._attention_fwd_kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):
        fn = fn.fn
    return fn


def layout_tensor(layout: str, heads: int, head_dim: int, dtype: str) -> torch.Tensor:
    """A ``(batch, heads, seq, head_dim)`` meta tensor in ``layout``: ``"bhld"`` is contiguous,
    ``"blhd"`` is a ``(batch, seq, heads, head_dim)`` tensor seen through ``transpose(1, 2)``,
    what diffusers' attention processors hand over."""
    kwargs = {"device": "meta", "dtype": TORCH_DTYPE[dtype]}
    if layout == "bhld":
        return torch.empty(BATCH, heads, SEQ, head_dim, **kwargs)
    if layout == "blhd":
        return torch.empty(BATCH, SEQ, heads, head_dim, **kwargs).transpose(1, 2)
    raise ValueError(f"layout must be 'bhld' or 'blhd', got {layout!r}")


def launch_arguments(dtype: str, head_dim: int, layout: str, entropy: bool, arch: int) -> dict:
    """The kernel's arguments as ``flash_attention_forward`` passes them (ints and constants)."""
    heads = 5 if head_dim == 64 else 8  # SD-2.1 level 0; SD 1.x / LDM and DiTs
    query = layout_tensor(layout, heads, head_dim, dtype)
    arguments = {}
    for tensor, seq in (("q", "m"), ("k", "n"), ("v", "n"), ("o", "m")):  # one layout for all
        names = [f"stride_{tensor}{dim}" for dim in ("b", "h", seq, "d")]
        arguments.update(zip(names, query.stride(), strict=True))
    arguments.update(
        heads=heads,
        HEAD_DIM=head_dim,
        **fwd.tile_constexprs(head_dim, arch),
        RETURN_ENTROPY=entropy,
        RETURN_LSE=False,
        DOT_PRECISION="ieee" if dtype == "fp32" else "tf32",
        STRIDE_ALIGN=fwd.stride_align(query),
    )
    return arguments


def compile_variant(
    dtype: str, head_dim: int, arch: int, entropy: bool, layout: str, config
) -> dict:
    jit = jit_function()
    arguments = launch_arguments(dtype, head_dim, layout, entropy, arch)
    constexprs = {**{k: v for k, v in arguments.items() if k.isupper()}, **config.kwargs}
    signature, attrs = {}, {}
    divisible = [["tt.divisibility", 16]]
    for index, name in enumerate(jit.arg_names):
        if name in ("Q", "K", "V", "Out", "Ent", "Lse"):
            signature[name] = "*fp32" if name in ("Ent", "Lse") else POINTER[dtype]
            attrs[(index,)] = divisible  # torch allocations are 16-byte aligned
        elif name == "qk_scale_log2":
            signature[name] = "fp32"
        elif name in constexprs:
            signature[name] = "constexpr"
        elif name in arguments and arguments[name] == 1:  # Triton turns an int 1 into a constant
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:  # seq_q, seq_k and the buckets are do_not_specialize: plain i32
            signature[name] = "i32"
            if name in arguments and arguments[name] % 16 == 0:
                attrs[(index,)] = divisible
    source = ASTSource(
        fn=jit,
        signature=signature,
        constexprs={(jit.arg_names.index(k),): v for k, v in constexprs.items()},
        attrs=attrs,
    )
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
    ptx = compiled.asm["ptx"]
    threads = 32 * config.num_warps
    logits = config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] // threads
    return {
        "dtype": dtype,
        "head_dim": head_dim,
        "arch": arch,
        "entropy": entropy,
        "layout": layout,
        "stride_align": arguments["STRIDE_ALIGN"],
        "config": {**config.kwargs, "warps": config.num_warps, "stages": config.num_stages},
        "shared_bytes": compiled.metadata.shared,
        "cubin_bytes": len(compiled.asm["cubin"]),
        "wgmma": "wgmma" in ptx,
        "mma": "mma.sync" in ptx,
        "cp_async": "cp.async" in ptx,  # loads of the next key tiles overlap the math
        "wgmma_serialized": wgmma_serialized(ptx, arch) if "wgmma" in ptx else None,
        **resource_usage(compiled.asm["cubin"]),
        "inner_loop": inner_loop_counts(compiled.asm["cubin"], logits),
    }


def wgmma_serialized(ptx: str, arch: int) -> bool | None:
    """Whether ``ptxas`` serialises the kernel's ``wgmma`` instructions: each one then waits for
    the previous to finish (ptxas's C7514 "Potential Performance Loss" note, which Triton does
    not show). Assembles ``ptx`` again, verbosely, with the ``ptxas`` Triton uses for ``arch``;
    ``None`` if that cannot be run."""
    from triton.backends.nvidia import compiler as nvidia

    try:
        ptxas = nvidia.get_ptxas(arch).path
    except (AttributeError, TypeError, RuntimeError):  # another Triton's layout
        ptxas = str(CUOBJDUMP.with_name("ptxas"))
    if not Path(ptxas).exists():
        return None
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        result = subprocess.run(
            [ptxas, "-v", f"--gpu-name={gpu}", str(source), "-o", str(source.with_suffix(".o"))],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        return None
    return "C7514" in result.stdout + result.stderr


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread and stack bytes (register spills) from ``cuobjdump``, if bundled."""
    if not CUOBJDUMP.exists():
        return {"registers": None, "stack_bytes": None}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run(
            [str(CUOBJDUMP), "--dump-resource-usage", str(path)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", text)
    if found is None:
        return {"registers": None, "stack_bytes": None}
    return {"registers": int(found.group(1)), "stack_bytes": int(found.group(2))}


def sass(cubin: bytes) -> list[Instruction]:
    """Every SASS instruction of ``cubin`` (``cuobjdump``)."""
    return parse_sass(dump_sass(CUOBJDUMP, cubin))


def inner_loop_counts(cubin: bytes, logits_per_thread: int) -> dict | None:
    """The key loop's steady-state counts (``sass_count.loop_counts``), if ``cuobjdump`` is
    bundled."""
    if not CUOBJDUMP.exists():
        return None
    return loop_counts(sass(cubin), logits_per_thread)


def autotune_configs(dtype: str, head_dim: int, seq_k: int, arch: int):
    """The CUDA autotuning configs the pruner keeps for this dtype, head dim, key length and GPU
    (the pruner asks a CUDA tensor for its GPU; here it is told)."""
    fwd._arch = lambda tensor: arch
    kwargs = {
        **fwd.tile_constexprs(head_dim),
        "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32",
    }
    query = torch.empty(0, dtype=TORCH_DTYPE[dtype])
    return fwd._prune_configs(fwd._cuda_configs(), {"seq_k": seq_k, "Q": query}, **kwargs)


def main(argv: list[str]) -> None:
    """``argv[0]``: JSON list of ``[dtype, head_dim, arch, entropy, layout, which]``; ``which`` is
    ``"all"`` (every config the pruner keeps), ``"first"`` (the one used without autotuning) or an
    explicit ``[BLOCK_M, BLOCK_N, warps, stages]``."""
    variants = json.loads(argv[0])
    for dtype, head_dim, arch, entropy, layout, which in variants:
        if isinstance(which, list):
            block_m, block_n, warps, stages = which
            configs = [
                triton.Config(
                    {"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages
                )
            ]
            first = None
        else:
            configs = autotune_configs(dtype, head_dim, SEQ, arch)
            first = configs[0]
            configs = configs if which == "all" else configs[:1]
        for config in configs:
            record = compile_variant(dtype, head_dim, arch, entropy, layout, config)
            record["first"] = config is first
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
