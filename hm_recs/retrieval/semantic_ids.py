"""Semantic IDs: each article as a short code of a few tokens, learned from its content.

Residual k-means (the quantiser behind generative retrieval with semantic IDs, Rajput et al.,
NeurIPS 2023, without the autoencoder): k-means on the item vectors gives the first token; k-means
on what the first centroid leaves unexplained gives the second; and so on for ``levels`` tokens.
Articles that end in the same cell get a final disambiguation token (0, 1, ... in catalogue
order), so every article has a unique code of ``levels + 1`` tokens.

Similar articles share prefixes, so a model that learned to write "a black Ladieswear top" as a
prefix has learned something about every article under it, including articles nobody has bought
yet: codes come from content alone, which is how the semantic-ID recommender reaches cold-start
items that POP and GRU4Rec cannot rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SemanticIdSettings:
    levels: int = 3
    codebook_size: int | None = (
        None  # None: twice the levels-th root of the catalogue size, a power of 2 in [8, 256]
    )
    iterations: int = 25
    seed: int = 0

    def size_for(self, n_items: int) -> int:
        if self.codebook_size is not None:
            return int(self.codebook_size)
        return int(np.clip(2 ** np.ceil(np.log2(2 * max(n_items, 1) ** (1 / self.levels))), 8, 256))


@dataclass
class SemanticIds:
    codes: np.ndarray  # (n_items, levels + 1): cluster per level, then the disambiguation token
    centroids: list[np.ndarray]  # per level, (codebook_size, dim)
    codebook_size: int

    @property
    def levels(self) -> int:
        return len(self.centroids)

    @property
    def max_disambiguation(self) -> int:
        return int(self.codes[:, -1].max()) + 1 if len(self.codes) else 0

    def tokens(self, i: int) -> list[str]:
        """Article ``i`` as token strings: ``<sid0_12> <sid1_3> <sid2_7> <sidx_0>``."""
        return [sid_token(level, int(c)) for level, c in enumerate(self.codes[i, :-1])] + [
            sid_token(None, int(self.codes[i, -1]))
        ]

    def string(self, i: int) -> str:
        return " ".join(self.tokens(i))

    def stats(self) -> dict:
        prefixes = {tuple(r) for r in self.codes[:, :-1].tolist()}
        used = [len(np.unique(self.codes[:, level])) for level in range(self.levels)]
        return {
            "articles": int(len(self.codes)),
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "codes_used_per_level": used,
            "distinct_prefixes": len(prefixes),
            "largest_collision": self.max_disambiguation,
            "articles_sharing_a_prefix": float(np.mean(self.codes[:, -1] > 0) if len(self.codes) else 0.0),
        }


def sid_token(level: int | None, code: int) -> str:
    return f"<sid{level}_{code}>" if level is not None else f"<sidx_{code}>"


def vocabulary(levels: int, codebook_size: int, max_disambiguation: int) -> list[str]:
    """Every semantic-ID token a tokenizer needs."""
    return [sid_token(level, c) for level in range(levels) for c in range(codebook_size)] + [
        sid_token(None, j) for j in range(max_disambiguation)
    ]


def kmeans(x: np.ndarray, k: int, iterations: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding; an emptied cluster takes the point farthest from its
    centroid. Returns (assignment, centroids); deterministic for a seed."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    n = len(x)
    k = min(k, n)
    sq = (x * x).sum(1)
    centroids = np.empty((k, x.shape[1]), np.float32)
    centroids[0] = x[rng.integers(n)]
    closest = np.maximum(sq - 2 * x @ centroids[0] + centroids[0] @ centroids[0], 0)
    for j in range(1, k):
        total = closest.sum()
        pick = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centroids[j] = x[pick]
        closest = np.minimum(closest, np.maximum(sq - 2 * x @ centroids[j] + centroids[j] @ centroids[j], 0))

    def assign(c):
        d = sq[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]
        return d.argmin(1), d

    for _ in range(iterations):
        a, d = assign(centroids)
        new = np.zeros_like(centroids)
        np.add.at(new, a, x)
        counts = np.bincount(a, minlength=k)
        empty = counts == 0
        new[~empty] /= counts[~empty, None]
        if empty.any():
            far = np.argsort(-d[np.arange(n), a])[: int(empty.sum())]
            new[empty] = x[far]
        if np.allclose(new, centroids):
            centroids = new
            break
        centroids = new
    return assign(centroids)[0], centroids


def residual_kmeans(vectors: np.ndarray, settings: SemanticIdSettings = SemanticIdSettings()) -> SemanticIds:
    """Codes for every row of ``vectors`` (levels of residual k-means, then disambiguation)."""
    x = np.asarray(vectors, np.float32)
    if len(x) == 0:
        raise ValueError("no item vectors to quantise")
    k = settings.size_for(len(x))
    codes = np.zeros((len(x), settings.levels + 1), np.int64)
    residual = x.copy()
    centroids = []
    for level in range(settings.levels):
        a, c = kmeans(residual, k, settings.iterations, settings.seed + level)
        codes[:, level] = a
        residual = residual - c[a]
        centroids.append(c)
    seen: dict[tuple, int] = {}
    for i, prefix in enumerate(map(tuple, codes[:, :-1].tolist())):
        codes[i, -1] = seen.get(prefix, 0)
        seen[prefix] = codes[i, -1] + 1
    return SemanticIds(codes, centroids, k)


def catalogue_vocabulary(catalogue) -> list[str]:
    """Every semantic-ID token a catalogue's codes use (none without semantic IDs)."""
    if not catalogue.semantic_ids:
        return []
    codes = np.concatenate(list(catalogue.semantic_ids.values()))
    return vocabulary(codes.shape[1] - 1, int(codes[:, :-1].max()) + 1, int(codes[:, -1].max()) + 1)
