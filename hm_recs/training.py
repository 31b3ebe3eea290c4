"""Small pieces every training asset shares: what names a training run (its fingerprint, so a
resumed run never mixes checkpoints of other data or settings), whether a loss curve went down (the
"a model that trains" check) and a smoothed curve for the loss plots."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np


def fingerprint(*parts) -> str:
    """A stable hash of the training data and settings (any JSON-able parts; others by ``str``)."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True, default=str).encode()).hexdigest()


def loss_went_down(curve: Sequence[float], fraction: float = 0.1) -> tuple[bool, float, float]:
    """Whether the mean of the last ``fraction`` of ``curve`` is below the mean of its first (at
    least one point each: per-epoch curves compare the first and last epoch). Returns the verdict
    and both means; an empty curve did not train, a single point cannot be judged and passes."""
    if len(curve) == 0:
        return False, float("nan"), float("nan")
    n = max(1, int(len(curve) * fraction))
    head, tail = float(np.mean(curve[:n])), float(np.mean(curve[-n:]))
    return len(curve) < 2 or tail < head, head, tail


def smoothed(curve: Sequence[float], points: int = 30) -> list[float]:
    """A moving average over ``len(curve) / points`` steps, for plots of noisy per-step losses."""
    width = max(1, len(curve) // points)
    return np.convolve(curve, np.ones(width) / width, mode="valid").tolist()
