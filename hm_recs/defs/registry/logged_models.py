"""Logging trained models to MLflow and registering them: the one path every training asset uses."""

import datetime as dt
import tempfile
from pathlib import Path

import dagster as dg

from hm_recs.data.delta import Lake
from hm_recs.registry.pyfunc import (
    RecommenderPyfunc,
    VQGANPyfunc,
    recommender_signature,
    save_pyfunc,
    vqgan_signature,
    write_recommender_bundle,
)
from hm_recs.registry.registry import model_name, register_model
from hm_recs.registry.serving import FALLBACK, ServingData, serving_data
from hm_recs.registry.tracking import TrackedRun
from hm_recs.tables import SESSIONS_TABLE

_SERVING: dict[tuple[str, int], ServingData] = {}


def cached_serving_data(lake: Lake) -> ServingData:
    """Histories and fallback, computed once per sessions version in a process."""
    key = (str(lake.root), lake.version(SESSIONS_TABLE))
    if key not in _SERVING:
        _SERVING.clear()
        _SERVING[key] = serving_data(lake)
    return _SERVING[key]


def log_recommender(
    run: TrackedRun,
    lake: Lake,
    kind: str,
    model: str,
    settings: dict | None = None,
    files: dict[str, Path] | None = None,
    *,
    trained_before: dt.date,
):
    """Bundle a recommender with the serving data, log it as a pyfunc to ``run``, register it as
    ``hm_recs_<model>``; returns the model version. ``trained_before`` is the first day its parameters
    never saw (the promotion policy and the served model's page read it)."""
    data = cached_serving_data(lake)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_recommender_bundle(
            Path(tmp) / "bundle", kind, data.articles, data.histories, data.fallback, settings, files
        )
        folder = save_pyfunc(
            RecommenderPyfunc(), {"bundle": str(bundle)}, recommender_signature(), Path(tmp) / "model"
        )
        return register_model(
            run,
            folder,
            model_name(model),
            f"{kind} recommender: customer ids -> 12 article ids",
            tags={
                "kind": kind,
                "protocol_name": model,
                "data_end": data.data_end.isoformat(),
                "fallback": FALLBACK,
                "trained_before": trained_before.isoformat(),
            },
        )


def log_vqgan(run: TrackedRun, weights: Path):
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pyfunc(VQGANPyfunc(), {"weights": str(weights)}, vqgan_signature(), Path(tmp) / "model")
        return register_model(
            run,
            folder,
            model_name("vqgan"),
            "VQGAN image tokenizer: image path -> codebook indices",
            tags={"kind": "vqgan"},
        )


def mlflow_metadata(mlflow, run, version=None) -> dict:
    meta = {"mlflow_run": dg.MetadataValue.url(mlflow.run_url(run)), "mlflow_run_id": run.run_id}
    if version is not None:
        meta["registered_model"] = f"{version.name} v{version.version}"
    return meta
