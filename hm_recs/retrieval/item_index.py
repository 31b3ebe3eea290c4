"""The multimodal item index in LanceDB, and grounding of generated text to real articles.

One row per article: its id, catalogue index, text, attributes, and a vector that joins a text
embedding (the BART encoder's mean hidden state over the item's text) with an image embedding
(the mean of the article's VQGAN code embeddings), each L2-normalised and weighted. The table
gets an ANN index (IVF_HNSW_SQ by default, or IVF_PQ; cosine) for the whole catalogue, a full-text index over the
descriptions, and is filtered by attribute with SQL predicates. The location is a folder or an
object-store URI.

Grounding turns a generated item text into a ranked list of real articles. Two methods:

* ``nearest``: embed the generated text the same way and take the nearest articles in the index;
* ``constrained``: decode only token sequences that spell a real item text (a prefix trie over the
  catalogue's texts as ``prefix_allowed_tokens_fn``), with beam search, so every output is an
  article.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

INDEX_TABLE = "items"


# ---------------------------------------------------------------------------------------------
# embeddings
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def text_embeddings(model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 64) -> np.ndarray:
    """Mean of the BART encoder's last hidden states over each text's tokens, L2-normalised."""
    device = next(model.parameters()).device
    encoder = model.get_encoder()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i : i + batch_size]), max_length=max_length, truncation=True, padding=True, return_tensors="pt").to(device)
        h = encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append(((h * mask).sum(1) / mask.sum(1).clamp_min(1)).float().cpu().numpy())
    emb = np.concatenate(out) if out else np.zeros((0, model.config.d_model), np.float32)
    return _normalise(emb)


def image_embeddings(codes: Sequence[np.ndarray | None], codebook: np.ndarray) -> np.ndarray:
    """Mean code embedding per article (zeros without a photo), L2-normalised."""
    out = np.zeros((len(codes), codebook.shape[1]), np.float32)
    for i, c in enumerate(codes):
        if c is not None and len(c):
            out[i] = codebook[np.asarray(c, np.int64)].mean(0)
    return _normalise(out)


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype(np.float32)


def join_vectors(text: np.ndarray, image: np.ndarray | None, image_weight: float = 0.5) -> np.ndarray:
    """[ (1 - w) * text , w * image ], so cosine similarity weighs the two parts by w."""
    if image is None or image_weight <= 0:
        return text.astype(np.float32)
    return np.concatenate([(1 - image_weight) * text, image_weight * image], axis=1).astype(np.float32)


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


def build_index(uri: str, rows: pa.Table, vectors: np.ndarray, settings: IndexSettings = IndexSettings(),
                storage_options: dict | None = None, text_column: str = "text", name: str = INDEX_TABLE):
    """(Re)create the LanceDB table with the vectors, an ANN index and a full-text index."""
    import lancedb
    from lancedb.index import FTS, IvfHnswSq, IvfPq

    dim = vectors.shape[1]
    table = rows.append_column("vector", pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim))
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
                config = IvfHnswSq(distance_type="cosine", num_partitions=settings.num_partitions or max(1, n // 20_000))
            tbl.create_index(column, config=config, replace=True)
    tbl.create_index(text_column, config=FTS(), replace=True)  # the column comes first with an FTS config
    return tbl


class ItemIndex:
    def __init__(self, uri: str, storage_options: dict | None = None, name: str = INDEX_TABLE, settings: IndexSettings = IndexSettings()):
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
                q = q.ef(max(self.settings.ef, k * max(1, self.settings.refine_factor)))  # the refined search asks for k x refine
        if where:
            q = q.where(where, prefilter=True)
        return q

    def search(self, vector: np.ndarray, k: int = 12, where: str | None = None, exact: bool = False, columns=("article_idx",),
               column: str = "vector") -> pa.Table:
        """The k nearest articles to one vector (with ``_distance``), optionally filtered by ``where``."""
        q = self._query(np.asarray(vector, np.float32), k, where, exact, column)
        return q.select([*columns, "_distance"]).to_arrow()

    def nearest(self, vectors: np.ndarray, k: int = 20, exact: bool = False, column: str = "vector", batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
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

    def full_text(self, query: str, k: int = 10, columns=("article_idx", "text")) -> pa.Table:
        return self.table.search(query, query_type="fts").limit(k).select(list(columns)).to_arrow()


# ---------------------------------------------------------------------------------------------
# constrained decoding
# ---------------------------------------------------------------------------------------------
class ItemTrie:
    """Token-id prefix trie over the catalogue's item texts, for ``prefix_allowed_tokens_fn``."""

    def __init__(self, tokenizer, texts: Sequence[str]):
        self.root: dict = {}
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.start = getattr(tokenizer, "_decoder_start", None)
        self.text_to_items: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            self.text_to_items.setdefault(t, []).append(i)
        for t in self.text_to_items:
            ids = tokenizer(t, add_special_tokens=False)["input_ids"] + [self.eos]
            node = self.root
            for tok in ids:
                node = node.setdefault(tok, {})

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        node = self.root
        for tok in prefix:
            node = node.get(tok)
            if node is None:
                return [self.eos]
        return list(node) or [self.eos]

    def prefix_fn(self, decoder_start: int):
        """A ``prefix_allowed_tokens_fn`` for BART: skip the decoder start and the forced <s>."""
        skip = {decoder_start, self.bos}

        def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
            ids = input_ids.tolist()
            while ids and ids[0] in skip:
                ids = ids[1:]
            if len(input_ids) == 1:
                return [self.bos]
            return self.allowed(ids)

        return fn


def merge_rankings(candidate_lists: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """One ranked list from several (best list first): first occurrence wins, -1 pads."""
    out = np.full(k, -1, np.int64)
    seen, n = set(), 0
    for lst in candidate_lists:
        for a in lst:
            a = int(a)
            if a >= 0 and a not in seen:
                seen.add(a)
                out[n] = a
                n += 1
                if n == k:
                    return out
    return out
