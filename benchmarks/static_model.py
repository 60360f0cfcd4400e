"""The throughput model of the static kernel report: cycles per key tile per SM, no GPU.

``tile_cycles``: a key tile's cycles per SM as the largest of its instruction issue, its
``MUFU.EX2`` work and its tensor-core work at the whitepaper rates of A100/H100
(``SM_THROUGHPUT``); from it, the entropy-on over entropy-off ratio the counts imply for time when
the three overlap perfectly, and ``modelled_tflops``. A bound, not a timing.

The calibration (``calibration``, ``calibrated_tflops``) scales the model by how far FA2's
modelled speed lies above its published measurements (``PUBLISHED``).
"""

from __future__ import annotations

# Per-SM throughput per clock, from NVIDIA's A100 and H100 whitepapers: warp instructions issued
# (four schedulers), MUFU results (16 special-function units; ex2 is one), dense fp16 tensor-core
# flops (1024 FMA on A100, 2048 on H100). The throughput model below divides a key tile's work by
# these: a lower bound on the tile's time if everything overlapped perfectly, not a timing.
SM_THROUGHPUT = {
    80: {"issue": 4, "mufu": 16, "mma_flops": 2048},
    90: {"issue": 4, "mufu": 16, "mma_flops": 4096},
}
# Per-GPU clock (the boost clock NVIDIA's dense fp16 peak is quoted at) and SM count: A100 SXM4
# 108 SMs x 2048 flops x 1.41 GHz = 312 TFLOP/s, H100 SXM5 132 x 4096 x 1.83 GHz = 989 TFLOP/s.
GPUS = {80: {"name": "A100 SXM4", "sms": 108, "clock_ghz": 1.41, "flops": 2048},
        90: {"name": "H100 SXM5", "sms": 132, "clock_ghz": 1.83, "flops": 4096}}  # fmt: skip
# Published forward-pass measurements (fp16, non-causal, TFLOP/s counted as 4 * B * H * N^2 * d).
# FA2 on A100: the FlashAttention-2 paper (Dao 2023, arXiv 2307.08691), forward pass up to 73% of
# the A100's 312, about 230 at head dims 64 and 128. H100 SXM5: the FlashAttention-3 paper (Shah
# et al. 2024, arXiv 2407.08608, forward-speed figure, N = 4096; values as labelled on its bars):
# FA2, the Triton tutorial kernel, cuDNN and FA3.
PUBLISHED = {
    80: {"FA2": {64: 230.0, 128: 230.0}},
    90: {
        "FA2": {64: 321.0, 128: 368.0},
        "Triton tutorial": {64: 400.0, 128: 389.0},
        "cuDNN": {64: 408.0, 128: 609.0},
        "FA3": {64: 476.0, 128: 638.0},
    },
}
CALIBRATION_SOURCES = (
    "A100 FA2 ~230 TFLOP/s: FlashAttention-2 paper (arXiv 2307.08691), forward pass up to 73%"
    " of 312 at head dims 64/128; H100 SXM5 at N = 4096, head dim 64 / 128: FA2 321 / 368,"
    " Triton tutorial 400 / 389, cuDNN 408 / 609, FA3 476 / 638: FlashAttention-3 paper"
    " (arXiv 2407.08608), forward-speed figure"
)


def tile_cycles(record: dict) -> dict[str, float] | None:
    """Cycles per SM for one key tile by the throughput model: issue (instructions of the loop's
    common path x warps / 4), MUFU (ex2 per thread x threads / 16) and tensor cores
    (``4 * BLOCK_M * BLOCK_N * head dim`` flops of ``Q K^T`` and ``P V`` over the padded head dim,
    main plus tail tile); ``bound`` is the largest. ``None`` without loop counts."""
    loop = record.get("inner_loop") or {}
    rates = SM_THROUGHPUT.get(record["arch"])
    if rates is None or "instructions" not in loop or "ex2" not in loop:
        return None
    from entropy_attn.kernels.attention_fwd import head_dim_split

    config = record["config"]
    threads = 32 * config["warps"]
    padded = record.get("padded_head_dim") or sum(head_dim_split(record["head_dim"]))
    cycles = {
        "issue": loop["instructions"] * config["warps"] / rates["issue"],
        "mufu": loop["ex2"] * threads / rates["mufu"],
        "mma": 4 * config["BLOCK_M"] * config["BLOCK_N"] * padded / rates["mma_flops"],
    }
    cycles["bound"] = max(cycles.values())
    return cycles


def modelled_tflops(record: dict) -> float | None:
    """TFLOP/s by the throughput model: one key tile's useful flops (``4 * BLOCK_M * BLOCK_N *
    head dim``, the unpadded head dim) every ``tile_cycles(record)["bound"]`` cycles on every SM
    at the GPU's boost clock (``GPUS``). A ceiling, not a timing."""
    cycles = tile_cycles(record)
    gpu = GPUS.get(record["arch"])
    if cycles is None or gpu is None:
        return None
    config = record["config"]
    flops = 4 * config["BLOCK_M"] * config["BLOCK_N"] * record["head_dim"]
    return gpu["sms"] * gpu["clock_ghz"] * 1e9 * flops / cycles["bound"] / 1e12


def calibration(peers: list[dict]) -> dict[int, dict[int, float]]:
    """Per arch and measured head dim: published FA2 TFLOP/s over the model's FA2 TFLOP/s (how
    far the model's ceiling is above what FA2 really does)."""
    factors: dict[int, dict[int, float]] = {}
    for peer in peers:
        measured = PUBLISHED.get(peer["arch"], {}).get("FA2", {}).get(peer["head_dim"])
        modelled = modelled_tflops(peer)
        if measured is not None and modelled:
            factors.setdefault(peer["arch"], {})[peer["head_dim"]] = measured / modelled
    return factors


def calibrated_tflops(record: dict, factors: dict[int, dict[int, float]]) -> float | None:
    """The model's TFLOP/s times the calibration factor of the nearest measured head dim."""
    modelled = modelled_tflops(record)
    per_arch = factors.get(record["arch"])
    if modelled is None or not per_arch:
        return None
    nearest = min(per_arch, key=lambda d: (abs(d - record["head_dim"]), d))
    return modelled * per_arch[nearest]
