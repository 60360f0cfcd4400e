"""Per-step, per-layer attention entropy, kept on the device until read."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _Record:
    step: int
    layer: str
    kind: str
    heads: int
    head_dim: int
    query_tokens: int
    n_tokens: int
    train_tokens: int
    scale: float
    entropy: torch.Tensor  # 0-d fp32 on the device: mean over batch, heads and queries


class EntropyRecorder:
    """Collects the mean attention entropy of every layer call, one 0-d tensor per record.

    ``step`` counts the denoiser's forward calls since the recorder was created or reset: one per
    denoising step in the usual pipelines (classifier-free guidance batches both branches into one
    call). Nothing is copied to the host until :meth:`rows` is called, so recording adds no device
    synchronisation; memory is one scalar per (step, layer call).
    """

    def __init__(self) -> None:
        self.step = -1
        self._records: list[_Record] = []

    def next_step(self, *_args) -> None:
        """Forward pre-hook of the denoiser: a new denoising step starts."""
        self.step += 1

    def add(self, entropy: torch.Tensor, **fields) -> None:
        """Record one layer call; ``entropy`` is ``(batch, heads, queries)``, any device."""
        self._records.append(
            _Record(step=max(self.step, 0), entropy=entropy.float().mean(), **fields)
        )

    def __len__(self) -> int:
        return len(self._records)

    def reset(self) -> None:
        self.step = -1
        self._records.clear()

    def rows(self) -> list[dict]:
        """The records as plain Python dicts (one host copy for all of them)."""
        if not self._records:
            return []
        by_device: dict[torch.device, list[int]] = {}
        for index, record in enumerate(self._records):
            by_device.setdefault(record.entropy.device, []).append(index)
        values = [0.0] * len(self._records)
        for indices in by_device.values():
            stacked = torch.stack([self._records[i].entropy for i in indices]).tolist()
            for i, value in zip(indices, stacked, strict=True):
                values[i] = value
        rows = []
        for record, value in zip(self._records, values, strict=True):
            row = {k: v for k, v in vars(record).items() if k != "entropy"}
            row["entropy"] = value
            rows.append(row)
        return rows

    def dataframe(self):
        """The rows as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError("entropy_dataframe() needs pandas: pip install pandas") from error
        return pd.DataFrame(self.rows())


__all__ = ["EntropyRecorder"]
