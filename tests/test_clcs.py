"""CLCS mathematics (dale_monai/clcs.py): thresholds, learning status, selection, NBL, discrepancy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dale_monai.clcs import (
    ClassCurriculum,
    class_indices,
    class_probabilities,
    class_thresholds,
    curriculum_map,
    discrepancy_loss,
    learning_status,
    noise_balance_loss_map,
    rejected_loss_map,
    selection_mask,
    status_counts,
)
from dale_monai.robust_losses import reverse_ce_map


def _counts(labelled, correct, predicted) -> torch.Tensor:
    return torch.tensor([labelled, correct, predicted], dtype=torch.float64)


# --------------------------------------------------------------------------------------------- curriculum map
def test_curriculum_maps_hand_values_and_order():
    x = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert curriculum_map(x, "convex").tolist() == [0.0, 1 / 3, 1.0]  # x / (2 - x)
    assert curriculum_map(x, "linear").tolist() == [0.0, 0.5, 1.0]
    assert torch.allclose(curriculum_map(x, "concave"), torch.tensor([0.0, math.log2(1.5), 1.0], dtype=torch.float64))
    grid = torch.linspace(0, 1, 101, dtype=torch.float64)
    convex, linear, concave = (curriculum_map(grid, m) for m in ("convex", "linear", "concave"))
    assert bool((convex <= linear + 1e-12).all() and (linear <= concave + 1e-12).all())
    for values in (convex, linear, concave):
        assert bool((values[1:] > values[:-1]).all())  # strictly increasing
    with pytest.raises(ValueError, match="mapping"):
        curriculum_map(grid, "sigmoid")


# --------------------------------------------------------------------------------------------- thresholds
def test_threshold_schedule_recall_hand_computed():
    # 3 classes: background (100 labelled pixels, 90 learned), a minority (20, 8), a rarer one (10, 2)
    counts = _counts([100, 20, 10], [90, 8, 2], [95, 10, 3])
    beta = learning_status(counts, "recall")
    # s = (0.9, 0.4, 0.2); u = 1 - 100/130 < 0.9, so beta = s / 0.9
    assert torch.allclose(beta, torch.tensor([1.0, 4 / 9, 2 / 9], dtype=torch.float64))
    tau = class_thresholds(beta, 0.9, "convex")
    # 0.9 * M(beta): M(1) = 1, M(4/9) = (4/9)/(14/9) = 4/14, M(2/9) = 2/16
    assert torch.allclose(tau, torch.tensor([0.9, 0.9 * 4 / 14, 0.9 * 2 / 16], dtype=torch.float64))
    # the minority classes get lower thresholds than the learned majority, the rarest the lowest
    assert tau[0] > tau[1] > tau[2]


def test_threshold_schedule_warmup_denominator_hand_computed():
    # early in training few pixels are confident: u = 1 - 15/130 = 115/130 exceeds every s_c
    counts = _counts([100, 20, 10], [10, 4, 1], [12, 5, 1])
    beta = learning_status(counts, "recall", threshold_warmup=True)
    assert torch.allclose(beta, torch.tensor([0.1, 0.2, 0.1], dtype=torch.float64) * 130 / 115)
    tau = class_thresholds(beta, 0.9)
    # beta_0 = 13/115: M = 13 / (230 - 13); beta_1 = 26/115: M = 26 / (230 - 26)
    assert torch.allclose(tau, torch.tensor([0.9 * 13 / 217, 0.9 * 26 / 204, 0.9 * 13 / 217], dtype=torch.float64))
    # without the warm-up denominator the best class gets the full threshold at once
    beta_nw = learning_status(counts, "recall", threshold_warmup=False)
    assert beta_nw.tolist() == [0.5, 1.0, 0.5]


def test_threshold_schedule_count_rule_hand_computed():
    # FlexMatch's sigma on pixels: the frequent class leads whatever its recall
    counts = _counts([100, 20, 10], [90, 8, 2], [80, 15, 5])
    beta = learning_status(counts, "count")
    # s = (80, 15, 5)/130, u = 30/130, max s = 80/130
    assert torch.allclose(beta, torch.tensor([1.0, 15 / 80, 5 / 80], dtype=torch.float64))
    assert torch.allclose(class_thresholds(beta, 0.95, "linear"), 0.95 * beta)


def test_threshold_is_monotone_in_the_learning_status_per_class():
    for mapping in ("convex", "linear", "concave"):
        previous = None
        for b in np.linspace(0, 1, 21):
            status = torch.tensor([0.3, b, 0.7], dtype=torch.float64)
            tau = class_thresholds(status, 0.9, mapping)
            assert tau[0].item() == pytest.approx(0.9 * curriculum_map(status[:1], mapping).item())
            if previous is not None:
                assert tau[1] > previous[1] and tau[0] == previous[0] and tau[2] == previous[2]
            previous = tau
        assert 0 <= float(tau.min()) and float(tau.max()) <= 0.9


def test_status_counts_hand_computed():
    # 2 classes, 1 image of 2x2: vote p1 = (0.95, 0.6, 0.05, 0.92), labels (1, 1, 0, 0)
    p1 = torch.tensor([0.95, 0.6, 0.05, 0.92]).reshape(1, 1, 2, 2)
    probs = torch.cat((1 - p1, p1), 1)
    labels = torch.tensor([1, 1, 0, 0]).reshape(1, 2, 2)
    counts = status_counts(probs, labels, tau=0.9)
    # labelled: 2 per class; confident and correct: pixel 0 (class 1), pixel 2 (class 0, p0 = 0.95);
    # confident predictions: class 1 at pixels 0 and 3, class 0 at pixel 2
    assert counts.tolist() == [[2, 2], [1, 1], [1, 2]]


def test_curriculum_state_holds_plain_tensors_for_metatensor_votes():
    """Bundles feed MONAI MetaTensors: the counts and the state must stay plain tensors (weights_only checkpoints)."""
    from monai.data import MetaTensor

    p1 = MetaTensor(torch.tensor([0.95, 0.6, 0.05, 0.92]).reshape(1, 1, 2, 2), meta={"filename_or_obj": "a.png"})
    probs = torch.cat((1 - p1, p1), 1)
    labels = MetaTensor(torch.tensor([1, 1, 0, 0]).reshape(1, 2, 2))
    cur = ClassCurriculum()
    cur.accumulate(status_counts(probs, labels, 0.9))
    cur.step()
    cur.accumulate(status_counts(probs, labels, 0.9))
    assert all(type(v) is torch.Tensor for v in cur.state_dict().values())


def test_learning_status_keeps_unseen_classes_and_handles_nothing_learned():
    previous = torch.tensor([0.2, 0.6, 0.4], dtype=torch.float64)
    beta = learning_status(_counts([50, 0, 10], [45, 0, 5], [45, 0, 5]), "recall", previous=previous)
    assert beta[1] == 0.6  # no pixel labelled 1: its status is kept
    assert beta.tolist()[0] == 1.0 and beta[2] == pytest.approx(0.5 / 0.9)
    assert learning_status(_counts([5, 5], [0, 0], [0, 0])).tolist() == [0.0, 0.0]
    assert learning_status(_counts([0, 0], [0, 0], [0, 0]), previous=previous[:2]).tolist() == [0.2, 0.6]
    with pytest.raises(ValueError, match="rule"):
        learning_status(_counts([1], [1], [1]), "entropy")


def test_class_curriculum_steps_epoch_by_epoch_and_round_trips():
    cur = ClassCurriculum(num_classes=3, tau=0.9)
    assert cur.thresholds.tolist() == [0.0, 0.0, 0.0]  # nothing learned yet: every label passes
    assert cur.step() is False
    cur.accumulate(_counts([60, 12, 6], [54, 4, 1], [0, 0, 0]))
    cur.accumulate(_counts([40, 8, 4], [36, 4, 1], [0, 0, 0]))  # two batches: (100, 20, 10), (90, 8, 2)
    assert cur.step() is True
    assert torch.allclose(cur.thresholds, torch.tensor([0.9, 0.9 * 4 / 14, 0.9 * 2 / 16], dtype=torch.float64))
    assert float(cur.counts.abs().sum()) == 0  # cleared for the next epoch
    # next epoch: class 2 absent keeps its status, class 1 learned more
    cur.accumulate(_counts([100, 20, 0], [90, 18, 0], [0, 0, 0]))
    cur.step()
    assert cur.status[1] == pytest.approx(1.0) and cur.status[2] == pytest.approx(2 / 9)
    cur.accumulate(_counts([1, 1, 1], [1, 0, 0], [0, 0, 0]))
    state = cur.state_dict()
    other = ClassCurriculum()
    other.load_state_dict(state)
    assert all(torch.equal(getattr(other, k), getattr(cur, k)) for k in ("counts", "status", "thresholds"))
    with pytest.raises(ValueError, match="num_classes=2"):
        ClassCurriculum(num_classes=2).load_state_dict(state)
    with pytest.raises(ValueError, match="network predicts 4"):
        ClassCurriculum(num_classes=3).ensure_classes(4)


@pytest.mark.parametrize(("kwargs", "option"), [
    ({"tau": 0.0}, "tau"), ({"tau": 1.5}, "tau"), ({"mapping": "cubic"}, "mapping"), ({"status": "loss"}, "status"),
    ({"threshold_warmup": 1}, "threshold_warmup"), ({"num_classes": 1}, "num_classes"),
])
def test_class_curriculum_options_are_named(kwargs, option):
    with pytest.raises(ValueError, match=option):
        ClassCurriculum(**kwargs)


# --------------------------------------------------------------------------------------------- selection
def _vote() -> tuple[torch.Tensor, torch.Tensor]:
    """One 2x3 image, 3 classes; columns give (p0, p1, p2) per pixel."""
    p = torch.tensor([
        [0.95, 0.02, 0.03],  # label 0, confident
        [0.70, 0.20, 0.10],  # label 0, below 0.9
        [0.40, 0.55, 0.05],  # label 1
        [0.20, 0.35, 0.45],  # label 1, argmax 2
        [0.10, 0.75, 0.15],  # label 2, argmax 1
        [0.30, 0.30, 0.40],  # label 2
    ])
    probs = p.T.reshape(1, 3, 2, 3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2]).reshape(1, 2, 3)
    return probs, labels


def test_selection_mask_on_a_constructed_vote():
    probs, labels = _vote()
    thresholds = torch.tensor([0.9, 0.5, 0.2])
    mask = selection_mask(probs, labels, thresholds, "label", min_keep=0.0)
    # p_y = (0.95, 0.70, 0.55, 0.35, 0.15, 0.40) against (0.9, 0.9, 0.5, 0.5, 0.2, 0.2)
    assert mask.shape == (1, 1, 2, 3)
    assert mask.flatten().tolist() == [True, False, True, False, False, True]
    # the vote's arg-max agrees with the label at pixels 0, 1, 2 and 5
    either = selection_mask(probs, labels, thresholds, "label_or_argmax", min_keep=0.0)
    assert either.flatten().tolist() == [True, True, True, False, False, True]
    # a threshold no label passes leaves class 0 empty without min_keep, one pixel (its best) with it
    high = torch.tensor([0.99, 0.5, 0.2])
    assert selection_mask(probs, labels, high, min_keep=0.0).flatten().tolist()[:2] == [False, False]
    assert selection_mask(probs, labels, high, min_keep=0.1).flatten().tolist()[:2] == [True, False]
    # min_keep 1.0 keeps every labelled pixel
    assert bool(selection_mask(probs, labels, high, min_keep=1.0).all())
    with pytest.raises(ValueError, match="criterion"):
        selection_mask(probs, labels, thresholds, "vote")
    with pytest.raises(ValueError, match="min_keep"):
        selection_mask(probs, labels, thresholds, min_keep=1.5)
    with pytest.raises(ValueError, match="thresholds"):
        selection_mask(probs, labels, thresholds[:2])


def test_selection_mask_keeps_exactly_the_required_top_pixels():
    # 10 pixels of class 1 that all fail the threshold: min_keep 0.25 keeps the ceil(2.5) = 3 most confident
    p1 = torch.tensor([0.10, 0.30, 0.25, 0.05, 0.31, 0.20, 0.29, 0.15, 0.01, 0.02]).reshape(1, 1, 1, 10)
    probs = torch.cat((1 - p1, p1), 1)
    labels = torch.ones(1, 1, 10, dtype=torch.long)
    mask = selection_mask(probs, labels, torch.tensor([0.9, 0.9]), min_keep=0.25)
    assert mask.flatten().nonzero().flatten().tolist() == [1, 4, 6]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 5), n=st.integers(1, 64), tau_max=st.floats(0.0, 1.0),
       min_keep=st.floats(1e-3, 1.0), criterion=st.sampled_from(["label", "label_or_argmax"]),
       one_channel=st.booleans())
def test_property_no_labelled_class_ends_with_zero_selected_pixels(seed, k, n, tau_max, min_keep, criterion,
                                                                   one_channel):
    g = torch.Generator().manual_seed(seed)
    if one_channel:
        k = 2
        probs = class_probabilities(torch.randn(2, 1, n, generator=g) * 5)
    else:
        probs = torch.softmax(torch.randn(2, k, n, generator=g) * 5, 1)
    labels = torch.randint(0, k, (2, n), generator=g)
    thresholds = torch.rand(k, generator=g, dtype=torch.float64) * tau_max
    mask = selection_mask(probs, labels, thresholds.float(), criterion, min_keep)
    for c in range(k):
        n_c = int((labels == c).sum())
        kept = int((mask[:, 0] & (labels == c)).sum())
        if n_c:
            assert kept >= max(1, math.ceil(min_keep * n_c - 1e-9)), (c, n_c, kept)


# --------------------------------------------------------------------------------------------- NBL
def test_noise_balance_loss_is_ce_on_an_all_clean_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 5, 5), generator=g).float()
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long(), reduction="none").unsqueeze(1)
    rce = reverse_ce_map(logits, target)
    conf = torch.rand(2, 1, 5, 5, generator=g)
    every = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    nbl = noise_balance_loss_map(ce, rce, every, conf, noisy_weight=1.0)
    assert torch.equal(nbl, ce)
    assert nbl.mean().item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target[:, 0].long()).item())
    # every pixel rejected: confidence 1 gives λ·CE, confidence 0 gives λ·RCE, and the gradient flows
    none = ~every
    assert torch.allclose(noise_balance_loss_map(ce, rce, none, torch.ones_like(conf), 0.5), 0.5 * ce)
    assert torch.allclose(noise_balance_loss_map(ce, rce, none, torch.zeros_like(conf), 2.0), 2.0 * rce)
    mixed = noise_balance_loss_map(ce, rce, conf > 0.5, conf, 1.0)
    expected = torch.where(conf > 0.5, ce, conf * ce + (1 - conf) * rce)
    assert torch.allclose(mixed, expected)
    assert torch.allclose(mixed - (conf > 0.5).float() * ce, rejected_loss_map(ce, rce, conf > 0.5, conf, 1.0))
    mixed.mean().backward()
    assert logits.grad is not None and bool(logits.grad.abs().sum() > 0)
    with pytest.raises(ValueError, match="noisy_weight"):
        noise_balance_loss_map(ce, rce, every, conf, -1.0)
    with pytest.raises(ValueError, match="one shape"):
        noise_balance_loss_map(ce, rce[:1], every, conf)


# --------------------------------------------------------------------------------------------- discrepancy
def test_discrepancy_values_and_gradient_reach_both_branches():
    torch.manual_seed(0)
    a, b = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(1, 4, 3, padding=1)
    x = torch.rand(2, 1, 8, 8)
    d = discrepancy_loss(a(x), b(x))
    assert 0 <= d.item() <= 1
    d.backward()
    for branch in (a, b):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())
    f = torch.randn(2, 4, 3, 3)
    assert discrepancy_loss(f, 2 * f).item() == pytest.approx(1.0)
    assert discrepancy_loss(f, -f).item() == pytest.approx(1.0)  # opposite views are no more different
    e0, e1 = torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)
    e0[:, 0], e1[:, 1] = 1.0, 1.0
    assert discrepancy_loss(e0, e1).item() == 0.0
    with pytest.raises(ValueError, match="one shape"):
        discrepancy_loss(f, f[:, :2])


# --------------------------------------------------------------------------------------------- classes
def test_class_probabilities_and_indices():
    logits = torch.tensor([0.0, 2.0]).reshape(1, 1, 2, 1)
    p = class_probabilities(logits)
    assert p.shape == (1, 2, 2, 1) and torch.allclose(p.sum(1), torch.ones(1, 2, 1))
    assert p[0, 1, 1, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    assert class_indices(torch.tensor([0.0, 1.0]).reshape(1, 1, 2, 1), 2).tolist() == [[[0], [1]]]
    onehot = torch.nn.functional.one_hot(torch.tensor([[2, 0]]), 3).permute(0, 2, 1).float().unsqueeze(-1)
    assert class_indices(onehot, 3).tolist() == [[[2], [0]]]
    with pytest.raises(ValueError, match="soft"):
        class_indices(torch.full((1, 1, 2, 2), 0.5), 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        class_indices(torch.full((1, 1, 2, 2), 2.0), 2)
    with pytest.raises(ValueError, match="channels"):
        class_indices(torch.zeros(1, 4, 2, 2), 3)
