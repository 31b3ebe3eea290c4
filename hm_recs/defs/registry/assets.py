"""Model comparison, champion promotion and the week's recommendations."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
from dagster import AssetExecutionContext

from hm_recs.defs.bart.evaluation import bart_evaluation
from hm_recs.defs.evaluation.assets import popularity_evaluation
from hm_recs.defs.gru4rec.assets import gru4rec_evaluation
from hm_recs.defs.metadata import image_metadata, markdown_table, table_metadata
from hm_recs.defs.registry.logged_models import cached_serving_data, mlflow_metadata
from hm_recs.defs.resources import EvaluationProtocolResource, LakeResource, MLflowResource
from hm_recs.evaluation.protocol import comparison_markdown
from hm_recs.evaluation.weeks import MODEL_FAMILIES, metrics_table, read_metrics
from hm_recs.paths import state_dir
from hm_recs.plots import metric_bars
from hm_recs.registry.registry import (
    CHAMPION,
    RECOMMENDER,
    Candidate,
    Decision,
    current_champion,
    load_champion,
    model_name,
    promote,
    standing,
)
from hm_recs.registry.serving import (
    FALLBACK,
    next_week,
    recommend_all,
    unknown_customer_answer,
    write_submission,
)
from hm_recs.sessions.split import load_time_split
from hm_recs.tables import BART_TEXT_TABLE, COMPARISON_TABLE, RECOMMENDATIONS_TABLE, UNKNOWN_TABLE

COMPARED = ["Recall@1", "Recall@3", "Recall@5", "Recall@10", "Recall@20", "MRR@1", "MRR@3", "MRR@5", "MRR@10", "MRR@20", "MAP@12"]


def registered_name(protocol_model: str) -> str:
    """The registry entry serving a protocol model (both GRU4Rec modes come from one model; its
    pyfunc feeds the whole history, as ``gru4rec_warm`` is judged)."""
    return model_name("gru4rec" if protocol_model.startswith("gru4rec") else protocol_model)


def _training_facts(mlflow: MLflowResource, names: list[str]) -> dict[str, dict]:
    """Training seconds and parameter count of each registered model's latest version."""
    client = mlflow.settings().client()
    facts = {}
    for name in set(names):
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except Exception:
            continue
        if not versions:
            continue
        latest = max(versions, key=lambda v: int(v.version))
        run = client.get_run(latest.run_id)
        m = run.data.metrics
        seconds = sum(v for k, v in m.items() if k.endswith("training_seconds"))
        facts[name] = {"training_seconds": round(float(seconds), 1) if seconds else 0.0, "parameters": int(m.get("n_parameters", 0)),
                       "version": latest.version, "run_id": latest.run_id}
    return facts


@dg.asset(
    group_name="evaluation",
    kinds={"deltalake", "mlflow"},
    deps=[popularity_evaluation, gru4rec_evaluation, bart_evaluation],
)
def model_comparison(context: AssetExecutionContext, lake: LakeResource, mlflow: MLflowResource) -> dg.MaterializeResult:
    """Every model on the same weeks in one table: Recall@K and MRR@K (K = 1, 3, 5, 10, 20), MAP@12,
    BERTScore where it applies, events scored, training time and parameters; a chart; logged to MLflow."""
    lk = lake.lake()
    metrics = read_metrics(lk)
    if metrics.empty:
        raise ValueError("no evaluation metrics: materialize the evaluation assets first")
    wide = metrics.pivot_table(index=["model", "split"], columns="metric", values="value", aggfunc="first")
    events = metrics[metrics.metric == "Recall@1"].set_index(["model", "split"])["n"]
    frame = wide.reindex(columns=[c for c in COMPARED if c in wide.columns]).reset_index()
    frame["events"] = [int(events.get((m, s), 0)) for m, s in zip(frame["model"], frame["split"], strict=True)]
    frame["bertscore_f1"] = np.nan
    if lk.exists(BART_TEXT_TABLE):
        bs = lk.read(BART_TEXT_TABLE).to_pandas().set_index(["variant", "week"])["bertscore_f1"]
        frame["bertscore_f1"] = [bs.get((m.removeprefix("bart_"), s), np.nan) for m, s in zip(frame["model"], frame["split"], strict=True)]
    frame["registered_model"] = frame["model"].map(registered_name)
    facts = _training_facts(mlflow, frame["registered_model"].tolist())
    frame["training_seconds"] = frame["registered_model"].map(lambda n: facts.get(n, {}).get("training_seconds", 0.0))
    frame["parameters"] = frame["registered_model"].map(lambda n: facts.get(n, {}).get("parameters", 0))
    frame = frame.sort_values(["split", "MAP@12"], ascending=[True, False], ignore_index=True)
    lk.write(COMPARISON_TABLE, pa.Table.from_pandas(frame, preserve_index=False))

    test_rows = metrics[(metrics.split == "test")].to_dict("records")
    chart = metric_bars(test_rows, "MAP@12", "MAP@12 on the test week (95 % bootstrap intervals)")
    meta = table_metadata(lk, COMPARISON_TABLE, preview_rows=0)
    extra = frame[["model", "split", "training_seconds", "parameters"]].rename(
        columns={"training_seconds": "train s", "parameters": "params"})
    meta["comparison"] = dg.MetadataValue.md(
        comparison_markdown(metrics, extra) + "\n\nValues with 95 % bootstrap intervals, every row on the same protocol; "
        "`events` below the week's full count means a seeded sample (BART on CPU). Every metric (Recall and MRR @ 1, 3, 5, "
        f"10, 20, BERTScore) is in `{COMPARISON_TABLE}` and in the MLflow run's model_comparison.csv.")
    meta.update(image_metadata(chart, "model_comparison_map12", "MAP@12 on the test week"))
    logged = log_model_metrics(mlflow.settings(), metrics, {n: f["run_id"] for n, f in facts.items()})
    meta["metrics_on_model_runs"] = dg.MetadataValue.json(logged)
    with mlflow.run(context, "model_comparison", lk, tuple(metrics_table(f) for f in MODEL_FAMILIES), "evaluation") as run:
        run.log_text(frame.to_csv(index=False), "model_comparison.csv")
        run.log_image(chart, "model_comparison_map12.png")
        for r in frame.to_dict("records"):
            run.log_metrics({f"{r['split']}.{r['model']}.{m}": r[m] for m in COMPARED if m in r and not pd.isna(r[m])})
        meta.update(mlflow_metadata(mlflow, run))
    return dg.MaterializeResult(metadata=meta)


def log_model_metrics(settings, metrics: pd.DataFrame, runs: dict[str, str]) -> dict[str, str]:
    """Every model's protocol metrics on its own registered run, under the same names for every
    model (``test_MAP_at_12``, ``validation_Recall_at_20``, ... with ``_ci_low`` / ``_ci_high``), so
    MLflow's compare view and ``search_runs`` rank models directly. GRU4Rec's served mode (warm)
    takes the plain names; its session mode is logged with a ``session_`` prefix."""
    from hm_recs.registry.tracking import TrackedRun

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


class PromotionConfig(dg.Config):
    metric: str = "MAP@12"  # the Kaggle metric, on the validation week
    min_improvement: float = 0.02  # relative: another model family must beat the champion by 2 %
    # relative: a refit of the champion's family on newer data is served unless it scores more than
    # this below the champion (a broken refit), not an ordinary week-to-week swing
    refit_tolerance: float = 0.25


def _rescore_champion(champion, protocol, lk, week_start: str, tracking_uri: str) -> float | None:
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
    result = evaluate(load_bundle_recommender(folder), load_target_weeks(lk, protocol)["validation"], protocol)
    return float(result.metrics[champion.tags.get("metric", "MAP@12")][0])


@dg.asset_check(asset=model_comparison, blocking=True, description="Promote the best validation-week model to champion when it beats the current one by the margin")
def champion_promotion(config: PromotionConfig, lake: LakeResource, mlflow: MLflowResource, evaluation_protocol: EvaluationProtocolResource) -> dg.AssetCheckResult:
    lk = lake.lake()
    frame = lk.read(COMPARISON_TABLE).to_pandas()
    val = frame[frame.split == "validation"].dropna(subset=[config.metric])
    full = val["events"].max()
    eligible = val[(val["events"] == full)]  # sampled evaluations (BART on CPU) are not compared with full ones
    facts = _training_facts(mlflow, eligible["registered_model"].tolist())
    eligible = eligible[eligible["registered_model"].isin(facts)]
    eligible = eligible[eligible["model"] != "gru4rec_session"]  # the served GRU4Rec feeds the whole history
    if eligible.empty:
        return dg.AssetCheckResult(passed=False, metadata={"reason": "no registered model evaluated on the full validation week"})
    ranked = eligible.sort_values([config.metric, "model"], ascending=[False, True])
    split = load_time_split(lk)
    week = split.validation_start.isoformat()
    settings = mlflow.settings()
    champion = current_champion(settings)
    rescored = _rescore_champion(champion, evaluation_protocol.protocol(), lk, week, settings.tracking_uri)

    def consider(row) -> Decision:
        name = row["registered_model"]
        return promote(settings, Candidate(row["model"], name, facts[name]["version"], float(row[config.metric]), week),
                       config.metric, config.min_improvement, rescored, config.refit_tolerance)

    # the best model first; when it does not take over, the champion's own family (refit on this
    # week's data) is considered as a refresh
    decisions = [consider(ranked.iloc[0])]
    family = standing(champion, config.metric)
    same = ranked[ranked["registered_model"] == (family.registered if family else None)]
    if not decisions[0].promoted and len(same) and same.iloc[0]["registered_model"] != ranked.iloc[0]["registered_model"]:
        decisions.append(consider(same.iloc[0]))
    served = current_champion(settings)
    return dg.AssetCheckResult(
        passed=True,
        metadata={"decisions": dg.MetadataValue.json([d.as_dict() for d in decisions]),
                  "outcome": "; ".join(f"{d.candidate}: {d.kind}" for d in decisions),
                  "served": f"{RECOMMENDER} v{served.version} ({served.tags.get('model')}), trained on data before "
                            f"{served.tags.get('trained_before', '?')}",
                  "ranking": dg.MetadataValue.md(markdown_table(pa.Table.from_pandas(eligible[["model", config.metric, "events"]], preserve_index=False)))},
    )


@dg.asset(
    group_name="serving",
    kinds={"deltalake", "mlflow"},
    deps=[model_comparison],
    check_specs=[dg.AssetCheckSpec("every_customer_gets_12_distinct_articles", asset="recommendations", description="Every customer of customers.csv gets 12 distinct real articles")],
)
def recommendations(context: AssetExecutionContext, lake: LakeResource, mlflow: MLflowResource) -> dg.MaterializeResult:
    """The champion's top 12 for every customer for the week after the data (Delta), and the Kaggle
    submission file (every customer of customers.csv; customers without purchases get the fallback)."""
    from hm_recs.sessions.purchases import sorted_ids
    from hm_recs.tables import CUSTOMER_FEATURES

    lk = lake.lake()
    settings = mlflow.settings()
    champion = current_champion(settings)
    if champion is None:
        raise ValueError(f"no {CHAMPION} alias on {RECOMMENDER}: materialize model_comparison (its check promotes one)")
    model = load_champion(settings)
    customers = sorted_ids(lk, CUSTOMER_FEATURES, "customer_id").to_pylist()
    data = cached_serving_data(lk)
    start, end = next_week(data.data_end)
    preds = recommend_all(model, customers).drop(columns=["ignored_history_ids"], errors="ignore")  # no histories given here
    known = set(data.histories["customer_id"])
    preds["week_start"] = start
    preds["model"] = champion.tags.get("model", "?")
    preds["model_version"] = int(champion.version)
    preds["cold_start"] = ~preds["customer_id"].isin(known)
    lk.write(RECOMMENDATIONS_TABLE, pa.Table.from_pandas(preds, preserve_index=False))
    unknown = unknown_customer_answer(model, customers).assign(
        week_start=start, model=preds["model"].iloc[0], model_version=int(champion.version))
    lk.write(UNKNOWN_TABLE, pa.Table.from_pandas(unknown, preserve_index=False))
    folder = state_dir() / "submissions"
    path = write_submission(preds, customers, folder / f"submission_{start.isoformat()}.csv")
    (folder / "submission.csv").write_bytes(path.read_bytes())
    names = dict(zip(data.articles["article_id"], data.articles["prod_name"], strict=True))
    sample = preds.head(5).copy()
    sample["first_three"] = sample["prediction"].map(lambda p: ", ".join(names.get(a, a) for a in p.split()[:3]))
    meta = table_metadata(lk, RECOMMENDATIONS_TABLE, preview_rows=0)
    meta.update({
        "week": f"{start} .. {end}", "champion": f"{RECOMMENDER} v{champion.version} ({champion.tags.get('model')})",
        "champion_trained_before": champion.tags.get("trained_before", "?"),
        "champion_decision": champion.tags.get("decision_kind", "?"),
        "customers": len(preds), "cold_start_customers": int(preds["cold_start"].sum()), "cold_start_fallback": FALLBACK,
        "submission": dg.MetadataValue.path(str(path)),
        "sample": dg.MetadataValue.md(markdown_table(pa.Table.from_pandas(sample[["customer_id", "first_three", "cold_start"]], preserve_index=False))),
        "distinct_articles_recommended": int(len(set(" ".join(preds["prediction"]).split()))),
    })
    context.log.info(f"{len(preds)} customers, submission at {path}")
    catalogue = set(data.articles["article_id"])
    lists = [p.split() for p in preds["prediction"]]
    bad = sum(1 for row in lists if len(row) != 12 or len(set(row)) != 12 or not set(row) <= catalogue)
    check = dg.AssetCheckResult(check_name="every_customer_gets_12_distinct_articles", passed=bad == 0 and len(preds) == len(customers),
                                metadata={"customers": len(customers), "rows": len(preds), "bad_lists": bad})
    return dg.MaterializeResult(metadata=meta, check_results=[check])
