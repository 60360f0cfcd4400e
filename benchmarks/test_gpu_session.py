"""``benchmarks/gpu_session.sh``: its usage errors and the ``test`` stage's outputs (run here on
a small test file; on a GPU machine the same stage runs the whole suite on CUDA)."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(out))
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize("args", [(), ("test",), ("kernel",), ("--gpu",)])
def test_unknown_stage_is_a_usage_error(args: tuple[str, ...], tmp_path: Path) -> None:
    result = _run(*args, out=tmp_path)
    assert result.returncode == 2
    assert "usage: bash benchmarks/gpu_session.sh {test-kernel|test-rest|" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.slow  # runs a test stage (a nested pytest session) in a subprocess
def test_test_stage_writes_environment_log_and_junit(tmp_path: Path) -> None:
    result = _run("test-rest", "--", "tests/test_package.py", out=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    environment = (tmp_path / "environment.txt").read_text()
    assert "torch " in environment and "entropy_attn 0.1.0" in environment
    assert f"{REPO / 'entropy_attn'}" in environment  # the checkout's package is the one used
    suite = ET.parse(tmp_path / "test-rest.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 2 and suite.get("failures") == "0"
    assert "passed" in (tmp_path / "test-rest.log").read_text()


def test_benchmark_stage_narrows_its_selection(tmp_path: Path) -> None:
    """A caller's -k is and-ed with the stage's own (kernel-fp16 must never select bf16)."""
    result = _run("kernel-fp16", "--", "-k", "sd21", "--collect-only", out=tmp_path)
    log = (tmp_path / "kernel-fp16.log").read_text()
    command = next(line for line in log.splitlines() if line.startswith("+ "))
    assert "benchmarks/run.py" not in command  # run.py prints the pytest command it runs
    assert "-m gpu_bench" in command
    assert "-k (float16 and not bfloat16) and (sd21) --collect-only" in command
    assert "benchmarks/test_bench_kernel.py" in command
    assert f"--benchmark-json={tmp_path}/results/" in command
    assert result.returncode != 2
