"""The item space in LanceDB and the semantic IDs learned from it."""

import time

import dagster as dg
import numpy as np
import pyarrow as pa

from hm_recs.defs.ingest.assets import article_features
from hm_recs.defs.metadata import checks, table_metadata
from hm_recs.defs.resources import ComputeResource, LakeResource, LanceDBResource
from hm_recs.defs.vqgan.assets import image_tokens
from hm_recs.models.bart import item_text
from hm_recs.profiles import TORCH_STEP
from hm_recs.reports import markdown_table
from hm_recs.retrieval.catalogue import CatalogueTables
from hm_recs.retrieval.item_index import IndexSettings, ItemIndex, build_index
from hm_recs.retrieval.item_space import (
    DEFAULT_IMAGE_WEIGHT,
    ItemSpace,
    TextEncoder,
    image_vectors,
    separation,
    space_settings,
)
from hm_recs.retrieval.semantic_ids import SemanticIdSettings, residual_kmeans
from hm_recs.tables import ARTICLE_FEATURES, SEMANTIC_IDS


class ItemIndexConfig(dg.Config):
    text_encoder: str | None = (
        None  # sentence-transformers id or folder; None: all-MiniLM-L6-v2 from its wheel (offline)
    )
    image_weight: float = DEFAULT_IMAGE_WEIGHT  # share of the image part in the joined vector
    index_type: str = "IVF_HNSW_SQ"  # or IVF_PQ (smaller, lower recall: benchmarks/RESULTS.md)
    num_partitions: int | None = None
    num_sub_vectors: int | None = None
    min_median_distance: float = (
        0.05  # the separation check fails when the median pairwise cosine distance is below
    )


@dg.asset(
    group_name="models",
    kinds={"lancedb"},
    op_tags=TORCH_STEP,
    deps=[image_tokens, article_features],
    check_specs=checks(
        "item_index",
        articles_are_distinguishable="Median pairwise cosine distance between articles above a floor",
    ),
)
def item_index(
    context: dg.AssetExecutionContext,
    config: ItemIndexConfig,
    lake: LakeResource,
    lancedb: LanceDBResource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """Every article in LanceDB: text, attributes, a sentence-encoder text vector, the VQGAN image
    vector and their join (the item space grounding and the semantic IDs use), with an ANN index
    and full-text search."""
    lk = lake.open()
    tables = CatalogueTables.from_lake(lk)
    articles, codebook = tables.articles, tables.codebook
    texts = [item_text(r) for r in articles.to_dict("records")]
    t0 = time.perf_counter()
    encoder = TextEncoder(config.text_encoder, compute.spec().torch_device())
    text = encoder.encode(texts, progress=True)
    image = image_vectors(tables.image_codes(), codebook) if codebook is not None else None
    space = ItemSpace(encoder, 0 if image is None else image.shape[1], config.image_weight)
    vectors = space.embed(texts, image) if image is not None else text
    rows = pa.table(
        {
            "article_idx": articles["article_idx"].to_numpy().astype(np.int64),
            "article_id": articles["article_id"].tolist(),
            "text": [
                f"{t}. {d}" if d else t
                for t, d in zip(texts, articles["detail_desc"].fillna("").tolist(), strict=True)
            ],
            "item_text": texts,
            "product_type_name": articles["product_type_name"].tolist(),
            "index_group_name": articles["index_group_name"].tolist(),
            "colour_group_name": articles["colour_group_name"].tolist(),
            "has_image": [
                bool(image is not None and np.any(v))
                for v in (image if image is not None else [None] * len(texts))
            ],
            "text_vector": pa.FixedSizeListArray.from_arrays(
                pa.array(text.reshape(-1), pa.float32()), text.shape[1]
            ),
        }
    )
    settings = IndexSettings(
        index_type=config.index_type,
        num_partitions=config.num_partitions,
        num_sub_vectors=config.num_sub_vectors,
    )
    tbl = build_index(
        lancedb.uri, rows, vectors, settings, lancedb.storage_options(), metadata=space_settings(space)
    )
    seconds = time.perf_counter() - t0
    probe = ItemIndex(lancedb.uri, lancedb.storage_options())
    example = probe.full_text(texts[0].split(",")[0], k=3, columns=("article_id", "item_text"))
    sep = {"joined": separation(vectors), "text": separation(text)}
    context.log.info(f"item space: {sep}")
    ok = sep["joined"]["median_distance"] >= config.min_median_distance
    return dg.MaterializeResult(
        metadata={
            "rows": tbl.count_rows(),
            "vector_dim": int(vectors.shape[1]),
            "text_dim": int(text.shape[1]),
            "text_encoder": encoder.describe(),
            "image_weight": config.image_weight if image is not None else 0.0,
            "ann_index": probe.has_ann,
            "uri": dg.MetadataValue.path(lancedb.uri),
            "build_seconds": round(seconds, 1),
            "separation": dg.MetadataValue.json(sep),
            "full_text_example": dg.MetadataValue.md(
                markdown_table(example.select(["article_id", "item_text"]))
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="articles_are_distinguishable",
                passed=bool(ok),
                metadata={
                    "median_distance": sep["joined"]["median_distance"],
                    "floor": config.min_median_distance,
                },
            )
        ],
    )


class SemanticIdConfig(dg.Config):
    levels: int = 3
    codebook_size: int | None = (
        None  # None: from the catalogue size (2 x n^(1/levels), a power of 2 in [8, 256])
    )
    iterations: int = 25
    seed: int = 0


@dg.asset(
    group_name="models",
    kinds={"deltalake"},
    deps=[item_index],
    check_specs=checks(
        "semantic_ids",
        every_article_has_a_unique_code=(
            "Every article's semantic ID (codes + disambiguation token) is unique"
        ),
    ),
)
def semantic_ids(
    config: SemanticIdConfig, lake: LakeResource, lancedb: LanceDBResource
) -> dg.MaterializeResult:
    """Every article's semantic ID: residual k-means over its joined text + image vector
    (``multimodal``) and, for the text-only twin, over its text vector alone (``text``); a final
    token makes each code unique. Codes come from content, so unsold articles have one too."""
    lk = lake.open()
    index = ItemIndex(lancedb.uri, lancedb.storage_options())
    settings = SemanticIdSettings(config.levels, config.codebook_size, config.iterations, config.seed)
    idx, joined = index.vectors("vector")
    _, text = index.vectors("text_vector")
    ids = {"multimodal": residual_kmeans(joined, settings), "text": residual_kmeans(text, settings)}
    articles = (
        lk.read(ARTICLE_FEATURES, columns=["article_idx", "article_id"])
        .to_pandas()
        .set_index("article_idx")
        .loc[idx]
    )
    table = pa.table(
        {
            "article_idx": pa.array(idx, pa.int64()),
            "article_id": articles["article_id"].tolist(),
            **{k: pa.array(v.codes.tolist(), pa.list_(pa.int32())) for k, v in ids.items()},
            "multimodal_tokens": [ids["multimodal"].string(i) for i in range(len(idx))],
        }
    )
    lk.write(SEMANTIC_IDS, table)
    unique = all(len({tuple(r) for r in v.codes.tolist()}) == len(idx) for v in ids.values())
    meta = table_metadata(lk, SEMANTIC_IDS, preview_columns=["article_id", "multimodal_tokens"])
    meta["codes"] = dg.MetadataValue.json({k: v.stats() for k, v in ids.items()})
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(
                check_name="every_article_has_a_unique_code", passed=unique, metadata={"articles": len(idx)}
            )
        ],
    )
