"""Build the validation and test weeks of the protocol from the lake, and store model metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from hm_recs.data.delta import Lake
from hm_recs.evaluation.protocol import (
    EvaluationProtocol,
    EvaluationResult,
    TargetWeek,
    build_target_week,
    results_frame,
)
from hm_recs.sessions.purchases import load_purchases
from hm_recs.sessions.split import TimeSplit, load_time_split
from hm_recs.tables import ARTICLE_FEATURES, CUSTOMER_AP_TABLES, METRICS_TABLES

MODEL_FAMILIES = tuple(METRICS_TABLES)


def metrics_table(family: str) -> str:
    """The table of one model family's protocol metrics: each evaluation asset owns one table."""
    if family not in METRICS_TABLES:
        raise ValueError(f"unknown model family {family!r}; expected one of {MODEL_FAMILIES}")
    return METRICS_TABLES[family]


TARGETS = ("validation", "test")


def load_target_weeks(
    lake: Lake,
    protocol: EvaluationProtocol,
    purchases: pd.DataFrame | None = None,
    split: TimeSplit | None = None,
) -> dict[str, TargetWeek]:
    split = split or load_time_split(lake)
    purchases = load_purchases(lake) if purchases is None else purchases
    n_items = lake.count(ARTICLE_FEATURES)
    return {t: build_target_week(purchases, t, *split.window(t), n_items, protocol) for t in TARGETS}


def events_table(weeks: dict[str, TargetWeek]) -> pa.Table:
    """The prediction events every model answers, for inspection: one row per event."""
    parts = []
    for name, w in weeks.items():
        parts.append(
            pa.table(
                {
                    "split": pa.array([name] * w.n_events, pa.string()),
                    "customer_idx": pa.array(w.event_customer, pa.int64()),
                    "target_article_idx": pa.array(w.event_target, pa.int64()),
                    "history_length": pa.array([len(h) for h in w.event_history], pa.int64()),
                    "session_position": pa.array(
                        [len(h) - s for h, s in zip(w.event_history, w.event_session_start, strict=True)],
                        pa.int64(),
                    ),
                }
            )
        )
    return pa.concat_tables(parts)


def write_metrics(
    lake: Lake, family: str, results: Sequence[EvaluationResult], protocol: EvaluationProtocol
) -> int:
    """Replace ``family``'s metrics table with these results (a model no longer evaluated leaves it)."""
    frame = results_frame(results)
    frame["mask_history"] = protocol.mask_history
    frame["collapse_repeats"] = protocol.collapse_repeats
    frame["seconds"] = frame["model"].map({r.model: r.seconds for r in results})
    ap = pd.DataFrame(
        {
            "model": np.repeat([r.model for r in results], [len(r.customers) for r in results]),
            "split": np.repeat([r.week for r in results], [len(r.customers) for r in results]),
            "customer_idx": np.concatenate([r.customers for r in results] or [np.empty(0, np.int64)]),
            "ap": np.concatenate([r.per_customer_ap for r in results] or [np.empty(0)]).astype(float),
        }
    )
    if len(ap):
        lake.write(CUSTOMER_AP_TABLES[family], pa.Table.from_pandas(ap, preserve_index=False))
    return lake.write(metrics_table(family), pa.Table.from_pandas(frame, preserve_index=False))


def read_customer_ap(lake: Lake) -> pd.DataFrame:
    """Every model's average precision per MAP@12 customer (model, split, customer_idx, ap)."""
    tables = [t for t in CUSTOMER_AP_TABLES.values() if lake.exists(t)]
    frames = [lake.read(t).to_pandas() for t in tables]
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["model", "split", "customer_idx", "ap"])
    )


def read_metrics(lake: Lake) -> pd.DataFrame:
    """Every family's metrics that exist, as one frame (empty when none was evaluated)."""
    tables = [metrics_table(f) for f in MODEL_FAMILIES if lake.exists(metrics_table(f))]
    return (
        pd.concat([lake.read(t).to_pandas() for t in tables], ignore_index=True) if tables else pd.DataFrame()
    )
