"""Sessions: Spark turns the clean transactions into weekly customer sessions; the time split."""

import datetime as dt

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
from dagster import AssetExecutionContext
from dagster_pyspark import PySparkResource

from hm_recs.data.ingest import clean_table_name
from hm_recs.data.schema import TRANSACTIONS
from hm_recs.defs.ingest.assets import clean_transactions
from hm_recs.defs.metadata import checks, table_metadata
from hm_recs.defs.partitions import weekly_partitions
from hm_recs.defs.resources import LakeResource
from hm_recs.reports import markdown_table
from hm_recs.sessions.sessionize import read_delta, sessionize, write_sessions
from hm_recs.sessions.split import SPLITS, TimeSplit
from hm_recs.tables import SESSIONS_TABLE, TIME_SPLIT_TABLE

GROUP = "sessions"


def _week_range(context: AssetExecutionContext) -> tuple[dt.date, dt.date]:
    """First and last week start of the partitions this run materializes."""
    keys = context.partition_key_range
    first, last = dt.date.fromisoformat(keys.start), dt.date.fromisoformat(keys.end)
    return min(first, last), max(first, last)


@dg.asset(
    group_name=GROUP,
    kinds={"spark", "deltalake"},
    deps=[clean_transactions],
    partitions_def=weekly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=checks(
        "sessions",
        no_event_lost="Every clean transaction of the weeks is in exactly one session row",
        session_ids_consistent="One session id per (customer, week), event_idx 0..n-1",
    ),
)
def sessions(
    context: AssetExecutionContext, pyspark: PySparkResource, lake: LakeResource
) -> dg.MaterializeResult:
    """Customer x week sessions (Wednesday to Tuesday), one row per unit bought, ordered by
    (day, source line); Delta table partitioned by ``week_start``. A run can cover a range of weeks
    (a backfill is one Spark job)."""
    lk = lake.open()
    first, last = _week_range(context)
    context.log.info(f"sessionizing weeks {first} .. {last} on {pyspark.spark_config.get('spark.master')}")
    spark = pyspark.spark_session
    frame = sessionize(read_delta(spark, lk, clean_table_name(TRANSACTIONS)), weeks=(first, last))
    version = write_sessions(frame, lk, lake.scratch_dir(), weeks=(first, last))

    week_filter = (pds.field("week_start") >= pa.scalar(first, pa.date32())) & (
        pds.field("week_start") <= pa.scalar(last, pa.date32())
    )
    rows = lk.dataset(SESSIONS_TABLE).to_table(
        columns=["session_id", "customer_id", "week_start", "event_idx", "session_length"], filter=week_filter
    )
    end = last + dt.timedelta(days=6)
    day_filter = (pds.field("t_dat") >= pa.scalar(first, pa.date32())) & (
        pds.field("t_dat") <= pa.scalar(end, pa.date32())
    )
    expected = lk.dataset(clean_table_name(TRANSACTIONS)).count_rows(filter=day_filter)

    n_sessions = pc.count_distinct(rows.column("session_id")).as_py() if rows.num_rows else 0
    pairs = (
        rows.group_by(["customer_id", "week_start"]).aggregate(
            [
                ("session_id", "count_distinct"),
                ("event_idx", "max"),
                ("session_length", "max"),
                ("event_idx", "count"),
            ]
        )
        if rows.num_rows
        else None
    )
    consistent = pairs is None or (
        pc.all(pc.equal(pairs.column("session_id_count_distinct"), 1)).as_py()
        and len(pairs) == n_sessions
        and pc.all(
            pc.equal(pc.add(pairs.column("event_idx_max"), 1), pairs.column("event_idx_count"))
        ).as_py()
        and pc.all(pc.equal(pairs.column("session_length_max"), pairs.column("event_idx_count"))).as_py()
    )
    meta = table_metadata(
        lk, SESSIONS_TABLE, preview_columns=["session_id", "week_start", "t_dat", "event_idx", "article_id"]
    )
    meta.update(
        {
            "weeks": dg.MetadataValue.text(f"{first} .. {last}"),
            "rows_in_weeks": dg.MetadataValue.int(rows.num_rows),
            "sessions_in_weeks": dg.MetadataValue.int(n_sessions),
            "mean_session_length": dg.MetadataValue.float(rows.num_rows / n_sessions if n_sessions else 0.0),
            "delta_version_written": dg.MetadataValue.int(version),
        }
    )
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(
                check_name="no_event_lost",
                passed=rows.num_rows == expected,
                metadata={"session_rows": rows.num_rows, "clean_transactions": expected},
            ),
            dg.AssetCheckResult(
                check_name="session_ids_consistent",
                passed=bool(consistent),
                metadata={"sessions": n_sessions},
            ),
        ],
    )


class TimeSplitConfig(dg.Config):
    test_days: int = 7
    validation_days: int = 7


@dg.asset(
    group_name=GROUP,
    kinds={"deltalake"},
    deps=[sessions],
    check_specs=checks(
        "time_split", every_split_has_data="Training, validation and test each hold transactions"
    ),
)
def time_split(config: TimeSplitConfig, lake: LakeResource) -> dg.MaterializeResult:
    """The Kaggle protocol's time split: last 7 days test, the 7 before validation, earlier training."""
    lk = lake.open()
    data = lk.read(SESSIONS_TABLE, columns=["t_dat", "session_id", "customer_id", "article_id"])
    lo, hi = pc.min_max(data.column("t_dat")).values()
    split = TimeSplit.from_dates(lo.as_py(), hi.as_py(), config.test_days, config.validation_days)
    rows = []
    for name in SPLITS:
        start, end = split.window(name)
        part = data.filter(
            (pc.field("t_dat") >= pa.scalar(start, pa.date32()))
            & (pc.field("t_dat") <= pa.scalar(end, pa.date32()))
        )
        rows.append(
            {
                "split": name,
                "start": start,
                "end": end,
                "transactions": part.num_rows,
                "sessions": pc.count_distinct(part.column("session_id")).as_py(),
                "customers": pc.count_distinct(part.column("customer_id")).as_py(),
                "articles": pc.count_distinct(part.column("article_id")).as_py(),
            }
        )
    table = pa.Table.from_pylist(rows)
    lk.write(TIME_SPLIT_TABLE, table)
    meta = table_metadata(lk, TIME_SPLIT_TABLE, preview_rows=0)
    meta["split"] = dg.MetadataValue.md(markdown_table(table))
    meta.update({f"{k}": dg.MetadataValue.text(v) for k, v in split.to_dict().items()})
    empty = [r["split"] for r in rows if r["transactions"] == 0]
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(
                check_name="every_split_has_data",
                passed=not empty,
                metadata={"empty_splits": ", ".join(empty) or "none"},
            )
        ],
    )
