"""Every environment variable hm_recs reads, declared and read here and nowhere else.

A variable is read when it is asked for, never at import, so a process (or a test) that sets it
before building the resources gets it. Reading a name that is not declared below is a programming
error: the list is the documentation (the README's settings table shows the same). The Dagster
resources (``hm_recs/defs/resources.py``) check the values when they are built.
"""

from __future__ import annotations

import os
import re

DECLARED: dict[str, str] = {
    "HM_STATE_DIR": "folder of everything hm_recs writes locally (default ./state)",
    "HM_DATA_DIR": "the Kaggle-layout folder to ingest (default: the generated small sample)",
    "HM_SHARED_DIR": "the read-only real H&M sample for tests and benchmarks (default ../shared)",
    "HM_LAKE_URI": "the Delta lake: a folder or s3:// URI (default state/lake)",
    "HM_LANCEDB_URI": "the item index: a folder or s3:// URI (default state/lancedb)",
    "HM_MODELS_URI": "trained models and checkpoints: a folder or s3:// URI (default state/models)",
    "HM_S3_ENDPOINT_URL": "an S3-compatible endpoint (MinIO) for s3:// URIs",
    "AWS_ACCESS_KEY_ID": "object-store credentials for s3:// URIs",
    "AWS_SECRET_ACCESS_KEY": "object-store credentials for s3:// URIs",
    "AWS_REGION": "object-store region for s3:// URIs",
    "HM_MLFLOW_TRACKING_URI": "MLflow tracking and registry store (default sqlite:///state/mlflow/mlflow.db)",
    "HM_MLFLOW_ARTIFACTS": "MLflow artifact location for new experiments (default state/mlflow/artifacts)",
    "HM_MLFLOW_UI": "where the MLflow UI answers, for links in Dagster metadata",
    "HM_SPARK_MASTER": "Spark master (default local[*])",
    "HM_SPARK_DRIVER_MEMORY": "Spark driver memory (default 4g)",
    "HM_DEVICE": "auto, cpu or cuda[:N] (default auto)",
    "HM_NUM_DEVICES": "devices per training run (default 1)",
    "HM_PRECISION": "Lightning precision (default 32-true)",
    "HM_TORCH_THREADS": "CPU threads per torch step (default 0: torch's default)",
    "HM_PROFILE": "run profile of automatic runs: auto, paper, cpu, demo, smoke (default auto)",
    "HM_BART_PRETRAINED": "a hub id or local path of pretrained BART weights (default: train from config)",
    "HM_BART_SIZE": "BART size trained from config (default tiny)",
    "HM_FILE_SETTLE_SECONDS": "seconds a raw file's size must be stable before the sensor ingests it",
}


def setting(name: str, default: str | None = None) -> str | None:
    """The variable's value, or ``default`` when it is unset or empty."""
    if name not in DECLARED:
        raise KeyError(f"{name} is not a declared hm_recs setting (hm_recs/settings.py)")
    return os.environ.get(name) or default


def is_set(name: str) -> bool:
    return setting(name) is not None


# -- values checked when the Dagster resources are built: a bad one names its variable ------------
def configured_profile(default: str = "auto") -> str:
    """The run profile automatic runs take: ``HM_PROFILE`` (auto, paper, cpu, demo, smoke), else
    ``default``; ``auto`` is ``paper`` where torch sees a GPU and ``demo`` elsewhere."""
    from hm_recs.profiles import resolve_profile

    name = setting("HM_PROFILE") or default
    gpu = False
    if name.strip().lower() == "auto":
        import torch

        gpu = torch.cuda.is_available()
    return resolve_profile(name, gpu)


def int_setting(name: str, default: str) -> int:
    value = setting(name, default)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def checked_compute(device: str, num_devices: int, precision: str):
    """The compute settings (a ``DeviceSpec``), checked before any work: a bad value names its
    variable."""
    from hm_recs.compute import DeviceSpec

    try:
        spec = DeviceSpec(device, num_devices, precision)
    except ValueError as exc:
        raise ValueError(f"HM_DEVICE / HM_NUM_DEVICES / HM_PRECISION: {exc}") from None
    if device.startswith("cuda"):
        import torch

        have = torch.cuda.device_count()
        index = int(device.split(":")[1]) if ":" in device else 0
        if index + num_devices > max(have, 0) or have == 0:
            raise ValueError(
                f"HM_DEVICE={device!r} with HM_NUM_DEVICES={num_devices}: torch sees {have} CUDA device(s)"
            )
    return spec


def checked_spark_memory(value: str) -> str:
    if not re.fullmatch(r"\d+[kmgtKMGT]?", value):
        raise ValueError(f"HM_SPARK_DRIVER_MEMORY={value!r} is not a JVM memory size (e.g. 4g, 512m)")
    return value
