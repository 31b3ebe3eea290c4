"""Spark sessionization against a plain pandas reference, and partition-level idempotency."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from hm_recs.data import ingest
from hm_recs.data.delta import Lake
from hm_recs.data.schema import ARTICLES, CUSTOMERS, TRANSACTIONS
from hm_recs.sessions.sessionize import read_delta, sessionize, week_start_of, write_sessions
from hm_recs.tables import SESSIONS_TABLE

pytestmark = [pytest.mark.spark, pytest.mark.xdist_group("spark")]


def reference_sessions(clean: pd.DataFrame) -> pd.DataFrame:
    """The sessionization rules written plainly in pandas."""
    df = clean.copy()
    df["week_start"] = [week_start_of(d) for d in df["t_dat"]]
    df = df.sort_values(["customer_id", "week_start", "t_dat", "line"]).reset_index(drop=True)
    g = df.groupby(["customer_id", "week_start"], sort=False)
    df["event_idx"] = g.cumcount()
    df["session_length"] = g["line"].transform("size")
    prev = g["article_id"].shift()
    df["is_consecutive_repeat"] = (prev == df["article_id"]).fillna(False)
    return df


@pytest.fixture(scope="module")
def ingested(tiny_dataset, tmp_path_factory):
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    for c in (ARTICLES, CUSTOMERS, TRANSACTIONS):
        ingest.load_raw(tiny_dataset, c, lake)
    ingest.clean(ARTICLES, lake)
    ingest.clean(CUSTOMERS, lake)
    ingest.clean(TRANSACTIONS, lake, ingest.key_values(lake, ARTICLES), ingest.key_values(lake, CUSTOMERS))
    return lake


def test_week_start_is_the_wednesday_before():
    assert week_start_of(dt.date(2020, 9, 16)) == dt.date(2020, 9, 16)  # Wednesday
    assert week_start_of(dt.date(2020, 9, 22)) == dt.date(2020, 9, 16)  # Tuesday
    assert week_start_of(dt.date(2018, 9, 20)) == dt.date(2018, 9, 19)  # the first day of the data
    assert week_start_of(dt.date(2020, 9, 21), anchor_weekday=0) == dt.date(2020, 9, 21)


def test_spark_sessions_equal_the_pandas_reference(spark, ingested, tmp_path):
    lake = ingested
    write_sessions(sessionize(read_delta(spark, lake, "clean/transactions")), lake, tmp_path)
    got = lake.read(SESSIONS_TABLE).to_pandas()
    want = reference_sessions(lake.read("clean/transactions").to_pandas())
    assert len(got) == len(want) == lake.count("clean/transactions")
    key = ["customer_id", "line"]
    got = got.sort_values(key).reset_index(drop=True)
    want = want.sort_values(key).reset_index(drop=True)
    for col in ["week_start", "event_idx", "session_length", "is_consecutive_repeat", "article_id", "t_dat"]:
        assert got[col].tolist() == want[col].tolist(), col
    # one session id per (customer, week), distinct across sessions
    ids = got.groupby(["customer_id", "week_start"])["session_id"].nunique()
    assert (ids == 1).all()
    assert got.groupby("session_id")[["customer_id", "week_start"]].nunique().max().max() == 1
    assert got["is_consecutive_repeat"].any(), "the generator writes extra units as repeated rows"


def test_rewriting_some_weeks_is_idempotent_and_leaves_others_alone(spark, ingested, tmp_path):
    lake = Lake(str(tmp_path / "lake2"))
    src = read_delta(spark, ingested, "clean/transactions")
    write_sessions(sessionize(src), lake, tmp_path)
    full = lake.read(SESSIONS_TABLE).to_pandas()
    weeks = sorted(full["week_start"].unique())
    last = (weeks[-2], weeks[-1])
    for _ in range(2):
        write_sessions(sessionize(src, weeks=last), lake, tmp_path, weeks=last)
    again = lake.read(SESSIONS_TABLE).to_pandas()
    assert len(again) == len(full)
    cols = ["session_id", "line", "event_idx"]
    assert (
        again.sort_values(cols)[cols].to_numpy().tolist() == full.sort_values(cols)[cols].to_numpy().tolist()
    )
    # an empty week range removes those weeks' rows (the source has none left)
    empty = src.where("t_dat < '2000-01-01'")
    write_sessions(sessionize(empty, weeks=last), lake, tmp_path, weeks=last)
    left = lake.read(SESSIONS_TABLE).to_pandas()
    assert set(left["week_start"]) == set(weeks[:-2])
    assert np.all(left["week_start"] < last[0])
