"""Ranking metrics: the one set of definitions every model in hm_recs is judged by.

Ranks are 1-based; ``inf`` means "not ranked" (outside a model's list). For next-item prediction:

* ``Recall@K`` (a.k.a. HitRate@K) = 1 if rank <= K else 0,
* ``MRR@K`` = 1 / rank if rank <= K else 0,
* ``NDCG@K`` = 1 / log2(rank + 1) if rank <= K else 0 (one relevant item, so the ideal DCG is 1),

each averaged over prediction events. ``MAP@12`` is the Kaggle competition metric: per customer,
the average precision of the 12 predictions against the set of articles bought in the target week,
divided by min(|bought|, 12), then averaged over customers who bought something.

Tie policies for score-based ranking (``ranks_from_scores``):

* ``conservative`` (default, as in GRU4Rec's evaluation): rank = number of items scoring >= the
  target, so a tie counts against the model;
* ``optimistic``: rank = 1 + number of items scoring > the target;
* ``average``: the mean of the two.

Top-K lists (``top_k``) break ties by item index ascending (catalogue order of ``article_id``),
so the same scores always give the same list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (1, 3, 5, 10, 20)


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, ties: str = "conservative") -> np.ndarray:
    """1-based rank of each target in its row of ``scores`` (n_events x n_items), over all items."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    greater = (scores > target_scores).sum(axis=1)
    equal = (scores == target_scores).sum(axis=1)  # includes the target itself
    if ties == "conservative":
        ranks = greater + equal
    elif ties == "optimistic":
        ranks = greater + 1
    elif ties == "average":
        ranks = greater + (equal + 1) / 2
    else:
        raise ValueError(f"unknown tie policy {ties!r}: conservative, optimistic or average")
    return ranks.astype(float)


def ranks_from_lists(lists: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based position of each target in its ranked list; ``inf`` when absent."""
    lists = np.asarray(lists)
    hit = lists == np.asarray(targets)[:, None]
    first = hit.argmax(axis=1)
    return np.where(hit.any(axis=1), first + 1, np.inf).astype(float)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best items per row, by score descending then item index ascending."""
    scores = np.asarray(scores)
    n_items = scores.shape[-1]
    k = min(k, n_items)
    if k < n_items:
        # a candidate pool that surely holds the top k, ties included: everything >= the k-th value
        kth = np.partition(scores, n_items - k, axis=-1)[..., n_items - k : n_items - k + 1]
        out = np.empty(scores.shape[:-1] + (k,), dtype=np.int64)
        for i in range(scores.shape[0]):
            cand = np.flatnonzero(scores[i] >= kth[i])
            order = np.lexsort((cand, -scores[i, cand]))
            out[i] = cand[order[:k]]
        return out
    idx = np.arange(n_items)
    return np.stack([np.lexsort((idx, -row))[:k] for row in scores]).astype(np.int64)


def recall_at(ranks: np.ndarray, k: int) -> np.ndarray:
    return (ranks <= k).astype(float)


def mrr_at(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks <= k, 1.0 / ranks, 0.0)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def per_event_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    out = {}
    for k in ks:
        out[f"Recall@{k}"] = recall_at(ranks, k)
        out[f"MRR@{k}"] = mrr_at(ranks, k)
        out[f"NDCG@{k}"] = ndcg_at(ranks, k)
    return out


def average_precision_at_k(predicted: Sequence, actual: set, k: int = 12) -> float:
    """Kaggle's AP@k: repeated predictions count once; 0 when nothing was bought."""
    if not actual:
        return 0.0
    hits, score, seen = 0, 0.0, set()
    for i, p in enumerate(list(predicted)[:k]):
        if p in actual and p not in seen:
            hits += 1
            score += hits / (i + 1.0)
        seen.add(p)
    return score / min(len(actual), k)


def map_at_k(predicted: Sequence[Sequence], actual: Sequence[set], k: int = 12) -> tuple[float, np.ndarray]:
    """Mean AP@k over customers with at least one purchase, and the per-customer values."""
    values = np.array([average_precision_at_k(p, a, k) for p, a in zip(predicted, actual, strict=True) if a])
    return (float(values.mean()) if len(values) else 0.0), values


def coverage(lists: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one recommendation list."""
    lists = np.asarray(lists)
    if lists.size == 0 or n_items == 0:
        return 0.0
    return len(np.unique(lists[lists >= 0])) / n_items


def bootstrap_ci(
    values: np.ndarray,
    units: np.ndarray | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``values`` and a percentile bootstrap (1 - alpha) interval.

    With ``units`` (e.g. the customer of each prediction event) whole units are resampled, since the
    events of one customer are not independent (a cluster bootstrap of the ratio sum / count).
    """
    values = np.asarray(values, float)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    sums, counts = _unit_sums(values, units)
    stats = _resample_ratio(sums, counts, n_boot, seed)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(values.mean()), float(lo), float(hi)


def paired_bootstrap_diff(
    a: np.ndarray,
    b: np.ndarray,
    units: np.ndarray | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Difference mean(a) - mean(b) of two models on the same events, with its interval and the
    share of resamples in which a is not better (a one-sided bootstrap p-value)."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    sums, counts = _unit_sums(diff, units)
    stats = _resample_ratio(sums, counts, n_boot, seed)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return {
        "diff": float(diff.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "p_not_better": float((stats <= 0).mean()),
    }


def _unit_sums(values: np.ndarray, units: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if units is None:
        return values, np.ones_like(values)
    _, inv = np.unique(np.asarray(units), return_inverse=True)
    return np.bincount(inv, weights=values), np.bincount(inv).astype(float)


def _resample_ratio(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int, block: int = 50
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(sums)
    out = np.empty(n_boot)
    for start in range(0, n_boot, block):
        m = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        out[start : start + m] = sums[idx].sum(axis=1) / np.maximum(counts[idx].sum(axis=1), 1e-12)
    return out
