"""The static report's peers: PyTorch's FlashAttention-2 forward kernels, read out of a CUDA wheel.

``static_report.py --peers WHEEL`` (a CUDA build of PyTorch, downloaded, never installed: ``pip
download --no-deps torch==2.14.1 -d DIR``) reads the FlashAttention-2 forward kernels that SDPA's
FLASH backend runs (``pytorch_flash::flash_fwd_kernel``) out of the wheel's
``torch/lib/libtorch_cuda.so``: for each of our head dims, the template PyTorch pads it to and
the tile its launcher picks on A100 and H100 (fp16, non-causal, no dropout, N = 4096), counted by
the same method (``tests/sass_count.py``, work kept out of line included), side by side with
ours; and the throughput model calibrated against published measurements
(``static_model.PUBLISHED``), our predicted TFLOP/s labelled as a model. Nothing of the wheel is
written into the results but the counts and the kernels' names.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from benchmarks.static_model import (
    CALIBRATION_SOURCES,
    GPUS,
    PUBLISHED,
    calibrated_tflops,
    calibration,
    modelled_tflops,
)

SASS_COUNT = Path(__file__).resolve().parent.parent / "tests" / "sass_count.py"
SEQ = 4096  # the sequence length tests/aot_compile.py specialises for
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
