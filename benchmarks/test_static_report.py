"""``benchmarks/static_report.py``: its tables and target check on synthetic compile records (the
compilation itself is tested by ``tests/test_kernel_compile.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import static_model, static_peers, static_report


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
    cycles = static_model.tile_cycles(off)
    assert cycles == {"issue": 456 * 8 / 4, "mufu": 64 * 256 / 16, "mma": 1024.0, "bound": 1024.0}
    assert static_model.tile_cycles(on)["issue"] == 530 * 8 / 4
    ratio = static_report.modelled_on_over_off([off, on])
    assert list(ratio.values()) == [530 * 8 / 4 / 1024]
    # sm_80 has half the tensor-core rate per SM; d=80 pads to 64 + 16.
    sm80 = static_model.tile_cycles(_record(80, 80, False, 8.0))
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


# --- peers: PyTorch's FlashAttention-2 -----------------------------------------------------

FA2_64 = (
    "_ZN13pytorch_flash16flash_fwd_kernelI23Flash_fwd_kernel_traitsILi64ELi128ELi128ELi4ELb0ELb0E"
    "N7cutlass6half_tE19Flash_kernel_traitsILi64ELi128ELi128ELi4ES3_EELb0ELb0ELb0ELb0ELb1ELb1ELb0"
    "ELb0EEEvNS_16Flash_fwd_paramsE"
)


def test_fa2_choice_pads_like_pytorch():
    templates = [32, 64, 96, 128, 192, 256]
    choice = {d: static_peers.fa2_choice(d, templates) for d in (40, 64, 80, 128, 160)}
    assert {d: c["template_head_dim"] for d, c in choice.items()} == {
        40: 64, 64: 64, 80: 96, 128: 128, 160: 192
    }  # fmt: skip
    assert choice[64]["tile"] == (128, 128, 4) and choice[160]["tile"] == (128, 64, 8)
    # Only an exact head dim is "even K"; PyTorch then also drops "even MN" (and above 128).
    assert choice[64]["flags"]["even_k"] and choice[64]["flags"]["even_mn"]
    assert not choice[40]["flags"]["even_k"] and not choice[40]["flags"]["even_mn"]
    assert not any(choice[128]["flags"][k] for k in ("dropout", "causal", "softcap"))
    with pytest.raises(ValueError, match="head_dim 300"):
        static_peers.fa2_choice(300, templates)


def test_fa2_kernels_are_found_by_their_mangled_names(tmp_path):
    cubin = tmp_path / "libtorch_cuda.7.sm_80.cubin"
    cubin.write_bytes(b"\0junk\0" + FA2_64.encode() + b"\0.text." + FA2_64.encode() + b"\0")
    (tmp_path / "libtorch_cuda.8.sm_75.cubin").write_bytes(FA2_64.encode())  # arch not asked
    (kernel,) = static_peers.fa2_kernels(sorted(tmp_path.glob("*.cubin")), {80, 90})
    assert kernel["arch"] == 80 and kernel["template_head_dim"] == 64
    assert kernel["tile"] == (128, 128, 4) and kernel["dtype"] == "fp16"
    assert kernel["flags"] == static_peers.fa2_choice(64, [64])["flags"]
    assert kernel["symbol"] == FA2_64 and kernel["cubin"] == cubin


def _peer(arch, head_dim, per_logit, template, tile=(128, 128, 4), mma_bound=False):
    block_m, block_n, warps = tile
    logits = block_m * block_n // (32 * warps)
    instructions = round(per_logit * logits)
    return {
        "peer": "PyTorch 2.14.1 FlashAttention-2",
        "torch": "2.14.1",
        "arch": arch,
        "head_dim": head_dim,
        "dtype": "fp16",
        "template_head_dim": template,
        "padded_head_dim": template,
        "config": {"BLOCK_M": block_m, "BLOCK_N": block_n, "warps": warps},
        "inner_loop": {
            "instructions": instructions,
            "ex2": logits,
            "instructions_per_logit": per_logit,
            "out_of_line": 40,
        },
    }


def test_modelled_tflops_is_the_peak_when_the_tensor_cores_bound():
    record = _record(90, 64, False, 6.0)  # issue 384 x 8 / 4 = 768 < mma 1024 cycles
    assert static_model.tile_cycles(record)["bound"] == 1024.0
    assert static_model.modelled_tflops(record) == pytest.approx(132 * 4096 * 1.83e9 / 1e12)
    # FA2 on sm_90: 128x128 tile, 4 warps, 13 instructions per logit: issue-bound.
    peer = _peer(90, 64, 13.0, 64)
    cycles = static_model.tile_cycles(peer)
    assert cycles["issue"] == 13 * 128 * 4 / 4 and cycles["bound"] == cycles["issue"]
    expected = 132 * 1.83e9 * 4 * 128 * 128 * 64 / cycles["issue"] / 1e12
    assert static_model.modelled_tflops(peer) == pytest.approx(expected)


def test_peer_rows_compare_per_logit_and_calibrate_with_fa2s_measurement():
    records = [_record(90, 64, False, 6.9), _record(90, 64, True, 8.5)]
    records += [_record(90, 40, False, 7.7), _record(90, 40, True, 9.2)]
    peers = [_peer(90, 64, 13.0, 64), _peer(90, 40, 8.0, 64)]
    factors = static_peers.calibration(peers)
    fa2_model = static_model.modelled_tflops(peers[0])
    assert factors == {90: {64: pytest.approx(321.0 / fa2_model)}}  # d=40 has no measurement
    rows = {row["head_dim"]: row for row in static_peers.peer_rows(records, peers)}
    assert rows[64]["ours_le_fa2"] is True and rows[64]["on_ratio"] == pytest.approx(8.5 / 13)
    assert rows[40]["ours_le_fa2"] is False  # 9.2 > 8.0 with entropy on
    assert rows[64]["fa2_calibrated"] == pytest.approx(321.0)
    peak = 132 * 4096 * 1.83e9 / 1e12
    assert rows[64]["off_calibrated"] == pytest.approx(peak * 321.0 / fa2_model)
    markdown = static_report.render_markdown(records, "3.9.0", peers)
    assert "| 90 | 64 | d64 128x128 w4 | 13.000 (40) | 6.900 | 8.500 |" in markdown
    assert "| NO |" in markdown and "a model, not a measurement" in markdown


RESULTS = Path(__file__).resolve().parent / "results"
PEER_FILES = sorted(RESULTS.glob("static-*-peers-torch*.json"))


@pytest.mark.parametrize("path", PEER_FILES, ids=[p.name for p in PEER_FILES])
def test_committed_peer_report_ours_at_most_fa2_per_logit(path):
    """The committed static report with peers: at every head dim it covers, on sm_80 and
    sm_90, our default tile issues no more instructions per logit than PyTorch's
    FlashAttention-2, entropy off and on (read from the file, not recounted)."""
    payload = json.loads(path.read_text())
    peers = payload["peers"]
    assert {(p["arch"], p["head_dim"]) for p in peers} >= {
        (arch, d) for arch in (80, 90) for d in (40, 64, 80, 128, 160)
    }
    for row in static_peers.peer_rows(payload["records"], peers):
        where = f"sm_{row['arch']} d={row['head_dim']}"
        assert row["off"] is not None and row["on"] is not None, where
        assert row["off"] <= row["fa2"] and row["on"] <= row["fa2"], (where, row)
    markdown = path.with_suffix(".md").read_text()
    assert markdown == static_report.render_markdown(payload["records"], payload["triton"], peers)


def test_a_peer_report_is_committed():
    assert PEER_FILES, "benchmarks/results/static-*-peers-torch*.json is missing"
