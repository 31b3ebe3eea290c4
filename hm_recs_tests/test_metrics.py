"""The evaluation library against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hm_recs.evaluation.metrics import (
    average_precision_at_k,
    bootstrap_ci,
    coverage,
    map_at_k,
    mrr_at,
    ndcg_at,
    paired_bootstrap_diff,
    per_event_metrics,
    ranks_from_lists,
    ranks_from_scores,
    recall_at,
    top_k,
)


def test_tie_policies_on_a_hand_made_case():
    # target item 1 scores 0.5; items 0 and 3 also score 0.5, item 2 scores 0.9
    scores = np.array([[0.5, 0.5, 0.9, 0.5, 0.1]])
    target = np.array([1])
    assert ranks_from_scores(scores, target, "conservative")[0] == 4  # 0.9, and three items at 0.5
    assert ranks_from_scores(scores, target, "optimistic")[0] == 2
    assert ranks_from_scores(scores, target, "average")[0] == 3
    with pytest.raises(ValueError):
        ranks_from_scores(scores, target, "random")


def test_metrics_from_ranks():
    ranks = np.array([1.0, 2.0, 5.0, 21.0, np.inf])
    assert recall_at(ranks, 1).tolist() == [1, 0, 0, 0, 0]
    assert recall_at(ranks, 5).tolist() == [1, 1, 1, 0, 0]
    assert mrr_at(ranks, 20).tolist() == [1.0, 0.5, 0.2, 0.0, 0.0]
    assert ndcg_at(ranks, 20).tolist() == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(6), 0.0, 0.0])
    m = per_event_metrics(ranks, (1, 20))
    assert m["Recall@20"].mean() == pytest.approx(3 / 5)
    assert m["MRR@20"].mean() == pytest.approx((1 + 0.5 + 0.2) / 5)


def test_ranks_from_lists():
    lists = np.array([[3, 1, 2], [0, 4, 5], [7, 8, 9]])
    assert ranks_from_lists(lists, np.array([1, 0, 6])).tolist() == [2.0, 1.0, math.inf]


def test_top_k_breaks_ties_by_item_index():
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert top_k(scores, 3).tolist() == [[1, 2, 4], [0, 1, 2]]
    assert top_k(scores, 4).tolist() == [[1, 2, 4, 5], [0, 1, 2, 3]]
    assert top_k(scores, 10).tolist() == [[1, 2, 4, 5, 0, 3], [0, 1, 2, 3, 4, 5]]


def test_kaggle_average_precision():
    # hits at positions 1 and 3 of 12, two items bought: (1/1 + 2/3) / 2
    assert average_precision_at_k([5, 9, 7], {5, 7}, 12) == pytest.approx((1 + 2 / 3) / 2)
    # a repeated prediction counts once
    assert average_precision_at_k([5, 5, 7], {5, 7}, 12) == pytest.approx((1 + 2 / 3) / 2)
    # more bought than 12: divide by 12
    assert average_precision_at_k(list(range(12)), set(range(20)), 12) == pytest.approx(1.0)
    assert average_precision_at_k([1, 2], set(), 12) == 0.0
    # customers without purchases are excluded from the mean
    mean, values = map_at_k([[1], [2], [3]], [{1}, set(), {4}], 12)
    assert mean == pytest.approx(0.5) and len(values) == 2


def test_coverage():
    assert coverage(np.array([[0, 1], [1, 2], [-1, -1]]), 10) == pytest.approx(0.3)


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
    rng = np.random.default_rng(0)
    values = rng.random(500) < 0.3
    units = rng.integers(0, 100, 500)
    a = bootstrap_ci(values, units, n_boot=300, seed=1)
    b = bootstrap_ci(values, units, n_boot=300, seed=1)
    assert a == b
    mean, lo, hi = a
    assert lo < mean < hi and mean == pytest.approx(values.mean())
    assert 0.03 < hi - lo < 0.2
    assert bootstrap_ci(np.ones(10), None, n_boot=50) == (1.0, 1.0, 1.0)


def test_paired_bootstrap_tells_a_better_model_apart():
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.4).astype(float)
    b = (rng.random(2000) < 0.2).astype(float)
    d = paired_bootstrap_diff(a, b, n_boot=300)
    assert d["lo"] > 0 and d["p_not_better"] == 0.0
    same = paired_bootstrap_diff(a, a, n_boot=100)
    assert same["diff"] == 0.0 and same["lo"] == same["hi"] == 0.0
