"""The data contract: malformed rows land in the rejects with file, line and reason; good rows all arrive."""

from __future__ import annotations

import gzip
import shutil

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from hm_recs.data import ingest
from hm_recs.data.delta import Lake
from hm_recs.data.reader import ContractError
from hm_recs.data.schema import ARTICLES, CUSTOMERS, TRANSACTIONS, find_table_file

HEADER_A = ",".join(ARTICLES.column_names)
GOOD_ARTICLE = (
    "0108775015,0108775,Strap top,253,Vest top,Garment Upper body,1010016,Solid,9,Black,4,Dark,5,Black,"
    "1676,Jersey Basic,A,Ladieswear,1,Ladieswear,16,Womens Everyday Basics,1002,Jersey Basic,"
    "Jersey top with narrow shoulder straps."
)
C1 = "a" * 64
C2 = "b" * 64


def article(article_id: str, product_code: str | None = None, type_no: str = "253") -> str:
    fields = GOOD_ARTICLE.split(",")
    fields[0] = article_id
    fields[1] = product_code if product_code is not None else article_id[:7]
    fields[3] = type_no
    return ",".join(fields)


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def messy_dir(tmp_path):
    d = tmp_path / "kaggle"
    d.mkdir()
    write(
        d / "articles.csv",
        [
            HEADER_A,
            article("0108775015"),  # 2 ok
            article("0108775044"),  # 3 ok
            article("108775051"),  # 4 malformed id (9 digits)
            article("0108775015"),  # 5 duplicate of line 2
            article("0200000001", product_code="0300000"),  # 6 product code does not match
            article("0200000002", type_no="x"),  # 7 non-integer code
            "0200000003,0200000,too,few",  # 8 wrong column count
            '0200000004,0200000,"Name, with comma",253,Vest top,Garment '
            "Upper body,1010016,Solid,9,Black,4,Dark,5,Black,1676,Jersey "
            "Basic,A,Ladieswear,1,Ladieswear,16,Womens Everyday "
            "Basics,1002,Jersey Basic,",  # 9 ok, quoted comma, empty desc
        ],
    )
    write(
        d / "customers.csv",
        [
            ",".join(CUSTOMERS.column_names),
            f"{C1},,,ACTIVE,NONE,21.0,{'p' * 64}",  # 2 ok
            f"{C2},1.0,1.0,PRE-CREATE,Regularly,,{'q' * 64}",  # 3 ok (age empty)
            f"{'z' * 64},,,ACTIVE,NONE,30.0,x",  # 4 malformed id (not hex)
            f"{'c' * 64},,,ACTIVE,Weekly,30.0,x",  # 5 unknown news frequency
            f"{'d' * 64},,,ACTIVE,NONE,250,x",  # 6 age out of range
            f"{C1},,,ACTIVE,NONE,22.0,x",  # 7 duplicate
        ],
    )
    write(
        d / "transactions_train.csv",
        [
            ",".join(TRANSACTIONS.column_names),
            f"2020-09-01,{C1},0108775015,0.0508,2",  # 2 ok
            f"2020-09-01,{C1},0108775015,0.0508,2",  # 3 ok (second unit)
            f"2020-09-02,{C2},0108775044,0.0169,1",  # 4 ok
            f"2020-13-01,{C1},0108775015,0.01,2",  # 5 unparseable date
            f"2020-02-30,{C1},0108775015,0.01,2",  # 6 not a calendar date
            f"2020-09-03,{C1},0108775015,NaN,2",  # 7 NaN price
            f"2020-09-03,{C1},0108775015,-0.01,2",  # 8 negative price
            f"2020-09-03,{C1},0108775015,0.01,3",  # 9 unknown channel
            f"2020-09-03,{C1},0999999001,0.01,2",  # 10 unknown article
            f"2020-09-03,{'e' * 64},0108775015,0.01,2",  # 11 unknown customer
            f"2020-09-03,{C1},0108775015,0.01",  # 12 wrong column count
            f"2020-09-04,{C2},0200000004,0.02,1",  # 13 ok
        ],
    )
    return d


def run_all(data_dir, lake):
    for c in (ARTICLES, CUSTOMERS, TRANSACTIONS):
        ingest.load_raw(data_dir, c, lake)
    a = ingest.clean(ARTICLES, lake)
    c = ingest.clean(CUSTOMERS, lake)
    t = ingest.clean(
        TRANSACTIONS, lake, ingest.key_values(lake, ARTICLES), ingest.key_values(lake, CUSTOMERS)
    )
    return a, c, t


def rejects_by_line(lake, table):
    rows = lake.read(ingest.REJECTS_TABLE).to_pylist()
    return {r["line"]: r for r in rows if r["table"] == table}


def test_every_bad_row_is_rejected_with_its_reason_and_good_rows_arrive(messy_dir, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    a, c, t = run_all(messy_dir, lake)

    assert sorted(lake.read("clean/articles").column("article_id").to_pylist()) == [
        "0108775015",
        "0108775044",
        "0200000004",
    ]
    art = rejects_by_line(lake, "articles")
    assert set(art) == {4, 5, 6, 7, 8}
    assert "article_id: expected 10 digits" in art[4]["reason"]
    assert "duplicate '0108775015' (first at line 2)" in art[5]["reason"]
    assert "is not the first 7 digits" in art[6]["reason"]
    assert "product_type_no: expected an integer" in art[7]["reason"]
    assert art[8]["reason"] == "wrong column count: expected 25, found 4" and art[8]["stage"] == "parse"
    assert all(r["source_file"].endswith("articles.csv") for r in art.values())
    assert (a.rows_in, a.rows_out, a.rejected) == (8, 3, 5)

    cus = rejects_by_line(lake, "customers")
    assert set(cus) == {4, 5, 6, 7}
    assert "customer_id: expected 64 lowercase hex" in cus[4]["reason"]
    assert "fashion_news_frequency" in cus[5]["fields"]
    assert "age: expected a number in [0, 120]" in cus[6]["reason"]
    assert "duplicate" in cus[7]["reason"]
    assert c.rows_out == 2

    tr = rejects_by_line(lake, "transactions")
    assert set(tr) == {5, 6, 7, 8, 9, 10, 11, 12}
    assert "t_dat" in tr[5]["fields"] and "t_dat" in tr[6]["fields"]
    assert "price: expected a number" in tr[7]["reason"] and "price" in tr[8]["fields"]
    assert "sales_channel_id: expected one of ['1', '2']" in tr[9]["reason"]
    assert "is not in articles" in tr[10]["reason"]
    assert "is not in customers" in tr[11]["reason"]
    assert "wrong column count: expected 5, found 4" == tr[12]["reason"]
    assert tr[7]["record"].startswith("2020-09-03,")

    clean = lake.read("clean/transactions").sort_by("line")
    assert clean.column("line").to_pylist() == [2, 3, 4, 13]
    assert clean.schema.field("t_dat").type == pa.date32()
    assert clean.schema.field("sales_channel_id").type == pa.int8()
    assert (t.rows_in, t.rows_out, t.rejected) == (12, 4, 8)
    assert t.rows_in == t.rows_out + t.rejected  # nothing lost
    assert t.rejects["wrong column count"] == 1


def test_rerunning_replaces_rejects_instead_of_duplicating(messy_dir, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    run_all(messy_dir, lake)
    first = lake.count(ingest.REJECTS_TABLE)
    run_all(messy_dir, lake)
    assert lake.count(ingest.REJECTS_TABLE) == first == 17
    assert lake.count("clean/transactions") == 4


def test_a_file_over_the_reject_limit_leaves_the_clean_table_as_it_was(messy_dir, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    good = messy_dir / "transactions_train.csv"
    lines = good.read_text().splitlines()
    write(good, [lines[0], lines[1], lines[2], lines[3], lines[12]])  # the four good rows only
    for c in (ARTICLES, CUSTOMERS, TRANSACTIONS):
        ingest.load_raw(messy_dir, c, lake)
    ingest.clean(ARTICLES, lake)
    ingest.clean(CUSTOMERS, lake)
    known = (ingest.key_values(lake, ARTICLES), ingest.key_values(lake, CUSTOMERS))
    first = ingest.clean(TRANSACTIONS, lake, *known, max_reject_fraction=0.01)
    assert first.kept_version is None and lake.count("clean/transactions") == 4
    # the next file: one more good row and the eight bad ones (8 of 13 rejected)
    write(good, lines + [f"2020-09-05,{C2},0108775044,0.02,1"])
    ingest.load_raw(messy_dir, TRANSACTIONS, lake)
    second = ingest.clean(TRANSACTIONS, lake, *known, max_reject_fraction=0.01)
    assert second.reject_fraction > 0.5 and second.kept_version == first.version
    assert lake.count("clean/transactions") == 4  # the previous content, not the new file's 5 good rows
    assert len(rejects_by_line(lake, "transactions")) == 8  # and the reasons are kept
    # within the limit the new content lands
    third = ingest.clean(TRANSACTIONS, lake, *known, max_reject_fraction=0.9)
    assert third.kept_version is None and lake.count("clean/transactions") == 5


def test_a_header_only_file_does_not_empty_the_clean_table_unless_allowed(messy_dir, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    run_all(messy_dir, lake)
    assert lake.count("clean/transactions") == 4
    path = messy_dir / "transactions_train.csv"
    write(path, [path.read_text().splitlines()[0]])
    ingest.load_raw(messy_dir, TRANSACTIONS, lake)
    known = (ingest.key_values(lake, ARTICLES), ingest.key_values(lake, CUSTOMERS))
    refused = ingest.clean(TRANSACTIONS, lake, *known, max_reject_fraction=0.01, max_row_drop=0.5)
    assert refused.rows_out == 0 and refused.dropped_fraction == 1.0 and refused.kept_version is not None
    assert "4 before" in refused.refused and lake.count("clean/transactions") == 4
    allowed = ingest.clean(
        TRANSACTIONS, lake, *known, max_reject_fraction=0.01, max_row_drop=None
    )  # allow_shrink
    assert allowed.kept_version is None and lake.count("clean/transactions") == 0


def test_gzipped_and_parquet_inputs_read_the_same(messy_dir, tmp_path):
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    for name in ("articles", "customers", "transactions_train"):
        with open(messy_dir / f"{name}.csv", "rb") as src, gzip.open(gz_dir / f"{name}.csv.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    lake = Lake(str(tmp_path / "lake_gz"))
    a, c, t = run_all(gz_dir, lake)
    assert (a.rows_out, c.rows_out, t.rows_out) == (3, 2, 4)
    assert set(rejects_by_line(lake, "transactions")) == {5, 6, 7, 8, 9, 10, 11, 12}

    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    # a Parquet copy as often shared: integer article ids without the leading zero
    (tmp_path / "good.csv").write_text(
        "\n".join([HEADER_A, article("0108775015"), article("0108775044")]) + "\n"
    )
    good = pcsv.read_csv(tmp_path / "good.csv")  # type inference makes the ids integers
    assert good.schema.field("article_id").type == pa.int64()
    pq.write_table(good, pq_dir / "articles.parquet")
    shutil.copy(messy_dir / "customers.csv", pq_dir / "customers.csv")
    shutil.copy(messy_dir / "transactions_train.csv", pq_dir / "transactions_train.csv")
    lake = Lake(str(tmp_path / "lake_pq"))
    a, _, t = run_all(pq_dir, lake)
    ids = lake.read("clean/articles").column("article_id").to_pylist()
    assert sorted(ids) == ["0108775015", "0108775044"]
    assert t.rows_out == 3  # the transaction of article 0200000004, not in this catalogue, is rejected
    assert "is not in articles" in rejects_by_line(lake, "transactions")[13]["reason"]


def test_header_mismatch_and_missing_files_name_the_file(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    write(
        d / "transactions_train.csv",
        ["t_dat,customer,article_id,price,sales_channel_id", "2020-01-01,x,y,1,1"],
    )
    with pytest.raises(
        ContractError, match=r"transactions_train.csv: header does not match.*missing \['customer_id'\]"
    ):
        ingest.load_raw(d, TRANSACTIONS, Lake(str(tmp_path / "lake")))
    with pytest.raises(FileNotFoundError, match="no articles file"):
        find_table_file(d, ARTICLES)
    write(d / "articles.csv", [HEADER_A])
    (d / "articles.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="several files for articles"):
        find_table_file(d, ARTICLES)


def test_line_numbers_survive_many_blocks(tmp_path):
    """Bad lines spread over many parser blocks keep their exact line numbers."""
    from hm_recs.data.reader import read_raw_batches

    lines = [",".join(TRANSACTIONS.column_names)]
    bad = set()
    for i in range(2, 3002):
        if i % 97 == 0:
            lines.append("2020-01-01,short")
            bad.add(i)
        else:
            lines.append(f"2020-01-01,{C1},0108775015,{i},1")
    write(tmp_path / "transactions_train.csv", lines)
    good_lines, reject_lines = [], []
    for batch, rejects in read_raw_batches(
        tmp_path / "transactions_train.csv", TRANSACTIONS, block_size=4096
    ):
        good_lines += batch.column("line").to_pylist()
        reject_lines += [r.line for r in rejects]
        assert [int(p) for p in batch.column("price").to_pylist()] == batch.column("line").to_pylist()
    assert set(reject_lines) == bad
    assert sorted(good_lines + reject_lines) == list(range(2, 3002))


def test_maintenance_finds_every_table_and_vacuums_what_no_version_needs(tmp_path):
    import dagster as dg
    import pyarrow as pa

    from hm_recs.defs.maintenance import lake_maintenance
    from hm_recs.defs.resources import LakeResource

    lake = Lake(str(tmp_path / "lake"))
    for i in range(3):
        lake.write("clean/things", pa.table({"x": [i, i + 1]}))
    lake.write("ops/other", pa.table({"y": [1]}))
    assert lake.tables() == ["clean/things", "ops/other"]
    parquet = lambda: sorted((tmp_path / "lake" / "clean" / "things").glob("*.parquet"))  # noqa: E731
    assert len(parquet()) == 3
    result = lake_maintenance.execute_in_process(
        run_config={"ops": {"maintain_lake": {"config": {"retention_days": 0}}}},
        resources={"lake": LakeResource(root=str(tmp_path / "lake"))},
    )
    assert result.success
    assert len(parquet()) == 1 and lake.read("clean/things").column("x").to_pylist() == [2, 3]
    from hm_recs.definitions import defs

    schedule = defs().resolve_schedule_def("lake_maintenance")
    assert (
        schedule.job_name == "lake_maintenance"
        and schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    )


def test_an_undecodable_byte_rejects_its_row_not_the_file(messy_dir, tmp_path):
    path = messy_dir / "transactions_train.csv"
    good = path.read_bytes()
    path.write_bytes(
        good
        + f"2020-09-05,{C2},0108775044,0.02,1\n".encode()
        + b"2020-09-05,"
        + C1.encode()
        + b",01087\xff5015,0.01,2\n"
    )
    lake = Lake(str(tmp_path / "lake"))
    _, _, t = run_all(messy_dir, lake)
    assert lake.count("clean/transactions") == 5  # the four good rows and the new good one
    bad = rejects_by_line(lake, "transactions")[15]
    assert (
        bad["stage"] == "parse"
        and bad["reason"] == "article_id: not valid UTF-8"
        and "\ufffd" in bad["record"]
    )
    assert t.rejects["article_id"] == 1 and t.rows_in == 14


def test_reject_lines_are_physical_lines_after_quoted_line_breaks(tmp_path):
    """An editor's line numbers: a description spanning three lines moves every later record down two."""
    d = tmp_path / "kaggle"
    d.mkdir()
    multi = article("0200000005").rsplit(",", 1)[0] + ',"Line one\nline two\nline three"'
    bad_multi = '0200000006,0200000,"short\nrecord",253'
    write(
        d / "articles.csv",
        [
            HEADER_A,
            article("0108775015"),  # line 2
            multi,  # lines 3-5
            article("108775051"),  # line 6: malformed id
            bad_multi,  # lines 7-8: wrong column count, itself spanning two lines
            "0200000003,0200000,too,few",  # line 9: wrong column count
            article("0108775044"),  # line 10
        ],
    )
    lake = Lake(str(tmp_path / "lake"))
    ingest.load_raw(d, ARTICLES, lake)
    ingest.clean(ARTICLES, lake)
    rejects = rejects_by_line(lake, "articles")
    assert set(rejects) == {6, 7, 9}
    assert "article_id" in rejects[6]["reason"] and rejects[9]["reason"].startswith("wrong column count")
    raw = lake.read("raw/articles").sort_by("line")
    assert dict(zip(raw.column("article_id").to_pylist(), raw.column("line").to_pylist(), strict=True)) == {
        "0108775015": 2,
        "0200000005": 3,
        "108775051": 6,
        "0108775044": 10,
    }
    assert raw.column("detail_desc").to_pylist()[1] == "Line one\nline two\nline three"


def test_two_writers_of_one_table_both_commit_the_later_one_wins(tmp_path):
    """Two ingests at once: the commit that lost the race is written again instead of failing."""
    import threading
    import time

    from deltalake.exceptions import CommitFailedError

    lake = Lake(str(tmp_path / "lake"))
    schema = pa.schema([("x", pa.int64())])
    lake.write("t", pa.table({"x": [1, 2, 3]}))

    def slow_source():  # reads before the other writer commits, commits after it
        def gen():
            for i in range(3):
                time.sleep(0.3)
                yield pa.record_batch({"x": [10 + i]}, schema=schema)

        return gen()

    result = {}
    writer = threading.Thread(
        target=lambda: result.setdefault("slow", lake.write("t", slow_source, schema=schema))
    )
    writer.start()
    time.sleep(0.2)
    fast = lake.write("t", pa.table({"x": [7]}))
    writer.join()
    assert result["slow"] > fast
    assert sorted(lake.read("t").column("x").to_pylist()) == [10, 11, 12]

    # a stream that was already read cannot be written again: the race is reported, not hidden
    writer = threading.Thread(
        target=lambda: result.__setitem__(
            "stream", _try(lambda: lake.write("t", slow_source(), schema=schema))
        )
    )
    writer.start()
    time.sleep(0.2)
    lake.write("t", pa.table({"x": [8]}))
    writer.join()
    assert isinstance(result["stream"], CommitFailedError)
    assert lake.read("t").column("x").to_pylist() == [8]


def _try(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


def test_concurrent_ingests_of_one_file_both_succeed(messy_dir, tmp_path):
    import threading

    lake = Lake(str(tmp_path / "lake"))
    ingest.load_raw(messy_dir, ARTICLES, lake)
    results, errors = [], []

    def run():
        try:
            results.append(ingest.load_raw(messy_dir, TRANSACTIONS, lake))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r.rows_out for r in results] == [11, 11, 11]
    assert lake.count("raw/transactions") == 11
