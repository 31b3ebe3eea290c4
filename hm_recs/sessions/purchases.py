"""The sessionized purchases as model-ready arrays: integer customer and article indices.

``article_idx`` / ``customer_idx`` are the positions of the ids in sorted order, exactly as the
feature tables number them (see :mod:`hm_recs.data.preprocess`), computed with Arrow's hash
lookup so that 31.8M rows never become Python strings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hm_recs.data.delta import Lake
from hm_recs.tables import ARTICLE_FEATURES, CUSTOMER_FEATURES, SESSIONS_TABLE


def sorted_ids(lake: Lake, table: str, column: str) -> pa.Array:
    ids = lake.read(table, columns=[column]).column(0).combine_chunks()
    return pc.take(ids, pc.sort_indices(ids))


def load_purchases(lake: Lake, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per unit bought, ordered by customer, time and position in the session.

    Columns: ``customer_idx``, ``article_idx``, ``t_dat`` (datetime64[D] as ``datetime64[s]``),
    ``week_start``, ``session_id``, ``event_idx``, ``is_consecutive_repeat`` and any extra ``columns``.
    """
    base = [
        "customer_id",
        "article_id",
        "t_dat",
        "week_start",
        "session_id",
        "event_idx",
        "is_consecutive_repeat",
    ]
    t = lake.read(SESSIONS_TABLE, columns=base + [c for c in columns if c not in base])
    articles = sorted_ids(lake, ARTICLE_FEATURES, "article_id")
    customers = sorted_ids(lake, CUSTOMER_FEATURES, "customer_id")
    a_idx = pc.index_in(t.column("article_id"), value_set=articles)
    c_idx = pc.index_in(t.column("customer_id"), value_set=customers)
    if a_idx.null_count or c_idx.null_count:
        raise ValueError(
            f"{SESSIONS_TABLE}: {a_idx.null_count} rows with an article and {c_idx.null_count} with a "
            "customer "
            "missing from the feature tables: re-materialize the features and sessions together"
        )
    df = pd.DataFrame(
        {
            "customer_idx": c_idx.to_numpy().astype(np.int32),
            "article_idx": a_idx.to_numpy().astype(np.int32),
            "t_dat": t.column("t_dat").to_numpy().astype("datetime64[D]"),
            "week_start": t.column("week_start").to_numpy().astype("datetime64[D]"),
            "session_id": t.column("session_id").to_numpy(),
            "event_idx": t.column("event_idx").to_numpy(),
            "is_consecutive_repeat": t.column("is_consecutive_repeat").to_numpy(zero_copy_only=False),
        }
    )
    for c in columns:
        if c not in df:
            df[c] = t.column(c).to_numpy(zero_copy_only=False)
    return df.sort_values(
        ["customer_idx", "t_dat", "session_id", "event_idx"], kind="stable", ignore_index=True
    )
