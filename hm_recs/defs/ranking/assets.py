"""Candidate generation and the learned ranker (beyond the paper: how the H&M competition was won).

``candidates`` proposes articles for every week the rankers learn from or rank, ``ranker_training_data``
gives each candidate its features and label, ``ranker_model`` trains LightGBM (objective chosen on
the validation week) and registers the serving lists, ``ranker_evaluation`` judges it on the shared
protocol beside every other model. Each calls one stage of :mod:`hm_recs.ranking.stages`.
"""

import json

import dagster as dg
import pandas as pd
import pyarrow as pa
from dagster import AssetExecutionContext

from hm_recs.artifacts import ranker_key
from hm_recs.defs.bart.assets import bart_models
from hm_recs.defs.bart.items import item_index
from hm_recs.defs.evaluation.assets import evaluation_events, protocol_metadata
from hm_recs.defs.gru4rec.assets import gru4rec_model
from hm_recs.defs.ingest.assets import article_features, customer_features
from hm_recs.defs.metadata import SANE_METRICS, checks, image_metadata, mlflow_metadata, table_metadata
from hm_recs.defs.ranking.config import CandidatesConfig, RankerConfig, RowsConfig
from hm_recs.defs.resources import (
    ComputeResource,
    EvaluationProtocolResource,
    LakeResource,
    LanceDBResource,
    MLflowResource,
    ModelStoreResource,
)
from hm_recs.defs.sessions.assets import sessions, time_split
from hm_recs.evaluation.protocol import metric_table, metrics_are_sane
from hm_recs.evaluation.weeks import metrics_table
from hm_recs.plots import importance_bars
from hm_recs.profiles import TORCH_STEP
from hm_recs.ranking import stages
from hm_recs.registry.logged import log_ranker
from hm_recs.reports import markdown_table
from hm_recs.sessions.split import load_time_split
from hm_recs.tables import CANDIDATES_TABLE, RANKER_ROWS_TABLE

GROUP = "ranking"


def _md(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(pa.Table.from_pandas(frame, preserve_index=False)))


def _check(name: str, passed: bool, metadata: dict) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=name, passed=bool(passed), metadata=metadata)


@dg.asset(
    group_name=GROUP,
    kinds={"deltalake", "lancedb", "pytorch"},
    op_tags=TORCH_STEP,
    deps=[
        sessions,
        time_split,
        article_features,
        customer_features,
        gru4rec_model,
        *bart_models.values(),
        item_index,
    ],
    check_specs=checks(
        "candidates",
        sources_trained_before_their_week="Every week's candidates come from purchases before its first "
        "day, and each model source (GRU4Rec, BART) proposing for it was trained before that day",
        recall_above_floor="The union of the sources covers at least min_recall of the validation "
        "week's purchases",
    ),
)
def candidates(
    context: AssetExecutionContext,
    config: CandidatesConfig,
    lake: LakeResource,
    compute: ComputeResource,
    lancedb: LanceDBResource,
    models: ModelStoreResource,
) -> dg.MaterializeResult:
    """Candidate articles for every week the rankers learn from or rank: each customer's past
    purchases, co-purchases, best sellers overall and in the customer's age band, other colours of
    the same product, the item index's nearest neighbours, GRU4Rec's top 50 and, with
    ``bart_source``, a BART variant's top ``bart_depth``; one score column per source; each source's
    recall on the labelled weeks."""
    lk = lake.open()
    index = None
    if config.item_index_source:
        from hm_recs.retrieval.item_index import ItemIndex

        index = ItemIndex(lancedb.uri, lancedb.storage_options())
    out = stages.build_candidates(
        lk,
        config.train_weeks,
        models.store(),
        compute.spec(),
        index,
        config.neighbours,
        config.batch_customers,
        context.log.info,
        gru4rec=config.gru4rec_source,
        bart=config.bart_source,
        bart_depth=config.bart_depth,
        beams=config.bart_beams,
    )
    meta = table_metadata(lk, CANDIDATES_TABLE, preview_rows=0)
    meta["candidate_recall"] = _md(
        out.recall[out.recall["week"] >= load_time_split(lk).validation_start].round(4)
    )
    meta["model_fit_per_week"] = dg.MetadataValue.json(out.fits)
    meta["item_index_neighbours"] = out.neighbours
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            _check(
                "sources_trained_before_their_week",
                not out.later_sources,
                {"weeks_with_a_later_source": ", ".join(out.later_sources) or "none"},
            ),
            _check(
                "recall_above_floor",
                out.validation_recall >= config.min_recall,
                {"validation_recall": out.validation_recall, "floor": config.min_recall},
            ),
        ],
    )


@dg.asset(
    group_name=GROUP,
    kinds={"deltalake", "pandas"},
    deps=[candidates],
    check_specs=checks(
        "ranker_training_data",
        features_read_only_days_before_their_week="Features of 200 validation-week customers, "
        "recomputed from purchases cut at the week's first day, equal the stored ones",
        every_labelled_week_has_purchases="Every labelled week has candidates the customer bought",
    ),
)
def ranker_training_data(
    context: AssetExecutionContext, config: RowsConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Every candidate with its features (customer, article, pair, each source's score), all read
    from purchases before its week, and its label (bought in the week; missing for the serving week)."""
    lk = lake.open()
    out = stages.build_rows(lk, config.batch_customers, context.log.info)
    meta = table_metadata(lk, RANKER_ROWS_TABLE, preview_rows=0)
    meta["rows_per_week"] = _md(out.per_week)
    bought = dict(zip(map(str, out.per_week["week"]), out.per_week["bought"].astype(int), strict=True))
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            _check(
                "features_read_only_days_before_their_week",
                out.no_leakage,
                {k: str(v) for k, v in out.leakage_probe.items()},
            ),
            _check("every_labelled_week_has_purchases", bool(bought) and min(bought.values()) > 0, bought),
        ],
    )


@dg.asset(
    group_name=GROUP,
    kinds={"lightgbm", "mlflow"},
    deps=[ranker_training_data, evaluation_events],
    check_specs=checks(
        "ranker_model",
        lists_differ_by_customer="At least min_distinct_share of the served customers get a top 12 "
        "no other customer gets (the ranker reads its input)",
    ),
)
def ranker_model(
    context: AssetExecutionContext,
    config: RankerConfig,
    lake: LakeResource,
    mlflow: MLflowResource,
    models: ModelStoreResource,
    evaluation_protocol: EvaluationProtocolResource,
) -> dg.MaterializeResult:
    """LightGBM over the candidates: each objective trained on the weeks before the validation week
    and judged there (MAP@12); the best trained again for the test week and for serving. The
    serving ranker's lists for the week after the data are registered as ``hm_recs_ranker``."""
    lk, store = lake.open(), models.store()
    params = config.params()
    out = stages.train_rankers(
        lk, evaluation_protocol.protocol(), store, config.objectives, params, config.batch_customers
    )
    fit = out.fit
    plot = importance_bars(out.importance, f"Feature importance (total gain), {fit.objective} ranker")
    settings = {"objective": fit.objective, **params}
    with mlflow.run(context, "ranker_model", lk, (RANKER_ROWS_TABLE,)) as run:
        run.log_params({**settings, "objectives_tried": ",".join(config.objectives)})
        run.log_metrics(
            {
                "training_seconds": out.seconds,
                "n_parameters": fit.rankers["serving"].n_parameters(),
                **{f"validation_MAP_at_12_{o}": v for o, v in fit.validation.items()},
                **{f"{t}_training_rows": n for t, n in fit.rows.items()},
            }
        )
        run.log_image(plot, "feature_importance.png")
        run.log_text(json.dumps(out.importance, indent=1), "feature_importance.json")
        model = store.path(ranker_key("serving")) / "model.txt"
        trained_before = load_time_split(lk).cutoff("serving")
        version = log_ranker(run, lk, out.lists, settings, model, trained_before=trained_before)
        meta = mlflow_metadata(mlflow, run, version)
    meta.update(image_metadata(plot, "ranker_feature_importance", "Feature importance (total gain)"))
    meta.update(
        {
            "objective": fit.objective,
            "validation_MAP@12_by_objective": dg.MetadataValue.json(fit.validation),
            "training_rows": dg.MetadataValue.json(fit.rows),
            "training_seconds": round(out.seconds, 1),
            "served_customers": int(out.lists["customer_idx"].nunique()),
            "model": dg.MetadataValue.path(store.uri(ranker_key("serving"))),
        }
    )
    share = out.distinct_share
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            _check(
                "lists_differ_by_customer",
                share >= config.min_distinct_share,
                {"distinct_share": round(share, 4), "floor": config.min_distinct_share},
            )
        ],
    )


@dg.asset(
    group_name=GROUP,
    kinds={"deltalake"},
    deps=[ranker_model],
    check_specs=checks(
        "ranker_evaluation",
        metrics_are_sane=SANE_METRICS,
        beats_pop_on_validation="MAP@12 on the validation week above the best POP variant's, the paired "
        "bootstrap interval of the difference above zero",
    ),
)
def ranker_evaluation(
    lake: LakeResource, models: ModelStoreResource, evaluation_protocol: EvaluationProtocolResource
) -> dg.MaterializeResult:
    """The validation and test rankers on the shared protocol (one list per customer for the week,
    made at its start), with paired bootstrap differences of MAP@12 to the best single model (by
    validation MAP@12) and to the best POP variant."""
    lk = lake.open()
    protocol = evaluation_protocol.protocol()
    out = stages.evaluate_rankers(lk, protocol, models.store())
    meta = table_metadata(lk, metrics_table("ranker"), preview_rows=0)
    meta["metrics"] = dg.MetadataValue.md(metric_table(out.results))
    meta["best_single_model"] = out.best_single or "none"
    diffs = pd.DataFrame(out.differences).round(4)
    meta["map12_differences"] = _md(diffs) if len(diffs) else "no other model scored on every customer"
    meta.update(protocol_metadata(protocol))
    ok, info = metrics_are_sane(out.results)
    vs_pop = out.versus(out.best_pop, "validation")
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            _check("metrics_are_sane", ok, info),
            _check(
                "beats_pop_on_validation",
                vs_pop is not None and vs_pop["lo"] > 0,
                {k: str(v) for k, v in (vs_pop or {"pop": "not evaluated"}).items()},
            ),
        ],
    )
