"""Ingest: Kaggle files -> raw Delta tables -> clean Delta tables, image manifest, model features."""

import dagster as dg
import pyarrow.compute as pc
from dagster import AssetExecutionContext

from hm_recs.data import ingest
from hm_recs.data.images import build_image_manifest
from hm_recs.data.preprocess import article_features as build_article_features
from hm_recs.data.preprocess import customer_features as build_customer_features
from hm_recs.data.schema import ARTICLES, CUSTOMERS, TRANSACTIONS, TableContract, find_table_file
from hm_recs.defs.metadata import checks, image_metadata, table_metadata
from hm_recs.defs.partitions import add_weeks
from hm_recs.defs.resources import HMDataResource, LakeResource
from hm_recs.plots import daily_counts
from hm_recs.reports import markdown_table
from hm_recs.tables import ARTICLE_FEATURES, CUSTOMER_FEATURES, IMAGE_MANIFEST

GROUP = "ingest"


class CleanConfig(dg.Config):
    max_reject_fraction: float = 0.01  # the check fails above this share of rejected rows
    # the check fails when the new content lacks more than this share of the previous version's rows
    # (a header-only or truncated file); allow_shrink accepts a deliberate shrink once
    max_row_drop: float = 0.5
    allow_shrink: bool = False

    def guards(self) -> dict:
        return {
            "max_reject_fraction": self.max_reject_fraction,
            "max_row_drop": None if self.allow_shrink else self.max_row_drop,
        }


class ImageManifestConfig(dg.Config):
    max_unusable_fraction: float = 0.05  # missing + corrupt images above this share warn
    workers: int = 4


class FeaturesConfig(dg.Config):
    imbalance_threshold: float = 0.9  # drop a categorical whose top value covers more rows than this


def _step_metadata(result: ingest.StepResult, lake) -> dict:
    meta = table_metadata(lake, result.table)
    meta.update(
        {
            "source": dg.MetadataValue.path(result.source),
            "rows_in": dg.MetadataValue.int(result.rows_in),
            "rows_out": dg.MetadataValue.int(result.rows_out),
            "rejected": dg.MetadataValue.int(result.rejected),
            "reject_fraction": dg.MetadataValue.float(result.reject_fraction),
            "rejects_table": dg.MetadataValue.path(lake.uri(ingest.REJECTS_TABLE)),
            "seconds": dg.MetadataValue.float(round(result.seconds, 2)),
        }
    )
    if result.kept_version is not None:
        meta["kept_version"] = dg.MetadataValue.text(
            f"{result.refused}: {result.table} put back to version {result.kept_version} (this file's rows "
            "are not used)"
        )
    if result.rejects:
        rows = "\n".join(f"| {reason} | {n} |" for reason, n in result.rejects.most_common())
        meta["rejects_by_reason"] = dg.MetadataValue.md("| reason | rows |\n|---|---|\n" + rows)
    return meta


def _raw_asset(contract: TableContract) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"raw_{contract.name}",
        group_name=GROUP,
        kinds={"deltalake"},
        description=f"`{contract.file_stem}` as written (every column as text, with file and line). "
        "Lines with the wrong number of fields go to the rejects table.",
    )
    def _raw(
        context: AssetExecutionContext, hm_data: HMDataResource, lake: LakeResource
    ) -> dg.MaterializeResult:
        path = find_table_file(hm_data.data_dir, contract)
        context.log.info(f"reading {path}")
        result = ingest.load_raw(hm_data.data_dir, contract, lake.open())
        meta = _step_metadata(result, lake.open())
        stat = path.stat()
        meta["source_bytes"] = dg.MetadataValue.int(stat.st_size)
        meta["source_mtime"] = dg.MetadataValue.timestamp(stat.st_mtime)
        return dg.MaterializeResult(metadata=meta)

    return _raw


raw_articles = _raw_asset(ARTICLES)
raw_customers = _raw_asset(CUSTOMERS)
raw_transactions = _raw_asset(TRANSACTIONS)


def _checks(result: ingest.StepResult, asset: str, config: CleanConfig) -> list[dg.AssetCheckResult]:
    """The reject-fraction and row-drop checks of one clean step (both blocking)."""
    limit = config.guards()["max_row_drop"]
    drop = dg.AssetCheckResult(
        asset_key=asset,
        check_name="row_count_did_not_drop",
        passed=limit is None or result.dropped_fraction <= limit,
        description=f"{result.rows_out:,} clean rows from {result.source}; "
        f"{result.previous_rows if result.previous_rows is not None else 'no'} "
        f"before ({result.dropped_fraction:.1%} fewer, limit {'off' if limit is None else f'{limit:.0%}'}; "
        "allow_shrink: true accepts a deliberate shrink)",
        metadata={
            "rows": result.rows_out,
            "previous_rows": result.previous_rows if result.previous_rows is not None else -1,
            "dropped_fraction": result.dropped_fraction,
        },
    )
    return [_reject_check(result, asset, config), drop]


def _reject_check(result: ingest.StepResult, asset: str, config: CleanConfig) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name="reject_fraction_below_threshold",
        passed=result.reject_fraction <= config.max_reject_fraction,
        description=f"{result.rejected:,} of {result.rows_in:,} rows of {result.source} rejected "
        f"({result.reject_fraction:.2%}, limit {config.max_reject_fraction:.2%}); reasons in the rejects "
        "table",
        metadata={
            "reject_fraction": result.reject_fraction,
            "threshold": config.max_reject_fraction,
            "rejected": result.rejected,
            "rows_in": result.rows_in,
        },
    )


def _reject_spec(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "reject_fraction_below_threshold",
            asset=asset,
            description="Rejected rows (parse + validation) are at most max_reject_fraction of the input; "
            "blocking: above it the clean table keeps its previous version and nothing downstream runs",
            blocking=True,
        ),
        dg.AssetCheckSpec(
            "row_count_did_not_drop",
            asset=asset,
            description="The new content keeps at least 1 - max_row_drop of the previous version's rows; "
            "blocking: "
            "a header-only or truncated file leaves the table as it was (allow_shrink overrides)",
            blocking=True,
        ),
    ]


@dg.asset(
    group_name=GROUP, kinds={"deltalake"}, deps=[raw_articles], check_specs=_reject_spec("clean_articles")
)
def clean_articles(config: CleanConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Articles typed and validated: 10-digit unique ids, product code matching, integer codes."""
    result = ingest.clean(ARTICLES, lake.open(), **config.guards())
    return dg.MaterializeResult(
        metadata=_step_metadata(result, lake.open()), check_results=_checks(result, "clean_articles", config)
    )


@dg.asset(
    group_name=GROUP, kinds={"deltalake"}, deps=[raw_customers], check_specs=_reject_spec("clean_customers")
)
def clean_customers(config: CleanConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Customers typed and validated: 64-hex unique ids, known statuses, ages in [0, 120]."""
    result = ingest.clean(CUSTOMERS, lake.open(), **config.guards())
    return dg.MaterializeResult(
        metadata=_step_metadata(result, lake.open()), check_results=_checks(result, "clean_customers", config)
    )


@dg.asset(
    group_name=GROUP,
    kinds={"deltalake"},
    deps=[raw_transactions, clean_articles, clean_customers],
    check_specs=_reject_spec("clean_transactions"),
)
def clean_transactions(
    context: AssetExecutionContext, config: CleanConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Transactions typed and validated, with the source line (a stable order within a day); rows
    whose article or customer is unknown are rejected. The weeks of the data become partitions of
    ``sessions`` (``hm_recs.defs.partitions``)."""
    lk = lake.open()
    result = ingest.clean(
        TRANSACTIONS,
        lk,
        known_articles=ingest.key_values(lk, ARTICLES),
        known_customers=ingest.key_values(lk, CUSTOMERS),
        **config.guards(),
    )
    meta = _step_metadata(result, lk)
    dates = lk.read(ingest.clean_table_name(TRANSACTIONS), columns=["t_dat"]).column(0)
    if len(dates):
        lo, hi = pc.min_max(dates).values()
        meta["first_day"] = dg.MetadataValue.text(str(lo.as_py()))
        meta["last_day"] = dg.MetadataValue.text(str(hi.as_py()))
        added = add_weeks(context.instance, lo.as_py(), hi.as_py())
        meta["weeks_added"] = dg.MetadataValue.text(", ".join(added) if added else "none")
        days, counts = _value_counts(dates)
        order = sorted(range(len(days)), key=days.__getitem__)
        png = daily_counts([days[i] for i in order], [counts[i] for i in order], "Clean transactions per day")
        meta.update(image_metadata(png, "daily_transactions", "Transactions per day"))
    return dg.MaterializeResult(metadata=meta, check_results=_checks(result, "clean_transactions", config))


@dg.asset(
    group_name=GROUP,
    kinds={"deltalake"},
    deps=[clean_articles],
    check_specs=checks(
        "image_manifest", usable_images="Missing + corrupt images at most max_unusable_fraction"
    ),
)
def image_manifest(
    config: ImageManifestConfig, hm_data: HMDataResource, lake: LakeResource
) -> dg.MaterializeResult:
    """Every article's photo path with status ok / missing / corrupt and its size; never fails on a bad
    image.
    """
    lk = lake.open()
    ids = lk.read(ingest.clean_table_name(ARTICLES), columns=["article_id"]).column(0).to_pylist()
    manifest = build_image_manifest(hm_data.data_dir, ids, workers=config.workers)
    lk.write(IMAGE_MANIFEST, manifest)
    counts = {s: int(n) for s, n in zip(*_value_counts(manifest.column("status")), strict=True)}
    unusable = (counts.get("missing", 0) + counts.get("corrupt", 0)) / max(len(ids), 1)
    meta = table_metadata(lk, IMAGE_MANIFEST)
    meta.update({f"images_{s}": dg.MetadataValue.int(n) for s, n in counts.items()})
    bad = manifest.filter(pc.not_equal(manifest.column("status"), "ok")).slice(0, 10)
    if bad.num_rows:
        meta["unusable_examples"] = dg.MetadataValue.md(
            markdown_table(bad.select(["article_id", "path", "status", "error"]))
        )
    check = dg.AssetCheckResult(
        check_name="usable_images",
        passed=unusable <= config.max_unusable_fraction,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"unusable_fraction": unusable, "threshold": config.max_unusable_fraction, **counts},
    )
    return dg.MaterializeResult(metadata=meta, check_results=[check])


def _value_counts(col):
    vc = pc.value_counts(col)
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()


@dg.asset(group_name=GROUP, kinds={"deltalake"}, deps=[clean_articles])
def article_features(config: FeaturesConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Articles for the models (paper section 5.2): null policy, imbalanced columns dropped,
    ordinal codes, ``article_idx``, and the rendered text description each language model reads."""
    lk = lake.open()
    table, report = build_article_features(
        lk.read(ingest.clean_table_name(ARTICLES)), config.imbalance_threshold
    )
    lk.write(ARTICLE_FEATURES, table)
    meta = table_metadata(lk, ARTICLE_FEATURES, preview_columns=["article_idx", "article_id", "text"])
    meta["preprocessing"] = dg.MetadataValue.md(report.as_markdown())
    meta["dropped_columns"] = dg.MetadataValue.json(report.dropped)
    return dg.MaterializeResult(metadata=meta)


@dg.asset(group_name=GROUP, kinds={"deltalake"}, deps=[clean_customers])
def customer_features(config: FeaturesConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Customers for the models: null policy (FN/Active empty = 0, age median + flag), imbalanced
    columns dropped (e.g. club_member_status, 93 % ACTIVE), ordinal postal codes, ``customer_idx``."""
    lk = lake.open()
    table, report = build_customer_features(
        lk.read(ingest.clean_table_name(CUSTOMERS)), config.imbalance_threshold
    )
    lk.write(CUSTOMER_FEATURES, table)
    meta = table_metadata(lk, CUSTOMER_FEATURES)
    meta["preprocessing"] = dg.MetadataValue.md(report.as_markdown())
    meta["dropped_columns"] = dg.MetadataValue.json(report.dropped)
    return dg.MaterializeResult(metadata=meta)
