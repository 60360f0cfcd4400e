"""Fused attention forward with a runtime softmax scale and optional online row entropy.

Math, per (batch, head) and query row ``i``::

    s_ij = scale * <q_i, k_j>            logits (natural units)
    A_ij = softmax_j(s_ij)
    o_i  = sum_j A_ij v_j
    H_i  = -sum_j A_ij ln A_ij           attention entropy, nats (only if RETURN_ENTROPY)
    L_i  = ln sum_j exp(s_ij)            log-sum-exp of the logits, nats (only if RETURN_LSE)

Numerics:

* The logits are formed by ``tl.dot`` with fp32 accumulation and kept in base 2:
  ``u_ij = s_ij * log2(e)`` (``log2(e)`` is folded into the scale once, so the loop uses ``exp2``).
* Online softmax over key tiles keeps, per row, the running max ``m`` of ``u``, the running sum
  ``l = sum_j 2^(u_ij - m)`` and, for the entropy, ``t = sum_j (u_ij - m) 2^(u_ij - m)``.
  When the max grows from ``m`` to ``m'``, every term is rescaled by ``alpha = 2^(m - m')``:
  ``l <- alpha l`` and ``t <- alpha (t + (m - m') l)`` (the shift ``m - m'`` re-centres ``t`` on the
  new max). Keeping ``t`` relative to the running max is the design card's
  ``H = m + ln l - t / l`` with ``t`` shifted by ``m``; it avoids the cancellation of two large
  terms when the logits are large (fp16 with ``|s| ~ 1e4``). At the end ``H = ln l - ln(2) t / l``.
* The rescale is conditional (as in FlashAttention-4): ``m`` is only a reference point, and
  ``l``, ``t`` and the output accumulator are exact for any ``m`` they share. A key tile moves the
  reference up only when some row's max grew by more than ``RESCALE_LOG2`` = 8 (a block-wide
  test, one branch); otherwise the old reference stays, ``p = 2^(u - m) <= 2^8`` (no overflow in
  fp16/bf16/fp32) and the tile skips the ``alpha`` multiplies of the accumulator and sums. The
  first tile always moves it (from ``-inf``); so does the ragged last tile, after the loop,
  without a test (a branch there made Triton 3.6's ptxas serialise every wgmma of the kernel).
* The log-sum-exp is ``L = ln(2) m + ln l`` at the end, exact for whatever reference ``m`` the
  rows ended with (``l`` is relative to it); context parallelism merges key shards with it.
* On sm_90, ``l`` and ``t`` are kept as 8 partial sums per row (``(BLOCK_M, 8)``: the key
  columns split ``(BLOCK_N / 8, 8)``, the 8 being those that the threads of one row share in the
  tensor-core layouts), summed over the 8 once at the end: each key tile sums within a thread
  only, with no cross-thread shuffles per row and tile.
* Padded key columns get ``u = -inf`` so that they add nothing to ``l``; their entropy term
  ``(u - m) 2^(u - m)`` would be ``-inf * 0 = NaN``, so their ``u - m`` is zeroed first.
* ``p = 2^(u - m)`` is rounded to the value dtype (fp16/bf16) for the ``P @ V`` product, as in
  FlashAttention; the output accumulator, ``m``, ``l`` and ``t`` are fp32; the entropy uses the fp32
  ``p``. fp32 inputs use IEEE fp32 dots unless the caller allows TF32.
* Head dims that are not powers of two are split into a power-of-two main tile and a small tail
  tile (80 = 64 + 16, 160 = 128 + 32), each a ``tl.dot`` of its own; columns past the head dim are
  zero-filled by masked loads (zeros add nothing to the dots) and never stored.

One file because a Triton kernel, its ``@triton.jit`` helpers, its autotune configs and the
launch plan that picks tiles per head dim and GPU must change together.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_LOG2E = 1.4426950408889634  # log2(e) = 1 / ln(2)
# Growth of a row's running max (log2 units) below which the running sums are not rescaled.
RESCALE_LOG2 = tl.constexpr(8.0)


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# CUDA tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) per GPU generation and padded head-dim
# width (main plus tail tile), best first by the static counts of benchmarks/static_report.py
# (key-loop instructions per logit); the first is the tile used without autotuning. Only tiles
# that keep everything in registers (no spills) for the shipped head dims 40/64/80/128/160 are
# listed (tests/test_kernel_compile.py compiles every one). 128-row tiles with 64+ keys use 8
# warps (two warpgroups of 64 rows): with 4 warps they need every register and spill once the
# entropy is on. sm_80's mma.sync keeps more in registers than sm_90's wgmma, so its wide heads
# get narrower tiles.
_TILES = {
    90: {
        64: [(128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 32, 4, 4)],
        80: [(128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)],
        160: [(128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)],
    },
    80: {
        64: [(128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)],
        80: [(128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)],
        160: [(128, 32, 8, 2)],  # 64 x 64 with 8 warps fits, but computes each exp2 twice
    },
}
_WIDE_HEAD_TILES = [(64, 64, 4, 2), (64, 32, 4, 3), (32, 32, 4, 2)]  # past 160: no shipped model
# A tile of 64 query rows for grids that 128-row tiles would leave mostly idle.
_SMALL_GRID_TILE = (64, 64, 4, 3)
_DEFAULT_SMS = 132  # H100 SXM; the pruner asks the device when it has one
_DEFAULT_ARCH = 90


def tiles_for(head_dim_pad: int, arch: int = _DEFAULT_ARCH) -> list[tuple[int, int, int, int]]:
    """The CUDA tiles for a padded head-dim width on sm_``arch`` (sm_90 and newer use the sm_90
    list, older GPUs the sm_80 one), best first."""
    for width, tiles in _TILES[90 if arch >= 90 else 80].items():
        if head_dim_pad <= width:
            return list(tiles)
    return list(_WIDE_HEAD_TILES)


def _config(tile: tuple[int, int, int, int]) -> triton.Config:
    block_m, block_n, warps, stages = tile
    return triton.Config(
        {"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages
    )


def _cuda_configs() -> list[triton.Config]:
    """Every CUDA tile of any head-dim width (the autotuner's list; the pruner narrows it)."""
    every = [tile for family in _TILES.values() for tiles in family.values() for tile in tiles]
    tiles = dict.fromkeys([*every, *_WIDE_HEAD_TILES])
    return [_config(tile) for tile in tiles]


def _interpreter_configs() -> list[triton.Config]:
    # The interpreter runs each program in Python: one mid-size tile keeps it quick while sequences
    # longer than a tile still exercise the online rescaling and the ragged last tile.
    return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=1, num_stages=1)]


def _ieee_configs() -> list[triton.Config]:
    # fp32 with IEEE dots has no tensor-core path: large tiles only spill registers and take tens
    # of seconds each to compile, so one small tile (two stages, or one where that does not fit).
    return [
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=stages)
        for stages in (2, 1)
    ]


def _shared_bytes(config, head_dim_pad: int, element_bytes: int) -> int:
    """Rough shared memory of a config: the Q tile plus the pipelined K and V tiles."""
    block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    return element_bytes * head_dim_pad * (block_m + 2 * block_n * config.num_stages)


def _multiprocessors(tensor) -> int:
    if getattr(tensor, "is_cuda", False):
        return torch.cuda.get_device_properties(tensor.device).multi_processor_count
    return _DEFAULT_SMS


def _arch(tensor) -> int:
    """``10 * major + minor`` of the tensor's GPU (80 for A100, 90 for H100); 90 off CUDA."""
    if getattr(tensor, "is_cuda", False):
        major, minor = torch.cuda.get_device_capability(tensor.device)
        return 10 * major + minor
    return _DEFAULT_ARCH


def _prune_configs(configs, named_args, **kwargs):
    """The tiles for this head dim (``tiles_for``) that fit in shared memory and are not wider
    than the keys; if none is left, the smallest. IEEE fp32 gets its own small tile.

    When 128-row tiles would give fewer programs than the GPU has multiprocessors (few heads,
    short sequences), the 64-row tile goes first. ``ENTROPY_ATTN_AUTOTUNE=0`` keeps only the
    first tile: no autotuning, so the first call of each new shape compiles one kernel instead of
    several (tests, quick runs)."""
    head_dim_pad = kwargs["D_MAIN"] + (kwargs["D_TAIL"] if kwargs["HAS_TAIL"] else 0)
    element_bytes = named_args["Q"].element_size()
    seq_k = named_args["seq_k"]
    ieee = kwargs.get("DOT_PRECISION") == "ieee" and not interpreting()
    if ieee:
        configs = _ieee_configs()
    elif not interpreting():
        tiles = tiles_for(head_dim_pad, _arch(named_args["Q"]))
        seq_q, batch_heads = named_args.get("SEQ_Q_BUCKET"), named_args.get("BATCH_HEADS_BUCKET")
        if seq_q is not None and batch_heads is not None:
            programs = triton.cdiv(seq_q, 128) * batch_heads
            if programs < _multiprocessors(named_args["Q"]) and _SMALL_GRID_TILE in tiles:
                tiles.remove(_SMALL_GRID_TILE)
                tiles.insert(0, _SMALL_GRID_TILE)
        configs = [_config(tile) for tile in tiles]
    kept = [
        config
        for config in configs
        if _shared_bytes(config, head_dim_pad, element_bytes) <= 160 * 1024
        and config.kwargs["BLOCK_N"] <= max(32, triton.next_power_of_2(seq_k))
    ]
    if kept:
        return kept[:1] if ieee or os.environ.get("ENTROPY_ATTN_AUTOTUNE", "1") == "0" else kept
    smallest = min(configs, key=lambda c: _shared_bytes(c, head_dim_pad, element_bytes))
    return [triton.Config(dict(smallest.kwargs), num_warps=smallest.num_warps, num_stages=1)]


def _bucket(n: int) -> int:
    """Power-of-two bucket of a sequence length: the autotuner key, so a new N rarely retunes."""
    return triton.next_power_of_2(max(int(n), 16))


@triton.jit
def _load_tile(
    ptrs, rows, row_bound, cols, col_bound, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr
):
    """Load a 2-D tile, masking only the dimensions that can run past their bound."""
    if MASK_ROWS and MASK_COLS:
        tile = tl.load(
            ptrs, mask=(rows[:, None] < row_bound) & (cols[None, :] < col_bound), other=0.0
        )
    elif MASK_ROWS:
        tile = tl.load(ptrs, mask=rows[:, None] < row_bound, other=0.0)
    elif MASK_COLS:
        tile = tl.load(ptrs, mask=cols[None, :] < col_bound, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def _partial_sums(x, ROW_PARTS: tl.constexpr):
    """``(rows, cols)`` -> ``(rows, ROW_PARTS)``: with 8 parts, sums over the key columns ``c``
    with the same ``c % 8``; in the tensor-core accumulator layouts a thread's columns of a row
    are ``8 j + 2 (lane % 4) + {0, 1}``, so these sums stay within a thread. With 1, the row
    sums (sm_80: there the partial sums save little and make one 64 x 64 tile spill)."""
    if ROW_PARTS == 1:
        return tl.sum(x, 1)[:, None]
    return tl.sum(tl.reshape(x, [x.shape[0], x.shape[1] // ROW_PARTS, ROW_PARTS]), 1)


@triton.jit
def _move_reference(
    acc_main,
    acc_tail,
    row_max,
    row_sum,
    row_ent,
    tile_max,
    HAS_TAIL: tl.constexpr,
    RETURN_ENTROPY: tl.constexpr,
):
    """Move each row's reference max to ``max(row_max, tile_max)``, rescaling the output
    accumulators, the partial sums ``l`` and the entropy terms ``t`` by ``alpha = 2^(m - m')``."""
    new_max = tl.maximum(row_max, tile_max)
    alpha = tl.math.exp2(row_max - new_max)
    if RETURN_ENTROPY:
        # Before the first tile row_sum is 0 and row_max is -inf: skip the shift (0 * -inf).
        shift = (row_max - new_max)[:, None]
        recentre = tl.where(row_sum > 0.0, shift, 0.0) * row_sum
        row_ent = alpha[:, None] * (row_ent + recentre)
    row_sum = row_sum * alpha[:, None]
    acc_main = acc_main * alpha[:, None]
    if HAS_TAIL:
        acc_tail = acc_tail * alpha[:, None]
    return acc_main, acc_tail, new_max, row_sum, row_ent


@triton.jit
def _attend_key_tile(
    acc_main,
    acc_tail,
    row_max,
    row_sum,
    row_ent,
    q_main,
    q_tail,
    k_main_ptrs,
    k_tail_ptrs,
    v_main_ptrs,
    v_tail_ptrs,
    start_n,
    seq_k,
    qk_scale_log2,
    offs_n,
    offs_d_main,
    offs_d_tail,
    HEAD_DIM: tl.constexpr,
    D_MAIN: tl.constexpr,
    D_TAIL: tl.constexpr,
    HAS_TAIL: tl.constexpr,
    EARLY_V: tl.constexpr,
    ROW_PARTS: tl.constexpr,
    MASK_N: tl.constexpr,
    RETURN_ENTROPY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Fold one tile of keys/values into the running max, sum, entropy term and output."""
    cols = start_n + offs_n
    # K^T tiles are (head dim, keys); V tiles are (keys, head dim).
    k_main = _load_tile(k_main_ptrs, offs_d_main, HEAD_DIM, cols, seq_k, HEAD_DIM < D_MAIN, MASK_N)
    qk = tl.dot(q_main, k_main, input_precision=DOT_PRECISION)
    if HAS_TAIL:
        k_tail = _load_tile(
            k_tail_ptrs, offs_d_tail, HEAD_DIM, cols, seq_k, D_MAIN + D_TAIL > HEAD_DIM, MASK_N
        )
        qk = tl.dot(q_tail, k_tail, qk, input_precision=DOT_PRECISION)
    if EARLY_V:
        # sm_90: V's load issued before the softmax rather than right before its dot lets the
        # compiler wait for K and V of a tile together (one barrier, fewer register moves).
        v_main = _load_tile(
            v_main_ptrs, cols, seq_k, offs_d_main, HEAD_DIM, MASK_N, HEAD_DIM < D_MAIN
        )
    if MASK_N:
        qk = tl.where(cols[None, :] < seq_k, qk, float("-inf"))
    # The scale is > 0 (the launcher checks), so max(qk * s) == max(qk) * s exactly (rounding is
    # monotonic) and each logit costs one FMA, qk * s - max, before exp2.
    tile_max = tl.max(qk, 1) * qk_scale_log2
    if MASK_N:
        # The ragged last tile, once per program: always move the reference. (A branch here, in
        # the epilogue after the key loop, makes ptxas 12.8 (Triton 3.6) serialise every wgmma
        # of the kernel: its C7514 "Potential Performance Loss".)
        acc_main, acc_tail, row_max, row_sum, row_ent = _move_reference(
            acc_main, acc_tail, row_max, row_sum, row_ent, tile_max, HAS_TAIL, RETURN_ENTROPY
        )
    elif tl.max(tile_max - row_max, 0) > RESCALE_LOG2:
        # Rescale only when some row's max grew by more than RESCALE_LOG2 (FlashAttention-4):
        # until then the old max stays the reference, p = 2^(u - m) stays below 2^RESCALE_LOG2
        # (no overflow in fp16/bf16/fp32), and nothing is lost since l, t and the output share
        # the reference.
        acc_main, acc_tail, row_max, row_sum, row_ent = _move_reference(
            acc_main, acc_tail, row_max, row_sum, row_ent, tile_max, HAS_TAIL, RETURN_ENTROPY
        )
    shifted = qk * qk_scale_log2 - row_max[:, None]
    p = tl.math.exp2(shifted)
    if RETURN_ENTROPY:
        if MASK_N:
            terms = p * tl.where(cols[None, :] < seq_k, shifted, 0.0)
        else:
            terms = p * shifted
        row_ent += _partial_sums(terms, ROW_PARTS)
    row_sum += _partial_sums(p, ROW_PARTS)
    if not EARLY_V:
        v_main = _load_tile(
            v_main_ptrs, cols, seq_k, offs_d_main, HEAD_DIM, MASK_N, HEAD_DIM < D_MAIN
        )
    p_low = p.to(v_main.dtype)
    acc_main = tl.dot(p_low, v_main, acc_main, input_precision=DOT_PRECISION)
    if HAS_TAIL:
        v_tail = _load_tile(
            v_tail_ptrs, cols, seq_k, offs_d_tail, HEAD_DIM, MASK_N, D_MAIN + D_TAIL > HEAD_DIM
        )
        acc_tail = tl.dot(p_low, v_tail, acc_tail, input_precision=DOT_PRECISION)
    return acc_main, acc_tail, row_max, row_sum, row_ent


@triton.autotune(
    configs=_interpreter_configs() if interpreting() else _cuda_configs(),
    key=[
        "D_MAIN",
        "D_TAIL",
        "HAS_TAIL",
        "EARLY_V",
        "ROW_PARTS",
        "SEQ_Q_BUCKET",
        "SEQ_K_BUCKET",
        "BATCH_HEADS_BUCKET",
        "RETURN_ENTROPY",
        "RETURN_LSE",
        "STRIDE_ALIGN",
    ],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit(
    do_not_specialize=["seq_q", "seq_k", "SEQ_Q_BUCKET", "SEQ_K_BUCKET", "BATCH_HEADS_BUCKET"]
)
def _attention_fwd_kernel(
    Q,
    K,
    V,
    Out,
    Ent,
    Lse,
    qk_scale_log2,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    heads,
    seq_q,
    seq_k,
    SEQ_Q_BUCKET,
    SEQ_K_BUCKET,
    BATCH_HEADS_BUCKET,
    HEAD_DIM: tl.constexpr,
    D_MAIN: tl.constexpr,
    D_TAIL: tl.constexpr,
    HAS_TAIL: tl.constexpr,
    EARLY_V: tl.constexpr,
    ROW_PARTS: tl.constexpr,
    RETURN_ENTROPY: tl.constexpr,
    RETURN_LSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    STRIDE_ALIGN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, head) against all keys, in key tiles.

    The head dim is covered by a power-of-two main part and, when it is not a power of two, a
    small tail (80 = 64 + 16, 160 = 128 + 32, 40 = 32 + 16 with 8 masked): two dots instead of
    one padded to the next power of two, which would waste 37.5 % of the work at 40/80/160.
    """
    # Every batch, head and row stride is a multiple of STRIDE_ALIGN elements (the launcher checks).
    # Triton's own specialisation only marks multiples of 16, so without these hints a diffusers
    # (B, L, H, D) view with D = 40/80/160 (head stride D) loses vectorised, pipelined loads.
    stride_qb = stride_qb // STRIDE_ALIGN * STRIDE_ALIGN
    stride_qh = stride_qh // STRIDE_ALIGN * STRIDE_ALIGN
    stride_qm = stride_qm // STRIDE_ALIGN * STRIDE_ALIGN
    stride_kb = stride_kb // STRIDE_ALIGN * STRIDE_ALIGN
    stride_kh = stride_kh // STRIDE_ALIGN * STRIDE_ALIGN
    stride_kn = stride_kn // STRIDE_ALIGN * STRIDE_ALIGN
    stride_vb = stride_vb // STRIDE_ALIGN * STRIDE_ALIGN
    stride_vh = stride_vh // STRIDE_ALIGN * STRIDE_ALIGN
    stride_vn = stride_vn // STRIDE_ALIGN * STRIDE_ALIGN
    stride_ob = stride_ob // STRIDE_ALIGN * STRIDE_ALIGN
    stride_oh = stride_oh // STRIDE_ALIGN * STRIDE_ALIGN
    stride_om = stride_om // STRIDE_ALIGN * STRIDE_ALIGN
    # A 1-D grid, query blocks fastest: consecutive programs share one head's K and V (L2 reuse),
    # and batch * heads is not bound by CUDA's 65535 limit on the second grid axis.
    query_blocks = tl.cdiv(seq_q, BLOCK_M)
    pid = tl.program_id(0)
    query_block = pid % query_blocks
    batch_head = pid // query_blocks
    batch = (batch_head // heads).to(tl.int64)
    head = (batch_head % heads).to(tl.int64)

    offs_m = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d_main = tl.arange(0, D_MAIN)
    offs_d_tail = D_MAIN + tl.arange(0, D_TAIL)
    # Addresses in 64 bits: one (batch, head) slice of a (B, L, H, D) view can span more than
    # 2^31 elements. Computed once per program; the key loop only advances pointers.
    rows64 = offs_m.to(tl.int64)
    cols64 = offs_n.to(tl.int64)

    q_base = Q + batch * stride_qb + head * stride_qh + rows64[:, None] * stride_qm
    k_base = K + batch * stride_kb + head * stride_kh + cols64[None, :] * stride_kn
    v_base = V + batch * stride_vb + head * stride_vh + cols64[:, None] * stride_vn
    # (An int64 scalar times the stride: strides equal to 1 arrive as constexprs.)
    k_step = tl.full([], BLOCK_N, tl.int64) * stride_kn
    v_step = tl.full([], BLOCK_N, tl.int64) * stride_vn
    q_main = _load_tile(
        q_base + offs_d_main[None, :] * stride_qd,
        offs_m,
        seq_q,
        offs_d_main,
        HEAD_DIM,
        True,
        HEAD_DIM < D_MAIN,
    )
    k_main_ptrs = k_base + offs_d_main[:, None] * stride_kd
    v_main_ptrs = v_base + offs_d_main[None, :] * stride_vd
    k_tail_ptrs = k_base + offs_d_tail[:, None] * stride_kd
    v_tail_ptrs = v_base + offs_d_tail[None, :] * stride_vd
    if HAS_TAIL:
        q_tail = _load_tile(
            q_base + offs_d_tail[None, :] * stride_qd,
            offs_m,
            seq_q,
            offs_d_tail,
            HEAD_DIM,
            True,
            D_MAIN + D_TAIL > HEAD_DIM,
        )
    else:
        q_tail = q_main  # unused: every use is behind `if HAS_TAIL`

    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M, ROW_PARTS], dtype=tl.float32)  # partial sums: _partial_sums
    row_ent = tl.zeros([BLOCK_M, ROW_PARTS], dtype=tl.float32)
    acc_main = tl.zeros([BLOCK_M, D_MAIN], dtype=tl.float32)
    acc_tail = tl.zeros([BLOCK_M, D_TAIL], dtype=tl.float32)  # dead code without a tail

    # Full key tiles need no column mask; the ragged last tile (if any) is handled once after.
    full_end = (seq_k // BLOCK_N) * BLOCK_N
    for start_n in range(0, full_end, BLOCK_N):
        acc_main, acc_tail, row_max, row_sum, row_ent = _attend_key_tile(
            acc_main, acc_tail, row_max, row_sum, row_ent, q_main, q_tail,
            k_main_ptrs, k_tail_ptrs, v_main_ptrs, v_tail_ptrs,
            start_n, seq_k, qk_scale_log2, offs_n, offs_d_main, offs_d_tail,
            HEAD_DIM, D_MAIN, D_TAIL, HAS_TAIL, EARLY_V, ROW_PARTS, False, RETURN_ENTROPY,
            DOT_PRECISION,
        )  # fmt: skip
        k_main_ptrs += k_step
        k_tail_ptrs += k_step
        v_main_ptrs += v_step
        v_tail_ptrs += v_step
    if full_end < seq_k:
        acc_main, acc_tail, row_max, row_sum, row_ent = _attend_key_tile(
            acc_main, acc_tail, row_max, row_sum, row_ent, q_main, q_tail,
            k_main_ptrs, k_tail_ptrs, v_main_ptrs, v_tail_ptrs,
            full_end, seq_k, qk_scale_log2, offs_n, offs_d_main, offs_d_tail,
            HEAD_DIM, D_MAIN, D_TAIL, HAS_TAIL, EARLY_V, ROW_PARTS, True, RETURN_ENTROPY,
            DOT_PRECISION,
        )  # fmt: skip

    o_base = Out + batch * stride_ob + head * stride_oh + rows64[:, None] * stride_om
    row_ok = offs_m < seq_q
    row_sum = tl.sum(row_sum, 1)
    row_ent = tl.sum(row_ent, 1)
    inv_sum = 1.0 / row_sum
    tl.store(
        o_base + offs_d_main[None, :] * stride_od,
        (acc_main * inv_sum[:, None]).to(Out.dtype.element_ty),
        mask=row_ok[:, None] & (offs_d_main[None, :] < HEAD_DIM),
    )
    if HAS_TAIL:
        tl.store(
            o_base + offs_d_tail[None, :] * stride_od,
            (acc_tail * inv_sum[:, None]).to(Out.dtype.element_ty),
            mask=row_ok[:, None] & (offs_d_tail[None, :] < HEAD_DIM),
        )
    if RETURN_ENTROPY:
        entropy = tl.log(row_sum) - 0.6931471805599453 * (row_ent * inv_sum)  # ln(2)
        # Exact entropy is >= 0; rounding can leave -1e-7 on rows with one dominant logit. A
        # comparison, not tl.maximum: maximum drops NaN, and a NaN input must give a NaN entropy
        # (a diverged run must not read as perfectly peaked attention).
        entropy = tl.where(entropy < 0.0, 0.0, entropy)
        ent_ptrs = Ent + batch_head.to(tl.int64) * seq_q + offs_m
        tl.store(ent_ptrs, entropy, mask=row_ok)
    if RETURN_LSE:
        lse = 0.6931471805599453 * row_max + tl.log(row_sum)  # ln(2) m + ln l
        tl.store(Lse + batch_head.to(tl.int64) * seq_q + offs_m, lse, mask=row_ok)


def head_dim_split(head_dim: int) -> tuple[int, int]:
    """``(main, tail)`` tile widths covering ``head_dim``: a power of two, plus a power-of-two tail
    (>= 16, the smallest dot) or 0. Splitting pays when it covers fewer columns than padding."""
    padded = max(16, triton.next_power_of_2(head_dim))
    main = max(16, padded // 2 if padded > head_dim else padded)
    if main >= head_dim:
        return padded, 0
    tail = max(16, triton.next_power_of_2(head_dim - main))
    if main + tail >= padded:
        return padded, 0
    return main, tail


def tile_constexprs(head_dim: int, arch: int = _DEFAULT_ARCH) -> dict[str, int | bool]:
    """The kernel's head-dim constexprs ``D_MAIN``, ``D_TAIL``, ``HAS_TAIL`` (from
    :func:`head_dim_split`; an unused tail is 16 wide, the smallest dot, and compiled away) and
    the loop's shape for sm_``arch``: ``EARLY_V`` loads a tile's values before its softmax on
    sm_90 and newer (wgmma reads them from shared memory: K and V then share one wait) and right
    before their dot on older GPUs (mma.sync holds them in registers, and loaded early they
    spill); ``ROW_PARTS`` keeps 8 partial row sums per row on sm_90 and newer, 1 before."""
    main, tail = head_dim_split(head_dim)
    hopper = arch >= 90
    return {
        "D_MAIN": main,
        "D_TAIL": max(tail, 16),
        "HAS_TAIL": tail > 0,
        "EARLY_V": hopper,
        "ROW_PARTS": 8 if hopper else 1,
    }


def stride_align(*tensors: torch.Tensor, limit: int = 16) -> int:
    """The largest power of two (at most ``limit``) dividing every batch, head and row stride of
    ``tensors`` (dims of size 1 are never stepped along, so their strides do not count)."""
    align = limit
    for tensor in tensors:
        for size, stride in zip(tensor.shape[:3], tensor.stride()[:3], strict=True):
            while size > 1 and stride % align:
                align //= 2
    return align


# Scales at or above this are clamped to it: softmax(scale * x) is then already its limit, hard
# attention on the maximal logits, for every pair of fp32 logits more than 6e-18 apart (their
# gap times 2^64 exceeds 100 nats), and scale * |q.k| stays finite for any fp16 input. Without the
# clamp a scale such as 1e38 overflows the scaled logits to inf and the kernel returns NaN.
HARD_SCALE = 2.0**64
# The kernel gets scale * log2(e) as an fp32 argument; below the smallest normal fp32 it would
# round to zero or a subnormal that GPUs flush to zero, and 0 * (-inf) on masked key columns gives
# NaN. Such scales (and 0) are uniform attention to fp32 precision: computed without the kernel.
_MIN_KERNEL_SCALE_LOG2 = 2.0**-126
# Launch plans (grid, scalar arguments, constexprs and the autotuner's pick), one per call
# signature; bounded so that a stream of new shapes cannot grow it without limit.
_MAX_PLANS = 4096
_INF = math.inf
_PLANS: dict[tuple, _LaunchPlan] = {}


class _LaunchPlan:
    """Everything about a launch that depends only on the call signature (device, dtype, shapes,
    strides, entropy on/off, precision): built once, then a repeat call only allocates the outputs
    and launches. ``config`` is the autotuner's pick, reused while the autotuner still holds the
    same ``configs`` list and ``cache`` (tests swap both to force a tile)."""

    __slots__ = (
        "args", "cache", "config", "configs", "empty", "entropy_like", "grid", "launch_meta",
        "meta",
    )  # fmt: skip

    def __init__(self, entropy_like: torch.Tensor, empty: bool):
        self.entropy_like = entropy_like
        self.empty = empty
        self.args = self.meta = self.config = self.configs = self.cache = None
        self.grid = self.launch_meta = None


def _plan_for(query) -> _LaunchPlan:
    batch, heads, seq_q, _ = query.shape
    template = torch.empty(1, device=query.device, dtype=torch.float32)
    return _LaunchPlan(template.expand(batch, heads, seq_q), seq_q == 0 or batch * heads == 0)


def _kernel_meta(
    query, key, value, out, return_entropy: bool, allow_tf32: bool, return_lse: bool = False
) -> dict:
    """The kernel's constexprs for this call signature."""
    head_dim = query.shape[3]
    # The precision switch only affects fp32 inputs; fp16/bf16 dots are exact products with fp32
    # accumulation and keep Triton's default, so they take the tensor-core path as usual.
    precision = "ieee" if query.dtype == torch.float32 and not allow_tf32 else "tf32"
    return {
        "HEAD_DIM": head_dim,
        **tile_constexprs(head_dim, _arch(query)),
        "RETURN_ENTROPY": bool(return_entropy),
        "RETURN_LSE": bool(return_lse),
        "DOT_PRECISION": precision,
        "STRIDE_ALIGN": stride_align(query, key, value, out),
    }


def _scalar_args(query, key, value, out) -> tuple:
    """Strides, heads, lengths and length buckets: the kernel's non-constexpr integer args."""
    batch, heads, seq_q, _ = query.shape
    seq_k = key.shape[2]
    return (
        *query.stride(),
        *key.stride(),
        *value.stride(),
        *out.stride(),
        heads,
        seq_q,
        seq_k,
        _bucket(seq_q),
        _bucket(seq_k),
        triton.next_power_of_2(batch * heads),  # BATCH_HEADS_BUCKET: grid size in the key
    )


def _uniform_attention(query, key, value, out, entropy, lse=None) -> None:
    """Attention at scale 0 into ``out``, ``entropy`` and ``lse``: the mean of the values, entropy
    and log-sum-exp ``ln seq_k`` (the logits are 0 to fp32 precision). ``0 * x`` is NaN for a
    non-finite ``x``, so a row whose query is not finite, and every row of a head with a
    non-finite key, gets NaN (as the kernel would at any scale)."""
    seq_k = key.shape[2]
    bad = ~torch.isfinite(query).all(-1) | ~torch.isfinite(key).all(-1).all(-1, keepdim=True)
    mean = value.to(torch.float32).mean(2, keepdim=True).expand(out.shape)
    out.copy_(torch.where(bad[..., None], float("nan"), mean))
    for row_value in (entropy, lse):
        if row_value is not None:
            row_value.copy_(torch.where(bad, float("nan"), math.log(seq_k)))


def flash_attention_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    return_entropy: bool = False,
    allow_tf32: bool = False,
    return_lse: bool = False,
) -> (
    tuple[torch.Tensor, torch.Tensor | None]
    | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]
):
    """Launch the fused forward kernel. No input validation beyond the scale: the op layer does it.

    Args:
        query: ``(batch, heads, seq_q, head_dim)``, any strides, fp16/bf16/fp32.
        key, value: ``(batch, heads, seq_k, head_dim)``, same dtype and device as ``query``.
        scale: softmax scale applied to ``query @ key^T`` (runtime value: no recompile per scale),
            finite and ``>= 0``. Scales too small for fp32 (below ``2^-126 / log2(e)``, and 0)
            give uniform attention without the kernel; scales above ``HARD_SCALE`` (2^64) are
            clamped to it, where softmax is already hard attention on the maximal logits.
        return_entropy: also compute the per-row attention entropy (nats) in the same pass.
        allow_tf32: let fp32 inputs use TF32 tensor-core dots; ``False`` keeps IEEE fp32.
        return_lse: also return the per-row log-sum-exp of the scaled logits (nats).

    Returns:
        ``(out, entropy)``, or ``(out, entropy, lse)`` with ``return_lse``: ``out`` has ``query``'s
        shape, dtype and memory layout; ``entropy`` is a contiguous fp32 ``(batch, heads, seq_q)``
        tensor, or ``None`` when not requested; ``lse`` likewise (always a tensor). A NaN
        in a query row gives that row NaN; a NaN in a key gives its head NaN (no clamp hides it).

    The launch plan (strides, tile constexprs, stride alignment, the autotuned tile) is cached
    per call signature, so a repeat call costs two allocations and the launch itself.
    """
    scale = float(scale)
    if not 0.0 <= scale < _INF:  # also false for NaN
        raise ValueError(f"scale must be finite and >= 0, got {scale!r}")
    scale_log2 = (scale if scale < HARD_SCALE else HARD_SCALE) * _LOG2E
    signature = (
        query.get_device(),  # -1 on the CPU; CUDA's device index otherwise
        query.dtype,
        query.shape,
        query.stride(),
        key.shape,
        key.stride(),
        value.stride(),
        return_entropy,
        allow_tf32,
        return_lse,
    )
    plan = _PLANS.get(signature)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[signature] = _plan_for(query)
    out = torch.empty_like(query)
    # empty_like of the plan's zero-stride template: a contiguous fp32 (batch, heads, seq_q)
    # tensor, with less argument parsing than torch.empty(shape, device=, dtype=).
    entropy = torch.empty_like(plan.entropy_like) if return_entropy else None
    lse = torch.empty_like(plan.entropy_like) if return_lse else None
    result = (out, entropy, lse) if return_lse else (out, entropy)
    if plan.empty:
        return result
    if scale_log2 < _MIN_KERNEL_SCALE_LOG2:
        _uniform_attention(query, key, value, out, entropy, lse)
        return result
    kernel = _attention_fwd_kernel
    ent_arg = out if entropy is None else entropy
    lse_arg = out if lse is None else lse
    if (
        plan.config is not None
        and kernel.configs is plan.configs
        and kernel.cache is plan.cache
    ):  # fmt: skip
        # The autotuner's own run would recompute its key from every argument (tens of
        # microseconds of Python) only to find this same config in its cache.
        kernel.fn.run(
            query, key, value, out, ent_arg, lse_arg, scale_log2, *plan.args,
            grid=plan.grid, warmup=False, **plan.launch_meta,
        )  # fmt: skip
        return result
    if plan.meta is None:  # (args first: another thread may test meta meanwhile)
        plan.args = _scalar_args(query, key, value, out)
        plan.meta = _kernel_meta(query, key, value, out, return_entropy, allow_tf32, return_lse)
    batch, heads, seq_q, _ = query.shape

    def grid(meta):
        return (triton.cdiv(seq_q, meta["BLOCK_M"]) * batch * heads,)

    kernel[grid](query, key, value, out, ent_arg, lse_arg, scale_log2, *plan.args, **plan.meta)
    if isinstance(kernel, triton.runtime.Autotuner) and kernel.best_config.pre_hook is None:
        config = kernel.best_config
        plan.grid = grid(config.kwargs)
        plan.launch_meta = {**plan.meta, **config.all_kwargs()}
        plan.configs, plan.cache = kernel.configs, kernel.cache
        plan.config = config  # last: the fast path above starts using the plan once it is set
    return result


__all__ = [
    "HARD_SCALE",
    "MAX_HEAD_DIM",
    "SUPPORTED_DTYPES",
    "flash_attention_forward",
    "head_dim_split",
    "interpreting",
    "stride_align",
    "tile_constexprs",
]
