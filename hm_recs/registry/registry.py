"""The model registry: every trained model under a stable name, and the champion recommender.

``hm_recs_recommender`` holds the recommender served to customers; its ``champion`` alias is the
model in use. The promotion policy (:func:`decide`) knows two kinds of candidate:

* a **refit** -- the champion's own model family trained on newer data (last week's champion,
  retrained with this week): it replaces the served version (a refresh) unless it scores below the
  champion by more than ``refit_tolerance`` (relative), which catches a refit that broke;
* a **challenger** -- another family: it must beat the champion by ``min_improvement`` (relative).

A candidate that is not promoted is still registered, with the ``challenger`` alias and a
``status`` tag; every version records the decision, its kind and ``trained_before`` (the first day
its parameters never saw), so both outcomes and the served model's training cutoff stay on record.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

from hm_recs.registry.tracking import MODEL_ID_TAG, TrackedRun, TrackingSettings

RECOMMENDER = "hm_recs_recommender"
CHAMPION, CHALLENGER = "champion", "challenger"


def model_name(model: str) -> str:
    """The registered name of one trained model (``gru4rec`` -> ``hm_recs_gru4rec``)."""
    return f"hm_recs_{model}"


def register_model(
    run: TrackedRun, model_dir: Path, name: str, description: str = "", tags: dict | None = None
):
    """Log an MLflow model folder as a logged model of ``run`` (MLflow 3: it appears in the
    experiment's Models tab, with its metrics linked) and register it as a new version of ``name``."""
    client = run.client
    tags = {k: str(v) for k, v in (tags or {}).items()}
    logged = client.create_logged_model(
        run.settings.experiment_id(),
        name=name,
        source_run_id=run.run_id,
        tags=tags,
        model_type=tags.get("kind"),
    )
    try:
        client.log_model_artifacts(logged.model_id, str(model_dir))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    client.set_tag(run.run_id, MODEL_ID_TAG, logged.model_id)
    with contextlib.suppress(Exception):  # already registered
        client.create_registered_model(name, description=description or None)
    return create_version(run.settings, name, f"models:/{logged.model_id}", run_id=run.run_id, tags=tags)


def create_version(settings: TrackingSettings, name: str, source: str, **kwargs):
    """A new version of registered model ``name`` from ``source``.

    A version knows its logged model through a ``models:/<id>`` source plus the ``model_id`` (an
    MLflow server refuses the source without it). MLflow's SQL registry resolves that source with
    the process-global tracking URI, not the client's: it points at this store meanwhile.
    """
    import json

    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    client = settings.client()
    model_id = source.removeprefix("models:/") if source.startswith("models:/m-") else None
    with _use_tracking_uri(settings.tracking_uri):
        version = client.create_model_version(name, source, model_id=model_id, **kwargs)
    if model_id is not None:  # the logged model lists its versions (the Models tab's column)
        listed = json.loads(client.get_logged_model(model_id).tags.get("mlflow.modelVersions", "[]"))
        listed.append({"name": version.name, "version": version.version})
        client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(listed)})
    return version


@dataclass
class Candidate:
    model: str  # protocol name, e.g. gru4rec_warm
    registered: str  # its registered model name (the model family)
    version: str
    score: float  # validation-week metric
    week: str  # validation week start (ISO)
    trained_before: str = ""  # ISO: the first day the registered model never saw ("" unknown)


@dataclass
class Standing:
    """What the policy knows of the champion: its family, score and training cutoff."""

    model: str
    registered: str
    score: float  # nan: no comparable score on record
    trained_before: str  # "" unknown
    rescored: bool = False  # the score was measured on the candidate's week (else recorded elsewhere)


@dataclass
class Decision:
    promoted: bool
    kind: str  # first | refresh | refit held back | challenger promoted | challenger
    candidate: str
    candidate_score: float
    champion: str | None
    champion_score: float | None
    metric: str
    min_improvement: float
    refit_tolerance: float
    version: str
    reason: str
    trained_before: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def is_refit(candidate: Candidate, champion: Standing | None) -> bool:
    """The champion's family trained on newer data than the champion was."""
    return (
        champion is not None
        and candidate.registered == champion.registered
        and bool(candidate.trained_before)
        and candidate.trained_before > (champion.trained_before or "")
    )


def decide(
    candidate: Candidate, champion: Standing | None, min_improvement: float, refit_tolerance: float
) -> tuple[bool, str, str]:
    """(promote?, kind, reason) for ``candidate`` against the current ``champion``.

    A refit of the champion's family refreshes the served model unless it falls more than
    ``refit_tolerance`` below the champion's score: the same family on one more week of data ties
    with the champion when nothing changed (same code, same seed), so a margin would keep last
    week's model forever. Another family must beat the champion by ``min_improvement``; so must a
    same-family candidate that is not newer (a retrain on the same data)."""
    if champion is None:
        return True, "first", "no champion yet"
    known = champion.score == champion.score  # nan: nothing comparable on record
    where = "re-scored on this week" if champion.rescored else "as recorded when promoted"
    if is_refit(candidate, champion):
        floor = champion.score * (1.0 - refit_tolerance) if known else float("-inf")
        ok = candidate.score >= floor
        reason = (
            f"refit of {champion.registered} on data before {candidate.trained_before} "
            f"(champion: before {champion.trained_before or '?'}); {candidate.score:.5f} "
            f"{'>=' if ok else '<'} {floor:.5f} (champion {champion.score:.5f} {where} x (1 - "
            f"{refit_tolerance}))"
        )
        return ok, "refresh" if ok else "refit held back", reason
    if not known:
        return True, "challenger promoted", f"champion {champion.model} has no comparable score on record"
    need = champion.score * (1.0 + min_improvement)
    ok = candidate.score > need
    reason = (
        f"{candidate.score:.5f} {'>' if ok else '<='} {need:.5f} "
        f"(champion {champion.model} {champion.score:.5f} {where} x (1 + {min_improvement}))"
    )
    return ok, "challenger promoted" if ok else "challenger", reason


def current_champion(settings: TrackingSettings):
    client = settings.client()
    try:
        return client.get_model_version_by_alias(RECOMMENDER, CHAMPION)
    except Exception:
        return None


def standing(champion, metric: str, rescored: float | None = None) -> Standing | None:
    """The champion version's standing: the re-scored value when the caller could measure it on
    the candidate's week, else the score recorded when it was promoted (nan if another metric)."""
    if champion is None:
        return None
    tags = champion.tags
    recorded = float(tags.get("validation_score", "nan")) if tags.get("metric") == metric else float("nan")
    return Standing(
        tags.get("model", "?"),
        tags.get("registered_as", "?").split("/")[0],
        recorded if rescored is None else rescored,
        tags.get("trained_before", ""),
        rescored is not None,
    )


def promote(
    settings: TrackingSettings,
    candidate: Candidate,
    metric: str,
    min_improvement: float,
    champion_score: float | None = None,
    refit_tolerance: float = 0.25,
) -> Decision:
    """Register ``candidate`` as a version of the recommender and move ``champion`` to it when the
    policy (:func:`decide`) says so; else alias it ``challenger``.

    ``champion_score`` is the champion's score on the same validation week when the caller could
    measure it honestly; None uses the score recorded when the champion was promoted.
    """
    client = settings.client()
    champion = current_champion(settings)
    held = standing(champion, metric, champion_score)
    src = client.get_model_version(candidate.registered, candidate.version)
    trained_before = candidate.trained_before or src.tags.get("trained_before", "")
    candidate = Candidate(
        candidate.model,
        candidate.registered,
        candidate.version,
        candidate.score,
        candidate.week,
        trained_before,
    )
    with contextlib.suppress(Exception):
        client.create_registered_model(
            RECOMMENDER,
            description="The recommender served to customers: its champion alias is the model in use.",
        )
    version = create_version(
        settings,
        RECOMMENDER,
        src.source,
        run_id=src.run_id,
        tags={
            "model": candidate.model,
            "registered_as": f"{candidate.registered}/{candidate.version}",
            "metric": metric,
            "validation_score": f"{candidate.score:.6f}",
            "validation_week": candidate.week,
            "trained_before": trained_before,
            **{k: src.tags[k] for k in ("data_end",) if k in src.tags},
        },
    )
    promoted, kind, reason = decide(candidate, held, min_improvement, refit_tolerance)
    if promoted:
        client.set_registered_model_alias(RECOMMENDER, CHAMPION, version.version)
        client.set_model_version_tag(RECOMMENDER, version.version, "status", CHAMPION)
        if champion is not None:
            client.set_model_version_tag(RECOMMENDER, champion.version, "status", "retired")
    else:
        client.set_registered_model_alias(RECOMMENDER, CHALLENGER, version.version)
        client.set_model_version_tag(RECOMMENDER, version.version, "status", CHALLENGER)
    client.set_model_version_tag(RECOMMENDER, version.version, "decision", reason)
    client.set_model_version_tag(RECOMMENDER, version.version, "decision_kind", kind)
    return Decision(
        promoted,
        kind,
        candidate.model,
        candidate.score,
        held.model if held else None,
        held.score if held else None,
        metric,
        min_improvement,
        refit_tolerance,
        version.version,
        reason,
        trained_before,
    )


def load_champion(settings: TrackingSettings, alias: str = CHAMPION):
    """The served recommender as a pyfunc model."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return mlflow.pyfunc.load_model(f"models:/{RECOMMENDER}@{alias}")
