"""BART: sequence construction, truncation, image tokens, training, the pretrained-path loader, the
LanceDB item index and grounding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hm_recs.models.bart import (
    ITEM,
    VARIANTS,
    BartTrainingSettings,
    Catalogue,
    SourceBuilder,
    Variant,
    build_examples,
    build_model,
    compact_codes,
    generate,
    image_token,
    item_text,
    load_bart,
    save_bart,
    train_bart,
)
from hm_recs.retrieval.bart_recommender import BartRecommender, customer_sequences
from hm_recs.retrieval.item_index import (
    ItemIndex,
    ItemTrie,
    build_index,
    image_embeddings,
    join_vectors,
    merge_rankings,
    text_embeddings,
)
from hm_recs_tests.conftest import FULL_ARTICLES, requires_full_articles

TEXTS = [
    "Mira, T-shirt, Black, Solid, Ladieswear",
    "Lola, Trousers, Dark Blue, Denim, Ladieswear",
    "Kato, Sneakers, White, Solid, Menswear",
    "Vivi, Dress, Red, Dot, Divided",
    "Sana, Socks, Grey, Stripe, Sport",
]


@pytest.fixture(scope="module")
def catalogue():
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 16, 16) for _ in TEXTS]
    codes[4] = None  # no photo
    codebook = rng.normal(size=(16, 4)).astype(np.float32)
    return Catalogue(TEXTS, codes, codebook, 16)


@pytest.fixture(scope="module")
def tiny_model(catalogue):
    return build_model(None, "tiny", TEXTS * 20, n_codes=16, seed=0)


def test_item_text():
    row = {"prod_name": "Strap top", "product_type_name": "Vest top", "colour_group_name": "Black", "graphical_appearance_name": "Solid", "index_group_name": "Ladieswear"}
    assert item_text(row) == "Ladieswear, Vest top, Black, Solid, Strap top"


def test_sequences_from_a_hand_made_history(catalogue, tiny_model):
    tok, _ = tiny_model
    builder = SourceBuilder(catalogue, VARIANTS["text_large"], tok, max_tokens=1024)
    ex = build_examples([(7, np.array([0, 1, 2, 3]))], builder, catalogue)
    assert ex.targets == [TEXTS[1], TEXTS[2], TEXTS[3]]
    assert ex.sources[0] == f"{ITEM} {TEXTS[0]}"
    assert ex.sources[2] == " ".join(f"{ITEM} {TEXTS[i]}" for i in (0, 1, 2))
    assert ex.items_in_source.tolist() == [1, 2, 3] and ex.customers.tolist() == [7, 7, 7]
    small = SourceBuilder(catalogue, Variant("s", 2, "none"), tok, 1024)
    assert small.source([0, 1, 2, 3])[0] == f"{ITEM} {TEXTS[2]} {ITEM} {TEXTS[3]}"  # the newest two


def test_truncation_keeps_the_newest_items(catalogue, tiny_model):
    tok, _ = tiny_model
    builder = SourceBuilder(catalogue, VARIANTS["text_large"], tok, max_tokens=1024)
    one = builder.item(0)[1]
    tight = SourceBuilder(catalogue, VARIANTS["text_large"], tok, max_tokens=2 * one + 2 + 1)
    src, n = tight.source([0, 1, 3, 0])
    assert n == 2 and src.endswith(TEXTS[0]) and TEXTS[3] in src and TEXTS[1] not in src
    assert len(tok(src)["input_ids"]) <= 2 * one + 3


def test_image_tokens_round_trip_through_the_tokenizer(catalogue, tiny_model):
    tok, model = tiny_model
    assert model.get_input_embeddings().num_embeddings == len(tok)
    full = catalogue.item_string(0, VARIANTS["image_full"])
    ids = tok(full, add_special_tokens=False)["input_ids"]
    img_ids = [tok.convert_tokens_to_ids(image_token(c)) for c in catalogue.image_codes[0]]
    assert ids[-16:] == img_ids  # one token per code, in grid order
    assert tok.decode(ids[-16:]).replace(" ", "") == "".join(image_token(c) for c in catalogue.image_codes[0])
    assert catalogue.item_string(4, VARIANTS["image_full"]) == f"{ITEM} {TEXTS[4]}"  # no photo, no image tokens
    compact = catalogue.item_string(0, VARIANTS["image_compact"])
    assert compact.count("<img_") == 4


def test_compact_codes_pool_and_snap_to_the_codebook():
    codebook = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    codes = np.array([1, 1, 2, 2, 1, 1, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0])  # a 4x4 grid: top-left 1, top-right 2, bottom 0
    assert compact_codes(codes, codebook, grid=2).tolist() == [1, 2, 0, 0]


def test_a_tiny_model_trains_and_its_loss_falls(catalogue, tiny_model, tmp_path):
    tok, _ = tiny_model
    _, model = build_model(None, "tiny", [], 16, seed=1, tokenizer=tok)
    seqs = [(c, np.array([0, 1, 2, 3, 4]) if c % 2 else np.array([3, 2, 1, 0])) for c in range(20)]
    ex = build_examples(seqs, SourceBuilder(catalogue, VARIANTS["text_large"], tok, 256), catalogue)
    settings = BartTrainingSettings(learning_rate=3e-3, batch_size=8, accumulate=1, max_steps=100, max_source_tokens=256, checkpoint_every=50)
    result = train_bart(model, tok, ex, tmp_path / "run", settings, fingerprint="x", progress=False)
    assert result.steps == 100 and np.mean(result.loss[-5:]) < 0.5 * np.mean(result.loss[:5])
    out = generate(model, tok, [f"{ITEM} {TEXTS[0]}"], 256)
    assert out[0][0] == TEXTS[1]  # it learned "after the T-shirt come the trousers"
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_pretrained_path_loader_on_a_model_the_test_saves(catalogue, tiny_model, tmp_path):
    tok, model = tiny_model
    folder = save_bart(model, tok, tmp_path / "bart", {"note": "test"})
    tok2, model2, extra = load_bart(folder)
    assert extra == {"note": "test"} and len(tok2) == len(tok)
    # the same path works as `pretrained`, the way a hub id would
    tok3, model3 = build_model(str(folder), "ignored", [], n_codes=16)
    assert len(tok3) == len(tok) and model3.get_input_embeddings().num_embeddings == len(tok)
    tok4, model4 = build_model(str(folder), "ignored", [], n_codes=32)  # a larger codebook adds tokens and rows
    assert len(tok4) == len(tok) + 16 and model4.get_input_embeddings().num_embeddings == len(tok4)


def test_index_grounding_returns_valid_articles_only(catalogue, tiny_model, tmp_path):
    import pyarrow as pa

    tok, model = tiny_model
    text = text_embeddings(model, tok, TEXTS)
    image = image_embeddings(catalogue.image_codes, catalogue.codebook)
    vectors = join_vectors(text, image, 0.5)
    rows = pa.table({"article_idx": np.arange(5), "article_id": [f"{i:010d}" for i in range(5)], "text": TEXTS, "item_text": TEXTS,
                     "text_vector": pa.FixedSizeListArray.from_arrays(pa.array(text.reshape(-1), pa.float32()), text.shape[1])})
    build_index(str(tmp_path / "db"), rows, vectors)
    index = ItemIndex(str(tmp_path / "db"))
    idx, dist = index.nearest(text[:2], k=3, column="text_vector")
    assert idx[:, 0].tolist() == [0, 1] and np.allclose(dist[:, 0], 0, atol=1e-4)  # each text finds itself
    assert index.full_text("Sneakers", k=2).column("article_idx").to_pylist()[0] == 2
    rec = BartRecommender("bart", model, tok, SourceBuilder(catalogue, VARIANTS["text_large"], tok, 256), index, method="nearest", generations=2)
    lists = rec.recommend(np.zeros(3), [np.array([0]), np.array([1, 2]), np.array([], np.int64)], np.zeros(3), 5)
    assert lists.shape == (3, 5) and set(lists.ravel()) <= set(range(5)) | {-1} and len(rec.generated) == 3
    trie = ItemTrie(tok, TEXTS)
    rec = BartRecommender("bart", model, tok, SourceBuilder(catalogue, VARIANTS["text_large"], tok, 256), trie=trie, method="constrained", generations=3)
    lists = rec.recommend(np.zeros(2), [np.array([0]), np.array([3])], np.zeros(2), 5)
    assert set(lists.ravel()) <= set(range(5)) | {-1}
    assert all(g in TEXTS for g in rec.generated)  # constrained decoding only spells real items


def test_merge_rankings():
    assert merge_rankings([[3, 1], [1, 4, -1], [2]], 4).tolist() == [3, 1, 4, 2]
    assert merge_rankings([[5]], 3).tolist() == [5, -1, -1]


def test_customer_sequences_collapse_repeats_and_respect_dates():
    df = pd.DataFrame({"customer_idx": [1, 1, 1, 2], "article_idx": [5, 5, 6, 7],
                       "t_dat": np.array(["2020-01-01", "2020-01-01", "2020-01-03", "2020-01-02"], dtype="datetime64[D]"),
                       "is_consecutive_repeat": [False, True, False, False]})
    assert [(c, s.tolist()) for c, s in customer_sequences(df)] == [(1, [5, 6]), (2, [7])]
    assert [(c, s.tolist()) for c, s in customer_sequences(df, end="2020-01-02")] == [(1, [5]), (2, [7])]


@requires_full_articles
def test_index_build_and_query_on_real_catalogue_rows(tiny_model, tmp_path):
    import pyarrow as pa

    tok, model = tiny_model
    arts = pd.read_csv(FULL_ARTICLES, dtype={"article_id": str}, nrows=3000, keep_default_na=False)
    texts = [item_text(r) for r in arts.to_dict("records")]
    text = text_embeddings(model, tok, texts)
    rows = pa.table({"article_idx": np.arange(len(texts)), "article_id": arts["article_id"].tolist(), "text": (arts["prod_name"] + ". " + arts["detail_desc"]).tolist(),
                     "item_text": texts, "index_group_name": arts["index_group_name"].tolist(),
                     "text_vector": pa.FixedSizeListArray.from_arrays(pa.array(text.reshape(-1), pa.float32()), text.shape[1])})
    build_index(str(tmp_path / "db"), rows, text)
    index = ItemIndex(str(tmp_path / "db"))
    res = index.search(text[10], k=12, where="index_group_name = 'Menswear'", columns=("article_idx", "index_group_name"))
    assert res.num_rows > 0 and set(res.column("index_group_name").to_pylist()) == {"Menswear"}
    hits = index.full_text("denim", k=5, columns=("article_idx", "text")).column("text").to_pylist()
    assert hits and all("denim" in h.lower() for h in hits)
