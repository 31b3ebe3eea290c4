"""Where hm_recs keeps its local state (Dagster instance, Delta lake, generated data).

Everything lives under one git-ignored folder, ``./state`` in the project root by default, or the
folder named by ``HM_STATE_DIR``.
"""

from __future__ import annotations

from pathlib import Path

from hm_recs.settings import setting

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    return Path(setting("HM_STATE_DIR", str(PROJECT_ROOT / "state"))).resolve()


def default_lake_uri() -> str:
    return setting("HM_LAKE_URI", str(state_dir() / "lake"))


def default_synthetic_dir(scale: str = "small", seed: int = 0) -> Path:
    return state_dir() / "data" / f"synthetic-{scale}-seed{seed}"


def shared_dir() -> Path:
    """The read-only ../shared folder with the real H&M sample (absent outside this team's machines)."""
    return Path(setting("HM_SHARED_DIR", str(PROJECT_ROOT.parent / "shared")))


def models_dir() -> Path:
    """Where trained models and their checkpoints live (``state/models``)."""
    return state_dir() / "models"


def mlflow_dir() -> Path:
    """The local MLflow tracking store and artifacts (``state/mlflow``)."""
    return state_dir() / "mlflow"


def default_tracking_uri() -> str:
    return setting("HM_MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_dir() / 'mlflow.db'}"
