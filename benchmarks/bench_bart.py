"""Benchmark: every BART variant trained from scratch on a CPU, judged beside POP and GRU4Rec.

    .venv/bin/python benchmarks/bench_bart.py [--scale small] [--profile cpu] [--variants ...]

Runs the Dagster assets up to ``bart_evaluation`` on the synthetic sample (the demo's data for
``--scale small --seed 0``) in ``benchmarks/out/bart-<scale>`` with the run profile's settings
(``hm_recs/profiles.py``), then prints one markdown report for benchmarks/RESULTS.md: every model's
row on the test week (every event and MAP@12 customer), training minutes per variant, the paired
bootstrap differences against ``pop_time_decay`` and ``gru4rec_warm`` and between image variants and
their text-only twins, the cold-start events, BERTScore and the grounding choice.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hm_recs.profiles import GRU4REC_CHAIN  # noqa: E402  (after the path insert)

# everything the BART models read, trained first
UPSTREAM = [
    *GRU4REC_CHAIN,
    "vqgan_base_model",
    "vqgan_finetuned_model",
    "vqgan_evaluation",
    "image_tokens",
    "item_index",
    "semantic_ids",
    "bart_tokenizer",
    "bart_training_sequences",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="small", help="synthetic scale (default: small, the demo's data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="cpu", help="run profile of hm_recs/profiles.py (default: cpu)")
    ap.add_argument("--variants", nargs="*", default=None, help="BART variants (default: every one)")
    ap.add_argument("--keep", action="store_true", help="reuse the state folder (default: start clean)")
    ap.add_argument("--out", default=None, help="report file (default: benchmarks/out/bart-<scale>.md)")
    args = ap.parse_args()

    state = ROOT / "benchmarks" / "out" / f"bart-{args.scale}"
    if state.exists() and not args.keep:
        shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    os.environ["HM_STATE_DIR"] = str(state)
    os.environ["HM_PROFILE"] = args.profile  # the evaluate job holds the profile's BART variants
    for var in ("HM_LAKE_URI", "HM_LANCEDB_URI", "HM_MLFLOW_TRACKING_URI", "HM_MLFLOW_ARTIFACTS"):
        os.environ.pop(var, None)

    from hm_recs.demo import resolve_data_dir
    from hm_recs.models.bart import VARIANTS
    from hm_recs.profiles import run_config

    data = resolve_data_dir(os.environ.get("HM_DATA_DIR"), args.scale, args.seed)
    os.environ["HM_DATA_DIR"] = str(data)
    variants = args.variants or list(VARIANTS)
    config = run_config(args.profile, bart_variants=variants)

    import dagster as dg

    from hm_recs.definitions import defs as load_defs
    from hm_recs.defs.resources import configured_lake
    from hm_recs.demo import run_pipeline

    assets = UPSTREAM + [f"bart_model_{v}" for v in variants] + ["bart_evaluation"]
    t0 = time.perf_counter()
    with dg.DagsterInstance.ephemeral() as instance:
        timings, results = run_pipeline(
            load_defs(), instance, configured_lake(), models=config, evaluate_assets=assets
        )
        if not all(r.success for r in results.values()):
            print("a run failed", file=sys.stderr)
            return 1
        checks = {
            f"{e.asset_key.to_user_string()}.{e.check_name}": e.passed
            for e in results["evaluate"].get_asset_check_evaluations()
        }
        training = {}
        for v in variants:
            meta = instance.get_latest_materialization_event(
                dg.AssetKey(f"bart_model_{v}")
            ).asset_materialization.metadata
            training[v] = {
                k: meta[k].value
                for k in meta
                if k.endswith(("_training_seconds", "_pairs", "_epochs", "_steps"))
            }
            training[v]["max_source_tokens"] = meta["max_source_tokens"].value
        steps = {}
        for s in instance.get_run_step_stats(results["evaluate"].run_id):
            steps[s.step_key] = round((s.end_time or 0) - (s.start_time or 0), 1)
        ev = instance.get_latest_materialization_event(
            dg.AssetKey("bart_evaluation")
        ).asset_materialization.metadata
        grounding = ev["grounding"].value
    report = render(
        configured_lake(),
        variants,
        training,
        steps,
        checks,
        grounding,
        args,
        time.perf_counter() - t0,
        timings,
    )
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "out" / f"bart-{args.scale}.md"
    out.write_text(report)
    print(report)
    return 0


def _fmt(v, lo=None, hi=None) -> str:
    if v is None or v != v:
        return ""
    return f"{v:.4f}" if lo is None or lo == hi else f"{v:.4f} [{lo:.4f}, {hi:.4f}]"


def render(lake, variants, training, steps, checks, grounding, args, seconds, timings) -> str:
    from hm_recs.evaluation.weeks import read_metrics
    from hm_recs.tables import BART_COLD_START_TABLE, BART_COMPARISONS_TABLE, BART_TEXT_TABLE

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"{dt.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, no GPU, "
        f"commit {commit}. "
        f"Command: `.venv/bin/python benchmarks/bench_bart.py --scale {args.scale} --profile {args.profile}`"
        f"{' --variants ' + ' '.join(args.variants) if args.variants else ''}; "
        f"whole run {seconds / 60:.1f} min.",
        "",
    ]
    metrics = read_metrics(lake)
    models = ["pop_time_decay", "pop_last_week", "gru4rec_warm"] + [f"bart_{v}" for v in variants]
    for week in ("test", "validation"):
        lines += [
            f"**{week} week** (every event and MAP@12 customer; 95 % bootstrap intervals over customers)",
            "",
            "| model | events | Recall@20 | MRR@20 | MAP@12 | Coverage@12 "
            "| training min (validation / test model) |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in models:
            g = metrics[(metrics.model == m) & (metrics.split == week)].set_index("metric")
            if g.empty:
                continue
            cells = [
                _fmt(*g.loc[k, ["value", "ci_low", "ci_high"]]) if k in g.index else ""
                for k in ("Recall@20", "MRR@20", "MAP@12", "Coverage@12")
            ]
            tr = training.get(m.removeprefix("bart_"), {})
            minutes = " / ".join(
                f"{tr[f'{t}_training_seconds'] / 60:.1f}"
                for t in ("validation", "test")
                if f"{t}_training_seconds" in tr
            )
            lines.append(f"| {m} | {int(g.loc['Recall@20', 'n'])} | " + " | ".join(cells) + f" | {minutes} |")
        lines.append("")
    lines += [
        "**Training** (per variant and model: pairs, epochs, steps, source budget)",
        "",
        "| variant | budget | pairs | epochs | steps | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        tr = training[v]
        for t in ("validation", "test"):
            if f"{t}_pairs" in tr:
                lines.append(
                    f"| {v} ({t}) | {tr['max_source_tokens']} | {tr[f'{t}_pairs']:,} | {tr[f'{t}_epochs']} "
                    f"| {tr[f'{t}_steps']} | "
                    f"{tr[f'{t}_training_seconds'] / 60:.1f} |"
                )
    comps = lake.read(BART_COMPARISONS_TABLE).to_pandas()
    lines += [
        "",
        "**Paired differences on the test week** (same events / customers; 95 % bootstrap interval)",
        "",
        "| model | versus | Recall@20 difference | MAP@12 difference |",
        "|---|---|---|---|",
    ]
    test = comps[comps.week == "test"]
    for (m, vs), g in test.groupby(["model", "versus"], sort=False):
        cell = {r.metric: f"{r.diff:+.4f} [{r.lo:+.4f}, {r.hi:+.4f}]" for r in g.itertuples()}
        lines.append(f"| {m} | {vs} | {cell.get('Recall@20', '')} | {cell.get('MAP@12', '')} |")
    cold = lake.read(BART_COLD_START_TABLE).to_pandas()
    cold = cold[cold.week == "test"]
    if len(cold):
        lines += [
            "",
            f"**Cold start, test week**: the {int(cold.events.iloc[0])} events "
            f"({cold.share_of_events.iloc[0]:.1%}) whose article was "
            "never bought before the week",
            "",
            "| model | Recall@20 | MRR@20 |",
            "|---|---|---|",
        ]
        for r in cold.to_dict("records"):
            lines.append(
                f"| {r['model']} | {_fmt(r['Recall@20'], r['Recall@20_lo'], r['Recall@20_hi'])} "
                f"| {_fmt(r['MRR@20'])} |"
            )
    text = lake.read(BART_TEXT_TABLE).to_pandas()
    keep = [
        c
        for c in (
            "variant",
            "week",
            "grounding",
            "bertscore_f1",
            "best_distinct",
            "free_exact_article_text",
            "free_median_distance",
            "free_no_close_article",
        )
        if c in text.columns
    ]
    lines += [
        "",
        "**Text** (BERTScore F1 of the best generation against the actual article's text, all-MiniLM-L6-v2 "
        "scorer; free greedy generation: share that is an article's text, median item-space distance to the "
        "nearest article, share farther than "
        "the close distance)",
        "",
        "| " + " | ".join(keep) + " |",
        "|" + "---|" * len(keep),
    ]
    for r in text[keep].to_dict("records"):
        lines.append(
            "| "
            + " | ".join(
                "" if v is None or v != v else (f"{v:.4f}" if isinstance(v, float) else str(v))
                for v in r.values()
            )
            + " |"
        )
    lines += [
        "",
        f"Grounding for the text variants: {json.dumps(grounding)}",
        "",
        "Checks: "
        + ", ".join(f"{k} {'passed' if v else 'FAILED'}" for k, v in sorted(checks.items()) if "bart" in k),
        "",
        "Step seconds: "
        + ", ".join(
            f"{k} {v}" for k, v in steps.items() if "bart" in k or k in ("item_index", "semantic_ids")
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
