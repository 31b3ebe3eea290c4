"""Screenshots of the screens users look at, taken in headless Chromium against a finished demo.

    make demo && .venv/bin/python infra/screens.py --out docs/screens

Starts the Dagster webserver (on the demo's instance, ``$DAGSTER_HOME`` or ``state/dagster``) and
the MLflow UI (on ``HM_MLFLOW_TRACKING_URI`` or ``state/mlflow/mlflow.db``) on spare ports, saves
the asset graph, the ranking group, the ``ranker_model`` page (its feature-importance plot), a BART
training asset's page (its grounding and the version it registered), the ``model_comparison`` asset
page, the MLflow experiment's Models tab and the
MLflow compare view of every model run, then stops both servers. Needs Debian's ``chromium``
(``apt-get install chromium``) driven by Playwright (``pip install playwright``; no browser
download: it runs the system Chromium). The pages are single-page apps: each shot waits until the
page's network is idle and its expected text is shown, and Dagster's first-visit community dialog
is dismissed as a user would (Skip).
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


# MLflow keeps its UI choices in localStorage: the model-training sidebar (it opens in GenAI mode)
# and the assistant panel closed, as a user who chose them once would see the pages
MLFLOW_UI_CHOICES = """
if (location.port === "%s") {
  localStorage.setItem("mlflow.workflowType_v1", JSON.stringify("machine_learning"));
  localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
  localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
  // the runs table ranked by test-week MAP@12, with its interval, as "Columns" + "Sort" would set it
  const metric = (k) => "metrics.`" + k + "`";
  localStorage.setItem('MLflowLocalStorage-1.1-ExperimentPage-["%s"]-ReactComponentState', JSON.stringify({
    orderByKey: metric("test_MAP_at_12"), orderByAsc: false, lifecycleFilter: "Active", startTime: "ALL",
    selectedColumns: ["attributes.`Dataset`", "attributes.`Models`", metric("test_MAP_at_12"),
                      metric("test_MAP_at_12_ci_low"), metric("test_MAP_at_12_ci_high"),
                      metric("test_Recall_at_20")],
  }));
}
"""


def _dismiss(page) -> None:
    """What a user closes first: Dagster's community dialog."""
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()
        page.wait_for_timeout(500)


def _shot(page, url: str, path: Path, expect: str, height: int, settle_ms: int, steps=()) -> None:
    """Open ``url``, wait for ``expect``, do ``steps`` (("click", text)), save the viewport."""
    page.set_viewport_size({"width": 1600, "height": height})  # the UIs scroll inside panels, not the page
    page.goto(url, wait_until="commit", timeout=120_000)
    page.get_by_text(expect).first.wait_for(timeout=120_000)
    page.wait_for_timeout(settle_ms)
    _dismiss(page)
    for action, text in steps:
        if action == "click":
            page.get_by_text(text, exact=True).first.click()
        page.wait_for_timeout(settle_ms)
    page.screenshot(path=str(path))
    print(f"{path}  <- {url}")


def _model_runs(tracking_uri: str) -> tuple[str, list[str]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("hm_recs")
    runs = client.search_runs(
        [experiment.experiment_id], "metrics.test_MAP_at_12 >= 0", order_by=["metrics.test_MAP_at_12 DESC"]
    )
    return experiment.experiment_id, [r.info.run_id for r in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screens"), help="folder for the PNG files")
    parser.add_argument("--dagster-port", type=int, default=3333)
    parser.add_argument("--mlflow-port", type=int, default=5555)
    parser.add_argument("--settle-ms", type=int, default=3000, help="wait after the page shows its content")
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
        subprocess.Popen(
            [
                str(BIN / "dagster-webserver"),
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(args.dagster_port),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "ui",
                "--backend-store-uri",
                tracking,
                "-h",
                "127.0.0.1",
                "-p",
                str(args.mlflow_port),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        dagster = f"http://127.0.0.1:{args.dagster_port}"
        mlflow = f"http://127.0.0.1:{args.mlflow_port}"
        _wait(f"{dagster}/server_info")
        _wait(f"{mlflow}/health")
        experiment, runs = _model_runs(tracking)
        compact = {"separators": (",", ":")}
        compare = "#/compare-runs?" + urllib.parse.urlencode(
            {"runs": json.dumps(runs, **compact), "experiments": json.dumps([experiment], **compact)}
        )
        asset = f"{dagster}/assets/model_comparison"
        shots = [  # file, page, text the page shows once rendered, viewport height, steps
            (
                "dagster_asset_graph.png",
                f"{dagster}/locations/hm_recs/asset-groups/evaluation",
                "model_comparison",
                1000,
                (),
            ),
            (
                "dagster_ranking_group.png",
                f"{dagster}/locations/hm_recs/asset-groups/ranking",
                "ranker_evaluation",
                1000,
                (),
            ),
            (
                "dagster_ranker_model.png",
                f"{dagster}/assets/ranker_model",
                "ranker_feature_importance",
                1000,
                (("click", "[Show Markdown]"),),
            ),
            (
                "dagster_bart_model.png",
                f"{dagster}/assets/bart_model_semantic_id",
                "registered_model",
                1700,
                (),
            ),
            ("dagster_model_comparison.png", asset, "Columns", 2250, ()),
            ("dagster_comparison_table.png", asset, "Columns", 1000, (("click", "[Show Markdown]"),)),
            ("mlflow_runs.png", f"{mlflow}/#/experiments/{experiment}/runs", "model_comparison", 900, ()),
            (
                "mlflow_models_tab.png",
                f"{mlflow}/#/experiments/{experiment}/models",
                "hm_recs_gru4rec",
                900,
                (),
            ),
            ("mlflow_compare_runs.png", f"{mlflow}/{compare}", "Metrics", 2000, ()),
        ]
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.add_init_script(MLFLOW_UI_CHOICES % (args.mlflow_port, experiment))
            for name, url, expect, height, steps in shots:
                _shot(page, url, out / name, expect, height, args.settle_ms, steps)
            browser.close()
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
