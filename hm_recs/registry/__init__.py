"""MLflow: tracked training runs, recommenders as pyfunc models, the registry and champion promotion."""
