"""Benchmark: the LanceDB item index over the full real catalogue (105,542 articles) and BART
training speed per variant.

    .venv/bin/python benchmarks/bench_item_index.py [--queries 1000]

Index: vectors are the item space's (all-MiniLM-L6-v2 text vectors of every article's short
text joined with a 64-d image part from VQGAN-sized random codes: the real catalogue's photos are
not here), as the ``item_index`` asset builds them; plus how far apart articles are in it.
Reports build time, top-12 query latency p50/p99
(one query at a time, as a service would see them) and the ANN's recall@12 against exact search.

BART: tokens/s of training per variant (tiny model, batch 16, 1,024-token sources from the real
sample's histories when ../shared is present, synthetic otherwise; semantic IDs from the vectors).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--nprobes", type=int, default=32)
    ap.add_argument("--refine", type=int, default=10)
    ap.add_argument("--index-type", default="IVF_HNSW_SQ", help="IVF_HNSW_SQ (default) or IVF_PQ")
    ap.add_argument("--skip-bart", action="store_true", help="only the index part")
    args = ap.parse_args()

    from hm_recs.models.bart import (
        VARIANTS,
        BartTrainingSettings,
        Catalogue,
        PairData,
        PurchaseSequences,
        SequenceCodec,
        build_model,
        item_text,
        new_model,
        train_bart,
    )
    from hm_recs.paths import shared_dir
    from hm_recs.retrieval.item_index import IndexSettings, ItemIndex, build_index
    from hm_recs.retrieval.item_space import TextEncoder, image_vectors, join, separation
    from hm_recs.retrieval.semantic_ids import SemanticIdSettings, residual_kmeans, vocabulary

    arts = pd.read_csv(
        shared_dir() / "hm_articles_full" / "articles.csv", dtype={"article_id": str}, keep_default_na=False
    )
    texts = [item_text(r) for r in arts.to_dict("records")]
    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(1024, 64)).astype(np.float32)
    codes = [rng.integers(0, 1024, 256) for _ in texts]

    t0 = time.perf_counter()
    text = TextEncoder().encode(texts)
    embed_s = time.perf_counter() - t0
    vectors = join(text, image_vectors(codes, codebook), 0.3)
    sep = separation(vectors)
    rows = pa.table(
        {
            "article_idx": np.arange(len(texts)),
            "article_id": arts["article_id"].tolist(),
            "text": (arts["prod_name"] + ". " + arts["detail_desc"]).tolist(),
            "index_group_name": arts["index_group_name"].tolist(),
        }
    )
    folder = tempfile.mkdtemp()
    settings = IndexSettings(index_type=args.index_type, nprobes=args.nprobes, refine_factor=args.refine)
    t0 = time.perf_counter()
    build_index(folder, rows, vectors, settings)
    build_s = time.perf_counter() - t0
    index = ItemIndex(folder, settings=settings)
    queries = vectors[rng.choice(len(vectors), args.queries, replace=False)] + rng.normal(
        scale=0.02, size=(args.queries, vectors.shape[1])
    ).astype(np.float32)
    lat, recall = [], []
    for q in queries:
        t = time.perf_counter()
        ann = index.search(q, 12).column("article_idx").to_numpy()
        lat.append(time.perf_counter() - t)
        exact = index.search(q, 12, exact=True).column("article_idx").to_numpy()
        recall.append(len(set(ann) & set(exact)) / 12)
    lat = np.array(lat) * 1000

    # BART training speed per variant
    purchases = None
    sample = shared_dir() / "hm_real_sample" / "transactions_train.csv"
    ids = arts["article_id"].tolist()
    pos = {a: i for i, a in enumerate(ids)}
    if sample.exists():
        t = pd.read_csv(sample, dtype={"article_id": str})
        t = t[t["article_id"].isin(pos)]
        purchases = [
            (i, np.array([pos[a] for a in g["article_id"]]))
            for i, (_, g) in enumerate(t.groupby("customer_id"))
        ]
    else:
        purchases = [(c, rng.integers(0, len(ids), 30)) for c in range(500)]
    sids = residual_kmeans(vectors, SemanticIdSettings())
    cat = Catalogue(texts, codes, codebook, 1024, {"multimodal": sids.codes, "text": sids.codes})
    tok, _ = build_model(
        None,
        "tiny",
        texts,
        n_codes=1024,
        seed=0,
        sid_vocabulary=vocabulary(sids.levels, sids.codebook_size, sids.max_disambiguation),
    )
    seqs = PurchaseSequences(
        np.arange(len(purchases)),
        [p for _, p in purchases],
        [np.zeros(len(p), "datetime64[D]") for _, p in purchases],
    )
    pairs = np.array([(s, j) for s, (_, p) in enumerate(purchases) for j in range(1, len(p))])[:320]
    bart_rows = []
    for name, variant in ({} if args.skip_bart else VARIANTS).items():
        codec = SequenceCodec(cat, variant, tok, 1024)
        fit = np.mean([codec.source(seqs.items[s][:j])[1] for s, j in pairs])
        res = train_bart(
            new_model(None, "tiny", tok),
            PairData(seqs, pairs, codec),
            Path(folder) / f"bart-{name}",
            BartTrainingSettings(batch_size=16, accumulate=1, max_steps=8, checkpoint_every=10**6),
            fingerprint=str(time.time()),
            progress=False,
        )
        bart_rows.append((name, float(fit), res.tokens_per_second, res.seconds / res.steps))

    print(
        f"\n### LanceDB item index and BART training speed ({dt.date.today().isoformat()}, CPU, "
        f"{psutil.cpu_count()} cores)\n"
    )
    print(
        f"Machine: {platform.machine()}, torch {torch.__version__}. Command: `.venv/bin/python "
        f"benchmarks/bench_item_index.py {' '.join(sys.argv[1:])}`\n"
    )
    print(
        f"Index over {len(texts):,} real articles, {vectors.shape[1]}-d cosine vectors, {args.index_type}, "
        f"nprobes {args.nprobes}, refine factor {args.refine}:\n"
    )
    print(
        "| text embedding (s) | index build incl. FTS (s) | p50 latency (ms) | p99 latency (ms) | ANN "
        "recall@12 vs exact "
        "| median / 5th pct. cosine distance between articles |\n|---|---|---|---|---|---|"
    )
    print(
        f"| {embed_s:.1f} | {build_s:.1f} | {np.percentile(lat, 50):.2f} | {np.percentile(lat, 99):.2f} | "
        f"{np.mean(recall):.4f} "
        f"| {sep['median_distance']:.3f} / {sep['p05_distance']:.3f} |"
    )
    if bart_rows:
        print(
            "\n| BART variant (tiny, from config) | items per source (mean) | training tokens/s | s/step "
            "(batch 16) |\n|---|---|---|---|"
        )
    for name, items, tps, sps in bart_rows:
        print(f"| {name} | {items:.1f} | {tps:,.0f} | {sps:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
