"""The report's host-cost and CPU-speed targets (issue #11) and host table, on synthetic numbers.

The numbers are made up for the test and live only in ``tmp_path``; the expected ratios are worked
out by hand from them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.report_markdown import render_markdown
from benchmarks.report_results import ResultFile, load_result
from benchmarks.report_targets import evaluate_targets, host_targets


def _bench(name: str, median: float, **info) -> dict:
    return {
        "name": name,
        "fullname": f"benchmarks/synthetic.py::{name}",
        "extra_info": info,
        "stats": {"median": median, "rounds": 3, "data": [median] * 3},
    }


def _write(tmp_path: Path, benchmarks: list[dict]) -> ResultFile:
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"benchmarks": benchmarks, "environment": {}}), encoding="utf-8")
    return load_result(path)


ENTROPY_SHAPE = dict(
    device="cpu", dtype="float32", suite="cpu-entropy", attention="self", batch=2, heads=5,
    seq_q=1024, seq_k=1024, head_dim=64, case="cpu-entropy-self-b2h5q1024k1024d64",
)  # fmt: skip


def _result(tmp_path: Path) -> ResultFile:
    host = dict(device="cpu", dtype="float32", impl="host", baseline="a call")
    unet = dict(device="cpu", dtype="float32", impl="unet", model="tiny-unet")
    return _write(
        tmp_path,
        [
            _bench("sdpa", 10e-6, variant="sdpa-tiny", **host),
            _bench("torch", 14e-6, variant="torch-path-tiny", **host),  # 1.4x: met
            _bench("off", 18e-6, variant="triton-attention-off", **host),  # 0.9: met
            _bench("on", 24e-6, variant="triton-attention-on", **host),  # 1.2: not met
            _bench(
                "proc",
                50e-6,
                impl="host-processor",
                variant="AttnProcessor2_0",
                device="cpu",
                baseline="stock",
            ),  # fmt: skip
            _bench("e-sdpa", 0.1, impl="sdpa", variant="default", entropy=False, **ENTROPY_SHAPE),
            _bench(
                "e-off", 0.1, impl="entropy_attn", variant="torch", entropy=False, **ENTROPY_SHAPE
            ),  # fmt: skip
            _bench(
                "e-on", 0.19, impl="entropy_attn", variant="torch", entropy=True, **ENTROPY_SHAPE
            ),  # 1.9x: met  # fmt: skip
            _bench("u-stock", 1.0, variant="stock", image_size=128, **unet),
            _bench("u-record", 1.4, variant="enable-record-entropy", image_size=128, **unet),
            _bench("u2-stock", 2.0, variant="stock", image_size=256, **unet),
            _bench("u2-record", 2.2, variant="enable-record-entropy", image_size=256, **unet),
        ],
    )


def test_host_targets_from_synthetic_numbers(tmp_path: Path) -> None:
    targets = {t.name: t for t in evaluate_targets(_result(tmp_path))}

    def expect(name: str, status: str, worst: float, n_met: int, n_checks: int) -> None:
        target = targets[name]
        assert target.status == status, (name, target.status)
        assert math.isclose(target.worst.ratio, worst, rel_tol=1e-9), (name, target.worst)
        assert (sum(c.met for c in target.checks), len(target.checks)) == (n_met, n_checks)

    expect("host cost per attention() call, CUDA path", "not met", 24e-6 / 20e-6, 1, 2)
    expect("PyTorch path overhead", "met", 1.4, 1, 1)
    expect("CPU entropy path vs plain SDPA", "met", 1.9, 1, 1)
    expect("CPU UNet step, enable-record-entropy vs stock", "not met", 1.4, 1, 2)


def test_host_targets_not_measured_without_entries(tmp_path: Path) -> None:
    targets = host_targets(_write(tmp_path, []))
    assert len(targets) == 4 and {t.status for t in targets} == {"not measured"}


def test_host_section_in_markdown(tmp_path: Path) -> None:
    markdown = render_markdown(_result(tmp_path))
    section = markdown.split("## Host cost per call\n", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if "triton-attention-on" in line)
    assert "24.0 µs" in row and "2.40x" in row
    row = next(line for line in section.splitlines() if "AttnProcessor2_0" in line)
    assert "50.0 µs" in row and "1.00x of AttnProcessor2_0" in row
