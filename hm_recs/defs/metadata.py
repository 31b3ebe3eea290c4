"""Dagster metadata for Delta tables and plots: row counts, versions, schemas, previews, images."""

import base64
from pathlib import Path

import dagster as dg
import pyarrow as pa

from hm_recs.data.delta import Lake
from hm_recs.paths import state_dir
from hm_recs.reports import markdown_table
from hm_recs.tables import describe


def table_metadata(
    lake: Lake, name: str, preview_rows: int = 5, preview_columns: list[str] | None = None
) -> dict:
    table = lake.table(name)
    schema = pa.schema(table.schema().to_arrow())
    meta = {
        "dagster/row_count": dg.MetadataValue.int(lake.count(name)),
        "delta_version": dg.MetadataValue.int(table.version()),
        "table_uri": dg.MetadataValue.path(lake.uri(name)),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(f.name, str(f.type), description=describe(f.name)) for f in schema]
        ),
    }
    partitions = table.metadata().partition_columns
    if partitions:
        meta["partition_columns"] = dg.MetadataValue.text(", ".join(partitions))
    if preview_rows:
        head = lake.dataset(name).head(preview_rows, columns=preview_columns)
        meta["preview"] = dg.MetadataValue.md(markdown_table(head))
    return meta


def image_metadata(png: bytes, name: str, title: str) -> dict:
    """A plot saved under ``state/plots`` and shown inline in the Dagster UI (markdown image)."""
    folder = state_dir() / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    path.write_bytes(png)
    encoded = base64.b64encode(png).decode()
    return {
        name: dg.MetadataValue.md(f"**{title}**\n\n![{title}](data:image/png;base64,{encoded})"),
        f"{name}_path": dg.MetadataValue.path(str(Path(path))),
    }


def mlflow_metadata(mlflow, run, version=None) -> dict:
    """Links from the asset to its MLflow run (and registered version)."""
    meta = {"mlflow_run": dg.MetadataValue.url(mlflow.run_url(run)), "mlflow_run_id": run.run_id}
    if version is not None:
        meta["registered_model"] = f"{version.name} v{version.version}"
    return meta


# descriptions several assets' checks share
SANE_METRICS = "Every metric in [0, 1], its value inside its bootstrap interval, none NaN"
LOSS_DECREASED = "The training loss at the end is below the loss at the start (a model that trains)"


def checks(asset: str, **descriptions: str) -> list[dg.AssetCheckSpec]:
    """The asset's non-blocking checks, ``name=description``."""
    return [dg.AssetCheckSpec(name, asset=asset, description=d) for name, d in descriptions.items()]
