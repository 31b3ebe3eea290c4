"""Retrieval: the catalogue trie and constrained beam search (exact against teacher forcing), the item
space (a real sentence encoder that separates articles), semantic IDs, the LanceDB index with
nearest grounding, and the pieces of BART's evaluation (which model a week may use, paired
differences, cold start)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
import torch

from hm_recs.evaluation.protocol import EvaluationResult, TargetWeek
from hm_recs.models.bart import VARIANTS, Catalogue, SequenceCodec, build_model, item_text, save_bart
from hm_recs.retrieval.bart_evaluation import bought_before, cold_start_rows, model_for_week, paired_rows
from hm_recs.retrieval.bart_recommender import BartRecommender, merge_rankings
from hm_recs.retrieval.constrained import ItemTrie, constrained_beam_search
from hm_recs.retrieval.item_index import ItemIndex, build_index
from hm_recs.retrieval.item_space import (
    ItemSpace,
    TextEncoder,
    image_vectors,
    join,
    separation,
    space_from_settings,
    space_settings,
)
from hm_recs.retrieval.semantic_ids import SemanticIdSettings, kmeans, residual_kmeans
from hm_recs_tests.conftest import FULL_ARTICLES, requires_full_articles

TEXTS = [
    "Ladieswear, T-shirt, Black, Solid, Mira",
    "Ladieswear, T-shirt, White, Solid, Mira",
    "Ladieswear, Trousers, Dark Blue, Denim, Lola",
    "Menswear, Sneakers, White, Solid, Kato",
    "Divided, Dress, Red, Dot, Vivi",
    "Sport, Socks, Grey, Stripe, Sana",
    "Sport, Socks, Grey, Stripe, Sana",  # the same text as the one before: one leaf, two articles
]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


@pytest.fixture(scope="module")
def tiny():
    tok, model = build_model(None, "tiny", TEXTS * 20, seed=0)
    return tok, model.eval()


def test_trie_walks_and_expands_sequences():
    trie = ItemTrie([[0, 5, 6, 2], [0, 5, 7, 2], [0, 8, 2], [0, 8, 2]], items=[10, 11, 12, 13])
    assert trie.n_items == 4 and trie.depth == 4
    assert (
        trie.items_of([0, 8, 2]) == [12, 13]
        and trie.items_of([0, 5, 6, 2]) == [10]
        and trie.items_of([0, 9]) == []
    )
    rows, toks, _ = trie.expand(np.array([trie.walk([0]), trie.walk([0, 5])]))
    assert rows.tolist() == [0, 0, 1, 1] and toks.tolist() == [5, 8, 6, 7]
    with pytest.raises(ValueError, match="prefix"):
        ItemTrie([[1, 2], [1, 2, 3]])


def _teacher_forced(model, ids, mask, sequences, start):
    """log p(sequence | source) for every sequence, one full forward pass each (no beam search)."""
    out = []
    for seq in sequences:
        dec = torch.tensor([[start, *seq[:-1]]])
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        out.append(float(logp[torch.arange(len(seq)), torch.tensor(seq)].sum()))
    return np.array(out)


def test_constrained_beam_search_is_exact_and_returns_distinct_articles_by_score(tiny):
    tok, model = tiny
    codec = SequenceCodec(Catalogue(TEXTS, [None] * len(TEXTS)), VARIANTS["text_large"], tok, 128)
    trie = ItemTrie(codec.targets())
    ids, mask = codec.encode_sources([[0, 2], [3]])
    with torch.no_grad():
        ranked = constrained_beam_search(
            model, ids, mask, trie, beams=8
        )  # wider than the 6 distinct texts: exhaustive
        for r, ranking in enumerate(ranked):
            exact = _teacher_forced(
                model, ids[r : r + 1], mask[r : r + 1], codec.targets(), model.config.decoder_start_token_id
            )
            assert sorted(ranking.items.tolist()) == list(range(len(TEXTS)))  # only real articles, each once
            assert np.all(np.diff(ranking.scores) <= 1e-9)  # best first
            np.testing.assert_allclose(
                ranking.scores, exact[ranking.items], atol=1e-4
            )  # the scores are log p(article | history)
            assert ranking.items.tolist().index(5) + 1 == ranking.items.tolist().index(
                6
            )  # a shared text: together, catalogue order
        narrow = constrained_beam_search(model, ids, mask, trie, beams=2)
    assert all(len(set(n.items.tolist())) == len(n.items) >= 2 for n in narrow)
    assert narrow[0].items[0] == ranked[0].items[0] or narrow[0].scores[0] <= ranked[0].scores[0]


def test_the_item_space_separates_articles(encoder):
    vec = encoder.encode(TEXTS)
    sep = separation(vec)
    assert sep["median_distance"] > 0.1  # the untrained BART encoder gave 3e-6
    sim = vec @ vec.T
    assert sim[5, 6] == pytest.approx(1.0, abs=1e-5)  # the same text, the same vector
    assert sim[0, 1] > sim[0, 3]  # two colours of one T-shirt are closer than a T-shirt and sneakers


@requires_full_articles
def test_the_item_space_separates_real_catalogue_articles(encoder):
    arts = pd.read_csv(FULL_ARTICLES, dtype={"article_id": str}, nrows=1500, keep_default_na=False)
    texts = [item_text(r) for r in arts.to_dict("records")]
    sep = separation(encoder.encode(texts), sample=1500)
    assert sep["median_distance"] > 0.2 and sep["p05_distance"] > 0.05


def test_image_vectors_are_centred_and_joined_by_weight():
    codebook = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    img = image_vectors([np.array([0, 0]), np.array([1, 1]), None], codebook)
    assert np.allclose(img[2], 0) and np.allclose(np.linalg.norm(img[:2], axis=1), 1)
    assert img[0] @ img[1] == pytest.approx(-1.0)  # centred: the two photos point apart
    joined = join(np.array([[1.0, 0.0]]), img[:1], 0.25)
    assert joined[0, :2].tolist() == [0.75, 0.0] and np.linalg.norm(joined[0, 2:]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        join(np.ones((1, 2)), img[:1], 1.0)


def test_kmeans_and_semantic_ids_on_clustered_vectors():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 10
    x = np.concatenate([c + rng.normal(size=(25, 8)) for c in centres]).astype(np.float32)
    a, _ = kmeans(x, 4, seed=1)
    assert all(len(set(a[i * 25 : (i + 1) * 25])) == 1 for i in range(4)) and len(set(a)) == 4
    ids = residual_kmeans(x, SemanticIdSettings(levels=2, codebook_size=4, seed=0))
    assert len({tuple(r) for r in ids.codes.tolist()}) == len(x)  # unique codes
    assert all(
        len(set(ids.codes[i * 25 : (i + 1) * 25, 0])) == 1 for i in range(4)
    )  # a cluster shares its first token
    again = residual_kmeans(x, SemanticIdSettings(levels=2, codebook_size=4, seed=0))
    assert np.array_equal(ids.codes, again.codes)
    assert ids.tokens(0)[0].startswith("<sid0_") and ids.tokens(0)[-1].startswith("<sidx_")
    assert (
        ids.stats()["articles"] == 100
        and SemanticIdSettings().size_for(4000) == 32
        and SemanticIdSettings().size_for(105_542) == 128
    )


def test_nearest_grounding_through_the_lancedb_index(tiny, encoder, tmp_path):
    import pyarrow as pa

    tok, model = tiny
    space = ItemSpace(encoder, 0, 0.0)
    vectors = space.embed(TEXTS)
    rows = pa.table(
        {
            "article_idx": np.arange(len(TEXTS)),
            "article_id": [f"{i:010d}" for i in range(len(TEXTS))],
            "text": TEXTS,
            "item_text": TEXTS,
            "text_vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1]
            ),
        }
    )
    build_index(str(tmp_path / "db"), rows, vectors, metadata=space_settings(space))
    index = ItemIndex(str(tmp_path / "db"))
    idx, dist = index.nearest(vectors[:3], k=3)
    assert idx[:, 0].tolist() == [0, 1, 2] and np.allclose(dist[:, 0], 0, atol=1e-4)  # each text finds itself
    assert json.loads(index.metadata("hm_recs.item_space"))["image_weight"] == 0.0
    assert space_from_settings(index.metadata("hm_recs.item_space")).image_dim == 0
    codec = SequenceCodec(Catalogue(TEXTS, [None] * len(TEXTS)), VARIANTS["text_large"], tok, 128)
    rec = BartRecommender("bart", model, codec, "nearest", index=index, space=space, generations=2)
    lists = rec.recommend(
        np.zeros(3), [np.array([0]), np.array([1, 2]), np.array([], np.int64)], np.zeros(3), 5
    )
    assert lists.shape == (3, 5) and set(lists.ravel()) <= set(range(len(TEXTS))) and len(rec.best) == 3
    assert all(len(set(r)) == 5 for r in lists.tolist()) and all(d >= 0 for d in rec.best_distance)
    with pytest.raises(ValueError, match="semantic-ID"):
        BartRecommender(
            "sid",
            model,
            SequenceCodec(
                Catalogue(TEXTS, [None] * 7, semantic_ids={"multimodal": np.zeros((7, 2), int)}),
                VARIANTS["semantic_id"],
                tok,
            ),
            "nearest",
            index=index,
            space=space,
        )


def test_merge_rankings():
    assert merge_rankings([[3, 1], [1, 4, -1], [2]], 4).tolist() == [3, 1, 4, 2]
    assert merge_rankings([[5]], 3).tolist() == [5, -1, -1]


def test_the_validation_week_never_gets_a_model_trained_past_its_start(tiny, tmp_path):
    tok, model = tiny
    val = save_bart(model, tok, tmp_path / "validation", {"trained_before": "2020-09-09"})
    test = save_bart(model, tok, tmp_path / "test", {"trained_before": "2020-09-16"})
    assert model_for_week([test, val], dt.date(2020, 9, 9)) == val  # the refit saw the validation week
    assert model_for_week([test, val], dt.date(2020, 9, 16)) == test  # the newest allowed one
    assert (
        model_for_week([val], dt.date(2020, 9, 16)) == val
    )  # no refit: the validation model serves the test week
    with pytest.raises(FileNotFoundError, match="before 2020-09-09"):
        model_for_week([test], dt.date(2020, 9, 9))


def _result(model, week, per_event, ap):
    per_event = np.asarray(per_event, float)
    return EvaluationResult(
        model,
        week,
        {},
        len(per_event),
        len(ap),
        0.0,
        {"Recall@20": per_event, "MRR@20": per_event / 2},
        np.arange(len(per_event)),
        np.asarray(ap, float),
    )


def test_paired_differences_and_cold_start_rows():
    a = _result("bart_x", "test", [1, 1, 0, 1], [0.5, 0.2])
    b = _result("pop", "test", [0, 0, 0, 1], [0.1, 0.2])
    rows = paired_rows(a, b, 200, "vs baseline")
    got = {r["metric"]: r for r in rows}
    assert got["Recall@20"]["diff"] == pytest.approx(0.5) and got["MAP@12"]["diff"] == pytest.approx(0.2)
    assert got["Recall@20"]["lo"] <= 0.5 <= got["Recall@20"]["hi"] and got["MRR@20"]["diff"] == pytest.approx(
        0.25
    )
    week = TargetWeek(
        "test",
        dt.date(2020, 9, 16),
        dt.date(2020, 9, 22),
        10,
        np.arange(4),
        np.array([3, 9, 9, 3]),
        [np.empty(0, np.int64)] * 4,
        np.zeros(4, np.int64),
        np.arange(2),
        [np.empty(0, np.int64)] * 2,
        [set(), set()],
    )
    seen = bought_before(
        np.array([3, 9]), np.array(["2020-09-01", "2020-09-17"], "datetime64[D]"), week.start, 10
    )
    assert seen.tolist() == [i == 3 for i in range(10)]  # article 9 first sold in the week: cold
    cold = {r["model"]: r for r in cold_start_rows([a, b], week, seen, 200)}
    assert (
        cold["bart_x"]["events"] == 2
        and cold["bart_x"]["Recall@20"] == pytest.approx(0.5)
        and cold["pop"]["Recall@20"] == 0.0
    )


def _one_event_week() -> TargetWeek:
    """A validation week from 2020-09-09: one customer who had bought article 0 buys article 1."""
    return TargetWeek(
        "validation",
        dt.date(2020, 9, 9),
        dt.date(2020, 9, 15),
        len(TEXTS),
        np.array([0]),
        np.array([1]),
        [np.array([0])],
        np.zeros(1, np.int64),
        np.array([0]),
        [np.array([0])],
        [{1}],
    )


def test_the_evaluation_refuses_a_model_trained_past_the_week(tiny):
    from hm_recs.evaluation.protocol import EvaluationProtocol
    from hm_recs.retrieval.bart_evaluation import BartEvaluationSettings, evaluate_bart

    tok, model = tiny
    codec = SequenceCodec(Catalogue(TEXTS, [None] * len(TEXTS)), VARIANTS["text_small"], tok, 64)
    week = _one_event_week()
    weeks = {"validation": week, "test": week}

    def make(variant, name, method, cutoff=dt.date(2020, 9, 16)):  # the refit that saw the validation week
        return BartRecommender(f"bart_{variant}", model, codec, method, beams=4, trained_before=cutoff)

    settings = BartEvaluationSettings(grounding="constrained", diagnostic_events=0)
    with pytest.raises(ValueError, match="cannot be judged"):
        evaluate_bart(make, ["text_small"], weeks, EvaluationProtocol(n_bootstrap=10), [], {}, settings)
    ok = evaluate_bart(
        lambda v, n, m: make(v, n, m, dt.date(2020, 9, 9)),
        ["text_small"],
        weeks,
        EvaluationProtocol(n_bootstrap=10),
        [],
        {},
        BartEvaluationSettings(grounding="constrained", diagnostic_events=0),
    )
    assert [r.model for r in ok.results] == ["bart_text_small", "bart_text_small"] and ok.text_rows[0][
        "best_distinct"
    ] == 1


def test_the_grounding_is_decided_at_training_stored_and_what_the_evaluation_judges(
    tiny, tmp_path, monkeypatch
):
    """Semantic IDs always decode under their trie; a configured grounding is taken as is; otherwise
    the validation comparison decides. The decision goes to the model store (any worker reads it),
    and the evaluation judges each variant with the grounding it was registered with."""
    from hm_recs.artifacts import ModelStore
    from hm_recs.evaluation.protocol import EvaluationProtocol
    from hm_recs.retrieval import bart_evaluation as be

    protocol, settings = EvaluationProtocol(n_bootstrap=10), be.BartEvaluationSettings(diagnostic_events=0)
    assert be.decide_grounding(None, "semantic_id", None, protocol, settings)["chosen"] == "constrained"
    configured = be.BartEvaluationSettings(grounding="nearest")
    assert be.decide_grounding(None, "text_small", None, protocol, configured)["decided_on"] == "configured"
    asked = []
    monkeypatch.setattr(be, "choose_grounding", lambda *a: asked.append(a[1]) or {"chosen": "nearest"})
    assert be.decide_grounding(object(), "text_large", object(), protocol, settings) == {"chosen": "nearest"}
    assert asked == ["text_large"]

    store = ModelStore(str(tmp_path / "models"), tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="materialize bart_model_text_small"):
        be.load_grounding(store, "text_small")
    decision = {"chosen": "constrained", "decided_on": "text_small, 500 validation events"}
    be.save_grounding(store, "text_small", decision)
    assert be.load_grounding(store, "text_small") == decision
    assert be.served_settings("text_small", decision, settings) == {
        "variant": "text_small",
        "grounding": "constrained",
        "beams": 20,
        "generations": 4,
    }

    tok, model = tiny
    codec = SequenceCodec(Catalogue(TEXTS, [None] * len(TEXTS)), VARIANTS["text_small"], tok, 64)
    week = _one_event_week()
    methods = []

    def make(variant, name, method):
        methods.append(method)
        return BartRecommender(f"bart_{variant}", model, codec, method, beams=4, trained_before=week.start)

    out = be.evaluate_bart(
        make,
        ["text_small"],
        {"validation": week, "test": week},
        protocol,
        [],
        {},
        settings,
        groundings={"text_small": decision},
    )
    assert methods == ["constrained", "constrained"] and out.grounding == {"text_small": decision}
    assert {r["grounding"] for r in out.text_rows} == {"constrained"}


def test_a_semantic_id_bart_bundle_serves_through_the_pyfunc_recommender(tiny, tmp_path):
    from hm_recs.registry.pyfunc import BundleRecommender, write_recommender_bundle
    from hm_recs.retrieval.semantic_ids import vocabulary

    tok, _ = build_model(None, "tiny", TEXTS * 20, seed=0, sid_vocabulary=vocabulary(2, 4, 2))
    from hm_recs.models.bart import new_model

    model = new_model(None, "tiny", tok, seed=0)
    save_bart(model, tok, tmp_path / "model", {"trained_before": "2020-09-16", "max_source_tokens": 40})
    articles = pd.DataFrame(
        {
            "article_idx": range(len(TEXTS)),
            "article_id": [f"01080{i:05d}" for i in range(len(TEXTS))],
            "index_group_name": [t.split(", ")[0] for t in TEXTS],
            "product_type_name": [t.split(", ")[1] for t in TEXTS],
            "colour_group_name": [t.split(", ")[2] for t in TEXTS],
            "graphical_appearance_name": [t.split(", ")[3] for t in TEXTS],
            "prod_name": [t.split(", ")[4] for t in TEXTS],
        }
    )
    articles.to_parquet(tmp_path / "articles.parquet")
    codes = [[i % 4, i // 4, 0] for i in range(len(TEXTS))]
    pd.DataFrame({"article_id": articles["article_id"], "multimodal": codes, "text": codes}).to_parquet(
        tmp_path / "sids.parquet"
    )
    histories = pd.DataFrame({"customer_id": ["a" * 64], "history": [np.array([0, 2], np.int32)]})
    bundle = write_recommender_bundle(
        tmp_path / "bundle",
        "bart",
        articles,
        histories,
        np.arange(len(TEXTS)),
        {"variant": "semantic_id"},
        {
            "model": tmp_path / "model",
            "articles.parquet": tmp_path / "articles.parquet",
            "semantic_ids.parquet": tmp_path / "sids.parquet",
        },
    )
    rec = BundleRecommender(bundle)
    out = rec.predict_frame(pd.DataFrame({"customer_id": ["a" * 64, "e" * 64]}), k=5)
    lists = [p.split() for p in out["prediction"]]
    assert all(len(set(x)) == 5 and set(x) <= set(articles["article_id"]) for x in lists)
    assert rec.model.trained_before == dt.date(2020, 9, 16) and rec.model.method == "constrained"
