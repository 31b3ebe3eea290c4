"""Screenshots of the screens users look at, taken in headless Chromium against a finished demo.

    make demo && .venv/bin/python infra/screens.py --out docs/screens

Starts the Dagster webserver (on the demo's instance, ``$DAGSTER_HOME`` or ``state/dagster``) and
the MLflow UI (on ``HM_MLFLOW_TRACKING_URI`` or ``state/mlflow/mlflow.db``) on spare ports, saves
the asset graph, the ``model_comparison`` asset page, the MLflow experiment's Models tab and the
MLflow compare view of every model run, then stops both servers. Needs Debian's ``chromium``
(``apt-get install chromium``); the pages are single-page apps, so each gets a virtual-time budget
to render before the shot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _wait(url: str, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f} s")


def _shot(chromium: str, url: str, path: Path, size: str, budget_ms: int) -> None:
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}",
         f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url],
        check=True, capture_output=True, timeout=180,
    )
    print(f"{path}  <- {url}")


def _model_runs(tracking_uri: str) -> tuple[str, list[str]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("hm_recs")
    runs = client.search_runs([experiment.experiment_id], "metrics.test_MAP_at_12 >= 0", order_by=["metrics.test_MAP_at_12 DESC"])
    return experiment.experiment_id, [r.info.run_id for r in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screens"), help="folder for the PNG files")
    parser.add_argument("--dagster-port", type=int, default=3333)
    parser.add_argument("--mlflow-port", type=int, default=5555)
    parser.add_argument("--budget-ms", type=int, default=25000, help="virtual time each page gets to render")
    args = parser.parse_args(argv)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("screens: chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DAGSTER_HOME", str(ROOT / "state" / "dagster"))
    tracking = env.get("HM_MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'state' / 'mlflow' / 'mlflow.db'}"
    servers = [
        subprocess.Popen([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(args.dagster_port)],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", tracking, "-h", "127.0.0.1", "-p", str(args.mlflow_port)],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        dagster = f"http://127.0.0.1:{args.dagster_port}"
        mlflow = f"http://127.0.0.1:{args.mlflow_port}"
        _wait(f"{dagster}/server_info")
        _wait(f"{mlflow}/health")
        experiment, runs = _model_runs(tracking)
        compare = "#/compare-runs?" + urllib.parse.urlencode({"runs": json.dumps(runs), "experiments": json.dumps([experiment])})
        shots = [
            ("dagster_asset_graph.png", f"{dagster}/asset-groups", "1600,1000"),
            ("dagster_model_comparison.png", f"{dagster}/assets/model_comparison", "1600,1400"),
            ("mlflow_models_tab.png", f"{mlflow}/#/experiments/{experiment}/models", "1600,900"),
            ("mlflow_compare_runs.png", f"{mlflow}/{compare}", "1600,1400"),
        ]
        for name, url, size in shots:
            _shot(chromium, url, out / name, size, args.budget_ms)
    finally:
        for p in servers:
            p.terminate()
        for p in servers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
