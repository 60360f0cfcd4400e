"""Per-step, per-layer attention entropy: detached scalars, kept on the device until read.

Three bounded or unbounded modes (``enable(..., record_entropy=...)``):

- ``"all"`` (``True``): one row per (step, layer call); memory grows by one 0-d tensor per layer
  call, without limit over a long run.
- ``"all"`` with ``last_steps=K``: the same rows for the last ``K`` steps only; older steps are
  dropped as new ones start.
- ``"mean"``: one running sum (float64; float32 on MPS) and count per (layer, call shape: query
  and key tokens, scale); memory is one 0-d tensor per layer and image size, however long the
  run. Distinct steps are counted from the last 64 steps each key saw (exact while fewer than 64
  denoiser calls record at once).

Every recorded value is detached: recording never keeps an autograd graph alive.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

MODES = ("all", "mean")


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


# Steps a running mean remembers to count distinct steps: more than the calls that can be open at
# once (one per thread), so a layer's steps are counted exactly, in constant memory.
_RECENT_STEPS = 64


@dataclass
class _Mean:
    fields: dict
    total: torch.Tensor  # 0-d float64: sum over calls of the per-call mean entropy
    calls: int = 1
    steps: int = 1  # distinct steps among the calls
    recent: OrderedDict = field(default_factory=OrderedDict)  # the last _RECENT_STEPS steps

    def saw(self, step: int) -> bool:
        """Whether ``step`` was counted already; remembers it (bounded)."""
        if step in self.recent:
            return True
        self.recent[step] = None
        if len(self.recent) > _RECENT_STEPS:
            self.recent.popitem(last=False)
        return False


def _running_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps a mean over millions of calls exact to ~1e-12; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


class EntropyRecorder:
    """Collects the mean attention entropy of every layer call.

    ``step`` numbers the denoiser calls that recorded something, from 0 since the recorder was
    created or reset: one per denoising step in the usual pipelines (classifier-free guidance
    batches both branches into one call). The number is taken per call and per thread: the
    denoiser's forward pre-hook (:meth:`next_step`) starts a new call in the calling thread, and
    that call's first record takes the next free step, so two threads running the same denoiser
    get distinct steps, each with all of its own layers. Nothing is copied to the host until
    :meth:`rows` is called, so recording adds no device synchronisation.

    Args:
        mode: ``"all"`` (a row per step and layer call) or ``"mean"`` (a row per layer and call
            shape, averaged over calls).
        last_steps: with ``mode="all"``, keep only the rows of the last this many steps.
    """

    def __init__(self, mode: str = "all", last_steps: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if last_steps is not None:
            if isinstance(last_steps, bool) or not isinstance(last_steps, int) or last_steps < 1:
                raise ValueError(f"last_steps must be a positive int or None, got {last_steps!r}")
            if mode != "all":
                raise ValueError(f"last_steps applies to mode='all' only, not {mode!r}")
        self.mode = mode
        self.last_steps = last_steps
        self._lock = threading.Lock()
        self._local = threading.local()
        self._generation = 0  # bumped by reset(): other threads' open calls take new steps
        self._next_free = 0
        self._steps: OrderedDict[int, list[_Record]] = OrderedDict()
        self._means: dict[tuple, _Mean] = {}

    def __getstate__(self) -> dict:
        # A copy (copy.deepcopy, pickle, torch.save of an enabled denoiser) records on its own:
        # it keeps the rows so far, with a lock of its own and no call open in any thread.
        with self._lock:
            state = self.__dict__.copy()
            state["_steps"] = OrderedDict((step, list(rows)) for step, rows in self._steps.items())
            state["_means"] = dict(self._means)
        del state["_lock"], state["_local"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def step(self) -> int:
        """The last step taken (-1 before the first record)."""
        return self._next_free - 1

    def next_step(self, *_args) -> None:
        """Forward pre-hook of the denoiser: a new call starts in this thread."""
        self._local.call = None

    def _current_step(self) -> int:
        call = getattr(self._local, "call", None)
        if call is None or call[0] != self._generation:
            with self._lock:
                call = (self._generation, self._next_free)
                self._next_free += 1
                if self.mode == "all":
                    self._steps[call[1]] = []
                    while self.last_steps is not None and len(self._steps) > self.last_steps:
                        self._steps.popitem(last=False)
            self._local.call = call
        return call[1]

    def add(self, entropy: torch.Tensor, **fields) -> None:
        """Record one layer call; ``entropy`` is ``(batch, heads, queries)``, any device."""
        value = entropy.detach().float().mean()
        step = self._current_step()
        with self._lock:
            if self.mode == "all":
                records = self._steps.get(step)
                if records is not None:  # None: the step already left the last_steps window
                    records.append(_Record(step=step, entropy=value, **fields))
                return
            key = tuple(fields.items())
            mean = self._means.get(key)
            if mean is None:
                total = value.to(_running_dtype(value.device))
                self._means[key] = mean = _Mean(dict(fields), total)
                mean.saw(step)
            else:
                mean.total = mean.total + value.to(mean.total.dtype)
                mean.calls += 1
                if not mean.saw(step):
                    mean.steps += 1

    def __len__(self) -> int:
        """Number of rows :meth:`rows` would return (the number of scalars kept)."""
        if self.mode == "mean":
            return len(self._means)
        return sum(len(records) for records in self._steps.values())

    def reset(self) -> None:
        """Forget everything recorded and restart the step count at 0."""
        with self._lock:
            self._generation += 1
            self._next_free = 0
            self._steps.clear()
            self._means.clear()

    def _values(self) -> list[tuple[dict, torch.Tensor]]:
        with self._lock:
            if self.mode == "mean":
                return [
                    (
                        {**mean.fields, "calls": mean.calls, "steps": mean.steps},
                        mean.total / mean.calls,
                    )
                    for mean in self._means.values()
                ]
            records = [r for step in sorted(self._steps) for r in self._steps[step]]
        return [({k: v for k, v in vars(r).items() if k != "entropy"}, r.entropy) for r in records]

    def rows(self) -> list[dict]:
        """The records as plain Python dicts (one host copy per device for all of them).

        ``mode="all"``: step, layer, kind, heads, head_dim, query_tokens, n_tokens, train_tokens,
        scale, entropy (mean nats over batch, heads and queries), ordered by step.
        ``mode="mean"``: the same without step, with ``entropy`` averaged over ``calls`` calls
        that came from ``steps`` distinct steps.
        """
        values = self._values()
        by_device: dict[torch.device, list[int]] = {}
        for index, (_, value) in enumerate(values):
            by_device.setdefault(value.device, []).append(index)
        numbers = [0.0] * len(values)
        for indices in by_device.values():
            stacked = torch.stack([values[i][1] for i in indices]).tolist()
            for i, number in zip(indices, stacked, strict=True):
                numbers[i] = number
        pairs = zip(values, numbers, strict=True)
        return [{**row, "entropy": number} for (row, _), number in pairs]

    def scalars(self) -> list[torch.Tensor]:
        """The kept 0-d tensors themselves (for checking what recording holds on to)."""
        return [value for _, value in self._values()]

    def dataframe(self):
        """The rows as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError("entropy_dataframe() needs pandas: pip install pandas") from error
        return pd.DataFrame(self.rows())


__all__ = ["MODES", "EntropyRecorder"]
