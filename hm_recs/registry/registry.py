"""The model registry: every trained model under a stable name, and the champion recommender.

``hm_recs_recommender`` holds the recommender served to customers; its ``champion`` alias moves
only when a candidate beats the champion on the validation week by ``min_improvement``
(relative). A candidate that does not is still registered, with the ``challenger`` alias and a
``status`` tag, so both outcomes stay on record.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

from hm_recs.registry.tracking import TrackedRun, TrackingSettings

RECOMMENDER = "hm_recs_recommender"
CHAMPION, CHALLENGER = "champion", "challenger"


def model_name(model: str) -> str:
    """The registered name of one trained model (``gru4rec`` -> ``hm_recs_gru4rec``)."""
    return f"hm_recs_{model}"


def register_model(run: TrackedRun, model_dir: Path, name: str, description: str = "", tags: dict | None = None, artifact_path: str = "model"):
    """Log an MLflow model folder to ``run`` and register it as a new version of ``name``."""
    client = run.client
    client.log_artifacts(run.run_id, str(model_dir), artifact_path)
    with contextlib.suppress(Exception):  # already registered
        client.create_registered_model(name, description=description or None)
    source = f"{client.get_run(run.run_id).info.artifact_uri}/{artifact_path}"
    return client.create_model_version(name, source, run_id=run.run_id, tags={k: str(v) for k, v in (tags or {}).items()})


@dataclass
class Candidate:
    model: str  # protocol name, e.g. gru4rec_warm
    registered: str  # its registered model name
    version: str
    score: float  # validation-week metric
    week: str  # validation week start (ISO)


@dataclass
class Decision:
    promoted: bool
    candidate: str
    candidate_score: float
    champion: str | None
    champion_score: float | None
    metric: str
    min_improvement: float
    version: str
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def current_champion(settings: TrackingSettings):
    client = settings.client()
    try:
        return client.get_model_version_by_alias(RECOMMENDER, CHAMPION)
    except Exception:
        return None


def promote(settings: TrackingSettings, candidate: Candidate, metric: str, min_improvement: float, champion_score: float | None = None) -> Decision:
    """Register ``candidate`` as a version of the recommender and move ``champion`` to it when it
    beats the champion by ``min_improvement`` (relative) on ``metric``; else alias it ``challenger``.

    ``champion_score`` is the champion's score on the same validation week when the caller could
    measure it; None uses the score recorded when the champion was promoted.
    """
    client = settings.client()
    champion = current_champion(settings)
    src = client.get_model_version(candidate.registered, candidate.version)
    with contextlib.suppress(Exception):
        client.create_registered_model(RECOMMENDER, description="The recommender served to customers: its champion alias is the model in use.")
    version = client.create_model_version(RECOMMENDER, src.source, run_id=src.run_id, tags={
        "model": candidate.model, "registered_as": f"{candidate.registered}/{candidate.version}",
        "metric": metric, "validation_score": f"{candidate.score:.6f}", "validation_week": candidate.week,
    })
    if champion is None:
        promoted, old, old_score, reason = True, None, None, "no champion yet"
    else:
        old = champion.tags.get("model", "?")
        recorded = float(champion.tags.get("validation_score", "nan")) if champion.tags.get("metric") == metric else float("nan")
        old_score = recorded if champion_score is None else champion_score
        need = old_score * (1.0 + min_improvement)
        promoted = candidate.score > need if old_score == old_score else True  # nan: no comparable score on record
        reason = (f"{candidate.score:.5f} {'>' if promoted else '<='} {need:.5f} (champion {old} {old_score:.5f} x (1 + {min_improvement}))"
                  + ("" if champion_score is None else "; champion re-scored on this week"))
    if promoted:
        client.set_registered_model_alias(RECOMMENDER, CHAMPION, version.version)
        client.set_model_version_tag(RECOMMENDER, version.version, "status", CHAMPION)
        if champion is not None:
            client.set_model_version_tag(RECOMMENDER, champion.version, "status", "retired")
    else:
        client.set_registered_model_alias(RECOMMENDER, CHALLENGER, version.version)
        client.set_model_version_tag(RECOMMENDER, version.version, "status", CHALLENGER)
    client.set_model_version_tag(RECOMMENDER, version.version, "decision", reason)
    return Decision(promoted, candidate.model, candidate.score, old, old_score, metric, min_improvement, version.version, reason)


def load_champion(settings: TrackingSettings, alias: str = CHAMPION):
    """The served recommender as a pyfunc model."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return mlflow.pyfunc.load_model(f"models:/{RECOMMENDER}@{alias}")
