"""The hm_recs code location: every asset under ``hm_recs/defs`` plus the resources.

Every asset gets an owner (the data platform for ingestion and sessions, the ML team for the
models and what serves them) and a code version: a hash of the source files of its domain (its
``defs`` folder and the core package it calls), so the UI's "unsynced" flag means the code that
made an asset has changed since it was materialized.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import warnings
from pathlib import Path

import dagster as dg

PACKAGE = Path(__file__).parent
# asset group -> the source folders its assets run (the Dagster layer and the core)
DOMAINS = {
    "ingest": ("defs/ingest", "data"),
    "sessions": ("defs/sessions", "sessions"),
    "baselines": ("defs/baselines", "baselines"),
    "models": ("defs/gru4rec", "defs/vqgan", "defs/bart", "models", "retrieval"),
    "evaluation": (
        "defs/evaluation",
        "defs/gru4rec",
        "defs/bart",
        "defs/vqgan",
        "defs/registry",
        "evaluation",
        "retrieval",
    ),
    "ranking": ("defs/ranking", "ranking", "registry"),
    "serving": ("defs/registry", "registry"),
}
OWNERS = {"ingest": "team:data-platform", "sessions": "team:data-platform"}
ML_TEAM = "team:ml"
# what the weekly cycle must refresh (new data in, models compared, the served lists): the UI warns
# when a week has passed since the last materialization and fails a day later
WEEKLY = {"clean_transactions", "model_comparison", "recommendations"}
WEEKLY_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=dt.timedelta(days=8), warn_window=dt.timedelta(days=7)
)


@functools.cache
def domain_code_version(group: str) -> str:
    """A hash of every Python file of the group's folders (and the profiles that configure them)."""
    digest = hashlib.sha256()
    files = [PACKAGE / "profiles.py"]
    for folder in DOMAINS.get(group, ()):
        files += sorted((PACKAGE / folder).rglob("*.py"))
    for f in files:
        digest.update(f.relative_to(PACKAGE).as_posix().encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


def _conventions(spec: dg.AssetSpec) -> dg.AssetSpec:
    group = spec.group_name or "default"
    spec = spec.replace_attributes(
        owners=[OWNERS.get(group, ML_TEAM)], code_version=domain_code_version(group)
    )
    return dg.apply_freshness_policy(spec, WEEKLY_FRESHNESS) if spec.key.to_user_string() in WEEKLY else spec


@dg.definitions
def defs() -> dg.Definitions:
    loaded = dg.load_from_defs_folder(path_within_project=PACKAGE)
    # a module that imports an asset from another lists it again: one object per asset before mapping
    unique = list({id(a): a for a in loaded.assets or ()}.values())
    with warnings.catch_warnings():  # map_asset_specs is marked preview in Dagster 1.13; tested here
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.Definitions(
            assets=unique,
            asset_checks=loaded.asset_checks,
            jobs=loaded.jobs,
            schedules=loaded.schedules,
            sensors=loaded.sensors,
            resources=loaded.resources,
        ).map_asset_specs(func=_conventions)
