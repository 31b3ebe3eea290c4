"""Spark session settings for hm_recs (local mode by default, a standalone cluster by URL)."""

from __future__ import annotations

# Settings every hm_recs Spark session needs; see ../shared/notes/field-notes.md for the why.
BASE_CONF: dict[str, str] = {
    "spark.app.name": "hm_recs",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
}


def spark_conf(
    master: str | None = None,
    driver_memory: str = "4g",
    shuffle_partitions: int = 16,
    local_dir: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The configuration of a session: ``master`` is ``local[*]`` by default, ``spark://host:port``
    for a standalone cluster (the ``pyspark`` resource passes ``HM_SPARK_MASTER``)."""
    conf = dict(BASE_CONF)
    conf["spark.master"] = master or "local[*]"
    conf["spark.driver.memory"] = driver_memory
    conf["spark.sql.shuffle.partitions"] = str(shuffle_partitions)
    if conf["spark.master"].startswith("local"):
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        conf["spark.driver.host"] = "127.0.0.1"
    if local_dir:
        conf["spark.local.dir"] = local_dir
    conf.update(extra or {})
    return conf


def get_spark(conf: dict[str, str] | None = None):
    """A SparkSession with ``conf`` (reuses the running one in this process, as Spark does)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for k, v in (conf or spark_conf()).items():
        builder = builder.config(k, v)
    return builder.getOrCreate()
