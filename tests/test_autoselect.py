"""``backend="auto"`` on CUDA picks the faster of the fused kernel and SDPA
(``entropy_attn.op.autoselect``): every rule checked on the CPU with an injected timer, GPU name and
capture flag, and the op layer's hook run through the Triton interpreter at a tiny shape."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from entropy_attn.op import api as ops
from entropy_attn.op import autoselect

VERSIONS = {"torch": "2.11.0", "cuda": "12.8", "triton": "3.6.0", "entropy-attn": "0.1.0"}


class FakeTimer:
    """Seconds per call by candidate name; counts the timings and runs each candidate once."""

    def __init__(self, fused_s: float, sdpa_s: float):
        self.times = {"triton": fused_s, "torch": sdpa_s}
        self.calls = 0

    def __call__(self, candidates):
        self.calls += 1
        assert set(candidates) == {"triton", "torch"}
        for fn in candidates.values():
            fn()
        return dict(self.times)


def make_selector(tmp_path, timer, gpu="NVIDIA H100 80GB HBM3", capturing=False, versions=None):
    return autoselect.AutoSelector(
        timer=timer,
        device_name=lambda tensor: gpu,
        capturing=lambda: capturing,
        versions=lambda: dict(versions or VERSIONS),
        folder=tmp_path,
    )


def qkv(seq_q=100, seq_k=100, head_dim=64, dtype=torch.float32, blhd=False):
    generator = torch.Generator().manual_seed(3)
    if blhd:
        return tuple(
            torch.randn(1, n, 2, head_dim, generator=generator, dtype=dtype).transpose(1, 2)
            for n in (seq_q, seq_k, seq_k)
        )
    return tuple(
        torch.randn(1, 2, n, head_dim, generator=generator, dtype=dtype)
        for n in (seq_q, seq_k, seq_k)
    )


def counting():
    ran = {"triton": 0, "torch": 0}

    def fn(name):
        def run():
            ran[name] += 1

        return run

    return ran, fn("triton"), fn("torch")


@pytest.mark.parametrize(
    ("fused_s", "sdpa_s", "expected"),
    [
        (1.0e-3, 2.0e-3, "triton"),  # fused twice as fast
        (2.0e-3, 1.0e-3, "torch"),  # SDPA twice as fast
        (0.99e-3, 1.0e-3, "torch"),  # 1% faster is within the margin: the stock code stays
        (0.97e-3, 1.0e-3, "triton"),  # 3% faster is past it
        (1.0e-3, 1.0e-3, "torch"),  # a tie goes to SDPA
    ],
)
def test_the_faster_is_chosen_and_ties_go_to_sdpa(tmp_path, fused_s, sdpa_s, expected):
    timer = FakeTimer(fused_s, sdpa_s)
    selector = make_selector(tmp_path, timer)
    query, key, _ = qkv()
    ran, fused, sdpa = counting()
    assert selector.choose(query, key, fused, sdpa) == expected
    assert timer.calls == 1 and ran == {"triton": 1, "torch": 1}
    (decision,) = selector.decisions()["NVIDIA H100 80GB HBM3"].values()
    assert decision == {"backend": expected, "fused_s": fused_s, "sdpa_s": sdpa_s}


def test_a_decision_is_reused_for_the_same_key_and_made_anew_for_another(tmp_path):
    timer = FakeTimer(1e-3, 2e-3)
    selector = make_selector(tmp_path, timer)
    query, key, _ = qkv(seq_q=3000, seq_k=3000)
    _, fused, sdpa = counting()
    assert selector.choose(query, key, fused, sdpa) == "triton"
    same_bucket = qkv(seq_q=4096, seq_k=2049)  # 2049..4096 is one bucket
    assert selector.choose(same_bucket[0], same_bucket[1], fused, sdpa) == "triton"
    assert timer.calls == 1
    timer.times = {"triton": 3e-3, "torch": 2e-3}
    for other in (
        qkv(seq_q=3000, seq_k=77),  # another key-length bucket (cross-attention)
        qkv(seq_q=5000, seq_k=3000),  # another query-length bucket
        qkv(seq_q=3000, seq_k=3000, head_dim=40),
        qkv(seq_q=3000, seq_k=3000, dtype=torch.float16),
        qkv(seq_q=3000, seq_k=3000, blhd=True),
    ):
        assert selector.choose(other[0], other[1], fused, sdpa) == "torch"
    assert timer.calls == 6
    keys = set(selector.decisions()["NVIDIA H100 80GB HBM3"])
    assert keys == {
        "float32-d64-bhld-q4096-k4096",
        "float32-d64-bhld-q4096-k128",
        "float32-d64-bhld-q8192-k4096",
        "float32-d40-bhld-q4096-k4096",
        "float16-d64-bhld-q4096-k4096",
        "float32-d64-blhd-q4096-k4096",
    }


def test_decisions_are_per_gpu(tmp_path):
    query, key, _ = qkv()
    _, fused, sdpa = counting()
    h100 = make_selector(tmp_path, FakeTimer(1e-3, 2e-3), gpu="NVIDIA H100 80GB HBM3")
    a100 = make_selector(tmp_path, FakeTimer(2e-3, 1e-3), gpu="NVIDIA A100-SXM4-80GB")
    assert h100.choose(query, key, fused, sdpa) == "triton"
    assert a100.choose(query, key, fused, sdpa) == "torch"
    assert h100.cache_path("NVIDIA H100 80GB HBM3") != a100.cache_path("NVIDIA A100-SXM4-80GB")


def test_disk_round_trip_and_versions(tmp_path):
    query, key, _ = qkv()
    _, fused, sdpa = counting()
    first = make_selector(tmp_path, FakeTimer(1e-3, 2e-3))
    assert first.choose(query, key, fused, sdpa) == "triton"
    (path,) = tmp_path.glob("auto-*.json")
    payload = json.loads(path.read_text())
    assert payload["gpu"] == "NVIDIA H100 80GB HBM3" and payload["versions"] == VERSIONS
    assert payload["decisions"]["float32-d64-bhld-q128-k128"]["fused_s"] == 1e-3
    # A new process (a new selector) with the same GPU and versions reads it: no timing.
    timer = FakeTimer(5e-3, 1e-3)
    second = make_selector(tmp_path, timer)
    assert second.choose(query, key, fused, sdpa) == "triton" and timer.calls == 0
    # Other library versions: another file, timed again.
    newer = make_selector(tmp_path, timer, versions={**VERSIONS, "triton": "3.9.0"})
    assert newer.choose(query, key, fused, sdpa) == "torch" and timer.calls == 1
    assert len(list(tmp_path.glob("auto-*.json"))) == 2
    # Two processes' decisions merge in the file rather than overwrite each other.
    other_key = qkv(seq_q=1000)
    make_selector(tmp_path, FakeTimer(2e-3, 1e-3)).choose(other_key[0], other_key[1], fused, sdpa)
    merged = json.loads(path.read_text())["decisions"]
    assert set(merged) == {"float32-d64-bhld-q128-k128", "float32-d64-bhld-q1024-k128"}


def test_the_cache_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPY_ATTN_CACHE_DIR", str(tmp_path / "mine"))
    assert autoselect.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("ENTROPY_ATTN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autoselect.cache_dir() == tmp_path / "xdg" / "entropy_attn"
    selector = autoselect.AutoSelector(
        timer=FakeTimer(1e-3, 2e-3), device_name=lambda t: "GPU", capturing=lambda: False
    )
    assert selector.cache_path("GPU").parent == tmp_path / "xdg" / "entropy_attn"


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({"format": 1, "gpu": "NVIDIA H100 80GB HBM3", "versions": VERSIONS}),
        b"\xff\xfe\x00garbage",
    ],
)
def test_a_corrupted_cache_file_is_ignored_and_replaced(tmp_path, content):
    query, key, _ = qkv()
    _, fused, sdpa = counting()
    selector = make_selector(tmp_path, FakeTimer(1e-3, 2e-3))
    path = selector.cache_path("NVIDIA H100 80GB HBM3")
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.warns(UserWarning, match="ignoring the"):
        assert selector.choose(query, key, fused, sdpa) == "triton"
    assert json.loads(path.read_text())["decisions"]["float32-d64-bhld-q128-k128"]["sdpa_s"] == 2e-3


def test_an_unwritable_cache_folder_keeps_the_decision_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    timer = FakeTimer(1e-3, 2e-3)
    selector = autoselect.AutoSelector(
        timer=timer,
        device_name=lambda t: "GPU",
        capturing=lambda: False,
        versions=lambda: VERSIONS,
        folder=blocker / "sub",  # a folder under a file cannot be made
    )
    query, key, _ = qkv()
    _, fused, sdpa = counting()
    with pytest.warns(UserWarning, match="cannot write the cache"):
        assert selector.choose(query, key, fused, sdpa) == "triton"
    assert selector.choose(query, key, fused, sdpa) == "triton" and timer.calls == 1


def test_no_timing_during_cuda_graph_capture(tmp_path):
    query, key, _ = qkv()
    ran, fused, sdpa = counting()
    timer = FakeTimer(1e-3, 2e-3)
    capturing = make_selector(tmp_path, timer, capturing=True)
    # Nothing cached: the safe default, nothing run, nothing remembered.
    assert capturing.choose(query, key, fused, sdpa) == autoselect.SAFE_DEFAULT == "torch"
    assert timer.calls == 0 and ran == {"triton": 0, "torch": 0}
    assert capturing.decisions()["NVIDIA H100 80GB HBM3"] == {}
    # Decided earlier outside the capture (here by another selector, through the file): used.
    make_selector(tmp_path, FakeTimer(1e-3, 2e-3)).choose(query, key, fused, sdpa)
    capturing.forget()
    assert capturing.choose(query, key, fused, sdpa) == "triton" and timer.calls == 0


def test_a_failing_fused_kernel_falls_back_to_sdpa(tmp_path):
    def broken_timer(candidates):
        candidates["triton"]()
        return {}

    def fused():
        raise RuntimeError("out of resources: shared memory")

    selector = make_selector(tmp_path, broken_timer)
    query, key, _ = qkv()
    with pytest.warns(UserWarning, match="failed while timing"):
        assert selector.choose(query, key, fused, lambda: None) == "torch"
    (decision,) = selector.decisions()["NVIDIA H100 80GB HBM3"].values()
    assert decision["backend"] == "torch" and "out of resources" in decision["error"]


def test_layout_and_buckets():
    query, _, _ = qkv(blhd=True)
    assert autoselect.layout(query) == "blhd"
    assert autoselect.layout(query.contiguous()) == "bhld"
    assert autoselect.layout(torch.randn(1, 2, 5, 16)[..., ::2]) == "strided"
    assert [autoselect.length_bucket(n) for n in (1, 2, 3, 77, 4096, 4097)] == [
        1,
        2,
        4,
        128,
        4096,
        8192,
    ]


# --- the op layer's hook -------------------------------------------------------------------


@pytest.fixture
def selector(tmp_path):
    """A process-wide selector with a fake timer (SDPA 10x faster), restored afterwards."""
    timer = FakeTimer(10e-3, 1e-3)
    fake = make_selector(tmp_path, timer)
    previous = autoselect.set_selector(fake)
    yield fake, timer
    autoselect.set_selector(previous)


def test_with_entropy_the_fused_kernel_always_runs(selector, monkeypatch):
    _, timer = selector
    query, key, value = qkv()
    monkeypatch.setenv("ENTROPY_ATTN_BACKEND", "torch")
    assert ops._auto_backend(query, key, value, None, True) == "triton"
    monkeypatch.delenv("ENTROPY_ATTN_BACKEND")
    assert ops._auto_backend(query, key, value, None, True) == "triton"
    assert timer.calls == 0
    assert ops._auto_backend(query, key, value, None, False) == "torch"  # SDPA timed faster
    assert timer.calls == 1


@pytest.mark.parametrize("forced", ["triton", "torch", "TORCH"])
def test_the_environment_variable_overrides_the_timing(selector, monkeypatch, forced):
    _, timer = selector
    monkeypatch.setenv("ENTROPY_ATTN_BACKEND", forced)
    query, key, value = qkv()
    assert ops._auto_backend(query, key, value, 0.1, False) == forced.lower()
    assert timer.calls == 0


def test_a_bad_environment_variable_is_an_error_naming_it(selector, monkeypatch):
    monkeypatch.setenv("ENTROPY_ATTN_BACKEND", "cudnn")
    query, key, value = qkv()
    with pytest.raises(ValueError, match="ENTROPY_ATTN_BACKEND must be"):
        ops._auto_backend(query, key, value, 0.1, False)


def test_an_explicit_backend_is_never_timed(selector):
    _, timer = selector
    query, key, value = qkv(seq_q=20, seq_k=20, head_dim=16)
    out = ops.attention(query, key, value, 0.3, backend="torch")
    torch.testing.assert_close(out, F.scaled_dot_product_attention(query, key, value, scale=0.3))
    ops.attention(query, key, value, 0.3, backend="triton")
    assert timer.calls == 0


def test_the_auto_op_runs_what_was_chosen(tmp_path):
    """``entropy_attn::attention_auto`` (what compiled code calls) runs the chosen path: its
    output is bit for bit that path's own output."""
    query, key, value = qkv(seq_q=20, seq_k=33, head_dim=16, blhd=True)
    for times, backend in (((1e-3, 2e-3), "triton"), ((2e-3, 1e-3), "torch")):
        timer = FakeTimer(*times)
        previous = autoselect.set_selector(make_selector(tmp_path / backend, timer))
        try:
            out = ops._attention_auto_op(query, key, value, 0.3)
        finally:
            autoselect.set_selector(previous)
        alone = ops.attention(query, key, value, 0.3, backend=backend)
        assert torch.equal(out, alone) and timer.calls == 1
        assert out.stride() == torch.empty_like(query).stride()


def test_tracing_the_auto_op_never_times(selector):
    """Under fake tensors (what torch.compile traces with) only the op's fake runs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    _, timer = selector
    with FakeTensorMode():
        query, key, value = (torch.empty(1, 2, 64, 16) for _ in range(3))
        out = ops._attention_auto_op(query, key, value, None)
    assert out.shape == (1, 2, 64, 16) and timer.calls == 0


def test_compiled_code_times_once_when_it_runs_not_while_tracing(tmp_path):
    """torch.compile (``aot_eager``: tracing with fake tensors, then running) times once, when
    the compiled function first runs, and then reuses the decision."""
    timer = FakeTimer(1e-3, 2e-3)
    previous = autoselect.set_selector(make_selector(tmp_path, timer))
    try:
        compiled = torch.compile(
            lambda q, k, v: ops._attention_auto_op(q, k, v, None) * 2, backend="aot_eager"
        )
        query, key, value = qkv(seq_q=20, seq_k=20, head_dim=16)
        out = compiled(query, key, value)
        compiled(query, key, value)
    finally:
        autoselect.set_selector(previous)
    assert timer.calls == 1
    alone = ops.attention(query, key, value, backend="triton")
    torch.testing.assert_close(out, 2 * alone, atol=0, rtol=0)
