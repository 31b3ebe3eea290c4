"""The ranker's weeks and stages as the Dagster assets and the benchmark run them.

Three rankers are trained, like every model family's three fits: for the validation week (on the
``train_weeks`` weeks before it; it chooses the objective), for the test week (the reported
numbers) and for serving (the week after the data: the registered lists). Each week's candidates
come from purchases before its first day; a model source (GRU4Rec, BART) proposes for a week only
when it was trained before that week: the target weeks use the family's own fits, the training
weeks before the validation week an extra fit before the first of them (``SOURCE_TARGET``), trained
as the family's validation fit was (:class:`WeeklyModels`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from hm_recs.ranking import candidates as cand
from hm_recs.ranking.ranker import (
    FEATURES,
    KEY,
    OBJECTIVES,
    SOURCES,
    Ranker,
    WeekContext,
    customer_batches,
    labelled,
    ranked_lists,
)

SCORES = [f"score_{s}" for s in SOURCES]

TARGETS = ("validation", "test", "serving")
SOURCE_TARGET = "ranker_source"  # a model source's extra fit before the first training week
SERVED_DEPTH = 24  # articles kept per customer in the registered lists (filled from the fallback)
FALLBACK_DEPTH = 200


@dataclass(frozen=True)
class RankerWeeks:
    target: str  # validation | test | serving
    start: dt.date  # the first day of the week it ranks
    train: tuple[dt.date, ...]  # the labelled weeks it learns from, oldest first


def plan(cutoffs: dict[str, dt.date], train_weeks: int) -> list[RankerWeeks]:
    """Each target's week (``cutoffs``: target -> first day, ``TimeSplit.cutoff``) and the
    ``train_weeks`` weeks before it."""
    if train_weeks < 1:
        raise ValueError(f"train_weeks must be at least 1, got {train_weeks}")
    return [
        RankerWeeks(
            t, cutoffs[t], tuple(cutoffs[t] - dt.timedelta(days=7 * k) for k in range(train_weeks, 0, -1))
        )
        for t in TARGETS
    ]


def weeks_to_build(plans: Sequence[RankerWeeks]) -> list[dt.date]:
    """Every week with candidates: the training weeks and the target weeks, oldest first."""
    return sorted({w for p in plans for w in (*p.train, p.start)})


def train_weeks_of(weeks: Sequence[dt.date], validation_start: dt.date) -> int:
    """How many training weeks a built table holds before the validation week."""
    return sum(1 for w in set(weeks) if w < validation_start)


def source_fits(plans: Sequence[RankerWeeks]) -> dict[dt.date, str]:
    """Week -> the fit target of a model source that proposes for it (trained before that week)."""
    targets = {p.start: p.target for p in plans}
    return {w: targets.get(w, SOURCE_TARGET) for w in weeks_to_build(plans)}


def source_cutoff(plans: Sequence[RankerWeeks]) -> dt.date:
    """The first day a model source's extra fit may not see: the first training week."""
    return min(weeks_to_build(plans))


@dataclass
class WeeklyModels:
    """A model as a candidate source, one fit per week: ``fits`` (week -> fit target), when each
    fit's data ends (``trained_before``) and ``load`` (fit target -> its ``ModelSource``), called
    once per fit as the weeks are built oldest first (one model in memory at a time)."""

    name: str  # the source: its score column is score_<name>
    fits: dict[dt.date, str]
    trained_before: dict[str, dt.date]
    load: Callable[[str], cand.ModelSource]
    _loaded: tuple = (None, None)

    def for_week(self, week: dt.date) -> cand.ModelSource:
        target = self.fits[week]
        if self._loaded[0] != target:
            self._loaded = (None, None)  # free the previous fit first
            self._loaded = (target, self.load(target))
        return self._loaded[1]

    def later_than(self) -> list[dt.date]:
        """The weeks whose fit saw data from the week on (must be none)."""
        return [w for w, t in self.fits.items() if self.trained_before[t] > w]


def week_customers(purchases: pd.DataFrame, start: dt.date, labelled_week: bool) -> np.ndarray:
    """Whom a week ranks: its buyers where the week has labels (training and judged weeks), every
    customer with a purchase before it for the serving week (the submission)."""
    if labelled_week:
        return np.asarray(cand.customers_of(purchases, start), np.int64)
    return np.unique(cand.before(purchases, start)["customer_idx"].to_numpy()).astype(np.int64)


def week_candidates(
    context: WeekContext, who, models: dict | None = None, batch: int | None = None
) -> Iterator[pd.DataFrame]:
    """The union of the sources for ``who`` at the context's cutoff, ``batch`` customers at a time,
    with the week as ``week``."""
    for part in customer_batches(np.asarray(who, np.int64), batch):
        yield context.candidates(part, models).assign(week=context.cutoff)


def week_rows(
    context: WeekContext, table: pd.DataFrame, purchases: pd.DataFrame, labels: bool
) -> pd.DataFrame:
    """A week's candidates with their features and, where the week is in the data, their labels
    (``label`` is missing for the serving week)."""
    rows = context.features(table)
    if labels:
        return labelled(rows, purchases, context.cutoff)
    return rows.assign(label=pd.array([pd.NA] * len(rows), dtype="Int8"))


def rows_of(frame: pd.DataFrame, weeks: Sequence[dt.date]) -> pd.DataFrame:
    """The labelled rows of ``weeks``."""
    days = pd.to_datetime(frame["week"]).dt.date
    out = frame[days.isin(set(weeks)) & frame["label"].notna()]
    return out.astype({"label": int})


def fallback(purchases: pd.DataFrame, start: dt.date) -> np.ndarray:
    """What fills a short list: the last 7 days' best sellers before ``start``."""
    return cand.popular(purchases, start, n=FALLBACK_DEPTH)["article_idx"].to_numpy()


@dataclass
class RankerFit:
    objective: str  # the one chosen on the validation week
    validation: dict[str, float]  # objective -> its validation score
    rankers: dict[str, Ranker]  # target -> the chosen objective trained on the target's weeks
    rows: dict[str, int]  # target -> training rows


def fit_rankers(
    frame: pd.DataFrame,
    plans: Sequence[RankerWeeks],
    judge: Callable[[Ranker], float],
    objectives: Sequence[str] = OBJECTIVES,
    **params,
) -> RankerFit:
    """Each objective trained on the validation target's weeks and scored by ``judge`` (MAP@12 on
    the validation week); the best (ties: the first in ``objectives``) is trained for the other
    targets on their own weeks."""
    by_target = {p.target: p for p in plans}
    train = {t: rows_of(frame, p.train) for t, p in by_target.items()}
    fitted = {o: Ranker(o, **params).fit(train["validation"]) for o in objectives}
    scores = {o: float(judge(r)) for o, r in fitted.items()}
    best = max(objectives, key=lambda o: (scores[o], -list(objectives).index(o)))
    rankers = {"validation": fitted[best]}
    for target in (t for t in TARGETS if t != "validation" and t in by_target):
        rankers[target] = Ranker(best, **params).fit(train[target])
    return RankerFit(best, scores, rankers, {t: len(f) for t, f in train.items()})


def distinct_list_share(lists: pd.DataFrame, k: int = 12) -> float:
    """The share of customers whose top ``k`` no other customer got: near 0 when the ranker ignores
    its input (everyone gets the same list), near 1 when it personalises."""
    top = lists[lists["rank"] < k].sort_values([*KEY[:1], "rank"])
    keys = top.groupby("customer_idx")["article_idx"].apply(tuple)
    return float((~keys.duplicated(keep=False)).mean()) if len(keys) else 0.0


# ---------------------------------------------------------------------------------------------
# the stages the assets run
# ---------------------------------------------------------------------------------------------
def ranking_inputs(lake) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(customers: customer_idx, age; articles: article_idx, product_code and ``ATTRIBUTES``)."""
    from hm_recs.ranking.ranker import ATTRIBUTES
    from hm_recs.tables import ARTICLE_FEATURES, CUSTOMER_FEATURES

    names = {f.name for f in lake.table(ARTICLE_FEATURES).schema().fields}
    columns = ["article_idx", "product_code", *(a for a in ATTRIBUTES if a in names)]
    articles = lake.read(ARTICLE_FEATURES, columns=columns).to_pandas()
    customers = lake.read(CUSTOMER_FEATURES, columns=["customer_idx", "age"]).to_pandas()
    return customers, articles


def gru4rec_source(purchases, plans, store, split, data_version, device="cpu", log=print) -> WeeklyModels:
    """GRU4Rec (warm, top 50) per week (``source_fits``): the family's validation, test and serving
    fits from the model store, and the extra fit before the first training week, trained here with
    the validation fit's settings (resumed from the store)."""
    from hm_recs.models.gru4rec import GRU4RecRecommender, fit_stored, load_fitted

    # load_fitted gives the validation fit for "test" when the family has no test refit; a family
    # without a serving refit proposes for the serving week with its test fit (older, never newer)
    fitted = {t: load_fitted(store, t, device) for t in ("validation", "test")}
    try:
        fitted["serving"] = load_fitted(store, "serving", device)
    except FileNotFoundError:
        fitted["serving"] = fitted["test"]
    cutoff = {SOURCE_TARGET: source_cutoff(plans)}
    for f in fit_stored(purchases, cutoff, fitted["validation"].cfg, store, data_version, device, log):
        fitted[SOURCE_TARGET] = f.model
    trained = {t: split.cutoff(t) for t in TARGETS} | cutoff
    return WeeklyModels(
        "gru4rec",
        source_fits(plans),
        trained,
        lambda t: cand.ModelSource(GRU4RecRecommender(fitted[t], "warm")),
    )


def bart_source(
    lake, store, variant: str, plans, spec, n: int = 20, beams: int = 20, log=print
) -> WeeklyModels:
    """BART ``variant``'s top ``n`` by catalogue-constrained beam search (it writes only real
    articles, ranked by sequence likelihood) for customers with a history, per week: the newest of
    the variant's stored fits trained before the week (``model_for_week``, the rule its evaluation
    follows), and an extra fit before the first training week trained as the variant's fresh models
    are (the ``recipe`` in their notes; reused or resumed from the model store)."""
    from hm_recs.artifacts import bart_key
    from hm_recs.models.bart import VARIANTS, SequenceCodec, fitted_models, load_bart, load_notes
    from hm_recs.models.bart_fitting import fit_at, load_tokenizer, sequences_from_table
    from hm_recs.retrieval.bart_evaluation import model_for_week
    from hm_recs.retrieval.bart_recommender import BartRecommender
    from hm_recs.retrieval.catalogue import CatalogueTables
    from hm_recs.retrieval.constrained import ItemTrie
    from hm_recs.tables import SEQUENCES

    folders = fitted_models(store, variant)
    notes = load_notes(folders[0])
    if "recipe" not in notes:
        raise ValueError(
            f"bart/{variant}: its models record no training recipe (older than this code): "
            f"re-materialize bart_model_{variant}"
        )
    catalogue = CatalogueTables.from_lake(lake).catalogue()
    tokenizer = load_tokenizer(store)
    codec = SequenceCodec(catalogue, VARIANTS[variant], tokenizer, notes["max_source_tokens"])
    seqs = sequences_from_table(lake.read(SEQUENCES))
    extra = fit_at(
        variant,
        SOURCE_TARGET,
        source_cutoff(plans),
        notes["recipe"],
        tokenizer,
        codec,
        seqs,
        spec,
        store,
        [variant, lake.version(SEQUENCES), notes["max_source_tokens"]],
        log,
    )
    folders = [store.pull(f"{bart_key(variant, SOURCE_TARGET)}/model"), *folders]
    by_target = {f.parent.name: f for f in folders}  # bart/<variant>/<target>/model
    trained = {t: dt.date.fromisoformat(load_notes(f)["trained_before"]) for t, f in by_target.items()}
    fits = {w: model_for_week(folders, w).parent.name for w in weeks_to_build(plans)}
    log(f"BART {variant} source: {extra.result.steps} steps for the fit before {source_cutoff(plans)}")

    def load(target: str) -> cand.ModelSource:
        tok, model, _ = load_bart(by_target[target], spec.torch_device())
        model_codec = SequenceCodec(catalogue, VARIANTS[variant], tok, notes["max_source_tokens"])
        rec = BartRecommender(f"bart_{variant}", model, model_codec, "constrained", beams, trie=trie)
        return cand.ModelSource(rec, n, history_only=True)

    trie = ItemTrie(codec.targets())  # the catalogue's token sequences, shared by every fit
    return WeeklyModels("bart", fits, trained, load)


# the columns that key both ranking tables: a customer-article pair of a week
PAIR_FIELDS = [("week", pa.date32()), ("customer_idx", pa.int64()), ("article_idx", pa.int64())]


def candidate_schema() -> pa.Schema:
    """The candidates table: every source's score column, present or not (a fixed schema)."""
    return pa.schema(PAIR_FIELDS + [(s, pa.float64()) for s in SCORES])


def candidate_batches(
    purchases: pd.DataFrame,
    customers: pd.DataFrame,
    articles: pd.DataFrame,
    plans: Sequence[RankerWeeks],
    models: Sequence[WeeklyModels] = (),
    neighbours: pd.DataFrame | None = None,
    batch: int | None = None,
    log: Callable[[str], None] = print,
) -> Iterator[pa.RecordBatch]:
    """Every week's candidates (``weeks_to_build``), ``batch`` customers at a time, as record
    batches of ``candidate_schema``; ``models``: the model sources (``gru4rec_source``,
    ``bart_source``), each proposing for a week with its fit for that week."""
    schema = candidate_schema()
    serving = next(p.start for p in plans if p.target == "serving")
    for week in weeks_to_build(plans):
        context = WeekContext(purchases, customers, articles, week, neighbours)
        who = week_customers(purchases, week, week != serving)
        chosen = {m.name: m.for_week(week) for m in models}
        log(f"candidates for the week of {week}: {len(who)} customers")
        for part in week_candidates(context, who, chosen, batch):
            part = part.reindex(columns=schema.names)
            yield pa.RecordBatch.from_pandas(part, schema=schema, preserve_index=False)


def recall_rows(candidates: pd.DataFrame, purchases: pd.DataFrame, week: dt.date) -> list[dict]:
    """Each source's and the union's recall on ``week`` (``candidate_recall``), one row each."""
    rows = []
    scores = [c for c in candidates.columns if c.startswith("score_") and candidates[c].notna().any()]
    for source in [*scores, "union"]:
        part = candidates if source == "union" else candidates[candidates[source].notna()]
        stats = cand.candidate_recall(part, purchases, week)
        rows.append({"week": week, "source": source.removeprefix("score_"), **stats})
    return rows


def row_schema() -> pa.Schema:
    """The ranker's rows: the pair, its week, every feature (float32) and the label (missing for the
    serving week)."""
    return pa.schema(PAIR_FIELDS + [(f, pa.float32()) for f in FEATURES] + [("label", pa.int8())])


def feature_batches(
    candidates_of: Callable[[dt.date], pd.DataFrame],
    weeks: Sequence[dt.date],
    serving: dt.date,
    purchases: pd.DataFrame,
    customers: pd.DataFrame,
    articles: pd.DataFrame,
    batch: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """Each week's candidates (``candidates_of(week)``) with features and labels, ``batch``
    customers at a time: the ranker's rows as record batches of ``row_schema``."""
    schema = row_schema()
    for week in weeks:
        context = WeekContext(purchases, customers, articles, week)
        table = candidates_of(week)
        for who in customer_batches(table["customer_idx"].unique(), batch):
            part = table[table["customer_idx"].isin(who)].drop(columns="week")
            rows = week_rows(context, part, purchases, labels=week != serving).assign(week=week)
            yield pa.RecordBatch.from_pandas(rows[schema.names], schema=schema, preserve_index=False)


def serving_lists(
    ranker: Ranker, read: Callable[[int, int], pd.DataFrame], n_customers: int, batch: int = 100_000
) -> pd.DataFrame:
    """The serving week's ranked lists (``SERVED_DEPTH`` deep), scored ``batch`` customers at a time:
    ``read(lo, hi)`` returns the rows of customer_idx lo..hi-1."""
    parts = [ranked_lists(ranker, read(lo, lo + batch), SERVED_DEPTH) for lo in range(0, n_customers, batch)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*KEY, "rank"])


def features_match_truncated(
    rows: pd.DataFrame,
    purchases: pd.DataFrame,
    customers: pd.DataFrame,
    articles: pd.DataFrame,
    week: dt.date,
    sample: int = 200,
    seed: int = 0,
) -> tuple[bool, dict]:
    """The leakage probe: the features of ``sample`` customers' rows of ``week``, recomputed from
    the purchases truncated before the week, equal the stored ones."""
    who = rows["customer_idx"].unique()
    pick = np.random.default_rng(seed).choice(who, min(sample, len(who)), replace=False)
    stored = rows[rows["customer_idx"].isin(pick)].sort_values(KEY, ignore_index=True)
    truncated = purchases[cand.days_before(purchases, week) > 0]
    again = WeekContext(truncated, customers, articles, week).features(stored[[*KEY, *SCORES]])
    again = again.sort_values(KEY, ignore_index=True)
    a, b = stored[FEATURES].to_numpy(float), again[FEATURES].to_numpy(float)
    same = np.isclose(a, b, rtol=1e-5, equal_nan=True)
    bad = [f for f, ok in zip(FEATURES, same.all(axis=0), strict=True) if not ok]
    return not bad, {"week": str(week), "customers": len(pick), "rows": len(stored), "differing": bad}


def best_single_model(metrics: pd.DataFrame, metric: str = "MAP@12", exclude: str = "ranker") -> str | None:
    """The best model on the validation week's ``metric`` among those scored on every customer
    (a seeded sample is not compared), other than ``exclude``."""
    rows = metrics[(metrics["split"] == "validation") & (metrics["metric"] == metric)]
    rows = rows[(rows["model"] != exclude) & (rows["n"] == rows["n"].max())]
    if rows.empty:
        return None
    return rows.sort_values(["value", "model"], ascending=[False, True]).iloc[0]["model"]


def paired_ap_difference(ap: pd.DataFrame, model: str, other: str, split: str, n_boot: int) -> dict | None:
    """MAP@12 of ``model`` minus ``other`` on ``split`` over the customers both were scored on, with
    the paired bootstrap interval (customers resampled); None when ``other`` was not scored."""
    from hm_recs.evaluation.metrics import paired_bootstrap_diff

    mine = ap[(ap["model"] == model) & (ap["split"] == split)].set_index("customer_idx")["ap"]
    theirs = ap[(ap["model"] == other) & (ap["split"] == split)].set_index("customer_idx")["ap"]
    both = mine.index.intersection(theirs.index)
    if len(both) == 0:
        return None
    diff = paired_bootstrap_diff(mine.loc[both].to_numpy(), theirs.loc[both].to_numpy(), None, n_boot)
    return {"model": model, "minus": other, "split": split, "customers": len(both), **diff}
