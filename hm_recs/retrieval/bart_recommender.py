"""BART on the shared protocol: generate the next item's text, ground it to real articles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hm_recs.models.bart import Catalogue, SourceBuilder, generate, item_text
from hm_recs.retrieval.item_index import ItemIndex, ItemTrie, merge_rankings, text_embeddings

GROUNDING_METHODS = ("nearest", "constrained")


def customer_sequences(purchases: pd.DataFrame, end=None, start=None) -> list[tuple[int, np.ndarray]]:
    """Each customer's purchases (consecutive repeats collapsed) in time order, optionally limited
    to days in [start, end]."""
    t = purchases["t_dat"].to_numpy().astype("datetime64[D]")
    keep = ~purchases["is_consecutive_repeat"].to_numpy()
    if end is not None:
        keep &= t <= np.datetime64(end, "D")
    if start is not None:
        keep &= t >= np.datetime64(start, "D")
    df = purchases[keep]
    return [(int(c), g.to_numpy(np.int64)) for c, g in df.groupby("customer_idx", sort=True)["article_idx"]]


def catalogue_from_tables(articles: pd.DataFrame, tokens: pd.DataFrame | None = None, codebook: np.ndarray | None = None) -> Catalogue:
    """Texts by ``article_idx`` from the article features, image codes from the image tokens."""
    articles = articles.sort_values("article_idx")
    texts = [item_text(r) for r in articles.to_dict("records")]
    codes: list = [None] * len(texts)
    if tokens is not None:
        by_id = dict(zip(tokens["article_id"], tokens["tokens"], strict=True))
        codes = [None if by_id.get(a) is None else np.asarray(by_id[a], np.int64) for a in articles["article_id"]]
    return Catalogue(texts, codes, codebook, 0 if codebook is None else len(codebook))


class BartRecommender:
    """The shared protocol's ``Recommender``: histories -> sources -> generation -> grounding."""

    def __init__(self, name: str, model, tokenizer, builder: SourceBuilder, index: ItemIndex | None = None,
                 trie: ItemTrie | None = None, method: str = "nearest", generations: int = 4, batch_size: int = 32,
                 embedder: tuple | None = None):
        if method not in GROUNDING_METHODS:
            raise ValueError(f"grounding must be one of {GROUNDING_METHODS}, got {method!r}")
        if method == "nearest" and index is None:
            raise ValueError("nearest grounding needs the item index")
        if method == "constrained" and trie is None:
            raise ValueError("constrained grounding needs the item trie")
        self.name, self.model, self.tokenizer, self.builder = name, model, tokenizer, builder
        self.index, self.trie, self.method, self.generations, self.batch_size = index, trie, method, generations, batch_size
        # the (model, tokenizer) whose encoder made the index's text vectors; queries use the same
        self.embedder = embedder or (model, tokenizer)
        self.generated: list[str] = []  # the best generation of every request so far, in order
        self.best_distance: list[float] = []  # cosine distance from it to the nearest article (0: an item text)

    def reset(self) -> None:
        self.generated, self.best_distance = [], []

    def sources(self, histories: Sequence[np.ndarray]) -> list[str]:
        return [self.builder.source(h)[0] for h in histories]

    def recommend(self, customers, histories, session_starts, k: int) -> np.ndarray:
        sources = self.sources(histories)
        if self.method == "nearest":
            return self._nearest(sources, k)
        return self._constrained(sources, k)

    def _nearest(self, sources: list[str], k: int) -> np.ndarray:
        n_gen = max(1, self.generations)
        texts = generate(self.model, self.tokenizer, sources, self.builder.max_tokens, batch_size=self.batch_size,
                         num_beams=n_gen, num_return_sequences=n_gen)
        self.generated += [t[0] for t in texts]
        flat = [t for group in texts for t in group]
        emb = text_embeddings(self.embedder[0], self.embedder[1], flat)
        idx, dist = self.index.nearest(emb, k, column="text_vector")
        self.best_distance += dist[::n_gen, 0].tolist()
        out = np.full((len(sources), k), -1, np.int64)
        for i in range(len(sources)):
            rows = idx[i * n_gen : (i + 1) * n_gen]
            # round robin over the generations: each one's nearest, then each one's second, ...
            out[i] = merge_rankings([rows[:, j] for j in range(k)], k)
        return out

    def _constrained(self, sources: list[str], k: int) -> np.ndarray:
        n_gen = max(1, min(k, self.generations))
        start = self.model.config.decoder_start_token_id
        texts = generate(self.model, self.tokenizer, sources, self.builder.max_tokens, batch_size=self.batch_size,
                         num_beams=n_gen, num_return_sequences=n_gen, prefix_allowed_tokens_fn=self.trie.prefix_fn(start))
        self.generated += [t[0] for t in texts]
        self.best_distance += [0.0 if t[0] in self.trie.text_to_items else 1.0 for t in texts]
        out = np.full((len(sources), k), -1, np.int64)
        for i, group in enumerate(texts):
            out[i] = merge_rankings([self.trie.text_to_items.get(t, []) for t in group], k)
        return out
