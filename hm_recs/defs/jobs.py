"""Jobs over the asset graph.

A Dagster run has one partitioning, so the graph runs as three jobs: ``ingest`` (unpartitioned),
``sessionize`` (weekly partitions; a backfill of many weeks is one Spark run) and ``evaluate``
(split, baselines, training, evaluation, comparison, promotion, recommendations). ``hm-recs demo`` runs them in order; in the UI,
"Materialize all" launches the same as one backfill.
"""


import dagster as dg

ingest_job = dg.define_asset_job("ingest", selection=dg.AssetSelection.groups("ingest"), description="Kaggle files to clean Delta tables, image manifest and features")
sessionize_job = dg.define_asset_job("sessionize", selection=dg.AssetSelection.assets("sessions"), description="Spark sessionization of the selected weeks")
evaluate_job = dg.define_asset_job(
    "evaluate",
    selection=dg.AssetSelection.groups("sessions", "baselines", "models", "evaluation", "serving") - dg.AssetSelection.assets("sessions"),
    description="Time split, baselines, model training, evaluation on the shared protocol, comparison, champion promotion and the week's recommendations",
)
