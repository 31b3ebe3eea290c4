"""Benchmark: VQGAN training-step time and tokenization throughput for the `small` and `paper`
configs, and the small model trained from random weights on the real sample photos for a CPU-time
budget, with held-out PSNR / SSIM and codebook usage after every chunk of steps (a curve).

    .venv/bin/python benchmarks/bench_vqgan.py [--device cuda] [--precision bf16-mixed] \
        [--minutes 30] [--no-speed]

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


def from_scratch_curve(args) -> dict | None:
    """The `small` VQGAN trained from random weights on the real sample's photos for ``--minutes``,
    judged on 500 held-out photos after every chunk of steps: a PSNR / SSIM / codebook-usage curve."""
    import dataclasses
    import json

    import numpy as np

    from hm_recs.compute import DeviceSpec
    from hm_recs.models.vqgan import CONFIGS, VQModel
    from hm_recs.models.vqgan_training import (
        TrainingSettings,
        held_out,
        reconstruction_grid,
        reconstruction_scores,
        tokenize_images,
        train_vqgan,
    )
    from hm_recs.paths import shared_dir
    from hm_recs.plots import line_plot

    images = sorted((shared_dir() / "hm_real_sample" / "images").glob("*/*.jpg"))
    if not images or not args.minutes:
        return None
    train = [p for p in images if not held_out(p.stem)]
    test = [p for p in images if held_out(p.stem)][:500]
    work = Path(args.work) / "from-scratch"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    torch.manual_seed(0)
    base = VQModel(CONFIGS["small"])
    start = reconstruction_scores(base, test, args.device)
    # the discriminator starts at --disc-start of the planned steps (planned from the first chunk's speed)
    settings = TrainingSettings(
        max_steps=args.chunk_steps,
        batch_size=args.batch_size,
        base_learning_rate=args.base_lr,
        checkpoint_every=args.chunk_steps,
        disc_start_fraction=None,
        codebook_init=args.codebook_init,
        restart_dead_every=args.restart_dead_every,
    )
    cfg = dataclasses.replace(CONFIGS["small"], disc_start=10**9)
    curve, trained_seconds, state = [], 0.0, base.state_dict()
    spec = DeviceSpec(args.device, 1, args.precision)
    while trained_seconds < args.minutes * 60:
        model, res = train_vqgan(
            cfg, train, work, settings, spec, init_state=state, fingerprint="bench", progress=False
        )
        trained_seconds += res.seconds
        if len(curve) == 0:
            planned = int(args.minutes * 60 / (res.seconds / max(res.steps, 1)))
            cfg = dataclasses.replace(cfg, disc_start=int(args.disc_start * planned))
        scores = reconstruction_scores(model, test, args.device)
        codes, _ = tokenize_images(model, test, args.device, progress=False)
        used = len(np.unique(np.concatenate([c.ravel() for c in codes if c is not None])))
        curve.append(
            {
                "minutes": trained_seconds / 60,
                "steps": res.steps,
                "psnr": scores.psnr,
                "ssim": scores.ssim,
                "codes_used": used,
            }
        )
        print(json.dumps(curve[-1]), flush=True)
        settings = dataclasses.replace(settings, max_steps=res.steps + args.chunk_steps)
    out = Path(args.work)
    plot = line_plot(
        {"held-out PSNR (dB)": [c["psnr"] for c in curve]},
        "small VQGAN from scratch, real photos",
        "CPU minutes",
        "PSNR (dB)",
        x=[round(c["minutes"], 1) for c in curve],
    )
    (out / "vqgan_psnr_minutes.png").write_bytes(plot)
    (out / "vqgan_reconstructions.png").write_bytes(reconstruction_grid(model, test, n=12))
    return {
        "train": len(train),
        "test": len(test),
        "start": start,
        "curve": curve,
        "final": scores,
        "history": res.history,
        "disc_start": cfg.disc_start,
        "restarted": res.codes_restarted,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="32-true")
    ap.add_argument(
        "--speed", action=argparse.BooleanOptionalAction, default=True, help="the step-time table"
    )
    ap.add_argument(
        "--minutes",
        type=float,
        default=30.0,
        help="from-scratch training budget on the real photos (0: skip)",
    )
    ap.add_argument("--chunk-steps", type=int, default=150, help="steps between held-out evaluations")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--base-lr", type=float, default=2.5e-5, help="lr = batch x this (taming's scaling)")
    ap.add_argument("--codebook-init", default="kmeans", choices=["kmeans", "none"])
    ap.add_argument("--restart-dead-every", type=int, default=50)
    ap.add_argument(
        "--disc-start",
        type=float,
        default=0.5,
        help="fraction of the planned steps before the discriminator starts",
    )
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "vqgan"))
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)

    from hm_recs.models.vqgan import CONFIGS

    rows = []
    for name, batch in (("small", 8), ("paper", 2 if args.device == "cpu" else 8)) if args.speed else ():
        cfg = CONFIGS[name]
        s = step_time(
            cfg,
            args.device,
            args.precision,
            batch,
            steps=2 if name == "paper" and args.device == "cpu" else 5,
        )
        tps = tokens_per_second(
            cfg, args.device, args.precision, 32 if name == "small" or args.device != "cpu" else 4
        )
        rows.append((name, cfg.resolution, cfg.tokens_per_image, batch, s, tps))
        print(name, s, tps, flush=True)
    scratch = from_scratch_curve(args)

    dev = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"CPU, {psutil.cpu_count()} cores"
    )
    print(f"\n### VQGAN ({dt.date.today().isoformat()}, {dev}, precision {args.precision})\n")
    print(
        f"Machine: {platform.machine()}, torch {torch.__version__}. Command: `.venv/bin/python "
        f"benchmarks/bench_vqgan.py {' '.join(sys.argv[1:])}`\n"
    )
    if rows:
        print(
            "| config | resolution | tokens/image | batch | training step (s, generator + discriminator) | "
            "tokenization (images/s) |\n|---|---|---|---|---|---|"
        )
        for name, res_, tok, batch, s, tps in rows:
            print(f"| {name} | {res_} | {tok} | {batch} | {s:.3f} | {tps:.1f} |")
    if scratch:
        c, f = scratch["curve"], scratch["final"]
        verdict = "meets" if f.psnr >= 20 and f.ssim >= 0.6 else "misses"
        print(
            f"\nThe `small` config from random weights on {scratch['train']:,} real sample photos (batch "
            f"{args.batch_size}, "
            f"lr {args.batch_size * args.base_lr:.1e}, codebook init {args.codebook_init}, dead-code "
            "restarts every "
            f"{args.restart_dead_every} steps, {scratch['restarted']} restarts; discriminator from step "
            f"{scratch['disc_start']}), "
            f"judged on {scratch['test']} held-out photos after every {args.chunk_steps} steps. Before "
            "training: PSNR "
            f"{scratch['start'].psnr:.2f} dB, SSIM {scratch['start'].ssim:.3f}. Target PSNR >= 20 dB and "
            "SSIM >= 0.6 "
            f"within 30 CPU-minutes: {verdict} it (PSNR {f.psnr:.2f} dB, SSIM {f.ssim:.3f} after "
            f"{c[-1]['minutes']:.1f} min). "
            f"LPIPS: {f.lpips_note}. Curve: `{args.work}/vqgan_psnr_minutes.png`; reconstructions "
            "(originals above, "
            f"reconstructions below): `{args.work}/vqgan_reconstructions.png`.\n"
        )
        print(
            "| CPU minutes | steps | held-out PSNR (dB) | SSIM | codes used by the held-out photos (of 512) "
            "|\n|---|---|---|---|---|"
        )
        for p in c:
            print(
                f"| {p['minutes']:.1f} | {p['steps']} | {p['psnr']:.2f} | {p['ssim']:.3f} | "
                f"{p['codes_used']} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
