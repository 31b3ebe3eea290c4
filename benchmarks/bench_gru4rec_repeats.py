"""Benchmark: GRU4Rec with consecutive repeats collapsed (the default) or kept, on the same data.

    .venv/bin/python benchmarks/bench_gru4rec_repeats.py [--scale small] [--preset demo]

H&M writes one row per unit bought, so a session often holds the same article several times in a row.
``repeats=collapse`` trains and judges the paper's Table 2 on sessions with those runs merged;
``repeats=keep`` leaves them in (so "predict the same article again" becomes a frequent, easy event).
Both are also judged on the shared protocol, whose events are the same for both. Prints a markdown
block for benchmarks/RESULTS.md and the README.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hm_recs.profiles import GRU4REC_CHAIN  # noqa: E402  (after the path insert)

ASSETS = GRU4REC_CHAIN


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="small")
    ap.add_argument("--preset", default="demo")
    args = ap.parse_args()

    from hm_recs.demo import QUIET, resolve_data_dir

    data = resolve_data_dir(None, args.scale, 0)
    rows = []
    for repeats in ("collapse", "keep"):
        with tempfile.TemporaryDirectory() as state:
            os.environ.update({"HM_DATA_DIR": str(data), "HM_STATE_DIR": state})
            os.environ.pop("HM_LAKE_URI", None)
            import dagster as dg

            from hm_recs.definitions import defs as load_defs
            from hm_recs.defs.resources import configured_lake
            from hm_recs.demo import run_pipeline
            from hm_recs.evaluation.weeks import read_metrics

            models = {
                **QUIET,
                "ops": {"gru4rec_model": {"config": {"preset": args.preset, "repeats": repeats}}},
            }
            with dg.DagsterInstance.ephemeral() as instance:
                _, results = run_pipeline(
                    load_defs(),
                    instance,
                    configured_lake(),
                    log=lambda s: None,
                    models=models,
                    evaluate_assets=ASSETS,
                )
                assert all(r.success for r in results.values())
                ev = instance.get_latest_materialization_event(
                    dg.AssetKey("gru4rec_evaluation")
                ).asset_materialization
                table2 = ev.metadata["table2"].value
            m = read_metrics(configured_lake())
            m = m[m.model.str.startswith("gru4rec") & (m.split == "test")].set_index(["model", "metric"])[
                "value"
            ]
            rows.append((repeats, table2, {k: m.get(k) for k in m.index}))

    print(f"\n### GRU4Rec: consecutive repeats collapsed or kept ({dt.date.today().isoformat()})\n")
    print(
        f"Synthetic `{args.scale}` data, preset `{args.preset}`. Command: `.venv/bin/python "
        f"benchmarks/bench_gru4rec_repeats.py {' '.join(sys.argv[1:])}`\n"
    )
    for repeats, table2, _ in rows:
        print(f"Table 2 layout (authors' protocol, events built with repeats={repeats}):\n\n{table2}\n")
    print("Shared protocol, test week (the same events for both):\n")
    print("| repeats | model | Recall@20 | MRR@20 | MAP@12 |\n|---|---|---|---|---|")
    for repeats, _, shared in rows:
        for model in ("gru4rec_session", "gru4rec_warm"):
            print(
                f"| {repeats} | {model} | {shared[(model, 'Recall@20')]:.4f} | "
                f"{shared[(model, 'MRR@20')]:.4f} | {shared[(model, 'MAP@12')]:.4f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
