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
    VQLPIPSWithDiscriminator,
    VQModel,
    load_model,
    load_taming_checkpoint,
    psnr,
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
TINY = dataclasses.replace(
    CONFIGS["small"],
    resolution=32,
    ch=32,
    ch_mult=(1, 2),
    attn_resolutions=(16,),
    z_channels=32,
    embed_dim=16,
    n_embed=64,
    disc_start=2,
    disc_ndf=16,
)


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
    torch.save(
        {
            "epoch": 3,
            "global_step": 100,
            "pytorch-lightning_version": "1.0.8",
            "state_dict": model.state_dict(),
            "optimizer_states": [],
        },
        path,
    )
    return path


def test_official_key_layout_loads_strictly_and_needs_trust(tmp_path):
    source = VQModel(TINY)
    keys = source.state_dict().keys()
    for expected in (
        "encoder.down.0.block.0.conv1.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.mid.attn_1.q.weight",
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.0.block.1.norm2.bias",
        "quantize.embedding.weight",
        "quant_conv.weight",
        "post_quant_conv.bias",
        "loss.discriminator.main.0.weight",
        "loss.perceptual_loss.net.slice1.0.weight",
        "loss.perceptual_loss.lin0.model.1.weight",
        "loss.perceptual_loss.scaling_layer.shift",
    ):
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


def taming_f16_keys() -> set[str]:
    """The state_dict keys of taming-transformers' vqgan_imagenet_f16_1024, written out from its
    published config (ch 128, ch_mult [1,1,2,2,4], num_res_blocks 2, attn_resolutions [16],
    resolution 256, z_channels 256, embed_dim 256, n_embed 1024; VQLPIPSWithDiscriminator with a
    3-layer PatchGAN and LPIPS over VGG16) and taming's module code, independently of hm_recs."""
    ch, mult, n_blocks, res = 128, [1, 1, 2, 2, 4], 2, 256
    wb = ("weight", "bias")
    keys: set[str] = set()

    def add(prefix, names=wb):
        keys.update(f"{prefix}.{n}" for n in names)

    def resblock(prefix, c_in, c_out):
        for part in ("norm1", "conv1", "norm2", "conv2"):
            add(f"{prefix}.{part}")
        if c_in != c_out:
            add(f"{prefix}.nin_shortcut")

    def attn(prefix):
        for part in ("norm", "q", "k", "v", "proj_out"):
            add(f"{prefix}.{part}")

    add("encoder.conv_in")
    cur, c_in = res, ch
    for i, m in enumerate(mult):
        for j in range(n_blocks):
            resblock(f"encoder.down.{i}.block.{j}", c_in, ch * m)
            c_in = ch * m
            if cur == 16:
                attn(f"encoder.down.{i}.attn.{j}")
        if i != len(mult) - 1:
            add(f"encoder.down.{i}.downsample.conv")
            cur //= 2
    for side in ("encoder", "decoder"):
        resblock(f"{side}.mid.block_1", 512, 512)
        attn(f"{side}.mid.attn_1")
        resblock(f"{side}.mid.block_2", 512, 512)
        add(f"{side}.norm_out")
        add(f"{side}.conv_out")
    add("decoder.conv_in")
    c_in, cur = ch * mult[-1], res // 16
    for i in reversed(range(len(mult))):
        for j in range(n_blocks + 1):
            resblock(f"decoder.up.{i}.block.{j}", c_in, ch * mult[i])
            c_in = ch * mult[i]
            if cur == 16:
                attn(f"decoder.up.{i}.attn.{j}")
        if i != 0:
            add(f"decoder.up.{i}.upsample.conv")
            cur *= 2
    keys.add("quantize.embedding.weight")
    add("quant_conv")
    add("post_quant_conv")
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    add("loss.discriminator.main.0")
    for conv, norm in ((2, 3), (5, 6), (8, 9)):
        keys.add(f"loss.discriminator.main.{conv}.weight")  # no bias before a BatchNorm
        add(f"loss.discriminator.main.{norm}", bn)
    add("loss.discriminator.main.11")
    add("loss.perceptual_loss.scaling_layer", ("shift", "scale"))
    for n, convs in enumerate(([0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]), start=1):
        for c in convs:
            add(f"loss.perceptual_loss.net.slice{n}.{c}")
    for i in range(5):
        keys.add(f"loss.perceptual_loss.lin{i}.model.1.weight")
    return keys


def test_paper_model_has_exactly_the_official_f16_keys():
    with torch.device("meta"):
        model = VQModel(CONFIGS["paper"])
    state = model.state_dict()
    expected = taming_f16_keys()
    assert set(state) == expected, (sorted(set(state) - expected)[:5], sorted(expected - set(state))[:5])
    assert state["quantize.embedding.weight"].shape == (1024, 256)
    assert state["encoder.down.4.attn.1.q.weight"].shape == (512, 512, 1, 1)


def test_psnr_of_a_known_pair():
    x = -torch.ones(2, 3, 8, 8)
    y = x.clone()
    y[0] += 0.2  # 0.1 on the [0, 1] scale everywhere: MSE 0.01 -> 20 dB
    y[1, :, :4] += 1.0  # 0.5 on half the pixels: MSE 0.125 -> 10 log10(8) = 9.03 dB
    got = psnr(x, y)
    assert got[0].item() == pytest.approx(20.0, abs=1e-4)
    assert got[1].item() == pytest.approx(10 * np.log10(8), abs=1e-4)


def test_perceptual_term_only_with_calibrated_weights(tmp_path):
    cfg = dataclasses.replace(TINY, perceptual_weight=1.0)
    loss = VQLPIPSWithDiscriminator(cfg)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert not loss.uses_perceptual
    assert loss.reconstruction(x, y).item() == pytest.approx((x - y).abs().mean().item(), rel=1e-6)
    loss.perceptual_calibrated = True
    assert loss.reconstruction(x, y).item() != pytest.approx((x - y).abs().mean().item(), rel=1e-6)
    # a checkpoint that carries the loss module's LPIPS weights calibrates it
    path = official_like_checkpoint(VQModel(cfg), tmp_path / "last.ckpt")
    target = VQModel(cfg)
    load_taming_checkpoint(target, path, trust_pickle=True)
    assert target.loss.perceptual_calibrated
    # one without them does not
    bare = VQModel(cfg)
    state = {k: v for k, v in bare.state_dict().items() if not k.startswith("loss.perceptual_loss.")}
    torch.save({"state_dict": state}, tmp_path / "bare.ckpt")
    load_taming_checkpoint(bare, tmp_path / "bare.ckpt", trust_pickle=True)
    assert not bare.loss.perceptual_calibrated


def test_training_from_config_says_the_perceptual_term_is_off_and_starts_the_gan_by_fraction(
    tiny_dataset, tmp_path
):
    cfg = dataclasses.replace(TINY, perceptual_weight=1.0, disc_start=250_001)
    settings = TrainingSettings(
        max_steps=8, batch_size=4, base_learning_rate=2e-4, checkpoint_every=8, disc_start_fraction=0.5
    )
    assert settings.disc_start(cfg) == 4
    assert dataclasses.replace(settings, disc_start_fraction=None).disc_start(cfg) == 250_001
    with pytest.warns(UserWarning, match="LPIPS"):
        _, result = train_vqgan(cfg, photo_paths(tiny_dataset, 8), tmp_path / "run", settings, progress=False)
    assert result.perceptual.startswith("off") or result.perceptual.startswith("calibrated")
    assert result.disc_start == 4
    assert len(result.history["g_loss"]) == 4 and len(result.history["disc_loss"]) == 4


def test_kmeans_init_and_dead_code_restarts_use_the_codebook():
    torch.manual_seed(0)
    q = VectorQuantizer(n_embed=8, embed_dim=2, beta=0.25)
    centres = torch.tensor([[5.0 * i, -3.0 * i] for i in range(8)])
    z = (centres.repeat(50, 1) + 0.01 * torch.randn(400, 2)).T.reshape(1, 2, 20, 20)
    assert len(torch.unique(q.codes(z))) <= 2  # the uniform init near zero: one or two codes take everything
    q.init_from(z)
    assert len(torch.unique(q.codes(z))) == 8
    dead = torch.zeros(8, dtype=torch.bool)
    dead[:3] = True  # codes 3..7 unused
    with torch.no_grad():
        q.embedding.weight[3:] = 1000.0
    assert q.restart_dead(z, dead) == 5
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    assert torch.cdist(q.embedding.weight[3:], flat).min(1).values.max() < 1e-6  # each on an encoder output


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
    settings = TrainingSettings(
        max_steps=12, batch_size=4, base_learning_rate=2e-4, checkpoint_every=6, disc_start_fraction=None
    )
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
