"""Shared fixtures: a generated tiny dataset, a local Spark session, the real sample when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hm_recs.paths import shared_dir

# the tests' wiring runs train every asset with the least training (the evaluate job follows the profile)
os.environ.setdefault("HM_PROFILE", "smoke")

REAL_SAMPLE = shared_dir() / "hm_real_sample"
REFERENCE_STATS = shared_dir() / "hm_reference_stats"
FULL_ARTICLES = shared_dir() / "hm_articles_full" / "articles.csv"

requires_real_sample = pytest.mark.skipif(
    not (REAL_SAMPLE / "transactions_train.csv").exists(), reason="../shared/hm_real_sample is absent"
)
requires_reference_stats = pytest.mark.skipif(
    not (REFERENCE_STATS / "summary.csv").exists(), reason="../shared/hm_reference_stats is absent"
)
requires_full_articles = pytest.mark.skipif(
    not FULL_ARTICLES.exists(), reason="../shared/hm_articles_full is absent"
)


def pytest_configure(config):
    """Two xdist workers on a small machine: one intra-op thread each, or torch oversubscribes the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ["HM_TORCH_THREADS"] = "1"  # the compute resource sets each Dagster step's threads


@pytest.fixture(scope="session", autouse=True)
def _isolated_state(tmp_path_factory):
    """Keep tests out of the developer's ./state: every test session gets its own."""
    state = tmp_path_factory.mktemp("state")
    os.environ["HM_STATE_DIR"] = str(state)
    os.environ.pop("HM_DATA_DIR", None)
    os.environ.pop("HM_LAKE_URI", None)
    yield state


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    from hm_recs.synth.generator import generate

    out = tmp_path_factory.mktemp("synth_tiny")
    generate(out, "tiny", seed=7, progress=False, workers=1)
    return out


@pytest.fixture(scope="session")
def spark():
    from hm_recs.sessions.spark import get_spark, spark_conf

    session = get_spark(spark_conf(master="local[2]", driver_memory="2g", shuffle_partitions=4))
    yield session
    session.stop()
