"""VQGAN fine-tuning with Lightning 2, reconstruction metrics, and image tokenization.

Training follows taming-transformers with Lightning 2's manual optimization (Lightning 2 has no
``optimizer_idx``): each step updates the autoencoder (L1 + LPIPS + codebook loss, plus the
adaptively weighted generator loss once ``disc_start`` is reached) and then the discriminator
(hinge loss), both with Adam(betas 0.5, 0.9) at lr = accumulate x devices x batch x base_lr
(taming's scaling; base_lr 4.5e-6 as in the paper). Devices, strategy and precision come from
:class:`hm_recs.compute.DeviceSpec`, so the same code runs on a CPU, a GPU, or several with DDP.
A checkpoint is written every ``checkpoint_every`` steps; a re-run resumes from the last one.

Images come from the image manifest: resized (shorter side) and center-cropped to the config's
resolution (a random crop in training), scaled to [-1, 1]. An image that fails to decode is
skipped and counted, never fatal.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hm_recs.compute import DeviceSpec, TrainingDir, quiet_lightning, rank_file
from hm_recs.models.vqgan import VQGANConfig, VQModel, calibrate_perceptual, psnr


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def load_image(path: str | Path, resolution: int, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Shorter side to ``resolution`` (bicubic), then a center crop (random crop with ``rng``), in [-1, 1]."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        if rng is None:
            left, top = (nw - resolution) // 2, (nh - resolution) // 2
        else:
            left, top = int(rng.integers(0, nw - resolution + 1)), int(rng.integers(0, nh - resolution + 1))
        img = img.crop((left, top, left + resolution, top + resolution))
        arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ProductImages(Dataset):
    """Product photos by path; an unreadable file yields None (dropped and counted by the collate)."""

    def __init__(
        self, paths: Sequence[str | Path], resolution: int, random_crop: bool = False, seed: int = 0
    ):
        self.paths, self.resolution, self.random_crop, self.seed = (
            [str(p) for p in paths],
            resolution,
            random_crop,
            seed,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.seed, i)) if self.random_crop else None
        try:
            return load_image(self.paths[i], self.resolution, rng)
        except Exception:  # corrupt or vanished image: counted by SkipBad, never fatal
            return None


class SkipBad:
    """Collate that drops unreadable images and counts them."""

    def __init__(self):
        self.skipped = 0

    def __call__(self, batch):
        good = [b for b in batch if b is not None]
        self.skipped += len(batch) - len(good)
        return torch.stack(good) if good else torch.empty(0)


def held_out(article_id: str, every: int = 20) -> bool:
    """A fixed ~5 % of articles (by a hash of the id) never used for training: the evaluation set."""
    return zlib.crc32(article_id.encode()) % every == 0


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainingSettings:
    max_steps: int = 1000
    batch_size: int = 6
    base_learning_rate: float = 4.5e-6
    accumulate: int = 1
    checkpoint_every: int = 100
    num_workers: int = 0
    seed: int = 0
    # the discriminator starts at this fraction of the run (taming's configs count in absolute steps:
    # 250,001 for the ImageNet models, longer than any fine-tuning run here, so the GAN term would
    # never train); None keeps the config's disc_start
    disc_start_fraction: float | None = 0.5
    # codebook care for a from-scratch model: "kmeans" initialises the codes from encoder outputs of
    # the first images; dead codes (unused for restart_dead_every steps) move onto encoder outputs
    codebook_init: str = "none"  # none | kmeans
    restart_dead_every: int = 0  # 0: never

    def learning_rate(self, devices: int) -> float:
        """taming's scaling: accumulate x devices x batch x base_lr."""
        return self.accumulate * max(devices, 1) * self.batch_size * self.base_learning_rate

    def disc_start(self, cfg: VQGANConfig) -> int:
        if self.disc_start_fraction is None:
            return cfg.disc_start
        return int(round(self.disc_start_fraction * self.max_steps))


@dataclass
class TrainingResult:
    steps: int
    seconds: float
    skipped_images: int
    resumed_from_step: int
    history: dict[str, list[float]] = field(default_factory=dict)
    disc_start: int = 0  # the step the discriminator started at (history's g_loss / disc_loss begin there)
    perceptual: str = ""  # whether the LPIPS term was used, and why not
    codes_restarted: int = 0


class VQGANModule(L.LightningModule):
    """Taming's two-optimizer GAN step under Lightning 2's manual optimization. A module-level class,
    so that DDP can pickle it into its worker processes; rank 0 writes the loss history to
    ``history_file`` at the end (the parent process of a spawned run reads it from there)."""

    def __init__(
        self,
        cfg: VQGANConfig,
        learning_rate: float,
        init_state: dict | None = None,
        history_file: str | None = None,
        restart_dead_every: int = 0,
        perceptual_calibrated: bool = False,
    ):
        super().__init__()
        self.cfg, self.learning_rate, self.history_file = cfg, learning_rate, history_file
        self.restart_dead_every = restart_dead_every
        self.model = VQModel(cfg)
        if init_state:
            self.model.load_state_dict(init_state, strict=True)
        self.model.loss.perceptual_calibrated = perceptual_calibrated
        self.automatic_optimization = False
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("restarted", torch.zeros((), dtype=torch.long))
        self.used = torch.zeros(cfg.n_embed, dtype=torch.bool)
        self.history: dict[str, list[float]] = {}

    def configure_optimizers(self):
        ae = torch.optim.Adam(
            list(self.model.autoencoder_parameters()), lr=self.learning_rate, betas=(0.5, 0.9)
        )
        disc = torch.optim.Adam(
            self.model.loss.discriminator.parameters(), lr=self.learning_rate, betas=(0.5, 0.9)
        )
        return [ae, disc]

    def training_step(self, batch, batch_idx):
        if batch.numel() == 0:
            return None
        step = int(self.steps)
        opt_ae, opt_disc = self.optimizers()
        z = self.model.quant_conv(self.model.encoder(batch))
        z_q, qloss, codes = self.model.quantize(z)
        xrec = self.model.decode(z_q)
        loss, logs = self.model.loss.generator_loss(qloss, batch, xrec, step, self.model.last_layer())
        opt_ae.zero_grad()
        self.manual_backward(loss)
        opt_ae.step()
        # as in taming, the discriminator steps every batch; before disc_start its loss is 0
        d_loss, d_logs = self.model.loss.discriminator_loss(batch, xrec, step)
        opt_disc.zero_grad()
        self.manual_backward(d_loss)
        opt_disc.step()
        if step >= self.cfg.disc_start:
            logs.update(d_logs)
        self.used = self.used.to(codes.device)
        self.used[codes.flatten()] = True
        logs["codes_used"] = float(self.used.float().mean())
        if self.restart_dead_every and (step + 1) % self.restart_dead_every == 0:
            self._restart_dead(z.detach(), step)
        self.steps += 1
        logs = {k: float(v) for k, v in logs.items()}
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)
        self.log_dict(
            {f"train/{k}": v for k, v in logs.items()}, prog_bar=True, on_step=True, batch_size=len(batch)
        )
        return None

    def _restart_dead(self, z: torch.Tensor, step: int) -> None:
        """Dead codes move onto this batch's encoder outputs (rank 0's choice on every rank)."""
        moved = self.model.quantize.restart_dead(z, self.used, seed=step)
        if self.trainer.world_size > 1:
            torch.distributed.broadcast(self.model.quantize.embedding.weight.data, 0)
        self.restarted += moved
        self.used = torch.zeros_like(self.used)

    def on_train_end(self):
        if self.history_file:
            record = {"history": self.history, "steps": int(self.steps), "restarted": int(self.restarted)}
            Path(rank_file(self.history_file, self.global_rank)).write_text(json.dumps(record))


def _kmeans_codebook(
    module: VQGANModule, image_paths: Sequence[str | Path], resolution: int, seed: int, n_images: int = 128
) -> None:
    """Initialise the codebook by k-means over the encoder outputs of up to ``n_images`` photos."""
    ds = ProductImages(list(image_paths)[:n_images], resolution)
    imgs = [x for x in (ds[i] for i in range(len(ds))) if x is not None]
    if not imgs:
        return
    with torch.no_grad():
        z = torch.cat(
            [
                module.model.quant_conv(module.model.encoder(torch.stack(imgs[i : i + 32])))
                for i in range(0, len(imgs), 32)
            ]
        )
    module.model.quantize.init_from(z, seed=seed)


def train_vqgan(
    cfg: VQGANConfig,
    image_paths: Sequence[str | Path],
    workdir: str | Path,
    settings: TrainingSettings,
    device: DeviceSpec = DeviceSpec("cpu"),
    init_state: dict | None = None,
    fingerprint: str = "",
    progress: bool = True,
    perceptual_calibrated: bool = False,
    on_checkpoint: Callable[[], object] | None = None,
) -> tuple[VQModel, TrainingResult]:
    """Fine-tune (or train) a VQGAN on ``image_paths``; resumes from ``workdir/checkpoints/last.ckpt``
    when it was made for the same ``fingerprint``; ``on_checkpoint``: called after each checkpoint
    (``lightning_trainer``)."""
    from hm_recs.training import lightning_trainer

    quiet_lightning()
    folder = TrainingDir(workdir, fingerprint)
    ckpt_dir, resume, history_file = folder.checkpoints, folder.resume, folder.history

    kw = device.lightning_kwargs(
        find_unused_parameters=True
    )  # the generator step leaves the discriminator unused
    devices = kw["devices"] if isinstance(kw["devices"], int) else len(kw["devices"])
    L.seed_everything(settings.seed, workers=True, verbose=False)
    cfg = dataclasses.replace(cfg, disc_start=settings.disc_start(cfg))
    module = VQGANModule(
        cfg,
        settings.learning_rate(devices),
        init_state,
        str(history_file),
        settings.restart_dead_every,
        perceptual_calibrated,
    )
    perceptual = "off: perceptual_weight is 0"
    if cfg.perceptual_weight > 0:
        perceptual = calibrate_perceptual(module.model)
        if not module.model.loss.uses_perceptual:
            warnings.warn(f"VQGAN training without its LPIPS term: {perceptual}", stacklevel=2)
    if settings.codebook_init == "kmeans" and not resume.exists():
        _kmeans_codebook(module, image_paths, cfg.resolution, settings.seed)
    collate = SkipBad()
    loader = DataLoader(
        ProductImages(image_paths, cfg.resolution, random_crop=True, seed=settings.seed),
        batch_size=settings.batch_size,
        shuffle=True,
        drop_last=len(image_paths) >= settings.batch_size,
        num_workers=settings.num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    trainer = lightning_trainer(
        device,
        ckpt_dir,
        settings.checkpoint_every * 2,  # Lightning counts both optimizers' steps
        settings.max_steps * 2,
        # max_steps ends it; this keeps the bar's epoch count sane
        max(1, int(np.ceil(settings.max_steps * devices / max(1, len(loader))))) + 1,
        workdir,
        progress,
        on_checkpoint,
        accumulate_grad_batches=1,
        deterministic=False,
        **kw,
    )
    resumed_from = 0
    if resume.exists():
        resumed_from = int(torch.load(resume, map_location="cpu", weights_only=True)["global_step"]) // 2
    t0 = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=str(resume) if resume.exists() else None, weights_only=True)
    module.model.eval()
    recorded = (
        json.loads(history_file.read_text())
        if history_file.exists()
        else {"history": module.history, "steps": int(module.steps), "restarted": int(module.restarted)}
    )
    result = TrainingResult(
        steps=int(recorded["steps"]),
        seconds=time.perf_counter() - t0,
        skipped_images=collate.skipped,
        resumed_from_step=resumed_from,
        history=recorded["history"],
        disc_start=cfg.disc_start,
        perceptual=perceptual,
        codes_restarted=int(recorded.get("restarted", 0)),
    )
    return module.model.cpu(), result


# ---------------------------------------------------------------------------------------------
# evaluation and tokenization
# ---------------------------------------------------------------------------------------------
@dataclass
class ReconstructionScores:
    images: int
    psnr: float
    ssim: float
    lpips: float | None
    lpips_note: str
    skipped_images: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def lpips_metric(device, trunk_state: dict | None = None):
    """The ``lpips`` package's VGG LPIPS, or None with the reason when it cannot be calibrated.

    Its linear heads ship with the package; the VGG16 trunk comes from torchvision's download
    cache or, offline, from an official VQGAN checkpoint (which carries it as
    ``loss.perceptual_loss.net.*``). With neither, LPIPS would run on a random trunk: a number
    that means nothing, so none is reported.
    """
    import lpips

    try:
        metric = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=False, verbose=False)
        return metric.to(device).eval(), "calibrated (lpips VGG, torchvision weights)"
    except Exception as exc:  # no network and no cached torchvision VGG16
        reason = f"{type(exc).__name__}"
    if trunk_state:
        metric = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        metric.net.load_state_dict(trunk_state, strict=True)
        return metric.to(device).eval(), "calibrated (lpips VGG heads, VGG16 trunk from the VQGAN checkpoint)"
    return (
        None,
        f"not reported: the VGG16 trunk weights are unavailable offline ({reason}); an LPIPS on a random "
        "trunk is not LPIPS",
    )


@torch.no_grad()
def reconstruction_scores(
    model: VQModel,
    image_paths: Sequence[str | Path],
    device="cpu",
    batch_size: int = 16,
    trunk_state: dict | None = None,
) -> ReconstructionScores:
    from torchmetrics.functional.image import structural_similarity_index_measure

    model = model.to(device).eval()
    metric, note = lpips_metric(device, trunk_state)
    collate = SkipBad()
    loader = DataLoader(
        ProductImages(image_paths, model.cfg.resolution), batch_size=batch_size, collate_fn=collate
    )
    p, s, lp, n = [], [], [], 0
    for batch in loader:
        if batch.numel() == 0:
            continue
        x = batch.to(device)
        xrec = model(x)[0].clamp(-1, 1)
        p.append(psnr(x, xrec).cpu())
        s.append(
            structural_similarity_index_measure(
                (xrec + 1) / 2, (x + 1) / 2, data_range=1.0, reduction="none"
            ).cpu()
        )
        if metric is not None:
            lp.append(metric(x, xrec).flatten().cpu())
        n += len(x)
    mean = lambda xs: float(torch.cat(xs).mean()) if xs else float("nan")  # noqa: E731
    return ReconstructionScores(
        n, mean(p), mean(s), mean(lp) if metric is not None else None, note, collate.skipped
    )


@torch.no_grad()
def tokenize_images(
    model: VQModel,
    image_paths: Sequence[str | Path],
    device="cpu",
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[list[np.ndarray | None], int]:
    """Codes (token_grid x token_grid, int16) per image; None for an image that cannot be read."""
    model = model.to(device).eval()
    out: list[np.ndarray | None] = [None] * len(image_paths)
    ds = ProductImages(image_paths, model.cfg.resolution)
    failed = 0
    bar = tqdm(total=len(ds), desc="tokenize", unit="img", disable=not progress)
    for start in range(0, len(ds), batch_size):
        idx = list(range(start, min(start + batch_size, len(ds))))
        items = [ds[i] for i in idx]
        good = [i for i, x in zip(idx, items, strict=True) if x is not None]
        failed += len(idx) - len(good)
        if good:
            x = torch.stack([items[i - start] for i in good]).to(device)
            codes = model.tokenize(x).cpu().numpy().astype(np.int16)
            for i, c in zip(good, codes, strict=True):
                out[i] = c
        bar.update(len(idx))
    bar.close()
    return out, failed


def reconstruction_grid(model: VQModel, image_paths: Sequence[str | Path], n: int = 8) -> bytes:
    """A PNG: originals (top row) above their reconstructions (bottom row)."""
    import io

    imgs = [
        x
        for x in (
            ProductImages(image_paths[: n * 2], model.cfg.resolution)[i]
            for i in range(min(len(image_paths), n * 2))
        )
        if x is not None
    ][:n]
    if not imgs:
        return b""
    x = torch.stack(imgs)
    with torch.no_grad():
        xrec = model.eval()(x)[0].clamp(-1, 1)
    grid = torch.cat([torch.cat(list(x), dim=2), torch.cat(list(xrec), dim=2)], dim=1)
    arr = ((grid.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    scale = max(1, 96 // model.cfg.resolution)
    img = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the stored models: base -> fine-tuned, through the model store
# ---------------------------------------------------------------------------------------------
def finetune_stored(
    store, train: Sequence[str], settings: TrainingSettings, spec: DeviceSpec, data_version
) -> tuple[VQModel, TrainingResult, dict, TrainingSettings]:
    """The model store's base VQGAN fine-tuned on ``train``: checkpoints and the fine-tuned weights
    go back to the store. ``settings.codebook_init`` ``auto`` is k-means for a from-config base
    and none for a pretrained one. Returns the model, the result, the base's notes and the
    settings as run."""
    from hm_recs.artifacts import VQGAN_BASE, VQGAN_CHECKPOINTS, VQGAN_FINETUNED
    from hm_recs.models.vqgan import load_model, save_model
    from hm_recs.training import fingerprint

    base, extra = load_model(store.pull(VQGAN_BASE, required=True))
    if settings.codebook_init == "auto":
        settings = dataclasses.replace(
            settings, codebook_init="none" if extra.get("pretrained") else "kmeans"
        )
    key = fingerprint(
        base.cfg.to_dict(), dataclasses.asdict(settings), len(train), data_version, extra.get("source")
    )
    model, result = train_vqgan(
        base.cfg,
        list(train),
        store.pull(VQGAN_CHECKPOINTS),  # a killed run's checkpoints, from any worker
        settings,
        spec,
        init_state=base.state_dict(),
        fingerprint=key,
        perceptual_calibrated=bool(extra.get("perceptual_calibrated")),
        on_checkpoint=lambda: store.push(VQGAN_CHECKPOINTS),  # a kill loses at most checkpoint_every steps
    )
    store.push(VQGAN_CHECKPOINTS)
    save_model(model, store.path(VQGAN_FINETUNED), extra={**extra, "steps": result.steps})
    store.push(VQGAN_FINETUNED)
    return model, result, extra, settings


def training_plots(
    model: VQModel, result: TrainingResult, grid_images: Sequence[str]
) -> dict[str, tuple[bytes, str]]:
    """name -> (PNG, title): the reconstruction loss (the paper's Figure 4), the GAN losses after
    the discriminator started, and held-out originals over their reconstructions (Figure 5)."""
    from hm_recs.plots import line_plot
    from hm_recs.training import smoothed

    plots = {}
    rec = result.history.get("rec_loss", [])
    if rec:
        png = line_plot(
            {"reconstruction loss": smoothed(rec, 50)}, "VQGAN fine-tuning (Figure 4)", "step", "L1 (+ LPIPS)"
        )
        plots["vqgan_loss"] = (png, "Reconstruction loss")
    g, d = result.history.get("g_loss", []), result.history.get("disc_loss", [])
    if g and d:
        sg, sd = smoothed(g, 50), smoothed(d, 50)
        offset = len(g) - len(sg)
        steps = [result.disc_start + offset + i for i in range(len(sg))]
        png = line_plot(
            {"generator (-D(x_rec))": sg, "discriminator (hinge)": sd},
            "VQGAN GAN losses",
            "step",
            "loss",
            x=steps,
        )
        plots["vqgan_gan_losses"] = (png, "Generator and discriminator losses after disc_start")
    grid = reconstruction_grid(model, grid_images)
    if grid:
        plots["vqgan_reconstructions"] = (
            grid,
            "Held-out originals (top) and reconstructions (bottom), Figure 5",
        )
    return plots


def compare_reconstructions(models: dict[str, Path], images: Sequence[str], device) -> list[dict]:
    """PSNR, SSIM and LPIPS of each stored model (name -> weights) on the same images (Table 3's
    rows); LPIPS with the checkpoint's own trunk when it carries one."""
    from hm_recs.models.vqgan import load_model

    rows = []
    for name, weights in models.items():
        model, extra = load_model(weights)
        prefix = "loss.perceptual_loss.net."
        trunk = (
            {k.removeprefix(prefix): v for k, v in model.state_dict().items() if k.startswith(prefix)}
            if extra.get("perceptual_trunk_loaded")
            else None
        )
        s = reconstruction_scores(model, images, device, trunk_state=trunk)
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
    return rows


@dataclass
class ImageTokens:
    tokens: object  # pa.Table: article_id, status, tokens, token_grid, model_version
    codebook: object  # pa.Table: code, embedding, model_version
    codes_used: int
    tokenized: int
    unreadable: int
    without_tokens: int


def image_token_tables(
    model: VQModel, manifest, data_dir: str | Path, device, batch_size: int, version: str
) -> ImageTokens:
    """Every manifest row's codes (``status`` ``corrupt`` where a listed photo fails to decode, no
    tokens where there is none) and the codebook embeddings, both stamped with the model version."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ok = pc.equal(manifest.column("status"), "ok").to_numpy(zero_copy_only=False)
    paths = [str(Path(data_dir) / p) for p in np.asarray(manifest.column("path").to_pylist())[ok]]
    codes, failed = tokenize_images(model, paths, device, batch_size)
    all_codes: list = [None] * manifest.num_rows
    status = manifest.column("status").to_pylist()
    for i, c in zip(np.flatnonzero(ok), codes, strict=True):
        if c is None:
            status[i] = "corrupt"
        else:
            all_codes[i] = c.reshape(-1).tolist()
    n = manifest.num_rows
    tokens = pa.table(
        {
            "article_id": manifest.column("article_id"),
            "status": pa.array(status, pa.string()),
            "tokens": pa.array(all_codes, pa.list_(pa.int16())),
            "token_grid": pa.array([model.cfg.token_grid] * n, pa.int16()),
            "model_version": pa.array([version] * n, pa.string()),
        }
    )
    emb = model.quantize.embedding.weight.detach().cpu().numpy()
    codebook = pa.table(
        {
            "code": pa.array(np.arange(len(emb)), pa.int16()),
            "embedding": pa.array(emb.tolist(), pa.list_(pa.float32())),
            "model_version": pa.array([version] * len(emb)),
        }
    )
    found = [c.reshape(-1) for c in codes if c is not None]
    used = len(np.unique(np.concatenate(found))) if found else 0
    return ImageTokens(tokens, codebook, used, len(found), failed, sum(c is None for c in all_codes))
