"""VQGAN: shapes and token counts, the straight-through quantizer, the official key layout, training,
resume, checkpoints and tokenization, on real photos when ../shared is present."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from hm_recs.models.vqgan import (
    CONFIGS,
    VectorQuantizer,
    VQModel,
    load_model,
    load_taming_checkpoint,
    save_model,
)
from hm_recs.models.vqgan_training import (
    ProductImages,
    SkipBad,
    TrainingSettings,
    load_image,
    reconstruction_scores,
    tokenize_images,
    train_vqgan,
)
from hm_recs_tests.conftest import REAL_SAMPLE

# a tiny config with the small config's structure, fast enough for unit tests
TINY = dataclasses.replace(CONFIGS["small"], resolution=32, ch=32, ch_mult=(1, 2), attn_resolutions=(16,), z_channels=32, embed_dim=16, n_embed=64, disc_start=2, disc_ndf=16)


def photo_paths(tiny_dataset, n=24) -> list[Path]:
    """Real product photos when the shared sample exists, generated ones otherwise."""
    real = sorted((REAL_SAMPLE / "images").glob("*/*.jpg"))[:n] if (REAL_SAMPLE / "images").exists() else []
    return real or sorted((tiny_dataset / "images").glob("*/*.jpg"))[:n]


@pytest.mark.parametrize("name,grid,tokens", [("small", 8, 64), ("paper", 16, 256), ("paper_16384", 16, 256)])
def test_token_grid_is_a_property_of_the_config(name, grid, tokens):
    cfg = CONFIGS[name]
    assert (cfg.token_grid, cfg.tokens_per_image) == (grid, tokens)


def test_shapes_and_token_counts():
    cfg = CONFIGS["small"]
    model = VQModel(cfg, with_loss=False)
    x = torch.rand(2, 3, cfg.resolution, cfg.resolution) * 2 - 1
    xrec, qloss, codes = model(x)
    assert xrec.shape == x.shape and codes.shape == (2, 8, 8) and qloss.ndim == 0
    assert codes.min() >= 0 and codes.max() < cfg.n_embed


def test_quantizer_straight_through_gradient_and_loss():
    q = VectorQuantizer(n_embed=4, embed_dim=2, beta=0.25)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    z = torch.tensor([[[[0.9]], [[0.2]]]], requires_grad=True)  # (1, 2, 1, 1): nearest code 1
    z_q, loss, codes = q(z)
    assert codes.item() == 1 and torch.allclose(z_q, torch.tensor([[[[1.0]], [[0.0]]]]))
    # (1 + beta) * mean((e - z)^2) in value
    assert loss.item() == pytest.approx(1.25 * ((0.1**2 + 0.2**2) / 2), rel=1e-5)
    (z_q * torch.tensor([[[[3.0]], [[5.0]]]])).sum().backward()
    assert torch.allclose(z.grad, torch.tensor([[[[3.0]], [[5.0]]]]))  # gradient copied through


def official_like_checkpoint(model: VQModel, path: Path) -> Path:
    """A file in the official layout: a Lightning-1 style pickle with ``state_dict`` and extras."""
    torch.save({"epoch": 3, "global_step": 100, "pytorch-lightning_version": "1.0.8", "state_dict": model.state_dict(), "optimizer_states": []}, path)
    return path


def test_official_key_layout_loads_strictly_and_needs_trust(tmp_path):
    source = VQModel(TINY)
    keys = source.state_dict().keys()
    for expected in ("encoder.down.0.block.0.conv1.weight", "encoder.down.0.downsample.conv.weight", "encoder.mid.attn_1.q.weight",
                     "decoder.up.1.upsample.conv.weight", "decoder.up.0.block.1.norm2.bias", "quantize.embedding.weight",
                     "quant_conv.weight", "post_quant_conv.bias", "loss.discriminator.main.0.weight",
                     "loss.perceptual_loss.net.slice1.0.weight", "loss.perceptual_loss.lin0.model.1.weight",
                     "loss.perceptual_loss.scaling_layer.shift"):
        assert expected in keys, expected
    blocks = {k.split(".")[4] for k in keys if k.startswith("decoder.up.0.block.")}
    assert len(blocks) == TINY.num_res_blocks + 1  # the decoder has one more block per level
    path = official_like_checkpoint(source, tmp_path / "last.ckpt")
    target = VQModel(TINY)
    with pytest.raises(PermissionError, match="trust_pickle"):
        load_taming_checkpoint(target, path)
    report = load_taming_checkpoint(target, path, trust_pickle=True)
    assert report["perceptual_trunk_loaded"] and not report["ignored"]
    for k, v in source.state_dict().items():
        assert torch.equal(v, target.state_dict()[k]), k
    wrong = VQModel(dataclasses.replace(TINY, n_embed=32))
    with pytest.raises(ValueError, match="does not match"):
        load_taming_checkpoint(wrong, path, trust_pickle=True)


def test_paper_architecture_tokenizes_256_pixels_into_16x16():
    model = VQModel(CONFIGS["paper"], with_loss=False)
    assert model.quantize.embedding.weight.shape == (1024, 256)
    assert model.encoder.conv_out.out_channels == 256 and model.decoder.conv_in.in_channels == 256
    x = torch.zeros(1, 3, 256, 256)
    with torch.no_grad():
        assert model.tokenize(x).shape == (1, 16, 16)


def test_own_checkpoint_round_trip_is_safetensors(tmp_path):
    model = VQModel(TINY)
    path = save_model(model, tmp_path / "m.safetensors", extra={"source": "test"})
    again, extra = load_model(path)
    assert extra == {"source": "test"} and again.cfg == TINY
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_model(tmp_path / "bad.safetensors")


def test_images_are_cropped_scaled_and_corrupt_ones_skipped(tiny_dataset, tmp_path):
    paths = photo_paths(tiny_dataset, 3)
    x = load_image(paths[0], 64)
    assert x.shape == (3, 64, 64) and -1.0 <= x.min() and x.max() <= 1.0
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"broken")
    collate = SkipBad()
    ds = ProductImages([paths[0], bad, tmp_path / "gone.jpg", paths[1]], 32)
    batch = collate([ds[i] for i in range(4)])
    assert batch.shape == (2, 3, 32, 32) and collate.skipped == 2


def test_training_lowers_the_loss_and_resumes_from_its_checkpoint(tiny_dataset, tmp_path):
    paths = photo_paths(tiny_dataset, 16)
    settings = TrainingSettings(max_steps=12, batch_size=4, base_learning_rate=2e-4, checkpoint_every=6)
    model, result = train_vqgan(TINY, paths, tmp_path / "run", settings, fingerprint="a", progress=False)
    rec = result.history["rec_loss"]
    assert result.steps == 12 and len(rec) == 12
    assert np.mean(rec[-3:]) < np.mean(rec[:3])
    assert "disc_loss" in result.history  # the discriminator started at step 2
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    # a later run with more steps continues the step count from the checkpoint
    more = dataclasses.replace(settings, max_steps=16)
    _, resumed = train_vqgan(TINY, paths, tmp_path / "run", more, fingerprint="a", progress=False)
    assert resumed.resumed_from_step == 12 and resumed.steps == 16 and len(resumed.history["rec_loss"]) == 4


def test_tokenization_is_deterministic_and_marks_unreadable(tiny_dataset, tmp_path):
    model = VQModel(TINY)
    paths = photo_paths(tiny_dataset, 5) + [tmp_path / "missing.jpg"]
    a, failed = tokenize_images(model, paths, batch_size=4, progress=False)
    b, _ = tokenize_images(model, paths, batch_size=2, progress=False)
    assert failed == 1 and a[-1] is None
    assert all(np.array_equal(x, y) for x, y in zip(a[:-1], b[:-1], strict=True))
    assert a[0].shape == (TINY.token_grid, TINY.token_grid) and a[0].dtype == np.int16


def test_reconstruction_scores_and_honest_lpips(tiny_dataset):
    model = VQModel(TINY)
    s = reconstruction_scores(model, photo_paths(tiny_dataset, 6), batch_size=3)
    assert s.images == 6 and np.isfinite(s.psnr) and -1 <= s.ssim <= 1
    if s.lpips is None:  # offline: no VGG16 trunk, so no number, and the note says why
        assert "not reported" in s.lpips_note
