"""Weekly partitions of the sessions, Wednesday to Tuesday like the Kaggle weeks, that follow the data.

The partitions are a dynamic set named ``weeks``: ``clean_transactions`` adds the week of every day
it ingested (key: the week's Wednesday, ISO date), so the H&M data gets its 105 weeks from
2018-09-19, the demo sample its own, and a newly appended week becomes a partition the moment it
is ingested. Nothing is fixed to a calendar end date.
"""

import datetime as dt

import dagster as dg

WEEKS = "weeks"
weekly_partitions = dg.DynamicPartitionsDefinition(name=WEEKS)


def week_start(day: dt.date) -> dt.date:
    """The Wednesday that starts the week holding ``day``."""
    return day - dt.timedelta(days=(day.weekday() - 2) % 7)


def week_keys_between(first_day: dt.date, last_day: dt.date) -> list[str]:
    """Keys of every week from the one holding ``first_day`` to the one holding ``last_day``."""
    if last_day < first_day:
        raise ValueError(f"no weeks between {first_day} and {last_day}")
    start, last = week_start(first_day), week_start(last_day)
    return [(start + dt.timedelta(days=7 * i)).isoformat() for i in range((last - start).days // 7 + 1)]


def week_keys_covering(first_day: dt.date, last_day: dt.date) -> tuple[str, str]:
    """First and last week keys whose weeks hold the given days."""
    keys = week_keys_between(first_day, last_day)
    return keys[0], keys[-1]


def add_weeks(instance, first_day: dt.date, last_day: dt.date) -> list[str]:
    """Register the weeks of the data as partitions (idempotent); returns the keys added."""
    keys = week_keys_between(first_day, last_day)
    known = set(instance.get_dynamic_partitions(WEEKS))
    new = [k for k in keys if k not in known]
    if new:
        instance.add_dynamic_partitions(WEEKS, new)
    return new
