"""Launchpad settings of the ranking assets."""

import dagster as dg

from hm_recs.ranking.ranker import OBJECTIVES


class CandidatesConfig(dg.Config):
    train_weeks: int = 4  # labelled weeks each ranker learns from
    gru4rec_source: bool = True  # GRU4Rec's top 50 as a source (trained before each week it proposes for)
    # a BART variant's top bart_depth as a source (constrained beam search for every candidate customer
    # with a history, with a fit before the first training week): None: no BART source
    bart_source: str | None = None
    bart_depth: int = 20
    bart_beams: int = 20
    item_index_source: bool = True  # the item index's nearest neighbours of recent purchases
    neighbours: int = 10  # per article, for the item-index source
    batch_customers: int = 100_000  # customers per batch (bounded memory on the full data)
    min_recall: float = 0.15  # the validation week's union recall floor (the check)


class RowsConfig(dg.Config):
    batch_customers: int = 100_000  # customers per batch (bounded memory on the full data)


class RankerConfig(dg.Config):
    objectives: list[str] = list(OBJECTIVES)  # tried on the validation week; the best trains the rest
    n_estimators: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    threads: int = 0  # LightGBM threads (0: every core); deterministic: 1 and 2 give the same model
    min_distinct_share: float = 0.3  # the check: share of served customers with a list nobody else got
    batch_customers: int = 100_000  # the serving week is scored this many customers at a time

    def params(self) -> dict:
        return self.model_dump(include={"n_estimators", "learning_rate", "num_leaves", "threads"})
