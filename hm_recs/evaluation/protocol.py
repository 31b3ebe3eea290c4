"""The evaluation protocol: one set of rules, applied the same way to every model.

* **Time split.** A model is judged on one target week (validation or test) and may only use
  purchases made before that week's first day, plus, for next-item prediction, the earlier items
  of the same session.
* **Next-item prediction events.** In every session (customer x week) of the target week, each
  item after the first is a prediction event: given the customer's history (all earlier weeks and
  the session so far), rank the item. With ``collapse_repeats`` (default) consecutive rows of the
  same article in a session (extra units of one purchase) count as one event, so that "buy the
  same thing again right now" is not rewarded.
* **Full-catalogue ranking.** A model returns a ranked list of the whole catalogue's best
  ``list_length`` (20) articles; nothing is sampled. Ties inside a model's scores are broken by
  catalogue order (``article_id`` ascending); see :mod:`hm_recs.evaluation.metrics`.
* **History masking.** With ``mask_history`` a customer's earlier purchases are removed from every
  model's list before scoring; by default nothing is removed (H&M customers re-buy often, and
  the Kaggle metric rewards it). Either way, the rule is the same for every model.
* **MAP@12.** Once per customer who bought in the target week: 12 articles from the history
  before the week, against the set of articles bought in it (the Kaggle metric).
* **Uncertainty.** Every metric has a 95 % bootstrap interval that resamples customers.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from hm_recs.evaluation.metrics import (
    DEFAULT_KS,
    bootstrap_ci,
    coverage,
    map_at_k,
    per_event_metrics,
    ranks_from_lists,
)


@dataclass(frozen=True)
class EvaluationProtocol:
    ks: tuple[int, ...] = DEFAULT_KS
    map_k: int = 12
    mask_history: bool = False
    collapse_repeats: bool = True
    n_bootstrap: int = 1000
    seed: int = 0
    batch_size: int = 4096

    @property
    def list_length(self) -> int:
        return max(max(self.ks), self.map_k)


class Recommender(Protocol):
    """What the protocol asks of a model: the k best articles (catalogue indices) per request.

    ``histories[i]`` holds the article indices the customer bought before the request, oldest
    first; the current session starts at ``session_starts[i]`` in it (session-based models use
    only ``histories[i][session_starts[i]:]``). Rows may be padded with -1.
    """

    name: str

    def recommend(
        self, customers: np.ndarray, histories: Sequence[np.ndarray], session_starts: np.ndarray, k: int
    ) -> np.ndarray: ...


@dataclass
class TargetWeek:
    """Everything a model is asked and judged on for one target week."""

    name: str
    start: dt.date
    end: dt.date
    n_items: int
    event_customer: np.ndarray
    event_target: np.ndarray
    event_history: list[np.ndarray]
    event_session_start: np.ndarray
    customers: np.ndarray
    customer_history: list[np.ndarray]
    purchases: list[set]
    # where each MAP customer's last session before the week starts in ``customer_history`` (the
    # session a session-based model continues; len(history) for a customer with no history)
    customer_session_start: np.ndarray | None = None

    def map_session_starts(self) -> np.ndarray:
        if self.customer_session_start is not None:
            return self.customer_session_start
        return np.array([len(h) for h in self.customer_history], np.int64)

    @property
    def n_events(self) -> int:
        return len(self.event_target)

    def subset(self, n_events: int, n_customers: int | None = None, seed: int = 0) -> TargetWeek:
        """A seeded uniform sample of ``n_events`` events and ``n_customers`` MAP customers, in their
        original order (for costly models; the sample is the same for every model given the seed)."""
        rng = np.random.default_rng(seed)
        n_customers = n_events if n_customers is None else n_customers
        e = np.sort(rng.choice(self.n_events, min(n_events, self.n_events), replace=False))
        c = np.sort(rng.choice(len(self.customers), min(n_customers, len(self.customers)), replace=False))
        return TargetWeek(
            self.name,
            self.start,
            self.end,
            self.n_items,
            self.event_customer[e],
            self.event_target[e],
            [self.event_history[i] for i in e],
            self.event_session_start[e],
            self.customers[c],
            [self.customer_history[i] for i in c],
            [self.purchases[i] for i in c],
            self.map_session_starts()[c],
        )


def build_target_week(
    purchases: pd.DataFrame,
    name: str,
    start: dt.date,
    end: dt.date,
    n_items: int,
    protocol: EvaluationProtocol,
) -> TargetWeek:
    """The requests and answers of one target week [start, end].

    ``purchases`` has one row per unit bought, ordered by customer, time and session position
    (as :func:`hm_recs.sessions.purchases.load_purchases` returns it), with ``customer_idx``,
    ``article_idx``, ``t_dat``, ``session_id``, ``event_idx`` and ``is_consecutive_repeat``.
    """
    t = purchases["t_dat"].to_numpy().astype("datetime64[D]")
    lo, hi = np.datetime64(start, "D"), np.datetime64(end, "D")
    keep = t <= hi
    if protocol.collapse_repeats:
        keep &= ~purchases["is_consecutive_repeat"].to_numpy()
    df = purchases[keep]
    t = t[keep]
    week = df[t >= lo]
    customers = np.unique(week["customer_idx"].to_numpy()).astype(np.int64)
    before = df[(t < lo) & np.isin(df["customer_idx"].to_numpy(), customers)]
    empty = np.empty(0, np.int64)
    history = {
        int(c): g.to_numpy(np.int64) for c, g in before.groupby("customer_idx", sort=False)["article_idx"]
    }
    last_session = {  # rows are in time order, so a customer's last session is their last rows
        int(c): int((g.to_numpy() == g.to_numpy()[-1]).argmax())
        for c, g in before.groupby("customer_idx", sort=False)["session_id"]
    }

    ev_c, ev_t, ev_h, ev_s = [], [], [], []
    for (c, _sid), items in week.groupby(["customer_idx", "session_id"], sort=True)["article_idx"]:
        items = items.to_numpy(np.int64)
        past = history.get(int(c), empty)
        for i in range(1, len(items)):
            ev_c.append(c)
            ev_t.append(items[i])
            ev_h.append(np.concatenate([past, items[:i]]))
            ev_s.append(len(past))

    bought = {int(c): set(g.tolist()) for c, g in week.groupby("customer_idx")["article_idx"]}
    return TargetWeek(
        name=name,
        start=start,
        end=end,
        n_items=n_items,
        event_customer=np.array(ev_c, np.int64),
        event_target=np.array(ev_t, np.int64),
        event_history=ev_h,
        event_session_start=np.array(ev_s, np.int64),
        customers=customers,
        customer_history=[history.get(int(c), empty) for c in customers],
        purchases=[bought[int(c)] for c in customers],
        customer_session_start=np.array([last_session.get(int(c), 0) for c in customers], np.int64),
    )


@dataclass
class EvaluationResult:
    model: str
    week: str
    metrics: dict[str, tuple[float, float, float]]  # name -> (mean, ci low, ci high)
    n_events: int
    n_customers: int
    seconds: float
    per_event: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    event_units: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    per_customer_ap: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    customers: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.int64))  # of the APs

    def rows(self) -> list[dict]:
        return [
            {
                "model": self.model,
                "split": self.week,
                "metric": m,
                "value": v,
                "ci_low": lo,
                "ci_high": hi,
                "n": self.n_customers if m.startswith(("MAP", "Coverage")) else self.n_events,
            }
            for m, (v, lo, hi) in self.metrics.items()
        ]


def _recommend_batched(model: Recommender, customers, histories, starts, k, batch, desc) -> np.ndarray:
    out = np.full((len(customers), k), -1, np.int64)
    for i in tqdm(
        range(0, len(customers), batch), desc=desc, unit="batch", leave=False, disable=len(customers) <= batch
    ):
        sl = slice(i, i + batch)
        lists = np.asarray(model.recommend(customers[sl], histories[sl], starts[sl], k))
        out[sl, : lists.shape[1]] = lists[:, :k]
    return out


def _apply_mask(model, customers, histories, starts, k, protocol: EvaluationProtocol, desc) -> np.ndarray:
    if not protocol.mask_history:
        return _recommend_batched(model, customers, histories, starts, k, protocol.batch_size, desc)
    extra = max((len(set(h.tolist())) for h in histories), default=0)
    lists = _recommend_batched(model, customers, histories, starts, k + extra, protocol.batch_size, desc)
    out = np.full((len(customers), k), -1, np.int64)
    for i, (row, hist) in enumerate(zip(lists, histories, strict=True)):
        kept = row[~np.isin(row, hist) & (row >= 0)][:k]
        out[i, : len(kept)] = kept
    return out


def evaluate(
    model: Recommender, week: TargetWeek, protocol: EvaluationProtocol = EvaluationProtocol()
) -> EvaluationResult:
    start = time.perf_counter()
    metrics: dict[str, tuple[float, float, float]] = {}
    lists = _apply_mask(
        model,
        week.event_customer,
        week.event_history,
        week.event_session_start,
        max(protocol.ks),
        protocol,
        f"{model.name} next-item",
    )
    ranks = ranks_from_lists(lists, week.event_target)
    per_event = per_event_metrics(ranks, protocol.ks)
    for name, values in per_event.items():
        metrics[name] = bootstrap_ci(values, week.event_customer, protocol.n_bootstrap, seed=protocol.seed)

    # a MAP request is made at the week's start: a session-based model continues the customer's last
    # session before the week (an empty one would score only the output biases)
    starts = week.map_session_starts()
    map_lists = _apply_mask(
        model, week.customers, week.customer_history, starts, protocol.map_k, protocol, f"{model.name} MAP"
    )
    _, ap = map_at_k([row[row >= 0].tolist() for row in map_lists], week.purchases, protocol.map_k)
    metrics[f"MAP@{protocol.map_k}"] = bootstrap_ci(ap, None, protocol.n_bootstrap, seed=protocol.seed)
    cov = coverage(map_lists, week.n_items)
    metrics[f"Coverage@{protocol.map_k}"] = (cov, cov, cov)
    return EvaluationResult(
        model=model.name,
        week=week.name,
        metrics=metrics,
        n_events=week.n_events,
        n_customers=len(week.customers),
        seconds=time.perf_counter() - start,
        per_event=per_event,
        event_units=week.event_customer,
        per_customer_ap=ap,
        customers=np.asarray(week.customers, np.int64),
    )


def results_frame(results: Sequence[EvaluationResult]) -> pd.DataFrame:
    return pd.DataFrame([r for res in results for r in res.rows()])


def metric_table(
    results: Sequence[EvaluationResult], metrics: Sequence[str] | None = None, ci: bool = True
) -> str:
    """A markdown table: one row per (model, week), one column per metric, with 95 % intervals."""
    metrics = list(
        metrics
        or ["Recall@1", "Recall@5", "Recall@10", "Recall@20", "MRR@20", "NDCG@20", "MAP@12", "Coverage@12"]
    )
    head = "| model | week | events | customers | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (4 + len(metrics))]
    for r in results:
        cells = []
        for m in metrics:
            v, lo, hi = r.metrics.get(m, (float("nan"),) * 3)
            cells.append(f"{v:.4f} [{lo:.4f}, {hi:.4f}]" if ci and lo != hi else f"{v:.4f}")
        lines.append(f"| {r.model} | {r.week} | {r.n_events} | {r.n_customers} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_markdown(
    metrics: pd.DataFrame,
    extra: pd.DataFrame | None = None,
    shown: Sequence[str] = ("MAP@12", "Recall@20", "MRR@20", "Recall@5"),
) -> str:
    """The models side by side, narrow enough for a UI panel: one row per (split, model), best
    MAP@12 first within a split, each metric as ``value [95 % interval]``.

    ``metrics`` is the long frame of :func:`results_frame` (model, split, metric, value, ci_low,
    ci_high, n); ``extra`` (model, split and any further columns, such as training seconds) is
    joined on the right.
    """
    rows = metrics[metrics.metric.isin(shown)]
    cell = rows.assign(
        cell=[
            f"{v:.4f} [{lo:.4f}, {hi:.4f}]" if lo != hi else f"{v:.4f}"
            for v, lo, hi in zip(rows.value, rows.ci_low, rows.ci_high, strict=True)
        ]
    )
    wide = cell.pivot_table(index=["split", "model"], columns="metric", values="cell", aggfunc="first")
    order = rows[rows.metric == shown[0]].set_index(["split", "model"])["value"]
    events = metrics[metrics.metric == shown[0]].set_index(["split", "model"])["n"]
    wide = wide.reindex(columns=[m for m in shown if m in wide.columns])
    wide["events"] = events.reindex(wide.index)
    if extra is not None:
        wide = wide.join(extra.set_index(["split", "model"]))
    wide["_order"] = order.reindex(wide.index)
    wide = (
        wide.reset_index()
        .sort_values(["split", "_order", "model"], ascending=[True, False, True])
        .drop(columns="_order")
    )
    cols = list(wide.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in wide.itertuples(index=False):
        lines.append(
            "| "
            + " | ".join("" if pd.isna(v) else (f"{v:,.0f}" if isinstance(v, float) else str(v)) for v in r)
            + " |"
        )
    return "\n".join(lines)


def metrics_are_sane(results: Sequence[EvaluationResult]) -> tuple[bool, dict]:
    """Every metric a probability-like number in [0, 1] with its mean inside its interval."""
    import math

    bad = []
    for r in results:
        for name, (v, lo, hi) in r.metrics.items():
            if any(math.isnan(x) for x in (v, lo, hi)) and r.n_events:
                bad.append(f"{r.model}/{r.week}/{name}: nan")
            elif not (0.0 <= lo <= v + 1e-12 and v <= hi + 1e-12 and hi <= 1.0):
                bad.append(f"{r.model}/{r.week}/{name}: {lo:.4f} <= {v:.4f} <= {hi:.4f} fails")
    return not bad, {"problems": "; ".join(bad[:20]) or "none"}
