"""What every served recommender needs besides its model: catalogue, histories, fallback ranking,
and the batch scoring that writes the week's recommendations and the Kaggle submission."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hm_recs.baselines.popularity import PopularityRecommender
from hm_recs.data.delta import Lake
from hm_recs.registry.pyfunc import histories_frame
from hm_recs.sessions.purchases import load_purchases, sorted_ids
from hm_recs.tables import ARTICLE_FEATURES, CUSTOMER_FEATURES, RECOMMENDATIONS_TABLE, UNKNOWN_TABLE

FALLBACK_LENGTH = 200
FALLBACK = "time-decayed popularity (half-life 7 days) over every purchase up to the end of the data"


@dataclass
class ServingData:
    articles: pd.DataFrame  # article_idx, article_id (+ names)
    histories: pd.DataFrame  # customer_id, history (article_idx, oldest first)
    fallback: np.ndarray  # article_idx, best first
    data_end: dt.date


def serving_data(lake: Lake) -> ServingData:
    purchases = load_purchases(lake)
    articles = lake.read(
        ARTICLE_FEATURES,
        columns=["article_idx", "article_id", "prod_name", "product_type_name", "colour_group_name"],
    ).to_pandas()
    customers = np.asarray(sorted_ids(lake, CUSTOMER_FEATURES, "customer_id").to_pylist(), dtype=object)
    data_end = pd.Timestamp(purchases["t_dat"].max()).date()
    pop = PopularityRecommender("time_decay").fit(
        purchases["article_idx"].to_numpy(),
        purchases["t_dat"].to_numpy(),
        len(articles),
        data_end + dt.timedelta(days=1),
        FALLBACK_LENGTH,
    )
    return ServingData(
        articles.sort_values("article_idx", ignore_index=True),
        histories_frame(purchases, customers),
        pop.ranking,
        data_end,
    )


def next_week(data_end: dt.date) -> tuple[dt.date, dt.date]:
    """The seven days after the data: the week the recommendations are for."""
    return data_end + dt.timedelta(days=1), data_end + dt.timedelta(days=7)


def recommend_all(model, customer_ids: list[str], batch: int = 4096, progress: bool = True) -> pd.DataFrame:
    """``customer_id, prediction`` for every customer, scored in batches by a pyfunc or a bundle."""
    from tqdm import tqdm

    parts = []
    for s in tqdm(range(0, len(customer_ids), batch), desc="recommend", unit="batch", disable=not progress):
        frame = pd.DataFrame({"customer_id": customer_ids[s : s + batch]})
        parts.append(model.predict(frame) if hasattr(model, "predict") else model.predict_frame(frame))
    return (
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"customer_id": [], "prediction": []})
    )


def write_submission(predictions: pd.DataFrame, customer_ids: list[str], path: Path, k: int = 12) -> Path:
    """The Kaggle file: ``customer_id,prediction``, one row per customer of customers.csv, in its order."""
    by_id = dict(zip(predictions["customer_id"], predictions["prediction"], strict=True))
    missing = [c for c in customer_ids if c not in by_id]
    if missing:
        raise ValueError(f"submission: {len(missing)} customers have no prediction (first: {missing[0]})")
    bad = [c for c in customer_ids if len(by_id[c].split()) != k]
    if bad:
        raise ValueError(f"submission: {len(bad)} predictions do not hold {k} article ids (first: {bad[0]})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pd.DataFrame({"customer_id": customer_ids, "prediction": [by_id[c] for c in customer_ids]}).to_csv(
        tmp, index=False
    )
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def unknown_customer_answer(model, customer_ids: list[str]) -> pd.DataFrame:
    """The served model's answer for a customer it does not know (a well-formed id that is in no
    history), so the CLI answers an unknown id as the REST endpoint does."""
    taken = set(customer_ids)
    probe = next(c * 64 for c in "0123456789abcdef" if c * 64 not in taken)
    frame = pd.DataFrame({"customer_id": [probe]})
    out = model.predict(frame) if hasattr(model, "predict") else model.predict_frame(frame)
    return out.drop(columns=["customer_id", "ignored_history_ids"], errors="ignore")


def recommendations_for(lk, customer_id: str, k: int = 12) -> pd.DataFrame:
    """One customer's stored recommendations with article names; a customer the recommendations run
    did not know gets the champion's answer for unknown customers (``attrs['source']`` says which)."""
    import pyarrow.compute as pc

    if not lk.exists(RECOMMENDATIONS_TABLE):
        raise FileNotFoundError(
            f"{lk.uri(RECOMMENDATIONS_TABLE)} does not exist: materialize the recommendations asset (make "
            "demo)"
        )
    rows = lk.read(RECOMMENDATIONS_TABLE).filter(pc.equal(pc.field("customer_id"), customer_id)).to_pylist()
    if not rows:
        if not lk.exists(UNKNOWN_TABLE):
            raise FileNotFoundError(
                f"{lk.uri(UNKNOWN_TABLE)} does not exist: materialize the recommendations asset again"
            )
        rows = lk.read(UNKNOWN_TABLE).to_pylist()
        rows[0]["cold_start"] = True
    ids = rows[0]["prediction"].split()[:k]
    arts = (
        lk.read(
            ARTICLE_FEATURES, columns=["article_id", "prod_name", "product_type_name", "colour_group_name"]
        )
        .to_pandas()
        .set_index("article_id")
    )
    out = arts.reindex(ids).reset_index()
    out.insert(0, "rank", range(1, len(out) + 1))
    out.attrs.update(
        {
            "model": rows[0]["model"],
            "version": rows[0]["model_version"],
            "week_start": str(rows[0]["week_start"]),
            "cold_start": rows[0]["cold_start"],
            "source": rows[0].get("source", "model"),
        }
    )
    return out


def week_recommendations(
    model, customers: list[str], data: ServingData, model_name: str, version: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every customer's list for the week after the data (``cold_start`` marks those without
    purchases), and what an unknown customer gets, both stamped with the week and the model."""
    start, _ = next_week(data.data_end)
    stamp = {"week_start": start, "model": model_name, "model_version": int(version)}
    preds = recommend_all(model, customers).drop(columns=["ignored_history_ids"], errors="ignore")
    preds = preds.assign(**stamp)
    preds["cold_start"] = ~preds["customer_id"].isin(set(data.histories["customer_id"]))
    unknown = unknown_customer_answer(model, customers).assign(**stamp)
    return preds, unknown


def bad_lists(predictions, catalogue: set[str], k: int = 12) -> int:
    """How many space-separated lists are not ``k`` distinct catalogue articles."""
    lists = [p.split() for p in predictions]
    return sum(1 for row in lists if len(row) != k or len(set(row)) != k or not set(row) <= catalogue)


def serves(model, data: ServingData) -> tuple[bool, dict]:
    """Whether a model answers 12 distinct catalogue articles for a known and an unknown customer,
    and which source answered each."""
    known = data.histories["customer_id"].iloc[0]
    answer = model.predict(pd.DataFrame({"customer_id": [known]}))
    unknown = unknown_customer_answer(model, data.histories["customer_id"].tolist())
    catalogue = set(data.articles["article_id"])
    ok = bad_lists([answer["prediction"].iloc[0], unknown["prediction"].iloc[0]], catalogue) == 0
    return ok, {
        "known_customer_source": answer["source"].iloc[0],
        "unknown_customer_source": unknown["source"].iloc[0],
    }
