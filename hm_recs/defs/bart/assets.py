"""BART: tokenizer, purchase sequences, one model per variant, and its evaluation."""

import dataclasses
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext

from hm_recs.defs.bart.items import item_index, read_codebook, read_image_codes, semantic_ids
from hm_recs.defs.ingest.assets import article_features
from hm_recs.defs.metadata import image_metadata, markdown_table, table_metadata
from hm_recs.defs.resources import BartResource, ComputeResource, LakeResource, MLflowResource
from hm_recs.defs.sessions.assets import sessions, time_split
from hm_recs.defs.vqgan.assets import image_tokens
from hm_recs.models.bart import (
    VARIANTS,
    BartTrainingSettings,
    PairData,
    PurchaseSequences,
    RecencyPass,
    SequenceCodec,
    build_model,
    combine_results,
    new_model,
    purchase_sequences,
    save_bart,
    settings_dict,
    train_bart,
    training_pairs,
    training_passes,
    variant_seed,
)
from hm_recs.paths import models_dir
from hm_recs.plots import line_plot
from hm_recs.profiles import TORCH_STEP
from hm_recs.retrieval.bart_recommender import BartRecommender, catalogue_from_tables, distinct_generations
from hm_recs.retrieval.semantic_ids import vocabulary
from hm_recs.sessions.purchases import load_purchases
from hm_recs.sessions.split import fit_targets, load_time_split
from hm_recs.tables import ARTICLE_FEATURES, SEMANTIC_IDS, SEQUENCES
from hm_recs.training import fingerprint, loss_went_down, smoothed

TARGETS = ("validation", "test")


def bart_dir() -> Path:
    return models_dir() / "bart"


def bart_model_dir(variant: str, target: str) -> Path:
    return bart_dir() / variant / target


def load_catalogue(lk):
    """The catalogue every BART asset reads: texts, image codes, codebook, semantic IDs."""
    articles = lk.read(ARTICLE_FEATURES).to_pandas().sort_values("article_idx")
    codebook = read_codebook(lk)
    tokens = None
    codes = read_image_codes(lk, articles["article_id"].tolist())
    if any(c is not None for c in codes):
        import pandas as pd

        tokens = pd.DataFrame({"article_id": articles["article_id"], "tokens": codes})
    sids = lk.read(SEMANTIC_IDS).to_pandas() if lk.exists(SEMANTIC_IDS) else None
    return catalogue_from_tables(articles, tokens, codebook, sids), articles


def sid_vocabulary(catalogue) -> list[str]:
    """Every semantic-ID token the catalogue's codes use."""
    if not catalogue.semantic_ids:
        return []
    codes = np.concatenate(list(catalogue.semantic_ids.values()))
    return vocabulary(codes.shape[1] - 1, int(codes[:, :-1].max()) + 1, int(codes[:, -1].max()) + 1)


@dg.asset(group_name="models", kinds={"pytorch"}, deps=[article_features, image_tokens, semantic_ids])
def bart_tokenizer(bart: BartResource, lake: LakeResource) -> dg.MaterializeResult:
    """The tokenizer every variant shares: the pretrained one, or a byte-level BPE trained on the
    catalogue's article texts; plus ``<item>``, one token per VQGAN code (``<img_0>`` ...) and the
    semantic-ID tokens (``<sid0_0>`` ...)."""
    lk = lake.lake()
    catalogue, _ = load_catalogue(lk)
    sids = sid_vocabulary(catalogue)
    tokenizer, _ = build_model(
        bart.pretrained, bart.size, catalogue.texts, catalogue.n_codes, bart.seed, sid_vocabulary=sids
    )
    folder = bart_dir() / "tokenizer"
    tokenizer.save_pretrained(folder)
    (folder / "hm_recs.json").write_text(
        json.dumps(
            {
                "pretrained": bart.pretrained,
                "size": bart.size,
                "n_codes": catalogue.n_codes,
                "semantic_id_tokens": len(sids),
            }
        )
    )
    return dg.MaterializeResult(
        metadata={
            "vocabulary": len(tokenizer),
            "image_tokens": catalogue.n_codes,
            "semantic_id_tokens": len(sids),
            "source": bart.pretrained
            or f"trained on {len(catalogue.texts)} article texts (from-config size {bart.size})",
            "example": dg.MetadataValue.text(" | ".join(tokenizer.tokenize(catalogue.texts[0]))),
            "path": dg.MetadataValue.path(str(folder)),
        }
    )


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bart_dir() / "tokenizer")


@dg.asset(group_name="models", kinds={"deltalake"}, deps=[bart_tokenizer, sessions, time_split])
def bart_training_sequences(bart: BartResource, lake: LakeResource) -> dg.MaterializeResult:
    """Every customer's purchases up to the end of the validation week, in order (consecutive repeats
    collapsed): the training pairs of both target weeks come from it. Metadata: how many history
    articles each variant's source budget fits, and example sources."""
    lk = lake.lake()
    split = load_time_split(lk)
    seqs = purchase_sequences(load_purchases(lk), end=split.validation_end)
    lk.write(
        SEQUENCES,
        pa.table(
            {
                "customer_idx": pa.array(seqs.customers, pa.int64()),
                "article_idx": pa.array([s.tolist() for s in seqs.items], pa.list_(pa.int32())),
                "t_dat": pa.array(
                    [d.astype("datetime64[D]").tolist() for d in seqs.days], pa.list_(pa.date32())
                ),
            }
        ),
    )
    catalogue, _ = load_catalogue(lk)
    tokenizer = load_tokenizer()
    pairs = training_pairs(seqs, split.test_start)
    rng = np.random.default_rng(0)
    sample = pairs[rng.choice(len(pairs), min(500, len(pairs)), replace=False)] if len(pairs) else pairs
    summary, examples = [], []
    for name in bart.variant_names():
        codec = SequenceCodec(catalogue, VARIANTS[name], tokenizer, bart.budget(name))
        fit = np.array([codec.source(seqs.items[s][:j])[1] for s, j in sample])
        cap = np.minimum(sample[:, 1], VARIANTS[name].history_items)
        summary.append(
            {
                "variant": name,
                "max_source_tokens": codec.max_tokens,
                "mean_history_articles": round(float(cap.mean()), 2),
                "mean_articles_in_source": round(float(fit.mean()), 2),
                "truncated_share": round(float((fit < cap).mean()), 3),
            }
        )
        if len(sample):
            ex = PairData(seqs, sample[:1], codec).example(0)
            examples.append({"variant": name, **ex})
    meta = table_metadata(lk, SEQUENCES, preview_rows=0)
    meta["training_pairs"] = dg.MetadataValue.json(
        {
            t: int(len(training_pairs(seqs, c)))
            for t, c in (("validation", split.validation_start), ("test", split.test_start))
        }
    )
    meta["articles_that_fit"] = dg.MetadataValue.md(markdown_table(pa.Table.from_pylist(summary)))
    meta["example_sources"] = dg.MetadataValue.md(
        markdown_table(pa.Table.from_pylist(examples), max_chars=400) if examples else ""
    )
    return dg.MaterializeResult(metadata=meta)


def read_sequences(lk) -> PurchaseSequences:
    t = lk.read(SEQUENCES)
    return PurchaseSequences(
        t.column("customer_idx").to_numpy(),
        [np.asarray(x, np.int64) for x in t.column("article_idx").to_pylist()],
        [np.asarray(x, "datetime64[D]") for x in t.column("t_dat").to_pylist()],
    )


class BartTrainingConfig(dg.Config):
    """The paper's fine-tuning by default (AdamW 5e-5, 2 epochs, batch 4 x 4 accumulation, linear
    decay); ``make demo`` and the CPU benchmark pass a from-scratch schedule (see ``hm_recs.profiles``)."""

    learning_rate: float = 5e-5
    epochs: float = 2.0
    max_steps: int | None = None
    batch_size: int = 4
    accumulate: int = 4
    warmup_ratio: float = 0.0
    schedule: str = "linear"  # linear | cosine | constant
    weight_decay: float = 0.0
    target_weeks: int | None = None  # None: every training pair; N: pairs whose target is in the last N weeks
    order: str = "shuffle"  # shuffle | time: each epoch week by week, the newest purchases last
    max_source_tokens: int | None = None  # None: the bart resource's budget for the variant
    dropout: float | None = None  # from-config models; None: BART's 0.1
    checkpoint_every: int = 500
    # 0: no recency pass; N: after the main pass, one over the last N weeks (hm_recs.models.bart.RecencyPass)
    recent_weeks: int = 0
    recent_epochs: float = 1.0
    # > 0: first a pass rebuilding the source's newest article (hm_recs.models.bart.training_passes)
    reconstruction_epochs: float = 0.0
    recent_learning_rate_scale: float = 0.5
    refit_for_test: bool = True  # a second model on the data before the test week
    # full: trained anew | continue: the validation model plus a recency pass over the validation week
    refit_mode: str = "full"
    # a last model on every week: the newest one plus a recency pass over the weeks it has not seen;
    # registered and served (never judged: it has seen the test week)
    refit_for_serving: bool = True
    serving_epochs: float | None = None  # epochs of that pass (None: recent_epochs)
    seed: int = 0  # the variant's own seed is derived from it
    distinct_sources: int = 256  # validation sources the distinct-generations check decodes
    min_distinct_share: float = 0.25  # ... and the share of them that must get a list of their own (top 12)

    def recency(self) -> RecencyPass:
        return RecencyPass(self.recent_weeks or 1, self.recent_epochs, self.recent_learning_rate_scale)

    def settings(self, variant: str) -> BartTrainingSettings:
        return BartTrainingSettings(
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            batch_size=self.batch_size,
            accumulate=self.accumulate,
            checkpoint_every=self.checkpoint_every,
            max_steps=self.max_steps,
            warmup_ratio=self.warmup_ratio,
            schedule=self.schedule,
            weight_decay=self.weight_decay,
            target_weeks=self.target_weeks,
            order=self.order,
            seed=variant_seed(self.seed, variant),
        )


def _bart_model_asset(variant: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"bart_model_{variant}",
        group_name="models",
        kinds={"pytorch", "mlflow"},
        op_tags=TORCH_STEP,
        deps=[bart_training_sequences],
        check_specs=[
            dg.AssetCheckSpec(
                "training_loss_decreased",
                asset=f"bart_model_{variant}",
                description=(
                    "The training loss at the end is below the loss at the start (a model that trains)"
                ),
            ),
            dg.AssetCheckSpec(
                "generations_are_distinct",
                asset=f"bart_model_{variant}",
                description="Different validation histories get different top-12 lists "
                "(a model that ignores its input gives one)",
            ),
        ],
        description=f"BART trained on the `{variant}` sequences ({VARIANTS[variant]}): "
        "one model on the data before the "
        "validation week, with `refit_for_test` one before the test week, with `refit_for_serving` one on "
        "every week (registered and served).",
    )
    def _model(
        context: AssetExecutionContext,
        config: BartTrainingConfig,
        bart: BartResource,
        lake: LakeResource,
        compute: ComputeResource,
        mlflow: MLflowResource,
    ) -> dg.MaterializeResult:
        lk = lake.lake()
        with mlflow.run(context, f"bart_model_{variant}", lk, (SEQUENCES,)) as run:
            run.log_params(
                {
                    "variant": variant,
                    **config.model_dump(),
                    "pretrained": bart.pretrained,
                    "size": bart.size,
                    "max_source_tokens": config.max_source_tokens or bart.budget(variant),
                }
            )
            result, plot = _train_variant(context, variant, config, bart, lk, compute, run)
            if plot:
                run.log_image(plot, f"bart_{variant}_loss.png")
            (bart_dir() / variant).mkdir(parents=True, exist_ok=True)
            (bart_dir() / variant / "mlflow_run_id").write_text(
                run.run_id
            )  # the evaluation registers the grounded model here
            result.metadata.update(_mlflow_metadata(mlflow, run))
        return result

    return _model


def _mlflow_metadata(mlflow, run) -> dict:
    from hm_recs.defs.registry.logged_models import mlflow_metadata

    return mlflow_metadata(mlflow, run)


def _train_variant(
    context, variant: str, config: BartTrainingConfig, bart: BartResource, lk, compute: ComputeResource, run
):
    if config.refit_mode not in ("full", "continue"):
        raise ValueError(f"refit_mode must be full or continue, got {config.refit_mode!r}")
    tokenizer = load_tokenizer()
    catalogue, _ = load_catalogue(lk)
    seqs = read_sequences(lk)
    split = load_time_split(lk)
    spec = compute.spec()
    settings = config.settings(variant)
    budget = config.max_source_tokens or bart.budget(variant)
    codec = SequenceCodec(catalogue, VARIANTS[variant], tokenizer, budget)
    meta, curves, checks = {"device": spec.describe(), "max_source_tokens": budget}, {}, []
    base = [
        variant,
        settings_dict(settings),
        budget,
        bart.pretrained,
        bart.size,
        config.dropout,
        lk.version(SEQUENCES),
    ]
    model, previous = None, None
    for target in fit_targets(config.refit_for_test, config.refit_for_serving):
        cutoff = split.cutoff(target)
        if target == "serving" or (target == "test" and config.refit_mode == "continue"):
            # the newest model, a pass over the weeks since its cutoff
            weeks = max(1, (cutoff - previous).days // 7)
            recency = config.recency()
            if target == "serving" and config.serving_epochs is not None:
                recency = dataclasses.replace(recency, epochs=config.serving_epochs)
            passes = training_passes(settings, recency=recency, continue_weeks=weeks)
        else:
            model = new_model(bart.pretrained, bart.size, tokenizer, settings.seed, config.dropout)
            passes = training_passes(
                settings, config.reconstruction_epochs, config.recency() if config.recent_weeks else None
            )
        results = []
        for p in passes:
            s = p.settings
            pairs = training_pairs(seqs, cutoff, s.target_weeks)
            data = PairData(seqs, pairs, codec, s.max_target_tokens, p.task)
            run_key = fingerprint(*base, target, p.name, settings_dict(s), config.refit_mode)
            context.log.info(
                f"{variant}/{target} {p.name} pass: {len(data)} pairs before {cutoff} on {spec.describe()}"
            )
            folder = bart_model_dir(variant, target) / ("run" if p.name == "main" else f"run_{p.name}")
            results.append(train_bart(model, data, folder, s, spec, run_key))
        result = combine_results(results)
        _record(run, meta, variant, target, result, model)
        save_bart(
            model,
            tokenizer,
            bart_model_dir(variant, target) / "model",
            {
                "variant": variant,
                "target": target,
                "trained_before": cutoff.isoformat(),
                "max_source_tokens": budget,
                "steps": result.steps,
                "pairs": result.pairs,
                "epochs": round(result.epochs, 3),
                "passes": [p.name for p in passes],
                "refit_mode": {"test": config.refit_mode, "serving": "continue"}.get(target),
            },
        )
        previous = cutoff
        curves[target] = result.loss
        if target == "validation":
            checks.append(_distinct_check(model, codec, seqs, split, config))
    plot = None
    if any(curves.values()):
        smooth = {k: smoothed(v) for k, v in curves.items() if v}
        plot = line_plot(smooth, f"BART {variant}: training loss", "step", "cross-entropy per target token")
        meta.update(image_metadata(plot, f"bart_{variant}_loss", "Training loss"))
    # the validation model's main pass; a continued refit trains on one week only and is not comparable
    first = curves.get("validation", [])
    ok = len(first) < 4 or loss_went_down(first)[0]
    checks.append(dg.AssetCheckResult(check_name="training_loss_decreased", passed=bool(ok)))
    return dg.MaterializeResult(metadata=meta, check_results=checks), plot


def _record(run, meta: dict, variant: str, target: str, result, model) -> None:
    """The training facts of one model: MLflow metrics and the asset's metadata."""
    run.log_curve(f"train_loss_{target}_model", result.loss)
    run.log_metrics(
        {
            f"{target}_tokens_per_second": result.tokens_per_second,
            f"{target}_training_seconds": result.seconds,
            f"{target}_steps": result.steps,
            f"{target}_pairs": result.pairs,
            "n_parameters": sum(p.numel() for p in model.parameters()),
        }
    )
    meta.update(
        {
            f"{target}_pairs": result.pairs,
            f"{target}_steps": result.steps,
            f"{target}_epochs": round(result.epochs, 2),
            f"{target}_tokens_per_second": round(result.tokens_per_second, 1),
            f"{target}_training_seconds": round(result.seconds, 1),
            f"{target}_resumed_from_step": result.resumed_from_step,
            f"{target}_path": dg.MetadataValue.path(str(bart_model_dir(variant, target) / "model")),
        }
    )


def _distinct_check(
    model, codec, seqs: PurchaseSequences, split, config: BartTrainingConfig
) -> dg.AssetCheckResult:
    """The validation model's top-12 lists for distinct validation-week histories."""
    pairs = training_pairs(seqs, split.test_start, target_weeks=1)  # targets in the validation week
    seen, histories = set(), []
    for s, j in pairs:
        h = tuple(seqs.items[s][:j].tolist())
        if h not in seen:
            seen.add(h)
            histories.append(np.asarray(h, np.int64))
    rng = np.random.default_rng(0)
    pick = (
        np.sort(rng.choice(len(histories), min(config.distinct_sources, len(histories)), replace=False))
        if histories
        else []
    )
    stats = distinct_generations(
        BartRecommender(codec.variant.name, model, codec), [histories[i] for i in pick]
    )
    passed = (
        stats["sources"] >= min(200, len(histories))
        and stats["distinct_list_share"] >= config.min_distinct_share
    )
    return dg.AssetCheckResult(
        check_name="generations_are_distinct",
        passed=bool(passed),
        metadata={**stats, "floor": config.min_distinct_share},
    )


bart_models = {v: _bart_model_asset(v) for v in VARIANTS}
bart_model_text_small = bart_models["text_small"]
bart_model_text_large = bart_models["text_large"]
bart_model_image_full = bart_models["image_full"]
bart_model_image_compact = bart_models["image_compact"]
bart_model_semantic_id = bart_models["semantic_id"]
bart_model_semantic_id_text = bart_models["semantic_id_text"]
_ = item_index  # the evaluation reads the index; imported here for the graph's readers
