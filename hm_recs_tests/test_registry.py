"""MLflow tracking, the pyfunc recommender, champion promotion, the submission file and automation."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from hm_recs.registry.registry import (
    CHALLENGER,
    CHAMPION,
    RECOMMENDER,
    Candidate,
    load_champion,
    promote,
    register_model,
)
from hm_recs.registry.tracking import TrackingSettings, tracked_run


@pytest.fixture
def tracking(tmp_path) -> TrackingSettings:
    return TrackingSettings(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))


def test_runs_end_finished_or_failed_never_running(tracking):
    with tracked_run(tracking, "ok", {"dagster.run_id": "r1"}) as run:
        run.log_params({"a": 1, "nested": {"b": [1, 2]}})
        run.log_curve("loss", [3.0, 2.0, 1.0])
    with pytest.raises(RuntimeError), tracked_run(tracking, "boom") as failed:
        raise RuntimeError("forced failure")
    client = tracking.client()
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert client.get_run(run.run_id).data.params["nested.b"] == "[1, 2]"
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [3.0, 2.0, 1.0]
    info = client.get_run(failed.run_id)
    assert info.info.status == "FAILED" and "forced failure" in info.data.tags["error"]


ARTICLES = pd.DataFrame({"article_idx": range(20), "article_id": [f"01080{i:05d}" for i in range(20)]})
HISTORIES = pd.DataFrame({"customer_id": ["a" * 64, "b" * 64], "history": [np.array([3, 4], np.int32), np.array([5], np.int32)]})


def _popularity_version(tracking, tmp_path, ranking, name="hm_recs_pop_test"):
    from hm_recs.registry.pyfunc import (
        RecommenderPyfunc,
        recommender_signature,
        save_pyfunc,
        write_recommender_bundle,
    )

    np.save(tmp_path / "ranking.npy", np.asarray(ranking))
    bundle = write_recommender_bundle(tmp_path / "bundle", "popularity", ARTICLES, HISTORIES, np.arange(19, -1, -1), {"variant": "all_time"},
                                      {"ranking.npy": tmp_path / "ranking.npy"})
    folder = save_pyfunc(RecommenderPyfunc(), {"bundle": str(bundle)}, recommender_signature(), tmp_path / "model")
    with tracked_run(tracking, "train") as run:
        return register_model(run, folder, name)


def test_pyfunc_from_the_registry_predicts_valid_distinct_articles(tracking, tmp_path):
    version = _popularity_version(tracking, tmp_path, [2, 2, 7])  # a short list with a duplicate
    promote(tracking, Candidate("pop_test", version.name, version.version, 0.1, "2020-09-09"), "MAP@12", 0.02)
    model = load_champion(tracking)
    out = model.predict(pd.DataFrame({"customer_id": ["a" * 64, "unknown"]}))
    assert list(out.columns) == ["customer_id", "prediction"]
    for row in out["prediction"].str.split():
        assert len(row) == 12 and len(set(row)) == 12 and set(row) <= set(ARTICLES["article_id"])
    # the model's list first, then the fallback (descending article_idx here)
    assert out["prediction"].iloc[0].split()[:3] == ["0108000002", "0108000007", "0108000019"]
    assert len(model.predict(pd.DataFrame({"customer_id": ["a" * 64]}), params={"k": 5})["prediction"].iloc[0].split()) == 5


def test_champion_moves_only_when_the_margin_is_met(tracking, tmp_path):
    v = _popularity_version(tracking, tmp_path, [1, 2, 3])
    client = tracking.client()

    def round_(score):
        return promote(tracking, Candidate("pop_test", v.name, v.version, score, "2020-09-09"), "MAP@12", 0.02)

    first = round_(0.0200)
    assert first.promoted and first.reason == "no champion yet"
    second = round_(0.0203)  # +1.5 %: below the 2 % margin
    assert not second.promoted
    assert client.get_model_version_by_alias(RECOMMENDER, CHAMPION).version == first.version
    assert client.get_model_version_by_alias(RECOMMENDER, CHALLENGER).version == second.version
    assert client.get_model_version(RECOMMENDER, second.version).tags["status"] == CHALLENGER
    third = round_(0.0210)  # +5 %
    assert third.promoted
    assert client.get_model_version_by_alias(RECOMMENDER, CHAMPION).version == third.version
    assert client.get_model_version(RECOMMENDER, first.version).tags["status"] == "retired"


def test_submission_has_every_customer_in_kaggle_format(tmp_path):
    from hm_recs.registry.serving import write_submission

    ids = ["c" * 64, "d" * 64]
    preds = pd.DataFrame({"customer_id": ids[::-1], "prediction": [" ".join(["0108000001"] * 12)] * 2})
    path = write_submission(preds, ids, tmp_path / "submission.csv")
    assert path.read_text().splitlines()[0] == "customer_id,prediction"
    assert pd.read_csv(path, dtype=str)["customer_id"].tolist() == ids
    with pytest.raises(ValueError, match="no prediction"):
        write_submission(preds.head(1), ids, tmp_path / "x.csv")


def test_weekly_schedule_targets_the_week_that_just_ended():
    from hm_recs.definitions import defs

    schedule = defs().resolve_schedule_def("weekly_retraining")
    assert schedule.cron_schedule == "0 6 * * 3"  # Wednesdays, after the Wednesday-to-Tuesday week closed
    ctx = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2020, 9, 16, 6, 0, tzinfo=dt.UTC))
    requests = list(schedule.evaluate_tick(ctx).run_requests)
    assert [r.partition_key for r in requests] == ["2020-09-09"]


def test_new_file_sensor_fires_once_per_change(tmp_path):
    from hm_recs.defs.automation import new_transaction_files
    from hm_recs.defs.resources import HMDataResource

    res = {"hm_data": HMDataResource(data_dir=str(tmp_path))}
    ctx = dg.build_sensor_context(resources=res)
    assert isinstance(new_transaction_files(ctx), dg.SkipReason)
    (tmp_path / "transactions_train.csv").write_text("t_dat,customer_id,article_id,price,sales_channel_id\n")
    first = new_transaction_files(ctx)
    assert isinstance(first, dg.RunRequest)
    again = dg.build_sensor_context(cursor=ctx.cursor, resources=res)
    assert isinstance(new_transaction_files(again), dg.SkipReason)


def test_failures_are_recorded(tmp_path):
    from hm_recs.data.delta import Lake
    from hm_recs.defs.automation import RUN_FAILURES_TABLE, record_failure

    lake = Lake(str(tmp_path / "lake"))
    record_failure(lake, "run-1", "evaluate", "boom")
    record_failure(lake, "run-2", "ingest", "bad file")
    rows = lake.read(RUN_FAILURES_TABLE).to_pandas().sort_values("run_id")
    assert rows["run_id"].tolist() == ["run-1", "run-2"] and rows["job"].tolist() == ["evaluate", "ingest"]


def test_two_processes_can_start_on_a_fresh_sqlite_store(tmp_path):
    """Two Dagster steps may open the local store at once: the first creates it, both log a run."""
    import subprocess
    import sys

    script = (
        "import sys; from hm_recs.registry.tracking import TrackingSettings, tracked_run\n"
        "s = TrackingSettings(sys.argv[1], sys.argv[2])\n"
        "with tracked_run(s, sys.argv[3]) as r: r.log_params({'p': sys.argv[3]})\n"
    )
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", script, uri, str(tmp_path / "artifacts"), f"step{i}"], stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    client = TrackingSettings(uri).client()
    runs = client.search_runs([client.get_experiment_by_name("hm_recs").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["step0", "step1"] and {r.info.status for r in runs} == {"FINISHED"}
