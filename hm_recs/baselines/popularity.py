"""Popularity baselines: the same list for every customer.

* ``all_time`` -- the paper's POP (section 4.1.1): the most bought articles over all training data;
* ``last_week`` -- the most bought articles in the 7 days before the cutoff (the trend);
* ``time_decay`` -- every purchase weighted by 0.5 ** (age in days / half-life).

A count is one row of the transactions (one unit). Ties are broken by catalogue order
(``article_idx`` ascending), so the list is deterministic.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hm_recs.evaluation.metrics import top_k

VARIANTS = ("all_time", "last_week", "time_decay")


def popularity_scores(
    article_idx: np.ndarray,
    t_dat: np.ndarray,
    n_items: int,
    cutoff: dt.date,
    variant: str = "all_time",
    half_life_days: float = 7.0,
) -> np.ndarray:
    """Score of every catalogue item from the purchases strictly before ``cutoff``."""
    dates = np.asarray(t_dat).astype("datetime64[D]")
    cut = np.datetime64(cutoff, "D")
    before = dates < cut
    items = np.asarray(article_idx)[before]
    if variant == "all_time":
        weights = None
    elif variant == "last_week":
        keep = dates[before] >= cut - np.timedelta64(7, "D")
        items, weights = items[keep], None
    elif variant == "time_decay":
        age = (cut - dates[before]).astype(float)
        weights = np.power(0.5, age / half_life_days)
    else:
        raise ValueError(f"unknown popularity variant {variant!r}: one of {VARIANTS}")
    return np.bincount(items, weights=weights, minlength=n_items).astype(float)


@dataclass
class PopularityRecommender:
    """Recommends the same top list to everyone; fit once per cutoff date."""

    variant: str = "all_time"
    half_life_days: float = 7.0
    name: str = ""

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown popularity variant {self.variant!r}: one of {VARIANTS}")
        self.name = self.name or f"pop_{self.variant}"
        self.ranking: np.ndarray | None = None
        self.scores: np.ndarray | None = None

    def fit(
        self, article_idx: np.ndarray, t_dat: np.ndarray, n_items: int, cutoff: dt.date, max_k: int = 200
    ):
        self.scores = popularity_scores(
            article_idx, t_dat, n_items, cutoff, self.variant, self.half_life_days
        )
        self.ranking = top_k(self.scores[None, :], max_k)[0]
        self.cutoff = cutoff
        return self

    def recommend(
        self, customers: np.ndarray, histories: Sequence[np.ndarray], session_starts: np.ndarray, k: int
    ) -> np.ndarray:
        if self.ranking is None:
            raise RuntimeError(f"{self.name}: call fit() before recommend()")
        if k > len(self.ranking) and self.scores is not None:
            self.ranking = top_k(self.scores[None, :], k)[0]
        row = np.full(k, -1, np.int64)
        row[: min(k, len(self.ranking))] = self.ranking[:k]
        return np.broadcast_to(row, (len(customers), k)).copy()


# -- the stored rankings (Delta ``baselines/popularity``) ---------------------------------------------
LIST_LENGTH = 1000  # stored ranking per (variant, cutoff): enough for masking long histories


def ranking_rows(purchases, n_items: int, cutoffs: dict[str, dt.date], half_life_days: float) -> list[dict]:
    """Every variant's ranking (``LIST_LENGTH`` long) for every fit target's cutoff, as table rows."""
    rows = []
    for target, cutoff in cutoffs.items():
        for variant in VARIANTS:
            model = PopularityRecommender(variant, half_life_days).fit(
                purchases["article_idx"].to_numpy(),
                purchases["t_dat"].to_numpy(),
                n_items,
                cutoff,
                LIST_LENGTH,
            )
            for rank, idx in enumerate(model.ranking, start=1):
                rows.append(
                    {
                        "variant": variant,
                        "target": target,
                        "cutoff": cutoff,
                        "rank": rank,
                        "article_idx": int(idx),
                        "score": float(model.scores[idx]),
                    }
                )
    return rows


def load_popularity(lake, variant: str, target: str) -> PopularityRecommender:
    """A fitted popularity model from its stored ranking."""
    from hm_recs.tables import POPULARITY_TABLE

    t = lake.read(POPULARITY_TABLE, columns=["variant", "target", "rank", "article_idx", "score"])
    rows = sorted(
        (r for r in t.to_pylist() if r["variant"] == variant and r["target"] == target),
        key=lambda r: r["rank"],
    )
    if not rows:
        raise ValueError(
            f"{POPULARITY_TABLE} has no ranking for {variant}/{target}: materialize popularity_baselines"
        )
    model = PopularityRecommender(variant)
    model.ranking = np.array([r["article_idx"] for r in rows], np.int64)
    model.scores = None
    return model
