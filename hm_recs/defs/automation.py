"""Scheduled retraining and sensors. All start STOPPED: switch them on in the UI (Automation).

* ``new_transaction_files`` -- a transactions file whose content differs from what was last
  ingested (size and SHA-256, recorded in ``ops/ingested_files``) starts ``ingest`` once its size
  has been stable for ``hm_data.settle_seconds``; a first start or a ``touch`` starts nothing;
* ``sessionize_after_ingest`` -- a successful ``ingest`` sessionizes the last two weeks of the data
  (and every older week never sessionized: after a first ingest, all of them);
* ``weekly_retraining`` -- Wednesdays 06:00 UTC, the same for what was ingested (weeks of the data,
  not of the calendar), once per content of the clean transactions (last day, rows);
* ``retrain_after_sessionize`` -- a successful ``sessionize`` starts ``evaluate`` with the configured
  run profile (split, retraining, evaluation, comparison, promotion, recommendations);
* ``record_run_failures`` -- every failed run becomes a row of the ``ops/run_failures`` Delta table
  with the failing steps' errors and the run's own end time.

A file with too many rejected rows fails its blocking check in ``ingest``: the run fails, the clean
table keeps its previous version, and neither sensor nor schedule takes the chain further.
"""

import datetime as dt
import hashlib
import json
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa

from hm_recs.defs.jobs import PROFILE, evaluate_job, ingest_job, sessionize_job
from hm_recs.defs.partitions import week_keys_covering
from hm_recs.defs.resources import HMDataResource, configured_lake
from hm_recs.profiles import run_config
from hm_recs.tables import RUN_FAILURES_TABLE

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
STOPPED = dg.DefaultSensorStatus.STOPPED


def last_ingested_day(lake) -> tuple[dt.date, int] | None:
    """The last day of the clean transactions and their row count (None before any ingest)."""
    import pyarrow.compute as pc

    from hm_recs.data.ingest import clean_table_name
    from hm_recs.data.schema import TRANSACTIONS

    name = clean_table_name(TRANSACTIONS)
    if not lake.exists(name):
        return None
    days = lake.read(name, columns=["t_dat"]).column(0)
    return (pc.max(days).as_py(), len(days)) if len(days) else None


def weeks_to_sessionize(last_day: dt.date, unsessionized: list[str] = ()) -> tuple[str, str]:
    """From the oldest week never sessionized (a first ingest: all of them) or else the week before
    the last day's (a late file can touch both), to the week of the last day of data."""
    first, last = week_keys_covering(last_day - dt.timedelta(days=7), last_day)
    return min([first, *unsessionized]), last


def sessionize_request(lake, instance, key_prefix: str) -> dg.RunRequest | dg.SkipReason:
    """Sessionize the weeks of what was ingested that need it (one Spark run)."""
    from hm_recs.defs.partitions import WEEKS

    found = last_ingested_day(lake)
    if found is None:
        return dg.SkipReason("no clean transactions yet: ingest first")
    done = instance.get_materialized_partitions(dg.AssetKey("sessions"))
    missing = [
        k for k in instance.get_dynamic_partitions(WEEKS) if k not in done and k <= found[0].isoformat()
    ]
    first_key, last_key = weeks_to_sessionize(found[0], missing)
    return dg.RunRequest(
        run_key=f"{key_prefix}-{first_key}-{last_key}-{found[0]}-{found[1]}rows",
        tags={RANGE_START: first_key, RANGE_END: last_key},
    )


@dg.schedule(
    job=sessionize_job,
    cron_schedule="0 6 * * 3",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Wednesdays: sessionize the last two weeks of the ingested data (once per content of the "
    "clean "
    "transactions); retrain_after_sessionize takes it from there",
)
def weekly_retraining(context: dg.ScheduleEvaluationContext):
    return sessionize_request(configured_lake(), context.instance, "weekly")


def evaluate_request(trigger: str, profile: str = PROFILE) -> dg.RunRequest:
    """The evaluate job with the profile it was built with (its launchpad default, spelled out)."""
    return dg.RunRequest(
        run_key=f"after-{trigger}",
        run_config=run_config(profile),
        tags={"hm_recs/trigger": trigger, "hm_recs/profile": profile},
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[sessionize_job],
    request_job=evaluate_job,
    default_status=STOPPED,
    description=(
        "After new weeks are sessionized: retrain, evaluate, compare, promote, recommend (run "
        f"profile {PROFILE})"
    ),
)
def retrain_after_sessionize(context: dg.RunStatusSensorContext):
    return evaluate_request(context.dagster_run.run_id)


TRANSACTION_FILES = ("transactions_train.csv", "transactions_train.csv.gz", "transactions_train.parquet")


def transaction_files(data_dir: str) -> list[Path]:
    """The transaction files in the data folder."""
    folder = Path(data_dir)
    if not folder.exists():
        return []
    found = [folder / n for n in TRANSACTION_FILES if (folder / n).exists()]
    return list(dict.fromkeys(found + sorted(folder.glob("transactions_*.csv"))))


def files_to_ingest(
    files: list[Path], seen: dict, ingested: dict[str, str], settle_seconds: float, now: float
):
    """(changed, waiting, seen): files whose content differs from what was ingested, files whose
    size has not yet been stable for ``settle_seconds``, and the updated record of what the sensor
    saw (size, since when, stat and the fingerprint of that stat, so unchanged files are not hashed
    again)."""
    from hm_recs.data.ingest import file_fingerprint

    changed, waiting, out = [], [], {}
    for path in files:
        st = path.stat()
        stat = f"{st.st_size}:{st.st_mtime_ns}"
        prev = seen.get(path.name, {})
        entry = dict(prev) if prev.get("size") == st.st_size else {"size": st.st_size, "since": now}
        out[path.name] = entry
        if now - entry["since"] < settle_seconds:
            waiting.append(path.name)
            continue
        if entry.get("stat") != stat or "fingerprint" not in entry:
            entry.update(stat=stat, fingerprint=file_fingerprint(path))
        if ingested.get(path.name) != entry["fingerprint"]:
            changed.append(path.name)
    return changed, waiting, out


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=60,
    default_status=STOPPED,
    description="A transactions file with new content (not a touch, not what was already ingested) starts "
    "ingest "
    "once its size is stable",
)
def new_transaction_files(context: dg.SensorEvaluationContext, hm_data: HMDataResource):
    from hm_recs.data.ingest import ingested_fingerprints

    files = transaction_files(hm_data.data_dir)
    if not files:
        return dg.SkipReason(f"no transactions file in {hm_data.data_dir}")
    seen = json.loads(context.cursor) if context.cursor else {}
    changed, waiting, seen = files_to_ingest(
        files, seen, ingested_fingerprints(configured_lake()), hm_data.settle_seconds, time.time()
    )
    context.update_cursor(json.dumps(seen, sort_keys=True))
    if changed:
        key = hashlib.sha256(json.dumps([[n, seen[n]["fingerprint"]] for n in changed]).encode()).hexdigest()[
            :16
        ]
        return dg.RunRequest(run_key=key, tags={"hm_recs/files": ",".join(changed)})
    if waiting:
        return dg.SkipReason(
            f"waiting until {', '.join(waiting)} keeps its size for {hm_data.settle_seconds} s"
        )
    return dg.SkipReason("the transaction files hold what was already ingested")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_job],
    request_job=sessionize_job,
    default_status=STOPPED,
    description="After ingest: sessionize the last two weeks of data",
)
def sessionize_after_ingest(context: dg.RunStatusSensorContext):
    return sessionize_request(configured_lake(), context.instance, f"after-{context.dagster_run.run_id}")


def record_failure(lake, run_id: str, job: str, message: str, when: dt.datetime | None = None) -> None:
    """Append one failed run to ``ops/run_failures``."""
    row = {
        "run_id": run_id,
        "job": job,
        "failed_at": (when or dt.datetime.now(dt.UTC)).replace(tzinfo=None),
        "message": message[:4000],
    }
    lake.write(RUN_FAILURES_TABLE, pa.Table.from_pylist([row]), mode="append")


def failure_message(summary: str, step_errors: list[tuple[str, str]]) -> str:
    """The failing steps' errors first (what an operator needs), then Dagster's run summary."""
    steps = "\n".join(f"step {key}: {error}" for key, error in step_errors)
    return f"{steps}\n{summary}".strip() if steps else summary


def run_end_time(instance, run_id: str) -> dt.datetime | None:
    """When the run itself ended (not when the sensor noticed)."""
    record = instance.get_run_record_by_id(run_id)
    if record is not None and record.end_time:
        return dt.datetime.fromtimestamp(record.end_time, dt.UTC)
    stats = instance.get_run_stats(run_id)
    return dt.datetime.fromtimestamp(stats.end_time, dt.UTC) if stats.end_time else None


@dg.run_failure_sensor(
    default_status=STOPPED,
    description="Record every failed run, with its failing steps' errors, in ops/run_failures",
)
def record_run_failures(context: dg.RunFailureSensorContext):
    errors = []
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error
        errors.append((event.step_key, error.to_string().strip() if error else event.message or ""))
    message = failure_message(context.failure_event.message or "", errors)
    run_id = context.dagster_run.run_id
    record_failure(
        configured_lake(),
        run_id,
        context.dagster_run.job_name,
        message,
        run_end_time(context.instance, run_id),
    )
    context.log.warning(f"run {run_id} of {context.dagster_run.job_name} failed: {message[:200]}")
