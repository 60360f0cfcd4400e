"""pytest setup of the benchmark suites: markers, options, environment and skips in the JSON.

Without CUDA the Triton kernel runs through Triton's CPU interpreter, which must be switched on
before any ``@triton.jit`` function is defined, i.e. before ``entropy_attn.kernels`` is imported:
conftest runs before the benchmark modules are imported.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from benchmarks.environment import collect_environment  # noqa: E402
from benchmarks.timing import TimingPlan  # noqa: E402

# Skips (with reasons) seen in this session, e.g. an SDPA backend that refused a shape; written
# into the result file so that a missing row can be explained from the file alone.
_SKIPPED: list[dict[str, str]] = []
# 1/5/15-minute load averages when the session started: a busy machine slows CPU benchmarks.
_LOAD_AT_START: list[float] | None = None


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("entropy-attn benchmarks")
    group.addoption(
        "--bench-budget",
        type=float,
        default=None,
        help="target seconds of timed rounds per benchmark (default: 0.3 on CUDA, 1.0 on CPU, "
        "3.0 for a UNet step on CUDA; a whole generation always runs 3 rounds of one call)",
    )
    group.addoption(
        "--bench-max-rounds",
        type=int,
        default=100,
        help="at most this many timed rounds per benchmark (default 100)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cpu_bench: cheap benchmark that runs anywhere (CPU, small sizes)"
    )
    config.addinivalue_line("markers", "gpu_bench: CUDA benchmark (skipped without CUDA)")
    config.addinivalue_line(
        "markers", "unet_bench: end-to-end UNet step benchmark (needs entropy_attn.enable)"
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    global _LOAD_AT_START
    _LOAD_AT_START = _load_average()


def _plan(config: pytest.Config, default_budget: float, min_rounds: int) -> TimingPlan:
    budget = config.getoption("--bench-budget")
    return TimingPlan(
        budget_s=default_budget if budget is None else budget,
        min_rounds=min_rounds,
        max_rounds=max(min_rounds, config.getoption("--bench-max-rounds")),
    )


@pytest.fixture(scope="session")
def cuda_plan(pytestconfig: pytest.Config) -> TimingPlan:
    """Timing plan of one CUDA kernel benchmark."""
    return _plan(pytestconfig, default_budget=0.3, min_rounds=10)


@pytest.fixture(scope="session")
def cpu_plan(pytestconfig: pytest.Config) -> TimingPlan:
    """Timing plan of one CPU benchmark."""
    return _plan(pytestconfig, default_budget=1.0, min_rounds=10)


@pytest.fixture(scope="session")
def unet_plan(pytestconfig: pytest.Config) -> TimingPlan:
    """Timing plan of one CUDA UNet-step benchmark."""
    return _plan(pytestconfig, default_budget=3.0, min_rounds=10)


GENERATION_ROUNDS = 3


@pytest.fixture(scope="session")
def generation_plan() -> TimingPlan:
    """Timing plan of one whole generation (seconds a call): three rounds of one call."""
    rounds = GENERATION_ROUNDS
    return TimingPlan(0.0, min_rounds=rounds, max_rounds=rounds, round_s=0.0, warmup_rounds=0)


def _record_skip(nodeid: str, longrepr: object) -> None:
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if "non-benchmark" in reason:  # --benchmark-only skips plain tests; not a missing result
        return
    _SKIPPED.append({"test": nodeid, "reason": reason})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.when in ("setup", "call"):
        _record_skip(report.nodeid, report.longrepr)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped at import, e.g. no entropy_attn.enable yet
        _record_skip(report.nodeid, report.longrepr)


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list, output_json: dict
) -> None:
    """Add the environment (device, driver, versions) and the skip reasons to the result file."""
    devices = [
        bench["extra_info"].get("device")
        for bench in output_json.get("benchmarks", [])
        if bench.get("extra_info", {}).get("device")
    ]
    environment = collect_environment(devices)
    environment["load_average_start"] = _LOAD_AT_START
    environment["load_average_end"] = _load_average()
    output_json["environment"] = environment
    output_json["skipped"] = list(_SKIPPED)
