"""Parity of the fused Triton kernel against the PyTorch oracle and an fp64 computation.

On a machine without CUDA these run the real kernel through ``TRITON_INTERPRET=1`` (set in
conftest). bf16 runs only on CUDA: the interpreter computes wrong bf16 numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, max_err, randn

import entropy_attn
from entropy_attn.op.reference import attention_entropy

ON_CUDA = DEVICE == "cuda"
bf16_needs_cuda = pytest.mark.skipif(
    not ON_CUDA, reason="bf16 parity is a GPU test: the Triton interpreter computes wrong bf16"
)
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=bf16_needs_cuda),
]
# Plain tolerances against the fp64 computation, per dtype (output and entropy).
TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}
ENTROPY_TOL = dict(atol=5e-5, rtol=2e-5)
# Slack added to "twice PyTorch's own error": about one unit in the last place at |x| ~ 1.
ERROR_EPS = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def make_qkv(batch, heads, seq_q, seq_k, head_dim, dtype, generator, layout="contiguous"):
    """Inputs in SDPA layout; "bshd" gives diffusers' (B, L, H, D) views, "strided_d" a head
    dimension with stride 2 (neither needs a copy in the kernel)."""
    if layout == "contiguous":
        q = randn((batch, heads, seq_q, head_dim), dtype, generator)
        k = randn((batch, heads, seq_k, head_dim), dtype, generator)
        v = randn((batch, heads, seq_k, head_dim), dtype, generator)
    elif layout == "bshd":
        q = randn((batch, seq_q, heads, head_dim), dtype, generator).transpose(1, 2)
        k = randn((batch, seq_k, heads, head_dim), dtype, generator).transpose(1, 2)
        v = randn((batch, seq_k, heads, head_dim), dtype, generator).transpose(1, 2)
    elif layout == "strided_d":
        q = randn((batch, heads, seq_q, 2 * head_dim), dtype, generator)[..., ::2]
        k = randn((batch, heads, seq_k, 2 * head_dim), dtype, generator)[..., 1::2]
        v = randn((batch, seq_k, heads, head_dim), dtype, generator).transpose(1, 2)
    else:
        raise ValueError(layout)
    return q, k, v


def check_parity(q, k, v, scale, *, what):
    out, ent = entropy_attn.attention(q, k, v, scale, return_entropy=True, backend="triton")
    assert out.dtype == q.dtype and out.shape == q.shape
    assert ent.dtype == torch.float32 and ent.shape == q.shape[:3]
    assert torch.isfinite(out).all() and torch.isfinite(ent).all(), f"{what}: non-finite output"
    q64, k64, v64 = q.double(), k.double(), v.double()
    out64 = F.scaled_dot_product_attention(q64, k64, v64, scale=scale)
    ent64 = attention_entropy(q64, k64, scale)
    out_torch = F.scaled_dot_product_attention(q, k, v, scale=scale)

    # FlagAttention's rule: no worse than twice PyTorch's own same-dtype error, plus an epsilon.
    kernel_err, torch_err = max_err(out, out64), max_err(out_torch, out64)
    bound = 2 * torch_err + ERROR_EPS[q.dtype]
    assert kernel_err <= bound, (
        f"{what}: kernel err {kernel_err:.3e} > 2 * torch err {torch_err:.3e} + eps"
    )
    assert_close(out, out64, **TOLERANCES[q.dtype], what=f"{what} output")
    assert_close(ent, ent64, **ENTROPY_TOL, what=f"{what} entropy")
    # And against the package's own oracle (the torch backend), which users get off CUDA.
    ref_out, ref_ent = entropy_attn.attention(q, k, v, scale, return_entropy=True, backend="torch")
    assert_close(out, ref_out, **TOLERANCES[q.dtype], what=f"{what} vs oracle")
    assert_close(ent, ref_ent, **ENTROPY_TOL, what=f"{what} entropy vs oracle")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [40, 64, 80, 96, 128, 160])
@pytest.mark.parametrize("seq_q,seq_k", [(77, 77), (100, 333), (64, 77)])
def test_parity_dtype_headdim(dtype, head_dim, seq_q, seq_k, generator):
    q, k, v = make_qkv(2, 2, seq_q, seq_k, head_dim, dtype, generator)
    check_parity(q, k, v, 1.0 / math.sqrt(head_dim), what=f"{dtype} d={head_dim}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["bshd", "strided_d"])
@pytest.mark.parametrize("head_dim", [40, 64])
def test_parity_strided_inputs(dtype, layout, head_dim, generator):
    q, k, v = make_qkv(2, 3, 77, 333, head_dim, dtype, generator, layout=layout)
    assert not q.is_contiguous()
    check_parity(q, k, v, 0.11, what=f"{layout} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "seq_q,seq_k",
    [
        # 784x784 and 4001x16 take the ragged-query and ragged-key paths that 196x196 and
        # 49x4001 take, at 10x the interpreter time: slow (CI runs them).
        pytest.param(784, 784, marks=pytest.mark.slow),
        (196, 196),
        pytest.param(4001, 16, marks=pytest.mark.slow),
        (49, 4001),
        (1, 1),
        (1, 77),
        (17, 1),
    ],
)
def test_parity_odd_lengths(dtype, seq_q, seq_k, generator):
    q, k, v = make_qkv(1, 2, seq_q, seq_k, 64, dtype, generator)
    check_parity(q, k, v, 0.125, what=f"{dtype} Lq={seq_q} Lk={seq_k}")


@pytest.mark.parametrize("head_dim", [8, 16, 24, 48, 72, 200, 256])
def test_parity_head_dims_up_to_256(head_dim, generator):
    q, k, v = make_qkv(1, 1, 50, 90, head_dim, torch.float16, generator)
    check_parity(q, k, v, head_dim**-0.5, what=f"d={head_dim}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [0.02, 0.125, 0.4])
def test_runtime_scale(dtype, scale, generator):
    """The scale is a runtime argument: several values through one compiled kernel."""
    q, k, v = make_qkv(1, 2, 96, 130, 64, dtype, generator)
    check_parity(q, k, v, scale, what=f"scale={scale}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_extremes(dtype, generator):
    """Row 0 is uniform (q = 0: H = ln Lk exactly); the other rows have one dominant logit."""
    seq_k, head_dim = 333, 64
    k = randn((1, 1, seq_k, head_dim), dtype, generator)
    v = randn((1, 1, seq_k, head_dim), dtype, generator)
    q = torch.zeros((1, 1, 8, head_dim), dtype=dtype, device=DEVICE)
    q[0, 0, 1:] = k[0, 0, [3, 50, 64, 65, 200, 300, 332]] * 8.0
    out, ent = entropy_attn.attention(q, k, v, 1.0, return_entropy=True, backend="triton")
    ent64 = attention_entropy(q.double(), k.double(), 1.0)
    assert abs(ent[0, 0, 0].item() - math.log(seq_k)) < 1e-5, ent[0, 0, 0].item()
    assert (ent[0, 0, 1:] < 1e-3).all(), ent
    assert (ent >= 0).all()
    assert_close(ent, ent64, atol=2e-5, rtol=1e-5, what="entropy extremes")
    out64 = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=1.0)
    assert_close(out, out64, **TOLERANCES[dtype], what="output extremes")


def test_fp16_large_logits_are_finite(generator):
    """|s| ~ 1e4 in fp16: no NaN or inf, and the numbers still match fp64."""
    q = randn((1, 2, 77, 64), torch.float16, generator, scale=12.0)
    k = randn((1, 2, 200, 64), torch.float16, generator, scale=12.0)
    v = randn((1, 2, 200, 64), torch.float16, generator)
    logits = (q.double() @ k.double().transpose(-1, -2)).abs().max().item()
    assert logits > 5e3
    out, ent = entropy_attn.attention(q, k, v, 1.0, return_entropy=True, backend="triton")
    assert torch.isfinite(out).all() and torch.isfinite(ent).all()
    out64 = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=1.0)
    assert_close(out, out64, **TOLERANCES[torch.float16], what="large logits output")
    ent64 = attention_entropy(q.double(), k.double(), 1.0)
    # The dominant logit gap decides the entropy; fp32 logits of size 1e4 carry ~1e-3 absolute
    # rounding, which sets this tolerance.
    assert_close(ent, ent64, atol=5e-3, rtol=1e-3, what="large logits entropy")


def test_output_keeps_query_layout(generator):
    """A (B, L, H, D) view in gives a (B, L, H, D)-strided output: no copy to go back."""
    q, k, v = make_qkv(2, 3, 40, 40, 32, torch.float32, generator, layout="bshd")
    out = entropy_attn.attention(q, k, v, backend="triton")
    assert out.stride() == q.stride()
    assert out.transpose(1, 2).is_contiguous()


def test_without_entropy_matches_with_entropy(generator):
    q, k, v = make_qkv(1, 2, 77, 150, 80, torch.float16, generator)
    plain = entropy_attn.attention(q, k, v, 0.2, backend="triton")
    out, _ = entropy_attn.attention(q, k, v, 0.2, return_entropy=True, backend="triton")
    assert torch.equal(plain, out)


@pytest.mark.parametrize(
    "head_dim,split",
    [(40, (32, 16)), (64, (64, 0)), (72, (64, 16)), (80, (64, 16)), (96, (64, 32)),
     (128, (128, 0)), (160, (128, 32)), (200, (256, 0)), (8, (16, 0))],
)  # fmt: skip
def test_head_dim_split(head_dim, split):
    """Non-power-of-two head dims run as two dots rather than one padded to 2^k."""
    from entropy_attn.kernels.attention_fwd import head_dim_split

    main, tail = head_dim_split(head_dim)
    assert (main, tail) == split
    assert main + tail >= head_dim and main & (main - 1) == 0
    assert main + tail <= max(16, 1 << (head_dim - 1).bit_length())


def test_kernel_and_op_agree_on_max_head_dim():
    from entropy_attn.kernels import attention_fwd as kernels
    from entropy_attn.op import api as ops

    assert kernels.MAX_HEAD_DIM == ops.MAX_HEAD_DIM


def test_custom_op_opcheck(generator):
    """The torch.library registration is consistent (fake impl, schema, dispatch)."""
    q, k, v = make_qkv(1, 2, 33, 40, 16, torch.float32, generator)
    from entropy_attn.op.api import _attention_fwd_op

    for return_entropy in (True, False):
        for return_lse in (True, False):
            torch.library.opcheck(
                _attention_fwd_op,
                (q, k, v, 0.25, return_entropy, return_lse),
                test_utils=("test_schema", "test_faketensor"),
            )


def test_torch_compile_traces_without_graph_break(generator):
    q, k, v = make_qkv(1, 2, 33, 40, 16, torch.float32, generator)

    def f(q, k, v):
        out, ent = entropy_attn.attention(q, k, v, 0.3, return_entropy=True, backend="triton")
        return out * 2, ent.sum(-1)

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out, ent_sum = compiled(q, k, v)
    ref_out, ref_ent = entropy_attn.attention(q, k, v, 0.3, return_entropy=True, backend="torch")
    assert_close(out, ref_out * 2, **TOLERANCES[torch.float32], what="compiled output")
    assert_close(ent_sum, ref_ent.sum(-1), atol=1e-4, rtol=1e-5, what="compiled entropy")


@pytest.mark.skipif(not ON_CUDA, reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_capture_and_replay(generator):
    """The fused op inside a captured CUDA graph: replays on new inputs match the oracle.

    Autotuning runs in the warm-up on a side stream, before capture (it times kernels, which a
    capture cannot)."""
    shape = (2, 5, 1000, 1000, 64)
    static = make_qkv(*shape, torch.float16, generator)

    def step():
        return entropy_attn.attention(*static, 0.11, return_entropy=True, backend="triton")

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, ent = step()
    for _ in range(2):  # new data in the captured input buffers, then replay
        for buffer, fresh in zip(static, make_qkv(*shape, torch.float16, generator), strict=True):
            buffer.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        ref_out, ref_ent = entropy_attn.attention(
            *static, 0.11, return_entropy=True, backend="torch"
        )
        assert_close(out, ref_out, **TOLERANCES[torch.float16], what="graph replay output")
        assert_close(ent, ref_ent, **ENTROPY_TOL, what="graph replay entropy")


@pytest.mark.skipif(not ON_CUDA, reason="torch.compile with CUDA graphs needs a CUDA GPU")
def test_torch_compile_reduce_overhead_on_cuda(generator):
    """``torch.compile(mode="reduce-overhead")`` (Inductor + CUDA graphs) keeps the fused op."""
    q, k, v = make_qkv(2, 10, 1024, 1024, 64, torch.float16, generator)

    def f(q, k, v):
        out, ent = entropy_attn.attention(q, k, v, 0.13, return_entropy=True, backend="triton")
        return out * 2, ent

    entropy_attn.attention(q, k, v, 0.13, return_entropy=True, backend="triton")  # autotune
    torch._dynamo.reset()
    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    ref_out, ref_ent = entropy_attn.attention(q, k, v, 0.13, return_entropy=True, backend="torch")
    for _ in range(3):  # record, then replays
        out, ent = compiled(q, k, v)
        assert_close(out, ref_out * 2, atol=4e-3, rtol=4e-3, what="compiled output")
        assert_close(ent, ref_ent, **ENTROPY_TOL, what="compiled entropy")


@pytest.mark.parametrize("precision,allow", [("highest", False), ("high", True)])
def test_fp32_tf32_follows_pytorch_switch(precision, allow, monkeypatch, generator):
    """fp32 inputs use IEEE dots unless torch.set_float32_matmul_precision allows TF32."""
    from entropy_attn.kernels import attention_fwd as kernels

    seen = []
    real = kernels.flash_attention_forward

    def spy(*args):
        seen.append(args[5])
        return real(*args)

    monkeypatch.setattr(kernels, "flash_attention_forward", spy)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        q, k, v = make_qkv(1, 1, 20, 20, 16, torch.float32, generator)
        entropy_attn.attention(q, k, v, backend="triton")
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen == [allow]


def _available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.skipif(
    DEVICE != "cpu" or _available_memory_bytes() < 12 * 2**30,
    reason="needs a 5 GiB host buffer (run on CPU through the interpreter)",
)
def test_offsets_past_2_31_elements(generator):
    """One (batch, head) slice spanning more than 2^31 elements: 64-bit addressing."""
    row_stride, seq_q, head_dim = 2**26 + 2**24, 32, 16  # 31 rows apart > 2^31 elements
    buffer = torch.zeros(row_stride * (seq_q - 1) + head_dim, dtype=torch.float16)
    q = buffer.as_strided((1, 1, seq_q, head_dim), (0, 0, row_stride, 1))
    rows = randn((seq_q, head_dim), torch.float16, generator)
    for i in range(seq_q):
        buffer[i * row_stride : i * row_stride + head_dim] = rows[i]
    k = randn((1, 1, 40, head_dim), torch.float16, generator)
    v = randn((1, 1, 40, head_dim), torch.float16, generator)
    out = entropy_attn.attention(q, k, v, backend="triton")
    expected = F.scaled_dot_product_attention(rows[None, None].double(), k.double(), v.double())
    assert_close(out, expected, **TOLERANCES[torch.float16], what="64-bit offsets")


def test_stride_align_is_the_largest_power_of_two_dividing_the_strides():
    from entropy_attn.kernels.attention_fwd import stride_align

    def blhd(heads, seq, dim):  # what diffusers' processors pass: (B, L, H, D) seen as (B, H, L, D)
        return torch.empty(2, seq, heads, dim, device="meta").transpose(1, 2)

    assert stride_align(blhd(8, 4096, 64)) == 16
    assert stride_align(blhd(8, 4096, 40)) == 8  # head stride 40
    assert stride_align(blhd(8, 4096, 40), blhd(8, 77, 64)) == 8
    assert stride_align(torch.empty(2, 8, 77, 20, device="meta")) == 4  # row stride 20
    assert stride_align(torch.empty(2, 8, 77, 33, device="meta")) == 1
    # A dim of size 1 is never stepped along: its stride does not count.
    assert stride_align(torch.empty(1, 1, 77, 64, device="meta")[:, :, :, :40]) == 16
    assert stride_align(torch.empty(1, 1, 1, 33, device="meta")) == 16
    assert stride_align(blhd(8, 4096, 40), limit=4) == 4


@pytest.mark.parametrize("scale", [-0.5, -1e-300, float("nan"), float("inf")])
def test_launcher_refuses_a_negative_or_non_finite_scale(scale, generator):
    """The kernel takes the row max before scaling (max(qk) * s == max(qk * s) needs s >= 0)."""
    from entropy_attn.kernels.attention_fwd import flash_attention_forward

    q, k, v = make_qkv(1, 1, 8, 8, 16, torch.float32, generator)
    with pytest.raises(ValueError, match="scale must be finite and >= 0"):
        flash_attention_forward(q, k, v, scale)


@pytest.mark.parametrize("scale", [0.0, 1e-45, 5e-39])
def test_launcher_small_scales_without_nan(scale, generator):
    """Scales whose scale * log2(e) is no normal fp32 (0 included) would give NaN in the kernel
    (0 * -inf on masked key columns): the launcher returns uniform attention instead, which is
    what fp64 gives at these scales. Ragged keys (45 = 32 + 13) so masked columns exist."""
    from entropy_attn.kernels.attention_fwd import flash_attention_forward

    q, k, v = make_qkv(1, 2, 20, 45, 16, torch.float16, generator)
    out, ent = flash_attention_forward(q, k, v, scale, return_entropy=True)
    out64 = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)
    assert_close(out, out64, **TOLERANCES[torch.float16], what=f"scale {scale}")
    assert_close(ent, torch.full(ent.shape, math.log(45)), atol=1e-6, rtol=0, what="entropy")


def test_launcher_smallest_kernel_scale_runs_the_kernel(monkeypatch, generator):
    """Just above the threshold the kernel itself runs (and still gives uniform attention)."""
    from entropy_attn.kernels import attention_fwd as fwd

    calls = []
    monkeypatch.setattr(fwd, "_uniform_attention", lambda *a: calls.append(a))
    q, k, v = make_qkv(1, 1, 8, 40, 16, torch.float32, generator)
    out, ent = fwd.flash_attention_forward(q, k, v, 1e-38, return_entropy=True)
    assert calls == []
    assert_close(ent, torch.full(ent.shape, math.log(40)), atol=1e-6, rtol=0, what="1e-38")
    fwd.flash_attention_forward(q, k, v, 1e-39, return_entropy=True)
    assert len(calls) == 1


def test_launch_plan_is_cached_and_reuses_the_tuned_config(monkeypatch, generator):
    """The second call with the same signature skips the autotuner's run (it launches the
    picked config directly) and gives bit-identical results; a new scale needs no new plan."""
    from entropy_attn.kernels import attention_fwd as fwd

    kernel = fwd._attention_fwd_kernel
    q, k, v = make_qkv(1, 2, 40, 50, 16, torch.float32, generator, layout="bshd")
    first = fwd.flash_attention_forward(q, k, v, 0.3, True)
    runs = []
    real_run = type(kernel).run
    monkeypatch.setattr(type(kernel), "run", lambda self, *a, **kw: runs.append(1) or
                        real_run(self, *a, **kw))  # fmt: skip
    plans = len(fwd._PLANS)
    second = fwd.flash_attention_forward(q, k, v, 0.3, True)
    third = fwd.flash_attention_forward(q, k, v, 0.7, True)
    assert runs == [] and len(fwd._PLANS) == plans
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    ref = entropy_attn.attention(q, k, v, 0.7, return_entropy=True, backend="torch")
    assert_close(third[0], ref[0], **TOLERANCES[torch.float32], what="new scale, same plan")
    assert_close(third[1], ref[1], **ENTROPY_TOL, what="new scale entropy")
    # Another layout of the same shape is another signature: a new plan, through the autotuner.
    fwd.flash_attention_forward(q.contiguous(), k, v, 0.3, True)
    assert len(runs) == 1 and len(fwd._PLANS) == plans + 1


def test_eager_call_skips_the_custom_op_but_compile_keeps_it(monkeypatch, generator):
    """Eager calls go straight to the launcher (no torch.library dispatch); the registered op is
    what torch.compile traces (see test_torch_compile_traces_without_graph_break)."""
    from entropy_attn.op import api as ops

    called = []
    monkeypatch.setattr(ops, "_attention_fwd_op", lambda *a: called.append(a))
    q, k, v = make_qkv(1, 2, 20, 20, 16, torch.float32, generator)
    entropy_attn.attention(q, k, v, 0.2, backend="triton")
    assert called == []
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with pytest.raises(TypeError):  # the stub returns None: proof that the op was called
        entropy_attn.attention(q, k, v, 0.2, backend="triton")
    assert len(called) == 1


def test_large_scale_with_ragged_keys_matches_fp64(generator):
    """A sharp softmax (scale 3) over a ragged last key tile: the masked -inf columns and the
    max-before-scale shortcut still give the fp64 result."""
    q, k, v = make_qkv(1, 2, 40, 45, 32, torch.float32, generator)
    check_parity(q, k, v, 3.0, what="scale 3, ragged keys")


def _pruned_configs(dtype, head_dim, precision, seq_k=4096):
    """The CUDA configs the pruner keeps for this call (the pruner itself runs anywhere)."""
    from entropy_attn.kernels import attention_fwd as fwd

    query = torch.empty(0, dtype=dtype)
    return fwd._prune_configs(
        fwd._cuda_configs(),
        {"seq_k": seq_k, "Q": query},
        DOT_PRECISION=precision,
        **fwd.tile_constexprs(head_dim),
    )


@pytest.mark.parametrize(
    "head_dim,layout",
    [
        pytest.param(64, "contiguous", marks=pytest.mark.skipif(not ON_CUDA, reason="GPU only")),
        pytest.param(64, "bshd", marks=pytest.mark.skipif(not ON_CUDA, reason="GPU only")),
        pytest.param(80, "contiguous", marks=pytest.mark.skipif(not ON_CUDA, reason="GPU only")),
        (80, "bshd"),  # split head dim in diffusers' layout: also under the interpreter
    ],
)
def test_every_cuda_config_matches_fp64(head_dim, layout, monkeypatch, generator):
    """Each tile the CUDA autotuner may pick, forced one at a time, gives the right numbers
    (ragged query and key tiles, entropy on). The GPU test stage runs the rest of the suite with
    ENTROPY_ATTN_AUTOTUNE=0 (one tile), so this is where the other tiles are checked; under the
    interpreter it checks every tile shape's masking."""
    from entropy_attn.kernels import attention_fwd as fwd

    monkeypatch.delenv("ENTROPY_ATTN_AUTOTUNE", raising=False)
    batch, heads, seq_q, seq_k = (2, 3, 300, 333) if ON_CUDA else (1, 1, 150, 170)
    q, k, v = make_qkv(batch, heads, seq_q, seq_k, head_dim, torch.float16, generator, layout)
    configs = _pruned_configs(torch.float16, head_dim, "tf32", seq_k=seq_k)  # the CUDA list
    assert len(configs) > 1
    kernel = fwd._attention_fwd_kernel
    for config in configs:
        monkeypatch.setattr(kernel, "configs", [config])  # one config: launched as it is
        monkeypatch.setattr(kernel, "cache", {})
        check_parity(q, k, v, 0.125, what=f"d={head_dim} {layout} {config}")
