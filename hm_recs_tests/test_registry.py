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
    # the experiment says what it holds and opens on its runs (not the GenAI traces view)
    tags = client.get_experiment(tracking.experiment_id()).tags
    assert (
        tags["mlflow.experimentKind"] == "custom_model_development"
        and "test_MAP_at_12" in tags["mlflow.note.content"]
    )


def test_runs_of_a_killed_dagster_run_are_closed_by_the_next_one(tracking):
    from hm_recs.registry.tracking import close_orphaned_runs

    client = tracking.client()
    dead = client.create_run(
        tracking.experiment_id(), tags={"dagster.run_id": "dead"}
    ).info.run_id  # kill -9: never ended
    live = client.create_run(tracking.experiment_id(), tags={"dagster.run_id": "live"}).info.run_id
    mine = client.create_run(tracking.experiment_id(), tags={"dagster.run_id": "me"}).info.run_id
    assert close_orphaned_runs(tracking, lambda r: r == "live", current="me") == [dead]
    assert (
        client.get_run(dead).info.status == "KILLED"
        and "no longer running" in client.get_run(dead).data.tags["error"]
    )
    assert client.get_run(live).info.status == "RUNNING" and client.get_run(mine).info.status == "RUNNING"


def test_the_local_instance_keeps_everything_under_dagster_home(tmp_path, monkeypatch):
    from hm_recs.demo import ensure_dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = ensure_dagster_home()
    (home / "dagster.yaml").write_text((home / "dagster.yaml").read_text() + "# edited\n")
    ensure_dagster_home()
    assert (home / "dagster.yaml").read_text().endswith("# edited\n")  # an edited config is kept
    with dg.DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled and instance.get_settings("freshness")["enabled"]
        assert str(instance.storage_directory()).startswith(str(home))
        assert str(instance.compute_log_manager._base_dir).startswith(str(home))
        limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
        assert {"key": "hm_recs/writes", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    from hm_recs.definitions import defs

    assert {defs().resolve_job_def(j).tags["hm_recs/writes"] for j in ("ingest", "sessionize")} == {
        "ingest",
        "sessions",
    }


ARTICLES = pd.DataFrame({"article_idx": range(20), "article_id": [f"01080{i:05d}" for i in range(20)]})
HISTORIES = pd.DataFrame(
    {"customer_id": ["a" * 64, "b" * 64], "history": [np.array([3, 4], np.int32), np.array([5], np.int32)]}
)


def _popularity_version(tracking, tmp_path, ranking, name="hm_recs_pop_test"):
    from hm_recs.registry.pyfunc import (
        RecommenderPyfunc,
        recommender_signature,
        save_pyfunc,
        write_recommender_bundle,
    )

    np.save(tmp_path / "ranking.npy", np.asarray(ranking))
    bundle = write_recommender_bundle(
        tmp_path / "bundle",
        "popularity",
        ARTICLES,
        HISTORIES,
        np.arange(19, -1, -1),
        {"variant": "all_time"},
        {"ranking.npy": tmp_path / "ranking.npy"},
    )
    folder = save_pyfunc(
        RecommenderPyfunc(), {"bundle": str(bundle)}, recommender_signature(), tmp_path / "model"
    )
    with tracked_run(tracking, "train") as run:
        return register_model(run, folder, name, tags={"kind": "popularity"})


def test_pyfunc_from_the_registry_predicts_valid_distinct_articles(tracking, tmp_path):
    version = _popularity_version(tracking, tmp_path, [2, 2, 7])  # a short list with a duplicate
    promote(tracking, Candidate("pop_test", version.name, version.version, 0.1, "2020-09-09"), "MAP@12", 0.02)
    model = load_champion(tracking)
    out = model.predict(pd.DataFrame({"customer_id": ["a" * 64, "e" * 64]}))
    assert list(out.columns) == ["customer_id", "prediction", "source", "ignored_history_ids"]
    assert out["source"].tolist() == ["model", "fallback: unknown customer"]
    for row in out["prediction"].str.split():
        assert len(row) == 12 and len(set(row)) == 12 and set(row) <= set(ARTICLES["article_id"])
    # the model's list first, then the fallback (descending article_idx here)
    assert out["prediction"].iloc[0].split()[:3] == ["0108000002", "0108000007", "0108000019"]
    assert (
        len(
            model.predict(pd.DataFrame({"customer_id": ["a" * 64]}), params={"k": 5})["prediction"]
            .iloc[0]
            .split()
        )
        == 5
    )


def test_a_registered_model_is_a_logged_model_with_its_metrics_and_input_datasets(tracking, tmp_path):
    """MLflow 3: the experiment's Models tab lists every trained model with the metrics linked to it,
    and each run's Datasets name the Delta tables (URI and version) it read."""
    from hm_recs.registry.tracking import TrackedRun

    version = _popularity_version(tracking, tmp_path, [2, 7])
    client = tracking.client()
    logged = client.search_logged_models([tracking.experiment_id()])
    assert (
        len(logged) == 1 and str(logged[0].status).endswith("READY") and logged[0].model_type == "popularity"
    )
    # the registered version points at the logged model (the registry page links to it)
    model_id = logged[0].model_id
    assert logged[0].source_run_id == version.run_id and version.source == f"models:/{model_id}"
    assert '"name": "hm_recs_pop_test"' in logged[0].tags["mlflow.modelVersions"]
    run = TrackedRun(tracking, version.run_id)
    run.log_metrics({"test_MAP_at_12": 0.03}, model_id=run.model_id())
    assert {m.key: m.value for m in client.get_logged_model(model_id).metrics} == {"test_MAP_at_12": 0.03}
    run.log_inputs({"clean/transactions": ("/lake/clean/transactions", 4)})
    (dataset,) = client.get_run(version.run_id).inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest, dataset.dataset.source_type) == (
        "clean/transactions",
        "v4",
        "delta_table",
    )
    assert '"delta_table_version": 4' in dataset.dataset.source and dataset.tags[0].value == "training"


def test_bad_requests_get_a_clear_error_and_fallbacks_say_so(tracking, tmp_path):
    from mlflow.exceptions import MlflowException

    version = _popularity_version(tracking, tmp_path, [2, 7])
    promote(tracking, Candidate("pop_test", version.name, version.version, 0.1, "2020-09-09"), "MAP@12", 0.02)
    model = load_champion(tracking)
    for k, words in ((0, "from 1 to 20"), (21, "from 1 to 20"), (-3, "from 1 to 20")):
        with pytest.raises(MlflowException, match=words):
            model.predict(pd.DataFrame({"customer_id": ["a" * 64]}), params={"k": k})
    # {"inputs": {"customer_id": [[id]]}}: MLflow's string column turns the list into "['...']"
    with pytest.raises(MlflowException, match="row 1: customer_id must be 64 lowercase hex"):
        model.predict(pd.DataFrame({"customer_id": ["a" * 64, str(["b" * 64])]}))
    with pytest.raises(ValueError, match="row 0: customer_id must be one string, got list"):
        model.unwrap_python_model().recommender.predict_frame(pd.DataFrame({"customer_id": [["b" * 64]]}))
    out = model.unwrap_python_model().recommender.predict_frame(
        pd.DataFrame(
            {
                "customer_id": ["a" * 64, None, "c" * 64, "d" * 64],
                "history": [None, None, ["0108000003", "9999999999"], ["9999999999"]],
            }
        )
    )
    assert out["source"].tolist() == [
        "model",
        "fallback: no customer_id",
        "model",
        "fallback: no usable history",
    ]
    assert out["ignored_history_ids"].tolist() == ["", "", "9999999999", "9999999999"]
    assert out["prediction"].iloc[2].split()[0] == "0108000002"  # the model's list, not the fallback


def test_the_ranker_serves_its_weekly_lists_and_says_when_a_history_is_not_used(tracking, tmp_path):
    """A ranker bundle through MLflow: a listed customer gets its ranked list (filled from the
    fallback), a customer without a list the fallback, a given history does not change the list."""
    from hm_recs.registry.pyfunc import (
        RecommenderPyfunc,
        load_bundle_recommender,
        recommender_signature,
        save_pyfunc,
        write_recommender_bundle,
    )

    lists = pd.DataFrame(
        {
            "customer_idx": [0, 0, 0],
            "customer_id": ["a" * 64] * 3,
            "article_idx": [9, 4, 11],
            "rank": [0, 1, 2],
        }
    )
    lists.to_parquet(tmp_path / "lists.parquet", index=False)
    bundle = write_recommender_bundle(
        tmp_path / "bundle",
        "ranker",
        ARTICLES,
        HISTORIES,
        np.arange(19, -1, -1),
        {"objective": "binary"},
        {"lists.parquet": tmp_path / "lists.parquet"},
    )
    folder = save_pyfunc(
        RecommenderPyfunc(), {"bundle": str(bundle)}, recommender_signature(), tmp_path / "m"
    )
    with tracked_run(tracking, "train") as run:
        version = register_model(run, folder, "hm_recs_ranker", tags={"kind": "ranker"})
    promote(tracking, Candidate("ranker", version.name, version.version, 0.1, "2020-09-09"), "MAP@12", 0.02)
    out = load_champion(tracking).predict(
        pd.DataFrame(
            {
                "customer_id": ["a" * 64, "b" * 64, "a" * 64, "e" * 64],
                "history": [None, None, ["0108000003"], None],
            }
        )
    )
    first = out["prediction"].str.split().tolist()
    assert first[0][:4] == ["0108000009", "0108000004", "0108000011", "0108000019"]  # then the fallback
    assert first[2] == first[0] and all(len(set(r)) == 12 for r in first)
    assert first[1][:2] == ["0108000019", "0108000018"]
    assert out["source"].tolist() == [
        "model",
        "fallback: no ranked list for this customer",
        "model: this week's ranked list (the given history is not used)",
        "fallback: unknown customer",
    ]
    # the same bundle on the shared protocol (the champion's rescoring): lists by customer_idx
    rec = load_bundle_recommender(bundle)
    assert rec.recommend(np.array([0, 1]), None, None, 2).tolist() == [[9, 4], [19, 18]]


def test_champion_moves_only_when_the_margin_is_met(tracking, tmp_path):
    v = _popularity_version(tracking, tmp_path, [1, 2, 3])
    client = tracking.client()

    def round_(score):
        return promote(
            tracking, Candidate("pop_test", v.name, v.version, score, "2020-09-09"), "MAP@12", 0.02
        )

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


def test_a_refit_of_the_champion_family_refreshes_it_and_a_challenger_needs_the_margin(tracking, tmp_path):
    from hm_recs.registry.registry import Standing, decide

    champion = Standing("gru4rec_warm", "hm_recs_gru4rec", 0.0400, "2020-09-16")

    def cand(family, score, before):
        return Candidate("x", family, "1", score, "2020-09-16", before)

    # the same family on one more week ties with the champion: a refresh, not a challenger
    assert decide(cand("hm_recs_gru4rec", 0.0400, "2020-09-23"), champion, 0.02, 0.25)[:2] == (
        True,
        "refresh",
    )
    assert decide(cand("hm_recs_gru4rec", 0.0310, "2020-09-23"), champion, 0.02, 0.25)[:2] == (
        True,
        "refresh",
    )
    assert decide(cand("hm_recs_gru4rec", 0.0290, "2020-09-23"), champion, 0.02, 0.25)[:2] == (
        False,
        "refit held back",
    )
    # the same family on the same data is a retrain, which needs the margin like any other model
    assert decide(cand("hm_recs_gru4rec", 0.0401, "2020-09-16"), champion, 0.02, 0.25)[:2] == (
        False,
        "challenger",
    )
    assert decide(cand("hm_recs_pop_time_decay", 0.0405, "2020-09-23"), champion, 0.02, 0.25)[:2] == (
        False,
        "challenger",
    )
    assert decide(cand("hm_recs_pop_time_decay", 0.0410, "2020-09-23"), champion, 0.02, 0.25)[:2] == (
        True,
        "challenger promoted",
    )
    assert decide(cand("hm_recs_pop_time_decay", 0.01, ""), None, 0.02, 0.25)[:2] == (True, "first")

    # through the registry: the refit's training cutoff and the decision land on the served version
    v = _popularity_version(tracking, tmp_path, [1, 2, 3])
    client = tracking.client()
    client.set_model_version_tag(v.name, v.version, "trained_before", "2020-09-16")
    first = promote(tracking, Candidate("pop_test", v.name, v.version, 0.02, "2020-09-09"), "MAP@12", 0.02)
    (tmp_path / "w").mkdir()
    w = _popularity_version(tracking, tmp_path / "w", [1, 2, 3])
    client.set_model_version_tag(w.name, w.version, "trained_before", "2020-09-23")
    refit = promote(tracking, Candidate("pop_test", w.name, w.version, 0.0199, "2020-09-16"), "MAP@12", 0.02)
    assert first.kind == "first" and refit.promoted and refit.kind == "refresh"
    served = client.get_model_version_by_alias(RECOMMENDER, CHAMPION)
    assert served.version == refit.version and served.tags["trained_before"] == "2020-09-23"
    assert (
        served.tags["decision_kind"] == "refresh" and "refit of hm_recs_pop_test" in served.tags["decision"]
    )


def test_run_profiles_choose_by_machine_and_narrow_the_evaluate_job(monkeypatch):
    from hm_recs.profiles import executor_config, narrowed, resolve_profile, run_config, selected_assets
    from hm_recs.settings import configured_profile

    assert resolve_profile("auto", gpu=True) == "paper" and resolve_profile("auto", gpu=False) == "demo"
    assert resolve_profile("CPU", gpu=True) == "cpu"
    with pytest.raises(ValueError, match="HM_PROFILE='gpu-huge' is not a run profile"):
        resolve_profile("gpu-huge", gpu=False)
    monkeypatch.setenv("HM_PROFILE", "smoke")
    assert configured_profile() == "smoke"
    keys = ["time_split", "bart_model_semantic_id", "bart_model_text_small", "bart_evaluation"]
    demo = run_config("demo")
    assert selected_assets(demo, keys) == ["time_split", "bart_model_semantic_id", "bart_evaluation"]
    assert "bart_model_text_small" not in narrowed(demo, selected_assets(demo, keys))["ops"]
    assert selected_assets(run_config("paper"), keys) is None
    assert executor_config("demo") is None  # CPU profiles: every step in the run's process, one after another
    assert executor_config("paper")["tag_concurrency_limits"] == [
        {"key": "hm_recs/compute", "value": "torch", "limit": 1}
    ]


def test_the_evaluate_job_opens_on_the_profile_and_runs_one_torch_step_at_a_time():
    from hm_recs.definitions import defs
    from hm_recs.defs.jobs import PROFILE
    from hm_recs.profiles import TORCH_TAG, run_config

    d = defs()
    job = d.resolve_job_def("evaluate")
    assert job.tags["hm_recs/profile"] == PROFILE
    assert job.executor_def.name == ("multiprocess" if PROFILE == "paper" else "in_process")
    assert job.run_config == run_config(PROFILE)  # the launchpad's default
    torch_steps = {
        k.to_user_string()
        for k, a in ((k, d.resolve_assets_def(k)) for k in job.asset_layer.selected_asset_keys)
        if a.op.tags.get(TORCH_TAG) == "torch"
    }
    assert {
        "gru4rec_model",
        "vqgan_finetuned_model",
        "bart_model_semantic_id",
        "bart_evaluation",
        "item_index",
    } <= torch_steps
    assert "popularity_baselines" not in torch_steps


def test_weeks_follow_the_data():
    from hm_recs.defs.partitions import week_keys_between, week_keys_covering, week_start

    assert week_start(dt.date(2020, 9, 22)) == dt.date(2020, 9, 16)  # Tuesday -> its Wednesday
    assert week_start(dt.date(2020, 9, 16)) == dt.date(2020, 9, 16)
    assert week_keys_between(dt.date(2020, 9, 1), dt.date(2020, 9, 22)) == [
        "2020-08-26",
        "2020-09-02",
        "2020-09-09",
        "2020-09-16",
    ]
    assert week_keys_covering(dt.date(2018, 9, 20), dt.date(2020, 9, 22)) == ("2018-09-19", "2020-09-16")
    with dg.DagsterInstance.ephemeral() as instance:
        from hm_recs.defs.partitions import WEEKS, add_weeks

        assert add_weeks(instance, dt.date(2020, 9, 10), dt.date(2020, 9, 22)) == ["2020-09-09", "2020-09-16"]
        assert add_weeks(instance, dt.date(2020, 9, 10), dt.date(2020, 9, 29)) == [
            "2020-09-23"
        ]  # a new week only
        assert instance.get_dynamic_partitions(WEEKS) == ["2020-09-09", "2020-09-16", "2020-09-23"]


def test_the_file_sensor_reacts_to_new_content_once_it_has_settled(tmp_path):
    from hm_recs.data.delta import Lake
    from hm_recs.data.ingest import file_fingerprint, record_ingested
    from hm_recs.defs.automation import files_to_ingest

    f = tmp_path / "transactions_train.csv"
    f.write_text("t_dat,customer_id,article_id,price,sales_channel_id\n")
    lake = Lake(str(tmp_path / "lake"))
    record_ingested(lake, f, file_fingerprint(f))
    from hm_recs.data.ingest import ingested_fingerprints

    ingested = ingested_fingerprints(lake)
    # a first start over what was already ingested starts nothing, and neither does a touch
    changed, waiting, seen = files_to_ingest([f], {}, ingested, 0, now=100.0)
    assert changed == [] and waiting == []
    import os

    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert files_to_ingest([f], seen, ingested, 0, now=110.0)[0] == []
    # new content waits until its size has been stable for the settle time, then starts ingest
    f.write_text(f.read_text() + "2020-09-23,abc,0108775015,0.01,2\n")
    changed, waiting, seen = files_to_ingest([f], seen, ingested, 60, now=120.0)
    assert changed == [] and waiting == ["transactions_train.csv"]
    changed, waiting, seen = files_to_ingest([f], seen, ingested, 60, now=150.0)
    assert changed == [] and waiting == ["transactions_train.csv"]
    changed, waiting, seen = files_to_ingest([f], seen, ingested, 60, now=181.0)
    assert changed == ["transactions_train.csv"] and seen[f.name]["fingerprint"] == file_fingerprint(f)


def test_failures_are_recorded(tmp_path):
    from hm_recs.data.delta import Lake
    from hm_recs.defs.automation import record_failure
    from hm_recs.tables import RUN_FAILURES_TABLE

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
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, str(tmp_path / "artifacts"), f"step{i}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    client = TrackingSettings(uri).client()
    runs = client.search_runs([client.get_experiment_by_name("hm_recs").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["step0", "step1"] and {r.info.status for r in runs} == {
        "FINISHED"
    }


def test_the_pyfunc_models_have_typed_predict_so_mlflow_does_not_warn():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import hm_recs.registry.pyfunc"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "type hints" not in out.stderr


def test_the_evaluate_job_holds_only_the_profiles_bart_variants(tmp_path):
    """The UI's launch of `evaluate` trains what the automation trains: with the demo profile, only its
    two semantic-ID BART variants (a fresh process: the job is built when the code location loads)."""
    import os
    import subprocess
    import sys

    script = (
        "from hm_recs.definitions import defs\n"
        "keys = {k.to_user_string() for k in "
        "defs().resolve_job_def('evaluate').asset_layer.selected_asset_keys}\n"
        "print(sorted(k for k in keys if k.startswith('bart_model_')))\n"
    )
    env = {**os.environ, "HM_PROFILE": "demo"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['bart_model_semantic_id', 'bart_model_semantic_id_text']"
