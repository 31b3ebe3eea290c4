"""Jobs over the asset graph.

A Dagster run has one partitioning, so the graph runs as three jobs: ``ingest`` (unpartitioned),
``sessionize`` (weekly partitions; a backfill of many weeks is one Spark run) and ``evaluate``
(split, baselines, training, evaluation, comparison, promotion, recommendations). ``hm-recs demo``
runs them in order; in the UI, "Materialize all" launches the same as one backfill.

``evaluate`` takes the configured run profile (``HM_PROFILE``, ``hm_recs.profiles``): its
launchpad opens on that profile's settings, and on the multiprocess executor its torch steps run
one at a time, so two models do not fight over the CPU cores.
"""


import dagster as dg

from hm_recs.defs.resources import configured_profile
from hm_recs.profiles import executor_config, run_config

PROFILE = configured_profile()

ingest_job = dg.define_asset_job("ingest", selection=dg.AssetSelection.groups("ingest"), description="Kaggle files to clean Delta tables, image manifest and features")
sessionize_job = dg.define_asset_job("sessionize", selection=dg.AssetSelection.assets("sessions"), description="Spark sessionization of the selected weeks")
evaluate_job = dg.define_asset_job(
    "evaluate",
    selection=dg.AssetSelection.groups("sessions", "baselines", "models", "evaluation", "serving") - dg.AssetSelection.assets("sessions"),
    description="Time split, baselines, model training, evaluation on the shared protocol, comparison, champion promotion and the week's "
                f"recommendations; settings of the `{PROFILE}` run profile (HM_PROFILE)",
    config=run_config(PROFILE),
    executor_def=dg.multiprocess_executor.configured(executor_config(PROFILE)),
    tags={"hm_recs/profile": PROFILE},
)
