"""The multimodal item index in LanceDB.

One row per article: its id, catalogue index, text, attributes, semantic IDs, its text vector and
the joined text + image vector of the item space (:mod:`hm_recs.retrieval.item_space`). The
table gets an ANN index (IVF_HNSW_SQ by default, or IVF_PQ; cosine) on the vector columns once
the catalogue is large enough, a full-text index over the descriptions, and is filtered by
attribute with SQL predicates. The location is a folder or an object-store URI. Nearest-neighbour
grounding of generated texts queries the ``vector`` column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

INDEX_TABLE = "items"


# ---------------------------------------------------------------------------------------------
# the index
# ---------------------------------------------------------------------------------------------
ANN_TYPES = ("IVF_HNSW_SQ", "IVF_PQ")


@dataclass(frozen=True)
class IndexSettings:
    index_type: str = "IVF_HNSW_SQ"  # or IVF_PQ (smaller, lower recall)
    num_partitions: int | None = None  # None: IVF_PQ about sqrt(rows); IVF_HNSW_SQ about rows / 20,000
    num_sub_vectors: int | None = None  # IVF_PQ: None is dimension / 8
    nprobes: int = 32
    refine_factor: int = 10
    ef: int = 64  # IVF_HNSW_SQ: candidates kept while searching a partition's graph
    ann_min_rows: int = 5000  # below this an exact scan is as fast: no ANN index is built


def build_index(
    uri: str,
    rows: pa.Table,
    vectors: np.ndarray,
    settings: IndexSettings = IndexSettings(),
    storage_options: dict | None = None,
    text_column: str = "text",
    name: str = INDEX_TABLE,
    metadata: dict[str, str] | None = None,
):
    """(Re)create the LanceDB table with the vectors, an ANN index and a full-text index;
    ``metadata`` goes into the table's schema (how the vectors were made)."""
    import lancedb
    from lancedb.index import FTS, IvfHnswSq, IvfPq

    dim = vectors.shape[1]
    table = rows.append_column(
        "vector", pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    )
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    db = lancedb.connect(uri, storage_options=storage_options)
    tbl = db.create_table(name, data=table, mode="overwrite")
    n = table.num_rows
    if settings.index_type not in ANN_TYPES:
        raise ValueError(f"index_type must be one of {ANN_TYPES}, got {settings.index_type!r}")
    if n >= settings.ann_min_rows:
        for column in [c for c in ("vector", "text_vector") if c in table.column_names]:
            d = table.schema.field(column).type.list_size
            if settings.index_type == "IVF_PQ":
                parts = settings.num_partitions or max(1, int(np.sqrt(n)))
                sub = settings.num_sub_vectors or max(1, d // 8 if d % 8 == 0 else 1)
                config = IvfPq(distance_type="cosine", num_partitions=parts, num_sub_vectors=sub)
            else:
                config = IvfHnswSq(
                    distance_type="cosine", num_partitions=settings.num_partitions or max(1, n // 20_000)
                )
            tbl.create_index(column, config=config, replace=True)
    tbl.create_index(text_column, config=FTS(), replace=True)  # the column comes first with an FTS config
    return tbl


class ItemIndex:
    def __init__(
        self,
        uri: str,
        storage_options: dict | None = None,
        name: str = INDEX_TABLE,
        settings: IndexSettings = IndexSettings(),
    ):
        import lancedb

        self.db = lancedb.connect(uri, storage_options=storage_options)
        self.table = self.db.open_table(name)
        self.settings = settings
        indexed = {c for i in self.table.list_indices() for c in getattr(i, "columns", [])}
        self.ann_columns = {c: c in indexed for c in ("vector", "text_vector")}
        self.has_ann = self.ann_columns["vector"]

    def _query(self, query, k: int, where: str | None, exact: bool, column: str):
        q = self.table.search(query, vector_column_name=column).distance_type("cosine").limit(k)
        if exact or not self.ann_columns.get(column):
            q = q.bypass_vector_index()
        else:
            q = q.nprobes(self.settings.nprobes).refine_factor(self.settings.refine_factor)
            if self.settings.index_type == "IVF_HNSW_SQ":
                q = q.ef(
                    max(self.settings.ef, k * max(1, self.settings.refine_factor))
                )  # the refined search asks for k x refine
        if where:
            q = q.where(where, prefilter=True)
        return q

    def search(
        self,
        vector: np.ndarray,
        k: int = 12,
        where: str | None = None,
        exact: bool = False,
        columns=("article_idx",),
        column: str = "vector",
    ) -> pa.Table:
        """The k nearest articles to one vector (with ``_distance``), optionally filtered by ``where``."""
        q = self._query(np.asarray(vector, np.float32), k, where, exact, column)
        return q.select([*columns, "_distance"]).to_arrow()

    def nearest(
        self, vectors: np.ndarray, k: int = 20, exact: bool = False, column: str = "vector", batch: int = 256
    ) -> tuple[np.ndarray, np.ndarray]:
        """(article_idx, cosine distance) of the k nearest articles per query vector, -1 / inf padded."""
        idx = np.full((len(vectors), k), -1, np.int64)
        dist = np.full((len(vectors), k), np.inf, np.float32)
        for start in range(0, len(vectors), batch):
            chunk = [np.asarray(v, np.float32) for v in vectors[start : start + batch]]
            res = self._query(chunk, k, None, exact, column).select(["article_idx", "_distance"]).to_arrow()
            if "query_index" not in res.column_names:  # a single query comes back without it
                res = res.append_column("query_index", pa.array(np.zeros(res.num_rows, np.int64)))
            df = res.to_pandas().sort_values(["query_index", "_distance", "article_idx"], kind="stable")
            for q, g in df.groupby("query_index", sort=False):
                m = min(k, len(g))
                idx[start + int(q), :m] = g["article_idx"].to_numpy()[:m]
                dist[start + int(q), :m] = g["_distance"].to_numpy()[:m]
        return idx, dist

    def metadata(self, key: str) -> str | None:
        """A value the index was built with (``build_index(metadata=...)``)."""
        found = (self.table.schema.metadata or {}).get(key.encode())
        return found.decode() if found is not None else None

    def vectors(self, column: str = "vector") -> tuple[np.ndarray, np.ndarray]:
        """(article_idx, vectors) of every row, in article order."""
        t = self.table.to_arrow().select(["article_idx", column])
        order = np.argsort(t.column("article_idx").to_numpy())
        flat = t.column(column).combine_chunks()
        dim = flat.type.list_size
        return t.column("article_idx").to_numpy()[order], flat.values.to_numpy().reshape(-1, dim)[order]

    def full_text(self, query: str, k: int = 10, columns=("article_idx", "text")) -> pa.Table:
        return self.table.search(query, query_type="fts").limit(k).select(list(columns)).to_arrow()
