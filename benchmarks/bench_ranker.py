"""Benchmark: the candidate sources and a learned ranker on a finished demo's lake (issue 14, in progress).

    make demo && .venv/bin/python benchmarks/bench_ranker.py [--train-weeks 4] [--no-gru4rec-source]

For each target week of the time split: every candidate source's recall on the week (share of
the week's customer-article purchases proposed) and candidates per customer (GRU4Rec's top 50
among them unless ``--no-gru4rec-source``; no source model ever saw the week it proposes for),
then a LightGBM ranker (``lambdarank`` and ``binary``) trained on the ``--train-weeks`` weeks
before it, judged on the shared protocol beside GRU4Rec (warm) and POP (time-decayed) read from
the demo's model store and lake, with paired bootstrap differences of MAP@12 per customer.
Prints markdown for RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--train-weeks", type=int, default=4, help="weeks of labelled candidates before each target week"
    )
    ap.add_argument(
        "--no-gru4rec-source",
        action="store_true",
        help="leave GRU4Rec's top 50 out of the sources (by default a GRU4Rec, demo preset, trained "
        "before the first training week proposes for the training weeks, the demo's model for the "
        "target week)",
    )
    args = ap.parse_args()

    from hm_recs.artifacts import ModelStore
    from hm_recs.baselines.popularity import load_popularity
    from hm_recs.defs.resources import configured_lake
    from hm_recs.evaluation.metrics import paired_bootstrap_diff
    from hm_recs.evaluation.protocol import EvaluationProtocol, evaluate
    from hm_recs.evaluation.weeks import load_target_weeks
    from hm_recs.models.gru4rec import (
        PRESETS,
        GRU4RecRecommender,
        load_fitted,
        train_resumable,
        training_data,
    )
    from hm_recs.paths import models_dir, state_dir
    from hm_recs.ranking import candidates as cand
    from hm_recs.ranking.ranker import (
        Ranker,
        RankerRecommender,
        add_features,
        candidate_table,
        training_frame,
    )
    from hm_recs.sessions.purchases import load_purchases
    from hm_recs.sessions.split import load_time_split
    from hm_recs.tables import ARTICLE_FEATURES, CUSTOMER_FEATURES

    lake = configured_lake()
    purchases, split = load_purchases(lake), load_time_split(lake)
    articles = lake.read(ARTICLE_FEATURES, columns=["article_idx", "product_code"]).to_pandas()
    customers = lake.read(CUSTOMER_FEATURES, columns=["customer_idx", "age"]).to_pandas()
    protocol = EvaluationProtocol()
    weeks = load_target_weeks(lake, protocol, purchases=purchases, split=split)
    store = ModelStore(str(models_dir()), state_dir() / "cache" / "models")
    print("| week | source | recall | customers hit | candidates per customer |\n|---|---|---|---|---|")
    models = []
    for name, start in (("validation", split.validation_start), ("test", split.test_start)):
        who = cand.customers_of(purchases, start)
        first = start - dt.timedelta(days=7 * args.train_weeks)
        served, past = {}, {}
        if not args.no_gru4rec_source:  # each week's source model never saw that week
            served = {"gru4rec": GRU4RecRecommender(load_fitted(store, name), "warm")}
            cfg = PRESETS["demo"]
            data, items, support = training_data(purchases, first, cfg.repeats)
            with tempfile.TemporaryDirectory() as tmp:
                early, _ = train_resumable(data, items, support, cfg, tmp, f"ranker-{first}", progress=False)
            past = {"gru4rec": GRU4RecRecommender(early, "warm")}
        table = candidate_table(purchases, customers, articles, start, who, served)
        for source in [c for c in table.columns if c.startswith("score_")] + ["union"]:
            rows = table if source == "union" else table[table[source].notna()]
            s = cand.candidate_recall(rows, purchases, start)
            label = source.removeprefix("score_")
            print(
                f"| {name} | {label} | {s['recall']:.4f} | {s['customers_hit']:.3f} | "
                f"{s['candidates_per_customer']:.1f} |"
            )
        t = time.perf_counter()
        train_weeks = [start - dt.timedelta(days=7 * k) for k in range(args.train_weeks, 0, -1)]
        frame = training_frame(purchases, customers, articles, train_weeks, past)
        table = add_features(table, purchases, customers, start)
        fallback = cand.popular(purchases, start, n=200)["article_idx"].to_numpy()
        res = {}
        for objective in ("lambdarank", "binary"):
            ranker = Ranker(objective).fit(frame)
            res[f"ranker_{objective}"] = evaluate(
                RankerRecommender(ranker, table, fallback, f"ranker_{objective}"), weeks[name], protocol
            )
        seconds = time.perf_counter() - t
        res["gru4rec_warm"] = evaluate(
            GRU4RecRecommender(load_fitted(store, name), "warm"), weeks[name], protocol
        )
        res["pop_time_decay"] = evaluate(load_popularity(lake, "time_decay", name), weeks[name], protocol)
        models.append((name, len(frame), float(frame["label"].mean()), seconds, res))
    print("\n| week | model | MAP@12 | Recall@20 | MAP@12 minus gru4rec_warm | MAP@12 minus pop_time_decay |")
    print("|---|---|---|---|---|---|")
    for name, _, _, _, res in models:
        for model, r in res.items():
            m, r20 = r.metrics["MAP@12"], r.metrics["Recall@20"]
            diffs = []
            for base in ("gru4rec_warm", "pop_time_decay"):
                if model == base:
                    diffs.append("")
                    continue
                d = paired_bootstrap_diff(
                    r.per_customer_ap, res[base].per_customer_ap, None, protocol.n_bootstrap
                )
                diffs.append(f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]")
            cells = [name, model, f"{m[0]:.4f} [{m[1]:.4f}, {m[2]:.4f}]", f"{r20[0]:.4f}", *diffs]
            print("| " + " | ".join(cells) + " |")
    for name, n_rows, positive, seconds, _ in models:
        print(f"\n{name}: {n_rows} training rows ({positive:.3f} positive); ", end="")
        print(f"candidates, features and two rankers in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
