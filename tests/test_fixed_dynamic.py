"""Fixed + dynamic pseudo-labels: crops, COM and CutMix on constructed masks with hand-checked regions, and the
FixedDynamicTrainer's iteration."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from dale_monai.engines import FixedDynamicKeys, FixedDynamicTrainer
from dale_monai.fixed_dynamic import (
    crop_at,
    crop_geometry,
    cutmix,
    cutmix_masks,
    dynamic_pseudo_label,
    overlap_bounds,
    random_crop_starts,
    shift_offsets,
    temporary_probabilities,
)
from dale_monai.losses import DALELoss
from dale_monai.meta import virtual_norm_mode

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------- geometry
def test_crop_geometry_rounds_to_the_multiple_and_checks_the_room():
    assert crop_geometry([352, 352]) == ((256, 256), (32, 32))  # 0.75·352 = 264 → 256; 256/8 = 32
    assert crop_geometry([96, 96]) == ((64, 64), (8, 8))
    assert crop_geometry([48, 48, 48]) == ((32, 32, 32), (4, 4, 0))  # 3D: no shift along the third axis
    assert crop_geometry([40, 40], 0.5, 8, 0.25) == ((16, 16), (4, 4))
    with pytest.raises(ValueError, match="cannot hold a crop of"):
        crop_geometry([32, 32])  # the crop is at least one multiple (32): no room for the shifts
    for kw, name in ((dict(crop_fraction=0), "crop_fraction"), (dict(size_multiple=0), "size_multiple"),
                     (dict(shift_fraction=0.5), "shift_fraction")):
        with pytest.raises(ValueError, match=name):
            crop_geometry([64, 64], **kw)


def test_shift_offsets_are_the_four_diagonals():
    assert shift_offsets((2, 3)) == [(2, 3), (2, -3), (-2, 3), (-2, -3)]
    assert shift_offsets((2, 2, 0)) == [(2, 2, 0), (2, -2, 0), (-2, 2, 0), (-2, -2, 0)]


def test_crops_land_where_asked_and_stay_inside():
    x = torch.arange(2 * 10 * 12, dtype=torch.float32).reshape(2, 1, 10, 12)
    starts = torch.tensor([[1, 2], [3, 0]])
    crops = crop_at(x, starts, (4, 5))
    assert torch.equal(crops[0, 0], x[0, 0, 1:5, 2:7]) and torch.equal(crops[1, 0], x[1, 0, 3:7, 0:5])
    with pytest.raises(ValueError, match="outside"):
        crop_at(x, torch.tensor([[7, 0], [0, 0]]), (4, 5))
    torch.manual_seed(0)
    drawn = random_crop_starts(500, (10, 12), (4, 5), (2, 1))
    assert drawn[:, 0].min() == 2 and drawn[:, 0].max() == 10 - 4 - 2
    assert drawn[:, 1].min() == 1 and drawn[:, 1].max() == 12 - 5 - 1


# --------------------------------------------------------------------------------------------- COM
def test_overlap_of_four_diagonal_shifts_is_the_crop_without_a_border():
    assert overlap_bounds(shift_offsets((2, 2)), (8, 8)) == ((2, 6), (2, 6))
    assert overlap_bounds([(3, 0), (1, 0)], (8, 8)) == ((3, 8), (0, 8))  # both shifted the same way
    with pytest.raises(ValueError, match="share no pixel"):
        overlap_bounds([(5, 0), (-5, 0)], (8, 8))


def test_com_takes_the_overlap_from_the_temporary_label_and_the_rest_from_the_fixed_one():
    """Fixed prediction: background everywhere; every shifted crop: foreground everywhere. The dynamic label is
    foreground exactly on the central 4x4 region that all four crops shifted by (±2, ±2) cover."""
    fixed = torch.full((1, 1, 8, 8), 0.1)
    shifted = [torch.full((1, 1, 8, 8), 0.9) for _ in range(4)]
    fix, dyn, overlap = dynamic_pseudo_label(fixed, shifted, shift_offsets((2, 2)))
    expected = torch.zeros(1, 1, 8, 8)
    expected[..., 2:6, 2:6] = 1
    assert torch.equal(fix, torch.zeros(1, 1, 8, 8)) and torch.equal(dyn, expected)
    assert torch.equal(overlap, expected.bool())


def test_temporary_label_reads_each_shifted_crop_at_its_own_offset():
    """Shifted crops taken from one probability map agree with it everywhere: the temporary label of pixel u is the
    map at the fixed crop's start + u, and the dynamic label equals the fixed one."""
    torch.manual_seed(1)
    field = torch.rand(1, 1, 16, 16)
    start, crop, offsets = torch.tensor([[4, 5]]), (8, 8), shift_offsets((2, 3))
    fixed = crop_at(field, start, crop)
    shifted = [crop_at(field, start + torch.tensor(o), crop) for o in offsets]
    temp = temporary_probabilities(shifted, offsets)
    assert temp.shape == (1, 1, 4, 2)  # rows 2..6, columns 3..5
    torch.testing.assert_close(temp, fixed[..., 2:6, 3:5])
    fix, dyn, _ = dynamic_pseudo_label(fixed, shifted, offsets)
    assert torch.equal(fix, dyn)


def test_temporary_label_averages_disagreeing_crops_multiclass():
    """Three classes; on the overlap, three crops say class 2 weakly and one says class 1 strongly: the mean
    decides. Off the overlap the fixed label (class 0) stays."""
    def probs(c, p):
        out = torch.full((1, 3, 6, 6), (1 - p) / 2)
        out[:, c] = p
        return out

    fixed = probs(0, 0.9)
    shifted = [probs(2, 0.4), probs(2, 0.4), probs(2, 0.4), probs(1, 1.0)]
    # mean: class 2 = (3·0.4 + 0)/4 = 0.3, class 1 = (3·0.3 + 1)/4 = 0.475 → class 1
    _, dyn, _ = dynamic_pseudo_label(fixed, shifted, shift_offsets((1, 1)))
    expected = torch.zeros(1, 1, 6, 6)
    expected[..., 1:5, 1:5] = 1
    assert torch.equal(dyn, expected)


# --------------------------------------------------------------------------------------------- CutMix
def test_cutmix_boxes_are_boxes_and_mix_images_and_labels_alike():
    torch.manual_seed(0)
    masks = cutmix_masks(64, (20, 30))
    assert masks.shape == (64, 1, 20, 30) and set(masks.unique().tolist()) <= {0.0, 1.0}
    for m in masks[:, 0]:
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        if len(rows):  # a box: the product of its row and column ranges
            box = torch.zeros_like(m)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = 1
            assert torch.equal(m, box)
    share = masks.mean().item()
    assert 0.2 < share < 0.5  # E[1 − λ] = 0.5 before clipping to the image
    # a hand-made mask: image b takes the box from image b − 1
    x = torch.stack([torch.full((1, 4, 4), float(v)) for v in (1, 2, 3)])
    m = torch.zeros(3, 1, 4, 4)
    m[0, 0, :2, :2] = 1
    m[2, 0, 3:, 1:3] = 1
    mixed = cutmix(x, m)
    assert torch.equal(mixed[0, 0], torch.tensor([[3, 3, 1, 1], [3, 3, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1.0]]))
    assert torch.equal(mixed[1], x[1])
    assert torch.equal(mixed[2, 0], torch.tensor([[3, 3, 3, 3], [3, 3, 3, 3], [3, 3, 3, 3], [3, 2, 2, 3.0]]))
    labels = (x > 1.5).float()
    assert torch.equal(cutmix(labels, m), (mixed > 1.5).float())
    with pytest.raises(ValueError, match="do not match"):
        cutmix(x, m[:2])


def test_cutmix_masks_3d():
    torch.manual_seed(2)
    masks = cutmix_masks(8, (6, 6, 6))
    assert masks.shape == (8, 1, 6, 6, 6) and masks.sum() > 0


# --------------------------------------------------------------------------------------------- the trainer
def _net(seed):
    torch.manual_seed(seed)
    return UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch")


def _batches(size=20):
    g = torch.Generator().manual_seed(0)
    labeled = [{"image": torch.randn(2, 1, size, size, generator=g),
                "label": (torch.rand(2, 1, size, size, generator=g) > 0.5).float()}]
    unlabeled = [{"image": torch.randn(3, 1, size, size, generator=g)}]
    return labeled, unlabeled


def test_one_iteration_matches_the_rule_by_hand():
    labeled, unlabeled = _batches()
    nets = [_net(0), _net(1)]
    refs = [copy.deepcopy(n) for n in nets]
    kw = dict(crop_fraction=0.5, size_multiple=2, shift_fraction=0.2, alpha=0.5, fixed_weight=0.3,
              dynamic_weight=0.7)
    trainer = FixedDynamicTrainer("cpu", 1, labeled, nets, [torch.optim.SGD(n.parameters(), lr=0.05) for n in nets],
                                  DALELoss(dice_weight=1.0), unlabeled_data_loader=unlabeled, unsup_weight=2.0,
                                  rampup_length=0, **kw)
    torch.manual_seed(7)
    trainer.run()
    # by hand, drawing the random numbers in the trainer's order
    x, y, xu = labeled[0]["image"], labeled[0]["label"], unlabeled[0]["image"]
    crop, shift = crop_geometry((20, 20), 0.5, 2, 0.2)
    assert crop == (10, 10) and shift == (2, 2)
    offsets = shift_offsets(shift)
    torch.manual_seed(7)
    starts = random_crop_starts(3, (20, 20), crop, shift)
    xf = crop_at(xu, starts, crop)
    shifted = [crop_at(xu, starts + torch.tensor(o), crop) for o in offsets]
    lstarts = random_crop_starts(2, (20, 20), crop)
    xl, yl = crop_at(x, lstarts, crop), crop_at(y, lstarts, crop)

    def labels(net):
        with torch.no_grad(), virtual_norm_mode(net):
            p = torch.sigmoid(net.train()(torch.cat([xf, *shifted])))
        return dynamic_pseudo_label(p[:3], [p[3 * (k + 1):3 * (k + 2)] for k in range(4)], offsets)[:2]

    (fa, da), (fb, db) = labels(refs[0]), labels(refs[1])
    masks = cutmix_masks(3, crop)
    xmix = cutmix(xf, masks)
    loss = DALELoss(dice_weight=1.0)
    pa = refs[0](torch.cat([xl, xf]))
    pb = refs[1](torch.cat([xl, xmix]))
    bce = F.binary_cross_entropy_with_logits
    la = 0.5 * loss(pa[:2], yl) + 2.0 * (0.3 * bce(pa[2:], fb) + 0.7 * bce(pa[2:], db))
    lb = 0.5 * loss(pb[:2], yl) + 2.0 * (0.3 * bce(pb[2:], cutmix(fa, masks)) + 0.7 * bce(pb[2:], cutmix(da, masks)))
    for net, ref, total in ((nets[0], refs[0], la), (nets[1], refs[1], lb)):
        grads = torch.autograd.grad(total, list(ref.parameters()), retain_graph=True)
        for p, p0, g in zip(net.parameters(), ref.parameters(), grads):
            torch.testing.assert_close(p.detach(), p0.detach() - 0.05 * g, rtol=1e-5, atol=1e-6)
    out = trainer.state.output[0]
    assert out["pred"].shape == (1, 10, 10) and out["image"].shape == (1, 10, 10)
    assert 0 <= out[FixedDynamicKeys.DYNAMIC_CHANGED] <= 1


@pytest.mark.parametrize(("kw", "match"), [
    (dict(alpha=0.0), "alpha"), (dict(fixed_weight=-1.0), "fixed_weight"), (dict(dynamic_weight=float("inf")),
                                                                            "dynamic_weight"),
    (dict(crop_fraction=1.5), "crop_fraction"), (dict(shift_fraction=0.0), "shift_fraction"),
])
def test_bad_options_are_named(kw, match):
    labeled, unlabeled = _batches()
    nets = [_net(0), _net(1)]
    with pytest.raises(ValueError, match=match):
        FixedDynamicTrainer("cpu", 1, labeled, nets, [torch.optim.SGD(n.parameters(), lr=0.1) for n in nets],
                            DALELoss(), unlabeled_data_loader=unlabeled, **kw)


def test_an_input_too_small_for_the_crops_names_the_options():
    labeled, unlabeled = _batches(size=20)
    nets = [_net(0), _net(1)]
    trainer = FixedDynamicTrainer("cpu", 1, labeled, nets, [torch.optim.SGD(n.parameters(), lr=0.1) for n in nets],
                                  DALELoss(), unlabeled_data_loader=unlabeled)
    with pytest.raises(ValueError, match="lower crop_fraction, size_multiple or shift_fraction"):
        trainer.run()
