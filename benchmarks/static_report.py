"""Static report of the attention kernel: compiled ahead of time for sm_90 and sm_80, no GPU.

Usage (from the repository root)::

    python benchmarks/static_report.py                 # default tiles, writes the result files
    python benchmarks/static_report.py --all-configs   # every tile the autotuner may pick
    python benchmarks/static_report.py --jobs 2 --output benchmarks/results/NAME
    python benchmarks/static_report.py --render benchmarks/results/NAME.json  # tables only

For each architecture (sm_90, sm_80), head dim (40, 64, 80, 128, 160) and entropy off / on, it
compiles the kernel the way a launch on real tensors would (``tests/aot_compile.py``: fp16,
diffusers' ``(B, L, H, D)`` layout, N = 4096, Triton's bundled ``ptxas``) with the first tile of
the autotuning list (the tile used without autotuning, ``ENTROPY_ATTN_AUTOTUNE=0``) or, with
``--all-configs``, every tile the pruner keeps, and reads the cubin with the bundled
``cuobjdump``: registers per thread, stack bytes (register spills), shared memory, and the key
loop's instruction counts per logit (all instructions, MMA, ``MUFU.EX2``, FP32 arithmetic) on
the loop's common path (the conditional rescale skipped). These are static counts of one pass
through the loop body, an estimate of the work per logit, not a timing.

Next to the counts, a throughput model (``tile_cycles``): a key tile's cycles per SM as the
largest of its instruction issue, its ``MUFU.EX2`` work and its tensor-core work at the whitepaper
rates of A100/H100 (``SM_THROUGHPUT``), and from it the entropy-on over entropy-off ratio the
counts imply for time when the three overlap perfectly. Also a bound, not a timing.

With ``--peers WHEEL`` (a CUDA build of PyTorch, downloaded, never installed: ``pip download
--no-deps torch==2.14.1 -d DIR``) it also reads the FlashAttention-2 forward kernels that SDPA's
FLASH backend runs (``pytorch_flash::flash_fwd_kernel``) out of the wheel's
``torch/lib/libtorch_cuda.so``: for each of our head dims, the template PyTorch pads it to and
the tile its launcher picks on A100 and H100 (fp16, non-causal, no dropout, N = 4096), counted by
the same method (``tests/sass_count.py``, work kept out of line included), side by side with
ours; and the throughput model calibrated against published measurements (``CALIBRATION``),
our predicted TFLOP/s labelled as a model. Nothing of the wheel is written into the results but
the counts and the kernels' names.

Writes ``<output>.json`` (one record per compiled variant) and ``<output>.md`` (the tables);
the default output is ``benchmarks/results/static-sm90-sm80-triton<version>``
(``-peers-torch<version>`` with ``--peers``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AOT_SCRIPT = REPO_ROOT / "tests" / "aot_compile.py"
SASS_COUNT = REPO_ROOT / "tests" / "sass_count.py"
SEQ = 4096  # the sequence length tests/aot_compile.py specialises for
HEAD_DIMS = (40, 64, 80, 128, 160)
ARCHES = (90, 80)
# The issue's target for the default tile at d=64, fp16, sm_90.
TARGET_OFF_PER_LOGIT = 7.0
TARGET_ON_OVER_OFF = 1.08
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
# PyTorch's FA2 launcher (flash_fwd_launch_template.h), fp16, non-causal, no dropout, on A100
# and H100 (neither is "sm8x" there): the tile per template head dim, (BLOCK_M, BLOCK_N, warps).
FA2_TILES = {32: (128, 128, 4), 64: (128, 128, 4), 96: (128, 64, 4), 128: (128, 64, 4),
             192: (128, 64, 8), 256: (128, 64, 8)}  # fmt: skip
FA2_SYMBOL = re.compile(
    rb"_ZN13pytorch_flash16flash_fwd_kernelI23Flash_fwd_kernel_traitsILi(\d+)ELi(\d+)ELi(\d+)"
    rb"ELi(\d+)ELb[01]ELb[01]EN7cutlass(6half_t|10bfloat16_t)E[!-~]*?((?:Lb[01]E){6,8})"
    rb"EEvNS_16Flash_fwd_paramsE"
)
# The kernel's template flags, in order, by how many there are (PyTorch 2.x versions).
FA2_FLAGS = {
    8: ("dropout", "causal", "local", "alibi", "even_mn", "even_k", "softcap", "return_softmax"),
    6: ("dropout", "causal", "local", "even_mn", "even_k", "return_softmax"),
}


def variants(
    arches=ARCHES, head_dims=HEAD_DIMS, dtype: str = "fp16", layout: str = "blhd", which="first"
) -> list[list]:
    """Variant lists in ``tests/aot_compile.py``'s format, one per (arch, head dim, entropy)."""
    return [
        [dtype, head_dim, arch, entropy, layout, which]
        for arch in arches
        for head_dim in head_dims
        for entropy in (False, True)
    ]


def compile_variants(batch: list[list], jobs: int = 2, progress=print) -> list[dict]:
    """Compile ``batch`` in ``jobs`` subprocesses of ``tests/aot_compile.py``; records in order."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    chunks = [batch[i::jobs] for i in range(jobs) if batch[i::jobs]]

    def run(chunk: list[list]) -> list[dict]:
        records = []
        with subprocess.Popen(
            [sys.executable, str(AOT_SCRIPT), json.dumps(chunk)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ) as process:
            for line in process.stdout:  # one JSON line per compiled variant, as it finishes
                if line.startswith("{"):
                    records.append(json.loads(line))
                    progress(describe(records[-1]))
            error = process.stderr.read()
        if process.returncode != 0:
            raise RuntimeError(f"aot_compile.py failed:\n{error[-4000:]}")
        return records

    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        results = list(pool.map(run, chunks))
    records = [r for chunk in results for r in chunk]
    order = {tuple(v[:5]): i for i, v in enumerate(batch)}
    return sorted(records, key=lambda r: order[variant_key(r)])


def variant_key(record: dict) -> tuple:
    return tuple(record[k] for k in ("dtype", "head_dim", "arch", "entropy", "layout"))


def tile_name(record: dict) -> str:
    c = record["config"]
    return f"{c['BLOCK_M']}x{c['BLOCK_N']} w{c['warps']} s{c['stages']}"


def describe(record: dict) -> str:
    loop = record.get("inner_loop") or {}
    return (
        f"sm_{record['arch']} d={record['head_dim']} entropy={'on' if record['entropy'] else 'off'}"
        f" {tile_name(record)}: {record['registers']} regs, stack {record['stack_bytes']} B,"
        f" {loop.get('instructions_per_logit')} instr/logit"
    )


# ptxas's C7514 note (tests/aot_compile.py: wgmma_serialized); None: no wgmma, or not checked.
SERIALISED = {True: "YES (C7514)", False: "no", None: "—"}


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


def modelled_on_over_off(records: list[dict]) -> dict[tuple, float]:
    """Entropy-on over entropy-off tile time by the throughput model (``tile_cycles``)."""
    per = {}
    for r in records:
        cycles = tile_cycles(r)
        if cycles is not None:
            key = (r["arch"], r["head_dim"], r["dtype"], r["layout"], tile_name(r))
            per.setdefault(key, {})[r["entropy"]] = cycles["bound"]
    return {k: v[True] / v[False] for k, v in per.items() if True in v and False in v}


def on_over_off(records: list[dict]) -> dict[tuple, float]:
    """Entropy-on over entropy-off instructions per logit, per (arch, head dim, dtype, tile)."""
    per = {}
    for r in records:
        key = (r["arch"], r["head_dim"], r["dtype"], r["layout"], tile_name(r))
        per.setdefault(key, {})[r["entropy"]] = r["inner_loop"]["instructions_per_logit"]
    return {k: v[True] / v[False] for k, v in per.items() if True in v and False in v and v[False]}


def target_lines(records: list[dict], triton_version: str) -> list[str]:
    """The issue's target at d=64, fp16, sm_90, on the default (first) tile."""
    first = [
        r
        for r in records
        if r["arch"] == 90 and r["head_dim"] == 64 and r["dtype"] == "fp16" and r["first"]
    ]
    off = next((r for r in first if not r["entropy"]), None)
    on = next((r for r in first if r["entropy"]), None)
    if off is None or on is None:
        return ["Target (d=64, fp16, sm_90, default tile): not measured."]
    off_count = off["inner_loop"]["instructions_per_logit"]
    ratio = on["inner_loop"]["instructions_per_logit"] / off_count
    met_off = "met" if off_count <= TARGET_OFF_PER_LOGIT else "not met"
    met_on = "met" if ratio <= TARGET_ON_OVER_OFF else "not met"
    lines = [
        f"Targets at d=64, fp16, sm_90, default tile {tile_name(off)}, Triton {triton_version}:",
        f"- entropy off <= {TARGET_OFF_PER_LOGIT} instructions per logit: {off_count:.2f}"
        f" ({met_off})",
        f"- entropy on <= {TARGET_ON_OVER_OFF}x entropy off: {ratio:.3f}x ({met_on})",
        # The entropy adds t += p * (u - m) for every logit: at least one FMA per logit on the
        # CUDA cores, whatever the rest of the loop costs.
        f"- floor for any kernel that sums the entropy term on the CUDA cores (>= 1 FMA per"
        f" logit): {(off_count + 1) / off_count:.3f}x on this loop,"
        f" {(TARGET_OFF_PER_LOGIT + 1) / TARGET_OFF_PER_LOGIT:.3f}x at {TARGET_OFF_PER_LOGIT}"
        f" instructions per logit",
    ]
    on_cycles, off_cycles = tile_cycles(on), tile_cycles(off)
    if on_cycles is not None and off_cycles is not None:

        def limits(cycles):
            return ", ".join(f"{k} {cycles[k]:.0f}" for k in ("issue", "mufu", "mma"))

        lines.append(
            f"- throughput model (cycles per key tile per SM; a bound, not a timing): entropy off"
            f" {limits(off_cycles)}; on {limits(on_cycles)}: on/off"
            f" {on_cycles['bound'] / off_cycles['bound']:.3f}x"
        )
    return lines


def render_markdown(
    records: list[dict], triton_version: str, peers: list[dict] | None = None
) -> str:
    ratios = on_over_off(records)
    lines = [
        f"# Static kernel report (Triton {triton_version}, compiled ahead of time, no GPU)",
        "",
        "Written by `benchmarks/static_report.py`: fp16, diffusers' (B, L, H, D) layout, N = 4096."
        " Per-logit counts are the key loop's common path (conditional rescale skipped) divided"
        " by the logits one thread handles per key tile; static counts, not timings.",
        "",
        *target_lines(records, triton_version),
        "",
        "`model on/off` is the throughput model's entropy-on over entropy-off tile time (cycles"
        " per SM of the largest of issue, MUFU and tensor-core work; see `tile_cycles`), a bound"
        " from static counts, not a timing. `wgmma serialised`: whether ptxas issues each sm_90"
        " wgmma only after the previous one finished (its C7514 note), which the counts do not"
        " show.",
        "",
        "| sm | d | entropy | tile | first | regs | stack B | smem KiB | instr/logit | on/off"
        " | model on/off | MMA/tile | EX2/logit | FP32/logit | loop body (cond.)"
        " | wgmma serialised |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    modelled = modelled_on_over_off(records)
    for r in records:
        loop = r["inner_loop"] or {}
        key = (r["arch"], r["head_dim"], r["dtype"], r["layout"], tile_name(r))
        ratio = f"{ratios[key]:.3f}" if r["entropy"] and key in ratios else ""
        model = f"{modelled[key]:.3f}" if r["entropy"] and key in modelled else ""
        lines.append(
            f"| {r['arch']} | {r['head_dim']} | {'on' if r['entropy'] else 'off'}"
            f" | {tile_name(r)} | {'yes' if r['first'] else ''} | {r['registers']}"
            f" | {r['stack_bytes']} | {r['shared_bytes'] / 1024:.1f}"
            f" | {loop.get('instructions_per_logit', '')} | {ratio} | {model}"
            f" | {loop.get('mma', '')}"
            f" | {loop.get('ex2_per_logit', '')} | {loop.get('fp32_per_logit', '')}"
            f" | {loop.get('body', '')} ({loop.get('conditional', '')})"
            f" | {SERIALISED.get(r.get('wgmma_serialized'), '')} |"
        )
    if peers:
        lines += ["", *peer_markdown(records, peers)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Peers: PyTorch's FlashAttention-2 forward kernels, read out of a CUDA wheel


def load_sass_count():
    """``tests/sass_count.py`` (the counting method shared with ``tests/aot_compile.py``)."""
    spec = importlib.util.spec_from_file_location("sass_count", SASS_COUNT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sass_count", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return sys.modules["sass_count"]


def cuda_tool(name: str) -> Path:
    """A CUDA binary utility bundled with Triton (``cuobjdump``, ``nvdisasm``)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"Triton's bundled {name} is missing ({path})")
    return path


def wheel_torch_version(wheel: Path) -> str:
    found = re.match(r"torch-([^-]+)-", wheel.name)
    if found is None:
        raise ValueError(f"--peers must be a torch wheel (torch-<version>-...whl), got {wheel}")
    return found.group(1)


def extract_cubins(wheel: Path, folder: Path, progress=print) -> list[Path]:
    """Every cubin of the wheel's ``torch/lib/libtorch_cuda.so``, extracted into ``folder`` by
    ``cuobjdump -xelf all`` (several GB for a CUDA 13 build)."""
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist() if n.endswith("torch/lib/libtorch_cuda.so")]
        if not members:
            raise ValueError(f"{wheel} has no torch/lib/libtorch_cuda.so: not a CUDA build")
        library = folder / "libtorch_cuda.so"
        progress(f"extracting {members[0]} from {wheel.name}")
        with archive.open(members[0]) as source, library.open("wb") as target:
            while chunk := source.read(1 << 24):
                target.write(chunk)
    cubins = folder / "elf"
    cubins.mkdir()
    progress("extracting its cubins (cuobjdump -xelf all)")
    subprocess.run(
        [str(cuda_tool("cuobjdump")), "-xelf", "all", str(library)],
        cwd=cubins,
        check=True,
        capture_output=True,
    )
    library.unlink()
    return sorted(cubins.glob("*.cubin"))


def fa2_kernels(cubins: list[Path], arches) -> list[dict]:
    """The fp16/bf16 ``pytorch_flash::flash_fwd_kernel`` instances in ``cubins`` for ``arches``:
    template head dim, tile, flags, symbol and cubin."""
    found, seen = [], set()
    for path in cubins:
        arch = re.search(r"\.sm_(\d+)\.cubin$", path.name)
        if arch is None or int(arch.group(1)) not in arches:
            continue
        data = path.read_bytes()
        if b"pytorch_flash16flash_fwd_kernel" not in data:
            continue
        for match in FA2_SYMBOL.finditer(data):
            bits = re.findall(rb"Lb([01])E", match.group(6))
            names = FA2_FLAGS.get(len(bits))
            if names is None or (arch.group(1), match.group(0)) in seen:
                continue  # the symbol table and the kernel's sections both name it
            seen.add((arch.group(1), match.group(0)))
            found.append(
                {
                    "arch": int(arch.group(1)),
                    "template_head_dim": int(match.group(1)),
                    "tile": tuple(int(match.group(i)) for i in (2, 3, 4)),
                    "dtype": "fp16" if match.group(5) == b"6half_t" else "bf16",
                    "flags": {n: b == b"1" for n, b in zip(names, bits, strict=True)},
                    "symbol": match.group(0).decode(),
                    "cubin": path,
                }
            )
    return found


def fa2_choice(head_dim: int, templates, seq: int = SEQ) -> dict:
    """What SDPA's FLASH backend runs for fp16, non-causal, no dropout, length ``seq``: the
    smallest compiled template head dim that fits, its tile, and its flags (``even_k`` only when
    the head dim is the template's; ``even_mn`` as PyTorch's launcher sets it)."""
    fitting = [t for t in templates if t >= head_dim]
    if not fitting:
        raise ValueError(f"no FlashAttention-2 template fits head_dim {head_dim}: {templates}")
    template = min(fitting)
    block_m, block_n, warps = FA2_TILES[template]
    even_k = head_dim == template
    even_mn = even_k and template <= 128 and seq % block_m == 0 and seq % block_n == 0
    flags = dict.fromkeys(FA2_FLAGS[8], False) | {"even_mn": even_mn, "even_k": even_k}
    return {"template_head_dim": template, "tile": (block_m, block_n, warps), "flags": flags}


def count_fa2(kernel: dict, head_dim: int, torch_version: str, sass_count) -> dict:
    """One peer record (the fields of our records that the tables use), counted like ours."""
    cuobjdump = cuda_tool("cuobjdump")
    block_m, block_n, warps = kernel["tile"]
    text = sass_count.dump_sass(cuobjdump, kernel["cubin"], kernel["symbol"])
    loop = sass_count.loop_counts(sass_count.parse_sass(text), block_m * block_n // (32 * warps))
    usage = subprocess.run(
        [str(cuobjdump), "-res-usage", "-fun", kernel["symbol"], str(kernel["cubin"])],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    registers = re.search(r"REG:(\d+)", usage)
    return {
        "peer": f"PyTorch {torch_version} FlashAttention-2",
        "torch": torch_version,
        "arch": kernel["arch"],
        "head_dim": head_dim,
        "dtype": kernel["dtype"],
        "template_head_dim": kernel["template_head_dim"],
        "padded_head_dim": kernel["template_head_dim"],
        "config": {"BLOCK_M": block_m, "BLOCK_N": block_n, "warps": warps},
        "flags": kernel["flags"],
        "symbol": kernel["symbol"],
        "registers": int(registers.group(1)) if registers else None,
        "inner_loop": loop,
    }


def peer_records(wheel: Path, arches, head_dims, progress=print) -> list[dict]:
    """FlashAttention-2's counts for every (arch, head dim), read from a CUDA torch wheel."""
    torch_version = wheel_torch_version(wheel)
    sass_count = load_sass_count()
    records = []
    with tempfile.TemporaryDirectory() as folder:
        kernels = fa2_kernels(extract_cubins(wheel, Path(folder), progress), set(arches))
        progress(f"{len(kernels)} flash_fwd_kernel instances for sm_{arches}")
        for arch in arches:
            here = [k for k in kernels if k["arch"] == arch and k["dtype"] == "fp16"]
            templates = sorted({k["template_head_dim"] for k in here})
            for head_dim in head_dims:
                want = fa2_choice(head_dim, templates)
                match = [
                    k
                    for k in here
                    if k["template_head_dim"] == want["template_head_dim"]
                    and k["tile"] == want["tile"]
                    and all(want["flags"].get(n, False) == v for n, v in k["flags"].items())
                ]
                if len(match) != 1:
                    raise RuntimeError(f"sm_{arch} d={head_dim}: {len(match)} kernels for {want}")
                records.append(count_fa2(match[0], head_dim, torch_version, sass_count))
                loop = records[-1]["inner_loop"]
                progress(
                    f"FA2 sm_{arch} d={head_dim} (template {want['template_head_dim']},"
                    f" tile {want['tile']}): {loop['instructions_per_logit']} instr/logit"
                    f" ({loop['out_of_line']} out of line)"
                )
    return records


def ours_for(records: list[dict], arch: int, head_dim: int, entropy: bool) -> dict | None:
    """Our default-tile fp16 record at (arch, head dim, entropy)."""
    return next(
        (
            r
            for r in records
            if r["arch"] == arch
            and r["head_dim"] == head_dim
            and r["entropy"] == entropy
            and r["dtype"] == "fp16"
            and r.get("first", True)
        ),
        None,
    )


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


def peer_rows(records: list[dict], peers: list[dict]) -> list[dict]:
    """One comparison per peer record: FA2's instructions per logit next to ours (entropy off
    and on), and the modelled and calibrated TFLOP/s."""
    factors = calibration(peers)
    rows = []
    for peer in peers:
        off = ours_for(records, peer["arch"], peer["head_dim"], False)
        on = ours_for(records, peer["arch"], peer["head_dim"], True)
        theirs = peer["inner_loop"]["instructions_per_logit"]
        row = {"arch": peer["arch"], "head_dim": peer["head_dim"], "peer": peer, "fa2": theirs}
        for name, ours in (("off", off), ("on", on)):
            count = ours["inner_loop"]["instructions_per_logit"] if ours else None
            row[name] = count
            row[f"{name}_ratio"] = count / theirs if count is not None else None
            row[f"{name}_model"] = modelled_tflops(ours) if ours else None
            row[f"{name}_calibrated"] = calibrated_tflops(ours, factors) if ours else None
        row["fa2_model"] = modelled_tflops(peer)
        row["fa2_calibrated"] = calibrated_tflops(peer, factors)
        row["ours_le_fa2"] = None if row["off"] is None or row["on"] is None else (
            row["off"] <= theirs and row["on"] <= theirs
        )  # fmt: skip
        rows.append(row)
    return rows


def peer_markdown(records: list[dict], peers: list[dict]) -> list[str]:
    """The peer table and the calibrated model, as Markdown lines."""
    if not peers:
        return []

    def num(value, digits=2):
        return "—" if value is None else f"{value:.{digits}f}"

    torch_version = peers[0]["torch"]
    lines = [
        f"## Ours vs PyTorch {torch_version}'s FlashAttention-2 (SDPA's FLASH backend)",
        "",
        "Instructions per logit on the key loop's steady-state path, both counted by"
        " `tests/sass_count.py` from the SASS (FA2's next-key-tile prefetch, which its compiler"
        " keeps out of line, included: `out of line`). FA2 is the kernel PyTorch's launcher runs"
        " for fp16, non-causal, no dropout, N = 4096 on A100/H100: the smallest compiled"
        " template head dim that fits (PyTorch pads 40 to 64, 80 to 96, 160 to 192) and its"
        " tile; ours is the default tile. Static counts, not timings.",
        "",
        "| sm | d | FA2 template, tile | FA2 instr/logit (out of line) | ours off | ours on"
        " | off/FA2 | on/FA2 | ours <= FA2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = peer_rows(records, peers)
    for row in rows:
        peer, config = row["peer"], row["peer"]["config"]
        verdict = {True: "yes", False: "NO", None: "—"}[row["ours_le_fa2"]]
        lines.append(
            f"| {row['arch']} | {row['head_dim']} | d{peer['template_head_dim']}"
            f" {config['BLOCK_M']}x{config['BLOCK_N']} w{config['warps']}"
            f" | {num(row['fa2'], 3)} ({peer['inner_loop']['out_of_line']})"
            f" | {num(row['off'], 3)} | {num(row['on'], 3)} | {num(row['off_ratio'], 3)}"
            f" | {num(row['on_ratio'], 3)} | {verdict} |"
        )
    factors = calibration(peers)
    lines += [
        "",
        "## Throughput model, calibrated (a model, not a measurement)",
        "",
        "`model`: TFLOP/s if every SM ran key tiles back to back at the throughput model's bound"
        " (largest of issue, MUFU and tensor-core cycles; `tile_cycles`) at the boost clock"
        " (A100 SXM4 108 SMs x 1.41 GHz, H100 SXM5 132 SMs x 1.83 GHz). It is a ceiling: on FA2"
        " it is above what FA2 measures. `calibrated` = model x (FA2 measured / FA2 modelled) at"
        " the nearest measured head dim (64 or 128), which assumes our kernel falls as far below"
        " its ceiling as FA2 does below its own: an assumption, not a measurement. On sm_90 the"
        " model rates FA2's mma.sync at the wgmma rate ours uses; whatever mma.sync loses there"
        " is in FA2's factor and so is charged to ours too.",
        "",
        f"Published measurements used ({CALIBRATION_SOURCES}).",
        "",
    ]
    for arch in sorted(factors):
        parts = ", ".join(
            f"d={d}: FA2 measured {PUBLISHED[arch]['FA2'][d]:.0f} / modelled"
            f" {PUBLISHED[arch]['FA2'][d] / f:.0f} = {f:.2f}"
            for d, f in sorted(factors[arch].items())
        )
        lines.append(f"- sm_{arch} ({GPUS[arch]['name']}) calibration factors: {parts}")
    for arch, kernels in PUBLISHED.items():
        peak = GPUS[arch]["sms"] * GPUS[arch]["clock_ghz"] * GPUS[arch]["flops"] / 1e3
        others = "; ".join(
            f"{name} " + ", ".join(f"d={d} {v:.0f} ({v / peak:.0%})" for d, v in sorted(by.items()))
            for name, by in kernels.items()
        )
        lines.append(f"- {GPUS[arch]['name']} published (share of {peak:.0f} peak): {others}")
    lines += [
        "",
        "| sm | d | FA2 model | FA2 calibrated | ours off model | ours off calibrated"
        " | ours on model | ours on calibrated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['arch']} | {row['head_dim']} | {num(row['fa2_model'], 0)}"
            f" | {num(row['fa2_calibrated'], 0)} | {num(row['off_model'], 0)}"
            f" | {num(row['off_calibrated'], 0)} | {num(row['on_model'], 0)}"
            f" | {num(row['on_calibrated'], 0)} |"
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--all-configs", action="store_true", help="every selectable tile")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHES))
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(HEAD_DIMS))
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16"))
    parser.add_argument("--jobs", type=int, default=2, help="compiler processes (default 2)")
    parser.add_argument("--output", type=Path, default=None, help="result path without suffix")
    parser.add_argument(
        "--peers",
        type=Path,
        metavar="WHEEL",
        help="a CUDA torch wheel (pip download --no-deps torch==2.14.1): count its"
        " FlashAttention-2 kernels next to ours and calibrate the throughput model",
    )
    parser.add_argument(
        "--ours",
        type=Path,
        metavar="JSON",
        help="with --peers: take our counts from this result JSON instead of compiling",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="rewrite the Markdown next to an existing result JSON (no compilation)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        payload = json.loads(args.render.read_text())
        markdown = render_markdown(payload["records"], payload["triton"], payload.get("peers"))
        args.render.with_suffix(".md").write_text(markdown)
        print(markdown)
        return 0
    import triton

    def progress(line: str) -> None:
        print(line, flush=True)

    if args.ours is not None:
        if args.peers is None:
            raise SystemExit("--ours needs --peers")
        ours = json.loads(args.ours.read_text())
        records, triton_version = ours["records"], ours["triton"]
    else:
        batch = variants(
            args.arch, args.head_dims, args.dtype, which="all" if args.all_configs else "first"
        )
        triton_version = triton.__version__
        progress(f"compiling {len(batch)} variants with Triton {triton_version}")
        records = compile_variants(batch, jobs=args.jobs, progress=progress)
    peers = None
    if args.peers is not None:
        peers = peer_records(args.peers, args.arch, args.head_dims, progress=progress)
    output = args.output or REPO_ROOT / "benchmarks" / "results" / (
        f"static-sm{'-sm'.join(map(str, args.arch))}-triton{triton_version}"
        + ("-all" if args.all_configs else "")
        + (f"-peers-torch{peers[0]['torch']}" if peers else "")
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {"triton": triton_version, "records": records}
    if peers:
        payload["peers"] = peers
    json_path, markdown_path = (output.parent / f"{output.name}{s}" for s in (".json", ".md"))
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    markdown = render_markdown(records, triton_version, peers)
    markdown_path.write_text(markdown)
    print(markdown)
    print(f"results: {json_path} and {markdown_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
