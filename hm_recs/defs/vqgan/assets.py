"""VQGAN: the base model, its fine-tuning on the product photos, reconstruction quality, and image tokens."""

import dataclasses
import hashlib
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext

from hm_recs.artifacts import VQGAN_BASE, VQGAN_FINETUNED
from hm_recs.defs.ingest.assets import image_manifest
from hm_recs.defs.metadata import checks, image_metadata, mlflow_metadata, table_metadata
from hm_recs.defs.resources import (
    ComputeResource,
    HMDataResource,
    LakeResource,
    MLflowResource,
    ModelStoreResource,
)
from hm_recs.defs.vqgan.config import (
    ImageTokensConfig,
    VQGANBaseConfig,
    VQGANEvaluationConfig,
    VQGANFinetuneConfig,
)
from hm_recs.models.vqgan import (
    CONFIGS,
    VQModel,
    count_parameters,
    load_model,
    load_taming_checkpoint,
    save_model,
)
from hm_recs.models.vqgan_training import (
    compare_reconstructions,
    finetune_stored,
    held_out,
    image_token_tables,
    training_plots,
)
from hm_recs.profiles import TORCH_STEP
from hm_recs.registry.logged import log_vqgan
from hm_recs.reports import markdown_table
from hm_recs.tables import CODEBOOK, IMAGE_MANIFEST, IMAGE_TOKENS, VQGAN_EVALUATION_TABLE
from hm_recs.training import loss_went_down


@dg.asset(group_name="models", kinds={"pytorch"}, deps=[image_manifest])
def vqgan_base_model(config: VQGANBaseConfig, models: ModelStoreResource) -> dg.MaterializeResult:
    """The starting point of fine-tuning: an official ImageNet checkpoint when ``pretrained`` names
    one (the paper's choice), else the architecture initialised from its config (offline default)."""
    import torch

    if config.config_name not in CONFIGS:
        raise ValueError(f"unknown VQGAN config {config.config_name!r}: one of {sorted(CONFIGS)}")
    cfg = CONFIGS[config.config_name]
    torch.manual_seed(config.seed)
    model = VQModel(cfg)
    source, loaded = "initialised from config (no pretrained weights)", {}
    if config.pretrained:
        loaded = load_taming_checkpoint(model, config.pretrained, trust_pickle=config.trust_pickle)
        source = f"official checkpoint {config.pretrained}"
    extra = {
        "source": source,
        "pretrained": bool(config.pretrained),
        "perceptual_trunk_loaded": bool(loaded.get("perceptual_trunk_loaded")),
        "perceptual_calibrated": bool(model.loss.perceptual_calibrated),
    }
    store = models.store()
    save_model(model, store.path(VQGAN_BASE), extra=extra)
    return dg.MaterializeResult(
        metadata={
            "config_name": config.config_name,
            "config": dg.MetadataValue.json(cfg.to_dict()),
            "tokens_per_image": cfg.tokens_per_image,
            "token_grid": cfg.token_grid,
            "source": source,
            "parameters_autoencoder": count_parameters(model) - count_parameters(model.loss),
            "path": dg.MetadataValue.path(store.push(VQGAN_BASE)),
        }
    )


def _usable_images(lake, data_dir: str):
    manifest = lake.read(IMAGE_MANIFEST).filter(pc.equal(pc.field("status"), "ok"))
    ids = manifest.column("article_id").to_pylist()
    paths = [str(Path(data_dir) / p) for p in manifest.column("path").to_pylist()]
    return ids, paths


@dg.asset(
    group_name="models",
    kinds={"pytorch", "mlflow"},
    op_tags=TORCH_STEP,
    deps=[vqgan_base_model],
    check_specs=checks(
        "vqgan_finetuned_model",
        reconstruction_loss_decreased="The VQGAN's reconstruction loss at the end is below the start",
    ),
)
def vqgan_finetuned_model(
    context: AssetExecutionContext,
    config: VQGANFinetuneConfig,
    hm_data: HMDataResource,
    lake: LakeResource,
    compute: ComputeResource,
    mlflow: MLflowResource,
    models: ModelStoreResource,
) -> dg.MaterializeResult:
    """The base VQGAN fine-tuned on the product photos (all but the ~5 % held out for evaluation),
    with taming's GAN training under Lightning 2; checkpoints every ``checkpoint_every`` steps and
    resumes after a kill. One MLflow run; registered as ``hm_recs_vqgan`` (image path -> tokens)."""
    lk = lake.open()
    with mlflow.run(context, "vqgan_finetuned_model", lk, (IMAGE_MANIFEST,)) as run:
        result, weights, plots = _finetune(context, config, hm_data, lk, compute, run, models.store())
        for name, png in plots.items():
            run.log_image(png, f"{name}.png")
        version = log_vqgan(run, weights)
        result.metadata.update(mlflow_metadata(mlflow, run, version))
    return result


def _finetune(
    context, config: VQGANFinetuneConfig, hm_data: HMDataResource, lk, compute: ComputeResource, run, store
):
    ids, paths = _usable_images(lk, hm_data.data_dir)
    train = [p for a, p in zip(ids, paths, strict=True) if not held_out(a)]
    if config.max_images:
        train = train[: config.max_images]
    if not train:
        raise ValueError("no usable product photo to train on: check image_manifest")
    spec = compute.spec()
    context.log.info(f"fine-tuning on {len(train)} images on {spec.describe()}")
    model, result, extra, settings = finetune_stored(
        store, train, config.settings(len(train)), spec, lk.version(IMAGE_MANIFEST)
    )
    context.log.info(
        f"perceptual (LPIPS) term: {result.perceptual}; discriminator from step {result.disc_start}"
    )
    run.log_params(
        {
            **model.cfg.to_dict(),
            **dataclasses.asdict(settings),
            "training_images": len(train),
            "base_source": extra.get("source"),
            "device": spec.describe(),
        }
    )
    for key, values in result.history.items():
        run.log_curve(key, values)
    meta = {
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "training_images": len(train),
        "skipped_images": result.skipped_images,
        "seconds": round(result.seconds, 1),
        "learning_rate": settings.learning_rate(spec.num_devices),
        "perceptual_term": result.perceptual,
        "disc_start": result.disc_start,
        "codes_used": (result.history.get("codes_used") or [0.0])[-1],
        "codes_restarted": result.codes_restarted,
        "device": spec.describe(),
        "path": dg.MetadataValue.path(store.uri(VQGAN_FINETUNED)),
    }
    held = [p for a, p in zip(ids, paths, strict=True) if held_out(a)] or train
    plots = training_plots(model, result, held)
    for name, (png, title) in plots.items():
        meta.update(image_metadata(png, name, title))
    went_down, head, tail = loss_went_down(result.history.get("rec_loss", []))
    run.log_metrics(
        {
            "n_parameters": count_parameters(model),
            "training_seconds": result.seconds,
            "steps": result.steps,
            "rec_loss_first_10pct": head,
            "rec_loss_last_10pct": tail,
        }
    )
    check = dg.AssetCheckResult(
        check_name="reconstruction_loss_decreased",
        passed=went_down,
        metadata={"first_10pct": head, "last_10pct": tail},
    )
    weights = store.path(VQGAN_FINETUNED)
    return (
        dg.MaterializeResult(metadata=meta, check_results=[check]),
        weights,
        {k: v[0] for k, v in plots.items()},
    )


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch"},
    op_tags=TORCH_STEP,
    deps=[vqgan_finetuned_model],
    check_specs=checks(
        "vqgan_evaluation", psnr_above_floor="The fine-tuned VQGAN's held-out PSNR is above psnr_floor"
    ),
)
def vqgan_evaluation(
    config: VQGANEvaluationConfig,
    hm_data: HMDataResource,
    lake: LakeResource,
    compute: ComputeResource,
    models: ModelStoreResource,
) -> dg.MaterializeResult:
    """PSNR, SSIM and LPIPS of the base and the fine-tuned model on the same held-out photos,
    side by side like the paper's Table 3. LPIPS is reported only when it is calibrated."""
    lk = lake.open()
    device = compute.spec().torch_device()
    ids, paths = _usable_images(lk, hm_data.data_dir)
    held = [p for a, p in zip(ids, paths, strict=True) if held_out(a)][: config.max_images]
    store = models.store()
    weights = {
        n: store.pull(k, required=True) for n, k in (("base", VQGAN_BASE), ("finetuned", VQGAN_FINETUNED))
    }
    rows = compare_reconstructions(weights, held, device)
    table = pa.Table.from_pylist(rows)
    lk.write(VQGAN_EVALUATION_TABLE, table)
    fine = rows[1]
    md = (
        markdown_table(table)
        + "\n\nThe paper (Table 3): PSNR 26.48 -> 27.35, SSIM 0.8016 -> 0.8220, LPIPS 0.00055 -> 0.00033."
    )
    return dg.MaterializeResult(
        metadata={
            "table3": dg.MetadataValue.md(md),
            **table_metadata(lk, VQGAN_EVALUATION_TABLE, preview_rows=0),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="psnr_above_floor",
                passed=fine["PSNR"] >= config.psnr_floor,
                metadata={"psnr": fine["PSNR"], "floor": config.psnr_floor},
            )
        ],
    )


@dg.asset(
    group_name="models",
    kinds={"pytorch", "deltalake"},
    op_tags=TORCH_STEP,
    deps=[vqgan_finetuned_model, image_manifest],
    check_specs=checks("image_tokens", codebook_usage="How many codebook entries the catalogue uses"),
)
def image_tokens(
    config: ImageTokensConfig,
    hm_data: HMDataResource,
    lake: LakeResource,
    compute: ComputeResource,
    models: ModelStoreResource,
) -> dg.MaterializeResult:
    """Every article's photo as a grid of VQGAN codes (Delta: article_id, status, tokens as a list
    of small ints, model version), plus the codebook embeddings. Articles without a usable photo get
    status ``missing`` / ``corrupt`` and no tokens."""
    lk = lake.open()
    device = compute.spec().torch_device()
    weights = models.store().pull(VQGAN_FINETUNED, required=True)
    model, _ = load_model(weights)
    manifest = lk.read(IMAGE_MANIFEST, columns=["article_id", "path", "status"])
    version = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    out = image_token_tables(model, manifest, hm_data.data_dir, device, config.batch_size, version)
    lk.write(IMAGE_TOKENS, out.tokens)
    lk.write(CODEBOOK, out.codebook)
    meta = table_metadata(lk, IMAGE_TOKENS, preview_columns=["article_id", "status", "model_version"])
    meta.update(
        {
            "tokens_per_image": model.cfg.tokens_per_image,
            "token_grid": model.cfg.token_grid,
            "codes_used": out.codes_used,
            "codebook_size": model.cfg.n_embed,
            "images_tokenized": out.tokenized,
            "images_unreadable": out.unreadable,
            "articles_without_tokens": out.without_tokens,
            "model_version": version,
        }
    )
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(
                check_name="codebook_usage",
                passed=out.codes_used >= min(config.min_codes_used, model.cfg.n_embed),
                metadata={
                    "codes_used": out.codes_used,
                    "codebook_size": model.cfg.n_embed,
                    "share": out.codes_used / model.cfg.n_embed,
                },
            )
        ],
    )
