"""Benchmark: GRU4Rec training speed and accuracy on the synthetic ``medium`` data.

    .venv/bin/python benchmarks/bench_gru4rec.py --epochs 2 [--device cuda]

Builds the medium dataset and its sessions once (cached under --work), then for each
configuration trains ``--epochs`` epochs on the data before the validation week, reporting
events/s and seconds per epoch, and evaluates on the validation week with the authors' protocol
(full ranking, conservative ties, zero state per session). Prints a markdown block for
benchmarks/RESULTS.md.

Parity with the authors' code, on the same files:

    # the weekly customer sessions of a synthetic scale in the official input format
    .venv/bin/python benchmarks/bench_gru4rec.py --scale small --write-official benchmarks/out/official-small
    # train and evaluate hm_recs' GRU4Rec on them with an official -ps configuration, per seed
    .venv/bin/python benchmarks/bench_gru4rec.py --official-train benchmarks/out/official-small/train.tsv \
        --official-test benchmarks/out/official-small/test.tsv --seeds 0 1 \
        --ps loss=cross-entropy,layers=100,batch_size=32,dropout_p_hidden=0.4,learning_rate=0.2,momentum=0.2,\
n_sample=2048,sample_alpha=0.5,logq=1.0,constrained_embedding=True,n_epochs=5

The files are tab-separated ``SessionId, ItemId, Time`` (train: every week before the test week;
test: the test week), read as the official ``run.py`` reads them: repeats kept, test items unseen in
training dropped, sessions shorter than 2 dropped. The official run on the same files is
``python run.py train.tsv -t test.tsv -m 1 5 20 -ps <the same string>``.
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
    from hm_recs.sessions.sessionize import read_delta, sessionize, write_sessions
    from hm_recs.sessions.spark import get_spark, spark_conf
    from hm_recs.synth.generator import generate
    from hm_recs.tables import ARTICLE_FEATURES, CUSTOMER_FEATURES, SESSIONS_TABLE

    data, lake = work / f"synthetic-{scale}", Lake(str(work / f"lake-{scale}"))
    if not (data / "SYNTHETIC.json").exists():
        generate(data, scale, seed=0, images="none", progress=False)
    if not lake.exists(SESSIONS_TABLE):
        for c in (ARTICLES, CUSTOMERS, TRANSACTIONS):
            ingest.load_raw(data, c, lake)
        ingest.clean(ARTICLES, lake)
        ingest.clean(CUSTOMERS, lake)
        ingest.clean(
            TRANSACTIONS, lake, ingest.key_values(lake, ARTICLES), ingest.key_values(lake, CUSTOMERS)
        )
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
    ap.add_argument(
        "--write-official",
        default=None,
        metavar="DIR",
        help="write train.tsv / test.tsv in the official format and stop",
    )
    ap.add_argument(
        "--official-train", default=None, metavar="TSV", help="parity mode: official-format training file"
    )
    ap.add_argument(
        "--official-test", default=None, metavar="TSV", help="parity mode: official-format test file"
    )
    ap.add_argument("--ps", default="", help="parity mode: the configuration as the official -ps string")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0], help="parity mode: one training per seed")
    ap.add_argument(
        "--official-code",
        default=None,
        metavar="DIR",
        help="parity mode: a checkout of the authors' GRU4Rec_PyTorch_Official; trains it on the same files "
        "with the same -ps and seeds, scored by the same evaluator",
    )
    args = ap.parse_args()
    if args.official_train or args.official_test:
        if not (args.official_train and args.official_test):
            ap.error("parity mode needs both --official-train and --official-test")
        return parity(args)

    from hm_recs.models.gru4rec import PRESETS, GRU4Rec, evaluation_data, training_data
    from hm_recs.sessions.purchases import load_purchases
    from hm_recs.sessions.split import TimeSplit

    work = Path(args.work)
    lake = prepare(work, args.scale)
    purchases = load_purchases(lake)
    days = purchases["t_dat"].to_numpy().astype("datetime64[D]")
    split = TimeSplit.from_dates(days.min().astype(dt.date), days.max().astype(dt.date))
    if args.write_official:
        return write_official(purchases, split, Path(args.write_official))
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
        print(
            label,
            [round(x) for x in h.events_per_second],
            [round(s, 1) for s in h.epoch_seconds],
            res,
            flush=True,
        )

    device = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"CPU ({psutil.cpu_count()} cores)"
    )
    print(f"\n### GRU4Rec on `{args.scale}` ({dt.date.today().isoformat()}, {device})\n")
    print(
        f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.epochs} epochs. "
        f"Command: `.venv/bin/python benchmarks/bench_gru4rec.py --epochs {args.epochs} --device "
        f"{args.device}`. "
        f"Training data: {data.n_sessions:,} sessions, {data.n_events:,} events, {len(items):,} items.\n"
    )
    print(
        "| configuration | events/s (mean of epochs) | s/epoch | loss (last epoch) | Recall@20 | MRR@20 | "
        "Recall@5 | MRR@5 | events (skipped) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, h, res in rows:
        eps = sum(h.events_per_second) / len(h.events_per_second)
        spe = sum(h.epoch_seconds) / len(h.epoch_seconds)
        print(
            f"| {label} | {eps:,.0f} | {spe:.0f} | {h.epoch_loss[-1]:.3f} | {res['Recall@20']:.4f} | "
            f"{res['MRR@20']:.4f} | "
            f"{res['Recall@5']:.4f} | {res['MRR@5']:.4f} | {res['events']:,} ({res['skipped_unseen']:,}) |"
        )
    return 0


def write_official(purchases, split, out: Path) -> int:
    """The weekly customer sessions in the official format: train before the test week, test in it."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    rows = purchases.sort_values(["session_id", "t_dat", "event_idx"], kind="stable")
    days = rows["t_dat"].to_numpy().astype("datetime64[D]")
    # Time: the day in seconds plus the position in the session, so the official sort keeps the order
    seconds = days.astype("datetime64[s]").astype(np.int64) + rows["event_idx"].to_numpy()
    frame = rows.assign(SessionId=rows["session_id"], ItemId=rows["article_idx"], Time=seconds)[
        ["SessionId", "ItemId", "Time"]
    ]
    start, end = split.window("test")
    train = frame[days < np.datetime64(start, "D")]
    test = frame[(days >= np.datetime64(start, "D")) & (days <= np.datetime64(end, "D"))]
    train.to_csv(out / "train.tsv", sep="\t", index=False)
    test.to_csv(out / "test.tsv", sep="\t", index=False)
    print(f"wrote {out}/train.tsv ({len(train):,} rows) and {out}/test.tsv ({len(test):,} rows)")
    return 0


def read_official(path: str, items=None):
    """An official-format file as session data in model indices (``items``: the training vocabulary)."""
    import numpy as np
    import pandas as pd

    from hm_recs.models.gru4rec import GRU4Rec, build_sessions

    df = pd.read_csv(path, sep="\t", dtype={"SessionId": "int64", "ItemId": "int64", "Time": "float64"})
    missing = {"SessionId", "ItemId", "Time"} - set(df.columns)
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {sorted(missing)} (official format: SessionId, ItemId, Time)"
        )
    df = df.sort_values(["SessionId", "Time"], kind="stable")
    if items is None:
        items, support = GRU4Rec.vocabulary(df["ItemId"].to_numpy())
    else:
        support = None
        df = df[np.isin(df["ItemId"].to_numpy(), items)]  # as run.py: test items unseen in training dropped
    model_items = np.searchsorted(items, df["ItemId"].to_numpy())
    first = df.groupby("SessionId")["Time"].transform("min").to_numpy()
    data = build_sessions(df["SessionId"].to_numpy(), model_items, first, repeats="keep")
    return data, items, support


def session_ranks(step, layers, data, batch_size: int = 512):
    """Conservative rank of every next item of ``data`` (zero state per session, full ranking), with
    ``step(items, H) -> (scores over all items, new H)``."""
    import numpy as np

    from hm_recs.models.gru4rec import session_parallel_batches

    ranks = []
    H = [torch.zeros(min(batch_size, data.n_sessions), n) for n in layers]
    with torch.no_grad():
        for inputs, targets, reset, keep in session_parallel_batches(data, batch_size):
            if not keep.all():
                H = [h[torch.from_numpy(keep)] for h in H]
            if reset.any():
                r = torch.from_numpy(reset).unsqueeze(1)
                H = [h.masked_fill(r, 0.0) for h in H]
            scores, H = step(inputs, H)
            target = scores.gather(1, torch.from_numpy(targets).unsqueeze(1))
            ranks.append((scores >= target).sum(dim=1).numpy())
    return np.concatenate(ranks).astype(float)


def official_ranks(code_dir: str, train_path: str, ps: str, seed: int, items, test, device: str):
    """Train the authors' code on the training file and rank the test events with the same evaluator."""
    import time
    import types

    import numpy as np
    import pandas as pd

    sys.path.insert(0, code_dir)
    import gru4rec_pytorch  # the authors' module, from their checkout
    from gru4rec_pytorch import GRU4Rec as Official

    class TorchShim(types.ModuleType):
        """torch for the authors' module, with torch.tensor adapted to today's pandas and NumPy (their
        code was written for older ones): a pandas Series becomes an array (their fit() passes one),
        and a float64 array becomes float32 when no dtype is given (NumPy 2 promotes their float32
        initial weights to float64). The compatibility changes are made here, not in their file."""

        def __getattr__(self, name):
            return getattr(torch, name)

        def tensor(self, data, *args, **kwargs):
            if isinstance(data, pd.Series):
                data = np.asarray(data)
            if isinstance(data, np.ndarray) and data.dtype == np.float64 and "dtype" not in kwargs:
                data = data.astype(np.float32)
            return torch.tensor(data, *args, **kwargs)

    gru4rec_pytorch.torch = TorchShim("torch")
    torch.manual_seed(seed)
    np.random.seed(seed)
    gru = Official(device=torch.device(device))
    gru.set_params(**dict(kv.split("=", 1) for kv in ps.split(",") if kv))
    t0 = time.perf_counter()
    gru.fit(
        pd.read_csv(train_path, sep="\t", dtype={"SessionId": "int64", "ItemId": "int64", "Time": "float64"})
    )
    seconds = (time.perf_counter() - t0) / gru.n_epochs
    to_official = torch.from_numpy(gru.data_iterator.itemidmap[items].to_numpy().astype(np.int64))
    gru.model.eval()

    def step(inputs, H):
        out = gru.model.forward(to_official[torch.from_numpy(inputs)], H, None, training=False)  # H in place
        return out[:, to_official], H  # columns in hm_recs' item order, so the same targets index them

    return session_ranks(step, gru.layers, test), seconds


def metric_values(ranks):
    import numpy as np

    out = {f"Recall@{k}": (ranks <= k).astype(float) for k in (1, 5, 20)}
    out["MRR@20"] = np.where(ranks <= 20, 1.0 / ranks, 0.0)
    return out


def parity(args) -> int:
    import numpy as np

    from hm_recs.evaluation.metrics import bootstrap_ci
    from hm_recs.models.gru4rec import GRU4Rec, GRU4RecConfig

    train, items, support = read_official(args.official_train)
    test, _, _ = read_official(args.official_test, items)
    cfg0 = GRU4RecConfig.from_param_string(args.ps, repeats="keep")
    print(
        f"train: {train.n_sessions:,} sessions, {train.n_events:,} events, {len(items):,} items; "
        f"test: {test.n_sessions:,} sessions, {test.n_events:,} events; config {cfg0}",
        flush=True,
    )
    runs = {"hm_recs": [], "official": []}
    for seed in args.seeds:
        model = GRU4Rec(cfg0.with_overrides(seed=seed), items, support, args.device)
        model.fit(train, progress=False)
        model.net.eval()

        def step(inputs, H, m=model):
            h, H, _, _ = m.net.step(torch.from_numpy(inputs), H)
            return m.score_states(h), H

        ranks = session_ranks(step, list(cfg0.layers), test)
        runs["hm_recs"].append((seed, ranks, float(np.mean(model.history.epoch_seconds))))
        if args.official_code:
            o_ranks, o_seconds = official_ranks(
                args.official_code, args.official_train, args.ps, seed, items, test, args.device
            )
            runs["official"].append((seed, o_ranks, o_seconds))
        for name, rows in runs.items():
            if rows and rows[-1][0] == seed:
                print(
                    name,
                    seed,
                    {k: round(float(v.mean()), 4) for k, v in metric_values(rows[-1][1]).items()},
                    flush=True,
                )

    names = ("Recall@1", "Recall@5", "Recall@20", "MRR@20")
    print(
        f"\n### GRU4Rec parity run ({dt.date.today().isoformat()}, {platform.machine()}, "
        f"{psutil.cpu_count()} cores)\n"
    )
    print(
        f"Command: `.venv/bin/python benchmarks/bench_gru4rec.py --official-train {args.official_train} "
        f"--official-test {args.official_test} --seeds {' '.join(map(str, args.seeds))} --ps {args.ps}"
        f"{' --official-code ' + args.official_code if args.official_code else ''}`. Test: "
        f"{test.n_events:,} events; "
        "95 % bootstrap intervals over events.\n"
    )
    print("| implementation | seed | " + " | ".join(names) + " | s/epoch |")
    print("|---|---|" + "---|" * (len(names) + 1))
    for name, rows in runs.items():
        for seed, ranks, seconds in rows:
            values = metric_values(ranks)
            cells = " | ".join(
                "{:.4f} ({:.4f}-{:.4f})".format(*bootstrap_ci(values[m], None, 1000, seed=0)) for m in names
            )
            print(f"| {name} | {seed} | {cells} | {seconds:.1f} |")
    if runs["official"]:
        print(
            "\n| metric | hm_recs (mean of seeds) | official (mean of seeds) | hm_recs vs official (95 % "
            "interval) |"
        )
        print("|---|---|---|---|")
        ours = {m: np.stack([metric_values(r)[m] for _, r, _ in runs["hm_recs"]]) for m in names}
        theirs = {m: np.stack([metric_values(r)[m] for _, r, _ in runs["official"]]) for m in names}
        rng = np.random.default_rng(0)
        boots = [rng.integers(0, test.n_events, test.n_events) for _ in range(1000)]
        for m in names:
            rel = ours[m].mean() / theirs[m].mean() - 1
            draws = [ours[m][:, i].mean() / theirs[m][:, i].mean() - 1 for i in boots]
            lo, hi = np.percentile(draws, [2.5, 97.5])
            print(
                f"| {m} | {ours[m].mean():.4f} | {theirs[m].mean():.4f} | {rel:+.1%} ({lo:+.1%} .. "
                f"{hi:+.1%}) |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
