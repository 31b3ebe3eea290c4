"""``hm-recs``: the command line of the hm_recs platform."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hm_recs.paths import default_synthetic_dir, shared_dir

# `hm-recs validate` exit codes: 0 clean, 1 too many rejects, 2 bad arguments or a missing file,
# 3 a file that cannot be read (corrupt, truncated, wrong header), 4 a table that would be empty
EXIT_UNREADABLE, EXIT_EMPTY = 3, 4
SCALE_NAMES = ("tiny", "small", "medium", "full")  # hm_recs.synth.generator.SCALES (a test keeps them equal)


def _cmd_synth(args: argparse.Namespace) -> int:
    from hm_recs.synth.generator import SCALES, generate

    if args.scale not in SCALES:
        print(f"unknown scale {args.scale!r}: one of {', '.join(SCALES)}", file=sys.stderr)
        return 2
    report = generate(
        args.out, args.scale, seed=args.seed, images=args.images, workers=args.workers, log=print
    )
    print(
        f"wrote {report.articles:,} articles, {report.customers:,} customers, {report.transactions:,} "
        "transactions "
        f"({report.start} .. {report.end}) and {report.images:,} images to {report.out}"
    )
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from hm_recs.synth.calibration import CALIBRATION_PATH, build_calibration, write_calibration

    cal = build_calibration(args.stats, args.articles)
    path = write_calibration(cal, Path(args.out) if args.out else CALIBRATION_PATH)
    print(f"wrote {path}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    """Run the data contract on a Kaggle-layout folder into a scratch lake and print the rejects."""
    import tempfile

    from hm_recs.data import ingest
    from hm_recs.data.delta import Lake
    from hm_recs.data.schema import ARTICLES, CUSTOMERS, TRANSACTIONS

    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(tmp)
        results = []
        for contract in (ARTICLES, CUSTOMERS, TRANSACTIONS):
            ingest.load_raw(args.data_dir, contract, lake)
        results.append(ingest.clean(ARTICLES, lake))
        results.append(ingest.clean(CUSTOMERS, lake))
        results.append(
            ingest.clean(
                TRANSACTIONS, lake, ingest.key_values(lake, ARTICLES), ingest.key_values(lake, CUSTOMERS)
            )
        )
        for r in results:
            print(
                f"{r.table:22s} in {r.rows_in:>12,}  clean {r.rows_out:>12,}  rejected {r.rejected:>8,} "
                f"({r.reject_fraction:.4%})"
            )
            for reason, n in r.rejects.most_common(args.top):
                print(f"    {n:>10,}  {reason}")
        if args.show:
            rejects = lake.read(ingest.REJECTS_TABLE).to_pylist()[: args.show]
            for row in rejects:
                print(f"{row['source_file']}:{row['line']}: {row['reason']}")
        worst = max(r.reject_fraction for r in results)
        empty = [r.table for r in results if r.rows_out == 0]
    for table in empty:
        print(
            f"WARNING: {table} would have no rows: ingesting this folder would empty it "
            "(the pipeline refuses that unless allow_shrink is set)",
            file=sys.stderr,
        )
    if worst > args.max_reject_fraction:
        return 1
    return EXIT_EMPTY if empty else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from hm_recs.demo import run_demo

    return run_demo(scale=args.scale, seed=args.seed, data_dir=args.data_dir, profile=args.profile)


def _cmd_recommend(args: argparse.Namespace) -> int:
    import re

    from hm_recs.data.schema import CUSTOMER_ID_PATTERN
    from hm_recs.defs.resources import configured_lake
    from hm_recs.registry.serving import recommendations_for

    if not 1 <= args.k <= 12:
        print("hm-recs recommend: --k must be between 1 and 12 (the stored list holds 12)", file=sys.stderr)
        return 2
    if not re.fullmatch(CUSTOMER_ID_PATTERN, args.customer_id):  # the REST endpoint's 400
        print(
            "hm-recs recommend: customer_id must be 64 lowercase hex characters as in customers.csv, got "
            f"{args.customer_id[:80]!r}",
            file=sys.stderr,
        )
        return 2
    table = recommendations_for(configured_lake(), args.customer_id, args.k)
    a = table.attrs
    print(
        f"customer {args.customer_id}: week from {a['week_start']}, model {a['model']} (registry version "
        f"{a['version']}), "
        f"source: {a['source']}" + (" (popularity)" if a["source"] != "model" else "")
    )
    for r in table.itertuples(index=False):
        print(f"{r.rank:>3}  {r.article_id}  {r.prod_name}  ({r.product_type_name}, {r.colour_group_name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hm-recs",
        description=(
            "hm_recs: multimodal fashion recommendation on the H&M data (Dagster + Spark + Delta Lake)."
        ),
        epilog="The Dagster UI: `make ui`. Data: set HM_DATA_DIR to a Kaggle-layout folder.",
    )
    from hm_recs import __version__

    parser.add_argument("--version", action="version", version=f"hm-recs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("synth", help="generate a synthetic H&M dataset in the Kaggle layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--scale", default="small", choices=SCALE_NAMES, help="tiny | small | medium | full (default: small)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed (default: 0); the same seed gives the same files"
    )
    p.add_argument(
        "--images", choices=["all", "none"], default="all", help="draw product photos (default: all)"
    )
    p.add_argument("--workers", type=int, default=2, help="processes drawing images (default: 2)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("calibrate", help="rebuild the generator's calibration from the real aggregates")
    p.add_argument(
        "--stats", default=str(shared_dir() / "hm_reference_stats"), help="folder of hm_reference_stats CSVs"
    )
    p.add_argument(
        "--articles",
        default=str(shared_dir() / "hm_articles_full" / "articles.csv"),
        help="a real articles.csv",
    )
    p.add_argument("--out", default=None, help="where to write (default: the packaged calibration.json)")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser(
        "validate",
        help="check a Kaggle-layout folder against the data contract and list rejects",
        epilog="exit codes: 0 clean; 1 a table's reject fraction above --max-reject-fraction; 2 bad "
        "arguments or "
        "a missing file; 3 a file that cannot be read (corrupt, truncated, wrong header); 4 a table with no "
        "clean rows (ingesting it would empty the lake's table)",
    )
    p.add_argument(
        "data_dir", help="folder with articles, customers, transactions_train (.csv, .csv.gz or .parquet)"
    )
    p.add_argument("--top", type=int, default=10, help="reasons to list per table (default: 10)")
    p.add_argument("--show", type=int, default=0, help="print the first N reject rows with file and line")
    p.add_argument(
        "--max-reject-fraction", type=float, default=0.01, help="exit 1 above this share (default: 0.01)"
    )
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "demo", help="materialize the pipeline on a generated sample (or HM_DATA_DIR) and print the metrics"
    )
    p.add_argument(
        "--scale",
        default="small",
        choices=SCALE_NAMES,
        help="synthetic scale when HM_DATA_DIR is not set (default: small)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"Kaggle-layout folder (default: $HM_DATA_DIR or {default_synthetic_dir()})",
    )
    p.add_argument(
        "--profile",
        default=None,
        choices=["paper", "cpu", "demo", "smoke"],
        help="the evaluate job's run profile (default: HM_PROFILE when set, else demo)",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "recommend",
        help="print a customer's recommendations for the week after the data, with article names",
        description="A customer the last recommendations run did not know gets the served model's fallback, "
        "as from the REST endpoint (the first line says which: source: model / fallback: ...); "
        "exit 2 for a malformed id or --k.",
    )
    p.add_argument("customer_id", help="a customer_id of customers.csv (64 hex characters)")
    p.add_argument("--k", type=int, default=12, help="how many (1..12, default: 12)")
    p.set_defaults(func=_cmd_recommend)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `hm-recs` alone: the help, not an error
        parser.print_help()
        return 0
    from hm_recs.data.reader import ContractError

    try:
        return args.func(args)
    except ContractError as exc:  # a file that cannot be read under the contract (corrupt, wrong header)
        print(f"hm-recs {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except (FileNotFoundError, ValueError) as exc:
        print(f"hm-recs {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
