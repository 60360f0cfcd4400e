"""Tiny-UNet step on the CPU with the modes interleaved round by round (a noisy machine's A/B).

Usage (from the repository root)::

    python benchmarks/interleaved_unet.py                  # 15 rounds, latents 16 and 32
    python benchmarks/interleaved_unet.py --rounds 5 --output /tmp/unet-ab

``benchmarks/run.py --cpu`` times each mode's rounds back to back, so a machine whose speed drifts
within minutes (a shared VM) skews its ratios. Here every round runs every mode once, in an order
rotated from round to round, and the figure of merit is the median over rounds of each mode's
time divided by stock's time *in the same round*. Modes: ``stock`` (diffusers' own processors),
``enable`` (``entropy_attn.enable``: the PyTorch path on CPU), ``record`` (``enable`` with
``record_entropy=True``: output and entropy from one flash call per layer,
``entropy_attn.op.api.attention_lse``) and ``record-two-calls`` (the same, with that one call
replaced by SDPA plus :func:`entropy_attn.op.api.entropy_lse`, the CPU path before it). The UNet is
``benchmarks/test_bench_unet_cpu.py``'s tiny config with random weights, fp32, batch 2 (guidance),
one torch thread per core as set by torch. Each timed sample is the mean of ``--steps`` UNet calls.

Writes ``<output>.json`` (every sample) and ``<output>.md``; the default output is
``benchmarks/results/unet-interleaved-<device>-<date>``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(REPO_ROOT))

MODES = ("stock", "enable", "record", "record-two-calls")


@contextlib.contextmanager
def two_call_entropy():
    """The CPU entropy path before ``attention_lse``: SDPA for the output, then ``entropy_lse``."""
    from entropy_attn.op import api as ops

    def two_calls(query, key, value, scale=None):
        out = F.scaled_dot_product_attention(query, key, value, scale=scale)
        return out, ops.entropy_lse(query, key, scale)

    one_call = ops.attention_lse
    ops.attention_lse = two_calls
    try:
        yield
    finally:
        ops.attention_lse = one_call


@contextlib.contextmanager
def mode_context(unet, mode: str):
    import entropy_attn

    if mode == "stock":
        yield
        return
    with contextlib.ExitStack() as stack:
        if mode == "record-two-calls":
            stack.enter_context(two_call_entropy())
        stack.enter_context(entropy_attn.enabled(unet, record_entropy=mode.startswith("record")))
        yield


def measure(unet, inputs: dict, rounds: int, steps: int, progress=print) -> dict[str, list[float]]:
    """``{mode: [seconds per step, one per round]}`` with the modes interleaved."""

    @torch.inference_mode()
    def step():
        return unet(**inputs, return_dict=False)[0]

    samples = {mode: [] for mode in MODES}
    for mode in MODES:  # warm-up: first calls allocate, compile nothing, fill caches
        with mode_context(unet, mode):
            step()
    for index in range(rounds):
        order = MODES[index % len(MODES) :] + MODES[: index % len(MODES)]
        for mode in order:
            with mode_context(unet, mode):
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                samples[mode].append((time.perf_counter() - start) / steps)
        progress(f"  round {index + 1}/{rounds}: stock {samples['stock'][-1] * 1e3:.1f} ms")
    return samples


def summary(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per mode: median seconds, and the median and range over rounds of time / stock time."""
    out = {}
    for mode, times in samples.items():
        ratios = [t / s for t, s in zip(times, samples["stock"], strict=True)]
        out[mode] = {
            "median_s": statistics.median(times),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    return out


def render(payload: dict) -> str:
    lines = [
        "# Tiny-UNet step, modes interleaved round by round (CPU)",
        "",
        "Written by `benchmarks/interleaved_unet.py`: every round times each mode once (order"
        " rotated), `vs stock` is the median over rounds of the mode's time over stock's in the"
        f" same round. {payload['device']}, torch {payload['torch']}, {payload['threads']}"
        f" threads, {payload['rounds']} rounds of {payload['steps']} steps, fp32, batch 2.",
        "",
        "| image | mode | median per step | vs stock (median) | vs stock (min-max over rounds) |",
        "|---|---|---|---|---|",
    ]
    for size in payload["sizes"]:
        for mode, row in size["summary"].items():
            lines.append(
                f"| {size['latent'] * 8} px | {mode} | {row['median_s'] * 1e3:.2f} ms"
                f" | {row['ratio_median']:.2f}x | {row['ratio_min']:.2f}-{row['ratio_max']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2, help="UNet calls per timed sample")
    parser.add_argument("--latents", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--output", type=Path, default=None, help="result path without suffix")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import diffusers

    from benchmarks.environment import device_slug
    from benchmarks.unet_modes import TINY_UNET_CONFIG, unet_inputs

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_config(TINY_UNET_CONFIG).eval()
    unet.requires_grad_(False)
    slug = device_slug(cpu_only=True)
    sizes = []
    for latent in args.latents:
        print(f"latent {latent} ({latent * 8} px): {args.rounds} rounds", flush=True)
        inputs = unet_inputs(TINY_UNET_CONFIG, latent, torch.float32, "cpu")
        samples = measure(unet, inputs, args.rounds, args.steps, lambda s: print(s, flush=True))
        sizes.append({"latent": latent, "samples_s": samples, "summary": summary(samples)})
    payload = {
        "device": slug,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "steps": args.steps,
        "date": dt.date.today().isoformat(),
        "sizes": sizes,
    }
    output = args.output or REPO_ROOT / "benchmarks" / "results" / (
        f"unet-interleaved-{slug}-{payload['date']}"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_name(output.name + ".json").write_text(json.dumps(payload, indent=1) + "\n")
    markdown = render(payload)
    output.with_name(output.name + ".md").write_text(markdown)
    print(markdown)
    print(f"results: {output}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
