"""``make demo`` / ``hm-recs demo``: the whole pipeline on a generated sample, in a persistent
local Dagster instance, so that the runs and materializations can be browsed in the UI afterwards."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from hm_recs.paths import PROJECT_ROOT, default_synthetic_dir, state_dir
from hm_recs.profiles import QUIET, narrowed, run_config, selected_assets
from hm_recs.settings import is_set, setting

# the evaluate job's settings: the demo profile (every stage in minutes on a laptop) and the least
# training that still exercises every asset and check (the tests' wiring runs); hm_recs/profiles.py
DEMO_MODELS = run_config("demo")
SMOKE_MODELS = run_config("smoke")
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def ensure_dagster_home() -> Path:
    """``$DAGSTER_HOME`` (``$HM_STATE_DIR/dagster`` by default) with an instance config: the
    project's dagster.yaml when it has none (an edited one is kept)."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(state_dir() / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    source = PROJECT_ROOT / "dagster.yaml"
    if source.exists() and not target.exists():
        shutil.copyfile(source, target)
    return home


def resolve_data_dir(data_dir: str | None, scale: str, seed: int) -> Path:
    """The folder to ingest: the argument, ``$HM_DATA_DIR``, or a generated synthetic sample."""
    chosen = data_dir or setting("HM_DATA_DIR")
    if chosen:
        return Path(chosen)
    from hm_recs.synth.generator import generate

    out = default_synthetic_dir(scale, seed)
    if not (out / "SYNTHETIC.json").exists():
        print(f"generating the synthetic '{scale}' H&M sample (seed {seed}) in {out}")
        generate(out, scale, seed=seed)
    return out


def run_pipeline(
    defs,
    instance,
    lake,
    log=print,
    models: dict | None = None,
    evaluate_assets: list[str] | None = None,
    data_dir: str | Path | None = None,
) -> tuple[dict[str, float], dict]:
    """Run the three jobs in order on ``instance``; returns seconds and the result per job.

    ``models`` is the evaluate job's run config (``DEMO_MODELS`` by default); ``evaluate_assets``
    narrows the evaluate job to those assets (None: all of them); ``data_dir``: the folder the
    ``hm_data`` resource reads, given in the runs' config (None: the resource's own).
    """
    models = DEMO_MODELS if models is None else models
    data = {} if data_dir is None else {"hm_data": {"config": {"data_dir": str(data_dir)}}}
    ingest_config = {**QUIET, "resources": data}
    models = {**models, "resources": {**models.get("resources", {}), **data}}
    import dagster as dg
    import pyarrow.compute as pc

    from hm_recs.data.ingest import clean_table_name
    from hm_recs.data.schema import TRANSACTIONS
    from hm_recs.defs.partitions import week_keys_covering

    timings, results = {}, {}
    t = time.perf_counter()
    log("1/3 ingest: raw and clean tables, image manifest, features")
    results["ingest"] = defs.resolve_job_def("ingest").execute_in_process(
        instance=instance, run_config=ingest_config
    )
    timings["ingest"] = time.perf_counter() - t

    dates = lake.read(clean_table_name(TRANSACTIONS), columns=["t_dat"]).column(0)
    lo, hi = (v.as_py() for v in pc.min_max(dates).values())
    first, last = week_keys_covering(lo, hi)
    t = time.perf_counter()
    log(f"2/3 sessionize: weeks {first} .. {last} in one Spark run")
    results["sessionize"] = defs.resolve_job_def("sessionize").execute_in_process(
        instance=instance, tags={RANGE_START: first, RANGE_END: last}, run_config=QUIET
    )
    timings["sessionize"] = time.perf_counter() - t

    t = time.perf_counter()
    log("3/3 evaluate: time split, baselines, GRU4Rec training, evaluation")
    if evaluate_assets is None:  # BART models of variants the run does not use stay out of it
        job = defs.resolve_job_def("evaluate")
        evaluate_assets = selected_assets(
            models, [k.to_user_string() for k in job.asset_layer.selected_asset_keys]
        )
    selection = [dg.AssetKey(a) for a in evaluate_assets] if evaluate_assets else None
    models = narrowed(models, evaluate_assets)
    results["evaluate"] = defs.resolve_job_def("evaluate").execute_in_process(
        instance=instance, run_config={**QUIET, **models}, asset_selection=selection
    )
    timings["evaluate"] = time.perf_counter() - t
    return timings, results


def run_demo(
    scale: str = "small", seed: int = 0, data_dir: str | None = None, profile: str | None = None
) -> int:
    """The three jobs on the sample with a run profile: ``profile``, else ``HM_PROFILE`` when set,
    else ``demo`` (``auto`` would pick the paper's settings on a GPU machine: hours, not minutes)."""
    start = time.perf_counter()
    home = ensure_dagster_home()
    data = resolve_data_dir(data_dir, scale, seed)

    from dagster import DagsterInstance

    from hm_recs.definitions import defs as load_defs
    from hm_recs.defs.resources import configured_lake
    from hm_recs.evaluation.weeks import read_metrics
    from hm_recs.settings import configured_profile

    profile = profile or (configured_profile() if is_set("HM_PROFILE") else "demo")
    os.environ["HM_PROFILE"] = profile  # the evaluate job holds the profile's BART variants
    defs = load_defs()
    lake = configured_lake()
    print(f"data: {data}\nlake: {lake.root}\nDagster instance: {home}\nrun profile: {profile}")
    with DagsterInstance.get() as instance:
        timings, _ = run_pipeline(defs, instance, lake, models=run_config(profile), data_dir=data)
    metrics = read_metrics(lake)
    print("\nMetrics on the shared protocol (95 % bootstrap intervals):\n")
    print(format_metrics(metrics))
    print(
        "\n"
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"; total {time.perf_counter() - start:.0f} s"
    )
    print(champion_summary(lake))
    print(
        "\nOpen the Dagster UI to browse the runs and materializations:  make ui         ->  http://127.0.0.1:3000"
    )
    print(
        "Compare the models and browse the registry in MLflow:           make mlflow-ui  ->  http://127.0.0.1:5000"
    )
    return 0


def champion_summary(lake) -> str:
    """Which model serves, and where its recommendations are."""
    from hm_recs.paths import state_dir
    from hm_recs.tables import RECOMMENDATIONS_TABLE

    if not lake.exists(RECOMMENDATIONS_TABLE):
        return "\n(no recommendations: the evaluate job did not reach them)"
    row = (
        lake.read(RECOMMENDATIONS_TABLE, columns=["customer_id", "model", "model_version", "week_start"])
        .slice(0, 1)
        .to_pylist()[0]
    )
    cutoff = ""
    try:
        from hm_recs.paths import default_tracking_uri
        from hm_recs.registry.tracking import TrackingSettings

        client = TrackingSettings(default_tracking_uri()).client()
        tags = client.get_model_version("hm_recs_recommender", str(row["model_version"])).tags
        cutoff = (
            f", trained on data before {tags.get('trained_before', '?')} ({tags.get('decision_kind', '?')})"
        )
    except Exception:  # the summary is a courtesy: the registry may be elsewhere
        pass
    return (
        f"\nChampion: {row['model']} (hm_recs_recommender v{row['model_version']}{cutoff}); "
        f"recommendations for the week from {row['week_start']}\n"
        f"Kaggle submission: {state_dir() / 'submissions' / 'submission.csv'}\n"
        f"Try:  .venv/bin/hm-recs recommend {row['customer_id']}"
    )


def format_metrics(
    frame,
    metrics=("Recall@1", "Recall@5", "Recall@10", "Recall@20", "MRR@20", "NDCG@20", "MAP@12", "Coverage@12"),
) -> str:
    if frame.empty:
        return "(no metrics)"
    rows = []
    for (model, split), g in frame.groupby(["model", "split"], sort=False):
        by = g.set_index("metric")
        cells = []
        for m in metrics:
            if m not in by.index:
                cells.append("")
                continue
            v, lo, hi = by.loc[m, ["value", "ci_low", "ci_high"]]
            cells.append(f"{v:.4f}" if lo == hi else f"{v:.4f} [{lo:.4f},{hi:.4f}]")
        rows.append([model, split, *cells])
    header = ["model", "week", *metrics]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    order = {"validation": 0, "test": 1}
    rows.sort(key=lambda r: (order.get(r[1], 2), r[0]))
    return "\n".join([fmt.format(*header)] + [fmt.format(*r) for r in rows])
