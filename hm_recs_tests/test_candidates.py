"""Candidate sources on a hand-made week: what each proposes, and that nothing on or after the
cutoff reaches any of them."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from hm_recs.ranking import candidates as c

CUTOFF = dt.date(2020, 9, 16)


def _purchases(rows):
    frame = pd.DataFrame(rows, columns=["customer_idx", "article_idx", "t_dat"])
    frame["t_dat"] = pd.to_datetime(frame["t_dat"])
    return frame


# customer 0 buys 10 and 11 together, twice; customer 1 buys 10 then 12; customer 2 buys 11 and 13;
# 99 is bought only on and after the cutoff (it must never be proposed)
HISTORY = [
    (0, 10, "2020-09-01"),
    (0, 11, "2020-09-02"),
    (0, 10, "2020-09-14"),
    (0, 11, "2020-09-15"),
    (1, 10, "2020-09-10"),
    (1, 12, "2020-09-11"),
    (2, 11, "2020-09-12"),
    (2, 13, "2020-09-12"),
]
FUTURE = [(0, 99, "2020-09-16"), (1, 99, "2020-09-17"), (2, 99, "2020-09-20"), (1, 11, "2020-09-18")]
ARTICLES = pd.DataFrame({"article_idx": [10, 11, 12, 13, 14, 99], "product_code": [1, 2, 1, 3, 3, 9]})
CUSTOMERS = pd.DataFrame({"customer_idx": [0, 1, 2], "age": [22.0, 45.0, None]})


def _all_sources(purchases):
    return {
        "repurchase": c.repurchase(purchases, CUTOFF),
        "copurchase": c.copurchase(purchases, CUTOFF),
        "popular": c.expand(c.popular(purchases, CUTOFF), CUSTOMERS),
        "popular_age": c.expand(
            c.popular_by_age(purchases, CUSTOMERS, CUTOFF),
            CUSTOMERS.assign(band=c.age_band(CUSTOMERS["age"])),
            "band",
        ),
        "same_product": c.same_product(purchases, ARTICLES, CUTOFF),
    }


def test_each_source_proposes_what_the_history_says():
    sources = _all_sources(_purchases(HISTORY))
    repurchase = sources["repurchase"]
    assert set(repurchase[repurchase.customer_idx == 0].article_idx) == {10, 11}
    # customer 0's recent purchases were two days ago and one: 11 (newer) ranks first
    assert repurchase[repurchase.customer_idx == 0].article_idx.tolist() == [11, 10]
    co = sources["copurchase"]
    # 10 and 11 were bought together by customer 0; customer 1 bought 10, so 11 is proposed to them
    assert 11 in set(co[co.customer_idx == 1].article_idx)
    assert c.popular(_purchases(HISTORY), CUTOFF, days=7).article_idx.tolist()[:2] == [10, 11]
    # the product of 12 is product 1, as 10's: customer 1 owns both; customer 2 bought 13 -> 14 (product 3)
    same = sources["same_product"]
    assert same[same.customer_idx == 2].article_idx.tolist() == [14]
    assert c.age_band(CUSTOMERS["age"]).tolist() == [1, 4, -1]


def test_nothing_on_or_after_the_cutoff_reaches_a_source():
    past = _purchases(HISTORY)
    everything = _purchases(HISTORY + FUTURE)
    for name, frame in _all_sources(past).items():
        again = _all_sources(everything)[name]
        pd.testing.assert_frame_equal(frame.reset_index(drop=True), again.reset_index(drop=True), obj=name)
        assert 99 not in set(again.article_idx), name


def test_candidate_recall_counts_the_next_weeks_purchases_covered():
    everything = _purchases(HISTORY + FUTURE)
    merged = c.union(_all_sources(everything))
    assert {"score_repurchase", "score_copurchase", "score_popular"} <= set(merged.columns)
    stats = c.candidate_recall(merged, everything, CUTOFF)
    # the week's pairs: (0, 99), (1, 99), (2, 99), (1, 11); only (1, 11) can be proposed
    assert stats["pairs"] == 4 and stats["recall"] == 0.25
    assert stats["customers_hit"] == 1 / 3
    assert c.customers_of(everything, CUTOFF).tolist() == [0, 1, 2]
    assert stats["candidates_per_customer"] > 0


def test_a_models_top_n_is_a_source_fed_only_the_history_before_the_cutoff():
    class Recorder:
        """A minimal protocol recommender: the customer's own history, newest first; keeps its input."""

        name = "recorder"

        def recommend(self, customers, histories, session_starts, k):
            self.seen = [h.tolist() for h in histories]
            out = [-np.ones(k, int) for _ in customers]
            for row, h in zip(out, histories, strict=True):
                own = list(dict.fromkeys(h[::-1].tolist()))[:k]
                row[: len(own)] = own
            return np.stack(out)

    model = Recorder()
    rows = c.from_recommender(model, _purchases(HISTORY + FUTURE), CUTOFF, [0, 1], n=3)
    assert model.seen == [[10, 11, 10, 11], [10, 12]]  # oldest first, nothing from the cutoff on
    assert rows[rows.customer_idx == 0].article_idx.tolist() == [11, 10]
    assert rows[rows.customer_idx == 0].score.tolist() == [3.0, 2.0]  # first proposal scores highest
    # a source that needs a history (BART) is not asked about customers without one
    rows = c.from_recommender(model, _purchases(HISTORY + FUTURE), CUTOFF, [0, 1, 99], n=3, history_only=True)
    assert len(model.seen) == 2 and 99 not in rows.customer_idx.tolist()
    rows = c.from_recommender(model, _purchases(HISTORY + FUTURE), CUTOFF, [0, 1, 99], n=3)
    assert len(model.seen) == 3 and model.seen[-1] == []  # asked, with nothing to read


def test_the_item_index_proposes_the_nearest_articles_to_recent_purchases(tmp_path):
    """A real LanceDB index over hand-placed vectors: article 0's nearest are 1 then 2, article 3's
    are 4 then 5; a customer who bought 0 and 3 gets 4, 1, 5, 2 (by similarity; not 0 or 3 again)."""
    import pyarrow as pa

    from hm_recs.retrieval.item_index import ItemIndex, build_index

    angles = np.array([0.0, 0.1, 0.25, 1.5, 1.55, 1.7])
    vectors = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], axis=1).astype(np.float32)
    rows = pa.table({"article_idx": np.arange(6, dtype=np.int64), "text": [f"article {i}" for i in range(6)]})
    build_index(str(tmp_path / "db"), rows, vectors)
    near = c.neighbour_table(ItemIndex(str(tmp_path / "db")), k=2)
    assert near[near.article_idx == 0]["neighbour_idx"].tolist() == [1, 2]
    assert near[near.article_idx == 3]["neighbour_idx"].tolist() == [4, 5]
    assert (near["neighbour_idx"] != near["article_idx"]).all()

    day = pd.Timestamp(CUTOFF)
    purchases = pd.DataFrame(
        {
            "customer_idx": [7, 7, 7],
            "article_idx": [0, 3, 1],
            "t_dat": [day - pd.Timedelta(days=2), day - pd.Timedelta(days=1), day],  # 1: on the cutoff
        }
    )
    got = c.similar(purchases, near, CUTOFF)
    assert got["article_idx"].tolist() == [4, 1, 5, 2]
    assert got["score"].is_monotonic_decreasing
