"""Evaluation: the prediction events of the protocol, and every baseline judged on them."""

import dagster as dg

from hm_recs.baselines.popularity import VARIANTS, load_popularity
from hm_recs.defs.baselines.assets import popularity_baselines
from hm_recs.defs.ingest.assets import article_features, customer_features
from hm_recs.defs.metadata import SANE_METRICS, checks, image_metadata, table_metadata
from hm_recs.defs.resources import EvaluationProtocolResource, LakeResource
from hm_recs.defs.sessions.assets import sessions, time_split
from hm_recs.evaluation.protocol import EvaluationProtocol, evaluate, metric_table, metrics_are_sane
from hm_recs.evaluation.weeks import events_table, load_target_weeks, metrics_table, write_metrics
from hm_recs.plots import metric_bars
from hm_recs.tables import EVENTS_TABLE

GROUP = "evaluation"


def protocol_metadata(protocol: EvaluationProtocol) -> dict:
    return {
        "protocol": dg.MetadataValue.json(
            {
                "ks": list(protocol.ks),
                "map_k": protocol.map_k,
                "mask_history": protocol.mask_history,
                "collapse_repeats": protocol.collapse_repeats,
                "n_bootstrap": protocol.n_bootstrap,
                "ranking": "full catalogue",
                "ties": "catalogue order (article_id ascending)",
            }
        )
    }


@dg.asset(
    group_name=GROUP,
    kinds={"deltalake"},
    deps=[sessions, time_split, article_features, customer_features],
    check_specs=checks(
        "evaluation_events",
        both_weeks_have_events=(
            "The validation and the test week both have next-item events and MAP@12 customers"
        ),
    ),
)
def evaluation_events(
    lake: LakeResource, evaluation_protocol: EvaluationProtocolResource
) -> dg.MaterializeResult:
    """The next-item prediction events and MAP@12 customers of the validation and test weeks that
    every model is judged on (one row per event, for inspection)."""
    lk = lake.open()
    protocol = evaluation_protocol.protocol()
    weeks = load_target_weeks(lk, protocol)
    lk.write(EVENTS_TABLE, events_table(weeks))
    meta = table_metadata(lk, EVENTS_TABLE)
    meta.update(protocol_metadata(protocol))
    for name, w in weeks.items():
        meta[f"{name}_events"] = dg.MetadataValue.int(w.n_events)
        meta[f"{name}_customers"] = dg.MetadataValue.int(len(w.customers))
    empty = [n for n, w in weeks.items() if w.n_events == 0 or len(w.customers) == 0]
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(
                check_name="both_weeks_have_events",
                passed=not empty,
                metadata={"empty": ", ".join(empty) or "none"},
            )
        ],
    )


@dg.asset(
    group_name=GROUP,
    kinds={"deltalake"},
    deps=[popularity_baselines, evaluation_events],
    check_specs=checks("popularity_evaluation", metrics_are_sane=SANE_METRICS),
)
def popularity_evaluation(
    lake: LakeResource, evaluation_protocol: EvaluationProtocolResource
) -> dg.MaterializeResult:
    """The popularity baselines on the validation and test weeks: Recall / MRR / NDCG at 1, 3, 5,
    10, 20 over next-item events, MAP@12 per customer, coverage, with 95 % bootstrap intervals."""
    lk = lake.open()
    protocol = evaluation_protocol.protocol()
    weeks = load_target_weeks(lk, protocol)
    results = [
        evaluate(load_popularity(lk, v, name), week, protocol)
        for name, week in weeks.items()
        for v in VARIANTS
    ]
    write_metrics(lk, "popularity", results, protocol)
    meta = table_metadata(lk, metrics_table("popularity"), preview_rows=0)
    meta["metrics"] = dg.MetadataValue.md(metric_table(results))
    meta.update(protocol_metadata(protocol))
    rows = [row for r in results for row in r.rows()]
    meta.update(image_metadata(metric_bars(rows, "MAP@12"), "popularity_map12", "MAP@12 by model and week"))
    meta.update(
        image_metadata(metric_bars(rows, "Recall@20"), "popularity_recall20", "Recall@20 by model and week")
    )
    ok, info = metrics_are_sane(results)
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[dg.AssetCheckResult(check_name="metrics_are_sane", passed=ok, metadata=info)],
    )
