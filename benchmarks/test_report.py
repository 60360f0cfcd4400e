"""The benchmark report (``report.py`` and its ``report_*`` parts) on a small synthetic result
file: cells and met/not-met marks.

The numbers below are made up for the test and live only in ``tmp_path``; the expected ratios are
worked out by hand from them.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.report_results import load_result
from benchmarks.report_targets import evaluate_targets

DEVICE_NAME = "Synthetic GPU (test fixture)"


def _bench(name: str, median: float, **info) -> dict:
    return {
        "name": name,
        "fullname": f"benchmarks/synthetic.py::{name}",
        "extra_info": info,
        "stats": {"median": median, "rounds": 3, "data": [median * 0.99, median, median * 1.01]},
    }


def _attention(
    case: str,
    suite: str,
    batch: int,
    heads: int,
    seq_q: int,
    seq_k: int,
    head_dim: int,
    *,
    device: str = "cuda",
    dtype: str = "float16",
) -> dict:
    element = 2 if dtype in ("float16", "bfloat16") else 4
    return {
        "case": case,
        "suite": suite,
        "attention": "self" if seq_q == seq_k else "cross",
        "batch": batch,
        "heads": heads,
        "seq_q": seq_q,
        "seq_k": seq_k,
        "head_dim": head_dim,
        "device": device,
        "dtype": dtype,
        "flops": 4 * batch * heads * seq_q * seq_k * head_dim,
        "out_bytes": batch * heads * seq_q * head_dim * element,
    }


def _entropy_bytes(shape: dict) -> int:
    return shape["batch"] * shape["heads"] * shape["seq_q"] * 4


def _shape_entries(shape: dict, times: dict[str, float], extra_on: int) -> list[dict]:
    """Benchmarks of one shape; ``times`` maps off/on/<SDPA backend>/materialise to seconds."""
    out = []
    ent = _entropy_bytes(shape)
    for key, seconds in times.items():
        if key in ("off", "on"):
            entropy = key == "on"
            info = dict(
                shape,
                impl="entropy_attn",
                variant="triton",
                entropy=entropy,
                entropy_bytes=ent if entropy else 0,
                peak_extra_bytes=extra_on if entropy else shape["out_bytes"],
                peak_mem_bytes=10 * 2**20,
            )
        elif key == "materialise":
            info = dict(
                shape,
                impl="materialise",
                variant="torch",
                entropy=True,
                entropy_bytes=ent,
                peak_extra_bytes=500 * 2**20,
                peak_mem_bytes=None,
            )
        else:
            info = dict(
                shape,
                impl="sdpa",
                variant=key,
                entropy=False,
                entropy_bytes=0,
                peak_extra_bytes=shape["out_bytes"],
                peak_mem_bytes=9 * 2**20,
            )
        out.append(_bench(f"{shape['case']}-{key}", seconds, **info))
    return out


SHAPE_A = _attention("sd21-self-768px-L0", "sd21", 2, 5, 9216, 9216, 64)
SHAPE_B = _attention("sd1x-self-768px-L1", "sd1x", 2, 8, 2304, 2304, 80)
SHAPE_C = _attention("sd21-self-224px-L2", "sd21", 2, 20, 49, 49, 64)  # below N = 784


def _unet(
    model: str, size: int, mode: str, seconds: float, device: str, impl: str = "unet"
) -> dict:
    return _bench(
        f"{impl}-{model}-{size}-{mode}",
        seconds,
        impl=impl,
        steps=50 if impl == "generation" else None,
        variant=mode,
        device=device,
        dtype="float16" if device == "cuda" else "float32",
        model=model,
        image_size=size,
        peak_mem_bytes=None,
    )


def _synthetic_result() -> dict:
    floor_a = SHAPE_A["out_bytes"] + _entropy_bytes(SHAPE_A)
    floor_b = SHAPE_B["out_bytes"] + _entropy_bytes(SHAPE_B)
    benchmarks = [
        *_shape_entries(
            SHAPE_A,
            {
                "off": 2.0e-3,
                "on": 2.08e-3,
                "FLASH_ATTENTION": 2.2e-3,
                "EFFICIENT_ATTENTION": 2.6e-3,
                "MATH": 40e-3,
                "materialise": 50e-3,
            },
            extra_on=floor_a,
        ),
        *_shape_entries(
            SHAPE_B,
            {"off": 1.0e-3, "on": 1.1e-3, "FLASH_ATTENTION": 0.85e-3, "materialise": 15e-3},
            extra_on=10 * floor_b,
        ),
        *_shape_entries(SHAPE_C, {"off": 10e-6, "on": 10e-6, "FLASH_ATTENTION": 5e-6}, extra_on=0),
        _unet("sd21-base", 768, "stock", 0.100, "cuda"),
        _unet("sd21-base", 768, "enable", 0.101, "cuda"),
        _unet("sd21-base", 768, "enable-record-entropy", 0.110, "cuda"),
        _unet("tiny", 128, "stock", 0.010, "cpu"),
        _unet("tiny", 128, "enable", 0.0104, "cpu"),
        _unet("tiny", 256, "stock", 0.020, "cpu"),
        _unet("tiny", 256, "enable", 0.0212, "cpu"),
        # Whole generations: reported, never counted in the UNet-step targets (the 768² one would
        # fail the 2% target, the CPU one the 5% target).
        _unet("sd21-base", 768, "stock", 5.0, "cuda", impl="generation"),
        _unet("sd21-base", 768, "enable", 5.5, "cuda", impl="generation"),
        _unet("sd21-base", 768, "enable-record-entropy", 6.0, "cuda", impl="generation"),
        _unet("tiny", 256, "stock", 1.0, "cpu", impl="generation"),
        _unet("tiny", 256, "enable", 1.5, "cpu", impl="generation"),
        # A benchmark run with --benchmark-disable has no median: it must be ignored.
        {"name": "no-stats", "extra_info": {"impl": "sdpa"}, "stats": None},
    ]
    return {
        "benchmarks": benchmarks,
        "datetime": "2000-01-01T00:00:00+00:00",
        "environment": {"device_name": DEVICE_NAME, "devices_used": ["cpu", "cuda"]},
        "skipped": [{"test": "t::sdpa[CUDNN_ATTENTION]", "reason": "No available kernel"}],
    }


@pytest.fixture
def result_path(tmp_path: Path) -> Path:
    path = tmp_path / "synthetic-gpu-2000-01-01.json"
    path.write_text(json.dumps(_synthetic_result()), encoding="utf-8")
    return path


def _section(markdown: str, title: str) -> str:
    """The text of the ``## title`` section."""
    head = f"## {title}\n"
    assert head in markdown, f"no section {title!r}"
    return markdown.split(head, 1)[1].split("\n## ", 1)[0]


def _row(section: str, *needles: str) -> list[str]:
    """Cells of the one table row of ``section`` containing every needle."""
    rows = [line for line in section.splitlines() if all(n in line for n in needles)]
    assert len(rows) == 1, f"expected one row with {needles}, got {rows}"
    return [cell.strip() for cell in rows[0].strip().strip("|").split("|")]


def test_targets_from_synthetic_numbers(result_path: Path) -> None:
    targets = {t.name: t for t in evaluate_targets(load_result(result_path))}

    def expect(name: str, status: str, worst: float, n_met: int, n_checks: int) -> None:
        target = targets[name]
        assert target.status == status, (name, target.status)
        assert math.isclose(target.worst.ratio, worst, rel_tol=1e-9), (name, target.worst)
        assert sum(c.met for c in target.checks) == n_met
        assert len(target.checks) == n_checks

    # Shape C (N = 49) is outside the kernel-speed and fused scopes, inside on/off and memory.
    expect("kernel vs fastest SDPA, head dim 64", "met", 2.2 / 2.0, 1, 1)
    expect("kernel vs fastest SDPA, head dims 40/80/160", "not met", 0.85, 0, 1)
    expect("entropy on vs off", "not met", 1.1, 2, 3)
    expect("fused vs materialising entropy", "not met", 15e-3 / 1.1e-3, 1, 2)
    expect("fused entropy memory is O(N)", "not met", 10.0, 2, 3)
    expect("SD-2.1 UNet step at 768², enable vs stock", "met", 1.01, 1, 1)
    expect("SD-2.1 UNet step at 768², enable-record-entropy vs stock", "not met", 1.1, 0, 1)
    expect("CPU UNet step, enable vs stock", "not met", 1.06, 1, 2)


def test_target_without_measurements_is_not_measured(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"benchmarks": [], "environment": {}}), encoding="utf-8")
    targets = evaluate_targets(load_result(path))
    assert {t.status for t in targets} == {"not measured"}


def test_markdown_cells(result_path: Path, tmp_path: Path) -> None:
    assert report.main([str(result_path), "--out-dir", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / f"{result_path.stem}.md").read_text(encoding="utf-8")
    assert f"Device: **{DEVICE_NAME}**" in markdown
    plot = tmp_path / "out" / f"{result_path.stem}-tflops.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.stat().st_size > 0 and f"]({plot.name})" in markdown
    else:  # the tables stand without matplotlib (e.g. on a bare GPU image); no dangling link
        assert not plot.exists() and "## TFLOP/s vs N" not in markdown

    kernel = _section(markdown, "Attention: entropy-attn vs PyTorch SDPA")
    tflops_a = SHAPE_A["flops"] / 2.0e-3 / 1e12
    cells = _row(kernel, "| sd21-self-768px-L0 |")
    assert cells[:8] == [
        "cuda",
        "float16",
        "sd21-self-768px-L0",
        "2x5x9216x9216x64",
        "triton",
        "2.000 ms",
        f"{tflops_a:.3g}",
        "10.0",
    ]
    # SDPA columns: FLASH, EFFICIENT, CUDNN (skipped in this file), MATH.
    assert cells[8:12] == ["2.200 ms", "2.600 ms", "skipped/absent", "40.000 ms"]
    assert cells[12] == "FLASH_ATTENTION"
    assert cells[-2:] == ["1.10x", ">= 1.00x: met"]
    assert _row(kernel, "| sd1x-self-768px-L1 |")[-2:] == ["0.85x", ">= 0.90x: not met"]
    assert _row(kernel, "| sd21-self-224px-L2 |")[-2:] == ["0.50x", "—"]

    on_off = _section(markdown, "Entropy on vs off")
    assert _row(on_off, "| sd21-self-768px-L0 |")[4:] == ["2.000 ms", "2.080 ms", "1.04x", "met"]
    assert _row(on_off, "| sd1x-self-768px-L1 |")[-2:] == ["1.10x", "not met"]

    fused = _section(markdown, "Fused vs materialising entropy")
    cells = _row(fused, "| sd21-self-768px-L0 |")
    assert cells[4:7] == ["2.080 ms", "50.000 ms", "24.04x"]
    assert cells[-2:] == ["met", "met"]
    cells = _row(fused, "| sd1x-self-768px-L1 |")
    assert cells[6:] == ["13.64x", "57.7", "500.0", "5.8", "not met", "not met"]

    unet = _section(markdown, "UNet step")
    cells = _row(unet, "| sd21-base |")
    assert cells[4:9] == ["100.000 ms", "101.000 ms", "1.01x", "110.000 ms", "1.10x"]
    assert cells[-1] == "enable <= 1.02x: met; record <= 1.08x: not met"
    assert _row(unet, "| tiny |", "256px")[-1] == "enable <= 1.05x: not met"
    assert _row(unet, "| tiny |", "128px")[-1] == "enable <= 1.05x: met"

    generation = _section(markdown, "Whole generation")
    assert "with 50 steps" in generation
    cells = _row(generation, "| sd21-base |")
    assert cells[4:9] == ["5.000 s", "5.500 s", "1.10x", "6.000 s", "1.20x"]
    assert cells[-1] == "—"
    assert _row(generation, "| tiny |", "256px")[-5:] == ["1.50x", "—", "—", "— / — / —", "—"]

    targets = _section(markdown, "Targets")
    cells = _row(targets, "| CPU UNet step, enable vs stock |")
    assert cells[3:] == ["1.06x", "float32 tiny 256px", "1/2", "not met"]
    assert _row(targets, "| kernel vs fastest SDPA, head dim 64 |")[-1] == "met"
    assert "No available kernel" in _section(markdown, "Skipped")
