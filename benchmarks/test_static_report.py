"""``benchmarks/static_report.py``: its tables and target check on synthetic compile records (the
compilation itself is tested by ``tests/test_kernel_compile.py``)."""

from __future__ import annotations

from benchmarks import static_report


def _record(arch, head_dim, entropy, per_logit, first=True, block_n=128):
    return {
        "dtype": "fp16",
        "head_dim": head_dim,
        "arch": arch,
        "entropy": entropy,
        "layout": "blhd",
        "first": first,
        "config": {"BLOCK_M": 128, "BLOCK_N": block_n, "warps": 8, "stages": 3},
        "registers": 200,
        "stack_bytes": 0,
        "shared_bytes": 114720,
        "inner_loop": {
            "instructions": round(per_logit * 128 * block_n / 256),
            "ex2": 128 * block_n // 256,
            "instructions_per_logit": per_logit,
            "mma": 12,
            "ex2_per_logit": 1.0,
            "fp32_per_logit": 3.25,
            "body": 500,
            "conditional": 44,
        },
    }


def test_variants_cover_every_arch_head_dim_and_entropy():
    batch = static_report.variants()
    assert len(batch) == 2 * 5 * 2
    assert {(v[1], v[2], v[3]) for v in batch} == {
        (d, a, e) for d in (40, 64, 80, 128, 160) for a in (90, 80) for e in (False, True)
    }
    assert all(v[0] == "fp16" and v[4] == "blhd" and v[5] == "first" for v in batch)


def test_target_lines_judge_the_default_tile_at_d64_sm90():
    met = [_record(90, 64, False, 6.9), _record(90, 64, True, 7.4)]
    lines = static_report.target_lines(met, "3.6.0")
    assert "6.90 (met)" in lines[1] and "1.072x (met)" in lines[2]
    missed = [_record(90, 64, False, 7.19), _record(90, 64, True, 8.70)]
    lines = static_report.target_lines(missed, "3.9.0")
    assert "7.19 (not met)" in lines[1] and "1.210x (not met)" in lines[2]
    # another tile or GPU does not count for the target
    other = [_record(80, 64, False, 6.0), _record(90, 64, True, 6.0, first=False)]
    assert static_report.target_lines(other, "3.9.0")[0].endswith("not measured.")


def test_markdown_has_a_row_per_record_and_the_on_off_ratio():
    records = [_record(90, 64, False, 7.0), _record(90, 64, True, 7.7)]
    markdown = static_report.render_markdown(records, "3.9.0")
    rows = [line for line in markdown.splitlines() if line.startswith("| 90 | 64 |")]
    assert len(rows) == 2
    assert "| 1.100 |" in rows[1] and "128x128 w8 s3" in rows[0]


def test_throughput_model_takes_the_largest_of_issue_mufu_and_tensor_cores():
    off, on = _record(90, 64, False, 7.125), _record(90, 64, True, 8.281)
    # 64 logits per thread: 456 and 530 instructions, 64 ex2; 8 warps of 32 threads.
    cycles = static_report.tile_cycles(off)
    assert cycles == {"issue": 456 * 8 / 4, "mufu": 64 * 256 / 16, "mma": 1024.0, "bound": 1024.0}
    assert static_report.tile_cycles(on)["issue"] == 530 * 8 / 4
    ratio = static_report.modelled_on_over_off([off, on])
    assert list(ratio.values()) == [530 * 8 / 4 / 1024]
    # sm_80 has half the tensor-core rate per SM; d=80 pads to 64 + 16.
    sm80 = static_report.tile_cycles(_record(80, 80, False, 8.0))
    assert sm80["mma"] == 4 * 128 * 128 * 80 / 2048
    lines = static_report.target_lines([off, on], "3.6.0")
    assert "on/off 1.035x" in lines[-1] and "1.140x on this loop" in lines[-2]


def test_render_rewrites_the_markdown_of_a_result_file(tmp_path):
    import json

    path = tmp_path / "static.json"
    records = [_record(90, 64, False, 7.0), _record(90, 64, True, 7.7)]
    path.write_text(json.dumps({"triton": "3.6.0", "records": records}))
    assert static_report.main(["--render", str(path)]) == 0
    markdown = (tmp_path / "static.md").read_text()
    assert markdown == static_report.render_markdown(records, "3.6.0")
    assert "| 1.100 |" in markdown
