"""VQGAN: the base model, its fine-tuning on the product photos, reconstruction quality, and image tokens."""

import hashlib
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext

from hm_recs.defs.ingest.assets import image_manifest
from hm_recs.defs.metadata import image_metadata, markdown_table, table_metadata
from hm_recs.defs.registry.logged_models import log_vqgan, mlflow_metadata
from hm_recs.defs.resources import ComputeResource, HMDataResource, LakeResource, MLflowResource
from hm_recs.models.vqgan import (
    CONFIGS,
    VQModel,
    count_parameters,
    load_model,
    load_taming_checkpoint,
    save_model,
)
from hm_recs.models.vqgan_training import (
    TrainingSettings,
    held_out,
    reconstruction_grid,
    reconstruction_scores,
    tokenize_images,
    train_vqgan,
)
from hm_recs.paths import models_dir
from hm_recs.plots import line_plot
from hm_recs.profiles import TORCH_STEP
from hm_recs.tables import CODEBOOK, IMAGE_MANIFEST, IMAGE_TOKENS, VQGAN_EVALUATION_TABLE
from hm_recs.training import fingerprint, loss_went_down


def vqgan_dir() -> Path:
    return models_dir() / "vqgan"


class VQGANBaseConfig(dg.Config):
    """Which architecture, and where its starting weights come from."""

    config_name: str = "small"  # small (64x64, 64 tokens) | paper (256x256, 256 tokens) | paper_16384
    pretrained: str | None = None  # path of an official taming checkpoint (vqgan_imagenet_f16_*/last.ckpt)
    trust_pickle: bool = False  # the official checkpoints are pickles: load only files you trust
    seed: int = 0


@dg.asset(group_name="models", kinds={"pytorch"}, deps=[image_manifest])
def vqgan_base_model(config: VQGANBaseConfig) -> dg.MaterializeResult:
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
    path = save_model(model, vqgan_dir() / "base.safetensors", extra=extra)
    return dg.MaterializeResult(
        metadata={
            "config_name": config.config_name,
            "config": dg.MetadataValue.json(cfg.to_dict()),
            "tokens_per_image": cfg.tokens_per_image,
            "token_grid": cfg.token_grid,
            "source": source,
            "parameters_autoencoder": count_parameters(model) - count_parameters(model.loss),
            "path": dg.MetadataValue.path(str(path)),
        }
    )


class VQGANFinetuneConfig(dg.Config):
    max_steps: int = 1000
    epochs: float | None = None  # instead of max_steps: passes over the training images
    batch_size: int = 6  # per device (the paper: 6 per GPU on 4 GPUs)
    base_learning_rate: float = 4.5e-6  # lr = accumulate x devices x batch x this (taming)
    accumulate: int = 1
    checkpoint_every: int = 100
    max_images: int | None = None  # cap on training images (None: every usable photo)
    num_workers: int = 0
    seed: int = 0
    # the PatchGAN discriminator starts at this fraction of the run; None: the config's disc_start
    # (taming's 250,001 steps for the paper's model: the GAN term would never train here)
    disc_start_fraction: float | None = 0.5
    # "auto": k-means codebook init when the base model is not a pretrained checkpoint; or kmeans | none
    codebook_init: str = "auto"
    restart_dead_every: int = 50  # steps; a code unused for that long moves onto an encoder output (0: off)


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
    check_specs=[
        dg.AssetCheckSpec(
            "reconstruction_loss_decreased",
            asset="vqgan_finetuned_model",
            description="The VQGAN's reconstruction loss at the end is below the start",
        )
    ],
)
def vqgan_finetuned_model(
    context: AssetExecutionContext,
    config: VQGANFinetuneConfig,
    hm_data: HMDataResource,
    lake: LakeResource,
    compute: ComputeResource,
    mlflow: MLflowResource,
) -> dg.MaterializeResult:
    """The base VQGAN fine-tuned on the product photos (all but the ~5 % held out for evaluation),
    with taming's GAN training under Lightning 2; checkpoints every ``checkpoint_every`` steps and
    resumes after a kill. One MLflow run; registered as ``hm_recs_vqgan`` (image path -> tokens)."""
    lk = lake.lake()
    with mlflow.run(context, "vqgan_finetuned_model", lk, (IMAGE_MANIFEST,)) as run:
        result, path, plots = _finetune(context, config, hm_data, lk, compute, run)
        for name, png in plots.items():
            run.log_image(png, f"{name}.png")
        version = log_vqgan(run, path)
        result.metadata.update(mlflow_metadata(mlflow, run, version))
    return result


def _finetune(
    context, config: VQGANFinetuneConfig, hm_data: HMDataResource, lk, compute: ComputeResource, run
):
    base, extra = load_model(vqgan_dir() / "base.safetensors")
    ids, paths = _usable_images(lk, hm_data.data_dir)
    train = [p for a, p in zip(ids, paths, strict=True) if not held_out(a)]
    if config.max_images:
        train = train[: config.max_images]
    if not train:
        raise ValueError("no usable product photo to train on: check image_manifest")
    steps = config.max_steps
    if config.epochs:
        steps = max(1, int(np.ceil(len(train) / config.batch_size * config.epochs)))
    init = config.codebook_init
    if init == "auto":
        init = "none" if extra.get("pretrained") else "kmeans"
    settings = TrainingSettings(
        steps,
        config.batch_size,
        config.base_learning_rate,
        config.accumulate,
        config.checkpoint_every,
        config.num_workers,
        config.seed,
        config.disc_start_fraction,
        init,
        config.restart_dead_every,
    )
    spec = compute.spec()
    run_key = fingerprint(
        base.cfg.to_dict(),
        dataclass_dict(settings),
        len(train),
        lk.version(IMAGE_MANIFEST),
        extra.get("source"),
    )
    context.log.info(f"fine-tuning on {len(train)} images for {steps} steps on {spec.describe()}")
    run.log_params(
        {
            **base.cfg.to_dict(),
            **dataclass_dict(settings),
            "training_images": len(train),
            "base_source": extra.get("source"),
            "device": spec.describe(),
        }
    )
    model, result = train_vqgan(
        base.cfg,
        train,
        vqgan_dir() / "finetune",
        settings,
        spec,
        init_state=base.state_dict(),
        fingerprint=run_key,
        perceptual_calibrated=bool(extra.get("perceptual_calibrated")),
    )
    context.log.info(
        f"perceptual (LPIPS) term: {result.perceptual}; discriminator from step {result.disc_start}"
    )
    path = save_model(model, vqgan_dir() / "finetuned.safetensors", extra={**extra, "steps": result.steps})
    rec = result.history.get("rec_loss", [])
    for key, values in result.history.items():
        run.log_curve(key, values)
    plots = {}
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
        "path": dg.MetadataValue.path(str(path)),
    }
    if rec:
        window = max(1, len(rec) // 50)
        smooth = np.convolve(rec, np.ones(window) / window, mode="valid").tolist()
        plots["vqgan_loss"] = line_plot(
            {"reconstruction loss": smooth}, "VQGAN fine-tuning (Figure 4)", "step", "L1 (+ LPIPS)"
        )
        meta.update(image_metadata(plots["vqgan_loss"], "vqgan_loss", "Reconstruction loss"))
        gan = gan_curves(result.history, result.disc_start)
        if gan:
            plots["vqgan_gan_losses"] = gan
            meta.update(
                image_metadata(gan, "vqgan_gan_losses", "Generator and discriminator losses after disc_start")
            )
    grid = reconstruction_grid(model, [p for a, p in zip(ids, paths, strict=True) if held_out(a)] or train)
    if grid:
        plots["vqgan_reconstructions"] = grid
        meta.update(
            image_metadata(
                grid,
                "vqgan_reconstructions",
                "Held-out originals (top) and reconstructions (bottom), Figure 5",
            )
        )
    went_down, head, tail = loss_went_down(rec)
    run.log_metrics(
        {
            "n_parameters": count_parameters(model),
            "training_seconds": result.seconds,
            "steps": result.steps,
            "rec_loss_first_10pct": head,
            "rec_loss_last_10pct": tail,
        }
    )
    result_ = dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(
                check_name="reconstruction_loss_decreased",
                passed=went_down,
                metadata={"first_10pct": head, "last_10pct": tail},
            )
        ],
    )
    return result_, path, plots


def gan_curves(history: dict, disc_start: int) -> bytes | None:
    """The generator's and the discriminator's losses from the step the discriminator started."""
    g, d = history.get("g_loss", []), history.get("disc_loss", [])
    if not g or not d:
        return None
    window = max(1, len(g) // 50)

    def smooth(values):
        return np.convolve(values, np.ones(window) / window, mode="valid").tolist()

    sg, sd = smooth(g), smooth(d)
    steps = [disc_start + window + i for i in range(len(sg))]
    return line_plot(
        {"generator (-D(x_rec))": sg, "discriminator (hinge)": sd},
        "VQGAN GAN losses",
        "step",
        "loss",
        x=steps,
    )


def dataclass_dict(obj) -> dict:
    import dataclasses

    return dataclasses.asdict(obj)


class VQGANEvaluationConfig(dg.Config):
    max_images: int = 500
    psnr_floor: float = 18.0  # the check fails below this PSNR (dB) of the fine-tuned model


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch"},
    op_tags=TORCH_STEP,
    deps=[vqgan_finetuned_model],
    check_specs=[
        dg.AssetCheckSpec(
            "psnr_above_floor",
            asset="vqgan_evaluation",
            description="The fine-tuned VQGAN's held-out PSNR is above psnr_floor",
        )
    ],
)
def vqgan_evaluation(
    config: VQGANEvaluationConfig, hm_data: HMDataResource, lake: LakeResource, compute: ComputeResource
) -> dg.MaterializeResult:
    """PSNR, SSIM and LPIPS of the base and the fine-tuned model on the same held-out photos,
    side by side like the paper's Table 3. LPIPS is reported only when it is calibrated."""
    lk = lake.lake()
    device = compute.spec().torch_device()
    ids, paths = _usable_images(lk, hm_data.data_dir)
    held = [p for a, p in zip(ids, paths, strict=True) if held_out(a)][: config.max_images]
    rows = []
    for name in ("base", "finetuned"):
        model, extra = load_model(vqgan_dir() / f"{name}.safetensors")
        trunk = (
            {
                k.removeprefix("loss.perceptual_loss.net."): v
                for k, v in model.state_dict().items()
                if k.startswith("loss.perceptual_loss.net.")
            }
            if extra.get("perceptual_trunk_loaded")
            else None
        )
        s = reconstruction_scores(model, held, device, trunk_state=trunk)
        rows.append(
            {
                "model": name,
                "images": s.images,
                "PSNR": round(s.psnr, 3),
                "SSIM": round(s.ssim, 4),
                "LPIPS": None if s.lpips is None else round(s.lpips, 5),
                "LPIPS note": s.lpips_note,
            }
        )
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


class ImageTokensConfig(dg.Config):
    batch_size: int = 64
    min_codes_used: int = 16  # the codebook-usage check fails below this many distinct codes


@dg.asset(
    group_name="models",
    kinds={"pytorch", "deltalake"},
    op_tags=TORCH_STEP,
    deps=[vqgan_finetuned_model, image_manifest],
    check_specs=[
        dg.AssetCheckSpec(
            "codebook_usage", asset="image_tokens", description="How many codebook entries the catalogue uses"
        )
    ],
)
def image_tokens(
    config: ImageTokensConfig, hm_data: HMDataResource, lake: LakeResource, compute: ComputeResource
) -> dg.MaterializeResult:
    """Every article's photo as a grid of VQGAN codes (Delta: article_id, status, tokens as a list
    of small ints, model version), plus the codebook embeddings. Articles without a usable photo get
    status ``missing`` / ``corrupt`` and no tokens."""
    lk = lake.lake()
    device = compute.spec().torch_device()
    model, extra = load_model(vqgan_dir() / "finetuned.safetensors")
    manifest = lk.read(IMAGE_MANIFEST, columns=["article_id", "path", "status"])
    ok = pc.equal(manifest.column("status"), "ok").to_numpy(zero_copy_only=False)
    paths = [str(Path(hm_data.data_dir) / p) for p in np.asarray(manifest.column("path").to_pylist())[ok]]
    codes, failed = tokenize_images(model, paths, device, config.batch_size)
    version = hashlib.sha256((vqgan_dir() / "finetuned.safetensors").read_bytes()).hexdigest()[:16]
    all_codes: list = [None] * manifest.num_rows
    status = manifest.column("status").to_pylist()
    for i, c in zip(np.flatnonzero(ok), codes, strict=True):
        if c is None:
            status[i] = "corrupt"
        else:
            all_codes[i] = c.reshape(-1).tolist()
    table = pa.table(
        {
            "article_id": manifest.column("article_id"),
            "status": pa.array(status, pa.string()),
            "tokens": pa.array(all_codes, pa.list_(pa.int16())),
            "token_grid": pa.array([model.cfg.token_grid] * manifest.num_rows, pa.int16()),
            "model_version": pa.array([version] * manifest.num_rows, pa.string()),
        }
    )
    lk.write(IMAGE_TOKENS, table)
    emb = model.quantize.embedding.weight.detach().cpu().numpy()
    lk.write(
        CODEBOOK,
        pa.table(
            {
                "code": pa.array(np.arange(len(emb)), pa.int16()),
                "embedding": pa.array(emb.tolist(), pa.list_(pa.float32())),
                "model_version": pa.array([version] * len(emb)),
            }
        ),
    )
    used = (
        np.unique(np.concatenate([c.reshape(-1) for c in codes if c is not None]))
        if any(c is not None for c in codes)
        else np.empty(0)
    )
    meta = table_metadata(lk, IMAGE_TOKENS, preview_columns=["article_id", "status", "model_version"])
    meta.update(
        {
            "tokens_per_image": model.cfg.tokens_per_image,
            "token_grid": model.cfg.token_grid,
            "codes_used": int(len(used)),
            "codebook_size": model.cfg.n_embed,
            "images_tokenized": int(sum(c is not None for c in codes)),
            "images_unreadable": failed,
            "articles_without_tokens": int(sum(c is None for c in all_codes)),
            "model_version": version,
        }
    )
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(
                check_name="codebook_usage",
                passed=len(used) >= min(config.min_codes_used, model.cfg.n_embed),
                metadata={
                    "codes_used": int(len(used)),
                    "codebook_size": model.cfg.n_embed,
                    "share": len(used) / model.cfg.n_embed,
                },
            )
        ],
    )
