"""Delta Lake tables through the ``deltalake`` package (delta-rs): no Spark jars needed.

Every write is one atomic Delta commit: readers see the old version or the new one, never a half
written table. ``overwrite`` replaces the table (re-running an asset is idempotent); with a
``predicate`` it replaces only the matching rows (a partition) in the same atomic way.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError


def _in_background(
    batches: Iterable[pa.RecordBatch], errors: list, depth: int = 4
) -> Iterator[pa.RecordBatch]:
    """Produce ``batches`` on a separate thread, at most ``depth`` ahead.

    delta-rs pulls the batches it writes from inside its async runtime; a producer that itself reads
    a Delta table there would nest runtimes and panic. On its own thread it cannot. A producer
    error is also put in ``errors``, so that the caller can raise it as it was.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for b in batches:
                q.put(b)
            q.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            errors.append(exc)
            q.put(exc)

    threading.Thread(target=produce, name="delta-write-producer", daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


WRITE_TOKEN = "hm_recs.write"  # commit metadata: which write made a commit
BatchSource = Callable[[], Iterable[pa.RecordBatch] | pa.RecordBatchReader]
"""A function that produces a write's batches afresh each time it is called (so it can be retried)."""


@dataclass(frozen=True)
class Lake:
    """A folder (local path or object-store URI) that holds the project's Delta tables by name."""

    root: str
    storage_options: Mapping[str, str] = field(default_factory=dict)

    def uri(self, name: str) -> str:
        if "://" in self.root:
            return f"{self.root.rstrip('/')}/{name}"
        return str(Path(self.root) / name)

    def _options(self) -> dict[str, str] | None:
        return dict(self.storage_options) or None

    def exists(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(name), storage_options=self._options())

    def table(self, name: str, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(self.uri(name), version=version, storage_options=self._options())
        except TableNotFoundError as exc:
            raise FileNotFoundError(
                f"Delta table {name!r} not found at {self.uri(name)}: materialize it first"
            ) from exc

    def read(self, name: str, columns: list[str] | None = None, filters=None) -> pa.Table:
        return self.table(name).to_pyarrow_table(columns=columns, filters=filters)

    def dataset(self, name: str) -> pds.Dataset:
        return self.table(name).to_pyarrow_dataset()

    def write(
        self,
        name: str,
        data: pa.Table | BatchSource | pa.RecordBatchReader | Iterable[pa.RecordBatch],
        *,
        schema: pa.Schema | None = None,
        mode: str = "overwrite",
        partition_by: list[str] | None = None,
        predicate: str | None = None,
        attempts: int = 5,
    ) -> int:
        """Write ``data`` as one commit and return the new table version.

        A write that lost a race with another writer of the same table (two ingests at once) is
        written again on the newer version, up to ``attempts`` times: what is written never depends
        on what it replaces, so the later writer wins as if the runs had queued. Losing shows two
        ways: delta-rs refuses the commit, or (a whole-table overwrite, whose conflict check only
        looks at removed files) it lands on a version other than the one after the version read,
        merged with the other writer's rows. A table is simply written again; batches only when
        given as a function that produces them afresh (a :data:`BatchSource`), since a stream that
        was read cannot be read twice.
        """
        retryable = callable(data) or isinstance(data, pa.Table)
        whole = mode == "overwrite" and predicate is None
        for attempt in range(attempts):
            read = self.version(name) if self.exists(name) else -1
            token = uuid.uuid4().hex
            try:
                version = self._write_once(
                    name, data() if callable(data) else data, schema, mode, partition_by, predicate, token
                )
                if not whole or version == read + 1:
                    return version
                lost = CommitFailedError(
                    f"{self.uri(name)}: another writer committed while version {read} was being "
                    f"replaced (landed as version {version})"
                )
            except CommitFailedError as exc:
                lost = exc
            if not retryable or attempt == attempts - 1:
                raise lost
            time.sleep(random.uniform(0.1, 0.4) * (attempt + 1))
        raise AssertionError("unreachable")

    def _write_once(self, name, data, schema, mode, partition_by, predicate, token: str) -> int | None:
        """One ``write_deltalake`` call; returns the version of the commit it made (found by ``token``)."""
        errors: list[BaseException] = []
        if not isinstance(data, pa.Table | pa.RecordBatchReader):
            if schema is None:
                raise ValueError("writing an iterable of batches needs its schema")
            data = pa.RecordBatchReader.from_batches(schema, _in_background(data, errors))
        kwargs = {}
        if predicate is None and mode == "overwrite":
            kwargs["schema_mode"] = "overwrite"
        if predicate is not None:
            kwargs["predicate"] = predicate
        try:
            write_deltalake(
                self.uri(name),
                data,
                mode=mode,
                partition_by=partition_by,
                storage_options=self._options(),
                commit_properties=CommitProperties(custom_metadata={WRITE_TOKEN: token}),
                **kwargs,
            )
        except Exception as exc:
            if errors:  # the data source failed: that error, not delta-rs's wrapper, is the news
                raise errors[0] from exc
            raise
        return next((c["version"] for c in self.table(name).history(64) if c.get(WRITE_TOKEN) == token), None)

    def replace_where(
        self, name: str, data: pa.Table, predicate: str, partition_by: list[str] | None = None
    ) -> int:
        """Replace the rows matching ``predicate`` with ``data`` in one commit (creating the table if
        needed); several writers may share a table, each owning its slice (retried as ``write``)."""
        if not self.exists(name):
            try:
                return self.write(name, data, mode="append", partition_by=partition_by)
            except CommitFailedError:
                pass  # another writer created it meanwhile: replace our slice in it
        return self.write(name, data, predicate=predicate, partition_by=partition_by)

    @property
    def is_local(self) -> bool:
        return "://" not in self.root or self.root.startswith("file://")

    def commit_parquet_files(
        self,
        name: str,
        folder: str,
        schema: pa.Schema,
        partition_by: list[str],
        replace: tuple[str, object, object] | None = None,
    ) -> int:
        """Add hive-partitioned Parquet files already written under the table's folder (by Spark)
        to the table in one commit, without reading or rewriting them.

        ``folder`` is relative to the table root (``<folder>/<col>=<value>/*.parquet``). With
        ``replace = (column, low, high)`` the commit also removes every existing file whose
        partition value lies in [low, high]: the partitions are replaced atomically.
        """
        from deltalake import Schema as DeltaSchema
        from deltalake.transaction import AddAction, create_table_with_add_actions

        root = Path(self.uri(name))
        actions = []
        for path in sorted((root / folder).rglob("*.parquet")):
            rel = path.relative_to(root).as_posix()
            values = dict(part.split("=", 1) for part in rel.split("/") if "=" in part)
            meta = pq.read_metadata(path)
            st = path.stat()
            actions.append(
                AddAction(
                    rel,
                    st.st_size,
                    {c: values.get(c) for c in partition_by},
                    int(st.st_mtime * 1000),
                    True,
                    json.dumps({"numRecords": meta.num_rows}),
                )
            )
        if not self.exists(name):
            create_table_with_add_actions(
                str(root), DeltaSchema.from_arrow(schema), actions, mode="append", partition_by=partition_by
            )
        elif replace is None:
            self.table(name).create_write_transaction(
                actions, mode="overwrite", schema=schema, partition_by=partition_by
            )
        else:
            col, lo, hi = replace
            filters = [(col, ">=", str(lo)), (col, "<=", str(hi))]
            self.table(name).create_write_transaction(
                actions, mode="overwrite", schema=schema, partition_by=partition_by, partition_filters=filters
            )
        return self.version(name)

    def version(self, name: str) -> int:
        return self.table(name).version()

    def tables(self) -> list[str]:
        """Every Delta table under the root (a folder holding ``_delta_log``), as lake names."""
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(
            self.root if "://" in self.root else str(Path(self.root).resolve())
        )
        try:
            found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        except OSError:
            return []
        logs = [f.path for f in found if f.type == pafs.FileType.Directory and f.path.endswith("/_delta_log")]
        return sorted(p[len(root.rstrip("/")) + 1 : -len("/_delta_log")] for p in logs)

    def maintain(self, name: str, retention_hours: int) -> dict[str, int]:
        """Compact small files, then delete files no version younger than ``retention_hours`` needs
        (old versions and the orphans of killed writes); time travel keeps working inside it."""
        table = self.table(name)
        compacted = table.optimize.compact()
        removed = table.vacuum(
            retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False
        )
        return {
            "files_added": int(compacted.get("numFilesAdded", 0)),
            "files_compacted": int(compacted.get("numFilesRemoved", 0)),
            "files_vacuumed": len(removed),
        }

    def restore(self, name: str, version: int) -> int:
        """Make ``version`` the table's content again, as a new commit (time travel keeps the
        rejected one); returns the new version."""
        self.table(name).restore(version)
        return self.version(name)

    def count(self, name: str) -> int:
        return self.dataset(name).count_rows()
