"""BART: tokenizer, purchase sequences, one model per variant, and its evaluation."""

import dagster as dg
import pyarrow as pa
from dagster import AssetExecutionContext

from hm_recs.defs.bart.config import BartTrainingConfig
from hm_recs.defs.bart.items import item_index, semantic_ids
from hm_recs.defs.evaluation.assets import evaluation_events
from hm_recs.defs.ingest.assets import article_features
from hm_recs.defs.metadata import LOSS_DECREASED, checks, image_metadata, mlflow_metadata, table_metadata
from hm_recs.defs.resources import (
    BartResource,
    ComputeResource,
    EvaluationProtocolResource,
    LakeResource,
    LanceDBResource,
    MLflowResource,
    ModelStoreResource,
)
from hm_recs.defs.sessions.assets import sessions, time_split
from hm_recs.defs.vqgan.assets import image_tokens
from hm_recs.models.bart import (
    VARIANTS,
    PurchaseSequences,
    SequenceCodec,
    build_model,
    fitted_models,
    new_model,
    purchase_sequences,
    settings_dict,
    training_pairs,
)
from hm_recs.models.bart_fitting import (
    distinct_histories,
    fit_variant,
    load_tokenizer,
    save_tokenizer,
    sequences_from_table,
    sequences_table,
    source_budgets,
)
from hm_recs.plots import line_plot
from hm_recs.profiles import TORCH_STEP
from hm_recs.registry.logged import log_bart
from hm_recs.reports import markdown_table
from hm_recs.retrieval.bart_evaluation import grounding_on_validation, save_grounding, served_settings
from hm_recs.retrieval.bart_recommender import BartRecommender, distinct_generations
from hm_recs.retrieval.catalogue import CatalogueTables
from hm_recs.retrieval.semantic_ids import catalogue_vocabulary
from hm_recs.sessions.purchases import load_purchases
from hm_recs.sessions.split import load_time_split
from hm_recs.tables import SEQUENCES
from hm_recs.training import loss_went_down, smoothed

TARGETS = ("validation", "test")


def load_catalogue(lk):
    """The catalogue every BART asset reads (texts, image codes, codebook, semantic IDs)."""
    return CatalogueTables.from_lake(lk).catalogue()


@dg.asset(group_name="models", kinds={"pytorch"}, deps=[article_features, image_tokens, semantic_ids])
def bart_tokenizer(
    bart: BartResource, lake: LakeResource, models: ModelStoreResource
) -> dg.MaterializeResult:
    """The tokenizer every variant shares: the pretrained one, or a byte-level BPE trained on the
    catalogue's article texts; plus ``<item>``, one token per VQGAN code (``<img_0>`` ...) and the
    semantic-ID tokens (``<sid0_0>`` ...)."""
    lk = lake.open()
    catalogue = load_catalogue(lk)
    sids = catalogue_vocabulary(catalogue)
    tokenizer, _ = build_model(
        bart.pretrained, bart.size, catalogue.texts, catalogue.n_codes, bart.seed, sid_vocabulary=sids
    )
    notes = {"pretrained": bart.pretrained, "size": bart.size, "n_codes": catalogue.n_codes}
    uri = save_tokenizer(models.store(), tokenizer, {**notes, "semantic_id_tokens": len(sids)})
    return dg.MaterializeResult(
        metadata={
            "vocabulary": len(tokenizer),
            "image_tokens": catalogue.n_codes,
            "semantic_id_tokens": len(sids),
            "source": bart.pretrained
            or f"trained on {len(catalogue.texts)} article texts (from-config size {bart.size})",
            "example": dg.MetadataValue.text(" | ".join(tokenizer.tokenize(catalogue.texts[0]))),
            "path": dg.MetadataValue.path(uri),
        }
    )


@dg.asset(group_name="models", kinds={"deltalake"}, deps=[bart_tokenizer, sessions, time_split])
def bart_training_sequences(
    bart: BartResource, lake: LakeResource, models: ModelStoreResource
) -> dg.MaterializeResult:
    """Every customer's purchases up to the end of the validation week, in order (consecutive repeats
    collapsed): the training pairs of both target weeks come from it. Metadata: how many history
    articles each variant's source budget fits, and example sources."""
    lk = lake.open()
    split = load_time_split(lk)
    seqs = purchase_sequences(load_purchases(lk), end=split.validation_end)
    lk.write(SEQUENCES, sequences_table(seqs))
    catalogue, tokenizer = load_catalogue(lk), load_tokenizer(models.store())
    codecs = {
        v: SequenceCodec(catalogue, VARIANTS[v], tokenizer, bart.budget(v)) for v in bart.variant_names()
    }
    summary, examples = source_budgets(seqs, codecs, split.test_start)
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
    return sequences_from_table(lk.read(SEQUENCES))


def _bart_model_asset(variant: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"bart_model_{variant}",
        group_name="models",
        kinds={"pytorch", "mlflow"},
        op_tags=TORCH_STEP,
        deps=[bart_training_sequences, item_index, evaluation_events],
        check_specs=checks(
            f"bart_model_{variant}",
            training_loss_decreased=LOSS_DECREASED,
            generations_are_distinct=(
                "Different validation histories get different top-12 lists "
                "(a model that ignores its input gives one)"
            ),
        ),
        description=f"BART trained on the `{variant}` sequences ({VARIANTS[variant]}): "
        "one model on the data before the "
        "validation week, with `refit_for_test` one before the test week, with `refit_for_serving` one on "
        "every week; the newest registered as `hm_recs_bart_" + variant + "` with its grounding (text "
        "variants: constrained or nearest, the better on validation events).",
    )
    def _model(
        context: AssetExecutionContext,
        config: BartTrainingConfig,
        bart: BartResource,
        lake: LakeResource,
        compute: ComputeResource,
        mlflow: MLflowResource,
        models: ModelStoreResource,
        lancedb: LanceDBResource,
        evaluation_protocol: EvaluationProtocolResource,
    ) -> dg.MaterializeResult:
        lk = lake.open()
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
            store = models.store()
            result, plot = _train_variant(context, variant, config, bart, lk, compute, run, store)
            if plot:
                run.log_image(plot, f"bart_{variant}_loss.png")
            settings = config.grounding_settings(bart.beams, bart.generations)
            decision = grounding_on_validation(
                lk,
                store,
                variant,
                settings,
                evaluation_protocol.protocol(),
                lancedb.uri,
                lancedb.storage_options(),
                compute.spec().torch_device(),
            )
            save_grounding(store, variant, decision)
            newest = fitted_models(store, variant)[-1]  # on every week when refit for serving
            mv = log_bart(run, lk, variant, served_settings(variant, decision, settings), newest, lancedb.uri)
            # the evaluation logs its metrics on this run: its id travels as metadata
            result.metadata.update(mlflow_metadata(mlflow, run))
            result.metadata["grounding"] = dg.MetadataValue.json(decision)
            result.metadata["registered_model"] = f"{mv.name} v{mv.version}"
        return result

    return _model


def _train_variant(
    context,
    variant: str,
    config: BartTrainingConfig,
    bart: BartResource,
    lk,
    compute: ComputeResource,
    run,
    store,
):
    tokenizer, seqs, split, spec = (
        load_tokenizer(store),
        read_sequences(lk),
        load_time_split(lk),
        compute.spec(),
    )
    settings = config.settings(variant)
    budget = config.max_source_tokens or bart.budget(variant)
    codec = SequenceCodec(load_catalogue(lk), VARIANTS[variant], tokenizer, budget)
    meta, curves, checks = {"device": spec.describe(), "max_source_tokens": budget}, {}, []
    identity = [variant, settings_dict(settings), budget, bart.pretrained, bart.size, config.dropout]
    fitted = fit_variant(
        variant,
        lambda: new_model(bart.pretrained, bart.size, tokenizer, settings.seed, config.dropout),
        codec,
        seqs,
        split,
        settings,
        config.plan(),
        spec,
        store,
        [*identity, lk.version(SEQUENCES)],
        log=context.log.info,
        model_notes={"pretrained": bart.pretrained, "size": bart.size, "dropout": config.dropout},
    )
    for f in fitted:
        _record(run, meta, f)
        curves[f.target] = f.result.loss
        if f.target == "validation":
            histories = distinct_histories(seqs, split, config.distinct_sources)
            stats = distinct_generations(BartRecommender(variant, f.model, codec), histories)
            floor = min(200, len(histories))
            passed = stats["sources"] >= floor and stats["distinct_list_share"] >= config.min_distinct_share
            checks.append(
                dg.AssetCheckResult(
                    check_name="generations_are_distinct",
                    passed=bool(passed),
                    metadata={**stats, "floor": config.min_distinct_share},
                )
            )
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


def _record(run, meta: dict, fitted) -> None:
    """The training facts of one model: MLflow metrics and the asset's metadata."""
    target, result = fitted.target, fitted.result
    run.log_curve(f"train_loss_{target}_model", result.loss)
    run.log_metrics(
        {
            f"{target}_tokens_per_second": result.tokens_per_second,
            f"{target}_training_seconds": result.seconds,
            f"{target}_steps": result.steps,
            f"{target}_pairs": result.pairs,
            "n_parameters": sum(p.numel() for p in fitted.model.parameters()),
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
            f"{target}_path": dg.MetadataValue.path(fitted.uri),
        }
    )


bart_models = {v: _bart_model_asset(v) for v in VARIANTS}
bart_model_text_small = bart_models["text_small"]
bart_model_text_large = bart_models["text_large"]
bart_model_image_full = bart_models["image_full"]
bart_model_image_compact = bart_models["image_compact"]
bart_model_semantic_id = bart_models["semantic_id"]
bart_model_semantic_id_text = bart_models["semantic_id_text"]
