"""Benchmark: the Dagster assets on the full-size synthetic data (31,788,324 transactions), one asset
per run, each timed with the peak resident memory of the whole process tree (Python + Spark's JVM).

    .venv/bin/python benchmarks/bench_full_pipeline.py [--data DIR] [--work DIR]

Runs ingest (raw and clean tables, image manifest, features), sessionization of every week, the time
split, the popularity baselines (with their MLflow runs and registered pyfunc models, which bundle
every customer's history), the evaluation events and the POP evaluation. Prints a markdown block
for benchmarks/RESULTS.md.
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

from hm_recs.profiles import INGEST_CHAIN, POP_CHAIN  # noqa: E402  (after the path insert)

ASSETS = [*INGEST_CHAIN, "sessions", *POP_CHAIN]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "benchmarks" / "out" / "full"))
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "full_pipeline"))
    ap.add_argument("--driver-memory", default="6g")
    args = ap.parse_args()
    from bench_sessionize import PeakRSS, synthesize

    data, work = Path(args.data), Path(args.work)
    rows = []
    generated = synthesize(data, "full")
    if generated:
        rows.append(generated)
    os.environ.update(
        {"HM_DATA_DIR": str(data), "HM_STATE_DIR": str(work), "HM_SPARK_DRIVER_MEMORY": args.driver_memory}
    )
    import dagster as dg

    from hm_recs.definitions import defs as load_defs
    from hm_recs.defs.partitions import WEEKS

    defs = load_defs()
    with dg.DagsterInstance.ephemeral() as instance:
        for asset in ASSETS:
            job = (
                "ingest"
                if asset not in ("sessions", *POP_CHAIN)
                else ("sessionize" if asset == "sessions" else "evaluate")
            )
            keys = instance.get_dynamic_partitions(WEEKS)  # clean_transactions added the weeks of the data
            tags = (
                {
                    "dagster/asset_partition_range_start": keys[0],
                    "dagster/asset_partition_range_end": keys[-1],
                }
                if asset == "sessions"
                else None
            )
            with PeakRSS() as m:
                res = defs.resolve_job_def(job).execute_in_process(
                    instance=instance,
                    asset_selection=[dg.AssetKey(asset)],
                    tags=tags,
                    run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                )
            assert res.success, asset
            rows.append((asset, m.seconds, m.peak))
            print(f"{asset}: {m.seconds:.1f} s, {m.peak / 2**30:.2f} GiB", flush=True)

    mem = psutil.virtual_memory().total / 2**30
    print(f"\n### The assets on the full-size synthetic data ({dt.date.today().isoformat()})\n")
    print(
        f"{platform.machine()}, {psutil.cpu_count()} cores, {mem:.1f} GiB RAM, Python "
        f"{platform.python_version()}, "
        f"Spark driver {args.driver_memory}. Command: `.venv/bin/python benchmarks/bench_full_pipeline.py`\n"
    )
    print("| asset | seconds | peak RSS (process tree) |\n|---|---|---|")
    for name, s, p in rows:
        print(f"| {name} | {s:.1f} | {p / 2**30:.2f} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
