"""The model comparison and the champion choice: the registry's policy, without Dagster.

``comparison_frame`` puts every model's protocol metrics on the same weeks in one table with the
facts of its registered run (training time, parameters); ``log_model_metrics`` writes each model's
metrics on its own MLflow run under one set of names; ``choose_champion`` applies the promotion
policy (:func:`hm_recs.registry.registry.decide`) to the models evaluated on the full validation week.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hm_recs.data.delta import Lake
from hm_recs.registry.registry import Candidate, Decision, current_champion, model_name, promote, standing
from hm_recs.registry.tracking import TrackedRun, TrackingSettings

COMPARED = [f"{m}@{k}" for m in ("Recall", "MRR") for k in (1, 3, 5, 10, 20)] + ["MAP@12"]


def registered_name(protocol_model: str) -> str:
    """The registry entry serving a protocol model (both GRU4Rec modes come from one model; its
    pyfunc feeds the whole history, as ``gru4rec_warm`` is judged)."""
    return model_name("gru4rec" if protocol_model.startswith("gru4rec") else protocol_model)


def training_facts(settings: TrackingSettings, names: list[str]) -> dict[str, dict]:
    """Training seconds, parameter count, version and run of each registered model's latest version
    (names never registered are left out)."""
    client = settings.client()
    facts = {}
    for name in set(names):
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except Exception:  # noqa: BLE001 - a name the registry does not know has no facts
            continue
        if not versions:
            continue
        latest = max(versions, key=lambda v: int(v.version))
        metrics = client.get_run(latest.run_id).data.metrics
        seconds = sum(v for k, v in metrics.items() if k.endswith("training_seconds"))
        facts[name] = {
            "training_seconds": round(float(seconds), 1) if seconds else 0.0,
            "parameters": int(metrics.get("n_parameters", 0)),
            "version": latest.version,
            "run_id": latest.run_id,
        }
    return facts


def comparison_frame(
    metrics: pd.DataFrame, facts: dict[str, dict], bertscore: pd.Series | None
) -> pd.DataFrame:
    """One row per (model, split): the compared metrics, events scored, BERTScore where the model
    generates text (``bertscore`` indexed by (variant, week)), training seconds and parameters."""
    wide = metrics.pivot_table(index=["model", "split"], columns="metric", values="value", aggfunc="first")
    events = metrics[metrics.metric == "Recall@1"].set_index(["model", "split"])["n"]
    frame = wide.reindex(columns=[c for c in COMPARED if c in wide.columns]).reset_index()
    keys = list(zip(frame["model"], frame["split"], strict=True))
    frame["events"] = [int(events.get(k, 0)) for k in keys]
    frame["bertscore_f1"] = [
        np.nan if bertscore is None else bertscore.get((m.removeprefix("bart_"), s), np.nan) for m, s in keys
    ]
    frame["registered_model"] = frame["model"].map(registered_name)
    frame["training_seconds"] = frame["registered_model"].map(
        lambda n: facts.get(n, {}).get("training_seconds", 0.0)
    )
    frame["parameters"] = frame["registered_model"].map(lambda n: facts.get(n, {}).get("parameters", 0))
    return frame.sort_values(["split", "MAP@12"], ascending=[True, False], ignore_index=True)


def log_model_metrics(
    settings: TrackingSettings, metrics: pd.DataFrame, runs: dict[str, str]
) -> dict[str, str]:
    """Every model's protocol metrics on its own registered run (and its logged model), under the
    same names for every model (``test_MAP_at_12``, ``validation_Recall_at_20``, ... with
    ``_ci_low`` / ``_ci_high``), so MLflow's compare view and ``search_runs`` rank models directly.
    GRU4Rec's served mode (warm) takes the plain names; its session mode a ``session_`` prefix."""
    done = {}
    for model, rows in metrics.groupby("model"):
        name = registered_name(model)
        if name not in runs:
            continue
        prefix = "session_" if model == "gru4rec_session" else ""
        values = {}
        for r in rows.to_dict("records"):
            key = f"{prefix}{r['split']}_{r['metric'].replace('@', '_at_')}"
            values.update({key: r["value"], f"{key}_ci_low": r["ci_low"], f"{key}_ci_high": r["ci_high"]})
        run = TrackedRun(settings, runs[name])
        run.log_metrics({k: float(v) for k, v in values.items() if v == v}, model_id=run.model_id())
        done[model] = runs[name]
    return done


@dataclass(frozen=True)
class PromotionPolicy:
    metric: str = "MAP@12"  # the Kaggle metric, on the validation week
    min_improvement: float = 0.02  # relative: another model family must beat the champion by 2 %
    # relative: a refit of the champion's family on newer data is served unless it scores more than
    # this below the champion (a broken refit), not an ordinary week-to-week swing
    refit_tolerance: float = 0.25


def eligible(comparison: pd.DataFrame, metric: str, registered: set[str]) -> pd.DataFrame:
    """The validation rows that may become champion, best first: scored on the week's full events
    (a seeded sample, BART on CPU, is not compared with full evaluations), registered, and not
    GRU4Rec's session mode (the served GRU4Rec feeds the whole history)."""
    val = comparison[comparison.split == "validation"].dropna(subset=[metric])
    rows = val[(val["events"] == val["events"].max()) & val["registered_model"].isin(registered)]
    rows = rows[rows["model"] != "gru4rec_session"]
    return rows.sort_values([metric, "model"], ascending=[False, True])


def rescore_champion(champion, protocol, lake: Lake, week_start: str, tracking_uri: str) -> float | None:
    """The champion's score on this validation week when it was promoted on another one and has
    not seen this week; None keeps the recorded score."""
    if champion is None or champion.tags.get("validation_week") == week_start:
        return None
    if champion.tags.get("trained_before", "9999") > week_start:
        return None  # trained on data that includes this week: its score here would not be honest
    import mlflow as ml

    from hm_recs.evaluation.protocol import evaluate
    from hm_recs.evaluation.weeks import load_target_weeks
    from hm_recs.registry.pyfunc import load_bundle_recommender

    ml.set_tracking_uri(tracking_uri)  # the champion's artifacts may be behind the tracking server
    folder = Path(ml.artifacts.download_artifacts(artifact_uri=champion.source)) / "artifacts" / "bundle"
    weeks = load_target_weeks(lake, protocol)
    result = evaluate(load_bundle_recommender(folder), weeks["validation"], protocol)
    return float(result.metrics[champion.tags.get("metric", "MAP@12")][0])


def choose_champion(
    settings: TrackingSettings,
    ranked: pd.DataFrame,
    facts: dict[str, dict],
    week: str,
    policy: PromotionPolicy,
    rescored: float | None,
) -> list[Decision]:
    """Offer the best eligible model to the registry; when it does not take over, the champion's own
    family (refit on this week's data) is offered as a refresh. Returns the decisions, in order."""
    if ranked.empty:
        raise ValueError("no registered model was evaluated on the full validation week: nothing to promote")
    champion = current_champion(settings)

    def offer(row) -> Decision:
        name = row["registered_model"]
        candidate = Candidate(row["model"], name, facts[name]["version"], float(row[policy.metric]), week)
        return promote(
            settings, candidate, policy.metric, policy.min_improvement, rescored, policy.refit_tolerance
        )

    decisions = [offer(ranked.iloc[0])]
    family = standing(champion, policy.metric)
    same = ranked[ranked["registered_model"] == (family.registered if family else None)]
    if (
        not decisions[0].promoted
        and len(same)
        and same.iloc[0]["registered_model"] != ranked.iloc[0]["registered_model"]
    ):
        decisions.append(offer(same.iloc[0]))
    return decisions
