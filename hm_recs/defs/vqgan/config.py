"""The launchpad settings of the VQGAN assets."""

import dagster as dg
import numpy as np

from hm_recs.models.vqgan_training import TrainingSettings


class VQGANBaseConfig(dg.Config):
    """Which architecture, and where its starting weights come from."""

    config_name: str = "small"  # small (64x64, 64 tokens) | paper (256x256, 256 tokens) | paper_16384
    pretrained: str | None = None  # path of an official taming checkpoint (vqgan_imagenet_f16_*/last.ckpt)
    trust_pickle: bool = False  # the official checkpoints are pickles: load only files you trust
    seed: int = 0


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

    def settings(self, n_train: int) -> TrainingSettings:
        steps = self.max_steps
        if self.epochs:
            steps = max(1, int(np.ceil(n_train / self.batch_size * self.epochs)))
        return TrainingSettings(
            steps,
            self.batch_size,
            self.base_learning_rate,
            self.accumulate,
            self.checkpoint_every,
            self.num_workers,
            self.seed,
            self.disc_start_fraction,
            self.codebook_init,
            self.restart_dead_every,
        )


class VQGANEvaluationConfig(dg.Config):
    max_images: int = 500
    psnr_floor: float = 18.0  # the check fails below this PSNR (dB) of the fine-tuned model


class ImageTokensConfig(dg.Config):
    batch_size: int = 64
    min_codes_used: int = 16  # the codebook-usage check fails below this many distinct codes
