"""The model store: a local folder without copies, an S3 bucket (moto's server) with working copies
that a second process with an empty disk fills from the store."""

from __future__ import annotations

import pytest

from hm_recs.artifacts import ModelStore, gru4rec_key
from hm_recs_tests.services import s3_server

CREDS = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}


def test_a_local_store_works_in_place(tmp_path):
    store = ModelStore(str(tmp_path / "models"), tmp_path / "cache")
    folder = store.pull(gru4rec_key("test"))
    assert folder == tmp_path / "models" / "gru4rec" / "test"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    assert store.push(gru4rec_key("test")) == f"{tmp_path / 'models'}/gru4rec/test"
    assert store.exists("gru4rec/test/model.pt") and not (tmp_path / "cache").exists()
    with pytest.raises(FileNotFoundError, match="gru4rec/validation"):
        store.pull(gru4rec_key("validation"), required=True)
    with pytest.raises(ValueError, match="gs://"):
        ModelStore("gs://bucket/models", tmp_path / "cache")


def test_an_s3_store_round_trips_through_a_fresh_working_copy(tmp_path):
    import boto3

    with s3_server(tmp_path) as endpoint:
        boto3.client("s3", endpoint_url=endpoint, **CREDS).create_bucket(Bucket="hm-models")
        opts = {"endpoint_url": endpoint, **CREDS}
        writer = ModelStore("s3://hm-models/models", tmp_path / "worker_a", opts)
        key = "bart/semantic_id/validation"
        with pytest.raises(FileNotFoundError, match="s3://hm-models/models/bart/semantic_id/validation"):
            writer.pull(key, required=True)
        folder = writer.pull(key)
        assert folder == tmp_path / "worker_a" / key
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "weights.safetensors").write_bytes(b"v1")
        (folder / "run").mkdir()
        (folder / "run" / "step-10.ckpt").write_bytes(b"checkpoint")
        assert writer.push(key) == f"s3://hm-models/models/{key}"
        assert writer.exists(f"{key}/model/weights.safetensors") and not writer.exists("bart/text_small")

        # a worker with an empty disk gets what the first one wrote
        reader = ModelStore("s3://hm-models/models", tmp_path / "worker_b", opts)
        got = reader.pull(key, required=True)
        assert (got / "model" / "weights.safetensors").read_bytes() == b"v1"
        assert (got / "run" / "step-10.ckpt").read_bytes() == b"checkpoint"

        # a retrain replaces the weights and drops a checkpoint: the store follows the writer
        (folder / "model" / "weights.safetensors").write_bytes(b"v2 longer")
        (folder / "run" / "step-10.ckpt").unlink()
        writer.push(key)
        (got / "run" / "local-only.tmp").write_bytes(b"kept")
        reader.pull(key)
        assert (got / "model" / "weights.safetensors").read_bytes() == b"v2 longer"
        assert (got / "run" / "local-only.tmp").exists()  # a killed run's own files are not removed
        assert not reader.exists(f"{key}/run/step-10.ckpt")

        # a single file is a key too
        single = ModelStore("s3://hm-models/models", tmp_path / "worker_c", opts)
        path = single.path("vqgan/base.safetensors")
        path.parent.mkdir(parents=True)
        path.write_bytes(b"base")
        single.push("vqgan/base.safetensors")
        assert reader.pull("vqgan/base.safetensors", required=True).read_bytes() == b"base"

        reader.delete(key)
        assert not reader.exists(key) and not got.exists()
