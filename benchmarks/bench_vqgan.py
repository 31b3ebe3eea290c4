"""Benchmark: VQGAN training-step time and tokenization throughput for the `small` and `paper`
configs, and the small model fine-tuned on the real sample photos (PSNR / SSIM on held-out photos).

    .venv/bin/python benchmarks/bench_vqgan.py [--device cuda] [--precision bf16-mixed] [--finetune-steps 600]

Prints a markdown block for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def step_time(cfg, device: str, precision: str, batch: int, steps: int = 3) -> float:
    from hm_recs.models.vqgan import VQModel

    model = VQModel(cfg).to(device)
    opt = torch.optim.Adam(model.autoencoder_parameters(), lr=1e-4, betas=(0.5, 0.9))
    dopt = torch.optim.Adam(model.loss.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
    x = torch.rand(batch, 3, cfg.resolution, cfg.resolution, device=device) * 2 - 1
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    times = []
    for i in range(steps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            xrec, q, _ = model(x)
            loss, _ = model.loss.generator_loss(q, x, xrec, step=10**9, last_layer=model.last_layer())
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            d, _ = model.loss.discriminator_loss(x, xrec.detach(), step=10**9)
        dopt.zero_grad()
        d.backward()
        dopt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    return sum(times) / len(times)


@torch.no_grad()
def tokens_per_second(cfg, device: str, precision: str, batch: int, reps: int = 3) -> float:
    from hm_recs.models.vqgan import VQModel

    model = VQModel(cfg, with_loss=False).to(device).eval()
    x = torch.rand(batch, 3, cfg.resolution, cfg.resolution, device=device) * 2 - 1
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
        model.tokenize(x)
        t = time.perf_counter()
        for _ in range(reps):
            model.tokenize(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return reps * batch / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="32-true")
    ap.add_argument("--finetune-steps", type=int, default=600)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "vqgan"))
    args = ap.parse_args()

    from hm_recs.compute import DeviceSpec
    from hm_recs.models.vqgan import CONFIGS, VQModel
    from hm_recs.models.vqgan_training import TrainingSettings, held_out, reconstruction_scores, train_vqgan
    from hm_recs.paths import shared_dir

    rows = []
    for name, batch in (("small", 8), ("paper", 2 if args.device == "cpu" else 8)):
        cfg = CONFIGS[name]
        s = step_time(cfg, args.device, args.precision, batch, steps=2 if name == "paper" and args.device == "cpu" else 5)
        tps = tokens_per_second(cfg, args.device, args.precision, 32 if name == "small" or args.device != "cpu" else 4)
        rows.append((name, cfg.resolution, cfg.tokens_per_image, batch, s, tps))
        print(name, s, tps, flush=True)

    finetune = None
    images = sorted((shared_dir() / "hm_real_sample" / "images").glob("*/*.jpg"))
    if images and args.finetune_steps:
        train = [p for p in images if not held_out(p.stem)]
        test = [p for p in images if held_out(p.stem)][:500]
        base = VQModel(CONFIGS["small"])
        before = reconstruction_scores(base, test, args.device)
        settings = TrainingSettings(max_steps=args.finetune_steps, batch_size=16, base_learning_rate=1e-4, checkpoint_every=10**6)
        model, res = train_vqgan(CONFIGS["small"], train, args.work, settings, DeviceSpec(args.device, 1, args.precision),
                                 init_state=base.state_dict(), fingerprint=f"bench-{time.time()}", progress=False)
        after = reconstruction_scores(model, test, args.device)
        finetune = (len(train), len(test), res.steps, res.seconds, before, after)

    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {psutil.cpu_count()} cores"
    print(f"\n### VQGAN ({dt.date.today().isoformat()}, {dev}, precision {args.precision})\n")
    print(f"Machine: {platform.machine()}, torch {torch.__version__}. Command: `.venv/bin/python benchmarks/bench_vqgan.py {' '.join(sys.argv[1:])}`\n")
    print("| config | resolution | tokens/image | batch | training step (s, generator + discriminator) | tokenization (images/s) |\n|---|---|---|---|---|---|")
    for name, res_, tok, batch, s, tps in rows:
        print(f"| {name} | {res_} | {tok} | {batch} | {s:.3f} | {tps:.1f} |")
    if finetune:
        n_train, n_test, steps, secs, b, a = finetune
        print(f"\nSmall config trained from random weights on {n_train:,} real sample photos for {steps} steps ({secs:.0f} s), "
              f"judged on {n_test} held-out photos: PSNR {b.psnr:.2f} -> {a.psnr:.2f} dB, SSIM {b.ssim:.4f} -> {a.ssim:.4f}; LPIPS {a.lpips_note}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
