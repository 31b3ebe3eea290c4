"""A learned ranker over the candidate sources: features before a cutoff, labels from the week after.

For each week, the customers who bought in it get the union of the candidate sources computed at
the week's first day; each (customer, article) row gets features of the customer, the article and
the pair, all read from purchases *before* that day, and the label "bought in the week". Several
past weeks make the training data; LightGBM (``lambdarank`` with a query per customer, or
``binary``) learns to order the candidates. :class:`RankerRecommender` serves the ranked lists on
the shared protocol, filling any short list from last week's best sellers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hm_recs.ranking import candidates as cand

FEATURES = [
    "score_repurchase",
    "score_copurchase",
    "score_popular",
    "score_popular_age",
    "score_same_product",
    "score_gru4rec",
    "n_sources",
    "customer_purchases",
    "customer_days_since_last",
    "customer_age",
    "article_sales_7d",
    "article_sales_28d",
    "article_trend",
    "article_days_since_first",
    "pair_times_bought",
    "pair_days_since_last",
]
OBJECTIVES = ("lambdarank", "binary")


def candidate_table(
    purchases: pd.DataFrame,
    customers: pd.DataFrame,
    articles: pd.DataFrame,
    cutoff: dt.date,
    who,
    models: dict | None = None,
) -> pd.DataFrame:
    """The union of every source at ``cutoff`` for the customers ``who`` (one score column each);
    ``models``: name -> a protocol recommender trained before ``cutoff``, whose top 50 is a source."""
    asked = customers[customers["customer_idx"].isin(who)][["customer_idx", "age"]]
    banded = asked.assign(band=cand.age_band(asked["age"]))
    sources = {
        "repurchase": cand.repurchase(purchases, cutoff),
        "copurchase": cand.copurchase(purchases, cutoff),
        "popular": cand.expand(cand.popular(purchases, cutoff, n=24), asked),
        "popular_age": cand.expand(cand.popular_by_age(purchases, customers, cutoff), banded, "band"),
        "same_product": cand.same_product(purchases, articles, cutoff),
    }
    for name, model in (models or {}).items():
        sources[name] = cand.from_recommender(model, purchases, cutoff, who)
    return cand.union({k: v[v["customer_idx"].isin(who)] for k, v in sources.items()})


def add_features(
    table: pd.DataFrame, purchases: pd.DataFrame, customers: pd.DataFrame, cutoff: dt.date
) -> pd.DataFrame:
    """``table`` (customer_idx, article_idx, score_<source>...) with every column of ``FEATURES``;
    each reads purchases before ``cutoff`` only."""
    past = cand.before(purchases, cutoff)
    ago = cand.days_before(past, cutoff)
    past = past.assign(ago=ago)
    by_customer = past.groupby("customer_idx").agg(
        customer_purchases=("article_idx", "size"), customer_days_since_last=("ago", "min")
    )
    by_article = past.groupby("article_idx").agg(article_days_since_first=("ago", "max"))
    by_article["article_sales_7d"] = past[past["ago"] <= 7].groupby("article_idx").size()
    by_article["article_sales_28d"] = past[past["ago"] <= 28].groupby("article_idx").size()
    by_article = by_article.fillna({"article_sales_7d": 0, "article_sales_28d": 0})
    by_article["article_trend"] = by_article["article_sales_7d"] / (by_article["article_sales_28d"] / 4 + 1)
    by_pair = past.groupby(["customer_idx", "article_idx"]).agg(
        pair_times_bought=("ago", "size"), pair_days_since_last=("ago", "min")
    )
    ages = customers.set_index("customer_idx")["age"].rename("customer_age")
    out = (
        table.join(by_customer, on="customer_idx")
        .join(ages, on="customer_idx")
        .join(by_article, on="article_idx")
        .join(by_pair, on=["customer_idx", "article_idx"])
    )
    scores = [c for c in FEATURES if c.startswith("score_")]
    for c in scores:
        if c not in out:
            out[c] = np.nan
    out["n_sources"] = out[scores].notna().sum(axis=1)
    fill = {c: 0.0 for c in FEATURES if c not in ("customer_age",)}
    fill.update({"customer_days_since_last": 9999.0, "pair_days_since_last": 9999.0})
    fill["article_days_since_first"] = -1.0
    return out.fillna(fill)


def labelled(table: pd.DataFrame, purchases: pd.DataFrame, start: dt.date, days: int = 7) -> pd.DataFrame:
    """``table`` with ``label`` 1 where the customer bought the article in the ``days`` from ``start``."""
    since = -cand.days_before(purchases, start)
    week = purchases.loc[(since >= 0) & (since < days), ["customer_idx", "article_idx"]].drop_duplicates()
    out = table.merge(week.assign(label=1), on=["customer_idx", "article_idx"], how="left")
    return out.fillna({"label": 0}).astype({"label": int})


def training_frame(
    purchases: pd.DataFrame,
    customers: pd.DataFrame,
    articles: pd.DataFrame,
    weeks: Sequence[dt.date],
    models: dict | None = None,
) -> pd.DataFrame:
    """Candidates, features and labels for each week start in ``weeks`` (its buyers only), with the
    week as ``week``: the ranker learns from weeks that all end before the week it is judged on.
    ``models`` (name -> recommender) must have been trained before the first of ``weeks``."""
    parts = []
    for start in weeks:
        who = cand.customers_of(purchases, start)
        table = candidate_table(purchases, customers, articles, start, who, models)
        table = add_features(table, purchases, customers, start)
        parts.append(labelled(table, purchases, start).assign(week=start))
    return pd.concat(parts, ignore_index=True)


@dataclass
class Ranker:
    """LightGBM over ``FEATURES``: ``lambdarank`` (one query per customer and week) or ``binary``."""

    objective: str = "lambdarank"
    n_estimators: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        self.model = None

    def fit(self, frame: pd.DataFrame) -> Ranker:
        import lightgbm as lgb

        frame = frame.sort_values(["week", "customer_idx"], kind="stable")
        params = dict(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            random_state=self.seed,
            deterministic=True,
            n_jobs=1,
            verbose=-1,
        )
        if self.objective == "lambdarank":
            groups = frame.groupby(["week", "customer_idx"], sort=False).size().to_numpy()
            self.model = lgb.LGBMRanker(objective="lambdarank", **params)
            self.model.fit(frame[FEATURES], frame["label"], group=groups)
        else:
            self.model = lgb.LGBMClassifier(objective="binary", **params)
            self.model.fit(frame[FEATURES], frame["label"])
        return self

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("call fit() before score()")
        if self.objective == "binary":
            return self.model.predict_proba(frame[FEATURES])[:, 1]
        return self.model.predict(frame[FEATURES])

    def importance(self) -> dict[str, float]:
        """Each feature's total gain, the largest first."""
        gain = self.model.booster_.feature_importance("gain")
        return dict(sorted(zip(FEATURES, map(float, gain), strict=True), key=lambda kv: -kv[1]))


class RankerRecommender:
    """The ranker's lists on the shared protocol: one list per customer for the whole week (built at
    the week's start, as the Kaggle task asks), filled from ``fallback`` (a ranking) when short."""

    def __init__(self, ranker: Ranker, table: pd.DataFrame, fallback: np.ndarray, name: str = "ranker"):
        self.name = name
        scored = table.assign(rank_score=ranker.score(table) if len(table) else np.empty(0))
        scored = scored.sort_values(
            ["customer_idx", "rank_score", "article_idx"], ascending=[True, False, True]
        )
        self.lists = scored.groupby("customer_idx")["article_idx"].apply(lambda s: s.to_numpy()).to_dict()
        self.fallback = np.asarray(fallback, np.int64)

    def recommend(self, customers: np.ndarray, histories, session_starts, k: int) -> np.ndarray:
        out = np.full((len(customers), k), -1, np.int64)
        for i, c in enumerate(customers):
            own = self.lists.get(int(c), np.empty(0, np.int64))[:k]
            rest = self.fallback[~np.isin(self.fallback, own)][: k - len(own)]
            row = np.concatenate([own, rest])
            out[i, : len(row)] = row
        return out
