"""Small pieces every training asset shares: what names a training run (its fingerprint, so a
resumed run never mixes checkpoints of other data or settings), whether a loss curve went down (the
"a model that trains" check), a smoothed curve for the loss plots, and the Lightning trainer the
VQGAN and BART loops both run under (checkpoints handed to the model store as they are written)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

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


def lightning_trainer(
    spec,
    checkpoints: str | Path,
    every: int,
    max_steps: int,
    max_epochs: int,
    root: str | Path,
    progress: bool = True,
    on_checkpoint: Callable[[], object] | None = None,
    **extra,
):
    """A Lightning ``Trainer`` on ``spec`` (a ``DeviceSpec``) as hm_recs' loops run it: only
    ``checkpoints/last.ckpt`` kept, written every ``every`` steps; no logger (each loop writes its
    own history) and no model summary. ``on_checkpoint`` runs on rank 0 once after each new
    checkpoint (and at the end): the model store's push, so that a run killed on one worker resumes
    on another from its last checkpoint, not from the start. ``extra``: more ``Trainer`` arguments
    (they override ``spec``'s)."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    last = Path(checkpoints) / "last.ckpt"

    class AfterCheckpoint(Callback):
        """Lightning runs checkpoint callbacks last in a hook: a new file is seen one batch later."""

        seen: int | None = None

        def _check(self, trainer) -> None:
            if trainer.is_global_zero and last.exists() and last.stat().st_mtime_ns != self.seen:
                self.seen = last.stat().st_mtime_ns
                on_checkpoint()

        def on_train_batch_end(self, trainer, *args) -> None:
            self._check(trainer)

        def on_train_end(self, trainer, *args) -> None:
            self._check(trainer)

    callbacks = [
        ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=every, save_last=True, save_top_k=0)
    ]
    if on_checkpoint is not None:
        callbacks.append(AfterCheckpoint())
    return L.Trainer(
        max_steps=max_steps,
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=str(root),
        **{**spec.lightning_kwargs(), **extra},
    )
