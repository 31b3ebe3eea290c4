"""BART on the shared protocol, beside POP and GRU4Rec."""

import dagster as dg
from dagster import AssetExecutionContext

from hm_recs.defs.bart.assets import TARGETS, bart_models
from hm_recs.defs.bart.config import BartEvaluationConfig
from hm_recs.defs.bart.items import item_index
from hm_recs.defs.baselines.assets import popularity_baselines
from hm_recs.defs.evaluation.assets import evaluation_events, protocol_metadata
from hm_recs.defs.gru4rec.assets import gru4rec_model
from hm_recs.defs.metadata import SANE_METRICS, checks, table_metadata
from hm_recs.defs.resources import (
    BartResource,
    ComputeResource,
    EvaluationProtocolResource,
    LakeResource,
    LanceDBResource,
    MLflowResource,
    ModelStoreResource,
)
from hm_recs.evaluation.protocol import metric_table, metrics_are_sane
from hm_recs.evaluation.weeks import load_target_weeks, metrics_table
from hm_recs.profiles import TORCH_STEP
from hm_recs.registry.logged import log_bart_evaluation
from hm_recs.registry.tracking import TrackedRun
from hm_recs.reports import cold_start_table, differences_table, markdown_table
from hm_recs.retrieval.bart_evaluation import (
    bought_before,
    evaluate_bart,
    load_grounding,
    of_variant,
    reference_baselines,
    stored_recommenders,
    write_tables,
)
from hm_recs.retrieval.catalogue import CatalogueTables
from hm_recs.retrieval.item_index import ItemIndex
from hm_recs.retrieval.item_space import SPACE_KEY, space_from_settings
from hm_recs.sessions.purchases import load_purchases
from hm_recs.sessions.split import load_time_split


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch", "deltalake", "mlflow"},
    op_tags=TORCH_STEP,
    deps=[*bart_models.values(), item_index, evaluation_events, popularity_baselines, gru4rec_model],
    check_specs=checks(
        "bart_evaluation",
        metrics_are_sane=SANE_METRICS,
        lists_are_valid_distinct_articles=(
            "Every BART list holds distinct real articles (coverage above zero on both weeks)"
        ),
    ),
)
def bart_evaluation(
    context: AssetExecutionContext,
    config: BartEvaluationConfig,
    bart: BartResource,
    lake: LakeResource,
    lancedb: LanceDBResource,
    compute: ComputeResource,
    evaluation_protocol: EvaluationProtocolResource,
    mlflow: MLflowResource,
    models: ModelStoreResource,
) -> dg.MaterializeResult:
    """Every variant on every event and MAP@12 customer of both weeks (the shared protocol), grounded
    as its training asset registered it, paired differences against ``pop_time_decay`` and
    ``gru4rec_warm`` and between image variants and their text-only twins, cold-start events,
    BERTScore (the paper's Table 4) and how close free generations come to real articles; each
    variant's metrics logged on its training run."""
    lk, store = lake.open(), models.store()
    device = compute.spec().torch_device()
    protocol = evaluation_protocol.protocol()
    split, purchases = load_time_split(lk), load_purchases(lk)
    weeks = load_target_weeks(lk, protocol, purchases=purchases, split=split)
    if config.max_events is not None:  # the same seeded sample for BART and the baselines it is compared with
        weeks = {k: w.subset(config.max_events, config.max_customers) for k, w in weeks.items()}
    catalogue = CatalogueTables.from_lake(lk).catalogue()
    index = ItemIndex(lancedb.uri, lancedb.storage_options())
    space = space_from_settings(index.metadata(SPACE_KEY), device)
    settings = config.settings(bart.beams, bart.generations)
    make = stored_recommenders(store, catalogue, weeks, device, settings, index, space)
    baselines = reference_baselines(lk, store, weeks, protocol, device)
    items, days = purchases["article_idx"].to_numpy(), purchases["t_dat"].to_numpy()
    seen = {w: bought_before(items, days, weeks[w].start, len(catalogue)) for w in TARGETS}
    variants = bart.variant_names()
    groundings = {v: load_grounding(store, v) for v in variants}
    result = evaluate_bart(
        make, variants, weeks, protocol, baselines, seen, settings, space, index, context.log.info, groundings
    )
    write_tables(lk, result, protocol)
    meta = _metadata(lk, protocol, result, baselines, weeks)
    logged = {}
    for v in variants:
        run_id = _training_run(context, v)
        if run_id is not None:
            log_bart_evaluation(TrackedRun(mlflow.settings(), run_id), of_variant(result, v))
        logged[v] = run_id or "no MLflow run recorded for its training"
    meta["logged_on_training_runs"] = dg.MetadataValue.json(logged)
    ok, info = metrics_are_sane(result.results)
    valid = all(r.metrics["Coverage@12"][0] > 0 for r in result.results)
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(check_name="metrics_are_sane", passed=ok, metadata=info),
            dg.AssetCheckResult(check_name="lists_are_valid_distinct_articles", passed=bool(valid)),
        ],
    )


def _metadata(lk, protocol, result, baselines, weeks) -> dict:
    meta = table_metadata(lk, metrics_table("bart"), preview_rows=0)
    meta.update(protocol_metadata(protocol))
    meta["shared_protocol"] = dg.MetadataValue.md(metric_table(result.results + baselines))
    meta["paired_differences"] = dg.MetadataValue.md(differences_table(result.comparisons))
    meta["cold_start"] = dg.MetadataValue.md(cold_start_table(result.cold_start))
    meta["table4_bertscore"] = dg.MetadataValue.md(
        markdown_table(result.text_rows, max_chars=40)
        + "\n\nThe paper (Table 4): BERTScore P/R/F1 about 0.95 / 0.93 / 0.94 (roberta-large scorer)."
    )
    meta["grounding"] = dg.MetadataValue.json(result.grounding)
    meta["events_evaluated"] = dg.MetadataValue.json({k: w.n_events for k, w in weeks.items()})
    meta["sample_generations"] = dg.MetadataValue.md(
        markdown_table(result.samples[:12]) if result.samples else ""
    )
    return meta


def _training_run(context, variant: str) -> str | None:
    """The MLflow run of the variant's training: recorded in its materialization's metadata."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(f"bart_model_{variant}"))
    entry = event.asset_materialization.metadata.get("mlflow_run_id") if event else None
    return entry.value if entry is not None else None
