"""Candidate generation: cheap sources that each propose articles for a customer's next week.

The H&M competition's best solutions ranked a few dozen to a few hundred candidates per customer
with a learned model; the candidates came from simple sources, each a function of the purchases
*before* a cutoff (the first day of the week to predict). Every source here reads only rows with
``t_dat < cutoff``: the caller may pass the whole purchase history, and a test proves that rows on
or after the cutoff change nothing.

A source returns a frame ``customer_idx, article_idx, score`` (higher is better within a source);
popularity sources propose the same list to everyone (or to everyone in an age band), so they
return it once per group and :func:`expand` joins it to the customers asked about.
``candidate_recall`` measures, on the week after the cutoff, the share of purchases a set of
candidates covers and how many candidates a customer gets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

COLUMNS = ["customer_idx", "article_idx", "score"]
AGE_BANDS = (0, 20, 25, 30, 40, 50, 60, 200)  # band edges in years; unknown ages form their own band


def before(purchases: pd.DataFrame, cutoff: dt.date, weeks: int | None = None) -> pd.DataFrame:
    """The purchases a source may read: days before ``cutoff`` (within ``weeks`` weeks of it)."""
    days = purchases["t_dat"].to_numpy().astype("datetime64[D]")
    cut = np.datetime64(cutoff, "D")
    keep = days < cut
    if weeks is not None:
        keep &= days >= cut - np.timedelta64(7 * weeks, "D")
    return purchases.loc[keep, ["customer_idx", "article_idx", "t_dat"]]


def days_before(frame: pd.DataFrame, cutoff: dt.date) -> np.ndarray:
    """Whole days from each row's ``t_dat`` to ``cutoff`` (1 for the day before it; <= 0 on or after)."""
    days = frame["t_dat"].to_numpy().astype("datetime64[D]")
    return (np.datetime64(cutoff, "D") - days).astype(np.int64)


def _top_per_customer(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` best-scored articles of each customer; ties broken by article index."""
    ordered = frame.sort_values(["customer_idx", "score", "article_idx"], ascending=[True, False, True])
    return ordered.groupby("customer_idx", sort=False).head(n).reset_index(drop=True)[COLUMNS]


def repurchase(purchases: pd.DataFrame, cutoff: dt.date, n: int = 12, half_life_days: float = 30.0):
    """Each customer's own past articles, scored by purchases decayed with their age in days."""
    past = before(purchases, cutoff)
    weight = 0.5 ** (days_before(past, cutoff) / half_life_days)
    scored = past.assign(score=weight).groupby(["customer_idx", "article_idx"], as_index=False)["score"].sum()
    return _top_per_customer(scored, n)


def copurchase_partners(
    purchases: pd.DataFrame, cutoff: dt.date, weeks: int = 8, partners: int = 5
) -> pd.DataFrame:
    """Each article's ``partners`` most frequent partners: articles bought with it by the same
    customer in the same 7-day week (counted back from the cutoff) of the last ``weeks`` weeks:
    ``article_idx, article_idx_with, size`` (pair count)."""
    window = before(purchases, cutoff, weeks)
    week = (days_before(window, cutoff) - 1) // 7  # weeks counted back from the cutoff, as the protocol's
    baskets = window.assign(week=week)[["customer_idx", "week", "article_idx"]].drop_duplicates()
    pairs = baskets.merge(baskets, on=["customer_idx", "week"], suffixes=("", "_with"))
    pairs = pairs[pairs["article_idx"] != pairs["article_idx_with"]]
    counts = pairs.groupby(["article_idx", "article_idx_with"], as_index=False).size()
    counts = counts.sort_values(["article_idx", "size", "article_idx_with"], ascending=[True, False, True])
    return counts.groupby("article_idx", sort=False).head(partners).reset_index(drop=True)


def copurchase(
    purchases: pd.DataFrame,
    cutoff: dt.date,
    n: int = 12,
    weeks: int = 8,
    recent_weeks: int = 4,
    partners: int = 5,
    partners_table: pd.DataFrame | None = None,
):
    """Articles bought together (``copurchase_partners``; ``partners_table`` when computed already,
    over every customer) with the customer's purchases of the last ``recent_weeks`` weeks: each
    recent article proposes its partners, scored by how often the pair was bought together."""
    best = (
        partners_table
        if partners_table is not None
        else copurchase_partners(purchases, cutoff, weeks, partners)
    )
    recent = before(purchases, cutoff, recent_weeks)[["customer_idx", "article_idx"]].drop_duplicates()
    proposed = recent.merge(best, on="article_idx")
    scored = (
        proposed.groupby(["customer_idx", "article_idx_with"], as_index=False)["size"]
        .sum()
        .rename(columns={"article_idx_with": "article_idx", "size": "score"})
    )
    return _top_per_customer(scored.astype({"score": float}), n)


def popular(purchases: pd.DataFrame, cutoff: dt.date, n: int = 12, days: int = 7) -> pd.DataFrame:
    """The ``n`` best sellers of the last ``days`` days, for everyone: ``article_idx, score``."""
    recent = before(purchases, cutoff)
    recent = recent[days_before(recent, cutoff) <= days]
    counts = recent.groupby("article_idx", as_index=False).size().rename(columns={"size": "score"})
    counts = counts.sort_values(["score", "article_idx"], ascending=[False, True]).head(n)
    return counts.astype({"score": float}).reset_index(drop=True)


def age_band(ages: pd.Series) -> pd.Series:
    """The band index of each age (``AGE_BANDS``); -1 for an unknown age."""
    band = pd.cut(ages, AGE_BANDS, right=False, labels=False)
    return band.fillna(-1).astype(int)


def popular_by_age(
    purchases: pd.DataFrame, customers: pd.DataFrame, cutoff: dt.date, n: int = 12, days: int = 7
) -> pd.DataFrame:
    """The ``n`` best sellers of the last ``days`` days within each age band:
    ``band, article_idx, score`` (``customers``: customer_idx, age)."""
    bands = customers.assign(band=age_band(customers["age"]))[["customer_idx", "band"]]
    recent = before(purchases, cutoff)
    recent = recent[days_before(recent, cutoff) <= days].merge(bands, on="customer_idx")
    counts = recent.groupby(["band", "article_idx"], as_index=False).size().rename(columns={"size": "score"})
    counts = counts.sort_values(["band", "score", "article_idx"], ascending=[True, False, True])
    return counts.groupby("band", sort=False).head(n).astype({"score": float}).reset_index(drop=True)


def same_product(
    purchases: pd.DataFrame,
    articles: pd.DataFrame,
    cutoff: dt.date,
    n: int = 12,
    weeks: int = 4,
    days: int = 7,
    sales: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Other articles of the products (``product_code``) the customer bought in the last ``weeks``
    weeks: other colours and patterns of the same garment, scored by last ``days`` days' sales
    (``sales``: ``popular``'s rows over every article, when computed already)."""
    codes = articles[["article_idx", "product_code"]]
    recent = before(purchases, cutoff, weeks)[["customer_idx", "article_idx"]].drop_duplicates()
    bought = recent.merge(codes, on="article_idx")
    siblings = bought[["customer_idx", "product_code"]].drop_duplicates().merge(codes, on="product_code")
    siblings = siblings.merge(recent.assign(own=True), on=["customer_idx", "article_idx"], how="left")
    siblings = siblings[siblings["own"].isna()]
    sales = sales if sales is not None else popular(purchases, cutoff, n=len(codes), days=days)
    sales = sales.set_index("article_idx")["score"]
    scored = siblings.assign(score=siblings["article_idx"].map(sales).fillna(0.0))
    return _top_per_customer(scored, n)


def neighbour_table(index, k: int = 10, articles: Sequence[int] | None = None) -> pd.DataFrame:
    """The ``k`` nearest articles of each article in the item index (LanceDB, its joined text and
    image vectors), ``articles`` only when given: ``article_idx, neighbour_idx, similarity`` with
    similarity = 1 - cosine distance; an article is never its own neighbour."""
    ids, vectors = index.vectors()
    if articles is not None:
        keep = np.isin(ids, np.asarray(articles))
        ids, vectors = ids[keep], vectors[keep]
    if len(ids) == 0:
        return pd.DataFrame({"article_idx": [], "neighbour_idx": [], "similarity": []})
    near, dist = index.nearest(vectors, k + 1)
    frame = pd.DataFrame(
        {
            "article_idx": np.repeat(ids, k + 1),
            "neighbour_idx": near.reshape(-1),
            "similarity": 1.0 - dist.reshape(-1).astype(float),
        }
    )
    frame = frame[(frame["neighbour_idx"] >= 0) & (frame["neighbour_idx"] != frame["article_idx"])]
    ordered = frame.sort_values(["article_idx", "similarity", "neighbour_idx"], ascending=[True, False, True])
    return ordered.groupby("article_idx", sort=False).head(k).reset_index(drop=True)


def similar(
    purchases: pd.DataFrame,
    neighbours: pd.DataFrame,
    cutoff: dt.date,
    n: int = 12,
    weeks: int = 4,
    recent: int = 5,
) -> pd.DataFrame:
    """The item index's nearest neighbours (``neighbour_table``) of each customer's ``recent`` latest
    distinct articles of the last ``weeks`` weeks, scored by their best similarity; articles the
    customer bought in that window are left out (repurchase proposes them)."""
    window = before(purchases, cutoff, weeks).sort_values(["customer_idx", "t_dat"], kind="stable")
    latest = window.drop_duplicates(["customer_idx", "article_idx"], keep="last")
    latest = latest.groupby("customer_idx", sort=False).tail(recent)[["customer_idx", "article_idx"]]
    proposed = latest.merge(neighbours, on="article_idx")
    proposed = proposed.rename(columns={"article_idx": "seed", "neighbour_idx": "article_idx"})
    own = window[["customer_idx", "article_idx"]].drop_duplicates().assign(own=True)
    proposed = proposed.merge(own, on=["customer_idx", "article_idx"], how="left")
    proposed = proposed[proposed["own"].isna()]
    scored = proposed.groupby(["customer_idx", "article_idx"], as_index=False)["similarity"].max()
    return _top_per_customer(scored.rename(columns={"similarity": "score"}), n)


def expand(lists: pd.DataFrame, customers: pd.DataFrame, key: str | None = None) -> pd.DataFrame:
    """A list shared by everyone (``key`` None) or by a group (``key``: a column of both frames,
    such as ``band``), as ``customer_idx, article_idx, score`` rows for ``customers``."""
    if key is None:
        return customers[["customer_idx"]].merge(lists, how="cross")[COLUMNS]
    return customers[["customer_idx", key]].merge(lists, on=key)[COLUMNS]


def union(sources: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every (customer, article) any source proposed, with one score column per source (NaN where a
    source did not propose the pair): the ranker's candidate rows."""
    wide = None
    for name, frame in sources.items():
        part = frame[COLUMNS].rename(columns={"score": f"score_{name}"})
        part = part.groupby(["customer_idx", "article_idx"], as_index=False).max()
        wide = part if wide is None else wide.merge(part, on=["customer_idx", "article_idx"], how="outer")
    return wide.sort_values(["customer_idx", "article_idx"], ignore_index=True)


def candidate_recall(
    candidates: pd.DataFrame, purchases: pd.DataFrame, start: dt.date, days: int = 7
) -> dict:
    """On the ``days`` days from ``start``: the share of (customer, article) purchases the candidates
    cover, the share of those customers with at least one covered purchase, and the mean number of
    candidates per customer who bought that week."""
    days_from = -days_before(purchases, start)
    week = purchases.loc[(days_from >= 0) & (days_from < days), ["customer_idx", "article_idx"]]
    week = week.drop_duplicates()
    if week.empty:
        return {
            "recall": float("nan"),
            "customers_hit": float("nan"),
            "candidates_per_customer": 0.0,
            "pairs": 0,
        }
    cand = candidates[["customer_idx", "article_idx"]].drop_duplicates()
    hit = week.merge(cand.assign(hit=True), on=["customer_idx", "article_idx"], how="left")["hit"].notna()
    buyers = week["customer_idx"].unique()
    per_customer = cand[cand["customer_idx"].isin(buyers)].groupby("customer_idx").size()
    customers_hit = week.assign(hit=hit.to_numpy()).groupby("customer_idx")["hit"].any()
    return {
        "recall": float(hit.mean()),
        "customers_hit": float(customers_hit.mean()),
        "candidates_per_customer": float(per_customer.reindex(buyers, fill_value=0).mean()),
        "pairs": int(len(week)),
    }


def customers_of(purchases: pd.DataFrame, start: dt.date, days: int = 7) -> Sequence[int]:
    """The customers who bought in the ``days`` days from ``start`` (the ones a ranker is judged on)."""
    days_from = -days_before(purchases, start)
    return np.unique(purchases.loc[(days_from >= 0) & (days_from < days), "customer_idx"].to_numpy())


@dataclass(frozen=True)
class ModelSource:
    """A protocol model as a source: its top ``n``; ``history_only``: customers without a purchase
    before the cutoff get nothing from it (a sequence model with nothing to read writes one generic
    list, which the popularity sources already give, at the full price of decoding)."""

    recommender: object
    n: int = 50
    history_only: bool = False


def from_recommender(
    recommender,
    purchases: pd.DataFrame,
    cutoff: dt.date,
    who,
    n: int = 50,
    chunk: int = 1024,
    history_only: bool = False,
) -> pd.DataFrame:
    """A model's top ``n`` for each customer in ``who`` from their whole history before ``cutoff``
    (any protocol ``Recommender``: GRU4Rec warm, BART), scored ``n - rank`` so a source's first
    proposal scores highest; asked ``chunk`` customers at a time (a model scores the whole catalogue
    for each customer it is asked about at once); ``history_only``: see :class:`ModelSource`."""
    past = before(purchases, cutoff).sort_values(["customer_idx", "t_dat"], kind="stable")
    histories = past.groupby("customer_idx")["article_idx"].apply(lambda s: s.to_numpy(np.int64))
    customers = np.asarray(who, np.int64)
    if history_only:
        customers = customers[np.isin(customers, histories.index.to_numpy())]
    lists = [histories.get(c, np.empty(0, np.int64)) for c in customers]
    top = np.concatenate(
        [
            recommender.recommend(
                customers[s : s + chunk],
                lists[s : s + chunk],
                np.zeros(len(customers[s : s + chunk]), np.int64),
                n,
            )
            for s in range(0, len(customers), chunk)
        ]
        or [np.empty((0, n), np.int64)]
    )
    rows = pd.DataFrame(
        {
            "customer_idx": np.repeat(customers, n),
            "article_idx": top.reshape(-1),
            "score": np.tile(np.arange(n, 0, -1, dtype=float), len(customers)),
        }
    )
    return rows[rows["article_idx"] >= 0].reset_index(drop=True)
