"""Calibration targets for the synthetic generator: aggregates of the real H&M data, no records.

``calibration.json`` (shipped with the package, so the generator works on any machine) holds:

* marginals of the full real dataset from ``hm_reference_stats``: the daily transaction count and
  average price (734 days), shares of product types / groups / colours / index groups among
  articles and among transactions, the sales-channel share, club status, fashion-news and age-bucket
  shares of customers, and the counts of the 200 most bought articles (the head of the long tail);
* the article taxonomy of the real catalogue, as counts per category: product types with their
  group, departments with their index / section / garment group, how many articles each
  (department, product type) pair has, colours with their perceived value and master colour,
  graphical appearances, and how many colour variants a product code has.

``hm-recs synth calibrate`` rebuilds it from ``../shared`` (see :func:`build_calibration`).
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pandas as pd

CALIBRATION_PATH = Path(__file__).with_name("calibration.json")


def _shares(path: Path, key: str) -> dict[str, float]:
    df = pd.read_csv(path, dtype={key: str}, keep_default_na=False)
    return {str(k): float(v) for k, v in zip(df[key], df["share"], strict=True)}


def build_calibration(stats_dir: str | Path, articles_csv: str | Path) -> dict:
    stats = Path(stats_dir)
    summary = pd.read_csv(stats / "summary.csv").set_index("metric")["value"]
    daily = pd.read_csv(stats / "transaction_daily_metrics.csv")
    top = pd.read_csv(stats / "top_article_transactions.csv", dtype={"article_id": str})
    arts = pd.read_csv(articles_csv, dtype={"article_id": str, "product_code": str}, keep_default_na=False)

    def first_mode(df: pd.DataFrame, key: str, cols: list[str]) -> list[list]:
        rows = []
        for k, g in df.groupby(key, sort=True):
            mode = g.groupby(cols).size().sort_values(ascending=False).index[0]
            mode = mode if isinstance(mode, tuple) else (mode,)
            rows.append([_py(k), *[_py(m) for m in mode], int(len(g))])
        return rows

    variants = Counter(Counter(arts["product_code"]).values())
    return {
        "about": "Aggregates of the real H&M Kaggle data (hm_reference_stats and the article catalogue); "
        "no records.",
        "totals": {
            "articles": int(summary["articles"]),
            "customers": int(summary["customers"]),
            "transactions": int(summary["transactions"]),
            "avg_price": float(summary["avg_price"]),
        },
        "daily": {
            "start": str(daily["date"].iloc[0]),
            "transactions": [int(x) for x in daily["transactions"]],
            "avg_price": [round(float(x), 6) for x in daily["avg_price"]],
        },
        "sales_channel": _shares(stats / "sales_channel_metrics.csv", "sales_channel_id"),
        "club_member_status": _shares(stats / "customer_status_metrics.csv", "club_member_status"),
        "fashion_news_frequency": _shares(stats / "fashion_news_metrics.csv", "fashion_news_frequency"),
        "age_buckets": _shares(stats / "age_bucket_metrics.csv", "age_bucket"),
        "article_share": {
            "product_type": _shares(stats / "product_type_metrics.csv", "product_type_name"),
            "product_group": _shares(stats / "product_group_metrics.csv", "product_group_name"),
            "colour_group": _shares(stats / "color_metrics.csv", "colour_group_name"),
            "index_group": _shares(stats / "index_group_metrics.csv", "index_group_name"),
        },
        "transaction_share": {
            "product_type": _shares(stats / "transaction_product_type_metrics.csv", "product_type_name"),
            "product_group": _shares(stats / "transaction_product_group_metrics.csv", "product_group_name"),
            "colour_group": _shares(stats / "transaction_color_metrics.csv", "colour_group_name"),
            "index_group": _shares(stats / "transaction_index_group_metrics.csv", "index_group_name"),
        },
        "top_article_transactions": [int(x) for x in top["transactions"]],
        "taxonomy": {
            "product_types": first_mode(arts, "product_type_no", ["product_type_name", "product_group_name"]),
            "departments": first_mode(
                arts,
                "department_no",
                [
                    "department_name",
                    "index_code",
                    "index_name",
                    "index_group_no",
                    "index_group_name",
                    "section_no",
                    "section_name",
                    "garment_group_no",
                    "garment_group_name",
                ],
            ),
            "department_product_types": [
                [int(d), int(t), int(n)]
                for (d, t), n in arts.groupby(["department_no", "product_type_no"]).size().items()
            ],
            "colours": first_mode(
                arts,
                "colour_group_code",
                [
                    "colour_group_name",
                    "perceived_colour_value_id",
                    "perceived_colour_value_name",
                    "perceived_colour_master_id",
                    "perceived_colour_master_name",
                ],
            ),
            "graphical_appearances": first_mode(
                arts, "graphical_appearance_no", ["graphical_appearance_name"]
            ),
            "variants_per_product": {str(k): int(v) for k, v in sorted(variants.items())},
        },
    }


def _py(x):
    if hasattr(x, "item"):
        return x.item()
    return x


def write_calibration(calibration: dict, path: Path = CALIBRATION_PATH) -> Path:
    # one top-level key per line: compact, yet a diff shows which part changed
    body = ",\n".join(
        f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in calibration.items()
    )
    path.write_text("{\n" + body + "\n}\n")
    return path


@lru_cache(maxsize=1)
def load_calibration(path: str | None = None) -> dict:
    return json.loads(Path(path or CALIBRATION_PATH).read_text())
