"""Instruction counts of an attention kernel's key loop from its SASS (``cuobjdump -sass``).

No Triton, torch or GPU needed: ``tests/aot_compile.py`` counts our compiled kernels with it and
``benchmarks/static_report.py --peers`` counts PyTorch's FlashAttention-2 kernels with it, so
both are counted by one method.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SASS_LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(@!?U?P[0-9T]\s+)?([A-Z0-9_.]+)([^;]*);")
BRANCH = re.compile(r"0x([0-9a-f]+)")
# Opcodes counted as FP32 arithmetic (the softmax work): adds, multiplies, FMAs, min/max,
# selects and compares on fp32. Conversions (F2F, F2FP packing) are counted apart.
FP32_OPS = ("FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "FSETP", "FSET", "FCHK", "FRND")
MMA_OPS = ("HGMMA", "HMMA")
# Instructions followed from an out-of-line branch target before giving up on it returning.
OUT_OF_LINE_LIMIT = 4096


@dataclass(frozen=True)
class Instruction:
    address: int
    predicated: bool
    opcode: str
    operands: str

    def target(self) -> int | None:
        """The branch target of a ``BRA``, else ``None``."""
        if self.opcode != "BRA":
            return None
        found = BRANCH.search(self.operands)
        return int(found.group(1), 16) if found else None


def parse_sass(text: str) -> list[Instruction]:
    """Every SASS instruction of ``cuobjdump -sass`` output, in address order."""
    found = (SASS_LINE.match(line) for line in text.splitlines())
    return [
        Instruction(int(m.group(1), 16), m.group(2) is not None, m.group(3), m.group(4))
        for m in found
        if m
    ]


def dump_sass(cuobjdump: Path, cubin: bytes | Path, function: str | None = None) -> str:
    """``cuobjdump -sass`` of a cubin (bytes or a file), of one ``function`` if given."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(cubin) if isinstance(cubin, Path) else Path(folder) / "kernel.cubin"
        if not isinstance(cubin, Path):
            path.write_bytes(cubin)
        command = [str(cuobjdump), "-sass", *(["-fun", function] if function else []), str(path)]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def out_of_line(code: list[Instruction], target: int, start: int, end: int) -> list | None:
    """The instructions run from ``target`` (outside the loop ``[start, end]``) until an
    unconditional branch back into the loop: work the compiler placed out of line (e.g.
    FlashAttention-2's prefetch of the next key tile). ``None`` if that code does not come back
    (a loop exit), falling through conditional branches on the way."""
    index = next((i for i, ins in enumerate(code) if ins.address == target), None)
    if index is None:
        return None
    segment = []
    for ins in code[index : index + OUT_OF_LINE_LIMIT]:
        segment.append(ins)
        if ins.opcode in ("EXIT", "RET") and not ins.predicated:
            return None
        goes = ins.target()
        if goes is not None and not ins.predicated:
            return segment if start <= goes <= end else None
    return None


def loop_counts(code: list[Instruction], logits_per_thread: int) -> dict | None:
    """Instruction counts of the key loop's steady state, per thread and per logit.

    The key loop is the backward branch (``BRA`` to a lower address) whose body holds the most
    MMA instructions; its body runs once per full key tile, and each thread handles
    ``logits_per_thread`` logits of a tile. The steady-state path is the body with every
    conditional forward branch inside it taken (``conditional``: the instructions so skipped,
    e.g. our kernel's conditional rescale once the row maxima have settled), plus the code that
    a branch on that path runs out of line before it comes back into the loop
    (``out_of_line``). Static counts, an estimate of the work, not a timing."""
    best = None
    for ins in code:
        goes = ins.target()
        if goes is None or goes >= ins.address:
            continue
        body = [i for i in code if goes <= i.address <= ins.address]
        mma = sum(i.opcode.startswith(MMA_OPS) for i in body)
        if best is None or mma > best[0]:
            best = (mma, body)
    if best is None:
        return None
    body = best[1]
    start, end = body[0].address, body[-1].address
    skipped = set()
    for ins in body[:-1]:
        goes = ins.target()
        if goes is not None and ins.address < goes <= end:
            skipped.update(i.address for i in body if ins.address < i.address < goes)
    path = [i for i in body if i.address not in skipped]
    extra = []
    for ins in path[:-1]:
        goes = ins.target()
        if goes is not None and not start <= goes <= end:
            extra += out_of_line(code, goes, start, end) or []
    ops = [i.opcode for i in path + extra]
    counts = {
        "instructions": len(ops),
        "mma": sum(op.startswith(MMA_OPS) for op in ops),
        "ex2": sum(op == "MUFU.EX2" for op in ops),
        "fp32": sum(op.split(".")[0] in FP32_OPS for op in ops),
        "convert": sum(op.startswith(("F2F", "F2FP")) for op in ops),
    }
    per_logit = {f"{k}_per_logit": round(v / logits_per_thread, 3) for k, v in counts.items()}
    return {
        **counts,
        "body": len(body),
        "conditional": len(skipped),
        "out_of_line": len(extra),
        "logits_per_thread": logits_per_thread,
        **per_logit,
    }
