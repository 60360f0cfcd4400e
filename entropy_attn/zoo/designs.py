"""Design study: which digit-model designs make self-attention carry spatial structure?

    python -m entropy_attn.zoo.designs --out docs/zoo --steps 1000

For each design (the two shipped models, loaded; the variants, trained here with the shipped
recipe but fewer steps, stated in the table) this measures, with the same code for all:

- accuracy at the 8x8 training size and at 16x16 (2x), stock vs entropy-attn from the same
  noise, with 95% Wilson intervals and the exact McNemar test (:func:`~entropy_attn.zoo.evaluate`);
- self-attention entropy / ln N per layer at 8x8 and the logit variance
  (:func:`entropy_attn.zoo.attention.record`), the quantity Eq. 5 ties the method's effect to.

Writes ``designs.csv`` and ``designs.md``. The variants are not shipped.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import torch

from .attention import record
from .load import load_pipeline
from .metrics import evaluate

# name -> (kind, config overrides, what it tries)
VARIANTS = {
    "unet-8heads-2layers": (
        "unet",
        {"attention_head_dim": 8, "transformer_layers_per_block": 2},
        "digits-unet with 8 heads (head dim 4 at 8x8) and two transformer layers per block: "
        "more, narrower heads and twice the attention",
    ),
}
SHIPPED = {
    "digits-unet": "UNet2DConditionModel, channels 32/64, 4 heads, self-attention at 8x8 and 4x4",
    "digits-dit": "PixArt, patch 1, 6 blocks, width 64, 4 heads: attention is the only mixing",
}


def measure(pipe, name: str, *, n: int, steps: int, progress: bool = True) -> dict:
    """One row of the design table for a pipeline."""
    pipe.set_progress_bar_config(disable=True)
    cells = evaluate(
        pipe, sizes=((8, 8), (16, 16)), n_per_cell=n, steps=steps, name=name, progress=progress
    )
    by = {(c.height, c.method): c for c in cells}
    layers, variance = record(pipe, (8, 8), n=20, steps=steps)
    ratios = [
        layer.entropy / math.log(layer.n_tokens)
        for layer in layers["stock"]
        if layer.kind == "self" and layer.n_tokens > 1
    ]
    row = {"design": name}
    for (height, method), key in [
        ((8, "stock"), "acc_8x8"),
        ((16, "stock"), "acc_16x16_stock"),
        ((16, "entropy-attn"), "acc_16x16_entropy_attn"),
    ]:
        cell = by[(height, method)]
        row[key] = cell.accuracy
        row[key + "_ci"] = f"[{cell.ci_low:.1%}, {cell.ci_high:.1%}]"
    ours = by[(16, "entropy-attn")]
    row["mcnemar_16x16"] = f"{ours.mcnemar_b}/{ours.mcnemar_c}, p={ours.mcnemar_p:.3g}"
    row["blobs_16x16_stock"] = by[(16, "stock")].multi_blob
    row["entropy_over_ln_n_min"] = min(ratios)
    row["entropy_over_ln_n_max"] = max(ratios)
    row["logit_variance_min"] = min(variance.values())
    row["logit_variance_max"] = max(variance.values())
    row["parameters"] = sum(p.numel() for p in pipe.denoiser.parameters())
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/zoo")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per variant")
    parser.add_argument("--n", type=int, default=300, help="samples per accuracy cell")
    parser.add_argument("--ddim-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from .train import train

    torch.set_num_threads(args.threads)
    rows = []
    for name, what in SHIPPED.items():
        print(f"measuring {name} (shipped)", flush=True)
        row = measure(load_pipeline(name), name, n=args.n, steps=args.ddim_steps)
        rows.append(row | {"what": what, "training": "shipped run (model card)"})
    for name, (kind, config, what) in VARIANTS.items():
        print(f"training {name} ({args.steps} steps)", flush=True)
        pipe, log = train(
            "digits-unet" if kind == "unet" else "digits-dit",
            steps=args.steps,
            config=config,
            threads=args.threads,
        )
        row = measure(pipe, name, n=args.n, steps=args.ddim_steps)
        training = f"{log['steps']} steps, {log['seconds'] / 60:.1f} min, seed {log['seed']}"
        rows.append(row | {"what": what, "training": training, "config": str(config)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = sorted({key for row in rows for key in row}, key=lambda k: list(rows[-1]).index(k))
    with (out / "designs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Digit-model designs: does self-attention carry the layout? "
        "(CPU, written by `python -m entropy_attn.zoo.designs`)",
        "",
        f"Accuracy: {args.n} samples per cell, DDIM {args.ddim_steps} steps, seed 0, RBF SVC, "
        "95% Wilson interval; entropy-attn at 16x16 from the same noise, exact McNemar "
        "(b: stock right / entropy-attn wrong, c: the reverse). entropy / ln N and logit "
        "variance: per self-attention layer at the 8x8 training size, stock, 20 samples "
        "(range over layers).",
        "",
        "| design | what | parameters | training | acc 8x8 | acc 16x16 stock | "
        "acc 16x16 entropy-attn | McNemar 16x16 | >=2 blobs 16x16 | entropy / ln N at 8x8 | "
        "logit variance at 8x8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['design']} | {r['what']} | {r['parameters']:,} | {r['training']} | "
            f"{r['acc_8x8']:.1%} {r['acc_8x8_ci']} | "
            f"{r['acc_16x16_stock']:.1%} {r['acc_16x16_stock_ci']} | "
            f"{r['acc_16x16_entropy_attn']:.1%} {r['acc_16x16_entropy_attn_ci']} | "
            f"{r['mcnemar_16x16']} | {r['blobs_16x16_stock']:.1%} | "
            f"{r['entropy_over_ln_n_min']:.2f}-{r['entropy_over_ln_n_max']:.2f} | "
            f"{r['logit_variance_min']:.2f}-{r['logit_variance_max']:.2f} |"
        )
    (out / "designs.md").write_text("\n".join(lines) + "\n")
    print(out / "designs.md")


if __name__ == "__main__":
    main()
