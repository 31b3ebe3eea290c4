"""The H&M Personalized Fashion Recommendations data contract (Kaggle layout).

A Kaggle-layout directory holds::

    articles.csv            25 columns, one row per article
    customers.csv            7 columns, one row per customer
    transactions_train.csv   5 columns, one row per unit bought
    images/0XX/0XXXXXXXXX.jpg  one product photo per article (some articles have none)

Each CSV may also be gzipped (``.csv.gz``) or Parquet (``.parquet``).

Identifier rules: ``article_id`` is a 10-character zero-padded digit string (``0108775015``),
``product_code`` is its first 7 characters (article_id // 1000), ``customer_id`` is 64 lowercase hex
characters, ``t_dat`` is an ISO date, ``price`` a non-negative float and ``sales_channel_id`` 1 or 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

ARTICLE_ID_PATTERN = r"^[0-9]{10}$"
PRODUCT_CODE_PATTERN = r"^[0-9]{7}$"
CUSTOMER_ID_PATTERN = r"^[0-9a-f]{64}$"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
SALES_CHANNELS = (1, 2)
CLUB_MEMBER_STATUSES = ("ACTIVE", "PRE-CREATE", "LEFT CLUB")
FASHION_NEWS_FREQUENCIES = ("NONE", "None", "Regularly", "Monthly")
AGE_RANGE = (0, 120)


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool = True


@dataclass(frozen=True)
class TableContract:
    """One Kaggle file: its base name, its columns in file order and its key."""

    name: str
    file_stem: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    def raw_schema(self) -> pa.Schema:
        """Every column as text, plus where the record came from."""
        return pa.schema(
            [pa.field(c, pa.string()) for c in self.column_names]
            + [
                pa.field("source_file", pa.string(), nullable=False),
                pa.field("line", pa.int64(), nullable=False),
            ]
        )


ARTICLES = TableContract(
    name="articles",
    file_stem="articles",
    key=("article_id",),
    columns=(
        Column("article_id", pa.string(), nullable=False),
        Column("product_code", pa.string(), nullable=False),
        Column("prod_name", pa.string()),
        Column("product_type_no", pa.int32(), nullable=False),
        Column("product_type_name", pa.string()),
        Column("product_group_name", pa.string()),
        Column("graphical_appearance_no", pa.int32(), nullable=False),
        Column("graphical_appearance_name", pa.string()),
        Column("colour_group_code", pa.int32(), nullable=False),
        Column("colour_group_name", pa.string()),
        Column("perceived_colour_value_id", pa.int32(), nullable=False),
        Column("perceived_colour_value_name", pa.string()),
        Column("perceived_colour_master_id", pa.int32(), nullable=False),
        Column("perceived_colour_master_name", pa.string()),
        Column("department_no", pa.int32(), nullable=False),
        Column("department_name", pa.string()),
        Column("index_code", pa.string(), nullable=False),
        Column("index_name", pa.string()),
        Column("index_group_no", pa.int32(), nullable=False),
        Column("index_group_name", pa.string()),
        Column("section_no", pa.int32(), nullable=False),
        Column("section_name", pa.string()),
        Column("garment_group_no", pa.int32(), nullable=False),
        Column("garment_group_name", pa.string()),
        Column("detail_desc", pa.string()),
    ),
)

CUSTOMERS = TableContract(
    name="customers",
    file_stem="customers",
    key=("customer_id",),
    columns=(
        Column("customer_id", pa.string(), nullable=False),
        Column("FN", pa.float64()),
        Column("Active", pa.float64()),
        Column("club_member_status", pa.string()),
        Column("fashion_news_frequency", pa.string()),
        Column("age", pa.float64()),
        Column("postal_code", pa.string()),
    ),
)

TRANSACTIONS = TableContract(
    name="transactions",
    file_stem="transactions_train",
    columns=(
        Column("t_dat", pa.date32(), nullable=False),
        Column("customer_id", pa.string(), nullable=False),
        Column("article_id", pa.string(), nullable=False),
        Column("price", pa.float64(), nullable=False),
        Column("sales_channel_id", pa.int8(), nullable=False),
    ),
)

CONTRACTS = {c.name: c for c in (ARTICLES, CUSTOMERS, TRANSACTIONS)}

SUFFIXES = (".csv", ".csv.gz", ".parquet")

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("line", pa.int64()),
        pa.field("fields", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("record", pa.string()),
    ]
)

IMAGE_MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok | missing | corrupt
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("error", pa.string()),
    ]
)


def image_relpath(article_id: str) -> str:
    """Kaggle layout: ``images/<first 3 chars>/<article_id>.jpg``."""
    return f"images/{article_id[:3]}/{article_id}.jpg"


def find_table_file(data_dir: str | Path, contract: TableContract) -> Path:
    """The file that holds ``contract`` in a Kaggle-layout directory (CSV, gzipped CSV or Parquet)."""
    data_dir = Path(data_dir)
    found = [
        data_dir / f"{contract.file_stem}{s}"
        for s in SUFFIXES
        if (data_dir / f"{contract.file_stem}{s}").exists()
    ]
    if not found:
        expected = ", ".join(f"{contract.file_stem}{s}" for s in SUFFIXES)
        raise FileNotFoundError(f"{data_dir}: no {contract.name} file (looked for {expected})")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ValueError(f"{data_dir}: several files for {contract.name} ({names}); keep exactly one")
    return found[0]
