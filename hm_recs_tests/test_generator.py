"""The synthetic generator: Kaggle layout, determinism, calibration to the real aggregates, structure."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hm_recs.data import ingest
from hm_recs.data.delta import Lake
from hm_recs.data.schema import ARTICLES, CUSTOMERS, TRANSACTIONS, image_relpath
from hm_recs.synth.calibration import build_calibration, load_calibration
from hm_recs.synth.generator import SCALES, daily_targets, generate
from hm_recs_tests.conftest import (
    FULL_ARTICLES,
    REFERENCE_STATS,
    requires_full_articles,
    requires_reference_stats,
)


def digest(folder, names=("articles.csv", "customers.csv", "transactions_train.csv")):
    h = hashlib.sha256()
    for n in names:
        h.update((folder / n).read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def frames(tiny_dataset):
    t = pd.read_csv(tiny_dataset / "transactions_train.csv", dtype={"article_id": str})
    a = pd.read_csv(tiny_dataset / "articles.csv", dtype={"article_id": str, "product_code": str})
    c = pd.read_csv(tiny_dataset / "customers.csv")
    return t, a, c


def test_kaggle_layout_passes_the_contract_with_no_rejects(tiny_dataset, tmp_path):
    header = (tiny_dataset / "transactions_train.csv").open().readline().strip()
    assert header == "t_dat,customer_id,article_id,price,sales_channel_id"
    lake = Lake(str(tmp_path))
    results = [ingest.load_raw(tiny_dataset, c, lake) for c in (ARTICLES, CUSTOMERS, TRANSACTIONS)]
    results += [ingest.clean(ARTICLES, lake), ingest.clean(CUSTOMERS, lake)]
    results.append(
        ingest.clean(
            TRANSACTIONS, lake, ingest.key_values(lake, ARTICLES), ingest.key_values(lake, CUSTOMERS)
        )
    )
    assert all(r.rejected == 0 for r in results), [r.rejects for r in results]
    scale = SCALES["tiny"]
    assert (results[3].rows_out, results[4].rows_out, results[5].rows_out) == (
        scale.articles,
        scale.customers,
        scale.transactions,
    )


def test_same_seed_same_bytes_other_seed_other_data(tiny_dataset, tmp_path):
    again = tmp_path / "again"
    generate(again, "tiny", seed=7, images="none", progress=False)
    assert digest(again) == digest(tiny_dataset)
    other = tmp_path / "other"
    generate(other, "tiny", seed=8, images="none", progress=False)
    assert digest(other) != digest(tiny_dataset)
    meta = json.loads((again / "SYNTHETIC.json").read_text())
    assert meta["transactions"] == SCALES["tiny"].transactions and meta["images"] == 0


def test_images_exist_decode_and_follow_attributes(tiny_dataset, frames):
    _, a, _ = frames
    for aid in a["article_id"].head(20):
        with Image.open(tiny_dataset / image_relpath(aid)) as img:
            assert img.size == (128, 192) and img.mode == "RGB"
    # colour variants of one product share the silhouette but differ in colour
    multi = a.groupby("product_code").filter(lambda g: g["colour_group_name"].nunique() > 1)
    pc = multi["product_code"].iloc[0]
    v = multi[multi["product_code"] == pc].head(2)
    imgs = [np.asarray(Image.open(tiny_dataset / image_relpath(x)), dtype=float) for x in v["article_id"]]
    background = [(np.abs(im - [238, 237, 235]).sum(axis=2) < 30) for im in imgs]
    assert (background[0] == background[1]).mean() > 0.9  # same shape
    assert np.abs(imgs[0] - imgs[1]).mean() > 3  # different colour


def test_full_scale_sizes_and_daily_volume():
    full = SCALES["full"]
    assert (full.articles, full.customers, full.transactions) == (105_542, 1_371_980, 31_788_324)
    cal = load_calibration()
    counts = daily_targets(full, cal)
    assert counts.sum() == 31_788_324 and len(counts) == 734
    assert np.corrcoef(counts, cal["daily"]["transactions"])[0, 1] > 0.999


def _share_distance(observed: pd.Series, target: dict) -> float:
    """Total variation distance over the categories (target renormalised to the observed ones)."""
    keys = set(observed.index) | {k for k, v in target.items() if v > 0.001}
    total = sum(target.get(k, 0.0) for k in keys)
    return 0.5 * sum(abs(observed.get(k, 0.0) - target.get(k, 0.0) / total) for k in keys)


def test_marginals_match_the_real_aggregates(frames):
    t, a, c = frames
    cal = load_calibration()
    ta = t.merge(a, on="article_id")
    assert (
        _share_distance(
            ta["index_group_name"].value_counts(normalize=True), cal["transaction_share"]["index_group"]
        )
        < 0.05
    )
    assert (
        _share_distance(
            ta["product_group_name"].value_counts(normalize=True), cal["transaction_share"]["product_group"]
        )
        < 0.15
    )
    assert (
        _share_distance(
            ta["colour_group_name"].value_counts(normalize=True), cal["transaction_share"]["colour_group"]
        )
        < 0.15
    )
    assert (
        _share_distance(
            a["index_group_name"].value_counts(normalize=True), cal["article_share"]["index_group"]
        )
        < 0.1
    )
    assert t["sales_channel_id"].eq(2).mean() == pytest.approx(cal["sales_channel"]["2"], abs=0.04)
    status = c["club_member_status"].fillna("Unknown").value_counts(normalize=True)
    assert _share_distance(status, cal["club_member_status"]) < 0.05
    assert t["price"].mean() == pytest.approx(cal["totals"]["avg_price"], rel=0.25)
    days = t.groupby("t_dat").size()
    ref = pd.Series(
        cal["daily"]["transactions"],
        index=pd.date_range(cal["daily"]["start"], periods=len(cal["daily"]["transactions"])).strftime(
            "%Y-%m-%d"
        ),
    )
    assert np.corrcoef(days.to_numpy(), ref[days.index].to_numpy())[0, 1] > 0.99
    assert t["customer_id"].nunique() == len(c)  # everyone in customers.csv bought something


def test_structure_a_recommender_can_learn(frames):
    t, a, c = frames
    ta = t.merge(a, on="article_id")
    # repeated units, as H&M writes one row per unit
    prev = t.groupby("customer_id")["article_id"].shift()
    assert 0.05 < (t["article_id"] == prev).mean() < 0.2
    # customers concentrate on their index group far more than the population does
    own = ta.groupby("customer_id")["index_group_name"].agg(lambda s: s.value_counts(normalize=True).iloc[0])
    buyers = ta.groupby("customer_id").size()
    assert own[buyers >= 10].mean() > 0.75
    # complements: after an upper-body garment, a lower-body one is far more likely than at random
    ta = ta.assign(prev_group=ta.groupby("customer_id")["product_group_name"].shift())
    after_upper = (
        ta[ta["prev_group"] == "Garment Upper body"]["product_group_name"].eq("Garment Lower body").mean()
    )
    base = ta["product_group_name"].eq("Garment Lower body").mean()
    assert after_upper > 1.3 * base
    # colour variants share a product code and new products launch over time
    assert a.groupby("product_code").size().max() > 1
    first_sale = t.groupby("article_id")["t_dat"].min()
    assert (first_sale > t["t_dat"].min()).mean() > 0.2


@requires_reference_stats
@requires_full_articles
def test_packaged_calibration_is_built_from_the_shared_aggregates():
    assert build_calibration(REFERENCE_STATS, FULL_ARTICLES) == load_calibration()
