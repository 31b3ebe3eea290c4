"""Every resource of the hm_recs code location, configured in one place.

Defaults run on a laptop with nothing to set up; each can be pointed elsewhere by environment
variable (the production deployment in ``infra/`` does so) or in the Dagster launchpad. The
variables are declared in ``hm_recs/settings.py``; the README's "Resources and settings" table
gives each resource's default and variables. ``build_resources`` reads and checks them all before
any work, so a bad value fails the code location's load with a message naming the variable.
"""

import contextlib
import dataclasses

import dagster as dg
from dagster_pyspark import PySparkResource
from pydantic import Field

from hm_recs.artifacts import ModelStore
from hm_recs.compute import DeviceSpec
from hm_recs.data.delta import Lake
from hm_recs.evaluation.protocol import EvaluationProtocol
from hm_recs.paths import (
    default_lake_uri,
    default_synthetic_dir,
    default_tracking_uri,
    mlflow_dir,
    models_dir,
    state_dir,
)
from hm_recs.profiles import VARIANTS  # the names only: models.bart imports torch and Lightning
from hm_recs.registry.tracking import TrackingSettings, asset_run
from hm_recs.sessions.spark import spark_conf
from hm_recs.settings import (
    checked_compute,
    checked_spark_memory,
    configured_profile,
    int_setting,
    is_set,
    setting,
)


class HMDataResource(dg.ConfigurableResource):
    """Where the H&M files are: a folder in the Kaggle layout (CSV, gzipped CSV or Parquet)."""

    data_dir: str = Field(
        description="Kaggle-layout folder: articles, customers, transactions_train, images/"
    )
    settle_seconds: int = Field(
        default=60, description="the file sensor ingests a file once its size has not changed for this long"
    )


class ObjectStoreSettings(dg.ConfigurableResource):
    """S3-compatible storage settings shared by the resources that may live in a bucket; each
    spells the options the way its library reads them."""

    aws_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto, ...)"
    )
    aws_access_key_id: str | None = Field(default=None, description="set from an EnvVar, never in a file")
    aws_secret_access_key: str | None = Field(default=None, description="set from an EnvVar, never in a file")
    aws_region: str | None = None
    aws_allow_http: bool = False

    def _options(
        self, endpoint: str, key_id: str, secret: str, region: str, allow_http: str
    ) -> dict[str, str]:
        opts = {
            endpoint: self.aws_endpoint_url,
            key_id: self.aws_access_key_id,
            secret: self.aws_secret_access_key,
            region: self.aws_region,
        }
        opts = {k: v for k, v in opts.items() if v}
        if self.aws_allow_http:
            opts[allow_http] = "true"
        return opts


class LakeResource(ObjectStoreSettings):
    """The Delta lake: a local folder or an object-store URI (``s3://bucket/prefix``)."""

    root: str = Field(description="Folder or URI that holds the project's Delta tables")

    def storage_options(self) -> dict[str, str]:
        """delta-rs' option names."""
        opts = self._options(
            "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP"
        )
        if opts:
            opts.setdefault("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
        return opts

    def open(self) -> Lake:
        """The lake as a ``Lake`` (read, write, versions, time travel)."""
        return Lake(self.root, self.storage_options())

    def scratch_dir(self) -> str:
        """A local folder for staging files (Spark output before it enters Delta)."""
        path = state_dir() / "scratch"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)


class LanceDBResource(ObjectStoreSettings):
    """The LanceDB item index: a local folder or an object-store URI (``s3://bucket/prefix``)."""

    uri: str = Field(description="Folder or URI of the LanceDB database")

    def storage_options(self) -> dict[str, str] | None:
        """LanceDB's (object_store's) option names."""
        names = ("aws_endpoint", "aws_access_key_id", "aws_secret_access_key", "aws_region", "allow_http")
        return self._options(*names) or None


class ModelStoreResource(ObjectStoreSettings):
    """Trained models and their checkpoints: a local folder or an object-store URI
    (``s3://bucket/prefix``) with a working copy under ``state/cache/models``."""

    root: str = Field(description="Folder or s3:// URI that holds checkpoints, weights and tokenizers")

    def store(self) -> ModelStore:
        """boto3's option names."""
        names = ("endpoint_url", "aws_access_key_id", "aws_secret_access_key", "region_name", "allow_http")
        opts = self._options(*names)
        opts.pop("allow_http", None)  # boto3 reads the scheme of endpoint_url
        return ModelStore(self.root, state_dir() / "cache" / "models", opts)


class BartResource(dg.ConfigurableResource):
    """What every BART asset shares: where the model comes from, the variants, the source budgets, how
    the output is decoded (the beams and generations a variant is grounded with, judged and served)."""

    pretrained: str | None = Field(
        default=None, description="hub id (facebook/bart-base, the paper's) or local path; None: from config"
    )
    size: str = Field(default="tiny", description="from-config size (pretrained None): tiny | small | base")
    max_source_tokens: int | None = Field(
        default=None,
        description="source budget of every variant; None: each variant's own (1,024, the paper's)",
    )
    source_tokens: dict[str, int] = Field(
        default_factory=dict, description="per-variant source budgets, over max_source_tokens"
    )
    variants: list[str] = list(VARIANTS)
    seed: int = 0
    beams: int = Field(default=20, description="constrained decoding's beam width")
    generations: int = Field(default=4, description="nearest grounding: texts generated per request")

    def variant_names(self) -> list[str]:
        unknown = [v for v in [*self.variants, *self.source_tokens] if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown BART variants {unknown}: choose from {sorted(VARIANTS)}")
        return list(self.variants)

    def budget(self, variant: str) -> int:
        """The variant's source budget in tokens."""
        from hm_recs.models.bart import VARIANTS as SPECS

        own = SPECS[variant].max_source_tokens
        return int(self.source_tokens.get(variant) or self.max_source_tokens or own)


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry: a local SQLite store by default, an ``http://`` server in production."""

    tracking_uri: str = Field(description="sqlite:///..., http://host:5000 or postgresql://...")
    artifact_location: str | None = Field(
        default=None, description="folder or s3:// prefix for the experiment's artifacts"
    )
    experiment: str = "hm_recs"
    ui_url: str = Field(default="http://127.0.0.1:5000", description="the MLflow UI, for links in Dagster")

    def settings(self) -> TrackingSettings:
        return TrackingSettings(self.tracking_uri, self.artifact_location, self.experiment)

    def run_url(self, run) -> str:
        return f"{self.ui_url.rstrip('/')}/{run.url_path}"

    @contextlib.contextmanager
    def run(
        self,
        context,
        name: str | None = None,
        lake: Lake | None = None,
        tables: tuple[str, ...] = (),
        role: str = "training",
    ):
        """One MLflow run for this asset materialization, tagged with the Dagster run, asset and
        partition, with the input tables' versions (datasets used for ``role``: training or
        evaluation); ended FINISHED or FAILED, never left RUNNING."""
        key = context.asset_key.to_user_string()
        tags = {
            "dagster.run_id": context.run.run_id,
            "dagster.asset_key": key,
            "dagster.job": context.job_name,
            "dagster.partition": context.partition_key if context.has_partition_key else None,
        }
        instance = context.instance

        def alive(run_id: str) -> bool:  # a run this instance does not know is left alone
            other = instance.get_run_by_id(run_id)
            return other is None or not other.is_finished

        inputs = {t: (lake.uri(t), lake.version(t)) for t in tables if lake.exists(t)} if lake else {}
        with asset_run(self.settings(), name or key, tags, alive, inputs, role, context.log.warning) as run:
            yield run


class ComputeResource(dg.ConfigurableResource):
    """The compute device every training stage shares: auto / cpu / cuda[:N], devices, precision,
    and the CPU threads of each step's process (0: torch's default, every core)."""

    device: str = "auto"
    num_devices: int = 1
    precision: str = "32-true"
    threads: int = 0

    def setup_for_execution(self, context) -> None:
        if self.threads > 0:
            import torch

            torch.set_num_threads(self.threads)

    def spec(self) -> DeviceSpec:
        return DeviceSpec(self.device, self.num_devices, self.precision)


class EvaluationProtocolResource(dg.ConfigurableResource):
    """The one protocol every model's evaluation asset applies (see hm_recs.evaluation.protocol)."""

    mask_history: bool = False
    collapse_repeats: bool = True
    n_bootstrap: int = 1000
    seed: int = 0

    def protocol(self) -> EvaluationProtocol:
        return EvaluationProtocol(**self.model_dump())


def _env_or(name: str, default: str) -> str | dg.EnvVar:
    return dg.EnvVar(name) if is_set(name) else default


_AWS_ENV = (
    ("aws_endpoint_url", "HM_S3_ENDPOINT_URL"),
    ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
    ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ("aws_region", "AWS_REGION"),
)


def configured_lake() -> Lake:
    """The lake the code location's resources point at, for use outside a run (CLI, demo, tests)."""
    aws = {k: setting(env) for k, env in _AWS_ENV if is_set(env)}
    return LakeResource(
        root=default_lake_uri(), aws_allow_http=bool(aws.get("aws_endpoint_url")), **aws
    ).open()


def build_resources() -> dict[str, object]:
    configured_profile()  # checked here too: a bad HM_PROFILE fails before any work
    aws = {k: dg.EnvVar(env) for k, env in _AWS_ENV if is_set(env)}
    bucket = {"aws_allow_http": bool(aws.get("aws_endpoint_url")), **aws}  # every s3:// resource's settings
    compute = checked_compute(
        setting("HM_DEVICE", "auto"), int_setting("HM_NUM_DEVICES", "1"), setting("HM_PRECISION", "32-true")
    )
    memory = checked_spark_memory(setting("HM_SPARK_DRIVER_MEMORY", "4g"))
    return {
        "hm_data": HMDataResource(
            data_dir=_env_or("HM_DATA_DIR", str(default_synthetic_dir())),
            settle_seconds=int_setting("HM_FILE_SETTLE_SECONDS", "60"),
        ),
        "lake": LakeResource(root=_env_or("HM_LAKE_URI", default_lake_uri()), **bucket),
        "pyspark": PySparkResource(
            spark_config=spark_conf(master=setting("HM_SPARK_MASTER"), driver_memory=memory)
        ),
        "evaluation_protocol": EvaluationProtocolResource(),
        "bart": BartResource(
            pretrained=setting("HM_BART_PRETRAINED") or None, size=setting("HM_BART_SIZE", "tiny")
        ),
        "lancedb": LanceDBResource(uri=_env_or("HM_LANCEDB_URI", str(state_dir() / "lancedb")), **bucket),
        "models": ModelStoreResource(root=_env_or("HM_MODELS_URI", str(models_dir())), **bucket),
        "mlflow": MLflowResource(
            tracking_uri=_env_or("HM_MLFLOW_TRACKING_URI", default_tracking_uri()),
            artifact_location=_env_or("HM_MLFLOW_ARTIFACTS", str(mlflow_dir() / "artifacts")),
            ui_url=setting("HM_MLFLOW_UI", "http://127.0.0.1:5000"),
        ),
        # threads 0: torch's default, every core (one torch step at a time)
        "compute": ComputeResource(
            **dataclasses.asdict(compute), threads=int_setting("HM_TORCH_THREADS", "0")
        ),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())
