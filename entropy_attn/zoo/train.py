"""Seeded training of the zoo's digit diffusion models.

    python -m entropy_attn.zoo.train --model digits-unet --steps 3000 --out DIR

DDPM objective (epsilon prediction, 1000 cosine steps) on all 1,797 ``load_digits`` images
at their native 8x8 in [-1, 1], AdamW, linear warm-up then cosine decay to 0 at ``--steps``,
EMA of the weights (the EMA weights are saved). Training stops at ``--steps`` or after
``--minutes`` of wall time, whichever comes first; the step count reached is recorded. A run
that reached ``--steps`` is repeated step for step by the same command on the same machine and
thread count; a run stopped by ``--minutes`` stopped part-way down the cosine (whose length is
``--steps``) and is not reproducible by step count (the shipped runs reached their steps).

Output: ``DIR`` holds a ``save_pretrained`` pipeline folder (fp16 weights) and
``train_log.json`` (recipe, seed, steps, wall time, loss curve).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from .data import load_digits, to_model_range
from .models import (
    TRAIN_SIZE,
    DigitsDiTPipeline,
    DigitsFluxPipeline,
    DigitsUNetPipeline,
    build_denoiser,
    run_denoiser,
    sample_scheduler,
    train_scheduler,
)

MODEL_KINDS = {"digits-unet": "unet", "digits-dit": "dit", "digits-flux": "flux"}
PIPELINES = {"unet": DigitsUNetPipeline, "dit": DigitsDiTPipeline, "flux": DigitsFluxPipeline}
LR_SCHEDULES = ("cosine", "constant")


def learning_rate(step: int, *, lr: float, warmup: int, steps: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to 0 at ``steps``."""
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * step / steps))
    return lr * factor


def train(
    model: str,
    *,
    steps: int,
    minutes: float | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup: int = 50,
    ema_decay: float = 0.995,
    schedule: str = "cosine",
    config: dict | None = None,
    threads: int | None = 1,
    log_every: int = 50,
    progress: bool = True,
):
    """Train ``"digits-unet"``, ``"digits-dit"`` or ``"digits-flux"``; returns ``(pipeline, log)``.

    The pipeline holds the EMA weights in float32; with ``out`` it is also saved there in fp16
    together with ``train_log.json``. ``config`` overrides entries of the model's config (design
    studies; the shipped models use none).
    """
    if model not in MODEL_KINDS:
        raise ValueError(f"model must be one of {sorted(MODEL_KINDS)}, got {model!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if minutes is not None and not minutes > 0:
        raise ValueError(f"minutes must be positive or None, got {minutes!r}")
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(
            model, steps, minutes, out, seed, batch_size, lr, warmup, ema_decay, schedule, config,
            log_every, progress,
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)  # the caller's thread count, as it was


def _train(
    model, steps, minutes, out, seed, batch_size, lr, warmup, ema_decay, schedule, config,
    log_every, progress,
):  # fmt: skip
    kind = MODEL_KINDS[model]
    images, labels = load_digits()
    data = to_model_range(images, (TRAIN_SIZE, TRAIN_SIZE))
    denoiser = build_denoiser(kind, seed, config)
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    noise_schedule = train_scheduler()
    alphas = noise_schedule.alphas_cumprod.float()
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    deadline = None if minutes is None else start + 60.0 * minutes
    curve: list[dict] = []
    running = 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"train {model}", mininterval=5.0)
    step = 0
    denoiser.train()
    while step < steps and (deadline is None or time.monotonic() < deadline):
        index = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        x0, y = data[index], labels[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(
            0, noise_schedule.config.num_train_timesteps, (batch_size,), generator=generator
        )
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, lr=lr, warmup=warmup, steps=steps, schedule=schedule)
        loss = torch.nn.functional.mse_loss(run_denoiser(denoiser, xt, t, y), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), denoiser.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        step += 1
        running += loss.item()
        if step % log_every == 0:
            curve.append(
                {
                    "step": step,
                    "loss": running / log_every,
                    "seconds": round(time.monotonic() - start, 1),
                }
            )
            running = 0.0
            if bar is not None:
                bar.set_postfix(loss=f"{curve[-1]['loss']:.4f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.monotonic() - start
    ema.eval()
    pipe_cls = PIPELINES[kind]
    component = "unet" if kind == "unet" else "transformer"
    pipe = pipe_cls(**{component: ema, "scheduler": sample_scheduler()})
    log = {
        "model": model,
        "seed": seed,
        "steps_requested": steps,
        "steps": step,
        "minutes_limit": minutes,
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "lr": lr,
        "warmup": warmup,
        "schedule": schedule,
        "config_overrides": config or {},
        "ema_decay": ema_decay,
        "parameters": sum(p.numel() for p in ema.parameters()),
        "data": "sklearn load_digits: all 1797 images at their native 8x8, 0..16 -> [-1, 1]",
        "objective": "DDPM epsilon MSE, 1000 steps, squaredcos_cap_v2 betas",
        "torch": torch.__version__,
        "loss_curve": curve,
    }
    if out is not None:
        save(pipe, out, log)
    return pipe, log


def save(pipe, out: str | Path, log: dict) -> None:
    """Save the pipeline in fp16 (``save_pretrained``) and the training log next to it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    denoiser = pipe.denoiser
    half = copy.deepcopy(denoiser).to(torch.float16)
    pipe_cls = type(pipe)
    component = "unet" if hasattr(pipe, "unet") else "transformer"
    pipe_cls(**{component: half, "scheduler": pipe.scheduler}).save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(MODEL_KINDS))
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps (upper bound)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time limit")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--schedule",
        choices=LR_SCHEDULES,
        default="cosine",
        help="learning rate after warm-up (cosine: decays to 0 at --steps)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    _, log = train(
        args.model,
        steps=args.steps,
        minutes=args.minutes,
        out=args.out,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        threads=args.threads,
    )
    last = log["loss_curve"][-1]["loss"] if log["loss_curve"] else math.nan
    print(f"{log['model']}: {log['steps']} steps in {log['seconds']:.0f} s, last loss {last:.4f}")


if __name__ == "__main__":
    main()
