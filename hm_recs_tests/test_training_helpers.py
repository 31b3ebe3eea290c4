"""The helpers every training asset shares: run fingerprints, the loss check, smoothing."""

from __future__ import annotations

import math

from hm_recs.training import fingerprint, loss_went_down, smoothed


def test_fingerprints_follow_the_settings_not_their_order():
    a = fingerprint({"lr": 0.1, "layers": [64]}, "2020-09-16", 3)
    assert a == fingerprint({"layers": [64], "lr": 0.1}, "2020-09-16", 3)
    assert a != fingerprint({"layers": [64], "lr": 0.2}, "2020-09-16", 3)
    assert len(a) == 64


def test_the_loss_check_compares_the_first_and_last_tenth():
    assert loss_went_down([5.0] * 10 + [1.0] * 10)[0]
    assert not loss_went_down([1.0] * 10 + [5.0] * 10)[0]
    ok, head, tail = loss_went_down([3.0, 2.0, 1.0], fraction=0)  # per-epoch: first vs last epoch
    assert ok and (head, tail) == (3.0, 1.0)
    assert loss_went_down([2.0])[0]  # one point cannot be judged
    ok, head, _ = loss_went_down([])
    assert not ok and math.isnan(head)  # nothing recorded: it did not train


def test_smoothing_averages_noise_away():
    curve = [1.0, 3.0] * 30
    out = smoothed(curve, points=30)
    assert len(out) == 59 and all(abs(v - 2.0) < 1e-9 for v in out)
    assert smoothed([4.0, 2.0]) == [4.0, 2.0]
