"""Benchmark: GRU4Rec training speed and accuracy on the synthetic ``medium`` data.

    .venv/bin/python benchmarks/bench_gru4rec.py --epochs 2 [--device cuda]

Builds the medium dataset and its sessions once (cached under --work), then for each
configuration trains ``--epochs`` epochs on the data before the validation week, reporting
events/s and seconds per epoch, and evaluates on the validation week with the authors' protocol
(full ranking, conservative ties, zero state per session). Prints a markdown block for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "benchmark (1x100, batch 32, 2048 samples, XE + logQ)": "benchmark",
    "rees46_tuned (1x512, batch 240, 2048 samples, XE + logQ, dropout 0.45)": "rees46_tuned",
}


def prepare(work: Path, scale: str):
    from hm_recs.data import ingest
    from hm_recs.data.delta import Lake
    from hm_recs.data.preprocess import article_features, customer_features
    from hm_recs.data.schema import ARTICLES, CUSTOMERS, TRANSACTIONS
    from hm_recs.sessions.purchases import ARTICLE_FEATURES, CUSTOMER_FEATURES
    from hm_recs.sessions.sessionize import SESSIONS_TABLE, read_delta, sessionize, write_sessions
    from hm_recs.sessions.spark import get_spark, spark_conf
    from hm_recs.synth.generator import generate

    data, lake = work / f"synthetic-{scale}", Lake(str(work / f"lake-{scale}"))
    if not (data / "SYNTHETIC.json").exists():
        generate(data, scale, seed=0, images="none", progress=False)
    if not lake.exists(SESSIONS_TABLE):
        for c in (ARTICLES, CUSTOMERS, TRANSACTIONS):
            ingest.load_raw(data, c, lake)
        ingest.clean(ARTICLES, lake)
        ingest.clean(CUSTOMERS, lake)
        ingest.clean(TRANSACTIONS, lake, ingest.key_values(lake, ARTICLES), ingest.key_values(lake, CUSTOMERS))
        lake.write(ARTICLE_FEATURES, article_features(lake.read("clean/articles"))[0])
        lake.write(CUSTOMER_FEATURES, customer_features(lake.read("clean/customers"))[0])
        spark = get_spark(spark_conf(driver_memory="6g"))
        write_sessions(sessionize(read_delta(spark, lake, "clean/transactions")), lake, work / "staging")
        spark.stop()
    return lake


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="medium")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "out"))
    ap.add_argument("--only", default=None, help="run one preset only")
    args = ap.parse_args()

    from hm_recs.models.gru4rec import PRESETS, GRU4Rec, evaluation_data, training_data
    from hm_recs.sessions.purchases import load_purchases
    from hm_recs.sessions.split import TimeSplit

    work = Path(args.work)
    lake = prepare(work, args.scale)
    purchases = load_purchases(lake)
    days = purchases["t_dat"].to_numpy().astype("datetime64[D]")
    split = TimeSplit.from_dates(days.min().astype(dt.date), days.max().astype(dt.date))
    data, items, support = training_data(purchases, split.validation_start)
    rows = []
    for label, preset in CONFIGS.items():
        if args.only and preset != args.only:
            continue
        cfg = PRESETS[preset].with_overrides(n_epochs=args.epochs)
        model = GRU4Rec(cfg, items, support, args.device)
        model.fit(data, progress=False)
        ev, skipped = evaluation_data(model, purchases, *split.window("validation"))
        res = model.evaluate_sessions(ev, skipped=skipped)
        h = model.history
        rows.append((label, h, res))
        print(label, [round(x) for x in h.events_per_second], [round(s, 1) for s in h.epoch_seconds], res, flush=True)

    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({psutil.cpu_count()} cores)"
    print(f"\n### GRU4Rec on `{args.scale}` ({dt.date.today().isoformat()}, {device})\n")
    print(f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, torch {torch.__version__}, {args.epochs} epochs. "
          f"Command: `.venv/bin/python benchmarks/bench_gru4rec.py --epochs {args.epochs} --device {args.device}`. "
          f"Training data: {data.n_sessions:,} sessions, {data.n_events:,} events, {len(items):,} items.\n")
    print("| configuration | events/s (mean of epochs) | s/epoch | loss (last epoch) | Recall@20 | MRR@20 | Recall@5 | MRR@5 | events (skipped) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, h, res in rows:
        eps = sum(h.events_per_second) / len(h.events_per_second)
        spe = sum(h.epoch_seconds) / len(h.epoch_seconds)
        print(f"| {label} | {eps:,.0f} | {spe:.0f} | {h.epoch_loss[-1]:.3f} | {res['Recall@20']:.4f} | {res['MRR@20']:.4f} | "
              f"{res['Recall@5']:.4f} | {res['MRR@5']:.4f} | {res['events']:,} ({res['skipped_unseen']:,}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
