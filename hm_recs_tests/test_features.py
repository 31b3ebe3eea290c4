"""Preprocessing (paper section 5.2) and the image manifest."""

from __future__ import annotations

import pyarrow as pa
import pytest
from PIL import Image

from hm_recs.data.images import build_image_manifest
from hm_recs.data.preprocess import article_features, customer_features, ordinal_codes, render_article_text
from hm_recs.data.schema import ARTICLES, CUSTOMERS


def customers_table(rows):
    return pa.Table.from_pylist(rows, schema=CUSTOMERS.arrow_schema())


def test_customer_null_policy_imbalance_drop_and_ordinal_codes():
    rows = [
        {
            "customer_id": f"{i:064x}",
            "FN": 1.0 if i < 3 else None,
            "Active": None,
            "club_member_status": "ACTIVE",
            "fashion_news_frequency": ["NONE", "None", None, "Regularly"][i % 4],
            "age": None if i == 0 else 20.0 + i,
            "postal_code": "p1" if i < 6 else "p2",
        }
        for i in range(10)
    ]
    table, report = customer_features(customers_table(rows), imbalance_threshold=0.9)
    df = table.to_pandas().sort_values("customer_idx")
    assert df["customer_idx"].tolist() == list(range(10))
    assert df["FN"].tolist() == [1.0] * 3 + [0.0] * 7
    assert "club_member_status" in report.dropped and "club_member_status" not in df  # 100 % ACTIVE
    assert "Active" in report.dropped  # all empty -> all 0 -> one value
    assert set(df["fashion_news_frequency"]) == {"NONE", "Regularly"}  # 'None' and empty mean NONE
    assert df.loc[df["customer_id"] == f"{0:064x}", "age_missing"].item() == 1
    assert df.loc[df["customer_id"] == f"{0:064x}", "age"].item() == pytest.approx(25.0)  # median of 21..29
    assert df["postal_code_idx"].tolist() == [0] * 6 + [1] * 4  # most frequent code gets 0
    assert report.fills["FN"] == 7


def test_ordinal_codes_are_deterministic_by_frequency_then_value():
    import pandas as pd

    codes, vocab = ordinal_codes(pd.Series(["b", "a", "c", "a", "b"]))
    assert vocab == ["a", "b", "c"] and codes.tolist() == [1, 0, 2, 0, 1]


def test_article_text_and_features():
    row = {c: None for c in ARTICLES.column_names}
    row.update(
        article_id="0108775015",
        product_code="0108775",
        prod_name="Strap top",
        product_type_no=253,
        product_type_name="Vest top",
        product_group_name="Garment Upper body",
        graphical_appearance_no=1010016,
        graphical_appearance_name="Solid",
        colour_group_code=9,
        colour_group_name="Black",
        perceived_colour_value_id=4,
        perceived_colour_master_id=5,
        department_no=1676,
        department_name="Jersey Basic",
        index_code="A",
        index_group_no=1,
        index_group_name="Ladieswear",
        section_no=16,
        section_name="Womens Everyday Basics",
        garment_group_no=1002,
        garment_group_name="Jersey Basic",
        detail_desc="Jersey top with narrow shoulder straps.",
    )
    text = render_article_text(row)
    assert text == (
        "Strap top: Vest top (Garment Upper body), Black, Solid. Department Jersey Basic, section Womens "
        "Everyday "
        "Basics, garment group Jersey Basic. Jersey top with narrow shoulder straps."
    )
    no_desc = dict(row, detail_desc=None, article_id="0108775016")
    two = pa.Table.from_pylist([row, no_desc], schema=ARTICLES.arrow_schema())
    table, report = article_features(two)
    assert "product_type_name" in report.dropped  # one value in 100 % of rows: no signal
    assert "product_type_idx" not in table.column_names and "text" in table.column_names
    table, report = article_features(two, imbalance_threshold=1.0)
    d = table.to_pandas()
    assert d["article_idx"].tolist() == [0, 1]
    assert d["text"][1].endswith("garment group Jersey Basic.") and not d["has_detail_desc"][1]
    assert "product_type_idx" in d and "colour_group_idx" in d


def test_image_manifest_records_missing_and_corrupt_images(tmp_path):
    (tmp_path / "images" / "010").mkdir(parents=True)
    Image.new("RGB", (128, 192), (200, 10, 10)).save(tmp_path / "images/010/0108775015.jpg")
    good = (tmp_path / "images/010/0108775015.jpg").read_bytes()
    (tmp_path / "images/010/0108775044.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "images/010/0108775051.jpg").write_bytes(b"not a jpeg")
    m = build_image_manifest(
        tmp_path, ["0108775015", "0108775044", "0108775051", "0108775099"], progress=False
    ).to_pylist()
    by = {r["article_id"]: r for r in m}
    assert by["0108775015"]["status"] == "ok" and (by["0108775015"]["width"], by["0108775015"]["height"]) == (
        128,
        192,
    )
    assert by["0108775044"]["status"] == "corrupt" and by["0108775044"]["error"]
    assert by["0108775051"]["status"] == "corrupt"
    assert by["0108775099"]["status"] == "missing" and by["0108775099"]["path"] == "images/010/0108775099.jpg"
