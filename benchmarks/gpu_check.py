"""The GPU check: one table of training and inference throughput on a lent GPU, and on the CPU for the ratio.

    benchmarks/gpu_check.sh            # on a machine with a GPU: under 8 minutes on one H200
    benchmarks/gpu_check.sh --tiny     # CPU only, tiny sizes, seconds: keeps the script from rotting

Measures, on ``cuda`` (bf16 autocast) and on the CPU (fp32, fewer steps):

* VQGAN ``paper`` (256x256, f16, 1,024 codes): one taming training step (autoencoder and
  discriminator updates, discriminator on) in images/s, and tokenization in images/s;
* BART ``base`` from config (facebook/bart-base's dimensions, untrained), one AdamW training step
  per variant on synthetic batches at the variant's source budget and target length, in tokens/s;
* GRU4Rec (the ``benchmark`` preset: one layer of 100, batch 32, 2,048 samples, XE + logQ) on
  synthetic sessions, in training events/s;
* peak GPU memory of each.

Synthetic inputs are enough for throughput (the arithmetic does not depend on the values); accuracy is
the other benchmarks' business. Prints one markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# target lengths in tokens: an item text, an item's semantic ID (codes + disambiguation + </s>)
TARGET_TOKENS = {"text": 24, "semantic_id": 6}


@dataclasses.dataclass
class Sizes:
    vqgan: str
    vqgan_batch: int
    bart: str
    bart_batch: int
    source_tokens: int | None  # None: each variant's budget
    gru_events: int
    steps: int


FULL = {
    "cuda": Sizes("paper", 6, "base", 16, None, 200_000, 10),
    "cpu": Sizes("paper", 2, "base", 2, None, 20_000, 2),
}
TINY = {"cpu": Sizes("tiny", 2, "tiny", 2, 64, 2_000, 2)}


def timed(fn, steps: int, device: str) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str):
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def vqgan_rows(device: str, sizes: Sizes) -> list[dict]:
    from hm_recs.models.vqgan import CONFIGS, VQModel

    if sizes.vqgan == "tiny":
        cfg = dataclasses.replace(
            CONFIGS["small"],
            resolution=32,
            ch=32,
            ch_mult=(1, 2),
            attn_resolutions=(),
            z_channels=32,
            embed_dim=8,
            n_embed=32,
        )
    else:
        cfg = CONFIGS[sizes.vqgan]
    cfg = dataclasses.replace(
        cfg, disc_start=0, perceptual_weight=0.0
    )  # the GAN term on, as late in training
    peak_reset(device)
    model = VQModel(cfg).to(device)
    opt_ae = torch.optim.Adam(list(model.autoencoder_parameters()), lr=1e-5, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(model.loss.discriminator.parameters(), lr=1e-5, betas=(0.5, 0.9))
    x = torch.rand(sizes.vqgan_batch, 3, cfg.resolution, cfg.resolution, device=device) * 2 - 1

    def train_step():
        with autocast(device):
            xrec, qloss, _ = model(x)
            loss, _ = model.loss.generator_loss(qloss, x, xrec, 1, model.last_layer())
        opt_ae.zero_grad()
        loss.backward()
        opt_ae.step()
        with autocast(device):
            d_loss, _ = model.loss.discriminator_loss(x, xrec, 1)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()

    train = timed(train_step, sizes.steps, device)
    train_peak = peak_gib(device)
    tok_batch = sizes.vqgan_batch * (8 if device == "cuda" else 2)
    xt = torch.rand(tok_batch, 3, cfg.resolution, cfg.resolution, device=device) * 2 - 1

    def tokenize():
        with torch.no_grad(), autocast(device):
            model.tokenize(xt)

    tok = timed(tokenize, sizes.steps, device)
    name = f"VQGAN {sizes.vqgan} ({cfg.resolution}px, {cfg.tokens_per_image} tokens)"
    return [
        {
            "what": f"{name}: training step, batch {sizes.vqgan_batch}",
            "unit": "images/s",
            "value": sizes.vqgan_batch / train,
            "peak": train_peak,
        },
        {
            "what": f"{name}: tokenization, batch {tok_batch}",
            "unit": "images/s",
            "value": tok_batch / tok,
            "peak": peak_gib(device),
        },
    ]


def bart_rows(device: str, sizes: Sizes) -> list[dict]:
    from transformers import BartConfig, BartForConditionalGeneration

    from hm_recs.models.bart import SIZES, VARIANTS

    rows = []
    vocab = 8000 + 1024 + 4 * 128 + 256  # a trained tokenizer, image codes, semantic-ID tokens
    for name, variant in VARIANTS.items():
        peak_reset(device)
        torch.manual_seed(0)
        cfg = BartConfig(
            vocab_size=vocab,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=2,
            **SIZES[sizes.bart],
        )
        model = BartForConditionalGeneration(cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        src = sizes.source_tokens or variant.max_source_tokens
        tgt = TARGET_TOKENS["semantic_id" if variant.semantic_ids else "text"]
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(4, vocab, (sizes.bart_batch, src), generator=g).to(device)
        labels = torch.randint(4, vocab, (sizes.bart_batch, tgt), generator=g).to(device)

        seconds = timed(
            lambda m=model, o=opt, i=ids, y=labels: bart_step(m, o, i, y, device), sizes.steps, device
        )
        rows.append(
            {
                "what": f"BART {sizes.bart} from config, {name}: training step, "
                f"batch {sizes.bart_batch} x ({src} + {tgt}) tokens",
                "unit": "tokens/s",
                "value": sizes.bart_batch * (src + tgt) / seconds,
                "peak": peak_gib(device),
            }
        )
        del model, opt
    return rows


def bart_step(model, opt, ids, labels, device: str) -> None:
    with autocast(device):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    opt.zero_grad()
    loss.backward()
    opt.step()


def gru4rec_rows(device: str, sizes: Sizes) -> list[dict]:
    from hm_recs.models.gru4rec import PRESETS, GRU4Rec, SessionData

    rng = np.random.default_rng(0)
    n_items = 20_000 if sizes.gru_events >= 20_000 else 500
    lengths = rng.integers(2, 12, size=sizes.gru_events // 6)
    items = rng.zipf(1.3, size=int(lengths.sum())) % n_items
    data = SessionData(items.astype(np.int64), np.r_[0, np.cumsum(lengths)].astype(np.int64))
    support = np.bincount(items, minlength=n_items).astype(float) + 1
    cfg = PRESETS["benchmark"].with_overrides(n_epochs=1, n_sample=2048 if n_items > 2048 else 256)
    peak_reset(device)
    model = GRU4Rec(cfg, np.arange(n_items), support, device)
    model.fit(data, progress=False)
    return [
        {
            "what": f"GRU4Rec benchmark preset: training, batch 32, "
            f"{data.n_events:,} events over {n_items:,} items",
            "unit": "events/s",
            "value": model.history.events_per_second[-1],
            "peak": peak_gib(device),
        }
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tiny", action="store_true", help="CPU only, tiny models: checks the script runs (seconds)"
    )
    args = ap.parse_args()
    plans = TINY if args.tiny else FULL
    devices = [d for d in plans if d == "cpu" or torch.cuda.is_available()]
    if not args.tiny and "cuda" not in devices:
        print("no CUDA device: measuring the CPU only (the ratio column stays empty)", file=sys.stderr)
    results: dict[str, list[dict]] = {}
    for device in devices:
        sizes = plans[device]
        rows = []
        for part in (vqgan_rows, bart_rows, gru4rec_rows):
            t0 = time.perf_counter()
            rows += part(device, sizes)
            print(f"{device} {part.__name__}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        results[device] = rows

    gpu = torch.cuda.get_device_name(0) if "cuda" in results else "none"
    print(
        f"\n### GPU check ({dt.date.today().isoformat()}; GPU: {gpu}; CPU: {platform.machine()}, "
        f"{torch.get_num_threads()} threads; torch {torch.__version__})\n"
    )
    print(
        f"Command: `benchmarks/gpu_check.sh{' --tiny' if args.tiny else ''}`. GPU in bf16 autocast, CPU in "
        "fp32; "
        "synthetic inputs at the stated sizes (CPU batches are smaller; throughput is per item or token).\n"
    )
    print("| measurement | unit | GPU | peak GPU memory (GiB) | CPU | GPU / CPU |")
    print("|---|---|---|---|---|---|")
    cpu = {r["what"].split(", batch")[0]: r for r in results.get("cpu", [])}
    main_rows = results.get("cuda") or results["cpu"]
    for r in main_rows:
        key = r["what"].split(", batch")[0]
        on_gpu = "cuda" in results
        c = cpu.get(key)
        gpu_value = f"{r['value']:,.0f}" if on_gpu else ""
        peak = f"{r['peak']:.1f}" if on_gpu and r["peak"] is not None else ""
        cpu_value = f"{c['value']:,.1f}" if c else ""
        ratio = f"{r['value'] / c['value']:,.0f}x" if on_gpu and c and c["value"] else ""
        print(f"| {r['what']} | {r['unit']} | {gpu_value} | {peak} | {cpu_value} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
