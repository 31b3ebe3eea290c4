"""Weekly partitions of the sessions, Wednesday to Tuesday like the Kaggle weeks.

The first partition starts on Wednesday 2018-09-19, so the first days of the data (from Thursday
2018-09-20) belong to a partition; the last one of the H&M data starts 2020-09-16 (the test week).
For live data set ``HM_WEEKS_END`` to a later date (or ``none`` for "up to today").
"""


import datetime as dt
import os

import dagster as dg

WEEKS_START = os.environ.get("HM_WEEKS_START", "2018-09-19")
_end = os.environ.get("HM_WEEKS_END", "2020-09-23")
WEEKS_END = None if _end.lower() == "none" else _end

weekly_partitions = dg.WeeklyPartitionsDefinition(start_date=WEEKS_START, end_date=WEEKS_END, day_offset=3)


def week_keys_covering(partitions_def, first_day: dt.date, last_day: dt.date) -> tuple[str, str]:
    """First and last weekly partition keys whose weeks hold the given days."""
    keys = partitions_def.get_partition_keys()
    starts = [dt.date.fromisoformat(k) for k in keys]
    inside = [k for k, s in zip(keys, starts, strict=True) if s + dt.timedelta(days=6) >= first_day and s <= last_day]
    if not inside:
        raise ValueError(f"no weekly partition covers {first_day} .. {last_day}: check HM_WEEKS_START / HM_WEEKS_END")
    return inside[0], inside[-1]
