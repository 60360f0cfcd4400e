"""One GPU command: parity, kernel speed, entropy baselines, host cost and a UNet step in ~6 min.

One file because it is the one script the lead copies to a GPU machine and runs as it is
(``python3 benchmarks/gpu_check.py --out DIR``): its stages share the deadline, the result
writer and the CUDA timer defined here; torch, diffusers, ``entropy_attn`` and the shapes,
baselines and report of ``benchmarks/`` are imported inside the functions that use them, after
``install_wheels`` has put ``.site/`` on the path.

Usage, from the repository root of a checkout (installed or not)::

    python3 benchmarks/gpu_check.py                 # everything, deadline 330 s
    python3 benchmarks/gpu_check.py --budget 120 --stages parity kernel
    python3 benchmarks/gpu_check.py --out DIR       # default: $OUT, else ./gpu-out

Made for a fresh GPU machine whose Python has torch, triton and pytest but no diffusers and no
package index: if ``diffusers`` does not import and ``.whl/*.whl`` exist (made beforehand by
``../shared/tools/gpu-wheels``), it installs them into ``.site/`` and puts ``.site/`` and the
checkout on ``sys.path``. Stages, in order (each skipped, with the reason recorded, when there is
no CUDA device or when the deadline leaves less than the time it needs):

* ``parity``: fp16 and bf16 output and entropy of ``attention(backend="triton")`` against fp64 at
  ragged and strided shapes (head dims 40, 64, 80, 128, 160; Lk = 77; (B, L, H, D) views; a
  strided head dim): output within twice PyTorch's own same-dtype error plus one ulp, entropy
  within 5e-5 + 2e-5 |H| nats (the rules of tests/test_kernel.py);
* ``kernel``: fp16 at eight SD and DiT shapes: the kernel with entropy off and on, SDPA forced
  onto FLASH, cuDNN and EFFICIENT, and the two entropy baselines: the LSE identity with stock SDPA
  (``benchmarks.baselines.lse_attention_entropy``) and the materialising PyTorch entropy;
* ``auto``: ``backend="auto"``'s decision at each of those shapes (``entropy_attn.op.autoselect``,
  timed afresh: its cache goes to ``<out>/autoselect-cache``) with the kernel's and SDPA's time
  as it measured them, then ``attention(backend="auto")`` timed against a bare SDPA call;
* ``unet-large``: one SD-2.1-base and one SDXL-base UNet step at 768 and 1536 px (fp16, batch 2):
  stock SDPA, ``enable(backend="triton")`` (our kernel everywhere) and ``enable()`` (``auto``),
  each the median of 5 CUDA-event timed steps after 2 warm-up steps;
* ``host``: host cost per call on CUDA at a tiny shape (launch-bound: the wall time of 300
  back-to-back calls, no synchronisation in between), the kernel vs a bare SDPA call;
* ``unet``: one SD-2.1-base UNet step at 512 px (fp16, batch 2, random weights from the shipped
  config): stock, ``enable``, ``enable(record_entropy=True)``, stock again.

The kernel runs with ``ENTROPY_ATTN_AUTOTUNE=0`` (the first tile of each head dim: one compile
per shape instead of an autotuning sweep) unless ``--autotune``. Times are CUDA-event medians
over rounds of back-to-back calls after warm-up (compilation excluded).

Writes, line by line as results arrive, ``<out>/gpu_check.jsonl``, and after every stage
``<out>/results/<device>-<date>-gpu-check.json`` in the format of ``benchmarks/run.py`` (so
``python benchmarks/report.py FILE`` builds the tables) and its ``.md`` report.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(REPO_ROOT))
DEFAULT_BUDGET_S = 330.0  # the device call gets 6 minutes: leave time to write and report
STAGES = ("parity", "kernel", "auto", "unet-large", "host", "unet")
# Seconds a stage needs at least to be worth starting (measured loosely on an H100 class GPU).
ALARM_GRACE_S = 15.0  # the hard stop comes this long after the deadline
STAGE_MIN_S = {
    "parity": 30.0,
    "kernel": 60.0,
    "auto": 20.0,
    "host": 10.0,
    "unet": 45.0,
    "unet-large": 60.0,
}


class DeadlineExceeded(Exception):
    """Raised when the time left is too short for the next piece of work."""


class Deadline:
    """A wall-clock budget: ``remaining()`` seconds, ``require(seconds)`` raises when short."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic):
        if not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s!r}")
        self.clock = clock
        self.end = clock() + budget_s

    def remaining(self) -> float:
        return self.end - self.clock()

    def allows(self, seconds: float) -> bool:
        return self.remaining() >= seconds

    def require(self, seconds: float, what: str) -> None:
        if not self.allows(seconds):
            raise DeadlineExceeded(
                f"deadline: {max(self.remaining(), 0):.0f} s left, {what} needs ~{seconds:.0f} s"
            )


class Results:
    """Everything measured so far: a JSON line per result as it comes, the result file after
    each stage (pytest-benchmark's layout plus ``environment``, ``skipped``, ``parity``)."""

    def __init__(self, out_dir: Path, name: str):
        self.out_dir = out_dir
        self.lines_path = out_dir / "gpu_check.jsonl"
        self.json_path = out_dir / "results" / f"{name}.json"
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        self.lines_path.write_text("")
        self.benchmarks: list[dict] = []
        self.skipped: list[dict] = []
        self.parity: list[dict] = []
        self.auto: list[dict] = []  # backend="auto"'s decisions, with both timings
        self.environment: dict = {}
        self.started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    def line(self, kind: str, **fields) -> None:
        with self.lines_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": kind, **fields}, default=str) + "\n")
        summary = " ".join(f"{k}={v}" for k, v in fields.items() if not isinstance(v, dict))
        print(f"[{kind}] {summary}"[:400], flush=True)

    def benchmark(self, name: str, group: str, times_s: list[float], iterations: int, info: dict):
        median = statistics.median(times_s)
        info = {**info, "median_s": median}
        if info.get("flops"):
            info["tflops"] = info["flops"] / median / 1e12
        entry = {
            "name": name,
            "fullname": f"benchmarks/gpu_check.py::{name}",
            "group": group,
            "stats": {
                "median": median,
                "min": min(times_s),
                "max": max(times_s),
                "mean": statistics.fmean(times_s),
                "rounds": len(times_s),
                "iterations": iterations,
                "data": times_s,
            },
            "extra_info": info,
        }
        self.benchmarks.append(entry)
        self.line("benchmark", name=name, median_us=round(median * 1e6, 2), info=info)

    def skip(self, test: str, reason: str) -> None:
        self.skipped.append({"test": test, "reason": reason})
        self.line("skipped", test=test, reason=reason)

    def write(self) -> Path:
        payload = {
            "machine_info": {"node": os.uname().nodename, "python_version": sys.version.split()[0]},
            "datetime": self.started,
            "version": "gpu_check",
            "benchmarks": self.benchmarks,
            "environment": self.environment,
            "skipped": self.skipped,
            "parity": self.parity,
            "auto": self.auto,
        }
        temporary = self.json_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        temporary.replace(self.json_path)
        return self.json_path


def install_wheels(repo: Path = REPO_ROOT) -> str:
    """Make diffusers importable from ``.whl/`` if it is not (no package index needed)."""
    site = repo / ".site"
    if site.is_dir() and str(site) not in sys.path:
        sys.path.insert(0, str(site))
    try:
        import diffusers  # noqa: F401

        return "diffusers present"
    except ImportError:
        pass
    wheels = sorted((repo / ".whl").glob("*.whl"))
    if not wheels:
        return "diffusers missing and no .whl/*.whl: the unet stage will be skipped"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    command += ["--target", str(site), *map(str, wheels)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"pip install of .whl failed: {done.stderr.strip()[-500:]}"
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    try:
        import diffusers  # noqa: F401
    except ImportError as error:  # a dependency the wheels lack: say which, for the next session
        return f"installed {len(wheels)} wheels into .site/, diffusers still fails: {error!r}"
    return f"installed {len(wheels)} wheels into .site/"


# ---------------------------------------------------------------------------------------------
# Timing


def cuda_times(
    fn: Callable[[], object], budget_s: float = 0.2, round_s: float = 2e-3, min_rounds: int = 10
):
    """Seconds per call of ``fn`` (already warm): CUDA-event times of rounds of back-to-back
    calls, about ``round_s`` each, for about ``budget_s`` (at least ``min_rounds`` rounds);
    returns ``(times, iterations)``."""
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    per_call = max(time.perf_counter() - start, 1e-6)
    iterations = max(1, math.ceil(round_s / per_call))
    rounds = min(max(min_rounds, math.ceil(budget_s / (per_call * iterations))), 100)
    times = []
    for _ in range(rounds):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iterations):
            fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3 / iterations)
    return times, iterations


# ---------------------------------------------------------------------------------------------
# Stages


@dataclass
class Context:
    results: Results
    deadline: Deadline
    device: str


PARITY_SHAPES = [
    # batch, heads, seq_q, seq_k, head_dim, layout
    (2, 3, 77, 77, 40, "blhd"),
    (1, 2, 300, 333, 80, "bhld"),
    (2, 2, 64, 77, 160, "blhd"),
    (1, 4, 1000, 77, 64, "bhld"),
    (1, 2, 129, 1000, 64, "strided_d"),
    (2, 2, 257, 300, 128, "blhd"),
]


def _parity_inputs(shape, dtype, device, generator):
    import torch

    batch, heads, seq_q, seq_k, head_dim, layout = shape

    def randn(*size):
        return torch.randn(size, generator=generator, device="cpu").to(device, dtype)

    if layout == "bhld":
        return tuple(randn(batch, heads, n, head_dim) for n in (seq_q, seq_k, seq_k))
    if layout == "blhd":
        return tuple(
            randn(batch, n, heads, head_dim).transpose(1, 2) for n in (seq_q, seq_k, seq_k)
        )
    # strided_d: every other element of the head dim
    query = randn(batch, heads, seq_q, 2 * head_dim)[..., ::2]
    key = randn(batch, heads, seq_k, 2 * head_dim)[..., 1::2]
    return query, key, randn(batch, heads, seq_k, head_dim)


def stage_parity(ctx: Context) -> None:
    import torch
    import torch.nn.functional as F

    import entropy_attn
    from entropy_attn.op.reference import attention_entropy

    eps = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
    generator = torch.Generator().manual_seed(20230614)
    for dtype in (torch.float16, torch.bfloat16):
        for shape in PARITY_SHAPES:
            ctx.deadline.require(5.0, "a parity case")
            query, key, value = _parity_inputs(shape, dtype, ctx.device, generator)
            scale = 1.0 / math.sqrt(shape[4])
            out, ent = entropy_attn.attention(
                query, key, value, scale, return_entropy=True, backend="triton"
            )
            q64, k64, v64 = query.double(), key.double(), value.double()
            out64 = F.scaled_dot_product_attention(q64, k64, v64, scale=scale)
            ent64 = attention_entropy(q64, k64, scale)
            out_sdpa = F.scaled_dot_product_attention(query, key, value, scale=scale)
            kernel_err = (out.double() - out64).abs().max().item()
            torch_err = (out_sdpa.double() - out64).abs().max().item()
            ent_err = (ent.double() - ent64).abs()
            ent_bound = 5e-5 + 2e-5 * ent64.abs()
            record = {
                "dtype": str(dtype).removeprefix("torch."),
                "shape": list(shape[:5]),
                "layout": shape[5],
                "out_max_err": kernel_err,
                "sdpa_max_err": torch_err,
                "out_ok": bool(kernel_err <= 2 * torch_err + eps[dtype]),
                "entropy_max_err": ent_err.max().item(),
                "entropy_ok": bool((ent_err <= ent_bound).all().item()),
                "finite": bool(torch.isfinite(out).all().item() and torch.isfinite(ent).all()),
            }
            record["ok"] = record["out_ok"] and record["entropy_ok"] and record["finite"]
            ctx.results.parity.append(record)
            ctx.results.line("parity", **record)


def kernel_cases():
    """About eight SD and DiT self/cross-attention shapes (``benchmarks.cases``)."""
    from benchmarks.cases import dit_cases, sd_cases

    sd21 = {(c.image_size, c.level): c for c in sd_cases("sd21", "self")}
    sd1x = {(c.image_size, c.level): c for c in sd_cases("sd1x", "self")}
    cross = {(c.image_size, c.level): c for c in sd_cases("sd21", "cross")}
    dit = {(c.head_dim, c.seq_k): c for c in dit_cases()}
    return [
        sd21[(512, 0)],  # 4096 tokens, 5 heads of 64
        sd21[(1024, 0)],  # 16384 tokens
        sd21[(512, 1)],  # 1024 tokens, 10 heads
        sd1x[(512, 0)],  # head dim 40
        sd1x[(512, 1)],  # head dim 80
        sd1x[(1024, 2)],  # head dim 160, 1024 tokens
        cross[(512, 0)],  # 4096 queries, 77 text keys
        dit[(64, 4096)],
        dit[(128, 4096)],
    ]


def stage_kernel(ctx: Context) -> None:
    import torch

    for case in kernel_cases():
        _bench_case(ctx, case, torch.float16)
        torch.cuda.empty_cache()


def _bench_case(ctx: Context, case, dtype) -> None:
    """Every implementation on one shape, back to back (the ratios compare moments-apart runs)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import entropy_attn
    from benchmarks.baselines import (
        lse_attention_entropy,
        materialised_attention_entropy,
        materialised_bytes,
    )
    from benchmarks.cases import group_name, make_qkv, output_bytes
    from entropy_attn.op.reference import attention_entropy

    query, key, value = make_qkv(case, dtype, ctx.device)
    scale = case.scale
    impls: list[tuple[str, str, bool, str, Callable[[], object]]] = []
    for entropy in (False, True):
        impls.append(
            (
                "entropy_attn",
                "triton",
                entropy,
                "entropy_attn.attention(backend='triton')",
                lambda entropy=entropy: entropy_attn.attention(
                    query, key, value, scale, return_entropy=entropy, backend="triton"
                ),
            )
        )
    sdpa_contexts = {}
    for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        # The backend context is entered once around warm-up and timing: its cost is not timed.
        sdpa_contexts[backend] = getattr(SDPBackend, backend)
        impls.append(
            (
                "sdpa",
                backend,
                False,
                f"F.scaled_dot_product_attention(scale=) forced to {backend}",
                lambda: F.scaled_dot_product_attention(query, key, value, scale=scale),
            )
        )
    impls.append(
        (
            "lse",
            "sdpa",
            True,
            "LSE identity with stock SDPA: values [V | K], H = LSE - scale <q, mean key>",
            lambda: lse_attention_entropy(query, key, value, scale),
        )
    )
    free, _ = torch.cuda.mem_get_info()
    if materialised_bytes(case, dtype) < 0.8 * free:
        impls.append(
            (
                "materialise",
                "torch",
                True,
                "softmax(Q K^T * scale) materialised in fp32, -(A * A.log()).sum(-1), A V",
                lambda: materialised_attention_entropy(query, key, value, scale),
            )
        )
    else:
        ctx.results.skip(f"{case.id}-materialise", "the (B, H, Lq, Lk) matrices do not fit")
    for impl, variant, entropy, baseline, fn in impls:
        name = f"{case.id}-{impl}-{variant}-{'on' if entropy else 'off'}"
        ctx.deadline.require(3.0, name)
        backend = sdpa_contexts.get(variant) if impl == "sdpa" else None
        with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
            try:
                result = fn()
                for _ in range(2):
                    fn()
            except Exception as error:  # a baseline that refuses the shape, or a kernel bug
                if impl == "entropy_attn":  # a failure of ours is an error, not a skip
                    ctx.results.line("error", test=name, error=repr(error)[:1000])
                reason = f"{type(error).__name__}: {str(error).strip()[:300]}"
                ctx.results.skip(name, ("error: " if impl == "entropy_attn" else "") + reason)
                continue
            times, iterations = cuda_times(fn)
        info = {
            **case.info(),
            "device": ctx.device,
            "dtype": "float16",
            "impl": impl,
            "variant": variant,
            "entropy": entropy,
            "baseline": baseline,
            **output_bytes(case, dtype, entropy),
        }
        if impl == "lse":
            info["variant"] = result[2]  # the SDPA kernel that returned the LSE
        if entropy:  # error of the entropy on batch 0, head 0 against fp64
            ref = attention_entropy(query[:1, :1].double(), key[:1, :1].double(), scale)
            err = (result[1][:1, :1].double() - ref).abs().max().item()
            info["entropy_max_err_vs_fp64"] = err
        del result
        ctx.results.benchmark(name, group_name(case, dtype, ctx.device), times, iterations, info)


def stage_auto(ctx: Context) -> None:
    """``backend="auto"`` at the kernel stage's shapes: its decision (timed now by a fresh
    selector unless the cache folder already holds one) and its cost against a bare SDPA call."""
    import torch

    from entropy_attn.op import autoselect

    selector = autoselect.AutoSelector()
    previous = autoselect.set_selector(selector)
    try:
        for case in kernel_cases():
            ctx.deadline.require(4.0, f"auto at {case.id}")
            _auto_case(ctx, selector, case)
            torch.cuda.empty_cache()
    finally:
        autoselect.set_selector(previous)


def _auto_case(ctx: Context, selector, case) -> None:
    import torch
    import torch.nn.functional as F

    import entropy_attn
    from benchmarks.cases import group_name, make_qkv
    from entropy_attn.op import autoselect

    query, key, value = make_qkv(case, torch.float16, ctx.device)
    scale = case.scale
    cached = selector.lookup(query, key) is not None
    entropy_attn.attention(query, key, value, scale)  # the first call decides
    forced = autoselect.env_override()
    decision = selector.lookup(query, key) or {"backend": forced}
    calls = {
        "auto": lambda: entropy_attn.attention(query, key, value, scale),
        "sdpa": lambda: F.scaled_dot_product_attention(query, key, value, scale=scale),
    }
    medians = {}
    for name, fn in calls.items():
        fn()
        times, iterations = cuda_times(fn)
        medians[name] = statistics.median(times)
        if name == "auto":
            info = {
                **case.info(),
                "device": ctx.device,
                "dtype": "float16",
                "impl": "auto",
                "variant": decision["backend"],
                "entropy": False,
                "baseline": "entropy_attn.attention(backend='auto')",
            }
            group = group_name(case, torch.float16, ctx.device)
            ctx.results.benchmark(f"{case.id}-auto", group, times, iterations, info)
    record = {
        "case": case.id,
        "key": autoselect.decision_key(query, key),
        "gpu": torch.cuda.get_device_name(query.device),
        "env_override": forced,
        "cached": cached,
        **decision,
        "auto_call_s": medians["auto"],
        "sdpa_call_s": medians["sdpa"],
        "auto_over_sdpa": medians["auto"] / medians["sdpa"],
    }
    ctx.results.auto.append(record)
    ctx.results.line("auto", **record)


def stage_host(ctx: Context) -> None:
    import torch
    import torch.nn.functional as F

    import entropy_attn

    generator = torch.Generator(device=ctx.device).manual_seed(0)
    query, key, value = (
        torch.randn(1, 2, 64, 64, generator=generator, device=ctx.device, dtype=torch.float16)
        for _ in range(3)
    )
    calls = 300
    host_times: dict[str, list[float]] = {}
    candidates = {
        "entropy_attn-off": lambda: entropy_attn.attention(query, key, value, backend="triton"),
        "entropy_attn-on": lambda: entropy_attn.attention(
            query, key, value, return_entropy=True, backend="triton"
        ),
        "sdpa": lambda: F.scaled_dot_product_attention(query, key, value),
    }
    for _ in range(5):  # interleaved repetitions: each round times every candidate once
        ctx.deadline.require(2.0, "a host-cost round")
        for name, fn in candidates.items():
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            elapsed = time.perf_counter() - start
            torch.cuda.synchronize()
            ctx.results.line("host", name=name, us_per_call=round(elapsed / calls * 1e6, 2))
            host_times.setdefault(name, []).append(elapsed / calls)
    for name, times in host_times.items():
        info = {
            "device": ctx.device,
            "dtype": "float16",
            "impl": "host-cost",
            "variant": name,
            "entropy": name.endswith("-on"),
            "baseline": f"wall time of {calls} back-to-back calls / {calls}, no sync (1x2x64x64)",
        }
        ctx.results.benchmark(f"host-{name}", "host cost per call", times, calls, info)


def diffusers_missing(ctx: Context, stage: str) -> bool:
    """``True`` (and the stage recorded as skipped) when diffusers does not import."""
    try:
        import diffusers  # noqa: F401
    except ImportError as error:
        ctx.results.skip(stage, f"diffusers does not import: {error!r}")
        return True
    return False


def time_unet_mode(
    ctx: Context,
    unet,
    inputs: dict,
    model: str,
    image_size: int,
    mode: str,
    enable_kwargs: dict | None,
    warmup: int,
    **timing,
) -> None:
    """One UNet step in one mode, timed and recorded as ``unet-<model>-<size>px-<mode>``.

    ``enable(unet, **enable_kwargs)`` first unless ``enable_kwargs`` is ``None`` (stock), then
    ``warmup`` untimed steps and ``cuda_times(step, **timing)``; ``disable`` afterwards, checked to
    put back the very same processor objects."""
    import torch

    import entropy_attn

    stock = dict(unet.attn_processors)

    @torch.inference_mode()
    def step():
        return unet(**inputs, return_dict=False)[0]

    recording = bool(enable_kwargs and enable_kwargs.get("record_entropy"))
    handle = None if enable_kwargs is None else entropy_attn.enable(unet, **enable_kwargs)
    try:
        for _ in range(warmup):
            step()
        times, iterations = cuda_times(step, **timing)
        records = len(handle.entropy_rows()) if recording else None
    finally:
        if handle is not None:
            entropy_attn.disable(unet)
    restored = unet.attn_processors
    assert all(restored[k] is v for k, v in stock.items()), "disable did not restore"
    info = {
        "device": ctx.device,
        "dtype": "float16",
        "impl": "unet",
        "variant": mode,
        "entropy": recording,
        "baseline": f"UNet2DConditionModel step, {mode}",
        "model": model,
        "image_size": image_size,
        "latent_size": inputs["sample"].shape[-1],
        "batch": inputs["sample"].shape[0],
        "entropy_records": records,
    }
    name = f"unet-{model}-{image_size}px-{mode}"
    ctx.results.benchmark(name, "unet", times, iterations, info)


UNET_STAGE_MODES = {
    "stock": None,
    "enable": {},
    "enable-record-entropy": {"record_entropy": True},
    "stock-again": None,
}


def stage_unet(ctx: Context) -> None:
    import torch

    if diffusers_missing(ctx, "unet"):
        return
    from benchmarks.unet_modes import unet_inputs
    from entropy_attn.configs import build_denoiser, load_unet_config

    ctx.deadline.require(30.0, "building the SD-2.1-base UNet")
    unet = build_denoiser("sd21-base", device=ctx.device, dtype=torch.float16)
    inputs = unet_inputs(load_unet_config("sd21-base"), 64, torch.float16, ctx.device)
    for mode, enable_kwargs in UNET_STAGE_MODES.items():
        ctx.deadline.require(10.0, f"UNet step {mode}")
        time_unet_mode(
            ctx, unet, inputs, "sd21-base", 512, mode, enable_kwargs, 3, budget_s=1.5, round_s=0.0
        )


LARGE_UNETS = {"sd21-base": (768, 1536), "sdxl-base": (768, 1536)}
LARGE_UNET_MODES = ("stock", "enable-triton", "enable-auto")


def large_unet_inputs(name: str, image_size: int, device: str) -> dict:
    """fp16 inputs of one guided step at ``image_size`` px, SDXL's added conditions included."""
    import torch

    from benchmarks.unet_modes import unet_inputs
    from entropy_attn.configs import load_unet_config, vae_scale_factor

    config = load_unet_config(name)
    latent = image_size // vae_scale_factor(name)
    inputs = unet_inputs(config, latent, torch.float16, device)
    if config.get("addition_embed_type") == "text_time":  # SDXL: pooled text and size ids
        batch = inputs["sample"].shape[0]
        pooled = config["projection_class_embeddings_input_dim"]
        pooled -= 6 * config["addition_time_embed_dim"]
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, device=device, dtype=torch.float16),
            "time_ids": torch.tensor(
                [[image_size, image_size, 0, 0, image_size, image_size]] * batch,
                device=device,
                dtype=torch.float16,
            ),
        }
    return inputs


def stage_unet_large(ctx: Context) -> None:
    """SD-2.1-base and SDXL-base UNet steps at 768 and 1536 px: stock SDPA, our kernel
    everywhere (``enable(backend="triton")``) and ``enable()`` (``backend="auto"``)."""
    import torch

    if diffusers_missing(ctx, "unet-large"):
        return
    from entropy_attn.configs import build_denoiser

    for model, sizes in LARGE_UNETS.items():
        ctx.deadline.require(40.0, f"building the {model} UNet and a step")
        unet = build_denoiser(model, device=ctx.device, dtype=torch.float16)
        for image_size in sizes:
            inputs = large_unet_inputs(model, image_size, ctx.device)
            for mode in LARGE_UNET_MODES:
                ctx.deadline.require(8.0 if image_size < 1024 else 15.0, f"{model} {mode}")
                enable_kwargs = (
                    None if mode == "stock" else {"backend": mode.removeprefix("enable-")}
                )
                time_unet_mode(
                    ctx, unet, inputs, model, image_size, mode, enable_kwargs, 2,
                    budget_s=0.0, round_s=0.0, min_rounds=5,
                )  # fmt: skip
            del inputs
        del unet
        torch.cuda.empty_cache()


STAGE_FUNCTIONS = {
    "parity": stage_parity,
    "kernel": stage_kernel,
    "auto": stage_auto,
    "host": stage_host,
    "unet": stage_unet,
    "unet-large": stage_unet_large,
}


def run_stages(ctx: Context, stages, functions=None, minimum=None, cuda: bool = True) -> None:
    """Run ``stages`` in order under the deadline; write the result file after each."""
    functions = functions or STAGE_FUNCTIONS
    minimum = minimum or STAGE_MIN_S
    for stage in stages:
        run_stage(ctx, stage, functions[stage], minimum[stage], cuda)
        ctx.results.write()


def run_stage(ctx: Context, stage: str, function, minimum_s: float, cuda: bool) -> None:
    """One stage, or the reason it did not (fully) run recorded as a skip."""
    if not cuda:
        ctx.results.skip(stage, "no CUDA device: GPU stage skipped")
        return
    if not ctx.deadline.allows(minimum_s):
        left = max(ctx.deadline.remaining(), 0)
        ctx.results.skip(stage, f"deadline: {left:.0f} s left, needs ~{minimum_s:.0f} s")
        return
    started = time.monotonic()
    try:
        function(ctx)
        ctx.results.line("stage", stage=stage, seconds=round(time.monotonic() - started, 1))
    except DeadlineExceeded as error:
        ctx.results.skip(f"{stage} (rest)", str(error))
    except Exception as error:  # one broken stage must not lose the others' results
        ctx.results.line("error", stage=stage, error=repr(error), trace=traceback.format_exc())
        ctx.results.skip(f"{stage} (rest)", f"error: {type(error).__name__}: {error}"[:500])


@contextlib.contextmanager
def hard_deadline(deadline: Deadline, grace_s: float):
    """A last resort if a call hangs past the budget: SIGALRM ``grace_s`` after the deadline
    raises ``DeadlineExceeded`` in the main thread (between bytecodes), so the results so far are
    still written. Stages themselves stop earlier, at ``Deadline.require``."""

    def on_alarm(signum, frame):
        raise DeadlineExceeded("deadline: the alarm fired")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(deadline.remaining(), 0) + grace_s + 1e-3)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds in all")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--out", type=Path, default=None, help="default: $OUT, else ./gpu-out")
    parser.add_argument("--autotune", action="store_true", help="let Triton autotune the tiles")
    parser.add_argument("--no-report", action="store_true", help="do not run report.py")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.budget)
    out_dir = args.out or Path(os.environ.get("OUT") or REPO_ROOT / "gpu-out")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.autotune:
        os.environ["ENTROPY_ATTN_AUTOTUNE"] = "0"
    # backend="auto"'s decisions go with the results (and are timed afresh in a fresh folder).
    os.environ.setdefault("ENTROPY_ATTN_CACHE_DIR", str(out_dir / "autoselect-cache"))
    installed = install_wheels()
    import torch

    from benchmarks.environment import collect_environment, device_slug

    cuda = torch.cuda.is_available()
    name = f"{device_slug(cpu_only=not cuda)}-{dt.date.today().isoformat()}-gpu-check"
    results = Results(out_dir, name)
    results.line("start", budget_s=args.budget, stages=args.stages, install=installed)

    try:
        with hard_deadline(deadline, ALARM_GRACE_S):
            results.environment = collect_environment(["cuda"] if cuda else ["cpu"])
            results.environment["gpu_check"] = {
                "install": installed,
                "autotune": args.autotune,
                "budget_s": args.budget,
                "autoselect_cache": os.environ["ENTROPY_ATTN_CACHE_DIR"],
            }
            ctx = Context(results=results, deadline=deadline, device="cuda" if cuda else "cpu")
            run_stages(ctx, args.stages, cuda=cuda)
    except DeadlineExceeded as error:
        results.skip("run", str(error))
    finally:
        path = results.write()
    results.line("done", result=str(path), seconds_left=round(deadline.remaining(), 1))
    if not args.no_report:
        from benchmarks import report

        report.main([str(path)])
    failed = [p for p in results.parity if not p["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
