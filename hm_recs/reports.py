"""Markdown tables for Dagster metadata, MLflow text artifacts and the CLI: plain functions of rows."""

from __future__ import annotations

import pyarrow as pa


def markdown_table(table: pa.Table | list[dict], max_chars: int = 60) -> str:
    """Every row of ``table`` (an Arrow table or a list of dicts), cells cut at ``max_chars``."""
    if isinstance(table, list):
        table = pa.Table.from_pylist(table)
    cols = table.column_names
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.to_pylist():
        cells = []
        for c in cols:
            v = "" if row[c] is None else str(row[c])
            cells.append((v[: max_chars - 1] + "…" if len(v) > max_chars else v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def string_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of preformatted cells (the header alone when there are no rows)."""
    return markdown_table(pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in columns])))


def differences_table(rows: list[dict]) -> str:
    """Paired differences (``diff``, ``lo``, ``hi``) of one model against another, per week and metric."""
    columns = ["model", "versus", "week", "metric", "difference [95 % interval]"]
    return string_table(
        [
            {
                **{c: r[c] for c in columns[:4]},
                "difference [95 % interval]": f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]",
            }
            for r in rows
        ],
        columns,
    )


def cold_start_table(rows: list[dict]) -> str:
    """Recall@20 with its interval and MRR@20 on the events of customers with no earlier purchase."""
    return string_table(
        [
            {
                "model": r["model"],
                "week": r["week"],
                "cold-start events": str(r["events"]),
                "Recall@20": f"{r['Recall@20']:.4f} [{r['Recall@20_lo']:.4f}, {r['Recall@20_hi']:.4f}]",
                "MRR@20": f"{r['MRR@20']:.4f}",
            }
            for r in rows
        ],
        ["model", "week", "cold-start events", "Recall@20", "MRR@20"],
    )
