"""The weekly retraining chain as the daemon drives it: each sensor's and the schedule's own
evaluation function against a real (SQLite-backed) Dagster instance, each request executed on it.

A week is appended to the data -> the file sensor starts ingest -> sessionize -> evaluate -> the
champion alias moves to a model trained through the new week; a file with too many bad rows stops
the chain and is recorded with the failing step's error; a ``touch`` starts nothing.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pandas as pd

from hm_recs.profiles import GRU4REC_CHAIN, QUIET, SERVING_CHAIN

# POP and GRU4Rec stand in for every model, to keep the test short: the request's own settings
# (the smoke profile) on a narrower selection
CHAIN_ASSETS = [*GRU4REC_CHAIN, *SERVING_CHAIN]


def _execute(defs, instance, job: str, request: dg.RunRequest, narrow: bool = False):
    assert isinstance(request, dg.RunRequest), request
    config = request.run_config or QUIET
    selection = request.asset_selection
    if narrow:
        selection = [dg.AssetKey(a) for a in CHAIN_ASSETS]
        config = {**config, "ops": {k: v for k, v in config.get("ops", {}).items() if k in CHAIN_ASSETS}}
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        run_config=config,
        tags=request.tags,
        asset_selection=selection,
        raise_on_error=False,
    )


def _status_context(sensor, result, instance, defs):
    """What the daemon hands a run-status (or run-failure) sensor after ``result``'s run."""
    event = result.get_run_success_event() if result.success else result.get_run_failure_event()
    ctx = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        repository_def=defs.get_repository_def(),
    )
    return ctx if result.success else ctx.for_run_failure()


def test_a_new_week_refreshes_the_champion_and_bad_data_stops_the_chain(
    spark, tiny_dataset, tmp_path, monkeypatch
):
    from hm_recs.data.ingest import clean_table_name
    from hm_recs.data.schema import TRANSACTIONS
    from hm_recs.definitions import defs as load_defs
    from hm_recs.defs import automation
    from hm_recs.defs.partitions import WEEKS, week_start
    from hm_recs.defs.resources import HMDataResource, configured_lake
    from hm_recs.paths import default_tracking_uri
    from hm_recs.registry.registry import CHAMPION, RECOMMENDER

    data = tmp_path / "data"
    data.mkdir()
    for name in ("articles.csv", "customers.csv"):
        (data / name).write_bytes((tiny_dataset / name).read_bytes())
    (data / "images").symlink_to(tiny_dataset / "images")
    full = pd.read_csv(tiny_dataset / "transactions_train.csv", dtype=str)
    last_day = dt.date.fromisoformat(full["t_dat"].max())
    new_week = week_start(last_day).isoformat()
    first_file = full[full["t_dat"] < new_week]
    first_file.to_csv(data / "transactions_train.csv", index=False)

    monkeypatch.setenv("HM_DATA_DIR", str(data))
    monkeypatch.setenv("HM_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("HM_PROFILE", "smoke")
    defs = load_defs()
    lake = configured_lake()
    hm_data = {"hm_data": HMDataResource(data_dir=str(data), settle_seconds=0)}
    from mlflow import MlflowClient

    client = MlflowClient(default_tracking_uri(), default_tracking_uri())

    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:

        def cycle(cursor):
            ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=hm_data)
            ingest = _execute(defs, instance, "ingest", automation.new_transaction_files(ctx))
            assert ingest.success
            sessionize = _execute(
                defs,
                instance,
                "sessionize",
                automation.sessionize_after_ingest(
                    _status_context(automation.sessionize_after_ingest, ingest, instance, defs)
                ),
            )
            assert sessionize.success
            request = automation.retrain_after_sessionize(
                _status_context(automation.retrain_after_sessionize, sessionize, instance, defs)
            )
            assert request.tags["hm_recs/profile"] == "smoke" and request.run_config["ops"][
                "gru4rec_model"
            ] == {"config": {"preset": "demo"}}
            evaluate = _execute(defs, instance, "evaluate", request, narrow=True)
            assert evaluate.success
            return ctx.cursor, client.get_model_version_by_alias(RECOMMENDER, CHAMPION)

        cursor, before = cycle(None)
        assert (
            before.tags["trained_before"]
            == (dt.date.fromisoformat(first_file["t_dat"].max()) + dt.timedelta(days=1)).isoformat()
        )
        assert new_week not in instance.get_dynamic_partitions(WEEKS)

        # a first start of the sensor over what is in the lake, and a touch, start nothing
        assert isinstance(
            automation.new_transaction_files(dg.build_sensor_context(instance=instance, resources=hm_data)),
            dg.SkipReason,
        )
        import os

        path = data / "transactions_train.csv"
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        assert isinstance(
            automation.new_transaction_files(
                dg.build_sensor_context(instance=instance, cursor=cursor, resources=hm_data)
            ),
            dg.SkipReason,
        )

        # the new week arrives: the whole chain runs and the champion is trained through it
        full.to_csv(path, index=False)
        cursor, after = cycle(cursor)
        assert new_week in instance.get_dynamic_partitions(WEEKS)
        assert after.version != before.version
        assert after.tags["trained_before"] == (last_day + dt.timedelta(days=1)).isoformat()
        assert after.tags["decision_kind"] in ("refresh", "challenger promoted")
        schedule = automation.weekly_retraining(dg.build_schedule_context(instance=instance))
        assert schedule.tags[automation.RANGE_END] == new_week  # the schedule follows the data too

        # a file with 5 % bad rows: ingest fails on its blocking check, the clean table keeps its
        # version, nothing downstream runs, and the failure is recorded with the step's error
        rows = lake.count(clean_table_name(TRANSACTIONS))
        bad = full.sample(n=len(full) // 20, random_state=0).assign(article_id="0000000000")
        pd.concat([full, bad]).to_csv(path, index=False)
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=hm_data)
        failed = _execute(defs, instance, "ingest", automation.new_transaction_files(ctx))
        assert not failed.success
        assert lake.count(clean_table_name(TRANSACTIONS)) == rows
        # the restore is a new Delta version with the old content: the schedule asks for nothing new
        assert (
            automation.weekly_retraining(dg.build_schedule_context(instance=instance)).run_key
            == schedule.run_key
        )
        automation.record_run_failures(
            _status_context(automation.record_run_failures, failed, instance, defs)
        )
        recorded = lake.read(automation.RUN_FAILURES_TABLE).to_pandas()
        row = recorded[recorded["run_id"] == failed.run_id].iloc[0]
        assert "clean_transactions" in row["message"] and "reject_fraction_below_threshold" in row["message"]
        end = instance.get_run_record_by_id(failed.run_id).end_time
        assert abs(row["failed_at"].timestamp() - end) < 1.0
