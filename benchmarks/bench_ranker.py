"""Benchmark: candidate generation and the learned ranker, through the Dagster assets, at three sizes.

    make demo && .venv/bin/python benchmarks/bench_ranker.py                  # small: the demo's lake
    make demo && .venv/bin/python benchmarks/bench_ranker.py --bart-source semantic_id
    .venv/bin/python benchmarks/bench_ranker.py --scale medium                # 2M transactions
    .venv/bin/python benchmarks/bench_full_pipeline.py && \\
        .venv/bin/python benchmarks/bench_ranker.py --scale full              # 31.8M transactions

``small`` reads what ``make demo`` left (``state/``: every model evaluated, the ranker among them);
with ``--bart-source VARIANT`` it first re-trains that BART variant there (the demo's settings and
seed: the same model, its notes now with the recipe the source's extra fit repeats) and re-runs the
ranker chain with the variant's top 20 as one more source (its fit before the first training week
trained by ``candidates``).
``medium`` generates the medium synthetic data (no images) under ``--work`` and runs ingestion,
sessionization, POP, GRU4Rec (``demo`` preset), the item index and the ranker chain there.
``full`` runs the ranker chain on the lake ``bench_full_pipeline.py`` built (POP evaluated), in this
fresh process (no Spark JVM); GRU4Rec and the item index are left out of the sources there (GRU4Rec
on 31.8M events is hours of CPU), so the sources are the cheap ones. Each asset is one run, timed
with the peak RSS of the process tree.

Prints markdown for RESULTS.md: the time and memory per asset (medium, full), each source's
candidate recall, and every model's MAP@12 with the paired bootstrap difference to the ranker.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from hm_recs.profiles import GRU4REC_CHAIN, INGEST_CHAIN, RANKER_CHAIN  # noqa: E402

CHAINS = {
    "medium": [*INGEST_CHAIN, "sessions", *GRU4REC_CHAIN, "item_index", *RANKER_CHAIN],
    "full": RANKER_CHAIN,
}
# on the full data: the cheap sources, two training weeks (each about 1.4M buyers' candidates)
FULL_CONFIG = {
    "candidates": {"config": {"gru4rec_source": False, "item_index_source": False, "train_weeks": 2}},
}


def run_assets(assets: list[str], ops: dict, instance, resources=None) -> list[tuple[str, float, int]]:
    import dagster as dg
    from bench_sessionize import PeakRSS

    from hm_recs.definitions import defs as load_defs
    from hm_recs.defs.partitions import WEEKS
    from hm_recs.profiles import QUIET, narrowed

    defs, rows = load_defs(), []
    for asset in assets:
        job = "ingest" if asset in INGEST_CHAIN else ("sessionize" if asset == "sessions" else "evaluate")
        tags = None
        if asset == "sessions":
            keys = instance.get_dynamic_partitions(WEEKS)
            tags = {
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            }
        config = narrowed({**QUIET, "ops": ops}, [asset]) if job == "evaluate" else QUIET
        if resources and job == "evaluate":
            config = {**config, "resources": resources}
        with PeakRSS() as m:
            res = defs.resolve_job_def(job).execute_in_process(
                instance=instance, asset_selection=[dg.AssetKey(asset)], tags=tags, run_config=config
            )
        assert res.success, asset
        failed = [e.check_name for e in res.get_asset_check_evaluations() if not e.passed]
        rows.append((asset, m.seconds, m.peak, ", ".join(failed) or "all passed"))
        print(f"{asset}: {m.seconds:.1f} s, {m.peak / 2**30:.2f} GiB, checks: {rows[-1][3]}", flush=True)
    return rows


def report(lake) -> None:
    """The candidate recall table and every model against the ranker, from the lake."""
    from hm_recs.evaluation.protocol import EvaluationProtocol
    from hm_recs.evaluation.weeks import read_customer_ap, read_metrics
    from hm_recs.ranking import pipeline as rp
    from hm_recs.sessions.split import load_time_split
    from hm_recs.tables import CANDIDATE_RECALL_TABLE

    split = load_time_split(lake)
    recall = lake.read(CANDIDATE_RECALL_TABLE).to_pandas()
    recall = recall[recall["week"] >= split.validation_start]
    print("\n| week | source | recall | customers hit | candidates per customer |\n|---|---|---|---|---|")
    for r in recall.itertuples(index=False):
        name = "validation" if r.week == split.validation_start else "test"
        print(
            f"| {name} | {r.source} | {r.recall:.4f} | {r.customers_hit:.3f} | "
            f"{r.candidates_per_customer:.1f} |"
        )
    metrics, ap = read_metrics(lake), read_customer_ap(lake)
    best = rp.best_single_model(metrics)
    n_boot = EvaluationProtocol().n_bootstrap
    print(f"\nBest single model on the validation week's MAP@12: {best}\n")
    print("| week | model | MAP@12 | Recall@20 | ranker minus model (MAP@12, paired 95 % interval) |")
    print("|---|---|---|---|---|")
    for week in ("validation", "test"):
        rows = metrics[(metrics["split"] == week) & (metrics["metric"] == "MAP@12")]
        for r in rows.sort_values("value", ascending=False).itertuples(index=False):
            r20 = metrics[(metrics["split"] == week) & (metrics["model"] == r.model)]
            r20 = r20[r20["metric"] == "Recall@20"]["value"].iloc[0]
            d = None if r.model == "ranker" else rp.paired_ap_difference(ap, "ranker", r.model, week, n_boot)
            diff = "" if d is None else f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
            label = f"**{r.model}**" if r.model == best else r.model
            print(
                f"| {week} | {label} | {r.value:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}] | {r20:.4f} | {diff} |"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=["small", "medium", "full"], default="small")
    ap.add_argument(
        "--work", default=None, help="state folder (default: state/, benchmarks/out/<scale>_ranker)"
    )
    ap.add_argument("--data", default=None, help="medium: where the generated data goes")
    ap.add_argument(
        "--bart-source",
        default=None,
        metavar="VARIANT",
        help="a BART variant trained by the demo (small) whose top 20 joins the sources",
    )
    args = ap.parse_args()
    from bench_sessionize import synthesize

    default = {
        "small": ROOT / "state",
        "medium": ROOT / "benchmarks" / "out" / "medium_ranker",
        "full": ROOT / "benchmarks" / "out" / "full_pipeline",
    }
    work = Path(args.work) if args.work else default[args.scale]
    os.environ["HM_STATE_DIR"] = str(work)
    rows = []
    if args.scale != "small" or args.bart_source:
        import dagster as dg

        from hm_recs.profiles import run_config

        ops = run_config("demo")["ops"] | (FULL_CONFIG if args.scale == "full" else {})
        if args.bart_source:
            cands = ops.get("candidates", {}).get("config", {})
            ops["candidates"] = {"config": {**cands, "bart_source": args.bart_source}}
        if args.scale == "medium":
            data = Path(args.data) if args.data else ROOT / "benchmarks" / "out" / "medium"
            generated = synthesize(data, "medium")
            if generated:
                rows.append((*generated, ""))
            os.environ["HM_DATA_DIR"] = str(data)
        with dg.DagsterInstance.ephemeral() as instance:
            chain = CHAINS.get(args.scale, [f"bart_model_{args.bart_source}", *RANKER_CHAIN])
            rows += run_assets(chain, ops, instance, run_config("demo").get("resources"))
    from hm_recs.defs.resources import configured_lake

    lake = configured_lake()
    today = dt.date.today().isoformat()
    mem = psutil.virtual_memory().total / 2**30
    print(f"\n### Candidates and the ranker, {args.scale} ({today})\n")
    print(
        f"{platform.machine()}, {psutil.cpu_count()} cores, {mem:.1f} GiB RAM, Python "
        f"{platform.python_version()}. Command: "
        f"`.venv/bin/python benchmarks/bench_ranker.py --scale {args.scale}"
        + (f" --bart-source {args.bart_source}" if args.bart_source else "")
        + "`"
    )
    if rows:
        print("\n| step | seconds | peak RSS (process tree) | failed checks |\n|---|---|---|---|")
        for name, s, p, failed in rows:
            print(f"| {name} | {s:.1f} | {p / 2**30:.2f} GiB | {failed} |")
    report(lake)
    return 0


if __name__ == "__main__":
    sys.exit(main())
