"""Benchmark: one automatic weekly retraining cycle under the real Dagster daemon, as an operator runs it.

    .venv/bin/python benchmarks/bench_weekly_cycle.py [--profile demo] [--data DIR] [--work DIR]

1. The state `make demo` leaves, but with the data's last week held back: the three jobs in process
   on the generated `small` sample (or ``--data``) with the run profile's settings.
2. ``dagster-daemon run`` on that instance with every automation sensor switched on (the four
   sensors; the schedule stays off)
   (``HM_PROFILE=<profile>``, ``HM_FILE_SETTLE_SECONDS=10``); the file sensor's first tick must start
   nothing (the file is what was ingested).
3. The held-back week is appended to ``transactions_train.csv``; the daemon takes it from there:
   file sensor -> ingest -> sessionize -> evaluate (multiprocess executor, torch steps one at a time).

Prints each run's start and end after the file changed, the champion before and after (model,
training cutoff, decision) and a markdown block for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INSTANCE_YAML = """run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 1
telemetry:
  enabled: false
"""


def prepare(source: Path, work: Path) -> tuple[Path, str]:
    """The data folder with the last week held back, and that week's start."""
    import pandas as pd

    from hm_recs.defs.partitions import week_start

    data = work / "data"
    data.mkdir(parents=True)
    for name in ("articles.csv", "customers.csv"):
        shutil.copyfile(source / name, data / name)
    if (source / "images").exists():
        (data / "images").symlink_to((source / "images").resolve())
    full = pd.read_csv(source / "transactions_train.csv", dtype=str)
    held = week_start(dt.date.fromisoformat(full["t_dat"].max())).isoformat()
    full[full["t_dat"] < held].to_csv(data / "transactions_train.csv", index=False)
    full.to_csv(work / "transactions_full.csv", index=False)
    return data, held


def champion():
    from mlflow import MlflowClient

    from hm_recs.paths import default_tracking_uri
    from hm_recs.registry.registry import CHAMPION, RECOMMENDER

    v = MlflowClient(default_tracking_uri(), default_tracking_uri()).get_model_version_by_alias(
        RECOMMENDER, CHAMPION
    )
    return {
        "version": v.version,
        "model": v.tags.get("model"),
        "trained_before": v.tags.get("trained_before"),
        "decision": v.tags.get("decision_kind"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--profile", default="demo", help="HM_PROFILE of the automatic runs (and of the preparation)"
    )
    ap.add_argument(
        "--data", default=None, help="a Kaggle-layout folder (default: the generated small sample)"
    )
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "weekly_cycle"))
    ap.add_argument("--timeout-minutes", type=float, default=45.0)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep a state prepared by an earlier call in --work (skip step 1)",
    )
    args = ap.parse_args()
    work = Path(args.work)
    home, data, marker = work / "dagster", work / "data", work / "prepared.json"
    from hm_recs.demo import resolve_data_dir

    source = (
        Path(args.data) if args.data else resolve_data_dir(None, "small", 0)
    )  # before HM_DATA_DIR points at the copy
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HM_STATE_DIR": str(work / "state"),
        "HM_DATA_DIR": str(data),
        "HM_PROFILE": args.profile,
        "HM_FILE_SETTLE_SECONDS": "10",
    }
    os.environ.update(env)
    import json

    import dagster as dg

    if not (args.reuse and marker.exists()):
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        home.mkdir()
        (home / "dagster.yaml").write_text(INSTANCE_YAML)
        data, held = prepare(source, work)

        from hm_recs.definitions import defs as load_defs
        from hm_recs.defs.resources import configured_lake
        from hm_recs.demo import run_pipeline
        from hm_recs.profiles import run_config

        t = time.perf_counter()
        with dg.DagsterInstance.get() as instance:
            timings, results = run_pipeline(
                load_defs(), instance, configured_lake(), log=print, models=run_config(args.profile)
            )
        assert all(r.success for r in results.values()), {k: r.success for k, r in results.items()}
        marker.write_text(json.dumps({"held": held, "timings": timings, "seconds": time.perf_counter() - t}))
    prep = json.loads(marker.read_text())
    held, timings = prep["held"], prep["timings"]
    import pandas as pd

    full = pd.read_csv(work / "transactions_full.csv", dtype=str)
    held_back = full[full["t_dat"] < held]
    held_back.to_csv(
        data / "transactions_train.csv", index=False
    )  # as prepared (an earlier call may have appended)
    before = champion()
    print(
        f"prepared in {prep['seconds']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}); "
        f"champion {before}",
        flush=True,
    )

    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [str(bin_dir / "dagster"), "sensor", "start", "--start-all", "-w", str(ROOT / "workspace.yaml")],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    log = open(work / "daemon.log", "w")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen(
        [str(bin_dir / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with dg.DagsterInstance.get() as instance:
            known = {r.dagster_run.run_id for r in instance.get_run_records()}
            time.sleep(150)  # two ticks of the file sensor on the unchanged file: nothing may start
            early = [
                r.dagster_run.job_name
                for r in instance.get_run_records()
                if r.dagster_run.run_id not in known
            ]
            assert not early, f"runs started without new data: {early}"
            shutil.copyfile(work / "transactions_full.csv", data / "transactions_train.csv")
            t0 = time.time()
            print(f"appended the week from {held}; waiting for the chain", flush=True)
            deadline = t0 + args.timeout_minutes * 60
            while time.time() < deadline:
                runs = [r for r in instance.get_run_records() if r.dagster_run.run_id not in known]
                done = [r for r in runs if r.dagster_run.job_name == "evaluate" and r.dagster_run.is_finished]
                failed = [
                    r
                    for r in runs
                    if r.dagster_run.is_finished and r.dagster_run.status != dg.DagsterRunStatus.SUCCESS
                ]
                if done or failed:
                    break
                time.sleep(10)
            rows = []
            for r in sorted(runs, key=lambda r: r.create_timestamp.timestamp()):
                start, end = r.start_time, r.end_time
                rows.append(
                    (
                        r.dagster_run.job_name,
                        r.dagster_run.status.value,
                        (start - t0) / 60 if start else float("nan"),
                        (end - t0) / 60 if end else float("nan"),
                        (end - start) / 60 if start and end else float("nan"),
                    )
                )
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()
    after = champion()
    print(
        f"\n### One automatic weekly cycle under the Dagster daemon ({dt.date.today().isoformat()}, profile "
        f"`{args.profile}`)\n"
    )
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores. Command: `.venv/bin/python "
        "benchmarks/bench_weekly_cycle.py "
        f"{' '.join(sys.argv[1:])}`\n"
    )
    print(
        "| run | status | started (min after the file changed) | ended | length (min) "
        "|\n|---|---|---|---|---|"
    )
    for job, status, s, e, n in rows:
        print(f"| {job} | {status} | {s:.1f} | {e:.1f} | {n:.1f} |")
    print(
        f"\nIn process (preparation, the same profile on the data without the last week): "
        f"{', '.join(f'{k} {v / 60:.1f} min' for k, v in timings.items())}."
    )
    print(
        f"Champion before: v{before['version']} {before['model']}, trained on data before "
        f"{before['trained_before']}; "
        f"after: v{after['version']} {after['model']}, before {after['trained_before']} "
        f"({after['decision']})."
    )
    return 0 if rows and rows[-1][0] == "evaluate" and rows[-1][1] == "SUCCESS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
