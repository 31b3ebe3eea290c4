"""BART on the shared protocol: histories -> sources -> a ranked list of real articles.

Two ways from a generator to articles (the ``bart_evaluation`` asset picks one on the validation
week):

* ``constrained``: beam search that can only write catalogue articles
  (:mod:`hm_recs.retrieval.constrained`); the list is the model's own ranking by sequence
  log-likelihood. The only method for semantic-ID variants, whose outputs are codes, not text.
* ``nearest``: free beam search writes ``generations`` texts; each is embedded in the item space
  (:mod:`hm_recs.retrieval.item_space`) and matched to its nearest articles in the LanceDB index;
  the lists are merged round robin. How far the best text lands from any article is recorded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from hm_recs.models.bart import SequenceCodec, generate
from hm_recs.retrieval.constrained import ItemTrie, constrained_beam_search

GROUNDING_METHODS = ("constrained", "nearest")


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


class BartRecommender:
    """The shared protocol's ``Recommender`` for one BART variant.

    ``beams`` is the beam width of constrained decoding (at least ``k`` is used); requests are
    decoded longest first, in batches whose encoder states and cross-attention caches (every beam
    keeps its request's) take about ``memory_bytes``. After
    each call, ``best`` holds every request's best generation as text and ``best_distance`` its
    cosine distance to the nearest article (0 for constrained decoding: it writes only articles)."""

    def __init__(
        self,
        name: str,
        model,
        codec: SequenceCodec,
        method: str = "constrained",
        beams: int = 20,
        index=None,
        space=None,
        generations: int = 4,
        memory_bytes: int = 1 << 30,
        trie: ItemTrie | None = None,
        trained_before: dt.date | None = None,
    ):
        if method not in GROUNDING_METHODS:
            raise ValueError(f"grounding must be one of {GROUNDING_METHODS}, got {method!r}")
        if method == "nearest" and codec.variant.semantic_ids:
            raise ValueError(
                f"{name}: a semantic-ID variant writes codes, not text: only constrained decoding applies"
            )
        if method == "nearest" and (index is None or space is None):
            raise ValueError("nearest grounding needs the item index and the item space")
        self.name, self.model, self.codec, self.method = name, model, codec, method
        self.trained_before = trained_before  # the training data's cutoff, when known
        self.beams, self.index, self.space, self.generations = beams, index, space, generations
        cfg = model.config
        # per beam and source token: the encoder state plus a key and a value per decoder layer
        self.row_tokens = max(1, int(memory_bytes // ((1 + 2 * cfg.decoder_layers) * cfg.d_model * 4)))
        self.trie = trie if trie is not None or method != "constrained" else ItemTrie(codec.targets())
        self.best: list[str] = []
        self.best_distance: list[float] = []
        self.top_items: list[int] = []

    def reset(self) -> None:
        self.best, self.best_distance, self.top_items = [], [], []

    def recommend(self, customers, histories, session_starts, k: int) -> np.ndarray:
        if self.method == "nearest":
            return self._nearest(histories, k)
        return self._constrained(histories, k)

    def _batches(self, histories, width: int):
        """Request indices in batches of similar source length, longest first."""
        lengths = np.array([min(len(h), self.codec.variant.history_items) for h in histories])
        order = np.argsort(-lengths, kind="stable")
        avg_piece = max(
            1.0, float(np.mean([len(self.codec.piece(h[-1])) for h in histories if len(h)] or [1]))
        )
        i = 0
        while i < len(order):
            tokens = min(self.codec.max_tokens, 2 + lengths[order[i]] * avg_piece)
            size = max(1, int(self.row_tokens // (tokens * width)))
            yield order[i : i + size]
            i += size

    def _constrained(self, histories, k: int) -> np.ndarray:
        device = next(self.model.parameters()).device
        beams = max(self.beams, k)
        out = np.full((len(histories), k), -1, np.int64)
        top = np.full(len(histories), -1, np.int64)
        for batch in self._batches(histories, beams):
            ids, mask = self.codec.encode_sources([histories[i] for i in batch], device)
            for i, ranked in zip(
                batch, constrained_beam_search(self.model, ids, mask, self.trie, beams), strict=True
            ):
                m = min(k, len(ranked.items))
                out[i, :m] = ranked.items[:m]
                top[i] = ranked.items[0] if len(ranked.items) else -1
        self.top_items += top.tolist()
        self.best += [self.codec.catalogue.texts[t] if t >= 0 else "" for t in top]
        self.best_distance += [0.0] * len(histories)
        return out

    def _nearest(self, histories, k: int) -> np.ndarray:
        n_gen = max(1, self.generations)
        texts = generate(
            self.model,
            self.codec,
            histories,
            batch_size=max(1, 256 // n_gen),
            num_beams=n_gen,
            num_return_sequences=n_gen,
        )
        flat = [t for group in texts for t in group]
        idx, dist = self.index.nearest(self.space.embed(flat), k, column="vector")
        out = np.full((len(histories), k), -1, np.int64)
        for i in range(len(histories)):
            rows = idx[i * n_gen : (i + 1) * n_gen]
            # round robin over the generations: each one's nearest, then each one's second, ...
            out[i] = merge_rankings([rows[:, j] for j in range(k)], k)
        self.best += [t[0] for t in texts]
        self.best_distance += dist[::n_gen, 0].astype(float).tolist()
        self.top_items += out[:, 0].tolist()
        return out


@torch.no_grad()
def distinct_generations(recommender: BartRecommender, histories: Sequence[np.ndarray], k: int = 12) -> dict:
    """Does the output change with the input? For different histories: how many different ranked
    lists (top ``k``) and best articles come out, and how much two lists overlap on average (Jaccard
    of their sets). A model that ignores its input gives one list; a good model may still put one
    trending article first for many customers, so the lists, not the first articles, are the test."""
    recommender.reset()
    lists = recommender.recommend(
        np.zeros(len(histories), np.int64), list(histories), np.zeros(len(histories), np.int64), k
    )
    tops = [int(r[0]) for r in lists if r[0] >= 0]
    sets = [set(r[r >= 0].tolist()) for r in lists]
    pairs = [
        (i, j) for i in range(len(sets)) for j in range(i + 1, min(len(sets), i + 21))
    ]  # each list against the next 20
    overlap = [len(sets[i] & sets[j]) / max(1, len(sets[i] | sets[j])) for i, j in pairs]
    n = max(1, len(histories))
    return {
        "sources": len(histories),
        "distinct_lists": len({tuple(r.tolist()) for r in lists}),
        "distinct_list_share": len({tuple(r.tolist()) for r in lists}) / n,
        "distinct_best_articles": len(set(tops)),
        "most_common_best_share": float(pd.Series(tops).value_counts(normalize=True).iloc[0])
        if tops
        else 1.0,
        "mean_jaccard": float(np.mean(overlap)) if overlap else 1.0,
    }
