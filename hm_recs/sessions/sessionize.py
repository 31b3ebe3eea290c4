"""Sessionization (the paper's section 5.1.3): a customer's purchases in one week form a session.

Weeks start on **Wednesday**, so they line up with the Kaggle protocol: the data ends on Tuesday
2020-09-22 and the hidden test week is 2020-09-23..29, so the last 7 days of the data (the test
week of the time split) and the one before (validation) are whole sessions weeks. The anchor is
configurable (``anchor_weekday``, Monday = 0).

Output, one row per unit bought (H&M writes one row per unit):

``session_id``  xxhash64 of (customer_id, week_start): stable across re-runs and partitions
``customer_id``, ``article_id``, ``t_dat``, ``price``, ``sales_channel_id``
``week_start``  first day of the session's week (the Delta partition column)
``line``        the row's line in the source file
``event_idx``   0-based position in the session, ordered by (t_dat, line): within a day the
                file order, which is the order the tills wrote
``session_length``  rows in the session
``is_consecutive_repeat``  the same article as the previous row of the session (another unit)
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pds

from hm_recs.data.delta import Lake
from hm_recs.tables import SESSIONS_TABLE

log = logging.getLogger(__name__)

WEDNESDAY = 2

SESSION_SCHEMA = pa.schema(
    [
        pa.field("session_id", pa.int64()),
        pa.field("customer_id", pa.string()),
        pa.field("week_start", pa.date32()),
        pa.field("t_dat", pa.date32()),
        pa.field("event_idx", pa.int32()),
        pa.field("article_id", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("sales_channel_id", pa.int8()),
        pa.field("line", pa.int64()),
        pa.field("session_length", pa.int32()),
        pa.field("is_consecutive_repeat", pa.bool_()),
    ]
)


def week_start_of(day: dt.date, anchor_weekday: int = WEDNESDAY) -> dt.date:
    return day - dt.timedelta(days=(day.weekday() - anchor_weekday) % 7)


def read_delta(spark, lake: Lake, name: str):
    """A Spark DataFrame over the current snapshot of a Delta table written by delta-rs.

    Spark reads the snapshot's Parquet files directly (delta-spark's jars need Maven, which is
    offline here); delta-rs writes no deletion vectors, so the files are the snapshot.
    """
    table = lake.table(name)
    if table.metadata().partition_columns:
        raise ValueError(f"{name}: read_delta supports unpartitioned tables only")
    files = table.file_uris()
    if not files:
        schema = table.schema().to_arrow()
        return spark.createDataFrame([], schema=_spark_schema(pa.schema(schema)))
    return spark.read.parquet(*files)


def _spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def sessionize(transactions, anchor_weekday: int = WEDNESDAY, weeks: tuple[dt.date, dt.date] | None = None):
    """Sessions from clean transactions (a Spark DataFrame); ``weeks`` limits to week starts in [a, b]."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    # Spark's dayofweek: Sunday = 1 ... Saturday = 7; Python's weekday: Monday = 0
    py_weekday = (F.dayofweek("t_dat") + 5) % 7
    week_start = F.date_sub(F.col("t_dat"), ((py_weekday - anchor_weekday + 7) % 7).cast("int"))
    df = transactions.withColumn("week_start", week_start)
    if weeks is not None:
        df = df.where((F.col("week_start") >= F.lit(weeks[0])) & (F.col("week_start") <= F.lit(weeks[1])))
    # Shuffle by week only: every Spark task then holds whole weeks, sorted by (week, customer,
    # day, line), so the week-partitioned write needs no extra sort and writes one file per week.
    df = df.repartition("week_start")
    session = Window.partitionBy("week_start", "customer_id")
    ordered = session.orderBy("t_dat", "line")
    df = (
        df.withColumn("session_id", F.xxhash64("customer_id", "week_start"))
        .withColumn("event_idx", (F.row_number().over(ordered) - 1).cast("int"))
        .withColumn("session_length", F.count(F.lit(1)).over(session).cast("int"))
        .withColumn(
            "is_consecutive_repeat",
            F.coalesce(F.lag("article_id").over(ordered) == F.col("article_id"), F.lit(False)),
        )
    )
    return df.select(*SESSION_SCHEMA.names)


def write_sessions(
    sessions,
    lake: Lake,
    staging_root: str | Path,
    weeks: tuple[dt.date, dt.date] | None = None,
    name: str = SESSIONS_TABLE,
) -> int:
    """Write a sessions DataFrame into the Delta table, replacing the weeks in ``weeks`` (or all),
    as one atomic commit.

    On a local lake Spark writes the Parquet files straight into the table's folder and delta-rs
    commits them as they are (no second pass over the data). For an object-store lake Spark writes
    to a local staging folder and delta-rs streams the files into the table.
    """
    replace = ("week_start", weeks[0].isoformat(), weeks[1].isoformat()) if weeks is not None else None
    started = time.perf_counter()
    if lake.is_local:
        folder = f"spark-{uuid.uuid4().hex}"
        target = Path(lake.uri(name)) / folder
        try:
            sessions.write.mode("errorifexists").partitionBy("week_start").parquet(str(target))
            log.info("spark wrote %s in %.1f s", target, time.perf_counter() - started)
            version = lake.commit_parquet_files(name, folder, SESSION_SCHEMA, ["week_start"], replace=replace)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        for marker in target.rglob("_SUCCESS"):
            marker.unlink()
        return version

    staging = Path(staging_root) / f"sessions-{uuid.uuid4().hex}"
    try:
        sessions.write.mode("overwrite").partitionBy("week_start").parquet(str(staging))
        log.info("spark wrote %s in %.1f s", staging, time.perf_counter() - started)
        fragments = sorted(pds.dataset(str(staging), format="parquet").get_fragments(), key=lambda f: f.path)

        def batches():  # one week directory after another, so the Delta writer fills one partition at a time
            return (
                batch.cast(SESSION_SCHEMA)
                for f in fragments
                for batch in _with_week(f).to_batches(max_chunksize=262_144)
            )

        predicate = None
        if replace is not None and lake.exists(name):
            predicate = f"week_start >= '{replace[1]}' AND week_start <= '{replace[2]}'"
        return lake.write(
            name, batches, schema=SESSION_SCHEMA, partition_by=["week_start"], predicate=predicate
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _with_week(fragment) -> pa.Table:
    """A staged file with its ``week_start`` (kept in the directory name by Spark) as a column."""
    table = fragment.to_table()
    week = dt.date.fromisoformat(fragment.path.split("week_start=")[1].split("/")[0])
    table = table.append_column("week_start", pa.array([week] * table.num_rows, pa.date32()))
    return table.select(SESSION_SCHEMA.names)
