"""Result files of the benchmark suites, loaded, and their entries grouped into comparable rows.

``load_result`` reads one pytest-benchmark JSON (``benchmarks/run.py``, ``benchmarks/gpu_check.py``)
into ``Entry`` objects (``extra_info`` plus the median of the timed rounds); ``shape_rows`` groups
the attention entries timed on one shape, ``unet_rows`` the UNet steps or whole generations of one
model and size. Every ratio the report prints is taken within one such row of one file.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class Entry:
    """One benchmark of a result file: its ``extra_info`` and the median of its rounds."""

    name: str
    info: dict[str, Any]
    median_s: float
    rounds: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.info.get(key, default)

    @property
    def is_attention(self) -> bool:
        return self.get("impl") in ("entropy_attn", "sdpa", "materialise", "lse")

    @property
    def shape_key(self) -> tuple:
        """Entries with the same key timed the same attention call shape on the same device."""
        return tuple(
            self.get(k)
            for k in (
                "device",
                "dtype",
                "suite",
                "attention",
                "batch",
                "heads",
                "seq_q",
                "seq_k",
                "head_dim",
            )
        )

    @property
    def tflops(self) -> float | None:
        flops = self.get("flops")
        return flops / self.median_s / 1e12 if flops and self.median_s else None

    @property
    def shape(self) -> str:
        return "x".join(str(self.get(k)) for k in ("batch", "heads", "seq_q", "seq_k", "head_dim"))


@dataclass
class ResultFile:
    """A loaded result file."""

    path: Path
    environment: dict[str, Any]
    entries: list[Entry]
    skipped: list[dict[str, str]]
    datetime: str | None
    parity: list[dict[str, Any]] = field(default_factory=list)  # benchmarks/gpu_check.py
    auto: list[dict[str, Any]] = field(default_factory=list)  # gpu_check.py's auto stage

    @property
    def device_name(self) -> str:
        return self.environment.get("device_name") or "unknown device (no environment section)"


def load_result(path: str | Path) -> ResultFile:
    """Read a pytest-benchmark JSON written by ``benchmarks/run.py``."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = []
    for bench in data.get("benchmarks", []):
        stats = bench.get("stats") or {}
        median = stats.get("median")
        if median is None or not math.isfinite(median) or median <= 0:
            continue
        entries.append(
            Entry(
                name=bench.get("fullname") or bench.get("name", "?"),
                info=dict(bench.get("extra_info") or {}),
                median_s=float(median),
                rounds=int(stats.get("rounds") or len(stats.get("data") or [])),
            )
        )
    return ResultFile(
        path=path,
        environment=data.get("environment") or {},
        entries=entries,
        skipped=list(data.get("skipped") or []),
        datetime=data.get("datetime"),
        parity=list(data.get("parity") or []),
        auto=list(data.get("auto") or []),
    )


# ---------------------------------------------------------------------------------------------
# Comparisons (all within one file)


@dataclass
class ShapeRow:
    """Everything timed on one attention shape, for one entropy-attn backend."""

    key: tuple
    case: str
    candidate_variant: str | None
    off: Entry | None = None
    on: Entry | None = None
    sdpa: dict[str, Entry] = field(default_factory=dict)
    materialise: Entry | None = None
    lse: Entry | None = None  # the LSE identity with stock SDPA (benchmarks/gpu_check.py)

    @property
    def sample(self) -> Entry:
        for entry in (self.off, self.on, self.materialise, self.lse, *self.sdpa.values()):
            if entry is not None:
                return entry
        raise ValueError("empty row")

    @property
    def fastest_sdpa(self) -> tuple[str, Entry] | None:
        if not self.sdpa:
            return None
        return min(self.sdpa.items(), key=lambda item: item[1].median_s)

    @property
    def speed_vs_sdpa(self) -> float | None:
        """Fastest SDPA time / entropy-attn time (entropy off): > 1 means entropy-attn is faster."""
        fastest = self.fastest_sdpa
        if fastest is None or self.off is None:
            return None
        return fastest[1].median_s / self.off.median_s

    @property
    def on_over_off(self) -> float | None:
        if self.on is None or self.off is None:
            return None
        return self.on.median_s / self.off.median_s

    @property
    def fused_speedup(self) -> float | None:
        """Materialising time / fused entropy-on time."""
        if self.on is None or self.materialise is None:
            return None
        return self.materialise.median_s / self.on.median_s

    @property
    def lse_speedup(self) -> float | None:
        """LSE-identity time / fused entropy-on time."""
        if self.on is None or self.lse is None:
            return None
        return self.lse.median_s / self.on.median_s


def shape_rows(result: ResultFile) -> list[ShapeRow]:
    """Group the attention entries of one file by shape; one row per entropy-attn backend."""
    by_key: dict[tuple, list[Entry]] = defaultdict(list)
    for entry in result.entries:
        if entry.is_attention:
            by_key[entry.shape_key].append(entry)
    rows = []
    for key, entries in by_key.items():
        sdpa = {e.get("variant"): e for e in entries if e.get("impl") == "sdpa"}
        materialise = next((e for e in entries if e.get("impl") == "materialise"), None)
        lse = next((e for e in entries if e.get("impl") == "lse"), None)
        variants = sorted({e.get("variant") for e in entries if e.get("impl") == "entropy_attn"})
        for variant in variants or [None]:
            row = ShapeRow(
                key=key,
                case=entries[0].get("case", "?"),
                candidate_variant=variant,
                sdpa=sdpa,
                materialise=materialise,
                lse=lse,
            )
            for e in entries:
                if e.get("impl") == "entropy_attn" and e.get("variant") == variant:
                    if e.get("entropy"):
                        row.on = e
                    else:
                        row.off = e
            rows.append(row)
    rows.sort(key=_row_order)
    return rows


def _row_order(row: ShapeRow) -> tuple:
    e = row.sample
    return (
        str(e.get("device")),
        str(e.get("dtype")),
        str(e.get("suite")),
        str(e.get("attention")),
        e.get("image_size") or 0,
        e.get("level") or 0,
        e.get("seq_q") or 0,
        e.get("head_dim") or 0,
        str(row.candidate_variant),
    )


@dataclass(frozen=True)
class UnetRow:
    """One UNet step or one whole generation (model, size, device, dtype) in its three modes."""

    device: str
    dtype: str
    model: str
    image_size: int
    modes: dict[str, Entry]
    impl: str = "unet"

    def ratio(self, mode: str) -> float | None:
        stock, other = self.modes.get("stock"), self.modes.get(mode)
        if stock is None or other is None:
            return None
        return other.median_s / stock.median_s


def unet_rows(result: ResultFile, impl: str = "unet") -> list[UnetRow]:
    """Group the entries of one file with ``impl`` (``"unet"``: one step, ``"generation"``: a
    whole generation) by (device, dtype, model, size)."""
    groups: dict[tuple, dict[str, Entry]] = defaultdict(dict)
    for entry in result.entries:
        if entry.get("impl") == impl:
            key = (
                entry.get("device"),
                entry.get("dtype"),
                entry.get("model"),
                entry.get("image_size"),
            )
            groups[key][entry.get("variant")] = entry
    rows = [UnetRow(*key, modes=modes, impl=impl) for key, modes in groups.items()]
    rows.sort(key=lambda r: (str(r.device), str(r.model), r.image_size or 0, str(r.dtype)))
    return rows
