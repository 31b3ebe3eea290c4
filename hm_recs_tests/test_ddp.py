"""Data-parallel training: Lightning DDP with 2 CPU processes (gloo) sees the same losses as one
process on the same global batch, for the VQGAN and the BART training steps."""

from __future__ import annotations

import dataclasses
import json

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hm_recs.compute import DeviceSpec
from hm_recs.models.vqgan import CONFIGS

pytestmark = pytest.mark.xdist_group("ddp")

STEPS = 3
VQ = dataclasses.replace(
    CONFIGS["small"],
    resolution=32,
    ch=32,
    ch_mult=(1, 2),
    attn_resolutions=(),
    z_channels=32,
    embed_dim=8,
    n_embed=32,
    disc_start=10_000,
    disc_ndf=8,
    dropout=0.0,
)


class Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class RankShard(Sampler):
    """Rank r of w reads items r, r + w, ...: with per-device batch b / w, the ranks' batches together
    are exactly the one-process batch of b (Lightning's own sampler would shuffle)."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        import torch.distributed as dist

        rank, world = (
            (dist.get_rank(), dist.get_world_size())
            if dist.is_available() and dist.is_initialized()
            else (0, 1)
        )
        return iter(range(rank, self.n, world))

    def __len__(self):
        return self.n


def _loader(items, devices: int) -> DataLoader:
    return DataLoader(
        Items(items), batch_size=4 // devices, sampler=RankShard(len(items))
    )  # a global batch of 4


def _fit(module, loader, devices: int, tmp_path):
    kw = DeviceSpec("cpu", devices).lightning_kwargs(find_unused_parameters=True)
    trainer = L.Trainer(
        max_steps=STEPS * (2 if module.automatic_optimization is False else 1),
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        use_distributed_sampler=False,
        **kw,
    )
    trainer.fit(module, loader)


def assert_same_losses(ddp: np.ndarray, single: np.ndarray) -> None:
    """The first loss (before any update) equal up to float rounding; later ones within what
    reduction-order rounding grows to through Adam's per-coordinate normalisation."""
    assert len(ddp) == len(single) == STEPS
    np.testing.assert_allclose(ddp[0], single[0], rtol=1e-5)
    np.testing.assert_allclose(ddp, single, rtol=1e-3)


def _mean_over_ranks(path, key, ranks: int) -> np.ndarray:
    files = [path] + [f"{path}.rank{r}" for r in range(1, ranks)]
    curves = []
    for f in files:
        data = json.loads(open(f).read())
        curves.append(data["history"][key] if "history" in data else data[key])
    return np.mean(np.asarray(curves, dtype=float), axis=0)


def test_vqgan_step_under_ddp_matches_one_process(tmp_path):
    from hm_recs.models.vqgan_training import VQGANModule

    torch.manual_seed(0)
    init = VQGANModule(VQ, 1e-4).model.state_dict()
    images = list(torch.rand(4 * STEPS, 3, 32, 32) * 2 - 1)
    losses = {}
    for devices in (1, 2):
        torch.manual_seed(1)
        hist = tmp_path / f"vq{devices}.json"
        module = VQGANModule(VQ, 1e-4, init, str(hist))
        _fit(module, _loader(images, devices), devices, tmp_path / f"run{devices}")
        losses[devices] = _mean_over_ranks(hist, "rec_loss", devices)
    assert_same_losses(losses[2], losses[1])


def test_bart_step_under_ddp_matches_one_process(tmp_path):
    from hm_recs.models.bart import BartModule, build_model

    texts = [f"Ladieswear, Trousers, Black, solid, item {i}" for i in range(16)]
    tok, _ = build_model(None, "tiny", texts, 0, seed=0)
    init = None
    losses = {}
    for devices in (1, 2):
        _, model = build_model(None, "tiny", [], 0, seed=0, tokenizer=tok)
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            setattr(model.config, name, 0.0)
        model = type(model)(model.config)
        if init is None:
            init = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(init)
        target = tok("Ladieswear, Trousers, Black", return_tensors="pt")["input_ids"][0]
        batches = []
        for i in range(4 * STEPS):
            src = tok(
                " | ".join(texts[i % 16 : i % 16 + 1 + i % 3]),
                max_length=64,
                padding="max_length",
                truncation=True,
                return_tensors="pt",
            )
            batches.append(
                {
                    "input_ids": src["input_ids"][0],
                    "attention_mask": src["attention_mask"][0],
                    "labels": target,
                }
            )
        hist = tmp_path / f"bart{devices}.json"
        module = BartModule(model, 1e-3, 0, str(hist))
        _fit(module, _loader(batches, devices), devices, tmp_path / f"bart_run{devices}")
        losses[devices] = _mean_over_ranks(hist, "loss", devices)
    assert_same_losses(losses[2], losses[1])
