"""The article catalogue BART reads, from the lake or from a registered bundle.

Four tables make it: the article features (texts), the image tokens and the VQGAN codebook (image
variants), the semantic IDs (semantic-ID variants). Training, evaluation, the item index and the
served model all build it through this one class, so the model that is served reads its
catalogue exactly as it was read when it was judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hm_recs.models.bart import Catalogue, item_text
from hm_recs.tables import ARTICLE_FEATURES, CODEBOOK, IMAGE_TOKENS, SEMANTIC_IDS

# the bundle's file of each table
FILES = {
    "articles": "articles.parquet",
    "tokens": "tokens.parquet",
    "codebook": "codebook.npy",
    "semantic_ids": "semantic_ids.parquet",
}


@dataclass
class CatalogueTables:
    """``articles`` sorted by ``article_idx``; the others None where they were not built."""

    articles: pd.DataFrame
    tokens: pd.DataFrame | None = None
    codebook: np.ndarray | None = None
    semantic_ids: pd.DataFrame | None = None

    @classmethod
    def from_lake(cls, lk) -> CatalogueTables:
        articles = lk.read(ARTICLE_FEATURES).to_pandas().sort_values("article_idx", ignore_index=True)
        tokens = (
            lk.read(IMAGE_TOKENS, columns=["article_id", "tokens"]).to_pandas()
            if lk.exists(IMAGE_TOKENS)
            else None
        )
        codebook = None
        if lk.exists(CODEBOOK):
            cb = lk.read(CODEBOOK).to_pandas().sort_values("code")
            codebook = np.stack(cb["embedding"].to_numpy()).astype(np.float32)
        sids = lk.read(SEMANTIC_IDS).to_pandas() if lk.exists(SEMANTIC_IDS) else None
        return cls(articles, tokens, codebook, sids)

    @classmethod
    def from_folder(cls, folder: Path) -> CatalogueTables:
        folder = Path(folder)

        def optional(name, read):
            path = folder / FILES[name]
            return read(path) if path.exists() else None

        articles = pd.read_parquet(folder / FILES["articles"]).sort_values("article_idx", ignore_index=True)
        return cls(
            articles,
            optional("tokens", pd.read_parquet),
            optional("codebook", np.load),
            optional("semantic_ids", pd.read_parquet),
        )

    def write(self, folder: Path) -> dict[str, Path]:
        """Each present table as its bundle file in ``folder``; file name -> path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, value in (
            ("articles", self.articles),
            ("tokens", self.tokens),
            ("codebook", self.codebook),
            ("semantic_ids", self.semantic_ids),
        ):
            if value is None:
                continue
            path = folder / FILES[name]
            if isinstance(value, np.ndarray):
                np.save(path, value)
            else:
                value.to_parquet(path, index=False)
            out[FILES[name]] = path
        return out

    def image_codes(self) -> list:
        """Each article's VQGAN codes (``article_idx`` order), None without a usable photo."""
        if self.tokens is None:
            return [None] * len(self.articles)
        by_id = dict(zip(self.tokens["article_id"], self.tokens["tokens"], strict=True))
        return [
            None if by_id.get(a) is None else np.asarray(by_id[a], np.int64)
            for a in self.articles["article_id"]
        ]

    def catalogue(self) -> Catalogue:
        """Texts by ``article_idx``, image codes, the codebook, and the semantic IDs (one array per
        set whose every article has one)."""
        texts = [item_text(r) for r in self.articles.to_dict("records")]
        sids = {}
        if self.semantic_ids is not None:
            table = self.semantic_ids.set_index("article_id").reindex(self.articles["article_id"])
            for which in ("multimodal", "text"):
                if which in table.columns and not table[which].isna().any():
                    sids[which] = np.stack([np.asarray(v, np.int64) for v in table[which]])
        n_codes = 0 if self.codebook is None else len(self.codebook)
        return Catalogue(texts, self.image_codes(), self.codebook, n_codes, sids)
