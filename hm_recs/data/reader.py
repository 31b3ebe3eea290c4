"""Read a Kaggle-layout file (CSV, gzipped CSV or Parquet) as text records with their line numbers.

The reader never drops a record silently. A CSV record with the wrong number of fields, or with bytes
that are not UTF-8, becomes a :class:`Reject` (file, line, reason, text); every other record comes
back as text, exactly as written, with the file name and its line: the physical line (1-based, the
header is line 1) on which the record starts, so a quoted value holding line breaks pushes the
records after it down as an editor would show them. For Parquet input ``line`` is the 1-based row
number.

Reading is streamed in blocks, so a 3.5 GB transactions file needs a few hundred MB of memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from hm_recs.data.schema import TableContract


class ContractError(ValueError):
    """A file that cannot be read at all under the contract (wrong header, missing columns)."""


@dataclass(frozen=True)
class Reject:
    table: str
    stage: str
    source_file: str
    line: int | None
    fields: str
    reason: str
    record: str | None


def read_raw_batches(
    path: str | Path, contract: TableContract, block_size: int = 16 << 20
) -> Iterator[tuple[pa.RecordBatch, list[Reject]]]:
    """Yield ``(batch, rejects)``: text records in the contract's raw schema and the malformed lines."""
    path = Path(path)
    if path.name.endswith(".parquet"):
        yield from _read_parquet(path, contract)
    else:
        yield from _read_csv(path, contract, block_size)


def _read_csv(path: Path, contract: TableContract, block_size: int):
    names = contract.column_names
    invalid: list[tuple[int, str, int]] = []

    def on_invalid(row) -> str:
        invalid.append((int(row.number), row.text, int(row.actual_columns)))
        return "skip"

    stream = pa.input_stream(str(path), compression="detect")
    try:
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(use_threads=False, block_size=block_size),
            parse_options=pcsv.ParseOptions(
                invalid_row_handler=on_invalid, newlines_in_values=True, ignore_empty_lines=False
            ),
            convert_options=pcsv.ConvertOptions(
                # bytes first: one undecodable byte must reject its row, not the whole file (_decode)
                column_types={n: pa.binary() for n in names},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise ContractError(f"{path}: cannot read as CSV: {exc}") from exc
    except (OSError, EOFError) as exc:  # a corrupt or truncated .gz, an unreadable file
        raise ContractError(f"{path}: cannot be read (corrupt or truncated?): {exc}") from exc
    header = reader.schema.names
    if header != names:
        missing = [n for n in names if n not in header]
        extra = [n for n in header if n not in names]
        raise ContractError(
            f"{path}: header does not match the {contract.name} contract "
            f"(missing {missing}, unexpected {extra}, expected order {names})"
        )

    next_line = 2  # record numbers: the header is record 1
    breaks = 0  # line breaks inside quoted values so far: record number + breaks before it = physical line
    pending: list[tuple[int, str, int]] = []
    source = str(path)
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (OSError, EOFError) as exc:
            raise ContractError(
                f"{path}: cannot be read past line {next_line} (corrupt or truncated?): {exc}"
            ) from exc
        pending.extend(invalid)
        invalid.clear()
        lines, next_line, consumed = _assign_lines(batch, next_line, pending)
        lines, consumed, breaks = _physical_lines(lines, _breaks_per_record(batch), consumed, breaks)
        rejects = [_column_count_reject(contract, source, inv) for inv in consumed]
        batch, lines, undecodable = _decode(batch, contract, source, lines)
        yield _with_source(batch, contract, source, lines), rejects + undecodable
    pending.extend(invalid)
    if pending:
        none = np.zeros(0, np.int64)
        _, pending, _ = _physical_lines(none, none, sorted(pending), breaks)
        yield _empty_raw(contract), [_column_count_reject(contract, source, inv) for inv in pending]


def _assign_lines(batch: pa.RecordBatch, start: int, pending: list[tuple[int, str, int]]):
    """Record number of every record in ``batch``, counting the header as record 1.

    Malformed records that the parser skipped (``pending``, known by their record numbers) sit
    between good records and push later records down. Returns the numbers, the next free number
    and the malformed records placed at or before the end of this batch.
    """
    n = batch.num_rows
    lines = np.arange(start, start + n, dtype=np.int64)
    pending.sort()
    consumed = []
    while pending and n and pending[0][0] <= lines[-1]:
        inv = pending.pop(0)
        lines[lines >= inv[0]] += 1
        consumed.append(inv)
    next_line = int(lines[-1]) + 1 if n else start
    while pending and pending[0][0] == next_line:
        consumed.append(pending.pop(0))
        next_line += 1
    return lines, next_line, consumed


def _breaks_per_record(batch: pa.RecordBatch) -> np.ndarray:
    """Line breaks inside the quoted values of each record."""
    counts = np.zeros(batch.num_rows, np.int64)
    for column in batch.columns:
        counts += pc.fill_null(pc.count_substring(column, "\n"), 0).to_numpy(zero_copy_only=False)
    return counts


def _physical_lines(records: np.ndarray, good: np.ndarray, consumed: list, breaks: int):
    """Turn record numbers into physical line numbers.

    Arrow's serial reader numbers records, not lines. Every line break inside a quoted value of an
    earlier record (a good one, ``good`` breaks each, or a malformed one in ``consumed``) moves a
    record one physical line down. Returns the good records' lines, the malformed records
    renumbered, and the running count of breaks for the next batch.
    """
    numbers = np.concatenate([records, np.array([inv[0] for inv in consumed], np.int64)])
    extra = np.concatenate([good, np.array([inv[1].count("\n") for inv in consumed], np.int64)])
    order = np.argsort(numbers, kind="stable")
    before = np.empty_like(extra)
    before[order] = breaks + np.cumsum(extra[order]) - extra[order]
    physical = numbers + before
    n = len(records)
    renumbered = [
        (int(line), text, ncols) for line, (_, text, ncols) in zip(physical[n:], consumed, strict=True)
    ]
    return physical[:n], renumbered, breaks + int(extra.sum())


def _decode(batch: pa.RecordBatch, contract: TableContract, source: str, lines: np.ndarray):
    """The batch as UTF-8 text: rows holding bytes that are not UTF-8 become rejects (file, line, the
    fields, the record with the bad bytes shown as U+FFFD). The cast validates in C++; only a batch
    with a bad byte is looked at row by row."""
    try:
        cols = [batch.column(i).cast(pa.string()) for i in range(batch.num_columns)]
        return pa.RecordBatch.from_arrays(cols, names=batch.schema.names), lines, []
    except (pa.ArrowInvalid, UnicodeDecodeError):
        pass
    raw = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
    bad_fields: dict[int, list[str]] = {}
    for name, values in zip(batch.schema.names, raw, strict=True):
        for row, v in enumerate(values):
            if v is None:
                continue
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                bad_fields.setdefault(row, []).append(name)
    rejects = [
        Reject(
            table=contract.name,
            stage="parse",
            source_file=source,
            line=int(lines[row]),
            fields=",".join(names),
            reason=f"{', '.join(names)}: not valid UTF-8",
            record=",".join(
                "" if values[row] is None else values[row].decode("utf-8", "replace") for values in raw
            ),
        )
        for row, names in sorted(bad_fields.items())
    ]
    keep = np.ones(batch.num_rows, bool)
    keep[list(bad_fields)] = False
    kept = batch.filter(pa.array(keep))
    cols = [kept.column(i).cast(pa.string()) for i in range(kept.num_columns)]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names), lines[keep], rejects


def _column_count_reject(contract: TableContract, source: str, inv: tuple[int, str, int]) -> Reject:
    number, text, ncols = inv
    expected = len(contract.columns)
    return Reject(
        table=contract.name,
        stage="parse",
        source_file=source,
        line=number,
        fields="*",
        reason=f"wrong column count: expected {expected}, found {ncols}",
        record=text,
    )


def _with_source(
    batch: pa.RecordBatch, contract: TableContract, source: str, lines: np.ndarray
) -> pa.RecordBatch:
    n = batch.num_rows
    arrays = [batch.column(name) for name in contract.column_names]
    arrays.append(pa.array(np.full(n, source, dtype=object), pa.string()) if n else pa.array([], pa.string()))
    arrays.append(pa.array(lines, pa.int64()))
    return pa.RecordBatch.from_arrays(arrays, schema=contract.raw_schema())


def _empty_raw(contract: TableContract) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=contract.raw_schema())


def _read_parquet(path: Path, contract: TableContract):
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    missing = [n for n in contract.column_names if n not in names]
    if missing:
        raise ContractError(f"{path}: Parquet file lacks the {contract.name} columns {missing}")
    row = 1
    for batch in pf.iter_batches(batch_size=262_144, columns=contract.column_names):
        arrays = [_as_text(batch.column(name), name) for name in contract.column_names]
        n = batch.num_rows
        lines = np.arange(row, row + n, dtype=np.int64)
        row += n
        text = pa.RecordBatch.from_arrays(arrays, names=contract.column_names)
        yield _with_source(text, contract, str(path), lines), []


def _as_text(arr: pa.Array, name: str) -> pa.Array:
    """Parquet columns as the text a Kaggle CSV would hold (integer ids zero-padded)."""
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return arr.cast(pa.string())
    if name == "article_id" and pa.types.is_integer(arr.type):
        return pc.utf8_lpad(arr.cast(pa.string()), 10, "0")
    if name == "product_code" and pa.types.is_integer(arr.type):
        return pc.utf8_lpad(arr.cast(pa.string()), 7, "0")
    if pa.types.is_timestamp(arr.type):
        return pc.strftime(arr, "%Y-%m-%d")
    if pa.types.is_date(arr.type):
        return arr.cast(pa.string())
    return arr.cast(pa.string())
