"""The learned ranker: features that never read the label week, and a ranker that learns a signal
the popularity fallback cannot see."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from hm_recs.ranking import candidates as cand
from hm_recs.ranking.ranker import (
    FEATURES,
    Ranker,
    RankerRecommender,
    add_features,
    candidate_table,
    training_frame,
)

START = dt.date(2020, 7, 1)


def _synthetic(n_customers=150, n_articles=60, weeks=10, seed=0) -> pd.DataFrame:
    """Each customer has a favourite article bought again most weeks, plus popular-ish noise."""
    rng = np.random.default_rng(seed)
    favourite = rng.integers(0, n_articles, n_customers)
    popularity = rng.dirichlet(np.full(n_articles, 0.3))
    rows = []
    for w in range(weeks):
        for c in range(n_customers):
            day = START + dt.timedelta(days=7 * w + int(rng.integers(0, 7)))
            if rng.random() < 0.6:
                rows.append((c, int(favourite[c]), day))
            for a in rng.choice(n_articles, int(rng.integers(0, 3)), p=popularity):
                rows.append((c, int(a), day))
    frame = pd.DataFrame(rows, columns=["customer_idx", "article_idx", "t_dat"])
    frame["t_dat"] = pd.to_datetime(frame["t_dat"])
    return frame


def _side_tables(n_customers=150, n_articles=60):
    customers = pd.DataFrame(
        {"customer_idx": np.arange(n_customers), "age": np.linspace(18, 70, n_customers)}
    )
    articles = pd.DataFrame(
        {"article_idx": np.arange(n_articles), "product_code": np.arange(n_articles) // 3}
    )
    return customers, articles


def test_features_never_read_the_label_week():
    purchases = _synthetic()
    customers, articles = _side_tables()
    cutoff = START + dt.timedelta(days=7 * 8)
    who = cand.customers_of(purchases, cutoff)
    past_only = purchases[purchases["t_dat"] < pd.Timestamp(cutoff)]
    a = add_features(
        candidate_table(past_only, customers, articles, cutoff, who), past_only, customers, cutoff
    )
    b = add_features(
        candidate_table(purchases, customers, articles, cutoff, who), purchases, customers, cutoff
    )
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    assert set(FEATURES) <= set(b.columns) and not b[FEATURES].drop(columns="customer_age").isna().any().any()


def test_the_ranker_learns_what_popularity_cannot():
    purchases = _synthetic()
    customers, articles = _side_tables()
    weeks = [START + dt.timedelta(days=7 * w) for w in (5, 6, 7, 8)]
    frame = training_frame(purchases, customers, articles, weeks[:3])
    assert frame["label"].sum() > 0 and (frame["week"] < weeks[3]).all()
    target = weeks[3]
    who = cand.customers_of(purchases, target)
    table = add_features(
        candidate_table(purchases, customers, articles, target, who), purchases, customers, target
    )
    bought = cand.before(purchases, target + dt.timedelta(days=7))
    bought = bought[bought["t_dat"] >= pd.Timestamp(target)].groupby("customer_idx")["article_idx"].apply(set)
    fallback = cand.popular(purchases, target, n=60)["article_idx"].to_numpy()

    def hit_at_1(rec) -> float:
        top = rec.recommend(np.asarray(who), None, None, 1)[:, 0]
        return float(np.mean([a in bought[c] for c, a in zip(who, top, strict=True)]))

    for objective in ("lambdarank", "binary"):
        ranker = Ranker(objective, n_estimators=50).fit(frame)
        learned = hit_at_1(RankerRecommender(ranker, table, fallback))
        popular = hit_at_1(RankerRecommender(ranker, table.iloc[:0], fallback))  # the fallback alone
        assert learned > popular + 0.2, (objective, learned, popular)
        assert max(ranker.importance(), key=ranker.importance().get) in {
            "pair_times_bought",
            "score_repurchase",
            "pair_days_since_last",
        }
