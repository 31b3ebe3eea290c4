"""Plots as PNG bytes (matplotlib, no display): shown in Dagster metadata and logged to MLflow."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def line_plot(
    series: Mapping[str, Sequence[float]], title: str, xlabel: str, ylabel: str, x: Sequence | None = None
) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, ys in series.items():
        ax.plot(
            list(x) if x is not None else range(1, len(ys) + 1),
            list(ys),
            label=name,
            marker="o" if len(ys) < 30 else None,
        )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    return _png(fig)


def metric_bars(rows: Sequence[Mapping], metric: str, title: str | None = None) -> bytes:
    return _png(metric_bars_figure(rows, metric, title))


def metric_bars_figure(rows: Sequence[Mapping], metric: str, title: str | None = None):
    """Horizontal bars per (model, split), best at the top, with 95 % interval whiskers and the value
    written beside each bar; ``rows`` have model, split, value, ci_low, ci_high. Horizontal, so
    long model names never overlap however many models there are."""
    rows = sorted((r for r in rows if r["metric"] == metric), key=lambda r: (r["value"], r["model"]))
    labels = [f"{r['model']} ({r['split']})" for r in rows]
    values = [r["value"] for r in rows]
    err = [[r["value"] - r["ci_low"] for r in rows], [r["ci_high"] - r["value"] for r in rows]]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(rows)))
    ax.barh(range(len(rows)), values, xerr=err, capsize=3, color="#4c72b0", height=0.6)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    top = max((r["ci_high"] for r in rows), default=1.0) or 1.0
    for i, r in enumerate(rows):
        ax.text(r["ci_high"] + 0.01 * top, i, f"{r['value']:.4f}", va="center", fontsize=7)
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel(metric)
    ax.set_title(title or f"{metric} with 95 % bootstrap intervals")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def importance_bars(importance: Mapping[str, float], title: str, top: int = 20) -> bytes:
    """Horizontal bars of the ``top`` most important features (total gain), the largest at the top."""
    items = sorted(importance.items(), key=lambda kv: kv[1])[-top:]
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.28 * len(items)))
    ax.barh(range(len(items)), [v for _, v in items], color="#55a868", height=0.6)
    ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=8)
    ax.set_xlabel("total gain")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def daily_counts(dates: Sequence, counts: Sequence[int], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(list(dates), list(counts), lw=1)
    ax.set_title(title)
    ax.set_ylabel("transactions")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _png(fig)
