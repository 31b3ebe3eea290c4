"""Where trained models live: a local folder, or an S3-compatible bucket with a local working copy.

Every model artifact (checkpoints, weights, the BART tokenizer) is stored under a key such as
``gru4rec/test`` or ``vqgan/finetuned.safetensors``. Training writes into ``store.pull(key)`` (which
also fetches a previous run's checkpoints, so a killed run resumes in another worker) and ends
with ``store.push(key)``; a reader calls ``store.pull(key)``. With a local root both are no-ops on
the folder itself, so the laptop path has no copies. With ``s3://bucket/prefix`` the working copy
lives under a local cache folder, and a run worker that starts with an empty disk (a Kubernetes run
launcher's pod) gets what its upstream wrote: that is why no model goes straight to the local disk.

Why boto3 and not fsspec: s3fs pins a botocore that conflicts with the one MLflow and moto resolve
to here; boto3 is already installed, and S3 is the object store the deployment uses.
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

# every key in one place, as hm_recs/tables.py keeps the table names
VQGAN_BASE = "vqgan/base.safetensors"
VQGAN_FINETUNED = "vqgan/finetuned.safetensors"
VQGAN_CHECKPOINTS = "vqgan/finetune"
BART_TOKENIZER = "bart/tokenizer"


def gru4rec_key(target: str) -> str:
    """GRU4Rec's folder for one fit target: checkpoints and ``model.pt``."""
    return f"gru4rec/{target}"


def ranker_key(target: str) -> str:
    """The learned ranker's folder for one fit target: ``model.txt`` (LightGBM)."""
    return f"ranker/{target}"


def bart_key(variant: str, target: str) -> str:
    """A BART variant's folder for one fit target: ``run*/`` checkpoints and ``model/``."""
    return f"bart/{variant}/{target}"


def bart_grounding_key(variant: str) -> str:
    """How a BART variant's output becomes articles (chosen by its training asset): a JSON file."""
    return f"bart/{variant}/grounding.json"


@dataclass
class ModelStore:
    """``root``: a folder or ``s3://bucket/prefix``; ``cache``: the local working copy of a remote
    root; ``s3``: boto3 client keywords (endpoint_url, aws_access_key_id, ... region_name)."""

    root: str
    cache: Path
    s3: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        scheme = urlparse(self.root).scheme
        if scheme not in ("", "file", "s3"):
            raise ValueError(f"model store {self.root!r}: a folder or an s3:// URI, not {scheme}://")
        self.remote = scheme == "s3"
        if not self.remote:
            self.root = str(Path(self.root.removeprefix("file://")).resolve())

    # -- where things are -------------------------------------------------------------------------
    def uri(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def path(self, key: str) -> Path:
        """The local working path of ``key`` (the store itself when it is a folder)."""
        return (self.cache if self.remote else Path(self.root)) / key

    def exists(self, key: str) -> bool:
        if not self.remote:
            return self.path(key).exists()
        return bool(self._listing(key))

    # -- moving things ----------------------------------------------------------------------------
    def pull(self, key: str, required: bool = False) -> Path:
        """The local path of ``key`` with what the store holds: files whose stored copy changed since
        the last sync are fetched, files only here are kept (a killed run's checkpoints).
        ``required``: raise, naming the URI, when the store holds nothing under ``key``."""
        local = self.path(key)
        if not self.remote:
            if required and not local.exists():
                raise FileNotFoundError(f"the model store holds nothing at {self.uri(key)}")
            return local
        listing = self._listing(key)
        if required and not listing:
            raise FileNotFoundError(f"the model store holds nothing at {self.uri(key)}")
        known = self._manifest(key)
        bucket, prefix = self._bucket_prefix(key)
        client = self._client
        for name, etag in listing.items():
            target = self._local_file(key, name)
            if known.get(name) == etag and target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            client.download_file(bucket, self._object(prefix, name), str(partial))
            partial.replace(target)  # a reader never sees half a file
        self._save_manifest(key, listing)
        return local

    def push(self, key: str) -> str:
        """Store the local ``key`` (a file or a folder); objects under it that are no longer here are
        deleted, so the store holds what the writer holds. Returns the key's URI."""
        if not self.remote:
            return self.uri(key)
        local = self.path(key)
        if not local.exists():
            raise FileNotFoundError(f"nothing to store: {local} does not exist")
        bucket, prefix = self._bucket_prefix(key)
        client = self._client
        known = self._manifest(key)
        files = self._local_files(key)
        for name, path in files.items():
            if name in known and (path.stat().st_mtime <= self._manifest_time(key)):
                continue  # unchanged since it was last synced
            client.upload_file(str(path), bucket, self._object(prefix, name))
        stale = [n for n in self._listing(key) if n not in files]
        for start in range(0, len(stale), 1000):
            chunk = stale[start : start + 1000]
            client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": self._object(prefix, n)} for n in chunk]}
            )
        self._save_manifest(key, self._listing(key))
        return self.uri(key)

    def delete(self, key: str) -> None:
        """Remove ``key`` from the store and from the working copy."""
        local = self.path(key)
        if self.remote and self._listing(key):
            bucket, prefix = self._bucket_prefix(key)
            names = list(self._listing(key))
            self._client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": self._object(prefix, n)} for n in names]}
            )
            self._manifest_path(key).unlink(missing_ok=True)
        if local.is_dir():
            shutil.rmtree(local)
        elif local.exists():
            local.unlink()

    # -- S3 details -------------------------------------------------------------------------------
    @functools.cached_property
    def _client(self):
        """One boto3 client for the store's life (a client costs tens of milliseconds to build)."""
        import boto3

        return boto3.client("s3", **self.s3)

    def _bucket_prefix(self, key: str) -> tuple[str, str]:
        parsed = urlparse(self.uri(key))
        return parsed.netloc, parsed.path.lstrip("/")

    @staticmethod
    def _object(prefix: str, name: str) -> str:
        return prefix if name == "" else f"{prefix}/{name}"

    def _listing(self, key: str) -> dict[str, str]:
        """Stored objects of ``key`` -> ETag; the name ``""`` when ``key`` is a single object."""
        bucket, prefix = self._bucket_prefix(key)
        out: dict[str, str] = {}
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"]
                if name == prefix:
                    out[""] = obj["ETag"]
                elif name.startswith(prefix + "/"):
                    out[name[len(prefix) + 1 :]] = obj["ETag"]
        return out

    def _local_file(self, key: str, name: str) -> Path:
        return self.path(key) if name == "" else self.path(key) / name

    def _local_files(self, key: str) -> dict[str, Path]:
        local = self.path(key)
        if local.is_file():
            return {"": local}
        return {
            p.relative_to(local).as_posix(): p
            for p in sorted(local.rglob("*"))
            if p.is_file() and not p.name.endswith(".part")
        }

    def _manifest_path(self, key: str) -> Path:
        return self.cache / ".manifests" / (key.replace("/", "__") + ".json")

    def _manifest(self, key: str) -> dict[str, str]:
        path = self._manifest_path(key)
        return json.loads(path.read_text()) if path.exists() else {}

    def _manifest_time(self, key: str) -> float:
        path = self._manifest_path(key)
        return path.stat().st_mtime if path.exists() else 0.0

    def _save_manifest(self, key: str, listing: dict[str, str]) -> None:
        path = self._manifest_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(listing, sort_keys=True))
