"""Scheduled retraining and sensors. All start STOPPED: switch them on in the UI (Automation).

* ``weekly_retraining`` -- Wednesdays 06:00 UTC, sessionizes the week that ended on Tuesday;
* ``retrain_after_sessionize`` -- a successful ``sessionize`` run starts ``evaluate`` (split,
  retraining, evaluation, comparison, promotion, recommendations);
* ``new_transaction_files`` -- a new or changed transactions file in the data folder starts
  ``ingest``; ``sessionize_after_ingest`` then sessionizes the weeks the data ends in;
* ``record_run_failures`` -- every failed run becomes a row of the ``ops/run_failures`` Delta table.
"""

import datetime as dt
import hashlib
import json
from pathlib import Path

import dagster as dg
import pyarrow as pa

from hm_recs.defs.jobs import evaluate_job, ingest_job, sessionize_job
from hm_recs.defs.partitions import week_keys_covering, weekly_partitions
from hm_recs.defs.resources import HMDataResource, configured_lake

RUN_FAILURES_TABLE = "ops/run_failures"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
STOPPED = dg.DefaultSensorStatus.STOPPED

weekly_retraining = dg.build_schedule_from_partitioned_job(
    sessionize_job,
    name="weekly_retraining",
    hour_of_day=6,
    description="Sessionize the week that ended on Tuesday; retrain_after_sessionize takes it from there",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[sessionize_job], request_job=evaluate_job, default_status=STOPPED,
    description="After new weeks are sessionized: retrain, evaluate, compare, promote, recommend",
)
def retrain_after_sessionize(context: dg.RunStatusSensorContext):
    return dg.RunRequest(run_key=f"after-{context.dagster_run.run_id}", tags={"hm_recs/trigger": context.dagster_run.run_id})


TRANSACTION_FILES = ("transactions_train.csv", "transactions_train.csv.gz", "transactions_train.parquet")


def transaction_files_state(data_dir: str) -> dict[str, str]:
    """Size and modification time of the transaction files in the data folder."""
    folder = Path(data_dir)
    found = [folder / n for n in TRANSACTION_FILES if (folder / n).exists()]
    found += sorted(folder.glob("transactions_*.csv")) if folder.exists() else []
    return {p.name: f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in dict.fromkeys(found)}


@dg.sensor(job=ingest_job, minimum_interval_seconds=300, default_status=STOPPED, description="A new or changed transactions file starts ingest")
def new_transaction_files(context: dg.SensorEvaluationContext, hm_data: HMDataResource):
    state = transaction_files_state(hm_data.data_dir)
    if not state:
        return dg.SkipReason(f"no transactions file in {hm_data.data_dir}")
    encoded = json.dumps(state, sort_keys=True)
    if context.cursor == encoded:
        return dg.SkipReason("transaction files unchanged")
    context.update_cursor(encoded)
    return dg.RunRequest(run_key=hashlib.sha256(encoded.encode()).hexdigest()[:16], tags={"hm_recs/files": ",".join(state)})


def weeks_to_sessionize(last_day: dt.date) -> tuple[str, str]:
    """The week holding the last day of data and the one before it (a late file can touch both)."""
    return week_keys_covering(weekly_partitions, last_day - dt.timedelta(days=7), last_day)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[ingest_job], request_job=sessionize_job, default_status=STOPPED,
    description="After ingest: sessionize the last two weeks of data",
)
def sessionize_after_ingest(context: dg.RunStatusSensorContext):
    import pyarrow.compute as pc

    from hm_recs.data.ingest import clean_table_name
    from hm_recs.data.schema import TRANSACTIONS

    lake = configured_lake()
    last = pc.max(lake.read(clean_table_name(TRANSACTIONS), columns=["t_dat"]).column(0)).as_py()
    first_key, last_key = weeks_to_sessionize(last)
    return dg.RunRequest(run_key=f"after-{context.dagster_run.run_id}", tags={RANGE_START: first_key, RANGE_END: last_key})


def record_failure(lake, run_id: str, job: str, message: str, when: dt.datetime | None = None) -> None:
    """Append one failed run to ``ops/run_failures``."""
    row = {"run_id": run_id, "job": job, "failed_at": (when or dt.datetime.now(dt.UTC)).replace(tzinfo=None), "message": message[:4000]}
    lake.write(RUN_FAILURES_TABLE, pa.Table.from_pylist([row]), mode="append")


@dg.run_failure_sensor(default_status=STOPPED, description="Record every failed run in the ops/run_failures Delta table")
def record_run_failures(context: dg.RunFailureSensorContext):
    message = context.failure_event.message or ""
    record_failure(configured_lake(), context.dagster_run.run_id, context.dagster_run.job_name, message)
    context.log.warning(f"run {context.dagster_run.run_id} of {context.dagster_run.job_name} failed: {message[:200]}")
