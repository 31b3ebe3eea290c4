"""Where training runs: one description of the compute device shared by every training stage.

``device`` is ``auto`` (the first GPU when there is one, else the CPU), ``cpu`` or ``cuda[:N]``;
``num_devices`` > 1 means data-parallel training (DDP) over that many GPUs (or CPU processes);
``precision`` is a Lightning precision string (``32-true``, ``bf16-mixed``, ``16-mixed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true")


@dataclass(frozen=True)
class DeviceSpec:
    device: str = "auto"
    num_devices: int = 1
    precision: str = "32-true"

    def __post_init__(self):
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.num_devices < 1:
            raise ValueError("num_devices must be at least 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def torch_device(self):
        """The device a single-process stage uses (tokenization, evaluation, plain training loops)."""
        import torch

        if self.device == "auto":
            return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device!r} was asked for but torch sees no CUDA device")
        return torch.device(self.device)

    def lightning_kwargs(self, find_unused_parameters: bool = False) -> dict:
        """``accelerator``, ``devices``, ``strategy`` and ``precision`` for a Lightning Trainer.

        Several devices use DDP with spawned processes (NCCL on GPUs, gloo on CPUs): the training
        modules are module-level classes so that they pickle, and a Dagster step stays one process
        tree (plain ``ddp`` would re-run the command line of the Dagster process)."""
        dev = self.torch_device()
        if dev.type == "cuda":
            devices: int | list[int] = (
                self.num_devices if self.device in ("auto", "cuda") else [dev.index or 0]
            )
            accelerator = "gpu"
        else:
            devices, accelerator = self.num_devices, "cpu"
        multi = (isinstance(devices, int) and devices > 1) or (isinstance(devices, list) and len(devices) > 1)
        strategy = (
            ("ddp_spawn_find_unused_parameters_true" if find_unused_parameters else "ddp_spawn")
            if multi
            else "auto"
        )
        precision = self.precision
        if dev.type == "cpu" and precision in ("16-mixed",):
            precision = "bf16-mixed"  # fp16 autocast is GPU-only; bf16 works on CPU
        return {"accelerator": accelerator, "devices": devices, "strategy": strategy, "precision": precision}

    def describe(self) -> str:
        dev = self.torch_device()
        name = dev.type
        if dev.type == "cuda":
            import torch

            name = f"{dev} ({torch.cuda.get_device_name(dev)})"
        return f"{name}, {self.num_devices} device(s), precision {self.precision}"


def quiet_lightning() -> None:
    """Silence Lightning notices that say nothing about this code (the frozen LPIPS is in eval mode
    on purpose; the checkpoints are taken after whole steps)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def rank_file(path: str, rank: int) -> str:
    """Where a DDP rank writes its training history: rank 0 ``path``, the others ``path.rankN``."""
    return path if rank == 0 else f"{path}.rank{rank}"


class TrainingDir:
    """A Lightning training run's folder: ``checkpoints/`` (``last.ckpt`` to resume from), the
    fingerprint of the settings and data the checkpoints belong to (a different fingerprint drops
    them), and ``history.json``, which the ranks write at the end (cleared at the start)."""

    def __init__(self, workdir: str | Path, fingerprint: str):
        self.workdir = Path(workdir)
        self.checkpoints = self.workdir / "checkpoints"
        stamp = self.workdir / "fingerprint.txt"
        if stamp.exists() and stamp.read_text() != fingerprint:
            for old in self.checkpoints.glob("*.ckpt"):
                old.unlink()
        self.workdir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
        self.resume = self.checkpoints / "last.ckpt"
        self.history = self.workdir / "history.json"
        self.history.unlink(missing_ok=True)
        for extra in self.workdir.glob("history.json.rank*"):
            extra.unlink()
