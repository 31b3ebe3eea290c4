"""BART: sources and targets as token ids, truncation, image and semantic-ID tokens, training pairs,
the learning-rate schedule, batching, a toy model that learns to read its input, the
pretrained-path loader and the training-cutoff guard."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import torch

from hm_recs.models.bart import (
    ITEM,
    VARIANTS,
    BartTrainingSettings,
    BucketBatchSampler,
    Catalogue,
    PairData,
    PurchaseSequences,
    SequenceCodec,
    Variant,
    build_model,
    check_trained_before,
    compact_codes,
    image_token,
    item_text,
    load_bart,
    lr_factor,
    new_model,
    purchase_sequences,
    save_bart,
    train_bart,
    training_pairs,
    variant_seed,
)
from hm_recs.retrieval.bart_recommender import BartRecommender, distinct_generations
from hm_recs.retrieval.semantic_ids import vocabulary

TEXTS = [
    "Ladieswear, T-shirt, Black, Solid, Mira",
    "Ladieswear, Trousers, Dark Blue, Denim, Lola",
    "Menswear, Sneakers, White, Solid, Kato",
    "Divided, Dress, Red, Dot, Vivi",
    "Sport, Socks, Grey, Stripe, Sana",
]
SIDS = np.array(
    [[0, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0]]
)  # 3 levels of 2 codes + disambiguation


@pytest.fixture(scope="module")
def catalogue():
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 16, 16) for _ in TEXTS]
    codes[4] = None  # no photo
    codebook = rng.normal(size=(16, 4)).astype(np.float32)
    return Catalogue(TEXTS, codes, codebook, 16, {"multimodal": SIDS, "text": SIDS[::-1].copy()})


@pytest.fixture(scope="module")
def tiny_model(catalogue):
    return build_model(None, "tiny", TEXTS * 20, n_codes=16, seed=0, sid_vocabulary=vocabulary(3, 2, 2))


def test_item_text():
    row = {
        "prod_name": "Strap top",
        "product_type_name": "Vest top",
        "colour_group_name": "Black",
        "graphical_appearance_name": "Solid",
        "index_group_name": "Ladieswear",
    }
    assert item_text(row) == "Ladieswear, Vest top, Black, Solid, Strap top"


def test_sources_and_targets_from_a_hand_made_history(catalogue, tiny_model):
    tok, _ = tiny_model
    codec = SequenceCodec(catalogue, VARIANTS["text_large"], tok, 1024)
    ids, n = codec.source([0, 1, 2])
    assert n == 3 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert (
        ids == tok(" ".join(f"{ITEM} {TEXTS[i]}" for i in (0, 1, 2)))["input_ids"]
    )  # the same ids as tokenizing the string
    assert codec.target(3) == tok(" " + TEXTS[3])["input_ids"] and codec.target_text(3) == TEXTS[3]
    small = SequenceCodec(catalogue, Variant("s", 2), tok, 1024)
    assert (
        small.source([0, 1, 2, 3])[0] == tok(f"{ITEM} {TEXTS[2]} {ITEM} {TEXTS[3]}")["input_ids"]
    )  # the newest two


def test_truncation_keeps_the_newest_articles_that_fit(catalogue, tiny_model):
    tok, _ = tiny_model
    full = SequenceCodec(catalogue, VARIANTS["text_large"], tok, 1024)
    budget = len(full.piece(0)) + len(full.piece(3)) + 2
    ids, n = SequenceCodec(catalogue, VARIANTS["text_large"], tok, budget).source([1, 3, 0])
    assert n == 2 and len(ids) <= budget and ids == tok(f"{ITEM} {TEXTS[3]} {ITEM} {TEXTS[0]}")["input_ids"]


def test_image_tokens_one_per_code_and_none_without_a_photo(catalogue, tiny_model):
    tok, model = tiny_model
    assert model.get_input_embeddings().num_embeddings == len(tok)
    codec = SequenceCodec(catalogue, VARIANTS["image_full"], tok)
    piece = codec.piece(0).tolist()
    assert piece[-16:] == [tok.convert_tokens_to_ids(image_token(c)) for c in catalogue.image_codes[0]]
    assert (
        piece == tok(catalogue.item_string(0, VARIANTS["image_full"]), add_special_tokens=False)["input_ids"]
    )
    assert codec.piece(4).tolist() == tok(f"{ITEM} {TEXTS[4]}", add_special_tokens=False)["input_ids"]
    compact = SequenceCodec(catalogue, VARIANTS["image_compact"], tok)
    assert sum(t.startswith("<img_") for t in tok.convert_ids_to_tokens(compact.piece(0).tolist())) == 4


def test_semantic_id_variants_read_and_write_codes(catalogue, tiny_model):
    tok, _ = tiny_model
    codec = SequenceCodec(catalogue, VARIANTS["semantic_id"], tok)
    assert tok.convert_ids_to_tokens(codec.piece(1).tolist()) == [
        "<sid0_0>",
        "<sid1_1>",
        "<sid2_0>",
        "<sidx_1>",
    ]
    assert tok.convert_ids_to_tokens(codec.target(1)) == [
        "<s>",
        "<sid0_0>",
        "<sid1_1>",
        "<sid2_0>",
        "<sidx_1>",
        "</s>",
    ]
    twin = SequenceCodec(catalogue, VARIANTS["semantic_id_text"], tok)
    assert twin.target(1) != codec.target(1)  # the text-only IDs are a different code
    with pytest.raises(ValueError, match="semantic_ids"):
        SequenceCodec(Catalogue(TEXTS, [None] * 5), VARIANTS["semantic_id"], tok)


def test_compact_codes_pool_and_snap_to_the_codebook():
    codebook = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    codes = np.array(
        [1, 1, 2, 2, 1, 1, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    )  # a 4x4 grid: top-left 1, top-right 2, bottom 0
    assert compact_codes(codes, codebook, grid=2).tolist() == [1, 2, 0, 0]


def test_sequences_collapse_repeats_and_pairs_respect_the_cutoff_and_window():
    df = pd.DataFrame(
        {
            "customer_idx": [1, 1, 1, 1, 2, 2],
            "article_idx": [5, 5, 6, 7, 7, 8],
            "t_dat": np.array(
                ["2020-01-01", "2020-01-01", "2020-01-03", "2020-01-20", "2020-01-02", "2020-01-10"],
                dtype="datetime64[D]",
            ),
            "is_consecutive_repeat": [False, True, False, False, False, False],
        }
    )
    seqs = purchase_sequences(df)
    assert seqs.customers.tolist() == [1, 2] and [s.tolist() for s in seqs.items] == [[5, 6, 7], [7, 8]]
    assert [s.tolist() for s in purchase_sequences(df, end=dt.date(2020, 1, 2)).items] == [[5], [7]]
    assert training_pairs(seqs, dt.date(2020, 1, 21)).tolist() == [[0, 1], [0, 2], [1, 1]]
    assert training_pairs(seqs, dt.date(2020, 1, 20)).tolist() == [
        [0, 1],
        [1, 1],
    ]  # the cutoff day is not before the cutoff
    assert training_pairs(seqs, dt.date(2020, 1, 21), target_weeks=1).tolist() == [
        [0, 2]
    ]  # only targets from 01-14 on


def test_learning_rate_warms_up_then_decays_to_zero():
    assert lr_factor(0, 100, 10, "linear") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)  # halfway through the 90 decay steps
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(32, 100, 10, "cosine") == pytest.approx(0.5 * (1 + np.cos(np.pi * 22 / 90)))
    assert (
        lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0) and lr_factor(70, 100, 0, "constant") == 1.0
    )
    with pytest.raises(ValueError, match="schedule"):
        BartTrainingSettings(schedule="step")


def test_each_variant_gets_its_own_reproducible_seed():
    seeds = {v: variant_seed(0, v) for v in VARIANTS}
    assert len(set(seeds.values())) == len(VARIANTS) and seeds == {v: variant_seed(0, v) for v in VARIANTS}
    assert variant_seed(1, "text_small") == seeds["text_small"] + 1


def test_bucket_batches_cover_every_pair_once_with_similar_lengths():
    lengths = np.random.default_rng(0).integers(1, 100, 1000)
    sampler = BucketBatchSampler(lengths, 10, seed=3, bucket=5)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(1000)) and len(first) == len(sampler) == 100
    spread = np.mean([np.ptp(lengths[b]) for b in first])
    assert spread < 0.5 * np.mean(
        [np.ptp(lengths[np.random.default_rng(i).choice(1000, 10)]) for i in range(100)]
    )
    sampler.sampler.set_epoch(1)
    assert list(sampler) != first  # a new order every epoch
    sampler.sampler.set_epoch(0)
    assert list(sampler) == first  # and the same order for the same epoch (resume)


def _toy(catalogue, tok, variant="text_large"):
    """Eight customers per start article: after article i comes article (i + 1) % 5, after two
    articles the second's successor."""
    items = [np.array([i, (i + 1) % 5, (i + 2) % 5]) for i in range(5) for _ in range(8)]
    seqs = PurchaseSequences(
        np.arange(len(items)), items, [np.arange(3).astype("datetime64[D]")] * len(items)
    )
    codec = SequenceCodec(catalogue, VARIANTS[variant], tok, 128)
    pairs = np.array([(s, j) for s in range(len(items)) for j in (1, 2)])
    return PairData(seqs, pairs, codec), codec


@pytest.mark.parametrize("variant", ["text_large", "semantic_id"])
def test_a_trained_toy_model_reads_its_input(catalogue, tiny_model, tmp_path, variant):
    tok, _ = tiny_model
    data, codec = _toy(catalogue, tok, variant)
    model = new_model(None, "tiny", tok, seed=1, dropout=0.0)
    # no warm-up: at a tiny rate the decoder first settles on the unconditional article distribution,
    # and 150 steps are then too few to start reading the source (it is what the check below catches)
    settings = BartTrainingSettings(
        learning_rate=3e-3, batch_size=16, accumulate=1, epochs=30, schedule="cosine", checkpoint_every=50
    )
    result = train_bart(model, data, tmp_path / "run", settings, fingerprint="x", progress=False)
    assert result.steps == 30 * 5 and np.mean(result.loss[-5:]) < 0.25 * np.mean(result.loss[:5])
    rec = BartRecommender("toy", model, codec, "constrained", beams=5)
    lists = rec.recommend(np.zeros(5), [np.array([i]) for i in range(5)], np.zeros(5), 5)
    assert lists[:, 0].tolist() == [
        (i + 1) % 5 for i in range(5)
    ]  # different input, different (right) output
    assert all(sorted(row.tolist()) == list(range(5)) for row in lists)  # every article once, ranked
    stats = distinct_generations(rec, [np.array([i]) for i in range(5)])
    assert stats["distinct_best_articles"] == 5 and stats["distinct_list_share"] == 1.0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_a_model_that_ignores_its_input_fails_the_distinct_generations_measure(catalogue, tiny_model):
    """All weights zero: the same scores whatever the history, so one best article for every source."""
    tok, _ = tiny_model
    model = new_model(None, "tiny", tok, seed=0, dropout=0.0).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    rec = BartRecommender(
        "flat", model, SequenceCodec(catalogue, VARIANTS["text_small"], tok), "constrained", beams=5
    )
    stats = distinct_generations(
        rec, [np.array([i]) for i in range(5)] + [np.array([i, j]) for i in range(5) for j in range(5)]
    )
    assert stats["sources"] == 30 and stats["distinct_lists"] == 1 and stats["distinct_best_articles"] == 1
    assert stats["most_common_best_share"] == 1.0 and stats["mean_jaccard"] == 1.0


def test_pretrained_path_loader_on_a_model_the_test_saves(tiny_model, tmp_path):
    tok, model = tiny_model
    folder = save_bart(model, tok, tmp_path / "bart", {"trained_before": "2020-09-09"})
    tok2, _, extra = load_bart(folder)
    assert extra == {"trained_before": "2020-09-09"} and len(tok2) == len(tok)
    # the same path works as `pretrained`, the way a hub id would
    tok3, model3 = build_model(str(folder), "ignored", [], n_codes=16)
    assert len(tok3) == len(tok) and model3.get_input_embeddings().num_embeddings == len(tok)
    tok4, model4 = build_model(
        str(folder), "ignored", [], n_codes=32
    )  # a larger codebook adds tokens and rows
    assert len(tok4) == len(tok) + 16 and model4.get_input_embeddings().num_embeddings == len(tok4)


def test_a_model_trained_past_a_week_is_refused_for_it():
    check_trained_before({"trained_before": "2020-09-09"}, dt.date(2020, 9, 9))
    with pytest.raises(ValueError, match="past the start"):
        check_trained_before({"trained_before": "2020-09-16"}, dt.date(2020, 9, 9))
    with pytest.raises(ValueError, match="no training cutoff"):
        check_trained_before({}, dt.date(2020, 9, 9))


def test_time_ordered_batches_run_week_by_week():
    days = np.array(
        ["2020-01-02", "2020-01-20", "2020-01-03", "2020-01-10", "2020-01-21", "2020-01-11"] * 5,
        "datetime64[D]",
    )
    sampler = BucketBatchSampler(np.ones(len(days)), 5, seed=0, days=days)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6 and sorted(i for b in batches for i in b) == list(range(30))
    firsts = [days[b].min() for b in batches]
    assert firsts == sorted(firsts)  # oldest week first
    assert all(
        len({(d.astype(np.int64) - 6) // 7 for d in days[b]}) == 1 for b in batches
    )  # a batch holds one week


def test_run_profiles_name_every_variant_and_refuse_unknown_ones():
    from hm_recs.profiles import PROFILES, run_config
    from hm_recs.profiles import VARIANTS as PROFILE_VARIANTS

    assert PROFILE_VARIANTS == tuple(VARIANTS)
    cfg = run_config("cpu", bart_variants=["semantic_id"])
    assert [k for k in cfg["ops"] if k.startswith("bart_model_")] == ["bart_model_semantic_id"]
    assert (
        cfg["resources"]["bart"]["config"]["variants"] == ["semantic_id"]
        and "bart_model_text_small" in PROFILES["cpu"]["ops"]
    )
    with pytest.raises(ValueError, match="unknown"):
        run_config("cpu", bart_variants=["text_medium"])
    with pytest.raises(ValueError, match="profile"):
        run_config("gpu-huge")


def test_training_passes_reconstruct_then_predict_then_revisit_the_newest_weeks(catalogue, tiny_model):
    from hm_recs.models.bart import RecencyPass, training_passes

    main = BartTrainingSettings(learning_rate=2e-3, epochs=1.0, order="time", target_weeks=12)
    passes = training_passes(
        main, reconstruction_epochs=0.5, recency=RecencyPass(weeks=1, epochs=4, learning_rate_scale=0.5)
    )
    assert [(p.name, p.task) for p in passes] == [
        ("reconstruct", "reconstruct"),
        ("main", "next"),
        ("recent", "next"),
    ]
    assert (
        passes[0].settings.epochs == 0.5
        and passes[0].settings.order == "shuffle"
        and passes[1].settings == main
    )
    assert passes[2].settings.learning_rate == pytest.approx(1e-3) and passes[2].settings.target_weeks == 1
    assert passes[2].settings.epochs == 4
    refit = training_passes(main, 0.5, RecencyPass(), continue_weeks=1)
    assert [p.name for p in refit] == ["recent"] and refit[0].settings.target_weeks == 1
    # the reconstruction target is the newest article of the source
    tok, _ = tiny_model
    data, codec = _toy(catalogue, tok)
    rebuild = PairData(data.seqs, data.pairs, codec, task="reconstruct")
    s, j = data.pairs[3]
    assert rebuild[3][1] == codec.target(data.seqs.items[s][j - 1]) and data[3][1] == codec.target(
        data.seqs.items[s][j]
    )
    with pytest.raises(ValueError, match="task"):
        PairData(data.seqs, data.pairs, codec, task="denoise")


def test_a_fit_at_another_cutoff_repeats_the_variants_recipe_and_is_reused(catalogue, tiny_model, tmp_path):
    """The ranker's BART source needs a model trained before its first training week "as the
    variant's models are": ``fit_at`` with the recipe in the validation model's notes, at the
    validation cutoff, trains the very same weights; asked again, it reuses the stored model."""
    from hm_recs.artifacts import ModelStore
    from hm_recs.compute import DeviceSpec
    from hm_recs.models.bart_fitting import RefitPlan, fit_at, fit_variant
    from hm_recs.sessions.split import TimeSplit

    tok, _ = tiny_model
    first = np.datetime64("2020-08-01")
    items = [np.array([i, (i + 1) % 5, (i + 2) % 5, (i + 3) % 5]) for i in range(5) for _ in range(4)]
    days = [first + np.array([0, 7, 14, 21]) + k for k in range(len(items))]
    seqs = PurchaseSequences(np.arange(len(items)), items, [d.astype("datetime64[D]") for d in days])
    split = TimeSplit.from_dates(dt.date(2020, 8, 1), dt.date(2020, 9, 13))
    codec = SequenceCodec(catalogue, VARIANTS["semantic_id"], tok, 64)
    settings = BartTrainingSettings(learning_rate=1e-3, batch_size=8, accumulate=1, epochs=2, seed=3)
    store, spec = ModelStore(str(tmp_path / "models"), tmp_path / "cache"), DeviceSpec("cpu")
    plan = RefitPlan(refit_for_test=False, refit_for_serving=False)
    made = {"pretrained": None, "size": "tiny", "dropout": 0.0}
    (fitted,) = fit_variant(
        "semantic_id",
        lambda: new_model(None, "tiny", tok, settings.seed, 0.0),
        codec,
        seqs,
        split,
        settings,
        plan,
        spec,
        store,
        ["toy"],
        log=lambda _: None,
        model_notes=made,
    )
    notes = load_bart(store.path("bart/semantic_id/validation/model"))[2]
    assert notes["trained_before"] == str(split.validation_start) and notes["recipe"]["model"] == made

    def extra(cutoff):
        return fit_at("semantic_id", "extra", cutoff, notes["recipe"], tok, codec, seqs, spec, store, ["toy"])

    again = extra(split.validation_start)
    assert again.result.steps == fitted.result.steps > 0
    for a, b in zip(fitted.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)
    reused = extra(split.validation_start)
    assert reused.result.seconds == 0.0 and reused.result.steps == again.result.steps
    earlier = extra(dt.date(2020, 8, 20))
    assert earlier.result.pairs < again.result.pairs and earlier.result.seconds > 0
    assert load_bart(store.path("bart/semantic_id/extra/model"))[2]["trained_before"] == "2020-08-20"


def test_a_run_killed_on_one_worker_resumes_on_another_from_its_pushed_checkpoint(
    catalogue, tiny_model, tmp_path
):
    """Each checkpoint goes to the model store as it is written (``lightning_trainer``'s
    ``on_checkpoint``): a worker killed after its first checkpoint leaves it in S3 (moto's server),
    and a second worker with an empty disk resumes from that step, not from the start."""
    import boto3

    from hm_recs.artifacts import ModelStore
    from hm_recs_tests.services import s3_server

    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    tok, _ = tiny_model
    data, _ = _toy(catalogue, tok, "semantic_id")
    settings = BartTrainingSettings(
        learning_rate=1e-3, batch_size=8, accumulate=1, max_steps=12, checkpoint_every=5
    )
    key = "bart/semantic_id/validation"
    with s3_server(tmp_path) as endpoint:
        boto3.client("s3", endpoint_url=endpoint, **creds).create_bucket(Bucket="hm-models")
        opts = {"endpoint_url": endpoint, **creds}
        first = ModelStore("s3://hm-models/models", tmp_path / "worker_a", opts)
        pushes = []

        def push_then_die():
            first.push(key)
            pushes.append(1)
            raise RuntimeError("worker killed")

        with pytest.raises(RuntimeError, match="worker killed"):
            train_bart(
                new_model(None, "tiny", tok, seed=1),
                data,
                first.pull(key) / "run",
                settings,
                fingerprint="x",
                progress=False,
                on_checkpoint=push_then_die,
            )
        assert pushes == [1] and first.exists(f"{key}/run/checkpoints/last.ckpt")
        second = ModelStore("s3://hm-models/models", tmp_path / "worker_b", opts)
        calls = []
        result = train_bart(
            new_model(None, "tiny", tok, seed=1),
            data,
            second.pull(key) / "run",
            settings,
            fingerprint="x",
            progress=False,
            on_checkpoint=lambda: calls.append(1),
        )
        assert result.resumed_from_step == 5 and result.steps == 12
        assert len(calls) == 1  # the step-10 checkpoint (the model itself is saved after training)
