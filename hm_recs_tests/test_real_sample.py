"""The whole pipeline on the real H&M sample in ../shared (skipped where it is absent)."""

from __future__ import annotations

import dagster as dg
import pytest

from hm_recs.profiles import GRU4REC_CHAIN
from hm_recs_tests.conftest import REAL_SAMPLE, requires_real_sample

pytestmark = [
    requires_real_sample,
    pytest.mark.real_data,
    pytest.mark.spark,
    pytest.mark.xdist_group("spark"),
]


EVALUATE_ASSETS = GRU4REC_CHAIN


def test_pipeline_on_the_real_sample(spark, tmp_path, monkeypatch):
    from hm_recs.definitions import defs as load_defs
    from hm_recs.defs.resources import configured_lake
    from hm_recs.demo import SMOKE_MODELS, run_pipeline
    from hm_recs.evaluation.weeks import read_metrics
    from hm_recs.tables import SESSIONS_TABLE

    monkeypatch.setenv("HM_DATA_DIR", str(REAL_SAMPLE))
    monkeypatch.setenv("HM_LAKE_URI", str(tmp_path / "lake"))
    defs = load_defs()
    lake = configured_lake()
    with dg.DagsterInstance.ephemeral() as instance:
        # the data layer and the baselines on real rows; the image and BART stages on real photos
        # and articles are in test_vqgan / test_bart (17k photos would take minutes here)
        _, results = run_pipeline(
            defs, instance, lake, log=lambda s: None, models=SMOKE_MODELS, evaluate_assets=EVALUATE_ASSETS
        )
        assert all(r.success for r in results.values())

        def meta(asset):
            return instance.get_latest_materialization_event(
                dg.AssetKey(asset)
            ).asset_materialization.metadata

        assert meta("clean_transactions")["rows_out"].value == 31_662
        assert meta("clean_transactions")["rejected"].value == 0
        assert meta("clean_articles")["rows_out"].value == 17_033
        assert meta("clean_customers")["rows_out"].value == 1_364
        assert meta("image_manifest")["images_ok"].value == 17_033
        assert meta("time_split")["test_start"].value == "2020-09-16"
        assert meta("time_split")["validation_start"].value == "2020-09-09"
        # the real customers' club status is over 90 % ACTIVE: dropped as the paper does
        assert "club_member_status" in meta("customer_features")["dropped_columns"].value
        # GRU4Rec trained on the real sessions and was judged on both protocols
        assert meta("gru4rec_model")["validation_events"].value > 1000
        table2 = meta("gru4rec_evaluation")["table2"].value
        assert "| validation |" in table2 and "| test |" in table2

    assert lake.count(SESSIONS_TABLE) == 31_662
    metrics = read_metrics(lake)
    test_map = metrics[(metrics.metric == "MAP@12") & (metrics.split == "test")].set_index("model")["value"]
    assert set(test_map.index) == {
        "pop_all_time",
        "pop_last_week",
        "pop_time_decay",
        "gru4rec_session",
        "gru4rec_warm",
    }
    assert (metrics["value"] >= 0).all() and (metrics["value"] <= 1).all()
