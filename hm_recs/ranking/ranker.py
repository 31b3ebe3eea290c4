"""A learned ranker over the candidate sources: features before a cutoff, labels from the week after.

For each week, its customers get the union of the candidate sources computed at the week's first
day; each (customer, article) row gets features of the customer, the article and the pair, all read
from purchases *before* that day, and the label "bought in the week". Several past weeks make the
training data; LightGBM (``lambdarank`` with a query per customer, or ``binary``) learns to order
the candidates. :class:`RankerRecommender` serves the ranked lists on the shared protocol, filling
any short list from last week's best sellers.

:class:`WeekContext` holds what one cutoff's sources and features share across customers (the
purchases before it sorted by customer, best sellers, co-purchase partners, article statistics),
computed once; :meth:`WeekContext.rows` then builds candidates and features for one batch of
customers at a time, so the full data (1.37M customers) streams through in bounded memory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hm_recs.ranking import candidates as cand

SOURCES = ["repurchase", "copurchase", "popular", "popular_age", "same_product", "similar", "gru4rec", "bart"]
# article attributes given to the ranker as numbers (H&M's codes; LightGBM splits on them)
ATTRIBUTES = ["product_type_no", "index_group_no", "garment_group_no", "colour_group_code"]
FEATURES = [
    *(f"score_{s}" for s in SOURCES),
    "n_sources",
    "customer_purchases",
    "customer_days_since_last",
    "customer_age",
    "customer_mean_price",
    "article_sales_7d",
    "article_sales_28d",
    "article_trend",
    "article_days_since_first",
    "article_mean_price",
    *(f"article_{a}" for a in ATTRIBUTES),
    "pair_times_bought",
    "pair_days_since_last",
    "pair_same_product",
    "pair_price_ratio",
]
# features that stay missing (NaN, which LightGBM routes on its own) where the data has no value:
# a source that did not propose the pair, an unknown age, no price column, an attribute the
# catalogue lacks
MAY_BE_MISSING = {
    *(f"score_{s}" for s in SOURCES),
    "customer_age",
    "customer_mean_price",
    "article_mean_price",
    "pair_price_ratio",
    *(f"article_{a}" for a in ATTRIBUTES),
}
OBJECTIVES = ("lambdarank", "binary")
KEY = ["customer_idx", "article_idx"]


class WeekContext:
    """The purchases before ``cutoff`` and everything the sources and features compute from them
    for every customer alike. ``articles``: article_idx, product_code and any of ``ATTRIBUTES``;
    ``customers``: customer_idx, age; ``neighbours``: the item index's ``neighbour_table`` (None:
    no ``similar`` source); ``purchases`` may hold a ``price`` column."""

    def __init__(
        self,
        purchases: pd.DataFrame,
        customers: pd.DataFrame,
        articles: pd.DataFrame,
        cutoff: dt.date,
        neighbours: pd.DataFrame | None = None,
    ):
        self.cutoff = cutoff
        cols = ["customer_idx", "article_idx", "t_dat"] + (["price"] if "price" in purchases else [])
        past = purchases.loc[cand.days_before(purchases, cutoff) > 0, cols]
        past = past.assign(ago=cand.days_before(past, cutoff)).sort_values("customer_idx", kind="stable")
        self.past = past.reset_index(drop=True)
        self.customers = customers[["customer_idx", "age"]]
        self.articles = articles
        self.neighbours = neighbours
        self.popular = cand.popular(self.past, cutoff, n=24)
        self.popular_age = cand.popular_by_age(self.past, self.customers, cutoff)
        self.partners = cand.copurchase_partners(self.past, cutoff)
        self.sales_7d = cand.popular(self.past, cutoff, n=len(articles))
        self.by_article = self._article_stats()

    def _article_stats(self) -> pd.DataFrame:
        """Every catalogue article's attributes, with its sales statistics where it sold before."""
        past = self.past
        stats = past.groupby("article_idx").agg(article_days_since_first=("ago", "max"))
        stats["article_sales_7d"] = past[past["ago"] <= 7].groupby("article_idx").size()
        stats["article_sales_28d"] = past[past["ago"] <= 28].groupby("article_idx").size()
        stats = stats.fillna({"article_sales_7d": 0, "article_sales_28d": 0})
        stats["article_trend"] = stats["article_sales_7d"] / (stats["article_sales_28d"] / 4 + 1)
        if "price" in past:
            stats["article_mean_price"] = past.groupby("article_idx")["price"].mean()
        attrs = [a for a in ATTRIBUTES if a in self.articles]
        catalogue = self.articles.set_index("article_idx")[attrs].add_prefix("article_")
        return catalogue.join(stats, how="outer")

    def of(self, who) -> pd.DataFrame:
        """The purchases before the cutoff of the customers ``who``."""
        return self.past[np.isin(self.past["customer_idx"].to_numpy(), np.asarray(who, np.int64))]

    def candidates(self, who, models: dict | None = None) -> pd.DataFrame:
        """The union of every source for the customers ``who`` (one ``score_<source>`` column each);
        ``models``: name -> a :class:`~hm_recs.ranking.candidates.ModelSource` (or a bare protocol
        recommender: its top 50) trained before the cutoff."""
        mine = self.of(who)
        asked = self.customers[self.customers["customer_idx"].isin(who)]
        banded = asked.assign(band=cand.age_band(asked["age"]))
        sources = {
            "repurchase": cand.repurchase(mine, self.cutoff),
            "copurchase": cand.copurchase(mine, self.cutoff, partners_table=self.partners),
            "popular": cand.expand(self.popular, asked),
            "popular_age": cand.expand(self.popular_age, banded, "band"),
            "same_product": cand.same_product(mine, self.articles, self.cutoff, sales=self.sales_7d),
        }
        if self.neighbours is not None:
            sources["similar"] = cand.similar(mine, self.neighbours, self.cutoff)
        for name, model in (models or {}).items():
            src = model if isinstance(model, cand.ModelSource) else cand.ModelSource(model)
            sources[name] = cand.from_recommender(
                src.recommender,
                mine,
                self.cutoff,
                asked["customer_idx"],
                src.n,
                history_only=src.history_only,
            )
        return cand.union(sources)

    def features(self, table: pd.DataFrame) -> pd.DataFrame:
        """``table`` (customer_idx, article_idx, score_<source>...) with every column of ``FEATURES``."""
        mine = self.of(table["customer_idx"].unique())
        agg = {"customer_purchases": ("article_idx", "size"), "customer_days_since_last": ("ago", "min")}
        if "price" in mine:
            agg["customer_mean_price"] = ("price", "mean")
        by_customer = mine.groupby("customer_idx").agg(**agg)
        by_pair = mine.groupby(KEY).agg(
            pair_times_bought=("ago", "size"), pair_days_since_last=("ago", "min")
        )
        codes = self.articles.set_index("article_idx")["product_code"]
        products = mine.assign(code=mine["article_idx"].map(codes)).groupby(["customer_idx", "code"]).size()
        ages = self.customers.set_index("customer_idx")["age"].rename("customer_age")
        out = (
            table.join(by_customer, on="customer_idx")
            .join(ages, on="customer_idx")
            .join(self.by_article, on="article_idx")
            .join(by_pair, on=KEY)
        )
        same = pd.MultiIndex.from_arrays([out["customer_idx"], out["article_idx"].map(codes)])
        own = out["pair_times_bought"].fillna(0).to_numpy()
        out["pair_same_product"] = products.reindex(same).fillna(0).to_numpy() - own  # other colours
        for c in FEATURES:
            if c not in out:
                out[c] = np.nan
        scores = [f"score_{s}" for s in SOURCES]
        out["n_sources"] = out[scores].notna().sum(axis=1)
        out["pair_price_ratio"] = out["article_mean_price"] / out["customer_mean_price"]
        # a source's score stays missing where it did not propose the pair (LightGBM routes NaN)
        fill = {
            c: 0.0 for c in FEATURES if c.split("_")[0] not in ("score", "article") and c != "customer_age"
        }
        fill.update({"customer_days_since_last": 9999.0, "pair_days_since_last": 9999.0})
        fill.update({"article_days_since_first": -1.0, "article_sales_7d": 0.0, "article_sales_28d": 0.0})
        fill["article_trend"] = 0.0
        return out.fillna(fill)

    def rows(self, who, models: dict | None = None, batch: int | None = None) -> Iterator[pd.DataFrame]:
        """Candidates with features for ``who``, ``batch`` customers at a time (None: all at once)."""
        for part in customer_batches(np.unique(np.asarray(who, np.int64)), batch):
            yield self.features(self.candidates(part, models))


def customer_batches(who: np.ndarray, batch: int | None) -> Iterator[np.ndarray]:
    """``who`` in slices of ``batch`` customers (None: one slice)."""
    step = batch or max(len(who), 1)
    for s in range(0, len(who), step):
        yield who[s : s + step]


def candidate_table(
    purchases: pd.DataFrame,
    customers: pd.DataFrame,
    articles: pd.DataFrame,
    cutoff: dt.date,
    who,
    models: dict | None = None,
    neighbours: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The union of every source at ``cutoff`` for the customers ``who`` (see ``WeekContext``)."""
    return WeekContext(purchases, customers, articles, cutoff, neighbours).candidates(who, models)


def add_features(
    table: pd.DataFrame,
    purchases: pd.DataFrame,
    customers: pd.DataFrame,
    articles: pd.DataFrame,
    cutoff: dt.date,
) -> pd.DataFrame:
    """``table`` with every column of ``FEATURES``; each reads purchases before ``cutoff`` only."""
    return WeekContext(purchases, customers, articles, cutoff).features(table)


def labelled(table: pd.DataFrame, purchases: pd.DataFrame, start: dt.date, days: int = 7) -> pd.DataFrame:
    """``table`` with ``label`` 1 where the customer bought the article in the ``days`` from ``start``."""
    since = -cand.days_before(purchases, start)
    week = purchases.loc[(since >= 0) & (since < days), KEY].drop_duplicates()
    out = table.merge(week.assign(label=1), on=KEY, how="left")
    return out.fillna({"label": 0}).astype({"label": int})


def training_frame(
    purchases: pd.DataFrame,
    customers: pd.DataFrame,
    articles: pd.DataFrame,
    weeks: Sequence[dt.date],
    models: dict | None = None,
    neighbours: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Candidates, features and labels for each week start in ``weeks`` (its buyers only), with the
    week as ``week``: the ranker learns from weeks that all end before the week it is judged on.
    ``models`` (name -> recommender) must have been trained before the first of ``weeks``."""
    parts = []
    for start in weeks:
        context = WeekContext(purchases, customers, articles, start, neighbours)
        for rows in context.rows(cand.customers_of(purchases, start), models):
            parts.append(labelled(rows, purchases, start).assign(week=start))
    return pd.concat(parts, ignore_index=True)


@dataclass
class Ranker:
    """LightGBM over ``FEATURES``: ``lambdarank`` (one query per customer and week) or ``binary``."""

    objective: str = "lambdarank"
    n_estimators: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    seed: int = 0
    threads: int = 0  # 0: OpenMP's default (every core)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        self.booster = None

    def fit(self, frame: pd.DataFrame) -> Ranker:
        import lightgbm as lgb

        if frame.empty or frame["label"].sum() == 0:
            raise ValueError("the ranker's training rows hold no purchase (label 1): nothing to learn")
        frame = frame.sort_values(["week", "customer_idx"], kind="stable")
        params = dict(
            objective=self.objective,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            seed=self.seed,
            deterministic=True,  # with force_col_wise: the same model from the same rows, on any cores
            force_col_wise=True,
            num_threads=self.threads,
            verbose=-1,
        )
        group = None
        if self.objective == "lambdarank":
            group = frame.groupby(["week", "customer_idx"], sort=False).size().to_numpy()
        data = lgb.Dataset(frame[FEATURES], frame["label"].astype(int), group=group, free_raw_data=True)
        self.booster = lgb.train(params, data, num_boost_round=self.n_estimators)
        return self

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Higher is better within a customer (a probability for ``binary``, a score for ``lambdarank``)."""
        if self.booster is None:
            raise RuntimeError("call fit() or load() before score()")
        if frame.empty:
            return np.empty(0)
        return self.booster.predict(frame[FEATURES])

    def importance(self) -> dict[str, float]:
        """Each feature's total gain, the largest first."""
        gain = self.booster.feature_importance("gain")
        return dict(sorted(zip(FEATURES, map(float, gain), strict=True), key=lambda kv: -kv[1]))

    def n_parameters(self) -> int:
        """The values the model learned: one per leaf of every tree (the comparison table's count)."""
        return int(sum(t["num_leaves"] for t in self.booster.dump_model()["tree_info"]))

    def save(self, path) -> None:
        """LightGBM's text model (the objective and the feature names travel inside it)."""
        self.booster.save_model(str(path))

    @classmethod
    def load(cls, path) -> Ranker:
        import lightgbm as lgb

        booster = lgb.Booster(model_file=str(path))
        if booster.feature_name() != FEATURES:
            raise ValueError(f"{path}: a ranker over other features ({booster.feature_name()[:3]}...)")
        objective = booster.params.get("objective", "lambdarank")
        ranker = cls("binary" if objective.startswith("binary") else "lambdarank")
        ranker.booster = booster
        return ranker


def ranked_lists(ranker: Ranker, table: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """``customer_idx, article_idx, rank`` (0 first): each customer's candidates in the ranker's
    order, ties by article index; the first ``k`` only when given."""
    scored = table[KEY].assign(rank_score=ranker.score(table))
    scored = scored.sort_values(["customer_idx", "rank_score", "article_idx"], ascending=[True, False, True])
    scored["rank"] = scored.groupby("customer_idx", sort=False).cumcount()
    if k is not None:
        scored = scored[scored["rank"] < k]
    return scored[[*KEY, "rank"]].reset_index(drop=True)


class RankerRecommender:
    """The ranker's lists on the shared protocol: one list per customer for the whole week (built at
    the week's start, as the Kaggle task asks), filled from ``fallback`` (a ranking) when short.
    ``lists``: ``ranked_lists``' rows."""

    def __init__(self, lists: pd.DataFrame, fallback: np.ndarray, name: str = "ranker"):
        self.name = name
        ordered = lists.sort_values(["customer_idx", "rank"], kind="stable")
        cust = ordered["customer_idx"].to_numpy()
        starts = np.flatnonzero(np.r_[True, cust[1:] != cust[:-1]]) if len(cust) else np.empty(0, int)
        items = np.split(ordered["article_idx"].to_numpy().astype(np.int64), starts[1:]) if len(cust) else []
        self.lists = dict(zip(cust[starts].tolist(), items, strict=True))
        self.fallback = np.asarray(fallback, np.int64)

    @classmethod
    def of(cls, ranker: Ranker, table: pd.DataFrame, fallback: np.ndarray, name: str = "ranker"):
        return cls(ranked_lists(ranker, table), fallback, name)

    def recommend(self, customers: np.ndarray, histories, session_starts, k: int) -> np.ndarray:
        out = np.full((len(customers), k), -1, np.int64)
        for i, c in enumerate(customers):
            own = self.lists.get(int(c), np.empty(0, np.int64))[:k]
            rest = self.fallback[~np.isin(self.fallback, own)][: k - len(own)]
            row = np.concatenate([own, rest])
            out[i, : len(row)] = row
        return out
