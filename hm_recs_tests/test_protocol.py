"""Prediction events, the evaluation runner and the popularity baselines on hand-made purchases."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from hm_recs.baselines.popularity import PopularityRecommender, popularity_scores
from hm_recs.evaluation.protocol import EvaluationProtocol, build_target_week, evaluate
from hm_recs.sessions.split import TimeSplit

D = dt.date


def purchases_frame(rows):
    """rows: (customer, article, day, session, position, repeat)"""
    df = pd.DataFrame(
        rows,
        columns=["customer_idx", "article_idx", "t_dat", "session_id", "event_idx", "is_consecutive_repeat"],
    )
    df["t_dat"] = pd.to_datetime(df["t_dat"]).to_numpy().astype("datetime64[D]")
    return df


@pytest.fixture
def purchases():
    return purchases_frame(
        [
            # customer 0: history 1, 2 in an earlier week; test session 3, 3 (second unit), 4, 5
            (0, 1, "2020-09-02", 10, 0, False),
            (0, 2, "2020-09-03", 10, 1, False),
            (0, 3, "2020-09-16", 11, 0, False),
            (0, 3, "2020-09-16", 11, 1, True),
            (0, 4, "2020-09-17", 11, 2, False),
            (0, 5, "2020-09-18", 11, 3, False),
            # customer 1: no history, one test item (no next-item event, but a MAP customer)
            (1, 6, "2020-09-20", 12, 0, False),
            # customer 2: only history
            (2, 1, "2020-09-10", 13, 0, False),
        ]
    )


def test_events_collapse_repeats_and_carry_history(purchases):
    week = build_target_week(purchases, "test", D(2020, 9, 16), D(2020, 9, 22), 10, EvaluationProtocol())
    assert week.event_target.tolist() == [4, 5]
    assert [h.tolist() for h in week.event_history] == [[1, 2, 3], [1, 2, 3, 4]]
    assert week.event_session_start.tolist() == [2, 2]
    assert week.customers.tolist() == [0, 1]
    assert [h.tolist() for h in week.customer_history] == [[1, 2], []]
    assert week.purchases == [{3, 4, 5}, {6}]

    raw = build_target_week(
        purchases, "test", D(2020, 9, 16), D(2020, 9, 22), 10, EvaluationProtocol(collapse_repeats=False)
    )
    assert raw.event_target.tolist() == [3, 4, 5]  # the second unit of 3 is an event here


def test_map_requests_continue_the_customers_last_session(purchases):
    """A session-based model asked for a customer's week list gets that customer's last real session
    before the week, not an empty one (which would rank by output biases alone)."""
    rows = purchases.copy()
    extra = purchases_frame([(0, 7, "2020-09-09", 14, 0, False), (0, 8, "2020-09-09", 14, 1, False)])
    rows = pd.concat([rows.iloc[:2], extra, rows.iloc[2:]], ignore_index=True)
    week = build_target_week(rows, "test", D(2020, 9, 16), D(2020, 9, 22), 10, EvaluationProtocol())
    assert [h.tolist() for h in week.customer_history] == [[1, 2, 7, 8], []]
    assert week.map_session_starts().tolist() == [2, 0]  # customer 0's last session is 7, 8

    seen = []

    class SessionModel:
        name = "session"

        def recommend(self, customers, histories, session_starts, k):
            seen.extend(h[s:].tolist() for h, s in zip(histories, session_starts, strict=True))
            return np.zeros((len(customers), k), np.int64)

    evaluate(SessionModel(), week, EvaluationProtocol(n_bootstrap=10))
    assert seen[-2:] == [[7, 8], []]
    assert week.subset(1, 2).map_session_starts().tolist() == [2, 0]


class Oracle:
    """Knows the answer: puts the target first (used to check the runner end to end)."""

    name = "oracle"

    def __init__(self, week):
        self.answers = {
            (c, len(h)): t
            for c, h, t in zip(week.event_customer, week.event_history, week.event_target, strict=True)
        }
        self.bought = dict(zip(week.customers.tolist(), week.purchases, strict=True))

    def recommend(self, customers, histories, session_starts, k):
        out = np.full((len(customers), k), -1)
        for i, (c, h) in enumerate(zip(customers, histories, strict=True)):
            t = self.answers.get((c, len(h)))
            items = [t] if t is not None else sorted(self.bought.get(int(c), ()))
            out[i, : len(items)] = items[:k]
        return out


def test_perfect_model_scores_one_and_history_masking_applies_to_all(purchases):
    protocol = EvaluationProtocol(n_bootstrap=50)
    week = build_target_week(purchases, "test", D(2020, 9, 16), D(2020, 9, 22), 10, protocol)
    res = evaluate(Oracle(week), week, protocol)
    assert res.metrics["Recall@1"][0] == 1.0 and res.metrics["MRR@20"][0] == 1.0
    assert res.metrics["MAP@12"][0] == pytest.approx(1.0)
    assert res.n_events == 2 and res.n_customers == 2

    pop = PopularityRecommender("all_time").fit(
        purchases["article_idx"].to_numpy(), purchases["t_dat"].to_numpy(), 10, D(2020, 9, 16)
    )
    # before the test week: article 1 twice, 2 once; ties by index: [1, 2, 0, 3, ...]
    assert pop.ranking[:4].tolist() == [1, 2, 0, 3]
    res = evaluate(pop, week, protocol)
    # events: target 4 at rank 5, target 5 at rank 6
    assert res.metrics["Recall@5"][0] == pytest.approx(0.5)
    assert res.metrics["MRR@20"][0] == pytest.approx((1 / 5 + 1 / 6) / 2)
    masked = evaluate(pop, week, EvaluationProtocol(mask_history=True, n_bootstrap=50))
    # history 1, 2, 3 removed: list 0, 4, 5, ... -> target 4 at rank 2, target 5 at rank 2 (4 is in history
    # then)
    assert masked.metrics["MRR@20"][0] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_popularity_variants():
    items = np.array([0, 0, 0, 1, 1, 2])
    days = np.array(
        ["2020-01-01", "2020-01-01", "2020-01-02", "2020-01-20", "2020-01-21", "2020-01-21"],
        dtype="datetime64[D]",
    )
    cutoff = D(2020, 1, 22)
    assert popularity_scores(items, days, 4, cutoff, "all_time").tolist() == [3, 2, 1, 0]
    assert popularity_scores(items, days, 4, cutoff, "last_week").tolist() == [0, 2, 1, 0]
    decayed = popularity_scores(items, days, 4, cutoff, "time_decay", half_life_days=1.0)
    assert decayed[1] == pytest.approx(0.25 + 0.5) and decayed[0] < 1e-5
    # nothing on or after the cutoff counts
    assert popularity_scores(items, days, 4, D(2020, 1, 2), "all_time").tolist() == [2, 0, 0, 0]
    with pytest.raises(ValueError):
        PopularityRecommender("median")


def test_time_split_is_the_kaggle_protocol():
    s = TimeSplit.from_dates(D(2018, 9, 20), D(2020, 9, 22))
    assert s.window("test") == (D(2020, 9, 16), D(2020, 9, 22))
    assert s.window("validation") == (D(2020, 9, 9), D(2020, 9, 15))
    assert s.window("train") == (D(2018, 9, 20), D(2020, 9, 8))
    assert s.split_of(D(2020, 9, 15)) == "validation"
    assert TimeSplit.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="too short"):
        TimeSplit.from_dates(D(2020, 9, 10), D(2020, 9, 22))


def _long_metrics():
    import pandas as pd

    rows = []
    for model, base in (
        ("pop_all_time", 0.010),
        ("bart_semantic_id_images", 0.030),
        ("gru4rec_session", 0.020),
    ):
        for split in ("validation", "test"):
            for metric, scale in (
                ("MAP@12", 1.0),
                ("Recall@20", 3.0),
                ("MRR@20", 1.5),
                ("Recall@5", 2.0),
                ("MRR@1", 0.5),
            ):
                v = base * scale
                rows.append(
                    {
                        "model": model,
                        "split": split,
                        "metric": metric,
                        "value": v,
                        "ci_low": v * 0.9,
                        "ci_high": v * 1.1,
                        "n": 1234,
                    }
                )
    return pd.DataFrame(rows)


def test_the_comparison_table_is_narrow_ranked_and_shows_intervals():
    import pandas as pd

    from hm_recs.evaluation.protocol import comparison_markdown

    metrics = _long_metrics()
    extra = pd.DataFrame({"model": ["bart_semantic_id_images"], "split": ["test"], "train s": [54.2]})
    lines = comparison_markdown(metrics, extra).splitlines()
    assert lines[0] == "| split | model | MAP@12 | Recall@20 | MRR@20 | Recall@5 | events | train s |"
    body = [line.split(" | ") for line in lines[2:]]
    assert [(b[0].strip("| "), b[1]) for b in body][:3] == [
        ("test", "bart_semantic_id_images"),
        ("test", "gru4rec_session"),
        ("test", "pop_all_time"),
    ]
    assert body[0][2] == "0.0300 [0.0270, 0.0330]" and body[0][6] == "1234" and body[0][7].strip(" |") == "54"
    assert max(len(line) for line in lines) < 200 and "MRR@1 " not in lines[0]


def test_metric_bars_labels_never_overlap():
    from hm_recs.plots import metric_bars_figure

    rows = _long_metrics().to_dict("records") * 3  # 18 bars with long names
    fig = metric_bars_figure(rows, "MAP@12")
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_yticklabels()]
    assert len(boxes) == 18
    assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert all(b.x0 >= 0 for b in boxes)  # no label cut off at the left edge
