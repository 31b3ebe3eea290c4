"""The production path against real engines on loopback: a Spark standalone cluster, Dagster on
PostgreSQL with an MLflow tracking server on PostgreSQL, Delta and LanceDB on an S3-compatible server.
A service that cannot start fails its test with the reason."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from hm_recs.data import ingest
from hm_recs.data.delta import Lake
from hm_recs.data.schema import ARTICLES, CUSTOMERS, TRANSACTIONS
from hm_recs_tests.services import mlflow_server, postgres_database, s3_server, spark_standalone

pytestmark = [pytest.mark.spark, pytest.mark.xdist_group("spark")]

CLUSTER_SCRIPT = textwrap.dedent("""
    import sys
    from hm_recs.data.delta import Lake
    from hm_recs.sessions.spark import get_spark, spark_conf
    from hm_recs.sessions.sessionize import read_delta, sessionize, write_sessions
    master, lake_dir, staging = sys.argv[1:]
    spark = get_spark(spark_conf(master=master, driver_memory="1g", shuffle_partitions=4,
                                 extra={"spark.driver.host": "127.0.0.1", "spark.executor.memory": "768m"}))
    assert spark.sparkContext.master == master
    lake = Lake(lake_dir)
    sessions = sessionize(read_delta(spark, lake, "clean/transactions"))
    write_sessions(sessions, lake, staging, name="sessions_cluster")
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    print("EXECUTORS", executors)
    spark.stop()
""")


def test_sessionization_on_a_spark_standalone_cluster_equals_local_mode(spark, tiny_dataset, tmp_path):
    from hm_recs.sessions.sessionize import read_delta, sessionize, write_sessions
    from hm_recs.tables import SESSIONS_TABLE

    lake = Lake(str(tmp_path / "lake"))
    for c in (ARTICLES, CUSTOMERS, TRANSACTIONS):
        ingest.load_raw(tiny_dataset, c, lake)
    ingest.clean(ARTICLES, lake)
    ingest.clean(CUSTOMERS, lake)
    ingest.clean(TRANSACTIONS, lake, ingest.key_values(lake, ARTICLES), ingest.key_values(lake, CUSTOMERS))
    write_sessions(
        sessionize(read_delta(spark, lake, "clean/transactions")), lake, tmp_path / "staging_local"
    )

    (tmp_path / "cluster").mkdir()
    with spark_standalone(tmp_path / "cluster", workers=2) as master:
        out = subprocess.run(
            [sys.executable, "-c", CLUSTER_SCRIPT, master, lake.root, str(tmp_path / "staging_cluster")],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "EXECUTORS 2" in out.stdout  # both workers ran executors
    key = ["customer_id", "line"]
    local = lake.read(SESSIONS_TABLE).to_pandas().sort_values(key, ignore_index=True)
    cluster = lake.read("sessions_cluster").to_pandas().sort_values(key, ignore_index=True)
    assert len(local) == len(cluster) == lake.count("clean/transactions")
    pd.testing.assert_frame_equal(local[sorted(local.columns)], cluster[sorted(local.columns)])


def test_dagster_on_postgres_logging_to_an_mlflow_server_on_postgres(tiny_dataset, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from hm_recs.demo import SMOKE_MODELS, run_pipeline
    from hm_recs.profiles import POP_CHAIN

    with (
        postgres_database("hm_dagster") as dagster_db,
        postgres_database("hm_mlflow") as mlflow_db,
        mlflow_server(mlflow_db, tmp_path / "artifacts", tmp_path) as tracking,
    ):
        monkeypatch.setenv("HM_DATA_DIR", str(tiny_dataset))
        monkeypatch.setenv("HM_LAKE_URI", str(tmp_path / "lake"))
        monkeypatch.setenv("HM_MLFLOW_TRACKING_URI", tracking)
        from hm_recs.definitions import defs as load_defs
        from hm_recs.defs.resources import configured_lake

        storage = {"storage": {"postgres": {"postgres_url": dagster_db}}}
        with dg.instance_for_test(overrides=storage) as instance:
            _, results = run_pipeline(
                load_defs(),
                instance,
                configured_lake(),
                log=lambda s: None,
                models=SMOKE_MODELS,
                evaluate_assets=POP_CHAIN,
            )
            assert all(r.success for r in results.values())
            run_ids = {r.run_id for r in results.values()}
        # read back through a second instance on the same database
        with dg.instance_for_test(overrides=storage) as again:
            assert {r.run_id for r in again.get_runs()} >= run_ids
            assert all(
                r.status == dg.DagsterRunStatus.SUCCESS for r in again.get_runs() if r.run_id in run_ids
            )
            ev = again.get_latest_materialization_event(dg.AssetKey("popularity_baselines"))
            assert ev is not None and set(ev.asset_materialization.metadata["mlflow_runs"].value) == {
                "all_time",
                "last_week",
                "time_decay",
            }

        client = MlflowClient(tracking, tracking)
        runs = client.search_runs([client.get_experiment_by_name("hm_recs").experiment_id])
        assert runs and all(r.info.status == "FINISHED" for r in runs)
        assert {r.data.tags["dagster.run_id"] for r in runs} <= run_ids
        version = client.get_latest_versions("hm_recs_pop_time_decay")[0]
        import mlflow

        mlflow.set_tracking_uri(tracking)
        model = mlflow.pyfunc.load_model(f"models:/hm_recs_pop_time_decay/{version.version}")
        customers = pd.read_csv(tiny_dataset / "customers.csv", dtype=str)["customer_id"].head(3)
        out = model.predict(pd.DataFrame({"customer_id": customers}))
        assert out["prediction"].str.split().map(len).eq(12).all()


def test_delta_and_lancedb_through_s3(tmp_path):
    import boto3

    from hm_recs.defs.resources import LakeResource, LanceDBResource
    from hm_recs.retrieval.item_index import IndexSettings, ItemIndex, build_index

    with s3_server(tmp_path) as endpoint:
        creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "aws_region": "us-east-1"}
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="hm-lake")
        lake = LakeResource(
            root="s3://hm-lake/lake", aws_endpoint_url=endpoint, aws_allow_http=True, **creds
        ).open()
        table = pa.table({"article_id": ["0108775015", "0108775044"], "n": [1, 2]})
        v0 = lake.write("clean/articles", table)
        v1 = lake.write("clean/articles", table)  # idempotent rewrite: a new version, the same rows
        assert v1 == v0 + 1 and lake.read("clean/articles").to_pylist() == table.to_pylist()
        assert lake.uri("clean/articles").startswith("s3://hm-lake/")

        db = LanceDBResource(
            uri="s3://hm-lake/lancedb", aws_endpoint_url=endpoint, aws_allow_http=True, **creds
        )
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(50, 16)).astype(np.float32)
        rows = pa.table(
            {
                "article_idx": np.arange(50),
                "article_id": [f"0{i:09d}" for i in range(50)],
                "text": [f"item {i} dress" for i in range(50)],
            }
        )
        build_index(db.uri, rows, vectors, IndexSettings(), db.storage_options())
        index = ItemIndex(db.uri, db.storage_options())
        ids, _ = index.nearest(vectors[:3], k=1, exact=True)
        assert ids[:, 0].tolist() == [0, 1, 2]
        objects = s3.list_objects_v2(Bucket="hm-lake")["Contents"]
        assert any(o["Key"].startswith("lancedb/") for o in objects) and any(
            o["Key"].startswith("lake/") for o in objects
        )
