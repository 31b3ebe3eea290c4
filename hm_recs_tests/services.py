"""Real services on loopback for the production-path tests: a PostgreSQL database per test, an MLflow
tracking server, a Spark standalone cluster, an S3-compatible server. Each fails with the reason when
it cannot start; none is faked."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

PG_HOST = os.environ.get("HM_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("HM_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("HM_TEST_PG_USER", "postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL; its URL; dropped afterwards."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5
        )
    except psycopg2.OperationalError as e:
        raise RuntimeError(f"PostgreSQL at {PG_HOST}:{PG_PORT} (user {PG_USER}) is not reachable: {e}") from e
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        # the driver named: SQLAlchemy 2.1 would pick psycopg 3
        yield f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def background(cmd: list[str], log: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log_dir: Path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port with the given backend store; its URL."""
    port = free_port()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    cmd = [
        mlflow_bin,
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts.as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = log_dir / "mlflow-server.log"
    with background(cmd, log) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, log)
        yield url


@contextlib.contextmanager
def spark_standalone(work: Path, workers: int = 2, cores: int = 1, memory: str = "1g") -> Iterator[str]:
    """A Spark standalone master and workers from the installed pyspark distribution; the master URL."""
    import pyspark

    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    host, port, ui = "127.0.0.1", free_port(), free_port()
    env = {"SPARK_LOCAL_IP": host, "SPARK_WORKER_DIR": str(work / "worker"), "PYSPARK_PYTHON": sys.executable}
    with contextlib.ExitStack() as stack:
        master_log = work / "master.log"
        master = stack.enter_context(
            background(
                [
                    spark_class,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--webui-port",
                    str(ui),
                ],
                master_log,
                env,
            )
        )
        wait_http(f"http://{host}:{ui}/json/", master, master_log)
        url = f"spark://{host}:{port}"
        for i in range(workers):
            log = work / f"worker{i}.log"
            stack.enter_context(
                background(
                    [
                        spark_class,
                        "org.apache.spark.deploy.worker.Worker",
                        "--host",
                        host,
                        "--cores",
                        str(cores),
                        "--memory",
                        memory,
                        "--webui-port",
                        str(free_port()),
                        url,
                    ],
                    log,
                    env,
                )
            )
        _wait_workers(f"http://{host}:{ui}/json/", workers, work)
        yield url


def _wait_workers(url: str, n: int, work: Path, timeout: float = 90) -> None:
    import json

    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(url, timeout=2) as r:
                alive = [w for w in json.load(r).get("workers", []) if w.get("state") == "ALIVE"]
                if len(alive) >= n:
                    return
        time.sleep(0.5)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted(work.glob("worker*.log")))
    raise RuntimeError(f"{n} Spark workers did not register with the master within {timeout:.0f} s:\n{logs}")


@contextlib.contextmanager
def s3_server(log_dir: Path) -> Iterator[str]:
    """moto's S3-compatible server on a free loopback port; its endpoint URL."""
    port = free_port()
    log = log_dir / "moto.log"
    with background(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log
    ) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/moto-api/", proc, log)
        yield url
