"""Everything under docs/zoo/ for one model, from one command:

    python -m entropy_attn.zoo.report --model digits-unet --out docs/zoo

writes the quality table (``quality-<model>[-extend].csv/.md``, :func:`~entropy_attn.zoo.evaluate`),
the entropy / logit-variance study (``attention-<model>.csv``, ``fig5-*.png``, ``fig6-*.png``,
:func:`~entropy_attn.zoo.attention.attention_study`, also for the same architecture at random
initialisation) and the demo picture (:func:`~entropy_attn.zoo.demo_grid`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .attention import attention_study
from .demo import DEFAULT_SIZES, demo_grid
from .load import load_pipeline, weights_folder
from .metrics import evaluate
from .models import build_denoiser, sample_scheduler
from .train import MODEL_KINDS, PIPELINES


def random_init_pipeline(name: str, seed: int = 0):
    """The same architecture as ``name`` with freshly initialised (untrained) weights."""
    kind = MODEL_KINDS[name]
    component = "unet" if kind == "unet" else "transformer"
    return PIPELINES[kind](
        **{component: build_denoiser(kind, seed), "scheduler": sample_scheduler()}
    )


def _lr_schedule(log: dict) -> str:
    warmup = f"linear warm-up {log['warmup']} steps"
    if log.get("schedule", "constant") == "cosine":
        return f"{warmup}, then cosine decay to 0 at step {log['steps_requested']}"
    return f"{warmup}, then constant"


def _reproduce_command(name: str, log: dict) -> str:
    command = (
        f"python -m entropy_attn.zoo.train --model {name} --steps {log['steps_requested']} "
        f"--seed {log['seed']} --lr {log['lr']} --batch-size {log['batch_size']} "
        f"--schedule {log.get('schedule', 'constant')} --threads {log['threads']}"
    )
    if log["steps"] < log["steps_requested"]:  # stopped by the clock: not repeatable by steps
        command += f" --minutes {log['minutes_limit']}"
    return command + " --out DIR"


def _stopped(log: dict) -> str:
    if log["steps"] < log["steps_requested"]:
        return f"; the run stopped at its {log['minutes_limit']}-minute limit"
    return ""


def _flux_note(config: dict) -> list[str]:
    if config["_class_name"] != "FluxTransformer2DModel":
        return []
    return [
        "FLUX as FluxPipeline feeds it: 2x2 pixels packed into one token (16 image tokens at "
        "8x8), RoPE ids (0, row, column) over "
        f"{config['axes_dims_rope']} of the head's {config['attention_head_dim']} dims; the label "
        "token is the text token of joint attention (text ids 0) and also the pooled text "
        f"embedding; {config['num_layers']} double- and {config['num_single_layers']} "
        f"single-stream blocks, {config['num_attention_heads']} heads. RoPE positions run 0, 1, "
        "... past the training range at larger sizes; `entropy_attn.enable(pipe, positions=...)` "
        "changes them (docs/usage.md, Size fixes beside the scale).",
        "",
    ]


def write_model_card(name: str, docs: str | Path = "docs/zoo") -> Path:
    """``weights/<name>/README.md`` from ``train_log.json`` and the committed quality table."""
    folder = weights_folder(name)
    log = json.loads((folder / "train_log.json").read_text())
    curve = log["loss_curve"]
    component = "unet" if name == "digits-unet" else "transformer"
    config = json.loads((folder / component / "config.json").read_text())
    lines = [
        f"# {name}",
        "",
        f"A pixel-space, class-conditional `{config['_class_name']}` "
        f"({log['parameters']:,} parameters, fp16 on disk) trained on scikit-learn's "
        "`load_digits` (1,797 real 8x8 handwritten digits, shipped in the scikit-learn wheel) at "
        "their native 8x8 size. The label reaches the model as a one-hot `(batch, 1, 10)` "
        "`encoder_hidden_states` token through the model's own text projection. Load it with "
        f'`entropy_attn.zoo.load_pipeline("{name}")` (offline, `from_pretrained` on this folder).',
        "",
        *_flux_note(config),
        "## Recipe",
        "",
        f"- data: {log['data']}",
        f"- objective: {log['objective']}; sampling: DDIM (clip_sample), 10 steps in the tables",
        f"- AdamW lr {log['lr']} ({_lr_schedule(log)}), batch {log['batch_size']}, "
        f"grad-norm clip 1, EMA {log['ema_decay']} (the EMA weights are shipped)",
        f"- seed {log['seed']}; {log['steps']} steps in {log['seconds'] / 60:.1f} min wall time "
        f"({log['threads']} torch thread{'s' if log['threads'] > 1 else ''} on a 2-core CPU"
        f"{_stopped(log)}), torch {log['torch']}",
        f"- loss (mean of {log['loss_curve'][0]['step']} steps): first {curve[0]['loss']:.4f}, "
        f"last {curve[-1]['loss']:.4f}",
        f"- reproduce: `{_reproduce_command(name, log)}` (bit-for-bit only on the same torch "
        "build and thread count)",
        "",
        "## Metrics",
        "",
    ]
    for table in sorted(Path(docs).glob(f"quality-{name}*.md")):
        lines += [f"From `docs/zoo/{table.name}`:", ""]
        lines += [line for line in table.read_text().splitlines()[2:]]
        lines.append("")
    path = folder / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(MODEL_KINDS))
    parser.add_argument("--out", default="docs/zoo")
    parser.add_argument("--n", type=int, default=300, help="samples per quality cell")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", nargs="*", default=[], choices=["quality", "attention", "demo"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    positions = ["interpolate"] + (["extend"] if args.model == "digits-dit" else [])
    if "demo" not in args.skip:
        for pos in positions:
            print(demo_grid(args.model, args.out, pipe=pipe, steps=args.steps, positions=pos))
    if "quality" not in args.skip:
        for pos in positions:
            suffix = "" if pos == "interpolate" else f"-{pos}"
            # Extended positions equal interpolated ones at 8x8 and below; they matter at 2x.
            evaluate(
                pipe,
                sizes=DEFAULT_SIZES if pos == "interpolate" else ((16, 16),),
                n_per_cell=args.n,
                steps=args.steps,
                positions=(pos,),
                out_dir=args.out,
                name=f"{args.model}{suffix}",
            )
            print(f"quality table written ({pos})")
    print(write_model_card(args.model, args.out))
    if "attention" not in args.skip:
        for pos in positions:
            suffix = "" if pos == "interpolate" else f"-{pos}"
            attention_study(
                pipe,
                args.model,
                args.out,
                steps=args.steps,
                positions=pos,
                label=f"{args.model}{suffix}",
            )
        attention_study(
            random_init_pipeline(args.model),
            args.model,
            args.out,
            steps=2,
            label=f"{args.model}-random-init",
        )
        print("attention study written")


if __name__ == "__main__":
    main()
