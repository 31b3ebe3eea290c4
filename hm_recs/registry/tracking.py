"""Tracked MLflow runs that always end: FINISHED on success, FAILED on an exception, never RUNNING.

The tracking store is a URI (``sqlite:///.../mlflow.db`` by default, ``http://host:5000`` or
``postgresql://...`` in production); artifacts go to an explicit folder or bucket per experiment.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

EXPERIMENT = "hm_recs"
MODEL_ID_TAG = "hm_recs.model_id"  # run tag: the MLflow logged model the run produced
_READY: set[str] = set()  # SQLite stores whose schema this process has seen created


EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": "hm_recs: one run per trained model (POP variants, GRU4Rec, VQGAN, BART variants) "
    "with its "
    "protocol metrics (test_MAP_at_12, test_Recall_at_20, ... with _ci_low/_ci_high), plus model_comparison. "
    "Select model runs and Compare; the served model is hm_recs_recommender@champion.",
}


@dataclass(frozen=True)
class TrackingSettings:
    tracking_uri: str
    artifact_location: str | None = None  # folder or s3:// prefix for new experiments
    experiment: str = EXPERIMENT

    def client(self):
        from mlflow import MlflowClient

        if self.tracking_uri.startswith("sqlite:///") and self.tracking_uri not in _READY:
            # the first use of a SQLite store creates its schema: two Dagster step processes doing
            # that at once would collide, so each process's first client is made under a file lock
            from filelock import FileLock

            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            db.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(db) + ".lock", timeout=300):
                client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
                client.search_experiments(max_results=1)
                client.search_registered_models(max_results=1)
            _READY.add(self.tracking_uri)
            return client
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        """The experiment, created on first use with a description and the model-development kind
        (so the MLflow UI opens on its runs, not on an empty GenAI traces view)."""
        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            if EXPERIMENT_TAGS.keys() - found.tags.keys():  # made before these tags existed
                for k, v in EXPERIMENT_TAGS.items():
                    client.set_experiment_tag(found.experiment_id, k, v)
            return found.experiment_id
        location = self.artifact_location
        if location and "://" not in location:
            Path(location).mkdir(parents=True, exist_ok=True)
            location = Path(location).resolve().as_uri()
        try:
            return client.create_experiment(self.experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
        except Exception:  # created meanwhile by a concurrent run
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id


def _flat(params: Mapping, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple) else str(v)
    return {k: v[:6000] for k, v in out.items()}


class TrackedRun:
    """One MLflow run, used through the client (no global active-run state)."""

    def __init__(self, settings: TrackingSettings, run_id: str):
        self.settings, self.run_id = settings, run_id
        self.client = settings.client()

    @property
    def url_path(self) -> str:
        run = self.client.get_run(self.run_id)
        return f"#/experiments/{run.info.experiment_id}/runs/{self.run_id}"

    def log_params(self, params: Mapping) -> None:
        from mlflow.entities import Param

        flat = list(_flat(params).items())
        for i in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in flat[i : i + 100]])

    def model_id(self) -> str | None:
        """The logged model this run produced (set when it was registered), if any."""
        return self.client.get_run(self.run_id).data.tags.get(MODEL_ID_TAG)

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, model_id: str | None = None
    ) -> None:
        """Metrics of the run; with ``model_id`` also linked to that logged model (its Models-tab row)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [
            Metric(k.replace("@", "_at_"), float(v), now, step or 0, model_id=model_id)
            for k, v in metrics.items()
            if v is not None
        ]
        if rows:
            self.client.log_batch(self.run_id, metrics=rows)

    def log_curve(self, key: str, values, start_step: int = 1) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(key, float(v), now, i) for i, v in enumerate(values, start=start_step)]
        for i in range(0, len(rows), 1000):
            self.client.log_batch(self.run_id, metrics=rows[i : i + 1000])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        for k, v in tags.items():
            if v is not None:
                self.client.set_tag(self.run_id, k, str(v))

    def log_inputs(self, tables: Mapping[str, tuple[str, int | None]], context: str = "training") -> None:
        """The exact input data: each Delta table's URI and version as an MLflow dataset (the run's
        Datasets column and page), as tags and as an ``inputs.json``."""
        from mlflow.data.delta_dataset_source import DeltaDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        datasets = [
            DatasetInput(
                MetaDataset(
                    DeltaDatasetSource(path=uri, delta_table_version=version), name=name, digest=f"v{version}"
                )._to_mlflow_entity(),
                tags=[InputTag("mlflow.data.context", context)],
            )
            for name, (uri, version) in tables.items()
        ]
        self.client.log_inputs(self.run_id, datasets=datasets)
        self.set_tags({f"input.{name}": f"{uri}@v{version}" for name, (uri, version) in tables.items()})
        self.log_text(
            json.dumps({n: {"uri": u, "version": v} for n, (u, v) in tables.items()}, indent=2), "inputs.json"
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_image(self, png: bytes, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(png)
            self.log_artifact(path, "plots")


@contextlib.contextmanager
def tracked_run(
    settings: TrackingSettings, run_name: str, tags: Mapping[str, object] | None = None
) -> Iterator[TrackedRun]:
    """Start a run; end it FINISHED, or FAILED (with the error as a tag) when the body raises."""
    client = settings.client()
    run = client.create_run(
        settings.experiment_id(),
        run_name=run_name,
        tags={k: str(v) for k, v in (tags or {}).items() if v is not None},
    )
    tracked = TrackedRun(settings, run.info.run_id)
    try:
        yield tracked
    except BaseException as e:
        with contextlib.suppress(Exception):
            client.set_tag(run.info.run_id, "error", f"{type(e).__name__}: {e}"[:5000])
        client.set_terminated(run.info.run_id, "FAILED" if not isinstance(e, KeyboardInterrupt) else "KILLED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


def close_orphaned_runs(
    settings: TrackingSettings, is_alive: Callable[[str], bool], current: str | None = None
) -> list[str]:
    """End as KILLED every RUNNING run whose Dagster run (``dagster.run_id`` tag) is no longer alive:
    a step killed with -9 never reached its ``finally``. ``is_alive(dagster_run_id)`` answers from
    the Dagster instance; ``current`` (the calling run) is never touched. Returns the ended run ids."""
    client = settings.client()
    found = client.search_runs(
        [settings.experiment_id()], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    ended = []
    for r in found:
        owner = r.data.tags.get("dagster.run_id")
        if owner is None or owner == current or is_alive(owner):
            continue
        client.set_tag(
            r.info.run_id,
            "error",
            f"its Dagster run {owner} is no longer running (killed); closed by a later run",
        )
        client.set_terminated(r.info.run_id, "KILLED")
        ended.append(r.info.run_id)
    return ended


@contextlib.contextmanager
def asset_run(
    settings: TrackingSettings,
    name: str,
    tags: Mapping[str, object],
    is_alive: Callable[[str], bool],
    inputs: Mapping[str, tuple[str, int]] | None = None,
    role: str = "training",
    warn: Callable[[str], None] = print,
) -> Iterator[TrackedRun]:
    """The MLflow run of one asset materialization (``tags`` name the Dagster run, asset and
    partition): runs of Dagster runs that died are closed KILLED first (``close_orphaned_runs``),
    the input tables are logged as datasets used for ``role``; ended FINISHED or FAILED."""
    for killed in close_orphaned_runs(settings, is_alive, tags.get("dagster.run_id")):
        warn(f"MLflow run {killed} belonged to a Dagster run that died: marked KILLED")
    with tracked_run(settings, name, tags) as run:
        if inputs:
            run.log_inputs(dict(inputs), role)
        yield run
