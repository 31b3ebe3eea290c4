"""Weekly partitions of the sessions, Wednesday to Tuesday like the Kaggle weeks.

The first partition starts on Wednesday 2018-09-19, so the first days of the data (from Thursday
2018-09-20) belong to a partition; the last one of the H&M data starts 2020-09-16 (the test week).
For live data set ``HM_WEEKS_END`` to a later date (or ``none`` for "up to today").
"""


import os

import dagster as dg

WEEKS_START = os.environ.get("HM_WEEKS_START", "2018-09-19")
_end = os.environ.get("HM_WEEKS_END", "2020-09-23")
WEEKS_END = None if _end.lower() == "none" else _end

weekly_partitions = dg.WeeklyPartitionsDefinition(start_date=WEEKS_START, end_date=WEEKS_END, day_offset=3)
