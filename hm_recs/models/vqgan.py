"""VQGAN (Esser et al., "Taming Transformers"), with taming-transformers' module and parameter names.

An image goes through the convolutional ``encoder``, a 1x1 ``quant_conv``, the vector quantizer
(``quantize``: every spatial vector snaps to its nearest codebook entry; the codes are the image's
tokens), ``post_quant_conv`` and the ``decoder``. Training adds the ``loss`` module: L1 plus LPIPS
perceptual distance (only with calibrated LPIPS weights: an official checkpoint's or the ``lpips``
package's with torchvision's VGG16; otherwise L1 alone, and the run says so), the codebook loss, and a
PatchGAN ``discriminator`` with a hinge loss whose generator term is weighted adaptively by the ratio
of gradient norms at the decoder's last layer.

Parameter names follow taming-transformers exactly (``encoder.down.0.block.1.conv1.weight``,
``quantize.embedding.weight``, ``loss.discriminator.main.0.weight``, ...), so the official
``vqgan_imagenet_f16_1024`` / ``f16_16384`` checkpoints load strictly (:func:`load_taming_checkpoint`).
Those are pickled Lightning 1 files: unpickling runs code, so loading one is an explicit trust
decision (``trust_pickle=True``). hm_recs' own checkpoints are plain tensors (safetensors).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VQGANConfig:
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 1024
    dropout: float = 0.0
    beta: float = 0.25
    # loss (VQLPIPSWithDiscriminator)
    disc_start: int = 250001
    disc_weight: float = 0.8
    disc_num_layers: int = 3
    disc_ndf: int = 64
    disc_factor: float = 1.0
    codebook_weight: float = 1.0
    perceptual_weight: float = 1.0

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def token_grid(self) -> int:
        """Tokens per side: the image is a token_grid x token_grid grid of codes."""
        return self.resolution // self.downsample_factor

    @property
    def tokens_per_image(self) -> int:
        return self.token_grid**2

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> VQGANConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


CONFIGS: dict[str, VQGANConfig] = {
    # the official f16 ImageNet models: 256x256 -> 16x16 = 256 tokens (the paper's setting)
    "paper": VQGANConfig(),
    "paper_16384": VQGANConfig(n_embed=16384, disc_start=0, disc_weight=0.75, disc_num_layers=2),
    # CPU-trainable: 64x64 -> 8x8 = 64 tokens; no LPIPS term (its VGG trunk needs a download)
    "small": VQGANConfig(
        resolution=64,
        ch=32,
        ch_mult=(1, 2, 2, 4),
        num_res_blocks=1,
        attn_resolutions=(8,),
        z_channels=64,
        embed_dim=64,
        n_embed=512,
        disc_start=400,
        disc_weight=0.5,
        disc_num_layers=2,
        disc_ndf=32,
        perceptual_weight=0.0,
    ),
}


# ---------------------------------------------------------------------------------------------
# building blocks (taming.modules.diffusionmodules.model)
# ---------------------------------------------------------------------------------------------
def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)
        k = self.k(h).reshape(b, c, hh * ww).transpose(1, 2)
        v = self.v(h).reshape(b, c, hh * ww).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, hh, ww))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as taming does


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(cfg.ch_mult), cfg.num_res_blocks
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, 1, 1)
        res = cfg.resolution
        in_mult = (1,) + tuple(cfg.ch_mult)
        self.down = nn.ModuleList()
        for level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = cfg.ch * in_mult[level], cfg.ch * cfg.ch_mult[level]
            for _ in range(cfg.num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            down = nn.Module()
            down.block, down.attn = block, attn
            if level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, down in enumerate(self.down):
            for i in range(self.num_res_blocks):
                h = down.block[i](h)
                if len(down.attn):
                    h = down.attn[i](h)
            if level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(cfg.ch_mult), cfg.num_res_blocks
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout)
        ups = []
        for level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = cfg.ch * cfg.ch_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            up = nn.Module()
            up.block, up.attn = block, attn
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            ups.insert(0, up)  # up[0] is the full-resolution level, as in taming
        self.up = nn.ModuleList(ups)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(self.num_resolutions)):
            up = self.up[level]
            for i in range(self.num_res_blocks + 1):
                h = up.block[i](h)
                if len(up.attn):
                    h = up.attn[i](h)
            if level != 0:
                h = up.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantization with the straight-through estimator.

    loss = mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2)  (taming's "legacy" form)
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector for every position of ``z`` (b, c, h, w) -> (b, h, w)."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        e = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.T + e.pow(2).sum(1)[None, :]
        return dist.argmin(1).view(b, h, w)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (b, h, w) -> quantized vectors (b, c, h, w)."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor):
        codes = self.codes(z)
        z_q = self.embed_codes(codes)
        loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()  # straight-through: the decoder's gradient flows to the encoder
        return z_q, loss, codes

    @torch.no_grad()
    def init_from(self, z: torch.Tensor, iterations: int = 10, seed: int = 0) -> None:
        """k-means codebook initialisation from encoder outputs ``z`` (b, c, h, w): a from-scratch
        codebook starts where the encoder's vectors are, so most codes are used from the first step
        (a uniform init near zero leaves most of them dead)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        g = torch.Generator(device=flat.device).manual_seed(seed)
        centres = flat[torch.randint(len(flat), (self.n_embed,), generator=g, device=flat.device)].clone()
        for _ in range(iterations):
            assign = torch.cdist(flat, centres).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, assign, flat)
            counts = torch.bincount(assign, minlength=self.n_embed).unsqueeze(1)
            centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        self.embedding.weight.copy_(centres)

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, used: torch.Tensor, seed: int = 0) -> int:
        """Move every code not in ``used`` (bool, n_embed) onto a random encoder output of the batch
        ``z`` (taming-style dead-code restart); returns how many codes moved."""
        dead = (~used).nonzero().flatten()
        if len(dead) == 0:
            return 0
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        g = torch.Generator(device=flat.device).manual_seed(seed)
        pick = torch.randint(len(flat), (len(dead),), generator=g, device=flat.device)
        self.embedding.weight[dead] = flat[pick].to(self.embedding.weight.dtype)
        return len(dead)


# ---------------------------------------------------------------------------------------------
# loss: LPIPS + PatchGAN (taming.modules.losses)
# ---------------------------------------------------------------------------------------------
class ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x):
        return (x - self.shift) / self.scale


class VGG16Features(nn.Module):
    """VGG16's convolutional trunk cut into the five slices LPIPS reads (relu1_2 ... relu5_3)."""

    CUTS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
                c_in = v
        for n, (a, b) in enumerate(self.CUTS, start=1):
            seq = nn.Sequential()
            for i in range(a, b):
                seq.add_module(str(i), layers[i])
            setattr(self, f"slice{n}", seq)

    def forward(self, x):
        out = []
        for n in range(1, 6):
            x = getattr(self, f"slice{n}")(x)
            out.append(x)
        return out


class NetLinLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """Learned perceptual distance (VGG variant), frozen. Its weights come from a checkpoint."""

    CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Features()
        for i, c in enumerate(self.CHANNELS):
            setattr(self, f"lin{i}", NetLinLayer(c))
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.net(self.scaling_layer(x)), self.net(self.scaling_layer(y))
        total = 0.0
        for i, (a, b) in enumerate(zip(fx, fy, strict=True)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{i}").model((a - b) ** 2).mean([2, 3], keepdim=True)
        return total


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix), BatchNorm, as ``loss.discriminator.main``."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        seq = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            seq += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        seq += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False),
            nn.BatchNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, True),
        ]
        seq += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.main(x)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


class VQLPIPSWithDiscriminator(nn.Module):
    """Taming's loss: L1 + perceptual (LPIPS) reconstruction, codebook loss, PatchGAN hinge loss.

    The perceptual term is only as good as its weights: an LPIPS with a random VGG trunk is not a
    perceptual distance, so the term is used only once :attr:`perceptual_calibrated` is set (by
    loading an official checkpoint's ``loss.perceptual_loss.*`` or the ``lpips`` package's calibrated
    weights, :func:`calibrate_perceptual`); until then the reconstruction loss is L1 alone.
    """

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.cfg = cfg
        self.perceptual_loss = LPIPS().eval()
        self.perceptual_calibrated = False
        self.discriminator = NLayerDiscriminator(3, cfg.disc_ndf, cfg.disc_num_layers)

    @property
    def uses_perceptual(self) -> bool:
        return self.cfg.perceptual_weight > 0 and self.perceptual_calibrated

    def reconstruction(self, x: torch.Tensor, xrec: torch.Tensor) -> torch.Tensor:
        """Mean of |x - xrec| (+ perceptual_weight * LPIPS(x, xrec) when calibrated)."""
        rec = (x - xrec).abs()
        if self.uses_perceptual:
            rec = rec + self.cfg.perceptual_weight * self.perceptual_loss(x, xrec)
        return rec.mean()

    def adaptive_weight(
        self, nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
    ) -> torch.Tensor:
        nll_grads = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        w = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        return torch.clamp(w, 0.0, 1e4).detach() * self.cfg.disc_weight

    def generator_loss(
        self, codebook_loss, x, xrec, step: int, last_layer: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict]:
        nll = self.reconstruction(x, xrec)
        disc_on = step >= self.cfg.disc_start
        logs = {"rec_loss": nll.detach(), "quant_loss": codebook_loss.detach()}
        loss = nll + self.cfg.codebook_weight * codebook_loss
        if disc_on:
            g_loss = -self.discriminator(xrec).mean()
            d_weight = (
                self.adaptive_weight(nll, g_loss, last_layer)
                if (last_layer is not None and torch.is_grad_enabled())
                else torch.tensor(0.0)
            )
            loss = loss + d_weight * self.cfg.disc_factor * g_loss
            logs.update({"g_loss": g_loss.detach(), "d_weight": d_weight})
        logs["total_loss"] = loss.detach()
        return loss, logs

    def discriminator_loss(self, x, xrec, step: int) -> tuple[torch.Tensor, dict]:
        factor = self.cfg.disc_factor if step >= self.cfg.disc_start else 0.0
        real, fake = self.discriminator(x.detach()), self.discriminator(xrec.detach())
        d_loss = factor * hinge_d_loss(real, fake)
        return d_loss, {
            "disc_loss": d_loss.detach(),
            "logits_real": real.mean().detach(),
            "logits_fake": fake.mean().detach(),
        }


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
AUTOENCODER_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")


class VQModel(nn.Module):
    def __init__(self, cfg: VQGANConfig, with_loss: bool = True):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        if with_loss:
            self.loss = VQLPIPSWithDiscriminator(cfg)

    def encode(self, x: torch.Tensor):
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: torch.Tensor):
        z_q, qloss, codes = self.encode(x)
        return self.decode(z_q), qloss, codes

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (b, 3, R, R) -> codes (b, grid, grid)."""
        return self.quantize.codes(self.quant_conv(self.encoder(x)))

    def last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    def autoencoder_parameters(self):
        for name, p in self.named_parameters():
            if name.startswith(AUTOENCODER_PREFIXES):
                yield p

    def autoencoder_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(AUTOENCODER_PREFIXES)}


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def save_model(model: VQModel, path: str | Path, extra: dict | None = None) -> Path:
    """hm_recs' own format: safetensors with the config in the metadata (nothing to unpickle)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "hm_recs.vqgan/1",
        "config": json.dumps(model.cfg.to_dict()),
        "extra": json.dumps(extra or {}),
    }
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_model(path: str | Path, device="cpu") -> tuple[VQModel, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != "hm_recs.vqgan/1":
        raise ValueError(f"{path}: not a hm_recs VQGAN file (safetensors with hm_recs metadata)")
    model = VQModel(VQGANConfig.from_dict(json.loads(meta["config"])))
    model.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    return model.to(device), json.loads(meta.get("extra", "{}"))


def load_taming_checkpoint(
    model: VQModel, path: str | Path, trust_pickle: bool = False
) -> dict[str, list[str]]:
    """Load an official taming-transformers checkpoint (``last.ckpt`` of vqgan_imagenet_f16_*).

    The file is a pickled Lightning 1 checkpoint: ``torch.load`` would run any code inside it,
    so this refuses unless ``trust_pickle`` says the file's source is trusted. The autoencoder
    loads strictly (every encoder / decoder / quantizer tensor present, names and shapes equal);
    the loss module's perceptual and discriminator weights load when present. Returns what was
    loaded and what was left out.
    """
    if not trust_pickle:
        raise PermissionError(
            f"{path} is a pickled Lightning checkpoint: loading it executes code stored in it. "
            "Pass trust_pickle=True only for a file from a source you trust (the official "
            "taming-transformers release)."
        )
    raw = torch.load(path, map_location="cpu", weights_only=False)
    state = raw.get("state_dict", raw)
    auto = {k: v for k, v in state.items() if k.startswith(AUTOENCODER_PREFIXES)}
    missing, unexpected = _load_subset(model, auto, AUTOENCODER_PREFIXES)
    if missing or unexpected:
        raise ValueError(
            f"{path}: autoencoder does not match the config (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]})"
        )
    loss_keys = {k: v for k, v in state.items() if k.startswith("loss.")}
    loaded_loss = []
    if hasattr(model, "loss") and loss_keys:
        own = model.state_dict()
        usable = {k: v for k, v in loss_keys.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(usable, strict=False)
        loaded_loss = sorted(usable)
    ignored = sorted(set(state) - set(auto) - set(loaded_loss))
    trunk = any(k.startswith("loss.perceptual_loss.net.") for k in loaded_loss)
    if hasattr(model, "loss"):
        lpips_keys = {k for k in model.state_dict() if k.startswith("loss.perceptual_loss.")}
        model.loss.perceptual_calibrated = lpips_keys <= set(loaded_loss)
    return {
        "autoencoder": sorted(auto),
        "loss": loaded_loss,
        "ignored": ignored,
        "perceptual_trunk_loaded": trunk,
    }


def calibrate_perceptual(model: VQModel) -> str:
    """Give the loss module calibrated LPIPS weights from the ``lpips`` package (its linear heads
    ship with it; the VGG16 trunk comes from torchvision's download cache). Returns what happened,
    for the run's log; the term stays off when the trunk is unavailable (offline, no cache)."""
    if not hasattr(model, "loss"):
        return "no loss module"
    if model.loss.perceptual_calibrated:
        return "calibrated (LPIPS weights from the checkpoint)"
    try:
        import lpips

        reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=False, verbose=False)
    except Exception as exc:  # no network and no cached torchvision VGG16
        return f"off: no calibrated LPIPS weights ({type(exc).__name__}: the VGG16 trunk is not cached)"
    own = model.loss.perceptual_loss.state_dict()
    state = {k: v for k, v in reference.state_dict().items() if k in own and own[k].shape == v.shape}
    if set(state) != set(own):
        return f"off: the lpips package's VGG layout differs ({len(set(own) - set(state))} tensors missing)"
    model.loss.perceptual_loss.load_state_dict(state, strict=True)
    model.loss.perceptual_calibrated = True
    return "calibrated (lpips VGG heads and torchvision VGG16 trunk)"


def _load_subset(model: nn.Module, state: dict, prefixes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if not (missing or unexpected or bad_shape):
        model.load_state_dict(state, strict=False)
    return missing + bad_shape, unexpected


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (computed on [0, 1])."""
    mse = ((x - y) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)
