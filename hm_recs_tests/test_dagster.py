"""The Dagster project: definitions load, and the whole graph materializes on a generated sample."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from hm_recs.paths import PROJECT_ROOT
from hm_recs.profiles import GRU4REC_CHAIN, INGEST_CHAIN, RANKER_CHAIN, SERVING_CHAIN, VARIANTS

pytestmark = [pytest.mark.spark, pytest.mark.xdist_group("spark")]

EXPECTED_ASSETS = {
    *INGEST_CHAIN,
    "sessions",
    *GRU4REC_CHAIN,
    "vqgan_base_model",
    "vqgan_finetuned_model",
    "vqgan_evaluation",
    "image_tokens",
    "bart_tokenizer",
    "bart_training_sequences",
    *(f"bart_model_{v}" for v in VARIANTS),
    "item_index",
    "semantic_ids",
    "bart_evaluation",
    *RANKER_CHAIN,
    *SERVING_CHAIN,
}


def load_defs():
    from hm_recs.definitions import defs

    return defs()


def test_definitions_load_with_groups_checks_and_resources():
    defs = load_defs()
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == EXPECTED_ASSETS
    groups = {graph.get(dg.AssetKey(k)).group_name for k in keys}
    assert groups == {"ingest", "sessions", "baselines", "models", "evaluation", "ranking", "serving"}
    checked = {c.asset_key.to_user_string() for c in graph.asset_check_keys}
    for group in groups:  # at least one asset check per group
        assert any(graph.get(dg.AssetKey(k)).group_name == group for k in checked), group
    assert {
        "hm_data",
        "lake",
        "pyspark",
        "compute",
        "evaluation_protocol",
        "lancedb",
        "bart",
        "mlflow",
    } <= set(defs.resources)


def test_dg_check_defs_passes():
    dg_bin = Path(sys.executable).parent / "dg"
    out = subprocess.run(
        [str(dg_bin), "check", "defs"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr


# every asset that reads what a training asset stored, re-materialized alone by a fresh worker
FRESH_WORKER_ASSETS = [
    "vqgan_finetuned_model",
    "vqgan_evaluation",
    "image_tokens",
    "bart_training_sequences",
    "bart_model_semantic_id",
    "gru4rec_evaluation",
    "bart_evaluation",
    "candidates",
    "ranker_evaluation",
    "model_comparison",
    "champion",
    "recommendations",
]
FRESH_WORKER = """
import json, os, sys, time
import dagster as dg
from hm_recs.definitions import defs as load_defs
from hm_recs.profiles import narrowed
assets, config, home, states = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
instance = dg.DagsterInstance.from_config(home)
for asset in assets:
    t = time.perf_counter()
    state = os.path.join(states, asset)  # an empty local disk for each asset
    os.environ["HM_STATE_DIR"] = state
    result = load_defs().resolve_job_def("evaluate").execute_in_process(
        instance=instance, run_config=narrowed(config, [asset]), asset_selection=[dg.AssetKey(asset)],
        raise_on_error=False,
    )
    print(json.dumps({"asset": asset, "success": result.success, "seconds": time.perf_counter() - t,
                      "local_models": os.path.exists(os.path.join(state, "models"))}), flush=True)
"""


def test_whole_graph_materializes_on_tiny_data(
    spark, tiny_dataset, tmp_path, monkeypatch, capsys, s3_endpoint
):
    """The whole graph with the models in an S3 bucket (moto's server), as the deployment keeps
    them; then every asset downstream of a training asset, alone, in a fresh process whose local
    state folder is empty (a Kubernetes run worker): it finds what its upstream trained."""
    import boto3

    from hm_recs.defs.resources import configured_lake
    from hm_recs.demo import SMOKE_MODELS, run_pipeline
    from hm_recs.evaluation.weeks import read_metrics
    from hm_recs.paths import state_dir

    # its own local state: other tests of this worker's session leave models in the session's, and
    # this test asserts that nothing reaches the local disk but the working copies
    monkeypatch.setenv("HM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HM_DATA_DIR", str(tiny_dataset))
    monkeypatch.setenv("HM_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("HM_LANCEDB_URI", str(tmp_path / "lancedb"))
    # the tracking store named in the environment as a server would be: the fresh workers below, each
    # with an empty state folder of its own, share it
    monkeypatch.setenv("HM_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    endpoint = s3_endpoint
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="hm-models")
    monkeypatch.setenv("HM_MODELS_URI", "s3://hm-models/models")
    defs = load_defs()
    lake = configured_lake()
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        _, results = run_pipeline(defs, instance, lake, log=lambda s: None, models=SMOKE_MODELS)
        for name, result in results.items():
            assert result.success, name
            evaluations = result.get_asset_check_evaluations()
            assert evaluations, f"{name} ran no asset checks"
            failed = [e.check_name for e in evaluations if not e.passed]
            assert not failed, f"{name}: failed checks {failed}"
        materialized = {
            k.to_user_string()
            for k in EXPECTED_ASSETS_KEYS
            if instance.get_latest_materialization_event(k) is not None
        }
        assert materialized == EXPECTED_ASSETS
        ev = instance.get_latest_materialization_event(
            dg.AssetKey("clean_transactions")
        ).asset_materialization
        assert ev.metadata["rejected"].value == 0 and ev.metadata["dagster/row_count"].value == 12_000
        # GRU4Rec and BART propose candidates, each for a week with a fit trained before it (checked)
        cands = instance.get_latest_materialization_event(dg.AssetKey("candidates")).asset_materialization
        fits = cands.metadata["model_fit_per_week"].value
        assert set(fits) == {"gru4rec", "bart"} and "ranker_source" in fits["bart"].values()
        assert "| bart |" in cands.metadata["candidate_recall"].value

        metrics = read_metrics(lake)
        bart = {
            f"bart_{v}"
            for v in (
                "text_small",
                "text_large",
                "image_full",
                "image_compact",
                "semantic_id",
                "semantic_id_text",
            )
        }
        assert (
            set(metrics["model"])
            == {
                "pop_all_time",
                "pop_last_week",
                "pop_time_decay",
                "gru4rec_session",
                "gru4rec_warm",
                "ranker",
            }
            | bart
        )
        assert set(metrics["split"]) == {"validation", "test"}
        assert metrics["value"].between(0, 1).all()
        map12 = metrics[(metrics["metric"] == "MAP@12")].set_index(["model", "split"])["value"]
        assert map12.max() > 0
        gru = instance.get_latest_materialization_event(
            dg.AssetKey("gru4rec_evaluation")
        ).asset_materialization
        assert (
            "Recall@20" in gru.metadata["table2"].value
            and gru.metadata["vs_pop_recall20_validation"].value["diff"] > 0
        )

        # MLflow: every run ended, the models are registered, a champion serves the recommendations
        from mlflow import MlflowClient

        from hm_recs.paths import default_tracking_uri

        client = MlflowClient(default_tracking_uri(), default_tracking_uri())
        runs = client.search_runs([client.get_experiment_by_name("hm_recs").experiment_id])
        assert runs and {r.info.status for r in runs} == {"FINISHED"}
        names = {m.name for m in client.search_registered_models()}
        assert {
            "hm_recs_pop_all_time",
            "hm_recs_gru4rec",
            "hm_recs_vqgan",
            "hm_recs_bart_text_large",
            "hm_recs_ranker",
            "hm_recs_recommender",
        } <= names
        # every model is registered by its training asset: BART with the grounding it decided there
        trained = instance.get_latest_materialization_event(
            dg.AssetKey("bart_model_text_large")
        ).asset_materialization
        assert trained.metadata["registered_model"].value.startswith("hm_recs_bart_text_large v")
        assert trained.metadata["grounding"].value["chosen"] in ("constrained", "nearest")
        version = client.search_model_versions("name = 'hm_recs_bart_text_large'")[0]
        assert client.get_run(version.run_id).info.run_name == "bart_model_text_large"
        champion = client.get_model_version_by_alias("hm_recs_recommender", "champion")
        assert champion.tags["status"] == "champion"
        # promotion is an asset on the lineage graph: its materialization records the decision,
        # its blocking check that the champion serves
        promoted = instance.get_latest_materialization_event(dg.AssetKey("champion")).asset_materialization
        assert promoted.metadata["decisions"].value[0]["kind"] == "first"
        serves = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey("champion"), "champion_serves")
        )
        assert serves.status.value == "SUCCEEDED"  # the check passed
        comparison = instance.get_latest_materialization_event(
            dg.AssetKey("model_comparison")
        ).asset_materialization
        assert "MAP@12" in comparison.metadata["comparison"].value and "mlflow_run" in comparison.metadata
        # one run per model, the same metric names on each: MLflow's compare view and search_runs rank them
        ranked = client.search_runs(
            [client.get_experiment_by_name("hm_recs").experiment_id], "metrics.test_MAP_at_12 >= 0"
        )
        names = {r.info.run_name for r in ranked}
        assert {
            "pop_all_time",
            "pop_last_week",
            "pop_time_decay",
            "gru4rec_model",
            "bart_model_semantic_id",
        } <= names
        assert all("test_MAP_at_12_ci_low" in r.data.metrics for r in ranked)
        # MLflow 3: every registered model is a logged model (the Models tab) with its metrics linked
        logged = {
            m.name: m
            for m in client.search_logged_models([client.get_experiment_by_name("hm_recs").experiment_id])
        }
        assert {"hm_recs_pop_all_time", "hm_recs_gru4rec", "hm_recs_vqgan"} <= set(logged)
        assert "test_MAP_at_12" in {m.key for m in logged["hm_recs_gru4rec"].metrics}
        gru_run = client.get_run(logged["hm_recs_gru4rec"].source_run_id)
        assert {d.dataset.name for d in gru_run.inputs.dataset_inputs} == {"sessions/purchases"}
        # the table pages describe their columns
        for key in (
            "clean_transactions",
            "sessions",
            "popularity_evaluation",
            "model_comparison",
            "recommendations",
        ):
            event = instance.get_latest_materialization_event(dg.AssetKey(key))
            schema = event.asset_materialization.metadata["dagster/column_schema"].value
            assert [c.name for c in schema.columns if not c.description] == [], key
        # each evaluation asset owns its metrics table
        assert {t for t in lake.tables() if t.endswith("_metrics")} == {
            "evaluation/popularity_metrics",
            "evaluation/gru4rec_metrics",
            "evaluation/bart_metrics",
            "evaluation/ranker_metrics",
        }

        # the Kaggle submission: every customer, 12 article ids each; the CLI on a known and an unknown id
        import pandas as pd

        from hm_recs.cli import main as cli

        sub = pd.read_csv(state_dir() / "submissions" / "submission.csv", dtype=str)
        customers = pd.read_csv(tiny_dataset / "customers.csv", dtype=str)["customer_id"]
        assert list(sub.columns) == ["customer_id", "prediction"] and set(sub["customer_id"]) == set(
            customers
        )
        assert sub["prediction"].str.split().map(len).eq(12).all()
        assert cli(["recommend", sub["customer_id"].iloc[0], "--k", "5"]) == 0
        # an unknown id gets what the REST endpoint answers (the model's fallback, flagged); a malformed one
        # exit 2
        fallback = lake.read("serving/unknown_customer").to_pylist()[0]
        assert (
            fallback["source"] == "fallback: unknown customer" and len(fallback["prediction"].split()) == 12
        )
        assert (
            cli(["recommend", "0" * 64]) == 0
            and "source: fallback: unknown customer" in capsys.readouterr().out
        )
        assert cli(["recommend", "not-an-id"]) == 2

        # re-running ingestion is idempotent: same rows, a new Delta version
        before = (lake.count("clean/transactions"), lake.version("clean/transactions"))
        assert defs.resolve_job_def("ingest").execute_in_process(instance=instance).success
        assert (
            lake.count("clean/transactions") == before[0]
            and lake.version("clean/transactions") == before[1] + 1
        )

        # nothing went to the local disk: the models are in the bucket
        assert not (state_dir() / "models").exists()
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        stored = s3.list_objects_v2(Bucket="hm-models")["Contents"]
        assert {o["Key"].split("/")[1] for o in stored} == {"gru4rec", "vqgan", "bart", "ranker"}

    # a fresh process, an empty state folder per asset, the same instance, lake, MLflow and bucket
    import json

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_WORKER,
            json.dumps(FRESH_WORKER_ASSETS),
            json.dumps(SMOKE_MODELS),
            str(home),
            str(tmp_path / "fresh"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    done = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"asset"')]
    assert [d["asset"] for d in done if d["success"]] == FRESH_WORKER_ASSETS, out.stderr[-3000:]
    assert not any(d["local_models"] for d in done)
    print({d["asset"]: round(d["seconds"], 1) for d in done})


EXPECTED_ASSETS_KEYS = [dg.AssetKey(k) for k in EXPECTED_ASSETS]


@pytest.fixture
def s3_endpoint(tmp_path, monkeypatch):
    """moto's S3 server for one test, with the settings every resource reads."""
    from hm_recs_tests.services import s3_server

    with s3_server(tmp_path) as endpoint:
        for name, value in (
            ("HM_S3_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ):
            monkeypatch.setenv(name, value)
        yield endpoint


def test_bad_settings_fail_when_the_resources_are_built_naming_the_variable(monkeypatch):
    from hm_recs.defs.resources import build_resources

    for name, value, words in (
        ("HM_NUM_DEVICES", "abc", "HM_NUM_DEVICES='abc' is not an integer"),
        ("HM_PRECISION", "bogus", "HM_PRECISION: precision must be one of"),
        ("HM_DEVICE", "cuda:7", "HM_DEVICE='cuda:7' with HM_NUM_DEVICES=1: torch sees"),
        ("HM_SPARK_DRIVER_MEMORY", "abc", "HM_SPARK_DRIVER_MEMORY='abc' is not a JVM memory size"),
        ("HM_PROFILE", "huge", "HM_PROFILE='huge' is not a run profile"),
    ):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(ValueError, match=re.escape(words)):
                build_resources()


def test_every_asset_has_an_owner_a_code_version_and_described_checks():
    from hm_recs.definitions import domain_code_version

    graph = load_defs().get_repository_def().asset_graph
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners and node.code_version, key
    assert graph.get(dg.AssetKey("clean_transactions")).owners == ["team:data-platform"]
    assert (
        graph.get(dg.AssetKey("gru4rec_model")).code_version
        == domain_code_version("models")
        != domain_code_version("ingest")
    )
    assert not [str(k) for k in graph.asset_check_keys if not graph.get_check_spec(k).description]
    # every asset that opens an MLflow run says so with its kind
    logging = [
        "popularity_baselines",
        "gru4rec_model",
        "vqgan_finetuned_model",
        "bart_model_semantic_id",
        "bart_evaluation",
        "ranker_model",
        "model_comparison",
        "champion",
        "recommendations",
    ]
    assert [k for k in logging if "mlflow" not in graph.get(dg.AssetKey(k)).kinds] == []
    # the weekly cycle's assets say how fresh they must be (the daemon evaluates it: freshness enabled)
    weekly = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).freshness_policy}
    assert weekly == {"clean_transactions", "model_comparison", "recommendations"}
