"""Which size fix restores the digits models off their training size, and what the scale adds.

    python -m entropy_attn.zoo.fixes --out docs/zoo [--n 300] [--sizes 16x16 12x12 ...]

(About 1-2 h on one core of this CPU, most of it the UNet and the DiT at 4x.)

For each model and size, every combination of {stock, each fix that applies} x {scale off, on}
(``entropy_attn.enable(pipe, positions=..., redilate=..., scale=...)``), 300 samples per cell
from the same noise as :func:`entropy_attn.zoo.evaluate` (so the stock cells repeat the quality
tables), measured the same way: SVC accuracy with a 95% Wilson interval, two-blob share,
Frechet distance. Paired exact McNemar tests per model and size: each fix against stock (scale
off), the scale on top of each combination (with vs without), Bonferroni over every test in the
run. Fixes act only on axes longer than at the training size, so at 0.5x they equal stock by
construction (tested) and only the scale is measured there.

Cells are cached in ``fixes-cells.jsonl`` as they finish (a rerun skips them); the tables are
``fixes.csv`` (cells), ``fixes-tests.csv`` (tests) and ``fixes.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..sizes import format_size, parse_size

# Per model: the fixes that apply (name -> enable options), from the papers' defaults.
FIXES = {
    "digits-unet": {"stock": {}, "redilate": {"redilate": True}},
    # PixArt's stock positions already interpolate (positions="interpolate" is the identity).
    "digits-dit": {"stock": {}},
    "digits-flux": {
        "stock": {},
        "interpolate": {"positions": "interpolate"},
        "ntk": {"positions": "ntk"},
        "yarn": {"positions": "yarn"},
    },
}
# 2x first: the most informative cells; then 1.5x, non-square, 0.5x, and 4x (the slowest).
SIZES = ((16, 16), (12, 12), (8, 16), (4, 4), (32, 32))
TRAIN = (8, 8)


def _label(size) -> str:
    """``(height, width)`` as the tables print it and ``--sizes`` takes it: ``WIDTHxHEIGHT``."""
    return format_size(size)


def _fixes_at(model: str, size) -> dict:
    larger = size[0] > TRAIN[0] or size[1] > TRAIN[1]
    return FIXES[model] if larger else {"stock": {}}


def run_cell(pipe, model: str, size, fix: str, scale: bool, n: int, steps: int, seed: int):
    """One cell: ``n`` samples at ``size`` with ``fix`` and the scale on/off."""
    import entropy_attn

    from .metrics import classify, count_blobs, frechet_distance, real_reference

    height, width = size
    labels = torch.arange(n) % 10
    noise = torch.randn(
        (n, 1, height, width),
        generator=torch.Generator().manual_seed(seed * 1_000_003 + height * 1000 + width),
    )  # the noise of zoo.evaluate for this size
    options = dict(FIXES[model][fix], scale=scale)
    start = time.monotonic()
    with entropy_attn.enabled(pipe, **options):
        images = pipe(
            labels, height=height, width=width, num_inference_steps=steps, latents=noise,
            batch_size=50,
        )  # fmt: skip
    predicted, features = classify(images)
    right = predicted == labels.numpy()
    blobs = np.array([count_blobs(im[0].numpy()) for im in images])
    reference = real_reference((height, width))
    return {
        "model": model,
        "size": _label(size),
        "fix": fix,
        "scale": scale,
        "n": n,
        "right": "".join("1" if r else "0" for r in right),
        "correct": int(right.sum()),
        "multi_blob": float((blobs >= 2).mean()),
        "frechet": float(frechet_distance(features, reference["features"])),
        "real_accuracy": float(reference["accuracy"]),
        "seconds": round(time.monotonic() - start, 1),
    }


def tests_of(cells: list[dict]) -> list[dict]:
    """Paired McNemar tests per model and size; Bonferroni over all of them."""
    from .metrics import mcnemar_exact

    by_key = {(c["model"], c["size"], c["fix"], c["scale"]): c for c in cells}
    rows = []
    for (model, size, fix, scale), cell in by_key.items():
        pairs = []
        if scale:  # what the scale adds on top of this combination
            pairs.append((f"{fix} + scale vs {fix}", by_key.get((model, size, fix, False))))
        elif fix != "stock":  # what the fix does, scale off
            pairs.append((f"{fix} vs stock", by_key.get((model, size, "stock", False))))
        for comparison, base in pairs:
            if base is None:
                continue
            a = np.array([ch == "1" for ch in base["right"]])
            b_ = np.array([ch == "1" for ch in cell["right"]])
            b, c = int((a & ~b_).sum()), int((~a & b_).sum())
            rows.append(
                {
                    "model": model,
                    "size": size,
                    "comparison": comparison,
                    "base_correct": base["correct"],
                    "correct": cell["correct"],
                    "n": cell["n"],
                    "b": b,
                    "c": c,
                    "p": mcnemar_exact(b, c),
                }
            )
    for row in rows:
        row["p_bonferroni"] = min(1.0, row["p"] * len(rows))
        row["family"] = len(rows)
    return rows


def write_tables(cells: list[dict], out: Path, steps: int, seed: int, not_run: int = 0) -> None:
    from .metrics import wilson_interval

    tests = tests_of(cells)
    fields = [k for k in cells[0] if k != "right"]
    with (out / "fixes.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*fields, "accuracy", "ci_low", "ci_high"])
        writer.writeheader()
        for cell in cells:
            low, high = wilson_interval(cell["correct"], cell["n"])
            row = {k: cell[k] for k in fields}
            writer.writerow(row | {"accuracy": cell["correct"] / cell["n"], "ci_low": low,
                                   "ci_high": high})  # fmt: skip
    if tests:
        with (out / "fixes-tests.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(tests[0]))
            writer.writeheader()
            writer.writerows(tests)
    family = len(tests)
    lines = [
        "# Size fixes x the scale on the digits models (CPU, `python -m entropy_attn.zoo.fixes`)",
        "",
        f"{cells[0]['n']} samples per cell (labels 0-9 in turn), DDIM {steps} steps, seed {seed}, "
        "the same noise for every cell of a size (that of `zoo.evaluate`). Accuracy: RBF SVC "
        "after area-averaging to 8x8, 95% Wilson interval; >=2 blobs: share of samples with two "
        "or more connected blobs; Frechet on the SVC's decision values vs real digits. Tests: "
        f"exact McNemar on paired outcomes (b/c: only the base / only the row is right), "
        f"Bonferroni over the {family} tests of this file (p x {family}).",
        *(
            [f"{not_run} cells of the full grid were not run (time); they are not in the tables."]
            if not_run
            else []
        ),
        "",
        "| model | size (W x H) | fix | scale | accuracy [95% CI] | >=2 blobs | Frechet | real |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        low, high = wilson_interval(cell["correct"], cell["n"])
        lines.append(
            f"| {cell['model']} | {cell['size']} | {cell['fix']} | "
            f"{'on' if cell['scale'] else 'off'} | {cell['correct'] / cell['n']:.1%} "
            f"[{low:.1%}, {high:.1%}] | {cell['multi_blob']:.1%} | {cell['frechet']:.1f} | "
            f"{cell['real_accuracy']:.1%} |"
        )
    lines += [
        "",
        "| model | size | comparison | accuracy base -> row | b/c | p | p Bonferroni |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tests:
        lines.append(
            f"| {t['model']} | {t['size']} | {t['comparison']} | {t['base_correct'] / t['n']:.1%}"
            f" -> {t['correct'] / t['n']:.1%} | {t['b']}/{t['c']} | {t['p']:.3g} | "
            f"{t['p_bonferroni']:.3g} |"
        )
    (out / "fixes.md").write_text("\n".join(lines) + "\n")


def _priority(cell) -> int:
    """2x for every model first, then the cheap FLUX cells, the other sizes, 4x last."""
    model, size = cell[0], cell[1]
    if size == (16, 16):
        return 0
    if model == "digits-flux":
        return 1
    return 3 if size == (32, 32) else 2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/zoo")
    parser.add_argument("--models", nargs="*", default=list(FIXES), choices=list(FIXES))
    parser.add_argument("--sizes", nargs="*", type=parse_size, default=list(SIZES))
    parser.add_argument("--n", type=int, default=300, help="samples per cell")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="write the tables from the cells cached so far (the rest listed as not run)",
    )
    args = parser.parse_args(argv)
    from .load import load_pipeline

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "fixes-cells.jsonl"
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            cell = json.loads(line)
            if cell["n"] == args.n:
                done[(cell["model"], cell["size"], cell["fix"], cell["scale"])] = cell
    plan = [
        (model, size, fix, scale)
        for size in args.sizes
        for model in args.models
        for fix in _fixes_at(model, size)
        for scale in (False, True)
    ]
    if args.tables_only:
        missing = [cell for cell in plan if (cell[0], _label(cell[1]), *cell[2:]) not in done]
        for model, size, fix, scale in missing:
            print(f"not run: {model} {_label(size)} {fix} scale={'on' if scale else 'off'}")
        plan = [cell for cell in plan if cell not in missing]
    plan.sort(key=_priority)  # the tables keep size order; the run goes by information per second
    pipes = {}
    start = time.monotonic()
    for i, (model, size, fix, scale) in enumerate(plan, 1):
        key = (model, _label(size), fix, scale)
        if key not in done:
            if model not in pipes:
                pipes[model] = load_pipeline(model)
                pipes[model].set_progress_bar_config(disable=True)
            cell = run_cell(pipes[model], model, size, fix, scale, args.n, args.steps, args.seed)
            done[key] = cell
            with cache.open("a") as f:
                f.write(json.dumps(cell) + "\n")
            print(
                f"[{i}/{len(plan)}] {model} {key[1]} {fix} scale={'on' if scale else 'off'}: "
                f"{cell['correct'] / cell['n']:.1%} ({cell['seconds']} s, "
                f"{time.monotonic() - start:.0f} s so far)",
                flush=True,
            )
    order = {size: i for i, size in enumerate(args.sizes)}
    plan.sort(key=lambda cell: (order[cell[1]], list(FIXES).index(cell[0])))
    cells = [done[(m, _label(s), f, sc)] for m, s, f, sc in plan]
    write_tables(cells, out, args.steps, args.seed, not_run=len(missing) if args.tables_only else 0)
    print(f"wrote {out / 'fixes.md'}, {out / 'fixes.csv'}, {out / 'fixes-tests.csv'}")


if __name__ == "__main__":
    main()
