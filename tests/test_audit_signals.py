"""The audit's signals and their combination, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from dale_monai.audit.signals import (agreeing_signals, cleanlab_signals, combine_pixel_maps, disagreement_signal,
                                      percentile_ranks, rank_average, stats_signals, weak_folds)


def _case(rng, wrong: bool = False):
    lab = np.zeros((12, 12), np.int64)
    lab[3:9, 3:9] = 1
    p = np.where(lab == 1, 0.9, 0.05) + rng.uniform(0, 0.04, lab.shape)
    probs = np.stack([1 - p, p])
    if wrong:
        lab = np.roll(lab, 4, axis=1)
    return lab, probs


def test_cleanlab_flags_the_wrong_pixels_of_the_wrong_case():
    rng = np.random.default_rng(0)
    cases = [_case(rng, wrong=(i == 2)) for i in range(6)]
    labels, probs = [c[0] for c in cases], [c[1] for c in cases]
    suspicion, pixel, issues = cleanlab_signals(labels, probs)
    assert int(np.argmax(suspicion)) == 2
    clean_lab = _case(rng)[0]
    wrong = labels[2] != clean_lab
    assert issues[2][wrong].all() and not issues[2][~wrong].any()
    assert not any(m.any() for i, m in enumerate(issues) if i != 2)
    assert pixel[2][wrong].min() > 0.8 and pixel[2][~wrong].max() < 0.2
    assert int(np.argmax(disagreement_signal(labels, probs))) == 2
    # cases of other grids (volumes of different sizes) are scored together
    lab3 = np.zeros((4, 5, 6), np.int64)
    s, pix, iss = cleanlab_signals(labels[:2] + [lab3], probs[:2] + [np.stack([np.ones((4, 5, 6)) * 0.9,
                                                                                  np.ones((4, 5, 6)) * 0.1])])
    assert pix[2].shape == iss[2].shape == (4, 5, 6)
    with pytest.raises(ValueError, match="grid"):
        cleanlab_signals([lab3], [probs[0]])


def test_ranks_combination_and_agreement():
    np.testing.assert_allclose(percentile_ranks(np.array([3.0, 1.0, 2.0, np.nan])), [1.0, 0.0, 0.5, np.nan])
    signals = {"a": np.array([0.9, 0.1, 0.2, 0.3]), "b": np.array([5.0, 1.0, 7.0, 2.0]),
               "c": np.array([np.nan, 0.0, 1.0, 0.5])}
    combined = rank_average(signals, ["a", "b"])
    assert int(np.argmax(combined)) == 0 and combined[1] == 0.0
    # a case without a signal is ranked by the others
    assert np.isfinite(rank_average(signals)).all()
    agree = agreeing_signals(signals, top_fraction=0.25)
    assert agree[0] == ["a"] and agree[2] == ["b", "c"]
    with pytest.raises(ValueError, match="no signal"):
        rank_average(signals, ["z"])
    np.testing.assert_allclose(combine_pixel_maps({"x": np.ones(3), "y": np.zeros(3)}), 0.5)


def test_stats_signals_from_handler_summaries():
    summary = {"a": {"loss": 0.5, "omega_mean": 0.8}, "b": {"loss": 0.1, "omega_mean": float("nan")}}
    out = stats_signals(["a", "b", "c"], summary)
    np.testing.assert_allclose(out["loss"], [0.5, 0.1, np.nan])
    np.testing.assert_allclose(out["omega"], [0.2, np.nan, np.nan])
    assert stats_signals(["a"], {"a": {"loss": float("nan"), "omega_mean": float("nan")}}) == {}


def test_a_failed_fold_is_named():
    fold_of = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    good = [0.05, 0.1, 0.08, 0.07, 0.3, 0.06, 0.09, 0.05, 0.1]
    assert weak_folds(good, fold_of) == {}  # one bad label is no failed fold
    failed = good[:6] + [0.6, 0.7, 0.5]
    assert weak_folds(failed, fold_of) == {2: pytest.approx(0.6)}
