"""BART judged like every other model: the same events, the same customers, paired comparisons.

:func:`evaluate_bart` takes a way to build each variant's recommender for a week and returns a
:class:`BartEvaluation` that the ``bart_evaluation`` asset only records:

* **Grounding** as the variant's training asset chose and registered it (:func:`decide_grounding`:
  constrained decoding or nearest article, the better on a seeded sample of validation events, for
  the text variants; semantic-ID variants always decode under their trie): what is served is judged.
* **The shared protocol** for every variant on every event and every MAP@12 customer of both weeks.
* **Paired bootstrap differences** on the same events (Recall@20) and customers (MAP@12): every
  variant against ``pop_time_decay`` and ``gru4rec_warm``, and every image variant against its
  text-only twin (the paper's question: do images help?).
* **Cold start**: the week's events whose target was never bought before the week, per model.
* **Text quality**: BERTScore between each event's best generation and the actual next article's
  text (the paper's Table 4, scorer named), and, for free (unconstrained) generation, how often
  the text is an article's, and how often it is close to no article in the item space.

Which model a week may use is decided here too (:func:`model_for_week`): the newest one trained
on data before the week starts, so the validation week never sees a model refit on it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hm_recs.evaluation.metrics import bootstrap_ci, paired_bootstrap_diff
from hm_recs.evaluation.protocol import EvaluationProtocol, EvaluationResult, TargetWeek, evaluate
from hm_recs.models.bart import TEXT_TWIN, VARIANTS, bert_score, generate
from hm_recs.retrieval.bart_recommender import GROUNDING_METHODS, BartRecommender

BASELINES = ("pop_time_decay", "gru4rec_warm")
WEEKS = ("validation", "test")


@dataclass(frozen=True)
class BartEvaluationSettings:
    grounding: str | None = None  # constrained | nearest; None: the better on validation
    comparison_events: int = 500  # validation events on which the grounding methods are compared
    beams: int = 20  # constrained decoding's beam width (at least the list length is used)
    generations: int = 4  # nearest grounding: generated texts per request
    close_distance: float = (
        0.15  # cosine distance in the item space above which a text "matches no article closely"
    )
    diagnostic_events: int = 1000  # events whose free generation is scored for closeness (seeded sample)
    bertscore_model: str | None = (
        None  # None: all-MiniLM-L6-v2 (offline); roberta-large where it can be loaded
    )
    seed: int = 0

    def __post_init__(self):
        if self.grounding is not None and self.grounding not in GROUNDING_METHODS:
            raise ValueError(f"grounding must be one of {GROUNDING_METHODS} or None, got {self.grounding!r}")


@dataclass
class BartEvaluation:
    results: list[EvaluationResult]
    grounding: dict
    text_rows: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    cold_start: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)

    def result(self, model: str, week: str) -> EvaluationResult | None:
        return next((r for r in self.results if r.model == model and r.week == week), None)


def model_for_week(folders: Sequence[Path], week_start: dt.date) -> Path:
    """The folder, among ``folders``, of the newest model trained only on data before ``week_start``
    (``hm_recs.json``'s ``trained_before``)."""
    best, best_cut = None, None
    for folder in folders:
        notes = Path(folder) / "hm_recs.json"
        if not notes.exists():
            continue
        cut = json.loads(notes.read_text()).get("trained_before")
        if cut is None:
            continue
        cut = dt.date.fromisoformat(cut)
        if cut <= week_start and (best_cut is None or cut > best_cut):
            best, best_cut = Path(folder), cut
    if best is None:
        raise FileNotFoundError(
            f"no model among {[str(f) for f in folders]} was trained on data before {week_start}"
        )
    return best


def bought_before(
    purchase_items: np.ndarray, purchase_days: np.ndarray, day: dt.date, n_items: int
) -> np.ndarray:
    """Per article: was it bought before ``day``?"""
    days = np.asarray(purchase_days).astype("datetime64[D]")
    seen = np.zeros(n_items, bool)
    seen[np.asarray(purchase_items)[days < np.datetime64(day, "D")]] = True
    return seen


def paired_rows(a: EvaluationResult, b: EvaluationResult, n_boot: int, kind: str) -> list[dict]:
    """a - b on the same events (Recall@20, MRR@20) and customers (MAP@12), with 95 % intervals."""
    rows = []
    for metric in ("Recall@20", "MRR@20"):
        d = paired_bootstrap_diff(a.per_event[metric], b.per_event[metric], a.event_units, n_boot)
        rows.append(
            {"model": a.model, "versus": b.model, "week": a.week, "kind": kind, "metric": metric, **d}
        )
    d = paired_bootstrap_diff(a.per_customer_ap, b.per_customer_ap, None, n_boot)
    rows.append({"model": a.model, "versus": b.model, "week": a.week, "kind": kind, "metric": "MAP@12", **d})
    return rows


def cold_start_rows(
    results: Sequence[EvaluationResult], week: TargetWeek, seen: np.ndarray, n_boot: int
) -> list[dict]:
    """Recall@20 and MRR@20 over the week's events whose target was never bought before the week."""
    mask = ~seen[week.event_target]
    rows = []
    for r in results:
        if r.week != week.name:
            continue
        row = {
            "model": r.model,
            "week": r.week,
            "events": int(mask.sum()),
            "share_of_events": float(mask.mean()) if len(mask) else 0.0,
        }
        for metric in ("Recall@20", "MRR@20"):
            if mask.any():
                v, lo, hi = bootstrap_ci(r.per_event[metric][mask], r.event_units[mask], n_boot)
            else:
                v = lo = hi = float("nan")
            row.update({metric: v, f"{metric}_lo": lo, f"{metric}_hi": hi})
        rows.append(row)
    return rows


def free_generation_stats(
    recommender: BartRecommender,
    histories: Sequence[np.ndarray],
    truth: Sequence[str],
    space,
    index,
    close_distance: float,
) -> dict:
    """Greedy, unconstrained generation: the share that is exactly an article's text, the median
    cosine distance to the nearest article in the item space, and the share farther than
    ``close_distance`` from every article."""
    codec = recommender.codec
    texts = [g[0] for g in generate(recommender.model, codec, histories, batch_size=64)]
    known = set(codec.catalogue.texts)
    exact = float(np.mean([t in known for t in texts])) if texts else 0.0
    stats = {"free_exact_article_text": round(exact, 4), "free_distinct_texts": len(set(texts))}
    if space is not None and index is not None and texts:
        _, dist = index.nearest(space.embed(texts), 1, column="vector")
        d = dist[:, 0].astype(float)
        stats.update(
            {
                "free_median_distance": round(float(np.median(d)), 4),
                "free_no_close_article": round(float((d > close_distance).mean()), 4),
            }
        )
    stats["free_samples"] = list(zip(texts[:5], truth[:5], strict=False))
    return stats


def choose_grounding(
    make: Callable[[str, str, str], BartRecommender],
    variant: str,
    week: TargetWeek,
    protocol: EvaluationProtocol,
    settings: BartEvaluationSettings,
) -> dict:
    """Both grounding methods on the same seeded sample of validation events; the better Recall@20 wins."""
    sub = week.subset(settings.comparison_events, settings.comparison_events // 4, seed=settings.seed)
    recs = {m: make(variant, week.name, m) for m in GROUNDING_METHODS}
    if any(r.trained_before is None or r.trained_before > week.start for r in recs.values()):
        raise ValueError(
            f"{variant}: the grounding is chosen with a model trained past the start of the validation "
            f"week ({week.start})"
        )
    res = {m: evaluate(recs[m], sub, protocol) for m in GROUNDING_METHODS}
    diff = paired_bootstrap_diff(
        res["constrained"].per_event["Recall@20"],
        res["nearest"].per_event["Recall@20"],
        res["nearest"].event_units,
        protocol.n_bootstrap,
    )
    chosen = settings.grounding or max(
        GROUNDING_METHODS, key=lambda m: (res[m].metrics["Recall@20"][0], m == "constrained")
    )
    return {
        "chosen": chosen,
        "decided_on": f"{variant}, {sub.n_events} validation events",
        **{f"{m}_recall20": res[m].metrics["Recall@20"][0] for m in GROUNDING_METHODS},
        "constrained_minus_nearest": diff,
    }


def decide_grounding(
    make: Callable[[str, str, str], BartRecommender] | None,
    variant: str,
    week: TargetWeek | None,
    protocol: EvaluationProtocol,
    settings: BartEvaluationSettings,
) -> dict:
    """How the variant's output becomes articles: constrained decoding for semantic IDs (they write
    codes), ``settings.grounding`` when configured, else :func:`choose_grounding` on the validation
    week (``make`` and ``week`` are only needed then)."""
    if VARIANTS[variant].semantic_ids:
        return {"chosen": "constrained", "decided_on": "semantic IDs: codes, not text"}
    if settings.grounding is not None:
        return {"chosen": settings.grounding, "decided_on": "configured"}
    return choose_grounding(make, variant, week, protocol, settings)


def grounding_on_validation(
    lake,
    store,
    variant: str,
    settings: BartEvaluationSettings,
    protocol,
    index_uri: str,
    index_options,
    device,
) -> dict:
    """:func:`decide_grounding` for the variant's stored models, with what a choice reads (the
    validation week, the catalogue, the item index and its space) read only when one is made."""
    if VARIANTS[variant].semantic_ids or settings.grounding is not None:
        return decide_grounding(None, variant, None, protocol, settings)
    from hm_recs.evaluation.weeks import load_target_weeks
    from hm_recs.retrieval.catalogue import CatalogueTables
    from hm_recs.retrieval.item_index import ItemIndex
    from hm_recs.retrieval.item_space import SPACE_KEY, space_from_settings

    weeks = {"validation": load_target_weeks(lake, protocol)["validation"]}
    index = ItemIndex(index_uri, index_options)
    space = space_from_settings(index.metadata(SPACE_KEY), device)
    catalogue = CatalogueTables.from_lake(lake).catalogue()
    make = stored_recommenders(store, catalogue, weeks, device, settings, index, space)
    return decide_grounding(make, variant, weeks["validation"], protocol, settings)


def served_settings(variant: str, decision: dict, settings: BartEvaluationSettings) -> dict:
    """The registered recommender's decoding: the grounding decided, the beams and generations."""
    return {
        "variant": variant,
        "grounding": decision["chosen"],
        "beams": settings.beams,
        "generations": settings.generations,
    }


def save_grounding(store, variant: str, decision: dict) -> str:
    """The decision in the model store, where the evaluation (any worker) reads it."""
    from hm_recs.artifacts import bart_grounding_key

    path = store.path(bart_grounding_key(variant))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(decision, default=str))
    return store.push(bart_grounding_key(variant))


def load_grounding(store, variant: str) -> dict:
    from hm_recs.artifacts import bart_grounding_key

    try:
        return json.loads(store.pull(bart_grounding_key(variant), required=True).read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}: materialize bart_model_{variant} first (it decides the grounding)"
        ) from e


def evaluate_bart(
    make: Callable[[str, str, str], BartRecommender],
    variants: Sequence[str],
    weeks: dict[str, TargetWeek],
    protocol: EvaluationProtocol,
    baselines: Sequence[EvaluationResult],
    seen_before: dict[str, np.ndarray],
    settings: BartEvaluationSettings = BartEvaluationSettings(),
    space=None,
    index=None,
    progress: Callable[[str], None] = lambda _: None,
    groundings: dict[str, dict] | None = None,
) -> BartEvaluation:
    """Every variant on every event and customer of both weeks, with everything the module lists.

    ``make(variant, week, method)`` builds the recommender for a week (its model must be trained
    before the week: :func:`model_for_week`); ``baselines`` are the other models' results on the
    same weeks; ``seen_before[week]`` marks the articles bought before each week; ``groundings``:
    variant -> its :func:`decide_grounding` (None: ``settings.grounding``, else constrained)."""
    fixed = {"chosen": settings.grounding or "constrained", "decided_on": "configured"}
    grounding = {v: (groundings or {}).get(v, fixed) for v in variants}
    out = BartEvaluation([], grounding)
    rng = np.random.default_rng(settings.seed)
    for variant in variants:
        method = "constrained" if VARIANTS[variant].semantic_ids else grounding[variant]["chosen"]
        for name in WEEKS:
            week = weeks[name]
            progress(f"{variant} / {name}: {week.n_events} events, {len(week.customers)} customers, {method}")
            rec = make(variant, name, method)
            if rec.trained_before is None or rec.trained_before > week.start:
                raise ValueError(
                    f"{rec.name}: a model trained on data before {rec.trained_before} cannot be judged on "
                    f"the week from {week.start}"
                )
            res = evaluate(rec, week, protocol)
            out.results.append(res)
            truth = [rec.codec.catalogue.texts[int(t)] for t in week.event_target]
            best = rec.best[: week.n_events]
            row = {"variant": variant, "week": name, "grounding": method}
            if best:
                bs = bert_score(best, truth, settings.bertscore_model)
                lo, hi = bootstrap_ci(bs["per_pair_f1"], week.event_customer, protocol.n_bootstrap)[1:]
                row.update(
                    {
                        "bertscore_precision": round(bs["precision"], 4),
                        "bertscore_recall": round(bs["recall"], 4),
                        "bertscore_f1": round(bs["f1"], 4),
                        "f1_ci": [round(lo, 4), round(hi, 4)],
                        "scorer": bs["scorer"],
                        "best_distinct": len(set(best)),
                        "best_median_distance": round(
                            float(np.median(rec.best_distance[: week.n_events])), 4
                        ),
                    }
                )
                out.samples += [
                    {"variant": variant, "week": name, "generated": g, "actual": t}
                    for g, t in zip(best[:6], truth[:6], strict=False)
                ]
            if not VARIANTS[variant].semantic_ids and settings.diagnostic_events:
                pick = np.sort(
                    rng.choice(week.n_events, min(settings.diagnostic_events, week.n_events), replace=False)
                )
                stats = free_generation_stats(
                    rec,
                    [week.event_history[i] for i in pick],
                    [truth[i] for i in pick],
                    space,
                    index,
                    settings.close_distance,
                )
                stats.pop("free_samples")
                row.update(stats)
            out.text_rows.append(row)
    n_boot = protocol.n_bootstrap
    for name in WEEKS:
        for res in [r for r in out.results if r.week == name]:
            for base in BASELINES:
                other = next((b for b in baselines if b.model == base and b.week == name), None)
                if other is not None:
                    out.comparisons += paired_rows(res, other, n_boot, "vs baseline")
            twin = TEXT_TWIN.get(res.model.removeprefix("bart_"))
            other = out.result(f"bart_{twin}", name) if twin else None
            if other is not None:
                out.comparisons += paired_rows(res, other, n_boot, "images vs text-only twin")
        if name in seen_before:
            models = [r for r in out.results if r.week == name] + [b for b in baselines if b.week == name]
            out.cold_start += cold_start_rows(models, weeks[name], seen_before[name], n_boot)
    return out


# -- the asset's pieces: stored models, baselines on the same events, the tables it writes ----------
def stored_recommenders(
    store, catalogue, weeks: dict[str, TargetWeek], device, settings, index=None, space=None
):
    """``make(variant, week, method)`` over the model store: the newest model of the variant trained
    before the week (never the refit on the week itself), one model in memory at a time."""
    from hm_recs.models.bart import SequenceCodec, fitted_models, load_bart

    loaded: dict = {}
    folders: dict[str, list] = {}  # each variant's fitted models, fetched once

    def make(variant: str, week: str, method: str) -> BartRecommender:
        if variant not in folders:
            folders[variant] = fitted_models(store, variant)
        folder = model_for_week(folders[variant], weeks[week].start)
        if folder not in loaded:
            tok, model, notes = load_bart(folder, device)
            loaded.clear()
            codec = SequenceCodec(catalogue, VARIANTS[variant], tok, notes["max_source_tokens"])
            loaded[folder] = (model, codec, dt.date.fromisoformat(notes["trained_before"]))
        model, codec, cutoff = loaded[folder]
        return BartRecommender(
            f"bart_{variant}",
            model,
            codec,
            method,
            settings.beams,
            index,
            space,
            settings.generations,
            trained_before=cutoff,
        )

    return make


def reference_baselines(
    lake, store, weeks: dict[str, TargetWeek], protocol, device
) -> list[EvaluationResult]:
    """``pop_time_decay`` and ``gru4rec_warm`` on the same (possibly sampled) events as BART."""
    from hm_recs.baselines.popularity import load_popularity
    from hm_recs.models.gru4rec import GRU4RecRecommender, load_fitted

    out = []
    for week in ("validation", "test"):
        out.append(evaluate(load_popularity(lake, "time_decay", week), weeks[week], protocol))
        out.append(
            evaluate(GRU4RecRecommender(load_fitted(store, week, device), "warm"), weeks[week], protocol)
        )
    return out


def write_tables(lake, result: BartEvaluation, protocol) -> None:
    """The metrics, BERTScore, paired-difference and cold-start tables of a BART evaluation."""
    import pyarrow as pa

    from hm_recs.evaluation.weeks import write_metrics
    from hm_recs.tables import BART_COLD_START_TABLE, BART_COMPARISONS_TABLE, BART_TEXT_TABLE

    write_metrics(lake, "bart", result.results, protocol)
    text = [{**r, "f1_ci": json.dumps(r.get("f1_ci"))} for r in result.text_rows]
    lake.write(BART_TEXT_TABLE, pa.Table.from_pylist(text))
    lake.write(BART_COMPARISONS_TABLE, pa.Table.from_pylist(result.comparisons))
    if result.cold_start:
        lake.write(BART_COLD_START_TABLE, pa.Table.from_pylist(result.cold_start))


def of_variant(result: BartEvaluation, variant: str) -> dict[str, list]:
    """One variant's sample generations, BERTScore rows and protocol results."""
    return {
        "samples": [r for r in result.samples if r["variant"] == variant],
        "text_rows": [r for r in result.text_rows if r["variant"] == variant],
        "results": [r for r in result.results if r.model == f"bart_{variant}"],
    }
