"""The ranking stages on the lake: what each Dagster asset of the ``ranking`` group calls.

Each stage reads its inputs from the lake (and the model store), writes its table or models and
returns what the asset records as metadata and checks; :mod:`hm_recs.ranking.pipeline` holds the
pieces, :mod:`hm_recs.ranking.ranker` the model.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from hm_recs.artifacts import ranker_key
from hm_recs.compute import DeviceSpec
from hm_recs.data.delta import Lake
from hm_recs.ranking import pipeline as rp
from hm_recs.ranking.candidates import neighbour_table
from hm_recs.ranking.ranker import Ranker, RankerRecommender
from hm_recs.sessions.purchases import load_purchases
from hm_recs.sessions.split import FIT_TARGETS, TimeSplit, load_time_split
from hm_recs.tables import (
    CANDIDATE_RECALL_TABLE,
    CANDIDATES_TABLE,
    CUSTOMER_FEATURES,
    RANKER_ROWS_TABLE,
    SESSIONS_TABLE,
)


@dataclass
class Inputs:
    split: TimeSplit
    purchases: pd.DataFrame
    customers: pd.DataFrame
    articles: pd.DataFrame

    @classmethod
    def read(cls, lake: Lake) -> Inputs:
        customers, articles = rp.ranking_inputs(lake)
        return cls(load_time_split(lake), load_purchases(lake, ("price",)), customers, articles)

    def plans(self, train_weeks: int) -> list[rp.RankerWeeks]:
        return rp.plan({t: self.split.cutoff(t) for t in FIT_TARGETS}, train_weeks)


def _weeks(lake: Lake, table: str) -> list[dt.date]:
    return sorted(set(lake.read(table, columns=["week"]).column("week").to_pylist()))


def _week(lake: Lake, table: str, week: dt.date, extra=()) -> pd.DataFrame:
    return lake.read(table, filters=[("week", "=", week), *extra]).to_pandas()


@dataclass
class CandidatesOutcome:
    recall: pd.DataFrame  # week, source, recall, customers_hit, candidates_per_customer, pairs
    fits: dict[str, dict[str, str]]  # model source -> week -> the fit proposing for it
    later_sources: list[str]  # "source week" whose fit was trained on or after the week (must be none)
    validation_recall: float
    neighbours: int


def build_candidates(
    lake: Lake,
    train_weeks: int,
    store=None,
    spec=None,
    index=None,
    neighbours: int = 10,
    batch: int | None = None,
    log: Callable[[str], None] = print,
    gru4rec: bool = True,
    bart: str | None = None,
    bart_depth: int = 20,
    beams: int = 20,
) -> CandidatesOutcome:
    """Write every week's candidates (``rp.candidate_batches``) and each source's recall. ``store``:
    the model store with the model sources' fits (None: no model source), of which ``gru4rec``
    (GRU4Rec's top 50) and ``bart`` (a BART variant's top ``bart_depth`` under ``beams`` beams);
    ``spec``: the ``DeviceSpec`` they run and train on; ``index``: the item index (None: no
    neighbour source)."""
    data = Inputs.read(lake)
    plans = data.plans(train_weeks)
    spec = spec or DeviceSpec("cpu")
    models = []
    if store is not None and gru4rec:
        version = lake.version(SESSIONS_TABLE)
        models.append(
            rp.gru4rec_source(data.purchases, plans, store, data.split, version, spec.torch_device(), log)
        )
    if store is not None and bart:
        models.append(rp.bart_source(lake, store, bart, plans, spec, bart_depth, beams, log))
    near = neighbour_table(index, neighbours) if index is not None else None
    batches = rp.candidate_batches(
        data.purchases, data.customers, data.articles, plans, models, near, batch, log
    )
    lake.write(CANDIDATES_TABLE, batches, schema=rp.candidate_schema())
    split, recall = data.split, []
    for week in rp.weeks_to_build(plans):
        if week != split.cutoff("serving"):
            recall += rp.recall_rows(_week(lake, CANDIDATES_TABLE, week), data.purchases, week)
    frame = pd.DataFrame(recall)
    lake.write(CANDIDATE_RECALL_TABLE, pa.Table.from_pandas(frame, preserve_index=False))
    fits = {m.name: {str(w): t for w, t in m.fits.items()} for m in models}
    later = [f"{m.name} {w}" for m in models for w in m.later_than()]
    union = frame[(frame["week"] == split.validation_start) & (frame["source"] == "union")]["recall"]
    return CandidatesOutcome(
        frame,
        fits,
        later,
        float(union.iloc[0]) if len(union) else float("nan"),
        0 if near is None else len(near),
    )


@dataclass
class RowsOutcome:
    per_week: pd.DataFrame  # week, rows, bought (labelled weeks)
    leakage_probe: dict
    no_leakage: bool


def build_rows(lake: Lake, batch: int | None = None, log: Callable[[str], None] = print) -> RowsOutcome:
    """Write the ranker's rows (``rp.feature_batches``) for every week of the candidates table, and
    probe the validation week's features against purchases cut at its start."""
    data = Inputs.read(lake)
    split = data.split

    def candidates_of(week):
        log(f"features for the week of {week}")
        return _week(lake, CANDIDATES_TABLE, week)

    weeks = _weeks(lake, CANDIDATES_TABLE)
    batches = rp.feature_batches(
        candidates_of, weeks, split.cutoff("serving"), data.purchases, data.customers, data.articles, batch
    )
    lake.write(RANKER_ROWS_TABLE, batches, schema=rp.row_schema())
    week = split.validation_start
    rows = _week(lake, RANKER_ROWS_TABLE, week)
    ok, probe = rp.features_match_truncated(rows, data.purchases, data.customers, data.articles, week)
    labels = lake.read(RANKER_ROWS_TABLE, columns=["week", "label"]).to_pandas()
    labels = labels[labels["label"].notna()].groupby("week")["label"].agg(rows="size", bought="sum")
    return RowsOutcome(labels.reset_index(), probe, ok)


@dataclass
class TrainingOutcome:
    fit: rp.RankerFit
    lists: pd.DataFrame  # the serving lists: customer_idx, article_idx, rank
    seconds: float
    distinct_share: float
    importance: dict[str, float] = field(default_factory=dict)


def train_rankers(
    lake: Lake, protocol, store, objectives, params: dict, batch: int = 100_000
) -> TrainingOutcome:
    """The rankers of every target (``rp.fit_rankers``, the objective chosen on the validation
    week's MAP@12 on the shared protocol) saved to the model store, and the serving lists."""
    from hm_recs.evaluation.protocol import evaluate
    from hm_recs.evaluation.weeks import load_target_weeks

    split, purchases = load_time_split(lake), load_purchases(lake)
    built = _weeks(lake, RANKER_ROWS_TABLE)
    plans = rp.plan(
        {t: split.cutoff(t) for t in FIT_TARGETS}, rp.train_weeks_of(built, split.validation_start)
    )
    serving = split.cutoff("serving")
    frame = lake.read(
        RANKER_ROWS_TABLE, filters=[("week", "in", [w for w in built if w != serving])]
    ).to_pandas()
    frame["week"] = pd.to_datetime(frame["week"]).dt.date
    week = load_target_weeks(lake, protocol, purchases=purchases, split=split)["validation"]
    start = split.validation_start
    judged, fallback = frame[frame["week"] == start], rp.fallback(purchases, start)

    def judge(ranker: Ranker) -> float:
        return evaluate(RankerRecommender.of(ranker, judged, fallback), week, protocol).metrics["MAP@12"][0]

    t0 = time.perf_counter()
    fit = rp.fit_rankers(frame, plans, judge, objectives, **params)
    seconds = time.perf_counter() - t0
    del frame
    for target, ranker in fit.rankers.items():
        folder = store.pull(ranker_key(target))
        folder.mkdir(parents=True, exist_ok=True)
        ranker.save(folder / "model.txt")
        store.push(ranker_key(target))

    def read(lo: int, hi: int) -> pd.DataFrame:
        return _week(
            lake, RANKER_ROWS_TABLE, serving, [("customer_idx", ">=", lo), ("customer_idx", "<", hi)]
        )

    ranker = fit.rankers["serving"]
    lists = rp.serving_lists(ranker, read, lake.count(CUSTOMER_FEATURES), batch)
    return TrainingOutcome(fit, lists, seconds, rp.distinct_list_share(lists), ranker.importance())


@dataclass
class EvaluationOutcome:
    results: list  # EvaluationResult of the validation and test rankers
    best_single: str | None
    best_pop: str | None
    differences: list[dict]  # rp.paired_ap_difference rows

    def versus(self, model: str | None, split: str) -> dict | None:
        return next((d for d in self.differences if d["minus"] == model and d["split"] == split), None)


def evaluate_rankers(lake: Lake, protocol, store) -> EvaluationOutcome:
    """The validation and test rankers on the shared protocol (metrics written as the ``ranker``
    family's), with paired MAP@12 differences to the best single model and the best POP variant."""
    from hm_recs.evaluation.protocol import evaluate
    from hm_recs.evaluation.weeks import load_target_weeks, read_customer_ap, read_metrics, write_metrics

    split, purchases = load_time_split(lake), load_purchases(lake)
    weeks = load_target_weeks(lake, protocol, purchases=purchases, split=split)
    results = []
    for target in ("validation", "test"):
        start = split.cutoff(target)
        ranker = Ranker.load(store.pull(ranker_key(target), required=True) / "model.txt")
        rec = RankerRecommender.of(
            ranker, _week(lake, RANKER_ROWS_TABLE, start), rp.fallback(purchases, start)
        )
        results.append(evaluate(rec, weeks[target], protocol))
    write_metrics(lake, "ranker", results, protocol)
    metrics, ap = read_metrics(lake), read_customer_ap(lake)
    best = rp.best_single_model(metrics)
    pop = rp.best_single_model(metrics[metrics["model"].str.startswith("pop_")])
    diffs = [
        d
        for other in dict.fromkeys(m for m in (best, pop) if m)
        for name in ("validation", "test")
        if (d := rp.paired_ap_difference(ap, "ranker", other, name, protocol.n_bootstrap))
    ]
    return EvaluationOutcome(results, best, pop, diffs)
