"""Small-loss selection of Co-teaching and TriNet (dale_monai.coteaching): schedule, exact selection, exchange rules."""

from __future__ import annotations

import math

import pytest
import torch

from dale_monai.coteaching import (
    coteaching_weights,
    keep_ratio,
    selection_weights,
    small_loss_mask,
    trinet_weights,
)


# --------------------------------------------------------------------------------------------- r(t)
@pytest.mark.parametrize("s", [0.0, 0.5, 0.85, 1.0])
def test_keep_ratio_follows_the_formula(s):
    start, end = 100, 600
    for t in (0, 99, 100, 101, 250, 350, 599, 600, 601, 10_000):
        x = min(max((t - start) / (end - start), 0.0), 1.0)
        assert keep_ratio(t, s, start, end) == pytest.approx(1 - (1 - s) * math.exp(-5 * (1 - x) ** 2), abs=1e-15)
        assert keep_ratio(t, s, start, end, "linear") == pytest.approx(1 - (1 - s) * x, abs=1e-15)


def test_keep_ratio_values_at_the_ends_of_the_ramp():
    # sigmoid ramp: r = 1 - (1 - s)·e^-5 before the ramp (PyMIC's value), exactly s after it
    assert keep_ratio(0, 0.8, 10, 20) == pytest.approx(1 - 0.2 * math.exp(-5))
    assert keep_ratio(20, 0.8, 10, 20) == pytest.approx(0.8)
    assert keep_ratio(15, 0.8, 10, 20) == pytest.approx(1 - 0.2 * math.exp(-1.25))
    assert keep_ratio(0, 0.8, 10, 20, "linear") == 1.0 and keep_ratio(15, 0.8, 10, 20, "linear") == pytest.approx(0.9)
    # a ramp of length 0 is a step
    assert keep_ratio(9, 0.7, 10, 10, "linear") == 1.0 and keep_ratio(10, 0.7, 10, 10, "linear") == pytest.approx(0.7)
    # monotone non-increasing in t
    r = [keep_ratio(t, 0.6, 5, 50) for t in range(60)]
    assert all(a >= b for a, b in zip(r, r[1:]))


@pytest.mark.parametrize(("args", "match"), [
    ((0, -0.1, 0, 10), "select_ratio"), ((0, 1.5, 0, 10), "select_ratio"), ((0, float("nan"), 0, 10), "select_ratio"),
    ((0, 0.5, 10, 5), "ramp_end"), ((0, 0.5, -1, 5), "ramp_start"), ((0, 0.5, 0, 2.5), "ramp_end"),
    ((0, 0.5, 0, 10, "cosine"), "ramp"),
])
def test_keep_ratio_rejects_bad_options_by_name(args, match):
    with pytest.raises(ValueError, match=match):
        keep_ratio(*args)


# --------------------------------------------------------------------------------------------- selection
def _reference_mask(loss: torch.Tensor, ratio: float) -> torch.Tensor:
    """Stable sort: the first ⌊ratio·N⌋ pixels in (loss, position) order."""
    flat = loss.reshape(-1)
    k = int(math.floor(ratio * flat.numel() + 1e-9))
    order = torch.sort(flat, stable=True).indices[:k]
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.reshape(loss.shape)


@pytest.mark.parametrize("ratio", [0.0, 0.001, 0.3, 0.5, 0.85, 0.999, 1.0])
def test_small_loss_mask_selects_exactly_the_k_smallest(ratio):
    torch.manual_seed(0)
    loss = torch.rand(3, 1, 17, 13)
    mask = small_loss_mask(loss, ratio)
    k = int(math.floor(ratio * loss.numel() + 1e-9))
    assert mask.dtype == torch.bool and mask.shape == loss.shape and int(mask.sum()) == k
    assert torch.equal(mask, _reference_mask(loss, ratio))
    if 0 < k < loss.numel():
        assert loss[mask].max() <= loss[~mask].min()


def test_ties_are_broken_by_position_and_the_count_stays_exact():
    # many equal losses (e.g. a padded background): exactly k, ties taken in memory order
    loss = torch.tensor([3.0, 1.0, 1.0, 2.0, 1.0, 1.0, 0.5, 1.0]).reshape(1, 1, 2, 4)
    mask = small_loss_mask(loss, 0.5)  # k = 4: the 0.5 and the first three 1.0s
    assert mask.reshape(-1).tolist() == [False, True, True, False, True, False, True, False]
    assert torch.equal(mask, _reference_mask(loss, 0.5))
    assert int(small_loss_mask(torch.zeros(2, 1, 5, 5), 0.3).sum()) == 15


def test_per_sample_selection_keeps_the_share_in_each_image():
    torch.manual_seed(1)
    loss = torch.rand(4, 1, 10, 10)
    loss[0] += 10  # image 0 is hard everywhere: batch selection drops it, per-sample selection does not
    batch = small_loss_mask(loss, 0.5)
    assert int(batch[0].sum()) == 0 and int(batch.sum()) == 200
    per = small_loss_mask(loss, 0.5, per_sample=True)
    assert [int(m.sum()) for m in per] == [50] * 4
    for i in range(4):
        assert torch.equal(per[i], _reference_mask(loss[i], 0.5))


def test_nan_losses_sort_last():
    loss = torch.tensor([0.1, float("nan"), 0.3, 0.2, float("nan")]).reshape(1, 1, 5)
    assert small_loss_mask(loss, 0.6).reshape(-1).tolist() == [True, False, True, True, False]
    assert small_loss_mask(loss, 0.8).reshape(-1).tolist() == [True, True, True, True, False]


def test_a_3d_batch_above_2_to_the_24_elements():
    """torch.quantile refuses more than 2^24 elements (pytorch/pytorch#64947); 3D batches have more."""
    shape = (2, 1, 160, 160, 330)  # 16,896,000 > 16,777,216
    n = math.prod(shape)
    assert n > 2**24
    g = torch.Generator().manual_seed(0)
    loss = torch.rand(shape, generator=g)
    mask = small_loss_mask(loss, 0.8)
    k = int(math.floor(0.8 * n + 1e-9))
    assert int(mask.sum()) == k
    threshold = torch.kthvalue(loss.reshape(-1), k).values
    assert bool((loss[mask] <= threshold).all()) and bool((loss[~mask] >= threshold).all())
    w0, w1 = coteaching_weights([loss, loss.flip(-1)], 0.8)
    assert int((w0 > 0).sum()) == k and int((w1 > 0).sum()) == k


def test_small_loss_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="ratio"):
        small_loss_mask(torch.rand(1, 1, 4, 4), 1.2)
    with pytest.raises(ValueError, match="empty"):
        small_loss_mask(torch.rand(0, 1, 4, 4), 0.5)


# --------------------------------------------------------------------------------------------- exchange rules
def test_selection_weights_give_the_mean_over_selected_pixels():
    loss = torch.arange(10.0).reshape(1, 1, 10)
    mask = loss < 4
    w = selection_weights(mask)
    assert (w * loss).mean() == pytest.approx(loss[mask].mean().item())  # PyMIC's Σ(ℓ·m)/Σm
    assert torch.equal(selection_weights(torch.zeros(1, 1, 5, dtype=torch.bool)), torch.zeros(1, 1, 5))
    assert selection_weights(mask, torch.float64).dtype == torch.float64


def test_coteaching_exchanges_the_selections():
    # network 0 finds the left half easy, network 1 the right half: each must learn the other's easy half
    loss0 = torch.tensor([[0.1, 0.2, 0.9, 0.8]]).reshape(1, 1, 4)
    loss1 = torch.tensor([[0.9, 0.8, 0.1, 0.2]]).reshape(1, 1, 4)
    w0, w1 = coteaching_weights([loss0, loss1], 0.5)
    assert w0.reshape(-1).tolist() == [0.0, 0.0, 2.0, 2.0]
    assert w1.reshape(-1).tolist() == [2.0, 2.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="exactly 2"):
        coteaching_weights([loss0], 0.5)
    with pytest.raises(ValueError, match="one shape"):
        coteaching_weights([loss0, loss1.reshape(1, 1, 2, 2)], 0.5)


def test_trinet_trains_each_network_on_the_others_agreement():
    loss = [torch.tensor(v).reshape(1, 1, 4) for v in ([0.1, 0.2, 0.9, 0.8],   # selects pixels 0, 1
                                                      [0.1, 0.9, 0.2, 0.8],   # selects 0, 2
                                                      [0.9, 0.1, 0.2, 0.8])]  # selects 1, 2
    w = trinet_weights(loss, 0.5)
    assert w[0].reshape(-1).tolist() == [0.0, 0.0, 4.0, 0.0]  # 1 and 2 agree on pixel 2
    assert w[1].reshape(-1).tolist() == [0.0, 4.0, 0.0, 0.0]  # 0 and 2 agree on pixel 1
    assert w[2].reshape(-1).tolist() == [4.0, 0.0, 0.0, 0.0]  # 0 and 1 agree on pixel 0
    # no agreement: zero weights, no NaN (PyMIC divides 0 by 0 here)
    disjoint = [torch.tensor(v).reshape(1, 1, 3) for v in ([0.0, 1, 1], [1, 0.0, 1], [1, 1, 0.0])]
    assert all(torch.equal(x, torch.zeros(1, 1, 3)) for x in trinet_weights(disjoint, 0.34))
    with pytest.raises(ValueError, match="exactly 3"):
        trinet_weights(loss[:2], 0.5)
