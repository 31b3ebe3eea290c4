"""The time split (the Kaggle protocol): the last 7 days are the test week, the 7 before them the
validation week, everything earlier is training. On the real data: test 2020-09-16..22,
validation 2020-09-09..15, training 2018-09-20..2020-09-08. Lengths are configurable.

Models are tuned on validation with the training data, then refit on training + validation and
judged on the test week; see :mod:`hm_recs.evaluation.protocol`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from hm_recs.tables import TIME_SPLIT_TABLE

SPLITS = ("train", "validation", "test")
# the models every family trains: for the validation week (model selection), for the test week (the
# reported numbers) and on everything (what is served next week; never judged on a week it saw)
FIT_TARGETS = ("validation", "test", "serving")


def fit_targets(refit_for_test: bool, refit_for_serving: bool) -> tuple[str, ...]:
    """The models a family trains, oldest cutoff first; the last one is registered and served."""
    return (
        ("validation",) + (("test",) if refit_for_test else ()) + (("serving",) if refit_for_serving else ())
    )


@dataclass(frozen=True)
class TimeSplit:
    train_start: dt.date
    train_end: dt.date
    validation_start: dt.date
    validation_end: dt.date
    test_start: dt.date
    test_end: dt.date

    @classmethod
    def from_dates(
        cls, first_day: dt.date, last_day: dt.date, test_days: int = 7, validation_days: int = 7
    ) -> TimeSplit:
        if test_days < 1 or validation_days < 1:
            raise ValueError("test_days and validation_days must be at least 1")
        test_start = last_day - dt.timedelta(days=test_days - 1)
        validation_end = test_start - dt.timedelta(days=1)
        validation_start = validation_end - dt.timedelta(days=validation_days - 1)
        train_end = validation_start - dt.timedelta(days=1)
        if train_end < first_day:
            raise ValueError(
                f"data from {first_day} to {last_day} is too short for {validation_days} validation and "
                f"{test_days} test days with any training data left"
            )
        return cls(first_day, train_end, validation_start, validation_end, test_start, last_day)

    def window(self, split: str) -> tuple[dt.date, dt.date]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: one of {SPLITS}")
        return getattr(self, f"{split}_start"), getattr(self, f"{split}_end")

    def cutoff(self, target: str) -> dt.date:
        """The first day a ``target`` model may not train on: the validation week's start, the test
        week's, or the day after the data for the serving refit."""
        if target not in FIT_TARGETS:
            raise ValueError(f"unknown target {target!r}: one of {FIT_TARGETS}")
        if target == "serving":
            return self.test_end + dt.timedelta(days=1)
        return self.validation_start if target == "validation" else self.test_start

    def split_of(self, day: dt.date) -> str:
        for s in SPLITS:
            lo, hi = self.window(s)
            if lo <= day <= hi:
                return s
        raise ValueError(f"{day} is outside the data ({self.train_start}..{self.test_end})")

    def to_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> TimeSplit:
        return cls(**{k: dt.date.fromisoformat(v) if isinstance(v, str) else v for k, v in d.items()})


def load_time_split(lake) -> TimeSplit:
    """The split the ``time_split`` asset wrote to the lake."""
    rows = {r["split"]: r for r in lake.read(TIME_SPLIT_TABLE).to_pylist()}
    missing = [s for s in SPLITS if s not in rows]
    if missing:
        raise ValueError(f"{TIME_SPLIT_TABLE} lacks the splits {missing}: materialize time_split")
    return TimeSplit(*(rows[s][edge] for s in SPLITS for edge in ("start", "end")))
