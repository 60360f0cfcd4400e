"""Paper Figs. 5/6 on trained attention, and the logit variance that Eq. 5 ties them to.

For a zoo model (and the same architecture at its random initialisation, for reference) this
records the mean self-attention entropy of every layer while sampling real digits at several
sizes, stock and with entropy-attn (same noise), and the variance of the attention logits
``scale * q.k`` over the keys (mean over queries, heads, samples and steps, stock scale).
Eq. 5 of the paper, ``H ~ ln N - sigma^2 / 2``, says entropy grows with ``ln N`` at a rate that
shrinks as the logit variance ``sigma^2`` grows, and that the entropy-preserving scale matters
in proportion to ``sigma^2``: near-uniform attention (small variance) leaves it nothing to fix.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from ..integration.attention_base import kind_of
from ..integration.probe import attention_modules
from ..science import analysis, plots
from ..sizes import format_size


class LogitVariance:
    """Forward pre-hooks on the self-attention modules that accumulate the per-query variance of
    ``attn.scale * q.k`` over the keys (stock scale), averaged per layer."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.handles = []
        for name, module in attention_modules(denoiser).items():
            if kind_of(module) != "cross":
                self.handles.append(
                    module.register_forward_pre_hook(self._hook(name), with_kwargs=True)
                )

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.ndim == 4:
                hidden = hidden.flatten(2).transpose(1, 2)
            query, key = module.to_q(hidden), module.to_k(hidden)
            batch, tokens, _ = query.shape
            heads = module.heads
            query = query.view(batch, tokens, heads, -1).transpose(1, 2)
            key = key.view(batch, tokens, heads, -1).transpose(1, 2)
            logits = (query @ key.transpose(-1, -2)) * module.scale
            variance = logits.float().var(dim=-1, unbiased=False).mean().item()
            self.sums[name] = self.sums.get(name, 0.0) + variance
            self.counts[name] = self.counts.get(name, 0) + 1

        return hook

    def result(self) -> dict[str, float]:
        """Layer name -> mean logit variance."""
        return {name: self.sums[name] / self.counts[name] for name in self.sums}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def record(pipe, size, *, n: int = 20, steps: int = 10, seed: int = 0, positions="interpolate"):
    """``{method: [LayerEntropy]}`` and ``{layer: logit variance}`` for one size."""
    from .models import own_positions

    height, width = size
    labels = torch.arange(n) % 10
    noise = torch.randn((n, 1, height, width), generator=torch.Generator().manual_seed(seed))
    kwargs = dict(height=height, width=width, num_inference_steps=steps, latents=noise)
    out = {}
    variance = {}
    for method in analysis.METHODS:
        with analysis.recording(pipe, size, method=method, backend="torch") as rec:
            probe = LogitVariance(pipe.denoiser) if method == "stock" else None
            try:
                pipe(labels, positions=own_positions(pipe, positions), **kwargs)
            finally:
                if probe is not None:
                    probe.remove()
                    variance = probe.result()
            out[method] = rec.layers()
    return out, variance


def attention_study(
    pipe,
    name: str,
    out_dir: str | Path,
    *,
    sizes=((4, 4), (8, 8), (12, 12), (16, 16)),
    n: int = 20,
    steps: int = 10,
    seed: int = 0,
    positions: str = "interpolate",
    label: str | None = None,
) -> list[dict]:
    """Write ``attention-<label>.csv``, ``fig5-<label>.png`` and ``fig6-<label>.png``.

    One CSV row per (size, method, layer): the :class:`~entropy_attn.science.analysis.LayerEntropy`
    fields, ``entropy / ln N`` and (stock rows) the logit variance. Fig. 5: entropy vs ``ln N``
    per level (training token count ``T``); Fig. 6: per-layer entropy at the training size and
    at 2x, stock vs entropy-attn.
    """
    label = label or name
    pipe.set_progress_bar_config(disable=True)
    rows, series, all_layers = [], {}, []
    for size in sizes:
        by_method, variance = record(pipe, size, n=n, steps=steps, seed=seed, positions=positions)
        for method, layers in by_method.items():
            all_layers.extend(layers)
            series[f"{format_size(size)} {method}"] = layers
            for layer in layers:
                row = {"model": label, **layer.as_dict()}
                # Cross-attention sees one key (the label token): entropy 0, ln N 0.
                ln_n = math.log(layer.n_tokens)
                row["entropy_over_ln_n"] = layer.entropy / ln_n if ln_n > 0 else None
                row["logit_variance"] = variance.get(layer.layer) if method == "stock" else None
                rows.append(row)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / f"attention-{label}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plots.plot_entropy_vs_log_n(
        analysis.fit_levels(all_layers),
        out_dir / f"fig5-{label}.png",
        title=f"{label}: self-attention entropy vs ln N (trained, sampling digits)",
    )
    train = tuple(pipe.train_size)
    double = (2 * train[0], 2 * train[1])
    chosen = {
        k: v
        for k, v in series.items()
        if k.rsplit(" ", 1)[0] in {format_size(train), format_size(double)}
    }
    plots.plot_layer_entropy(
        chosen, out_dir / f"fig6-{label}.png", title=f"{label}: per-layer self-attention entropy"
    )
    return rows
