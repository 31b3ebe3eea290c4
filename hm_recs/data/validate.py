"""Validate raw text records against the H&M contract: typed clean rows out, every bad row a reject.

Each rule is a vectorised test over a batch that yields a mask of failing rows, the field it checks
and a reason. A row that fails any rule goes to the rejects with all its reasons; every other row is
cast to the contract's types. Nothing is dropped without a reject row saying why.

Rules (per table):

* articles: ``article_id`` 10 digits and unique (the first occurrence wins, later ones are
  rejected as duplicates); ``product_code`` 7 digits equal to the first 7 of ``article_id``; the
  ``*_no`` / ``*_code`` / ``*_id`` numeric columns integers; ``index_code`` one capital letter.
* customers: ``customer_id`` 64 lowercase hex characters and unique; ``FN`` / ``Active`` empty, 0 or
  1; ``club_member_status`` and ``fashion_news_frequency`` empty or a known value; ``age`` empty or a
  number in [0, 120].
* transactions: ``t_dat`` a real ISO date; ids well formed; ``price`` a finite number >= 0 (``NaN``
  and negatives rejected); ``sales_channel_id`` 1 or 2; the article and the customer known from the
  clean articles and customers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hm_recs.data.reader import Reject
from hm_recs.data.schema import (
    AGE_RANGE,
    ARTICLE_ID_PATTERN,
    ARTICLES,
    CLUB_MEMBER_STATUSES,
    CUSTOMER_ID_PATTERN,
    DATE_PATTERN,
    FASHION_NEWS_FREQUENCIES,
    PRODUCT_CODE_PATTERN,
    REJECTS_SCHEMA,
    SALES_CHANNELS,
    TRANSACTIONS,
    TableContract,
)

INTEGER_PATTERN = r"^-?[0-9]+$"
DECIMAL_PATTERN = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


@dataclass
class Rule:
    fields: str
    reason: Callable[[dict, int], str]
    mask: np.ndarray


ID_WIDTHS = {"article_id": 10, "customer_id": 64}


def _fixed_width(col: pa.Array, width: int) -> np.ndarray:
    """Strings as a numpy ``S<width>`` array (cut or padded to ``width``), nulls as empty."""
    text = pc.utf8_rpad(pc.utf8_slice_codeunits(col.fill_null(""), 0, width), width, " ")
    text = pa.concat_arrays([text]) if isinstance(text, pa.ChunkedArray) else text
    data = text.cast(pa.binary()).buffers()[2]
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32, count=len(text) + 1, offset=4 * text.offset)
    start = int(offsets[0])
    return np.frombuffer(data, dtype=f"S{width}", count=len(text), offset=start)


def _bad(ok: pa.Array) -> np.ndarray:
    """Rows where a test did not pass; a null test result (a missing value) counts as failed."""
    return ~np.asarray(ok.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _value(batch: pa.RecordBatch, name: str, i: int) -> str:
    v = batch.column(name)[i].as_py()
    return "<empty>" if v is None else repr(v)


def _pattern_rule(batch, name, pattern, what, required=True) -> Rule:
    col = batch.column(name)
    ok = pc.match_substring_regex(col, pattern)
    if not required:
        ok = pc.or_kleene(pc.is_null(col), ok)
    return Rule(name, lambda b, i: f"{name}: expected {what}, got {_value(b, name, i)}", _bad(ok))


def _set_rule(batch, name, allowed: Iterable[str], required=True) -> Rule:
    col = batch.column(name)
    allowed = list(allowed)
    ok = pc.is_in(col, value_set=pa.array(allowed, pa.string()))
    if not required:
        ok = pc.or_kleene(pc.is_null(col), ok)
    return Rule(name, lambda b, i: f"{name}: expected one of {allowed}, got {_value(b, name, i)}", _bad(ok))


def _number_range_rule(batch, name, lo, hi, required=True) -> Rule:
    col = batch.column(name)
    is_num = pc.match_substring_regex(col, DECIMAL_PATTERN).fill_null(False)
    values = pc.if_else(is_num, col, pa.scalar(None, pa.string())).cast(pa.float64())
    in_range = pc.and_(pc.greater_equal(values, lo), pc.less_equal(values, hi)).fill_null(False)
    ok = in_range if required else pc.or_kleene(pc.is_null(col), in_range)
    return Rule(
        name, lambda b, i: f"{name}: expected a number in [{lo}, {hi}], got {_value(b, name, i)}", _bad(ok)
    )


@dataclass
class TableValidator:
    """Validates the batches of one table in file order; keeps state for duplicate keys."""

    contract: TableContract
    known_articles: pa.Array | None = None
    known_customers: pa.Array | None = None
    _seen_keys: list = field(default_factory=list)
    _first_line: dict = field(default_factory=dict)
    _indexes: dict = field(default_factory=dict)

    def validate(self, raw: pa.RecordBatch) -> tuple[pa.RecordBatch, list[Reject]]:
        rules = {
            "articles": self._article_rules,
            "customers": self._customer_rules,
            "transactions": self._transaction_rules,
        }[self.contract.name](raw)
        bad = np.zeros(raw.num_rows, dtype=bool)
        for r in rules:
            bad |= r.mask
        rejects = self._rejects(raw, rules, bad)
        good = raw.filter(pa.array(~bad))
        if self.contract.key:
            self._remember_keys(good)
        return self._typed(good), rejects

    # -- rules ---------------------------------------------------------------------------------
    def _article_rules(self, b: pa.RecordBatch) -> list[Rule]:
        rules = [
            _pattern_rule(b, "article_id", ARTICLE_ID_PATTERN, "10 digits"),
            _pattern_rule(b, "product_code", PRODUCT_CODE_PATTERN, "7 digits"),
            _pattern_rule(b, "index_code", r"^[A-Z]$", "one capital letter"),
        ]
        prefix = pc.utf8_slice_codeunits(b.column("article_id"), 0, 7)
        rules.append(
            Rule(
                "product_code",
                lambda bb, i: (
                    f"product_code: {_value(bb, 'product_code', i)} is not the first 7 digits "
                    f"of article_id {_value(bb, 'article_id', i)}"
                ),
                _bad(pc.equal(prefix, b.column("product_code"))),
            )
        )
        for c in ARTICLES.columns:
            if pa.types.is_integer(c.type):
                rules.append(_pattern_rule(b, c.name, INTEGER_PATTERN, "an integer"))
        rules.append(self._duplicate_rule(b))
        return rules

    def _customer_rules(self, b: pa.RecordBatch) -> list[Rule]:
        return [
            _pattern_rule(b, "customer_id", CUSTOMER_ID_PATTERN, "64 lowercase hex characters"),
            _set_rule(b, "FN", ["0", "1", "0.0", "1.0"], required=False),
            _set_rule(b, "Active", ["0", "1", "0.0", "1.0"], required=False),
            _set_rule(b, "club_member_status", CLUB_MEMBER_STATUSES, required=False),
            _set_rule(b, "fashion_news_frequency", FASHION_NEWS_FREQUENCIES, required=False),
            _number_range_rule(b, "age", *AGE_RANGE, required=False),
            self._duplicate_rule(b),
        ]

    def _transaction_rules(self, b: pa.RecordBatch) -> list[Rule]:
        dates = pc.strptime(b.column("t_dat"), format="%Y-%m-%d", unit="s", error_is_null=True)
        # strptime is lenient (2020-02-30 becomes 2020-03-01): a real date prints back the same
        real_date = pc.equal(pc.strftime(dates, format="%Y-%m-%d"), b.column("t_dat"))
        rules = [
            _pattern_rule(b, "t_dat", DATE_PATTERN, "a date YYYY-MM-DD"),
            Rule(
                "t_dat",
                lambda bb, i: f"t_dat: {_value(bb, 't_dat', i)} is not a calendar date",
                _bad(real_date),
            ),
            _pattern_rule(b, "customer_id", CUSTOMER_ID_PATTERN, "64 lowercase hex characters"),
            _pattern_rule(b, "article_id", ARTICLE_ID_PATTERN, "10 digits"),
            _number_range_rule(b, "price", 0.0, float("inf")),
            _set_rule(b, "sales_channel_id", [str(c) for c in SALES_CHANNELS]),
        ]
        if self.known_articles is not None:
            known = self._lookup("article_id", self.known_articles, b)
            rules.append(
                Rule(
                    "article_id",
                    lambda bb, i: f"article_id: {_value(bb, 'article_id', i)} is not in articles",
                    _bad(known),
                )
            )
        if self.known_customers is not None:
            known = self._lookup("customer_id", self.known_customers, b)
            rules.append(
                Rule(
                    "customer_id",
                    lambda bb, i: f"customer_id: {_value(bb, 'customer_id', i)} is not in customers",
                    _bad(known),
                )
            )
        return rules

    def _lookup(self, column: str, keys: pa.Array, b: pa.RecordBatch) -> pa.Array:
        """Membership in a large set of fixed-width ids (binary search over the sorted ids).

        The ids are viewed as fixed-width byte strings without copying them into Python objects;
        a value of another width never matches (and already fails its format rule).
        """
        width = ID_WIDTHS[column]
        index = self._indexes.get(column)
        if index is None:
            index = self._indexes[column] = np.sort(_fixed_width(keys, width))
        values = _fixed_width(b.column(column), width)
        pos = np.searchsorted(index, values).clip(0, max(len(index) - 1, 0))
        found = (index[pos] == values) if len(index) else np.zeros(len(values), bool)
        found &= ~_bad(pc.equal(pc.utf8_length(b.column(column)), width))
        return pa.array(found)

    def _duplicate_rule(self, b: pa.RecordBatch) -> Rule:
        key = self.contract.key[0]
        col = b.column(key)
        keys = col.to_numpy(zero_copy_only=False)
        within = np.zeros(len(keys), dtype=bool)
        first_here: dict = {}
        for i, k in enumerate(keys):  # ids are few (articles, customers): a plain loop is fine
            if k is None:
                continue
            if k in first_here:
                within[i] = True
            else:
                first_here[k] = i
        before = np.zeros(len(keys), dtype=bool)
        if self._seen_keys:
            before = ~_bad(pc.is_in(col, value_set=pa.concat_arrays(self._seen_keys)))
        lines = b.column("line").to_numpy()
        first_line = self._first_line

        def reason(bb, i):
            k = keys[i]
            first = first_line.get(k, lines[first_here[k]] if k in first_here else None)
            return f"{key}: duplicate {k!r} (first at line {first})"

        return Rule(key, reason, within | before)

    def _remember_keys(self, good: pa.RecordBatch) -> None:
        key = self.contract.key[0]
        self._seen_keys.append(good.column(key))
        for k, line in zip(good.column(key).to_pylist(), good.column("line").to_pylist(), strict=True):
            self._first_line.setdefault(k, line)

    # -- outputs -------------------------------------------------------------------------------
    def _rejects(self, raw: pa.RecordBatch, rules: list[Rule], bad: np.ndarray) -> list[Reject]:
        out = []
        names = self.contract.column_names
        idx = np.flatnonzero(bad)
        rows = raw.take(pa.array(idx)).to_pylist() if len(idx) else []
        for i, row in zip(idx, rows, strict=True):
            failed = [r for r in rules if r.mask[i]]
            record = ",".join("" if row[n] is None else str(row[n]) for n in names)
            out.append(
                Reject(
                    table=self.contract.name,
                    stage="validate",
                    source_file=row["source_file"],
                    line=row["line"],
                    fields=",".join(dict.fromkeys(r.fields for r in failed)),
                    reason="; ".join(r.reason(raw, i) for r in failed),
                    record=record,
                )
            )
        return out

    def clean_schema(self) -> pa.Schema:
        schema = self.contract.arrow_schema()
        if self.contract is TRANSACTIONS:  # the source line keeps a stable order of events within a day
            schema = schema.append(pa.field("line", pa.int64(), nullable=False))
        return schema

    def _typed(self, good: pa.RecordBatch) -> pa.RecordBatch:
        arrays = []
        for c in self.contract.columns:
            col = good.column(c.name)
            if pa.types.is_date(c.type):
                col = pc.strptime(col, format="%Y-%m-%d", unit="s").cast(pa.date32())
            elif not pa.types.is_string(c.type):
                col = col.cast(c.type)
            arrays.append(col)
        if self.contract is TRANSACTIONS:
            arrays.append(good.column("line"))
        return pa.RecordBatch.from_arrays(arrays, schema=self.clean_schema())


def rejects_table(rejects: list[Reject]) -> pa.Table:
    cols = {f.name: [getattr(r, f.name) for r in rejects] for f in REJECTS_SCHEMA}
    return pa.Table.from_pydict(cols, schema=REJECTS_SCHEMA)
