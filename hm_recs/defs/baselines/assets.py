"""Baselines: popularity lists (the paper's POP, last week's and time-decayed popularity)."""

import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext

from hm_recs.baselines.popularity import LIST_LENGTH, VARIANTS, load_popularity, ranking_rows
from hm_recs.data.delta import Lake
from hm_recs.defs.ingest.assets import article_features, customer_features
from hm_recs.defs.metadata import checks, table_metadata
from hm_recs.defs.resources import LakeResource, MLflowResource
from hm_recs.defs.sessions.assets import sessions, time_split
from hm_recs.registry.logged import log_recommender
from hm_recs.reports import markdown_table
from hm_recs.sessions.purchases import load_purchases
from hm_recs.sessions.split import FIT_TARGETS, load_time_split
from hm_recs.tables import ARTICLE_FEATURES, POPULARITY_TABLE, SESSIONS_TABLE

GROUP = "baselines"


class PopularityConfig(dg.Config):
    half_life_days: float = 7.0  # for the time_decay variant


@dg.asset(
    group_name=GROUP,
    kinds={"deltalake", "mlflow"},
    deps=[sessions, time_split, article_features, customer_features],
    check_specs=checks(
        "popularity_baselines",
        lists_are_valid_articles="Every stored popularity ranking holds catalogue articles only",
    ),
)
def popularity_baselines(
    context: AssetExecutionContext, config: PopularityConfig, lake: LakeResource, mlflow: MLflowResource
) -> dg.MaterializeResult:
    """Top articles by popularity for each variant, fit once per cutoff: before the validation week
    (for tuning), before the test week (training + validation data) and on every week (the list
    served next week). Each variant's serving list is registered in MLflow as ``hm_recs_pop_<variant>``."""
    lk = lake.open()
    meta, check = _fit_popularity(config, lk)
    split = load_time_split(lk)
    versions, links = {}, {}
    for variant in VARIANTS:  # one MLflow run per model, so runs compare one to one
        with mlflow.run(context, f"pop_{variant}", lk, (SESSIONS_TABLE, ARTICLE_FEATURES)) as run:
            run.log_params(
                {"variant": variant, "half_life_days": config.half_life_days, "list_length": LIST_LENGTH}
            )
            model = load_popularity(lk, variant, "serving")
            with tempfile.TemporaryDirectory() as tmp:
                np.save(Path(tmp) / "ranking.npy", model.ranking)
                versions[variant] = log_recommender(
                    run,
                    lk,
                    "popularity",
                    f"pop_{variant}",
                    {"variant": variant},
                    {"ranking.npy": Path(tmp) / "ranking.npy"},
                    trained_before=split.cutoff("serving"),
                )
            links[variant] = mlflow.run_url(run)
    meta["mlflow_runs"] = dg.MetadataValue.json(links)
    meta["registered_models"] = dg.MetadataValue.json(
        {v: f"{mv.name} v{mv.version}" for v, mv in versions.items()}
    )
    return dg.MaterializeResult(metadata=meta, check_results=[check])


def _fit_popularity(config: PopularityConfig, lk: Lake):
    split = load_time_split(lk)
    purchases = load_purchases(lk)
    articles = lk.read(
        ARTICLE_FEATURES,
        columns=["article_idx", "article_id", "prod_name", "product_type_name", "colour_group_name"],
    )
    n_items = articles.num_rows
    cutoffs = {t: split.cutoff(t) for t in FIT_TARGETS}
    rows = ranking_rows(purchases, n_items, cutoffs, config.half_life_days)
    table = pa.Table.from_pylist(rows)
    ids = articles.column("article_id").take(pa.array(table.column("article_idx").to_numpy()))
    table = table.append_column("article_id", ids)
    lk.write(POPULARITY_TABLE, table)

    meta = table_metadata(lk, POPULARITY_TABLE, preview_rows=0)
    by_idx = {r["article_idx"]: r for r in articles.to_pylist()}
    for variant in VARIANTS:
        top = [r for r in rows if r["variant"] == variant and r["target"] == "serving" and r["rank"] <= 12]
        preview = pa.Table.from_pylist(
            [
                {
                    "rank": r["rank"],
                    "article_id": by_idx[r["article_idx"]]["article_id"],
                    "name": by_idx[r["article_idx"]]["prod_name"],
                    "type": by_idx[r["article_idx"]]["product_type_name"],
                    "colour": by_idx[r["article_idx"]]["colour_group_name"],
                    "score": round(r["score"], 2),
                }
                for r in top
            ]
        )
        meta[f"top12_{variant}"] = dg.MetadataValue.md(markdown_table(preview))
    valid = bool(
        np.all(
            (table.column("article_idx").to_numpy() >= 0) & (table.column("article_idx").to_numpy() < n_items)
        )
    )
    return meta, dg.AssetCheckResult(
        check_name="lists_are_valid_articles", passed=valid, metadata={"catalogue_size": n_items}
    )
