"""The report's sections for ``benchmarks/gpu_check.py``'s result file: ``backend="auto"``'s
decisions and the large UNet steps, read back from the file as ``report.py`` reads it.

The numbers are made up for the test and live only in ``tmp_path``; the expected cells are worked
out by hand from them.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import gpu_check
from benchmarks.report_gpu_check import auto_lines, unet_large_lines
from benchmarks.report_markdown import render_markdown
from benchmarks.report_results import load_result, unet_rows

AUTO_RECORDS = [
    {"case": "sd21-512-l0", "key": "float16-d64-blhd-q4096-k4096", "backend": "triton"}
    | {"fused_s": 100e-6, "sdpa_s": 120e-6, "cached": False, "env_override": None}
    | {"auto_call_s": 101e-6, "sdpa_call_s": 121e-6, "auto_over_sdpa": 101 / 121},
    {"case": "cross", "key": "float16-d64-blhd-q4096-k128", "backend": "torch"}
    | {"fused_s": 30e-6, "sdpa_s": 25e-6, "cached": True, "env_override": None}
    | {"auto_call_s": 25.5e-6, "sdpa_call_s": 25e-6, "auto_over_sdpa": 1.02},
]
UNET_STEPS = [
    ("sdxl-base", 1536, "stock", 0.200),
    ("sdxl-base", 1536, "enable-triton", 0.190),
    ("sdxl-base", 1536, "enable-auto", 0.188),
    ("sd21-base", 768, "stock", 0.050),
    ("sd21-base", 768, "enable-triton", 0.055),
    ("sd21-base", 512, "stock", 0.030),  # the 512 px stage: not in this table
]


def _result_file(tmp_path: Path) -> Path:
    results = gpu_check.Results(tmp_path, "synthetic")
    results.auto.extend(AUTO_RECORDS)
    for model, size, mode, seconds in UNET_STEPS:
        info = {"device": "cuda", "impl": "unet", "variant": mode, "model": model}
        info["image_size"] = size
        results.benchmark(f"unet-{model}-{size}-{mode}", "unet", [seconds] * 5, 1, info)
    return results.write()


def test_auto_lines_list_each_decision_and_its_times(tmp_path: Path):
    loaded = load_result(_result_file(tmp_path))
    assert loaded.auto == AUTO_RECORDS
    rows = [line for line in auto_lines(loaded.auto) if "| float16" in line]
    assert rows[0] == (
        "| sd21-512-l0 | float16-d64-blhd-q4096-k4096 | triton | 100.0 | 120.0 | 101.0 | 121.0"
        " | 0.835 |"
    )
    assert "| torch (cached) | 30.0 | 25.0 | 25.5 | 25.0 | 1.020 |" in rows[1]
    assert auto_lines([]) == []


def test_unet_large_lines_give_each_mode_against_stock(tmp_path: Path):
    lines = unet_large_lines(unet_rows(load_result(_result_file(tmp_path))))
    rows = [line for line in lines if line.startswith("| sd")]
    assert rows == [
        "| sd21-base | 768 | 50.00 | 55.00 | 1.100 | — | — |",
        "| sdxl-base | 1536 | 200.00 | 190.00 | 0.950 | 188.00 | 0.940 |",
    ]
    assert unet_large_lines([]) == []


def test_the_report_of_a_gpu_check_file_has_both_sections(tmp_path: Path):
    """``python benchmarks/report.py FILE`` rebuilds the whole report of a copied result file."""
    markdown = render_markdown(load_result(_result_file(tmp_path)))
    assert "## backend='auto' (entropy_attn.op.autoselect)" in markdown
    assert "| sdxl-base | 1536 | 200.00 | 190.00 | 0.950 | 188.00 | 0.940 |" in markdown
