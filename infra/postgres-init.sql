-- MLflow keeps its own database beside Dagster's.
CREATE DATABASE mlflow OWNER hm_recs;
