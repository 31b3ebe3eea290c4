"""Logging trained models to MLflow and registering them: the one path every model family uses."""

import datetime as dt
import tempfile
from pathlib import Path

import pandas as pd

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


def log_ranker(
    run: TrackedRun,
    lake: Lake,
    lists: pd.DataFrame,
    settings: dict,
    model: Path,
    *,
    trained_before: dt.date,
):
    """Register the ranker as ``hm_recs_ranker``: its lists for the week after the data (``lists``:
    customer_idx, article_idx, rank) keyed by customer id, with the LightGBM model beside them."""
    from hm_recs.tables import CUSTOMER_FEATURES

    ids = lake.read(CUSTOMER_FEATURES, columns=["customer_idx", "customer_id"]).to_pandas()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lists.parquet"
        lists.merge(ids, on="customer_idx").sort_values(["customer_idx", "rank"]).to_parquet(
            path, index=False
        )
        return log_recommender(
            run,
            lake,
            "ranker",
            "ranker",
            settings,
            {"lists.parquet": path, "model.txt": model},
            trained_before=trained_before,
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


def log_bart(run: TrackedRun, lake: Lake, variant: str, settings: dict, model: Path, lancedb_uri: str):
    """Register a BART variant with its grounding (``settings``: ``served_settings``) as
    ``hm_recs_bart_<variant>`` on its training run: the model folder, the catalogue as the lake holds
    it now (image codes, semantic IDs) and, for nearest grounding, the item index (copied when local,
    by URI when in an object store)."""
    import json

    from hm_recs.retrieval.catalogue import CatalogueTables

    trained_before = dt.date.fromisoformat(json.loads((model / "hm_recs.json").read_text())["trained_before"])
    with tempfile.TemporaryDirectory() as tmp:
        files = {"model": model, **CatalogueTables.from_lake(lake).write(Path(tmp))}
        if settings["grounding"] == "nearest":
            if "://" in lancedb_uri:
                settings = {**settings, "index_uri": lancedb_uri}
            else:
                files["lancedb"] = Path(lancedb_uri)
        return log_recommender(
            run, lake, "bart", f"bart_{variant}", settings, files, trained_before=trained_before
        )


def log_bart_evaluation(run: TrackedRun, evaluation: dict[str, list]) -> None:
    """A variant's evaluation on its training run (``evaluation``: its ``samples``, BERTScore
    ``text_rows`` and protocol ``results``): the metrics under the names every model's run uses."""
    from hm_recs.reports import markdown_table

    if evaluation.get("samples"):
        run.log_text(markdown_table(evaluation["samples"]), "sample_generations.md")
    for row in evaluation.get("text_rows", []):
        run.log_metrics(
            {
                f"{row['week']}_bertscore_{k}": row[f"bertscore_{k}"]
                for k in ("precision", "recall", "f1")
                if f"bertscore_{k}" in row
            }
        )
    for res in evaluation.get("results", []):
        run.log_metrics({f"{res.week}_{m.replace('@', '_at_')}": v for m, (v, _, _) in res.metrics.items()})
