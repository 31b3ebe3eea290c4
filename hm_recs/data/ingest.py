"""Ingestion: Kaggle files -> raw Delta tables (text, as written) -> clean Delta tables (typed, valid).

Both steps stream in batches, so the 31.8M-row transactions file needs bounded memory. Each step
replaces its own slice of the shared ``rejects`` table (partitioned by ``table`` and ``stage``) in
one atomic commit, so re-running a step never duplicates or loses reject rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from hm_recs.data.delta import Lake
from hm_recs.data.reader import Reject, read_raw_batches
from hm_recs.data.schema import REJECTS_SCHEMA, TableContract, find_table_file
from hm_recs.data.validate import TableValidator, rejects_table
from hm_recs.tables import INGESTED_FILES_TABLE, REJECTS_TABLE, clean_table, raw_table

# what each raw step read: file name, size and content hash (the file sensor compares with it)


def raw_table_name(contract: TableContract) -> str:
    return raw_table(contract.name)


def clean_table_name(contract: TableContract) -> str:
    return clean_table(contract.name)


@dataclass
class StepResult:
    table: str
    source: str
    rows_in: int = 0
    rows_out: int = 0
    version: int = -1
    rejects: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    kept_version: int | None = None  # refused (too many rejects, or shrank): put back to this version
    previous_rows: int | None = None  # the clean table's rows before this run (None: no table yet)
    refused: str = ""  # why the new content was not kept

    @property
    def dropped_fraction(self) -> float:
        """Share of the previous clean rows the new content lacks (0 when it grew or was the first)."""
        if not self.previous_rows:
            return 0.0
        return max(0.0, 1.0 - self.rows_out / self.previous_rows)

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())

    @property
    def reject_fraction(self) -> float:
        return self.rejected / self.rows_in if self.rows_in else 0.0


def _reason_kind(reason: str) -> str:
    """A short category for counting: the field and the rule, without the offending value."""
    first = reason.split(";")[0]
    head = first.split(":")[0]
    rest = first.split(":", 1)[1] if ":" in first else ""
    if head.startswith("wrong column count"):
        return "wrong column count"
    for word in ("duplicate", "is not in", "is not the first", "is not a calendar date", "expected"):
        if word in rest:
            return f"{head}: {word}"
    return head


def write_rejects(lake: Lake, table: str, stage: str, rejects: list[Reject]) -> int:
    """Replace this (table, stage) slice of the shared rejects table."""
    data = rejects_table(rejects) if rejects else REJECTS_SCHEMA.empty_table()
    predicate = f"table = '{table}' AND stage = '{stage}'"
    return lake.replace_where(REJECTS_TABLE, data, predicate, partition_by=["table", "stage"])


def file_fingerprint(path: str | Path, chunk: int = 8 << 20) -> str:
    """``size:sha256`` of a file's bytes: equal for a touched file, different for new content."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
    return f"{size}:{digest.hexdigest()}"


def record_ingested(lake: Lake, path: Path, fingerprint: str) -> None:
    """Remember what was read from ``path`` (one row per file name, replaced on every ingest)."""
    row = pa.Table.from_pylist(
        [
            {
                "file": path.name,
                "fingerprint": fingerprint,
                "ingested_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
            }
        ]
    )
    lake.replace_where(INGESTED_FILES_TABLE, row, f"file = '{path.name}'")


def ingested_fingerprints(lake: Lake) -> dict[str, str]:
    """File name -> fingerprint of what the raw steps last read."""
    if not lake.exists(INGESTED_FILES_TABLE):
        return {}
    t = lake.read(INGESTED_FILES_TABLE, columns=["file", "fingerprint"])
    return dict(zip(t.column("file").to_pylist(), t.column("fingerprint").to_pylist(), strict=True))


def load_raw(data_dir: str | Path, contract: TableContract, lake: Lake) -> StepResult:
    """Copy one Kaggle file into ``raw/<table>`` as text; malformed lines go to the rejects."""
    start = time.perf_counter()
    path = find_table_file(data_dir, contract)
    result = StepResult(table=raw_table_name(contract), source=str(path))
    rejects: list[Reject] = []

    def batches() -> Iterator[pa.RecordBatch]:  # called again if the commit loses a race
        rejects.clear()
        result.rows_out = 0
        for batch, bad in read_raw_batches(path, contract):
            rejects.extend(bad)
            result.rows_out += batch.num_rows
            yield batch

    fingerprint = file_fingerprint(path)  # before reading: a file replaced meanwhile is read again later
    result.version = lake.write(result.table, batches, schema=contract.raw_schema())
    write_rejects(lake, contract.name, "parse", rejects)
    record_ingested(lake, path, fingerprint)
    result.rejects = Counter(_reason_kind(r.reason) for r in rejects)
    result.rows_in = result.rows_out + len(rejects)
    result.seconds = time.perf_counter() - start
    return result


def clean(
    contract: TableContract,
    lake: Lake,
    known_articles: pa.Array | None = None,
    known_customers: pa.Array | None = None,
    max_reject_fraction: float | None = None,
    max_row_drop: float | None = None,
) -> StepResult:
    """Validate ``raw/<table>`` into ``clean/<table>``; every failing row goes to the rejects.

    The new content is not kept above ``max_reject_fraction`` rejected rows, nor when it has lost
    more than ``max_row_drop`` of the previous version's rows (a header-only or truncated file
    would otherwise empty the table): the clean table is restored to the version before this run
    (``kept_version``, ``refused`` says why), so downstream stages never read a file that failed its
    check; the rejects table still says which rows were bad. None switches a guard off."""
    start = time.perf_counter()
    raw_name = raw_table_name(contract)
    result = StepResult(table=clean_table_name(contract), source=lake.uri(raw_name))
    before = lake.version(result.table) if lake.exists(result.table) else None
    result.previous_rows = lake.count(result.table) if before is not None else None
    schema = TableValidator(contract).clean_schema()
    rejects: list[Reject] = []
    parse_rejects = _count_rejects(lake, contract.name, "parse")

    def raw_batches() -> Iterator[pa.RecordBatch]:
        if contract.key:  # keyed tables are small: read whole and sort so "first occurrence" is file order
            table = lake.read(raw_name)
            table = table.sort_by([("source_file", "ascending"), ("line", "ascending")])
            yield from table.to_batches(max_chunksize=262_144)
        else:
            yield from lake.dataset(raw_name).to_batches(batch_size=262_144)

    def clean_batches() -> Iterator[pa.RecordBatch]:  # called again if the commit loses a race
        validator = TableValidator(contract, known_articles=known_articles, known_customers=known_customers)
        rejects.clear()
        result.rows_in = result.rows_out = 0
        for batch in raw_batches():
            good, bad = validator.validate(batch)
            rejects.extend(bad)
            result.rows_in += batch.num_rows
            result.rows_out += good.num_rows
            yield good

    result.version = lake.write(result.table, clean_batches, schema=schema)
    write_rejects(lake, contract.name, "validate", rejects)
    result.rejects = Counter(_reason_kind(r.reason) for r in rejects)
    result.rejects.update(parse_rejects)
    result.rows_in += sum(parse_rejects.values())
    if max_reject_fraction is not None and result.reject_fraction > max_reject_fraction:
        result.refused = (
            f"{result.reject_fraction:.2%} of the rows rejected (limit {max_reject_fraction:.2%})"
        )
    elif max_row_drop is not None and result.dropped_fraction > max_row_drop:
        result.refused = (
            f"{result.rows_out:,} clean rows against {result.previous_rows:,} before: "
            f"{result.dropped_fraction:.1%} of the table would disappear (limit {max_row_drop:.0%})"
        )
    if result.refused and before is not None:
        result.version = lake.restore(result.table, before)
        result.kept_version = before
    result.seconds = time.perf_counter() - start
    return result


def _count_rejects(lake: Lake, table: str, stage: str) -> Counter:
    if not lake.exists(REJECTS_TABLE):
        return Counter()
    t = lake.read(REJECTS_TABLE, columns=["reason"], filters=[("table", "=", table), ("stage", "=", stage)])
    return Counter(_reason_kind(r) for r in t.column("reason").to_pylist())


def key_values(lake: Lake, contract: TableContract) -> pa.Array:
    """The key column of a clean table (the known articles or customers)."""
    col = lake.read(clean_table_name(contract), columns=[contract.key[0]]).column(0)
    return pc.unique(col.combine_chunks())
