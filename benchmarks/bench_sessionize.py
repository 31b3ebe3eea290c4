"""Benchmark: generate the full-size synthetic H&M data and sessionize it, with Spark and with the
single-machine tools a user might pick instead (DuckDB, polars).

    .venv/bin/python benchmarks/bench_sessionize.py --scale full

Steps, each timed with the peak resident memory of the whole process tree (Python + Spark's JVM),
sampled every 0.2 s:

1. ``hm-recs synth --scale full --images none`` (31,788,324 transactions);
2. ingestion into raw and clean Delta tables (the ``raw_*`` / ``clean_*`` assets' code);
3. Spark sessionization into the week-partitioned Delta table (the ``sessions`` asset's code);
4. the same sessionization in DuckDB and in polars, from the same clean table, to Parquet
   partitioned by week; the outputs are checked to hold the same sessions.

Prints a markdown block for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class PeakRSS:
    """Peak of the summed RSS of this process and all its children while the block runs."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self._stop.set()
        self._thread.join()


def synthesize(data: Path, scale: str) -> tuple[str, float, int] | None:
    """``hm-recs synth --scale <scale> --images none`` into ``data`` unless it holds the files already;
    the step's row (name, seconds, peak RSS) when it ran."""
    import subprocess

    if (Path(data) / "transactions_train.csv").exists():
        return None
    cmd = [sys.executable, "-m", "hm_recs.cli", "synth", "--out", str(data), "--scale", scale]
    cmd += ["--images", "none"]
    with PeakRSS() as m:
        subprocess.run(cmd, check=True)
    return ("generate (not an asset)", m.seconds, m.peak)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def duckdb_sessions(files: list[str], out: Path) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    file_list = ", ".join(f"'{f}'" for f in files)
    con.execute(
        f"""
        COPY (
          SELECT hash(customer_id, week_start) AS session_id, customer_id, week_start, t_dat,
                 (row_number() OVER w - 1)::INTEGER AS event_idx, article_id, price, sales_channel_id, line,
                 (count(*) OVER (PARTITION BY week_start, customer_id))::INTEGER AS session_length,
                 coalesce(lag(article_id) OVER w = article_id, false) AS is_consecutive_repeat
          FROM (SELECT *, t_dat - CAST((dayofweek(t_dat) + 4) % 7 AS INTEGER) AS week_start
                FROM read_parquet([{file_list}]))
          WINDOW w AS (PARTITION BY week_start, customer_id ORDER BY t_dat, line)
        ) TO '{out}' (FORMAT parquet, PARTITION_BY (week_start))
        """
    )


def polars_sessions(files: list[str], out: Path) -> None:
    import polars as pl

    key = ["week_start", "customer_id"]
    frame = (
        pl.scan_parquet(files)
        .with_columns(week_start=pl.col("t_dat") - pl.duration(days=(pl.col("t_dat").dt.weekday() - 3) % 7))
        .sort(["week_start", "customer_id", "t_dat", "line"])
        .with_columns(
            session_id=pl.struct(key).hash(),
            event_idx=pl.int_range(pl.len(), dtype=pl.Int32).over(key),
            session_length=pl.len().over(key).cast(pl.Int32),
            is_consecutive_repeat=(pl.col("article_id") == pl.col("article_id").shift(1))
            .over(key)
            .fill_null(False),
        )
        .collect(engine="streaming")
    )
    frame.write_parquet(out, partition_by="week_start")


def summary(path: Path) -> tuple[int, int, int, int]:
    """(rows, sessions, sum of event_idx, repeats): equal for equal sessionizations."""
    import duckdb

    return duckdb.sql(
        "SELECT count(*), count(DISTINCT (customer_id, week_start)), sum(event_idx), "
        "sum(is_consecutive_repeat::INT) "
        f"FROM read_parquet('{path}/**/*.parquet', hive_partitioning = true)"
    ).fetchall()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--work", default=str(ROOT / "benchmarks" / "out"), help="scratch folder (default: benchmarks/out)"
    )
    ap.add_argument("--reuse-data", action="store_true", help="skip generation when the data already exists")
    ap.add_argument("--driver-memory", default="6g")
    args = ap.parse_args()

    from hm_recs.data import ingest
    from hm_recs.data.delta import Lake
    from hm_recs.data.schema import ARTICLES, CUSTOMERS, TRANSACTIONS
    from hm_recs.sessions.sessionize import read_delta, sessionize, write_sessions
    from hm_recs.sessions.spark import get_spark, spark_conf
    from hm_recs.synth.generator import generate
    from hm_recs.tables import SESSIONS_TABLE

    work = Path(args.work)
    data = work / f"synthetic-{args.scale}"
    lake_dir = work / "lake"
    shutil.rmtree(lake_dir, ignore_errors=True)
    results: dict[str, dict] = {}

    if not (args.reuse_data and (data / "SYNTHETIC.json").exists()):
        shutil.rmtree(data, ignore_errors=True)
        with PeakRSS() as m:
            rep = generate(data, args.scale, seed=args.seed, images="none", progress=False)
        results["generate"] = {"seconds": m.seconds, "peak_rss": m.peak, "rows": rep.transactions}

    lake = Lake(str(lake_dir))
    with PeakRSS() as m:
        for c in (ARTICLES, CUSTOMERS, TRANSACTIONS):
            ingest.load_raw(data, c, lake)
    results["ingest raw (3 tables)"] = {
        "seconds": m.seconds,
        "peak_rss": m.peak,
        "rows": lake.count("raw/transactions"),
    }
    with PeakRSS() as m:
        ingest.clean(ARTICLES, lake)
        ingest.clean(CUSTOMERS, lake)
        r = ingest.clean(
            TRANSACTIONS, lake, ingest.key_values(lake, ARTICLES), ingest.key_values(lake, CUSTOMERS)
        )
    results["clean + validate (3 tables)"] = {"seconds": m.seconds, "peak_rss": m.peak, "rows": r.rows_out}

    spark = get_spark(spark_conf(driver_memory=args.driver_memory))
    spark.range(10).count()  # start the JVM outside the timing, as a running Dagster resource would
    with PeakRSS() as m:
        write_sessions(sessionize(read_delta(spark, lake, "clean/transactions")), lake, work / "staging")
    results["sessionize: Spark -> Delta"] = {
        "seconds": m.seconds,
        "peak_rss": m.peak,
        "rows": lake.count(SESSIONS_TABLE),
    }
    spark.stop()

    files = lake.table("clean/transactions").file_uris()
    for name, fn in (("DuckDB", duckdb_sessions), ("polars", polars_sessions)):
        out = work / f"sessions-{name.lower()}"
        shutil.rmtree(out, ignore_errors=True)
        with PeakRSS() as m:
            fn(files, out)
        results[f"sessionize: {name} -> Parquet"] = {
            "seconds": m.seconds,
            "peak_rss": m.peak,
            "summary": summary(out),
        }

    spark_summary = summary(Path(lake.uri(SESSIONS_TABLE)))
    for name in ("DuckDB", "polars"):
        assert results[f"sessionize: {name} -> Parquet"]["summary"] == spark_summary, (name, spark_summary)
    spark_s = results["sessionize: Spark -> Delta"]["seconds"]

    print(f"\n### Sessionization at scale `{args.scale}` ({dt.date.today().isoformat()})\n")
    print(
        f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, {gib(psutil.virtual_memory().total)} "
        "RAM, "
        f"Python {platform.python_version()}. Command: `.venv/bin/python benchmarks/bench_sessionize.py "
        f"--scale {args.scale}`\n"
    )
    print("| step | seconds | peak RSS (process tree) | note |\n|---|---|---|---|")
    for step, res in results.items():
        note = (
            f"{res['rows']:,} rows" if "rows" in res else f"{spark_s / res['seconds']:.1f}x faster than Spark"
        )
        print(f"| {step} | {res['seconds']:.1f} | {gib(res['peak_rss'])} | {note} |")
    print(f"\nAll three sessionizations agree: {spark_summary[0]:,} rows, {spark_summary[1]:,} sessions.")
    (work / "results.json").write_text(
        json.dumps({k: {kk: vv for kk, vv in v.items()} for k, v in results.items()}, indent=1, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
