"""Model comparison, champion promotion and the week's recommendations."""

import dagster as dg
import pandas as pd
import pyarrow as pa
from dagster import AssetExecutionContext

from hm_recs.defs.bart.evaluation import bart_evaluation
from hm_recs.defs.evaluation.assets import popularity_evaluation
from hm_recs.defs.gru4rec.assets import gru4rec_evaluation
from hm_recs.defs.metadata import checks, image_metadata, mlflow_metadata, table_metadata
from hm_recs.defs.ranking.assets import ranker_evaluation
from hm_recs.defs.resources import EvaluationProtocolResource, LakeResource, MLflowResource
from hm_recs.evaluation.protocol import comparison_markdown
from hm_recs.evaluation.weeks import MODEL_FAMILIES, metrics_table, read_metrics
from hm_recs.paths import state_dir
from hm_recs.plots import metric_bars
from hm_recs.registry.comparison import (
    COMPARED,
    PromotionPolicy,
    choose_champion,
    comparison_frame,
    eligible,
    log_model_metrics,
    registered_name,
    rescore_champion,
    training_facts,
)
from hm_recs.registry.logged import cached_serving_data
from hm_recs.registry.registry import CHAMPION, RECOMMENDER, current_champion, load_champion
from hm_recs.registry.serving import (
    FALLBACK,
    bad_lists,
    next_week,
    serves,
    week_recommendations,
    write_submission,
)
from hm_recs.reports import markdown_table
from hm_recs.sessions.split import load_time_split
from hm_recs.tables import BART_TEXT_TABLE, COMPARISON_TABLE, RECOMMENDATIONS_TABLE, UNKNOWN_TABLE


@dg.asset(
    group_name="evaluation",
    kinds={"deltalake", "mlflow"},
    deps=[popularity_evaluation, gru4rec_evaluation, bart_evaluation, ranker_evaluation],
)
def model_comparison(
    context: AssetExecutionContext, lake: LakeResource, mlflow: MLflowResource
) -> dg.MaterializeResult:
    """Every model on the same weeks in one table: Recall@K and MRR@K (K = 1, 3, 5, 10, 20), MAP@12,
    BERTScore where it applies, events scored, training time and parameters; a chart; each model's
    metrics on its own MLflow run."""
    lk = lake.open()
    metrics = read_metrics(lk)
    if metrics.empty:
        raise ValueError("no evaluation metrics: materialize the evaluation assets first")
    settings = mlflow.settings()
    facts = training_facts(settings, [registered_name(m) for m in metrics["model"].unique()])
    bertscore = None
    if lk.exists(BART_TEXT_TABLE):
        bertscore = lk.read(BART_TEXT_TABLE).to_pandas().set_index(["variant", "week"])["bertscore_f1"]
    frame = comparison_frame(metrics, facts, bertscore)
    lk.write(COMPARISON_TABLE, pa.Table.from_pandas(frame, preserve_index=False))

    chart = metric_bars(
        metrics[metrics.split == "test"].to_dict("records"),
        "MAP@12",
        "MAP@12 on the test week (95 % bootstrap intervals)",
    )
    extra = frame[["model", "split", "training_seconds", "parameters"]].rename(
        columns={"training_seconds": "train s", "parameters": "params"}
    )
    meta = table_metadata(lk, COMPARISON_TABLE, preview_rows=0)
    meta["comparison"] = dg.MetadataValue.md(
        comparison_markdown(metrics, extra)
        + "\n\nValues with 95 % bootstrap intervals, every row on the same "
        "protocol; `events` below the week's full count means a seeded sample (BART on CPU). Every metric "
        f"(Recall and MRR @ 1, 3, 5, 10, 20, BERTScore) is in `{COMPARISON_TABLE}` and in the MLflow run's "
        "model_comparison.csv."
    )
    meta.update(image_metadata(chart, "model_comparison_map12", "MAP@12 on the test week"))
    logged = log_model_metrics(settings, metrics, {n: f["run_id"] for n, f in facts.items()})
    meta["metrics_on_model_runs"] = dg.MetadataValue.json(logged)
    inputs = tuple(metrics_table(f) for f in MODEL_FAMILIES)
    with mlflow.run(context, "model_comparison", lk, inputs, "evaluation") as run:
        run.log_text(frame.to_csv(index=False), "model_comparison.csv")
        run.log_image(chart, "model_comparison_map12.png")
        for r in frame.to_dict("records"):
            run.log_metrics(
                {f"{r['split']}.{r['model']}.{m}": r[m] for m in COMPARED if not pd.isna(r.get(m))}
            )
        meta.update(mlflow_metadata(mlflow, run))
    return dg.MaterializeResult(metadata=meta)


class PromotionConfig(dg.Config):
    metric: str = PromotionPolicy.metric  # the Kaggle metric, on the validation week
    min_improvement: float = (
        PromotionPolicy.min_improvement
    )  # another model family must beat the champion by 2 %
    refit_tolerance: float = (
        PromotionPolicy.refit_tolerance
    )  # a refit of the champion's family may score 25 % less


@dg.asset(
    group_name="serving",
    kinds={"mlflow"},
    deps=[model_comparison],
    check_specs=[
        dg.AssetCheckSpec(
            "champion_serves",
            asset="champion",
            blocking=True,
            description="The champion alias loads and answers 12 distinct catalogue articles for a known "
            "and an unknown customer; blocking: no recommendations from a model that cannot serve",
        )
    ],
)
def champion(
    context: AssetExecutionContext,
    config: PromotionConfig,
    lake: LakeResource,
    mlflow: MLflowResource,
    evaluation_protocol: EvaluationProtocolResource,
) -> dg.MaterializeResult:
    """The served model: the best validation-week model takes the ``champion`` alias of
    ``hm_recs_recommender`` when it beats the champion by ``min_improvement`` (or refreshes the
    champion's own family on newer data within ``refit_tolerance``); else it is the ``challenger``.
    Every decision is recorded here and tagged on the registry version."""
    lk = lake.open()
    settings = mlflow.settings()
    comparison = lk.read(COMPARISON_TABLE).to_pandas()
    facts = training_facts(settings, comparison["registered_model"].tolist())
    policy = PromotionPolicy(config.metric, config.min_improvement, config.refit_tolerance)
    ranked = eligible(comparison, policy.metric, set(facts))
    week = load_time_split(lk).validation_start.isoformat()
    rescored = rescore_champion(
        current_champion(settings), evaluation_protocol.protocol(), lk, week, settings.tracking_uri
    )
    decisions = choose_champion(settings, ranked, facts, week, policy, rescored)
    served = current_champion(settings)
    context.log.info("; ".join(f"{d.candidate}: {d.kind}" for d in decisions))
    check = servable_check(settings, cached_serving_data(lk))
    return dg.MaterializeResult(
        metadata={
            "decisions": dg.MetadataValue.json([d.as_dict() for d in decisions]),
            "outcome": "; ".join(f"{d.candidate}: {d.kind}" for d in decisions),
            "served": f"{RECOMMENDER} v{served.version} ({served.tags.get('model')}), trained on data before "
            f"{served.tags.get('trained_before', '?')}",
            "ranking": dg.MetadataValue.md(
                markdown_table(
                    pa.Table.from_pandas(ranked[["model", policy.metric, "events"]], preserve_index=False)
                )
            ),
        },
        check_results=[check],
    )


def servable_check(settings, data) -> dg.AssetCheckResult:
    ok, meta = serves(load_champion(settings), data)
    return dg.AssetCheckResult(check_name="champion_serves", passed=ok, metadata=meta)


@dg.asset(
    group_name="serving",
    kinds={"deltalake", "mlflow"},
    deps=[champion],
    check_specs=checks(
        "recommendations",
        every_customer_gets_12_distinct_articles=(
            "Every customer of customers.csv gets 12 distinct real articles"
        ),
    ),
)
def recommendations(
    context: AssetExecutionContext, lake: LakeResource, mlflow: MLflowResource
) -> dg.MaterializeResult:
    """The champion's top 12 for every customer for the week after the data (Delta), and the Kaggle
    submission file (every customer of customers.csv; customers without purchases get the fallback)."""
    from hm_recs.sessions.purchases import sorted_ids
    from hm_recs.tables import CUSTOMER_FEATURES

    lk = lake.open()
    settings = mlflow.settings()
    champion = current_champion(settings)
    if champion is None:
        raise ValueError(f"no {CHAMPION} alias on {RECOMMENDER}: materialize the champion asset")
    model = load_champion(settings)
    customers = sorted_ids(lk, CUSTOMER_FEATURES, "customer_id").to_pylist()
    data = cached_serving_data(lk)
    start, end = next_week(data.data_end)
    preds, unknown = week_recommendations(
        model, customers, data, champion.tags.get("model", "?"), champion.version
    )
    lk.write(RECOMMENDATIONS_TABLE, pa.Table.from_pandas(preds, preserve_index=False))
    lk.write(UNKNOWN_TABLE, pa.Table.from_pandas(unknown, preserve_index=False))
    folder = state_dir() / "submissions"
    path = write_submission(preds, customers, folder / f"submission_{start.isoformat()}.csv")
    (folder / "submission.csv").write_bytes(path.read_bytes())
    names = dict(zip(data.articles["article_id"], data.articles["prod_name"], strict=True))
    sample = preds.head(5).copy()
    sample["first_three"] = sample["prediction"].map(
        lambda p: ", ".join(names.get(a, a) for a in p.split()[:3])
    )
    meta = table_metadata(lk, RECOMMENDATIONS_TABLE, preview_rows=0)
    meta.update(
        {
            "week": f"{start} .. {end}",
            "champion": f"{RECOMMENDER} v{champion.version} ({champion.tags.get('model')})",
            "champion_trained_before": champion.tags.get("trained_before", "?"),
            "champion_decision": champion.tags.get("decision_kind", "?"),
            "customers": len(preds),
            "cold_start_customers": int(preds["cold_start"].sum()),
            "cold_start_fallback": FALLBACK,
            "submission": dg.MetadataValue.path(str(path)),
            "sample": dg.MetadataValue.md(
                markdown_table(
                    pa.Table.from_pandas(
                        sample[["customer_id", "first_three", "cold_start"]], preserve_index=False
                    )
                )
            ),
            "distinct_articles_recommended": int(len(set(" ".join(preds["prediction"]).split()))),
        }
    )
    context.log.info(f"{len(preds)} customers, submission at {path}")
    bad = bad_lists(preds["prediction"], set(data.articles["article_id"]))
    check = dg.AssetCheckResult(
        check_name="every_customer_gets_12_distinct_articles",
        passed=bad == 0 and len(preds) == len(customers),
        metadata={"customers": len(customers), "rows": len(preds), "bad_lists": bad},
    )
    return dg.MaterializeResult(metadata=meta, check_results=[check])
