"""One BART variant fitted for every target week: the models the evaluation judges and the one served.

``fit_variant`` trains, in cutoff order, a model on the data before the validation week (model
selection), with a test refit one before the test week (the reported numbers: trained anew, or
``continue``: the validation model plus a recency pass over the validation week), and with a
serving refit one on every week (the newest model plus a pass over the weeks it has not seen).
Each model goes to the model store under ``bart/<variant>/<target>`` (``model/`` and the
``run*/`` checkpoints a killed run resumes from). The Dagster asset records what it yields.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from hm_recs.artifacts import bart_key
from hm_recs.models.bart import (
    BartTrainingResult,
    BartTrainingSettings,
    PairData,
    PurchaseSequences,
    RecencyPass,
    SequenceCodec,
    combine_results,
    save_bart,
    settings_dict,
    train_bart,
    training_pairs,
    training_passes,
)
from hm_recs.sessions.split import TimeSplit, fit_targets
from hm_recs.training import fingerprint

REFIT_MODES = ("full", "continue")


@dataclass(frozen=True)
class RefitPlan:
    """Which models a variant trains after the validation one, and how."""

    refit_for_test: bool = True
    refit_mode: str = "full"  # full | continue (see the module docstring)
    refit_for_serving: bool = True
    serving_epochs: float | None = None  # the serving pass's epochs (None: the recency pass's)
    reconstruction_epochs: float = 0.0  # > 0: first a pass rebuilding the source's newest article
    recency: RecencyPass | None = None  # a pass over the last weeks after the main one (None: none)
    # the pass a continued model gets (its weeks: those since the previous model's cutoff)
    continuation: RecencyPass = RecencyPass(1)

    def __post_init__(self) -> None:
        if self.refit_mode not in REFIT_MODES:
            raise ValueError(f"refit_mode must be one of {REFIT_MODES}, got {self.refit_mode!r}")

    def targets(self) -> tuple[str, ...]:
        return fit_targets(self.refit_for_test, self.refit_for_serving)

    def continues(self, target: str) -> bool:
        """Whether ``target``'s model continues the previous one instead of starting anew."""
        return target == "serving" or (target == "test" and self.refit_mode == "continue")


@dataclass
class FittedModel:
    target: str
    model: object
    result: BartTrainingResult
    uri: str  # where the model folder is stored


def recipe(settings: BartTrainingSettings, plan: RefitPlan, model: dict) -> dict:
    """How the variant's fresh models are trained (recorded in each model's notes): what a fit at
    another cutoff repeats (:func:`fit_at`). ``model``: ``new_model``'s pretrained, size, dropout."""
    recency = None if plan.recency is None else dataclasses.asdict(plan.recency)
    return {
        "settings": settings_dict(settings),
        "reconstruction_epochs": plan.reconstruction_epochs,
        "recency": recency,
        "model": model,
    }


def fit_variant(
    variant: str,
    new_model: Callable[[], object],
    codec: SequenceCodec,
    seqs: PurchaseSequences,
    split: TimeSplit,
    settings: BartTrainingSettings,
    plan: RefitPlan,
    spec,
    store,
    identity: list,
    log: Callable[[str], None] = print,
    model_notes: dict | None = None,
) -> Iterator[FittedModel]:
    """Train and store the variant's models, oldest cutoff first, yielding each when it is stored.
    ``identity``: what makes a run's checkpoints reusable besides the pass (data version, sizes...);
    ``model_notes``: what ``new_model`` builds from (see :func:`recipe`)."""
    model, previous = None, None
    how = recipe(settings, plan, model_notes or {})
    for target in plan.targets():
        cutoff = split.cutoff(target)
        if plan.continues(target):
            recency = plan.continuation
            if target == "serving" and plan.serving_epochs is not None:
                recency = dataclasses.replace(recency, epochs=plan.serving_epochs)
            weeks = max(1, (cutoff - previous).days // 7)
            passes = training_passes(settings, recency=recency, continue_weeks=weeks)
        else:
            model = new_model()
            passes = training_passes(settings, plan.reconstruction_epochs, plan.recency)
        notes = {"refit_mode": {"test": plan.refit_mode, "serving": "continue"}.get(target), "recipe": how}
        yield _train_stored(
            variant,
            target,
            cutoff,
            model,
            passes,
            codec,
            seqs,
            spec,
            store,
            [*identity, plan.refit_mode],
            notes,
            log,
        )
        previous = cutoff


def fit_at(
    variant: str,
    target: str,
    cutoff,
    how: dict,
    tokenizer,
    codec: SequenceCodec,
    seqs: PurchaseSequences,
    spec,
    store,
    identity: list,
    log: Callable[[str], None] = print,
) -> FittedModel:
    """One more fresh model of the variant, trained on the data before ``cutoff`` as its models
    are (``how``: the :func:`recipe` in their notes) and stored as ``target``; a stored one of the
    same recipe, data and cutoff is reused (a killed run resumes from its checkpoints)."""
    from hm_recs.models.bart import RecencyPass, load_bart, load_notes, new_model

    key = fingerprint(*identity, target, cutoff.isoformat(), how)
    done = store.pull(f"{bart_key(variant, target)}/model")
    if load_notes(done).get("fingerprint") == key:
        _, model, notes = load_bart(done, spec.torch_device())
        log(f"{variant}/{target}: the stored model trained before {cutoff} is reused")
        stored = BartTrainingResult(notes["steps"], 0.0, 0.0, notes["steps"], notes["pairs"], notes["epochs"])
        return FittedModel(target, model, stored, store.uri(f"{bart_key(variant, target)}/model"))
    settings = BartTrainingSettings(**how["settings"])
    recency = RecencyPass(**how["recency"]) if how["recency"] else None
    made = how["model"]
    model = new_model(
        made.get("pretrained"), made.get("size", "tiny"), tokenizer, settings.seed, made.get("dropout")
    )
    passes = training_passes(settings, how["reconstruction_epochs"], recency)
    notes = {"recipe": how, "fingerprint": key}
    return _train_stored(
        variant, target, cutoff, model, passes, codec, seqs, spec, store, identity, notes, log
    )


def _train_stored(
    variant, target, cutoff, model, passes, codec, seqs, spec, store, identity, notes, log
) -> FittedModel:
    """``passes`` over the pairs before ``cutoff``, then the model and its notes in the store."""
    folder = store.pull(bart_key(variant, target))  # a killed run's checkpoints, from any worker
    results = []
    for p in passes:
        s = p.settings
        data = PairData(
            seqs, training_pairs(seqs, cutoff, s.target_weeks), codec, s.max_target_tokens, p.task
        )
        key = fingerprint(*identity, target, p.name, settings_dict(s))
        log(f"{variant}/{target} {p.name} pass: {len(data)} pairs before {cutoff} on {spec.describe()}")
        checkpoints = folder / ("run" if p.name == "main" else f"run_{p.name}")
        # each checkpoint goes to the store as it is written: a kill loses at most checkpoint_every steps
        push = functools.partial(store.push, bart_key(variant, target))
        results.append(train_bart(model, data, checkpoints, s, spec, key, on_checkpoint=push))
    result = combine_results(results)
    notes = {
        "variant": variant,
        "target": target,
        "trained_before": cutoff.isoformat(),
        "max_source_tokens": codec.max_tokens,
        "steps": result.steps,
        "pairs": result.pairs,
        "epochs": round(result.epochs, 3),
        "passes": [p.name for p in passes],
        **notes,
    }
    save_bart(model, codec.tokenizer, folder / "model", notes)
    store.push(bart_key(variant, target))
    return FittedModel(target, model, result, store.uri(f"{bart_key(variant, target)}/model"))


def distinct_histories(seqs: PurchaseSequences, split: TimeSplit, n: int, seed: int = 0) -> list[np.ndarray]:
    """Up to ``n`` distinct histories before validation-week purchases, a seeded sample: the sources
    the distinct-generations check decodes."""
    pairs = training_pairs(seqs, split.test_start, target_weeks=1)  # targets in the validation week
    seen, histories = set(), []
    for s, j in pairs:
        h = tuple(seqs.items[s][:j].tolist())
        if h not in seen:
            seen.add(h)
            histories.append(np.asarray(h, np.int64))
    if not histories:
        return []
    pick = np.sort(np.random.default_rng(seed).choice(len(histories), min(n, len(histories)), replace=False))
    return [histories[i] for i in pick]


# -- what the BART assets store and read -------------------------------------------------------------
def save_tokenizer(store, tokenizer, notes: dict) -> str:
    """The shared tokenizer in the model store, with hm_recs' notes; its URI."""
    import json

    from hm_recs.artifacts import BART_TOKENIZER

    folder = store.path(BART_TOKENIZER)
    tokenizer.save_pretrained(folder)
    (folder / "hm_recs.json").write_text(json.dumps(notes))
    return store.push(BART_TOKENIZER)


def load_tokenizer(store):
    from transformers import AutoTokenizer

    from hm_recs.artifacts import BART_TOKENIZER

    return AutoTokenizer.from_pretrained(store.pull(BART_TOKENIZER, required=True))


def sequences_table(seqs: PurchaseSequences):
    """The sequences as a Delta-ready table: customer_idx, article_idx list, t_dat list."""
    import pyarrow as pa

    return pa.table(
        {
            "customer_idx": pa.array(seqs.customers, pa.int64()),
            "article_idx": pa.array([s.tolist() for s in seqs.items], pa.list_(pa.int32())),
            "t_dat": pa.array([d.astype("datetime64[D]").tolist() for d in seqs.days], pa.list_(pa.date32())),
        }
    )


def sequences_from_table(t) -> PurchaseSequences:
    return PurchaseSequences(
        t.column("customer_idx").to_numpy(),
        [np.asarray(x, np.int64) for x in t.column("article_idx").to_pylist()],
        [np.asarray(x, "datetime64[D]") for x in t.column("t_dat").to_pylist()],
    )


def source_budgets(
    seqs: PurchaseSequences, codecs: dict[str, SequenceCodec], cutoff, sample: int = 500
) -> tuple[list[dict], list[dict]]:
    """How many history articles each variant's source budget fits, on a seeded sample of the
    training pairs before ``cutoff``, and one example source per variant."""
    pairs = training_pairs(seqs, cutoff)
    rng = np.random.default_rng(0)
    picked = pairs[rng.choice(len(pairs), min(sample, len(pairs)), replace=False)] if len(pairs) else pairs
    summary, examples = [], []
    for name, codec in codecs.items():
        fit = np.array([codec.source(seqs.items[s][:j])[1] for s, j in picked])
        cap = np.minimum(picked[:, 1], codec.variant.history_items)
        summary.append(
            {
                "variant": name,
                "max_source_tokens": codec.max_tokens,
                "mean_history_articles": round(float(cap.mean()), 2) if len(cap) else 0.0,
                "mean_articles_in_source": round(float(fit.mean()), 2) if len(fit) else 0.0,
                "truncated_share": round(float((fit < cap).mean()), 3) if len(fit) else 0.0,
            }
        )
        if len(picked):
            examples.append({"variant": name, **PairData(seqs, picked[:1], codec).example(0)})
    return summary, examples
