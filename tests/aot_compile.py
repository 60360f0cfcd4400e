"""Compile the attention kernel ahead of time for NVIDIA targets, with no GPU present.

Run as a script (``python tests/aot_compile.py``) without ``TRITON_INTERPRET``: Triton lowers the
kernel to PTX and assembles it with its bundled ``ptxas`` for sm_80 (A100) and sm_90 (H100), the
same compilation a CUDA launch does. Prints one JSON line per compiled variant.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
from entropy_attn.kernels import attention_fwd as fwd  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

POINTER = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
TORCH_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def jit_function():
    fn = fwd._attention_fwd_kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):
        fn = fn.fn
    return fn


def compile_variant(dtype: str, head_dim: int, arch: int, entropy: bool, config) -> dict:
    jit = jit_function()
    d_main, d_tail = fwd.head_dim_split(head_dim)
    constexprs = dict(
        HEAD_DIM=head_dim,
        D_MAIN=d_main,
        D_TAIL=max(d_tail, 16),
        HAS_TAIL=d_tail > 0,
        RETURN_ENTROPY=entropy,
        DOT_PRECISION="ieee" if dtype == "fp32" else "tf32",
        **config.kwargs,
    )
    signature = {}
    for name in jit.arg_names:
        if name in ("Q", "K", "V", "Out"):
            signature[name] = POINTER[dtype]
        elif name == "Ent":
            signature[name] = "*fp32"
        elif name == "qk_scale_log2":
            signature[name] = "fp32"
        elif name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = "i32"
    source = ASTSource(
        fn=jit,
        signature=signature,
        constexprs={(jit.arg_names.index(k),): v for k, v in constexprs.items()},
    )
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
    ptx = compiled.asm["ptx"]
    return {
        "dtype": dtype,
        "head_dim": head_dim,
        "arch": arch,
        "entropy": entropy,
        "config": {**config.kwargs, "warps": config.num_warps, "stages": config.num_stages},
        "shared_bytes": compiled.metadata.shared,
        "cubin_bytes": len(compiled.asm["cubin"]),
        "wgmma": "wgmma" in ptx,
        "mma": "mma.sync" in ptx,
    }


def autotune_configs(dtype: str, head_dim: int, seq_k: int):
    """The CUDA autotuning configs the pruner keeps for this dtype, head dim and key length."""
    d_main, d_tail = fwd.head_dim_split(head_dim)
    kwargs = {"D_MAIN": d_main, "D_TAIL": max(d_tail, 16), "HAS_TAIL": d_tail > 0}
    query = torch.empty(0, dtype=TORCH_DTYPE[dtype])
    return fwd._prune_configs(fwd._cuda_configs(), {"seq_k": seq_k, "Q": query}, **kwargs)


def main(argv: list[str]) -> None:
    variants = json.loads(argv[0])
    for dtype, head_dim, arch, entropy, which in variants:
        configs = autotune_configs(dtype, head_dim, 4096)
        for config in configs if which == "all" else configs[:1]:
            print(json.dumps(compile_variant(dtype, head_dim, arch, entropy, config)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
