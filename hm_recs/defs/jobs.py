"""Jobs over the asset graph.

A Dagster run has one partitioning, so the graph runs as three jobs: ``ingest`` (unpartitioned),
``sessionize`` (weekly partitions; a backfill of many weeks is one Spark run) and ``evaluate``
(split, baselines, training, evaluation, comparison, promotion, recommendations). ``hm-recs demo``
runs them in order; in the UI, "Materialize all" launches the same as one backfill.

``evaluate`` takes the configured run profile (``HM_PROFILE``, ``hm_recs.profiles``): its
launchpad opens on that profile's settings. On a CPU profile the jobs run their steps in the run's
own process, one after another (as ``make demo`` does); on ``paper`` a process per step, with the
torch steps one at a time, so two models never fight over the cores or the GPU.
"""

import dagster as dg

from hm_recs.profiles import VARIANTS, bart_variants, executor_config, run_config
from hm_recs.settings import configured_profile

PROFILE = configured_profile()
_settings = executor_config(PROFILE)
EXECUTOR = dg.in_process_executor if _settings is None else dg.multiprocess_executor.configured(_settings)

# runs that write the same lake tables carry the same value of this tag; the instance's run
# coordinator queues them one at a time (dagster.yaml, infra/dagster.yaml) instead of letting two
# Delta commits race
WRITES = "hm_recs/writes"
ingest_job = dg.define_asset_job(
    "ingest",
    selection=dg.AssetSelection.groups("ingest"),
    tags={WRITES: "ingest"},
    executor_def=EXECUTOR,
    description="Kaggle files to clean Delta tables, image manifest and features",
)
sessionize_job = dg.define_asset_job(
    "sessionize",
    selection=dg.AssetSelection.assets("sessions"),
    tags={WRITES: "sessions"},
    executor_def=EXECUTOR,
    description="Spark sessionization of the selected weeks",
)
# the BART models of variants the profile does not train stay out of the job, so a launch from the UI
# trains what the automation trains
_variants = bart_variants(run_config(PROFILE))
_unused = [f"bart_model_{v}" for v in VARIANTS if _variants is not None and v not in _variants]
evaluate_job = dg.define_asset_job(
    "evaluate",
    selection=dg.AssetSelection.groups("sessions", "baselines", "models", "evaluation", "ranking", "serving")
    - dg.AssetSelection.assets("sessions", *_unused),
    description="Time split, baselines, model training, evaluation on the shared protocol, candidates and "
    "the learned ranker, comparison, "
    "champion promotion and the week's "
    f"recommendations; settings of the `{PROFILE}` run profile (HM_PROFILE)",
    config=run_config(PROFILE),
    executor_def=EXECUTOR,
    tags={"hm_recs/profile": PROFILE},
)
