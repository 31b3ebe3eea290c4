"""The learned ranker: features that never read the label week, and a ranker that learns a signal
the popularity fallback cannot see."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from hm_recs.ranking import candidates as cand
from hm_recs.ranking.ranker import (
    FEATURES,
    MAY_BE_MISSING,
    Ranker,
    RankerRecommender,
    add_features,
    candidate_table,
    labelled,
    ranked_lists,
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
    frame["price"] = 0.01 + 0.001 * frame["article_idx"]
    return frame


def _side_tables(n_customers=150, n_articles=60):
    customers = pd.DataFrame(
        {"customer_idx": np.arange(n_customers), "age": np.linspace(18, 70, n_customers)}
    )
    articles = pd.DataFrame(
        {
            "article_idx": np.arange(n_articles),
            "product_code": np.arange(n_articles) // 3,
            "product_type_no": np.arange(n_articles) % 5,
        }
    )
    return customers, articles


def test_features_never_read_the_label_week():
    purchases = _synthetic()
    customers, articles = _side_tables()
    cutoff = START + dt.timedelta(days=7 * 8)
    who = cand.customers_of(purchases, cutoff)
    past_only = purchases[purchases["t_dat"] < pd.Timestamp(cutoff)]
    a = add_features(
        candidate_table(past_only, customers, articles, cutoff, who), past_only, customers, articles, cutoff
    )
    b = add_features(
        candidate_table(purchases, customers, articles, cutoff, who), purchases, customers, articles, cutoff
    )
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    assert set(FEATURES) <= set(b.columns)
    assert not b[[f for f in FEATURES if f not in MAY_BE_MISSING]].isna().any().any()
    assert b["customer_mean_price"].notna().all() and b["article_product_type_no"].notna().all()


def test_a_hand_made_week_reads_nothing_from_its_first_day_on():
    """Customer 0 bought article 1 the day before the cutoff and article 2 on the cutoff itself (the
    label week): article 2 must look never bought, by the customer or anyone."""
    cutoff = dt.date(2020, 9, 16)
    day = pd.Timestamp(cutoff)
    purchases = pd.DataFrame(
        {
            "customer_idx": [0, 0, 1, 0],
            "article_idx": [1, 2, 2, 3],
            "t_dat": [
                day - pd.Timedelta(days=1),
                day,
                day + pd.Timedelta(days=3),
                day - pd.Timedelta(days=40),
            ],
            "price": [0.02, 0.5, 0.5, 0.04],
        }
    )
    customers = pd.DataFrame({"customer_idx": [0, 1], "age": [30.0, np.nan]})
    articles = pd.DataFrame({"article_idx": [0, 1, 2, 3], "product_code": [7, 7, 8, 8]})
    table = pd.DataFrame({"customer_idx": [0, 0, 0], "article_idx": [1, 2, 3]})
    f = add_features(table, purchases, customers, articles, cutoff).set_index("article_idx")
    assert f.loc[2, "pair_times_bought"] == 0 and f.loc[2, "pair_days_since_last"] == 9999
    assert f.loc[2, "article_sales_7d"] == 0 and f.loc[2, "article_days_since_first"] == -1
    assert np.isnan(f.loc[2, "article_mean_price"])
    assert f.loc[1, "pair_days_since_last"] == 1 and f.loc[1, "article_sales_7d"] == 1
    assert (f["customer_purchases"] == 2).all() and (f["customer_days_since_last"] == 1).all()
    assert f.loc[1, "customer_mean_price"] == 0.03  # the two purchases before the cutoff
    assert f.loc[2, "pair_same_product"] == 1 and f.loc[3, "pair_same_product"] == 0  # 3 is its own
    labels = labelled(table, purchases, cutoff).set_index("article_idx")["label"]
    assert labels.to_dict() == {1: 0, 2: 1, 3: 0}


def test_the_ranker_learns_what_popularity_cannot():
    purchases = _synthetic()
    customers, articles = _side_tables()
    weeks = [START + dt.timedelta(days=7 * w) for w in (5, 6, 7, 8)]
    frame = training_frame(purchases, customers, articles, weeks[:3])
    assert frame["label"].sum() > 0 and (frame["week"] < weeks[3]).all()
    target = weeks[3]
    who = cand.customers_of(purchases, target)
    table = add_features(
        candidate_table(purchases, customers, articles, target, who), purchases, customers, articles, target
    )
    bought = cand.before(purchases, target + dt.timedelta(days=7))
    bought = bought[bought["t_dat"] >= pd.Timestamp(target)].groupby("customer_idx")["article_idx"].apply(set)
    fallback = cand.popular(purchases, target, n=60)["article_idx"].to_numpy()

    def hit_at_1(rec) -> float:
        top = rec.recommend(np.asarray(who), None, None, 1)[:, 0]
        return float(np.mean([a in bought[c] for c, a in zip(who, top, strict=True)]))

    for objective in ("lambdarank", "binary"):
        ranker = Ranker(objective, n_estimators=50).fit(frame)
        # deterministic: the thread count does not change the model
        np.testing.assert_array_equal(
            ranker.score(table), Ranker(objective, 50, threads=1).fit(frame).score(table)
        )
        learned = hit_at_1(RankerRecommender.of(ranker, table, fallback))
        popular = hit_at_1(RankerRecommender.of(ranker, table.iloc[:0], fallback))  # the fallback alone
        assert learned > popular + 0.2, (objective, learned, popular)
        assert max(ranker.importance(), key=ranker.importance().get) in {
            "pair_times_bought",
            "score_repurchase",
            "pair_days_since_last",
        }


def test_each_week_gets_a_source_model_trained_before_it():
    from hm_recs.ranking import pipeline as rp

    cutoffs = {
        "validation": dt.date(2020, 9, 9),
        "test": dt.date(2020, 9, 16),
        "serving": dt.date(2020, 9, 23),
    }
    plans = rp.plan(cutoffs, 3)
    assert [p.train for p in plans][0] == (dt.date(2020, 8, 19), dt.date(2020, 8, 26), dt.date(2020, 9, 2))
    assert plans[2].train[-1] == dt.date(2020, 9, 16)  # the serving ranker learns from the test week
    fits = rp.source_fits(plans)
    trained_before = {**cutoffs, rp.SOURCE_TARGET: rp.source_cutoff(plans)}
    assert all(trained_before[fit] <= week for week, fit in fits.items())
    assert fits[dt.date(2020, 9, 9)] == "validation" and fits[dt.date(2020, 8, 19)] == rp.SOURCE_TARGET
    assert rp.train_weeks_of(list(fits), cutoffs["validation"]) == 3
    # a model source loads each fit once, as the weeks come oldest first, and flags a fit that saw its week
    loads = []
    models = rp.WeeklyModels("m", fits, trained_before, lambda t: loads.append(t) or t)
    assert [models.for_week(w) for w in sorted(fits)] == [fits[w] for w in sorted(fits)]
    assert loads == [rp.SOURCE_TARGET, "validation", "test", "serving"] and models.later_than() == []
    leaky = rp.WeeklyModels("m", fits, {**trained_before, "test": dt.date(2020, 9, 23)}, str)
    assert leaky.later_than() == [dt.date(2020, 9, 16)]


def test_the_objective_is_chosen_on_validation_and_trained_for_every_target(tmp_path):
    from hm_recs.ranking import pipeline as rp

    purchases = _synthetic()
    customers, articles = _side_tables()
    weeks = [START + dt.timedelta(days=7 * w) for w in range(4, 10)]
    cutoffs = {"validation": weeks[3], "test": weeks[4], "serving": weeks[5]}
    plans = rp.plan(cutoffs, 2)
    frame = training_frame(purchases, customers, articles, rp.weeks_to_build(plans)[:-1])
    chosen = iter([0.1, 0.3])  # lambdarank then binary

    fit = rp.fit_rankers(frame, plans, lambda ranker: next(chosen), n_estimators=20)
    assert fit.objective == "binary" and fit.validation == {"lambdarank": 0.1, "binary": 0.3}
    assert {t: r.objective for t, r in fit.rankers.items()} == dict.fromkeys(cutoffs, "binary")
    assert fit.rows["serving"] == len(frame[frame["week"].isin(plans[2].train)])
    # the model file keeps what scores: the same scores after a round trip
    table = frame[frame["week"] == weeks[4]]
    fit.rankers["test"].save(tmp_path / "model.txt")
    again = Ranker.load(tmp_path / "model.txt")
    assert again.objective == "binary" and 20 <= again.n_parameters() <= 20 * 31  # a leaf value each
    np.testing.assert_allclose(again.score(table), fit.rankers["test"].score(table))
    lists = ranked_lists(again, table, k=12)
    assert lists.groupby("customer_idx").size().max() <= 12
    assert rp.distinct_list_share(lists) > 0.5  # customers get their own lists


def test_the_leakage_probe_catches_a_feature_that_saw_the_label_week():
    from hm_recs.ranking import pipeline as rp

    purchases = _synthetic()
    customers, articles = _side_tables()
    week = START + dt.timedelta(days=7 * 8)
    rows = training_frame(purchases, customers, articles, [week])
    ok, info = rp.features_match_truncated(rows, purchases, customers, articles, week, sample=50)
    assert ok and info["differing"] == []
    leaked = rows.copy()  # as if pair_times_bought had counted the week's own purchases
    leaked["pair_times_bought"] += leaked["label"]
    ok, info = rp.features_match_truncated(leaked, purchases, customers, articles, week, sample=50)
    assert not ok and info["differing"] == ["pair_times_bought"]


def test_paired_differences_use_the_customers_both_models_scored():
    from hm_recs.ranking import pipeline as rp

    ap = pd.DataFrame(
        {
            "model": ["ranker"] * 4 + ["gru4rec_warm"] * 3,
            "split": ["test"] * 7,
            "customer_idx": [1, 2, 3, 4, 1, 2, 3],
            "ap": [0.5, 0.5, 0.5, 0.0, 0.25, 0.25, 0.25],
        }
    )
    d = rp.paired_ap_difference(ap, "ranker", "gru4rec_warm", "test", 200)
    assert d["customers"] == 3 and d["diff"] == 0.25 and d["lo"] == d["hi"] == 0.25
    assert rp.paired_ap_difference(ap, "ranker", "bart_semantic_id", "test", 200) is None
    metrics = pd.DataFrame(
        {
            "model": ["ranker", "gru4rec_warm", "bart_semantic_id", "pop_last_week"],
            "split": ["validation"] * 4,
            "metric": ["MAP@12"] * 4,
            "value": [0.06, 0.04, 0.09, 0.03],
            "n": [100, 100, 20, 100],  # BART on a seeded sample is not compared
        }
    )
    assert rp.best_single_model(metrics) == "gru4rec_warm"
