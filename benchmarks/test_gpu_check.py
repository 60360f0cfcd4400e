"""``benchmarks/gpu_check.py``: its deadline logic, its result file (read back by ``report.py``),
the LSE-identity entropy baseline, and an end-to-end run on CPU with the GPU stages skipped."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.baselines import lse_attention_entropy, materialised_attention_entropy
from benchmarks.cases import AttentionCase
from benchmarks.report_markdown import render_markdown
from benchmarks.report_results import load_result, shape_rows
from benchmarks.report_targets import evaluate_targets
from entropy_attn.op.reference import attention_entropy

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_deadline_counts_down_and_refuses_work_that_does_not_fit():
    clock = FakeClock()
    deadline = gpu_check.Deadline(100.0, clock=clock)
    assert deadline.remaining() == 100.0 and deadline.allows(100.0)
    clock.now += 70.0
    assert deadline.remaining() == 30.0
    assert deadline.allows(30.0) and not deadline.allows(30.5)
    deadline.require(10.0, "a small step")
    with pytest.raises(gpu_check.DeadlineExceeded, match=r"30 s left, a big step needs ~45 s"):
        deadline.require(45.0, "a big step")
    with pytest.raises(ValueError, match="budget_s"):
        gpu_check.Deadline(0.0)


def _context(tmp_path: Path, clock: FakeClock, budget: float = 100.0) -> gpu_check.Context:
    results = gpu_check.Results(tmp_path, "check")
    deadline = gpu_check.Deadline(budget, clock=clock)
    return gpu_check.Context(results=results, deadline=deadline, device="cpu")


def test_stages_run_in_order_until_the_deadline(tmp_path: Path):
    """A stage that would not fit is skipped with the reason; one that runs out of time part-way
    keeps what it recorded; an error in one stage does not stop the next; the result file is
    written after every stage."""
    clock = FakeClock()
    ctx = _context(tmp_path, clock, budget=100.0)
    ran = []

    def first(ctx):  # takes 50 s
        ran.append("first")
        clock.now += 50.0
        ctx.results.line("note", stage="first")

    def broken(ctx):
        ran.append("broken")
        raise RuntimeError("boom")

    def partial(ctx):  # records one result, then finds the rest does not fit
        ran.append("partial")
        ctx.results.parity.append({"ok": True, "what": "one case"})
        clock.now += 20.0
        ctx.deadline.require(40.0, "the next case")
        ran.append("never")

    def late(ctx):
        ran.append("late")

    functions = {"first": first, "broken": broken, "partial": partial, "late": late}
    minimum = {"first": 10.0, "broken": 10.0, "partial": 10.0, "late": 40.0}
    gpu_check.run_stages(ctx, list(functions), functions=functions, minimum=minimum)
    assert ran == ["first", "broken", "partial"]
    reasons = {s["test"]: s["reason"] for s in ctx.results.skipped}
    assert reasons["broken (rest)"].startswith("error: RuntimeError: boom")
    assert reasons["partial (rest)"] == "deadline: 30 s left, the next case needs ~40 s"
    assert reasons["late"] == "deadline: 30 s left, needs ~40 s"
    written = json.loads(ctx.results.json_path.read_text())
    assert written["parity"] == [{"ok": True, "what": "one case"}]
    assert [s["test"] for s in written["skipped"]] == ["broken (rest)", "partial (rest)", "late"]
    kinds = [json.loads(line)["kind"] for line in ctx.results.lines_path.read_text().splitlines()]
    assert kinds[0] == "note" and "error" in kinds


def test_without_cuda_every_stage_is_skipped(tmp_path: Path):
    ctx = _context(tmp_path, FakeClock())
    gpu_check.run_stages(ctx, list(gpu_check.STAGES), cuda=False)
    assert [s["test"] for s in ctx.results.skipped] == list(gpu_check.STAGES)
    assert all("no CUDA" in s["reason"] for s in ctx.results.skipped)


def test_hard_deadline_interrupts_a_hanging_call():
    deadline = gpu_check.Deadline(0.2)
    start = time.monotonic()
    with (
        pytest.raises(gpu_check.DeadlineExceeded, match="alarm"),
        gpu_check.hard_deadline(deadline, grace_s=0.1),
    ):
        time.sleep(5.0)
    assert time.monotonic() - start < 2.0


def _bench(results, case, impl, variant, entropy, seconds):
    info = {**case.info(), "device": "cuda", "dtype": "float16", "impl": impl}
    info.update(variant=variant, entropy=entropy, baseline=impl)
    results.benchmark(f"{case.id}-{impl}-{variant}-{entropy}", "g", [seconds] * 3, 1, info)


def test_result_file_builds_the_report(tmp_path: Path):
    """The result file is what report.py reads: fused vs materialising and vs the LSE identity
    side by side, the parity table, the host cost."""
    case = AttentionCase("sd21", "self", 2, 5, 4096, 4096, 64, train_tokens=4096)
    results = gpu_check.Results(tmp_path, "synthetic")
    _bench(results, case, "entropy_attn", "triton", False, 1.0e-3)
    _bench(results, case, "entropy_attn", "triton", True, 1.1e-3)
    _bench(results, case, "sdpa", "FLASH_ATTENTION", False, 0.9e-3)
    _bench(results, case, "lse", "CUDNN_ATTENTION", True, 2.2e-3)
    _bench(results, case, "materialise", "torch", True, 44e-3)
    host = {"device": "cuda", "impl": "host-cost", "variant": "sdpa", "baseline": "300 calls"}
    results.benchmark("host-sdpa", "host", [12e-6] * 5, 300, host)
    results.parity.append(
        {"dtype": "bfloat16", "shape": [2, 3, 77, 77, 40], "layout": "blhd", "ok": False}
        | {"out_max_err": 1e-2, "sdpa_max_err": 4e-3, "entropy_max_err": 1e-5}
    )
    path = results.write()
    loaded = load_result(path)
    (row,) = shape_rows(loaded)
    assert row.lse is not None and row.materialise is not None
    assert row.lse_speedup == pytest.approx(2.0) and row.fused_speedup == pytest.approx(40.0)
    targets = {t.name: t for t in evaluate_targets(loaded)}
    lse_target = targets["fused vs the LSE identity with stock SDPA"]
    assert lse_target.status == "met" and lse_target.worst.ratio == pytest.approx(2.0)
    markdown = render_markdown(loaded)
    assert "## Fused vs the LSE identity (stock SDPA)" in markdown
    lse_row = next(line for line in markdown.splitlines() if "| CUDNN_ATTENTION |" in line)
    assert "| 2.00x |" in lse_row and lse_row.endswith("| met |")
    assert "## Parity against fp64" in markdown and "2, 3, 77, 77, 40" in markdown
    assert "## Host cost per call" in markdown and "12.0 us" in markdown


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lse_identity_entropy_matches_the_materialised_entropy(dtype):
    generator = torch.Generator().manual_seed(7)
    query, key, value = (
        torch.randn(2, 3, n, 40, generator=generator, dtype=dtype) for n in (50, 77, 77)
    )
    key = key * 2.0  # a wide spread of logits: entropies well below ln(77)
    out, entropy, backend = lse_attention_entropy(query, key, value, 0.3)
    assert backend == "cpu-flash" and entropy.dtype == torch.float32 and out.dtype == dtype
    q64, k64, v64 = query.double(), key.double(), value.double()
    ref_out = torch.nn.functional.scaled_dot_product_attention(q64, k64, v64, scale=0.3)
    ref_entropy = attention_entropy(q64, k64, 0.3)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double(), ref_out, atol=tolerance, rtol=tolerance)
    # The entropy is formed in fp32 (LSE - scale <q, mean key>, terms of size ~10).
    torch.testing.assert_close(entropy.double(), ref_entropy, atol=2e-5, rtol=0)
    # The materialising baseline agrees too (an fp32 softmax).
    _, materialised = materialised_attention_entropy(query, key, value, 0.3)
    torch.testing.assert_close(materialised.double(), ref_entropy, atol=2e-5, rtol=0)
    assert 0.5 < entropy.mean().item() < math.log(77)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the script would really run")
def test_end_to_end_on_cpu_skips_the_gpu_stages(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path), "--budget", "120"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(x) for x in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert lines[0]["kind"] == "start" and lines[-1]["kind"] == "done"
    (result,) = (tmp_path / "results").glob("*-gpu-check.json")
    data = json.loads(result.read_text())
    assert [s["test"] for s in data["skipped"]] == list(gpu_check.STAGES)
    assert data["environment"]["gpu_check"]["autotune"] is False
    assert result.with_suffix(".md").exists()


def _to_meta(inputs):
    if isinstance(inputs, dict):
        return {name: _to_meta(value) for name, value in inputs.items()}
    return inputs.to("meta")


@pytest.mark.parametrize("model", list(gpu_check.LARGE_UNETS))
def test_large_unet_inputs_fit_the_real_unets(model):
    """The unet-large stage's inputs (SDXL's pooled text and size ids included) go through the
    real architecture at 1536 px, on the meta device (shapes only, no memory, no arithmetic)."""
    from entropy_attn.configs import build_denoiser

    assert gpu_check.LARGE_UNETS[model] == (768, 1536)
    unet = build_denoiser(model, device="meta", dtype=torch.float16)
    inputs = gpu_check.large_unet_inputs(model, 1536, "cpu")
    assert inputs["sample"].shape == (2, 4, 192, 192)
    assert ("added_cond_kwargs" in inputs) == (model == "sdxl-base")
    with torch.inference_mode():
        out = unet(**_to_meta(inputs), return_dict=False)[0]
    assert out.shape == (2, 4, 192, 192) and out.dtype == torch.float16


def test_the_stages_in_order_and_their_minimum_times():
    assert gpu_check.STAGES == ("parity", "kernel", "auto", "unet-large", "host", "unet")
    assert set(gpu_check.STAGE_FUNCTIONS) == set(gpu_check.STAGES) == set(gpu_check.STAGE_MIN_S)
    # The minimum times of all stages fit the default budget, so none is skipped up front.
    assert sum(gpu_check.STAGE_MIN_S.values()) <= gpu_check.DEFAULT_BUDGET_S


def test_time_unet_mode_records_each_mode_and_puts_the_processors_back(tmp_path, monkeypatch):
    """The one builder of both UNet stages' records, on a tiny CPU UNet (CUDA timing replaced by
    a counter): each mode's name and fields, entropy rows only when recording, and the very same
    processor objects back after every mode."""
    diffusers = pytest.importorskip("diffusers")
    from benchmarks.unet_modes import TINY_UNET_CONFIG, unet_inputs

    steps = []

    def fake_cuda_times(fn, **timing):
        steps.append(timing)
        fn()
        return [3e-3, 1e-3, 2e-3], 1

    monkeypatch.setattr(gpu_check, "cuda_times", fake_cuda_times)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_config(TINY_UNET_CONFIG).eval()
    before = dict(unet.attn_processors)
    inputs = unet_inputs(TINY_UNET_CONFIG, 16, torch.float32, "cpu")
    ctx = _context(tmp_path, FakeClock())
    for mode, enable_kwargs in gpu_check.UNET_STAGE_MODES.items():
        gpu_check.time_unet_mode(
            ctx, unet, inputs, "tiny", 128, mode, enable_kwargs, 1, budget_s=0.0, round_s=0.0
        )
        assert all(unet.attn_processors[k] is v for k, v in before.items()), mode
    assert steps == [{"budget_s": 0.0, "round_s": 0.0}] * 4
    by_name = {b["name"]: b for b in ctx.results.benchmarks}
    modes = list(gpu_check.UNET_STAGE_MODES)
    assert list(by_name) == [f"unet-tiny-128px-{mode}" for mode in modes]
    for mode in modes:
        entry = by_name[f"unet-tiny-128px-{mode}"]
        info = entry["extra_info"]
        assert entry["stats"]["median"] == 2e-3 and entry["group"] == "unet"
        assert (info["variant"], info["latent_size"], info["batch"]) == (mode, 16, 2)
        recording = mode == "enable-record-entropy"
        assert info["entropy"] is recording
        # One row per attention layer (8, self and cross) per call: a warm-up and a timed step.
        assert info["entropy_records"] == (2 * len(before) if recording else None)
