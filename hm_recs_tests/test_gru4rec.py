"""GRU4Rec: the session-parallel iterator, sampling, losses, the sparse optimiser, learning, evaluation,
resume.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hm_recs.models.gru4rec import (
    PRESETS,
    GRU4Rec,
    GRU4RecConfig,
    GRU4RecNet,
    GRU4RecRecommender,
    SampleStore,
    SessionData,
    SparseAdagradM,
    bpr_max,
    build_sessions,
    cross_entropy_logq,
    logq_terms,
    session_parallel_batches,
    top_k_deterministic,
    train_resumable,
)


def sessions_of(lengths, start_item=0):
    items, offsets = [], [0]
    nxt = start_item
    for n in lengths:
        items.extend(range(nxt, nxt + n))
        nxt += n
        offsets.append(offsets[-1] + n)
    return SessionData(np.array(items, np.int64), np.array(offsets, np.int64))


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 50])
def test_session_parallel_iterator_resets_exactly_at_boundaries_and_loses_nothing(batch):
    data = sessions_of([2, 5, 3, 2, 4, 6, 2])  # item ids are unique, so a pair names its session
    session_of = np.repeat(np.arange(data.n_sessions), np.diff(data.offsets))
    seen = []
    slot_session = None
    for inputs, targets, reset, keep in session_parallel_batches(data, batch):
        sess = session_of[inputs]
        assert (session_of[targets] == sess).all() and (targets == inputs + 1).all()
        if slot_session is not None:
            prev = slot_session[keep]
            assert ((sess != prev) == reset).all(), "reset exactly where a slot changes session"
        else:
            assert reset.all()
        for i in np.flatnonzero(reset):  # a new session starts at its first item
            assert inputs[i] == data.items[data.offsets[sess[i]]]
        slot_session = sess
        seen.extend(zip(inputs.tolist(), targets.tolist(), strict=True))
    expected = [
        (a, a + 1)
        for s in range(data.n_sessions)
        for a in data.items[data.offsets[s] : data.offsets[s + 1] - 1]
    ]
    assert sorted(seen) == sorted(expected) and len(seen) == data.n_events


def test_build_sessions_collapses_repeats_and_orders_by_time():
    sid = np.array([5, 5, 5, 5, 9, 9, 7])
    items = np.array([1, 1, 2, 1, 3, 4, 8])
    order = np.array([2, 2, 2, 2, 1, 1, 0])
    d = build_sessions(sid, items, order, "collapse")
    assert d.session_ids.tolist() == [9, 5]  # session 7 has one item: no event, dropped
    assert d.items.tolist() == [3, 4, 1, 2, 1]
    k = build_sessions(sid, items, order, "keep")
    assert k.items.tolist() == [3, 4, 1, 1, 2, 1]


def test_sampler_follows_support_to_the_alpha():
    support = np.array([1.0, 4.0, 9.0, 16.0])
    g = torch.Generator().manual_seed(0)
    store = SampleStore(support, alpha=0.5, n_sample=1000, store_size=200_000, device="cpu", generator=g)
    draws = torch.cat([store.draw() for _ in range(200)]).numpy()
    freq = np.bincount(draws, minlength=4) / len(draws)
    expected = np.sqrt(support) / np.sqrt(support).sum()  # 1, 2, 3, 4 -> 0.1 .. 0.4
    # chi-square goodness of fit, 3 degrees of freedom: 99.9 % critical value 16.27
    chi2 = (((freq - expected) * len(draws)) ** 2 / (expected * len(draws))).sum()
    assert chi2 < 16.27, (freq, expected)
    assert store.pointer == 200 and store.rows == 200
    store.draw()  # runs out and refills
    assert store.pointer == 1


def test_cross_entropy_with_logq_by_hand():
    scores = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.5, -1.0]])
    plain = cross_entropy_logq(scores, None, 0.0)
    by_hand = -(2.0 - np.log(np.exp(2) + np.exp(0) + np.exp(1))) - (
        1.5 - np.log(np.exp(0.5) + np.exp(1.5) + np.exp(-1))
    )
    assert float(plain) == pytest.approx(by_hand, rel=1e-6)
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    corrected = cross_entropy_logq(scores, log_q, 1.0)
    s = scores.numpy() - np.log([0.5, 0.25, 0.25])
    by_hand = -sum(s[i, i] - np.log(np.exp(s[i]).sum()) for i in range(2))
    assert float(corrected) == pytest.approx(by_hand, rel=1e-6)


def test_logq_is_the_official_unnormalised_form():
    """The authors' code subtracts logq * log(P0[y]) for the in-batch targets and
    logq * log(P0[s] ** alpha) for the samples, P0 being raw support counts (not probabilities)."""
    support = np.array([3.0, 10.0, 1.0, 6.0])
    g = torch.Generator().manual_seed(0)
    store = SampleStore(support, alpha=0.5, n_sample=5, store_size=50, device="cpu", generator=g)
    sample, sample_log_q = store.draw_with_log_q()
    targets = torch.tensor([1, 3, 0])
    got = logq_terms(torch.log(torch.tensor(support, dtype=torch.float32)), targets, sample_log_q).numpy()
    p0 = support
    official = np.concatenate([np.log(p0[[1, 3, 0]]), np.log(p0[sample.numpy()] ** 0.5)])
    np.testing.assert_allclose(got, official, rtol=1e-6)
    # the normalised form (log of probabilities) would shift the sampled columns against the in-batch
    # ones by log(sum support) - log(sum support ** alpha): a different objective
    normalised = np.concatenate(
        [np.log(p0[[1, 3, 0]] / p0.sum()), np.log(p0[sample.numpy()] ** 0.5 / (p0**0.5).sum())]
    )
    assert not np.allclose(got[3:] - got[0], normalised[3:] - normalised[0])


def test_one_hot_gru_cell_is_the_official_formula():
    torch.manual_seed(0)
    cfg = GRU4RecConfig(layers=(4,), constrained_embedding=False, embedding=0)
    net = GRU4RecNet(n_items=6, cfg=cfg).eval()
    cell = net.first
    with torch.no_grad():
        cell.b.uniform_(-0.5, 0.5)
    x = torch.tensor([2, 5])
    h = torch.randn(2, 4)
    got = cell(x, h).detach().numpy()
    # written out from the authors' GRUEmbedding: Vx = Wx0[x] + Bh0 split (candidate, reset, update);
    # Vrz = H Wrz0 split (reset, update); h~ = tanh((r * H) Wh0 + vx_candidate); h' = (1-z) H + z h~
    wx, wrz, wh, b = (t.detach().numpy().astype(np.float64) for t in (cell.Wx, cell.Wrz, cell.Wh, cell.b))
    hn = h.numpy().astype(np.float64)

    def sig(v):
        return 1 / (1 + np.exp(-v))

    vx = wx[[2, 5]] + b
    r = sig(vx[:, 4:8] + hn @ wrz[:, :4])
    z = sig(vx[:, 8:] + hn @ wrz[:, 4:])
    cand = np.tanh((r * hn) @ wh + vx[:, :4])
    np.testing.assert_allclose(got, (1 - z) * hn + z * cand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("one_hot", [False, True])
def test_dropped_out_output_is_the_next_hidden_state(one_hot):
    """The official hidden_step sets H[i] to the layer's output after dropout (and, with one-hot
    input, H[0] to the first layer's output after the embedding dropout)."""
    torch.manual_seed(0)
    cfg = GRU4RecConfig(
        layers=(16, 8),
        constrained_embedding=not one_hot,
        embedding=0,
        dropout_p_embed=0.5,
        dropout_p_hidden=0.5,
    )
    net = GRU4RecNet(n_items=10, cfg=cfg).train()
    H = net.initial_state(3, "cpu")
    x = torch.tensor([1, 4, 7])
    h, H1, _, _ = net.step(x, H, torch.tensor([2, 5, 8]))
    assert torch.equal(h, H1[-1])  # the scored output and the carried state are one tensor
    for state in H1:
        assert (state == 0).float().mean() > 0.2  # dropout zeroed part of every layer's state
    net.eval()
    h_eval, H_eval, _, _ = net.step(x, H, None)
    assert torch.equal(h_eval, H_eval[-1]) and (H_eval[-1] != 0).all()


def test_bpr_max_by_hand():
    scores = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.5, -1.0]])
    got = float(bpr_max(scores, bpreg=0.5, elu_param=0.0))
    total = 0.0
    for i, row in enumerate(scores.numpy()):
        neg = [j for j in range(3) if j != i]
        w = np.exp(row[neg]) / np.exp(row[neg]).sum()
        sig = 1 / (1 + np.exp(-(row[i] - row[neg])))
        total += -np.log((w * sig).sum()) + 0.5 * (w * row[neg] ** 2).sum()
    assert got == pytest.approx(total, rel=1e-5)
    elu = float(bpr_max(torch.tensor([[-1.0, 2.0], [0.0, -3.0]]), bpreg=0.0, elu_param=1.0))
    e = np.array([[np.exp(-1) - 1, 2.0], [0.0, np.exp(-3) - 1]])
    ref = -np.log(1 / (1 + np.exp(-(e[0, 0] - e[0, 1])))) - np.log(1 / (1 + np.exp(-(e[1, 1] - e[1, 0]))))
    assert elu == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_row_updates_match_a_dense_adagrad_momentum_step(momentum):
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    grad_rows = torch.randn(2, 3)
    rows = torch.tensor([1, 4])
    sparse_p = torch.nn.Parameter(start.clone())
    dense_p = torch.nn.Parameter(start.clone())
    sparse_opt = SparseAdagradM([sparse_p], lr=0.1, momentum=momentum)
    dense_opt = SparseAdagradM([dense_p], lr=0.1, momentum=momentum)
    for _ in range(3):
        sparse_opt.step_rows(sparse_p, rows, grad_rows)
        dense_p.grad = torch.zeros(6, 3)
        dense_p.grad[rows] = grad_rows
        dense_opt.step()
    assert torch.allclose(sparse_p, dense_p, atol=1e-6)
    untouched = [0, 2, 3, 5]
    assert torch.equal(sparse_p.detach()[untouched], start[untouched])
    # by hand, first step of row 1: acc = g^2, p -= lr * g / sqrt(g^2 + eps)
    p = torch.nn.Parameter(start.clone())
    opt = SparseAdagradM([p], lr=0.1, momentum=momentum)
    opt.step_rows(p, rows, grad_rows)
    g = grad_rows[0]
    assert torch.allclose(p.detach()[1], start[1] - 0.1 * g / torch.sqrt(g * g + 1e-6), atol=1e-6)


@pytest.mark.parametrize("rows_only", [False, True])
def test_adagrad_momentum_two_steps_by_hand(rows_only):
    """Two steps of Adagrad with momentum computed by hand (acc += g^2; mom = m * mom - lr * g /
    sqrt(acc + eps); p += mom), for a dense step and a row update."""
    lr, m, eps = 0.1, 0.5, 1e-6
    p0 = np.array([[1.0, -2.0], [0.5, 0.25]])
    g1 = np.array([[0.2, -0.4], [1.0, 0.0]])
    g2 = np.array([[-0.3, 0.1], [0.5, 2.0]])
    acc1 = g1**2
    mom1 = -lr * g1 / np.sqrt(acc1 + eps)
    acc2 = acc1 + g2**2
    mom2 = m * mom1 - lr * g2 / np.sqrt(acc2 + eps)
    expected = p0 + mom1 + mom2
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = SparseAdagradM([p], lr=lr, momentum=m, eps=eps)
    for g in (g1, g2):
        if rows_only:
            opt.step_rows(p, torch.tensor([0, 1]), torch.tensor(g))
        else:
            p.grad = torch.tensor(g)
            opt.step()
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12)


def sequence_sessions(n_sessions=60):
    """Every session is A -> B -> C -> D over 12 items in 3 disjoint chains."""
    chains = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    items, offsets = [], [0]
    for s in range(n_sessions):
        items.extend(chains[s % 3])
        offsets.append(offsets[-1] + 4)
    return SessionData(np.array(items), np.array(offsets))


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"loss": "bpr-max", "bpreg": 0.1, "elu_param": 0.5},
        {"constrained_embedding": False},
        {"constrained_embedding": False, "embedding": 16},
    ],
)
def test_a_tiny_model_learns_a_deterministic_sequence(variant):
    data = sequence_sessions()
    cfg = GRU4RecConfig(
        layers=(32,), batch_size=8, n_sample=4, learning_rate=0.2, n_epochs=25, seed=1, **variant
    )
    model = GRU4Rec(cfg, np.arange(12), np.full(12, 10.0))
    model.fit(data, progress=False)
    result = model.evaluate_sessions(sequence_sessions(6))
    assert result["Recall@1"] == 1.0 and result["events"] == 18
    rec = GRU4RecRecommender(model, "session")
    lists = rec.recommend(np.zeros(2), [np.array([7, 4]), np.array([4, 5, 6])], np.array([1, 0]), 3)
    assert lists[0, 0] == 5 and lists[1, 0] == 7  # session-only: history before the session is ignored


def test_evaluation_ties_are_conservative():
    model = GRU4Rec(GRU4RecConfig(layers=(4,), n_sample=0), np.arange(10), np.ones(10))
    with torch.no_grad():
        model.net.Wy.zero_()
        model.net.By.zero_()  # every item scores 0: the target ties with all ten
    result = model.evaluate_sessions(sessions_of([3, 2]), ks=(1, 10))
    assert result["Recall@1"] == 0.0 and result["Recall@10"] == 1.0 and result["MRR@10"] == pytest.approx(0.1)


def test_top_k_breaks_ties_by_index():
    scores = torch.tensor([[0.0, 1.0, 1.0, 0.5, 1.0], [0.0] * 5])
    assert top_k_deterministic(scores, 2).tolist() == [[1, 2], [0, 1]]


def test_resume_after_a_kill_continues_from_the_saved_epoch(tmp_path):
    data = sequence_sessions(30)
    cfg = GRU4RecConfig(layers=(16,), batch_size=4, n_sample=4, n_epochs=4, seed=3)
    items, support = np.arange(12), np.full(12, 5.0)
    straight = GRU4Rec(cfg, items, support)
    straight.fit(data, progress=False)

    first = GRU4Rec(cfg, items, support)
    first.fit(data, checkpoint_dir=tmp_path / "ck", progress=False, max_epochs=2)  # "killed" after epoch 2
    assert sorted(p.name for p in (tmp_path / "ck").glob("epoch-*.pt")) == ["epoch-001.pt", "epoch-002.pt"]
    (tmp_path / "ck" / "fingerprint.txt").write_text("data-v1")
    resumed, did_resume = train_resumable(
        data, items, support, cfg, tmp_path / "ck", "data-v1", progress=False
    )
    assert did_resume and resumed.epochs_done == 4
    assert resumed.history.epoch_loss == pytest.approx(straight.history.epoch_loss, rel=1e-5)
    for a, b in zip(resumed.net.parameters(), straight.net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # other data or settings: the old checkpoints are not resumed
    fresh, did_resume = train_resumable(data, items, support, cfg, tmp_path / "ck", "data-v2", progress=False)
    assert not did_resume and fresh.epochs_done == 4


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model = GRU4Rec(
        PRESETS["demo"].with_overrides(n_epochs=1, n_sample=4), np.array([3, 8, 9]), np.array([1.0, 2.0, 3.0])
    )
    model.fit(SessionData(np.array([0, 1, 2, 1]), np.array([0, 2, 4])), progress=False)
    path = model.save(tmp_path / "m.pt")
    torch.load(path, weights_only=True)  # nothing pickled beyond tensors and strings
    again = GRU4Rec.load(path)
    assert again.cfg == model.cfg and again.item_ids.tolist() == [3, 8, 9] and again.epochs_done == 1
    assert again.to_model_index(np.array([8, 4, 3])).tolist() == [1, -1, 0]
