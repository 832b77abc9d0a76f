from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDistanceMetric
from monai.networks.utils import one_hot
from monai.transforms import AsDiscreted, Compose, ConcatItemsd, EnsureTyped

from dale_monai.metrics import (
    ASDMetric,
    DiceScoreMetric,
    EmptyCase,
    HD95Metric,
    IoUScoreMetric,
    RegionDiceMetric,
    asd,
    binary_case_metrics,
    case_metrics,
    dice,
    empty_case,
    hd95,
    iou,
    region_dice,
    summarize,
    surface_distances,
    worst_case_distance,
)


def _square(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


# a 4×4 square and the same square shifted by 3 rows: the two overlap in one row
P2 = _square((12, 10), (2, 2), (6, 6))
G2 = _square((12, 10), (5, 2), (9, 6))
# the 3D analogue, 4×4×4 cubes overlapping in one slice
P3 = _square((11, 7, 7), (2, 1, 1), (6, 5, 5))
G3 = _square((11, 7, 7), (5, 1, 1), (9, 5, 5))


def test_dice_iou_hand_computed():
    assert dice(P2, G2) == pytest.approx(2 * 4 / 32)
    assert iou(P2, G2) == pytest.approx(4 / 28)
    a = np.array([[1, 1, 0], [0, 0, 0]])
    b = np.array([[1, 0, 0], [1, 0, 0]])
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(1 / 3)
    assert dice(torch.tensor(a), torch.tensor(a)) == 1.0


def test_shifted_square_distances_hand_computed():
    # edge pixels of P2 and their distance to G2's edge: top row 4×3, two side rows 2×2 and 2×1, bottom row 4×0
    d_pg, d_gp = surface_distances(P2, G2)
    assert sorted(d_pg.tolist()) == [0] * 4 + [1] * 2 + [2] * 2 + [3] * 4
    assert sorted(d_gp.tolist()) == sorted(d_pg.tolist())
    assert asd(P2, G2) == pytest.approx(18 / 12)
    assert hd95(P2, G2) == pytest.approx(3.0)  # the 95th percentile of twelve values, top four of them 3


def test_shifted_cube_3d_hand_computed():
    # surface voxels per slice of P3: face 16 (distance 3), ring 12 (2), ring 12 (1), face 16 (0)
    assert dice(P3, G3) == pytest.approx(2 * 16 / 128)
    assert iou(P3, G3) == pytest.approx(16 / 112)
    assert asd(P3, G3) == pytest.approx((16 * 3 + 12 * 2 + 12 * 1) / 56)
    assert hd95(P3, G3) == pytest.approx(3.0)


def test_spacing_scales_along_the_right_axis():
    # the shift is along axis 0: its spacing scales every distance, the spacing of axis 1 changes none
    assert asd(P2, G2, spacing=(2.0, 0.5)) == pytest.approx(3.0)
    assert hd95(P2, G2, spacing=(2.0, 0.5)) == pytest.approx(6.0)
    assert asd(P2, G2, spacing=(1.0, 7.0)) == pytest.approx(1.5)
    assert hd95(P3, G3, spacing=2.5) == pytest.approx(7.5)
    assert asd(P3, G3, spacing=(0.5, 3.0, 3.0)) == pytest.approx(0.75)


def test_empty_cases_are_counted_honestly():
    empty = np.zeros((12, 10), bool)
    assert empty_case(empty, empty) == EmptyCase.BOTH_EMPTY
    assert (dice(empty, empty), iou(empty, empty), hd95(empty, empty), asd(empty, empty)) == (1.0, 1.0, 0.0, 0.0)

    diag = math.sqrt(12**2 + 10**2)
    assert worst_case_distance((12, 10)) == pytest.approx(diag)
    for pred, gt, status in ((empty, G2, EmptyCase.PRED_EMPTY), (P2, empty, EmptyCase.GT_EMPTY)):
        assert empty_case(pred, gt) == status
        assert dice(pred, gt) == 0.0 and iou(pred, gt) == 0.0
        assert hd95(pred, gt) == pytest.approx(diag)
        assert asd(pred, gt) == pytest.approx(diag)
        # physical units: the field of view is 12·2 by 10·0.5
        assert hd95(pred, gt, spacing=(2.0, 0.5)) == pytest.approx(math.hypot(24, 5))
    # an empty prediction scores worse than even the farthest possible non-empty one
    corner_p = _square((12, 10), (0, 0), (1, 1))
    corner_g = _square((12, 10), (11, 9), (12, 10))
    assert hd95(corner_p, corner_g) < hd95(empty, corner_g)
    assert worst_case_distance((4, 5, 6), spacing=(1.0, 2.0, 3.0)) == pytest.approx(math.sqrt(16 + 100 + 324))


def test_case_metrics_flags_empty_prediction():
    row = case_metrics(np.zeros((12, 10), int), G2.astype(int))
    assert row["empty_pred"] == 1 and row["empty_gt"] == 0 and row["both_empty"] == 0
    assert row["dice"] == 0.0 and row["miou"] == 0.0
    assert row["hd95"] == pytest.approx(math.hypot(12, 10)) and row["asd"] == pytest.approx(math.hypot(12, 10))
    both = case_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int))
    assert both["both_empty"] == 1 and both["dice"] == 1.0 and both["hd95"] == 0.0


def _blobs(rng: np.random.Generator, shape, n_classes: int, n: int) -> np.ndarray:
    """Label maps of random overlapping boxes, every class present."""
    out = np.zeros((n, *shape), np.int64)
    for i in range(n):
        for c in range(1, n_classes):
            lo = [rng.integers(0, s - 3) for s in shape]
            hi = [lo_ + rng.integers(2, s - lo_ + 1) for lo_, s in zip(lo, shape)]
            out[i][tuple(slice(a, b) for a, b in zip(lo, hi))] = c
    return out


@pytest.mark.parametrize("shape, spacing", [((16, 14), None), ((16, 14), (0.7, 1.9)), ((9, 8, 7), (1.0, 0.6, 2.5))])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_agrees_with_monai_on_nonempty_cases(shape, spacing, n_classes):
    rng = np.random.default_rng(n_classes + len(shape))
    pred, gt = _blobs(rng, shape, n_classes, 4), _blobs(rng, shape, n_classes, 4)
    pred_oh = one_hot(torch.from_numpy(pred)[:, None], n_classes)
    gt_oh = one_hot(torch.from_numpy(gt)[:, None], n_classes)
    # every foreground class is present in both, so MONAI's values are defined everywhere
    assert pred_oh[:, 1:].flatten(2).any(-1).all() and gt_oh[:, 1:].flatten(2).any(-1).all()
    kw = {} if spacing is None else {"spacing": spacing}
    monai_hd = HausdorffDistanceMetric(percentile=95, reduction="none")(pred_oh, gt_oh, **kw)
    monai_asd = SurfaceDistanceMetric(symmetric=True, reduction="none")(pred_oh, gt_oh, **kw)
    monai_dice = DiceMetric(include_background=False, reduction="none")(pred_oh, gt_oh)
    monai_iou = MeanIoU(include_background=False, reduction="none")(pred_oh, gt_oh)

    ours_hd = HD95Metric(spacing=spacing)(pred_oh, gt_oh)[0]
    ours_asd = ASDMetric()(pred_oh, gt_oh, **kw)[0]
    torch.testing.assert_close(ours_hd, monai_hd.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_asd, monai_asd.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(DiceScoreMetric()(pred_oh, gt_oh)[0], monai_dice.float())
    torch.testing.assert_close(IoUScoreMetric()(pred_oh, gt_oh)[0], monai_iou.float())
    for i in range(4):
        row = case_metrics(pred[i], gt[i], spacing=spacing, num_classes=n_classes)
        assert row["hd95"] == pytest.approx(monai_hd[i].mean().item(), rel=1e-5)
        assert row["asd"] == pytest.approx(monai_asd[i].mean().item(), rel=1e-5)
        assert row["dice"] == pytest.approx(monai_dice[i].mean().item(), rel=1e-6)
        assert row["miou"] == pytest.approx(monai_iou[i].mean().item(), rel=1e-6)


def test_multiclass_case_metrics_are_means_over_foreground_classes():
    gt = np.zeros((12, 10), int)
    gt[P2] = 1
    gt[0:2, 7:10] = 2  # class 2 in the truth only: the prediction misses it
    pred = np.zeros((12, 10), int)
    pred[G2] = 1
    pred[10:12, 0:2] = 3  # class 3 in the prediction only
    row = case_metrics(pred, gt, num_classes=5)  # class 4 is absent from both
    diag = math.hypot(12, 10)
    assert row["dice_1"] == pytest.approx(0.25) and row["hd95_1"] == pytest.approx(3.0)
    assert (row["dice_2"], row["dice_3"], row["dice_4"]) == (0.0, 0.0, 1.0)
    assert (row["hd95_2"], row["hd95_3"], row["hd95_4"]) == (pytest.approx(diag), pytest.approx(diag), 0.0)
    assert row["dice"] == pytest.approx((0.25 + 0 + 0 + 1) / 4)
    assert row["miou"] == pytest.approx((4 / 28 + 0 + 0 + 1) / 4)
    assert row["asd"] == pytest.approx((1.5 + diag + diag + 0) / 4)
    assert (row["empty_pred"], row["empty_gt"], row["both_empty"]) == (1, 1, 1)
    binary = case_metrics((pred == 1).astype(int), (gt == 1).astype(int))
    assert "dice_1" not in binary and binary["dice"] == pytest.approx(0.25)


def test_region_dice():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 1]])
    gt = np.array([[1, 0, 0, 1], [1, 1, 0, 1]])
    # M^f: 1 on the fuzzy patches, the score m (<= τ) elsewhere; m = τ exactly is not fuzzy
    m_f = np.array([[1.0, 1.0, 0.9, 0.2], [1.0, 1.0, 0.5, 1.0]])
    # R = {(0,0), (0,1), (1,0), (1,1), (1,3)}: |P∩R| = 4, |G∩R| = 4, |P∩G∩R| = |{(0,0), (1,0), (1,3)}| = 3
    assert region_dice(pred, gt, m_f) == pytest.approx(2 * 3 / (4 + 4))
    assert region_dice(pred, gt, m_f > 0.95) == pytest.approx(0.75)  # a boolean region works too
    assert region_dice(pred, gt, m_f, threshold=0.1) == pytest.approx(dice(pred, gt))
    assert math.isnan(region_dice(pred, gt, np.zeros((2, 4))))
    # no foreground of either inside the region: the absence was right
    assert region_dice(pred, gt, np.array([[0, 0, 1, 0], [0, 0, 1, 0]])) == 1.0
    row = case_metrics(pred, gt, fuzzy_mask=m_f)
    assert row["fuzzy_dice"] == pytest.approx(0.75) and row["fuzzy_region_empty"] == 0
    row = case_metrics(pred, gt, fuzzy_mask=np.zeros((2, 4)))
    assert math.isnan(row["fuzzy_dice"]) and row["fuzzy_region_empty"] == 1
    full = binary_case_metrics(pred, gt, region=m_f)
    assert full["region_status"] == EmptyCase.NONEMPTY and full["fuzzy_dice"] == pytest.approx(0.75)


def test_summarize_mean_std_counts():
    rows = [
        {"case": "a", "dice": 0.5, "hd95": 2.0, "fuzzy_dice": 1.0, "empty_pred": 0, "fuzzy_region_empty": 0},
        {"case": "b", "dice": 1.0, "hd95": 4.0, "fuzzy_dice": math.nan, "empty_pred": 1, "fuzzy_region_empty": 1},
        {"case": "c", "dice": 0.0, "hd95": 6.0, "fuzzy_dice": 0.5, "empty_pred": 1, "fuzzy_region_empty": 0},
    ]
    s = summarize(rows)
    assert s["cases"] == 3
    assert s["dice"] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.5), "n": 3, "n_nan": 0}
    assert s["hd95"]["mean"] == pytest.approx(4.0) and s["hd95"]["std"] == pytest.approx(2.0)
    assert s["fuzzy_dice"] == {"mean": pytest.approx(0.75), "std": pytest.approx(math.sqrt(0.125)), "n": 2, "n_nan": 1}
    assert s["empty_pred"] == 2 and s["fuzzy_region_empty"] == 1
    assert "case" not in s
    assert s["dice"]["std"] == pytest.approx(np.std([0.5, 1.0, 0.0], ddof=1))
    assert summarize(rows, ddof=0)["dice"]["std"] == pytest.approx(np.std([0.5, 1.0, 0.0]))
    assert math.isnan(summarize(rows[:1])["dice"]["std"])
    assert "status" not in summarize([binary_case_metrics(P2, G2)])


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="binary mask"):
        dice(np.array([[0.2, 0.8]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="same spatial shape"):
        hd95(np.ones((3, 3)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="spacing must be one number or 2"):
        asd(P2, G2, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        hd95(P2, G2, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        case_metrics(np.full((3, 3), 2), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="integer class indices"):
        case_metrics(np.full((3, 3), 0.5), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="num_classes"):
        case_metrics(np.zeros((3, 3), int), np.zeros((3, 3), int), num_classes=1)
    with pytest.raises(ValueError, match="foreground in both"):
        surface_distances(np.zeros((3, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="same shape"):
        DiceScoreMetric()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="extra last channel"):
        RegionDiceMetric()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))


def test_cumulative_metrics_buffer_status_and_aggregate_without_dropping():
    empty = torch.zeros(1, 1, 12, 10)
    g2 = torch.from_numpy(G2)[None, None].float()
    p2 = torch.from_numpy(P2)[None, None].float()
    y_pred = torch.cat([p2, empty, empty, p2])
    y = torch.cat([g2, g2, empty, empty])
    diag = math.hypot(12, 10)
    hd = HD95Metric(get_not_nans=True)
    hd(y_pred[:2], y[:2])
    hd(y_pred[2:], y[2:])  # two batches accumulate
    values, status = hd.get_buffer()
    torch.testing.assert_close(values[:, 0], torch.tensor([3.0, diag, 0.0, diag]))
    assert status[:, 0].tolist() == [EmptyCase.NONEMPTY, EmptyCase.PRED_EMPTY, EmptyCase.BOTH_EMPTY, EmptyCase.GT_EMPTY]
    value, not_nans = hd.aggregate()
    assert value.item() == pytest.approx((3.0 + 2 * diag) / 4) and not_nans.item() == 4
    assert hd.empty_counts() == {
        "entries": 4, "cases": 4, "both_empty": 1, "empty_pred": 1, "empty_gt": 1, "fuzzy_region_empty": 0
    }
    d = DiceScoreMetric()
    d(y_pred, y)
    assert d.aggregate().item() == pytest.approx((0.25 + 0 + 1 + 0) / 4)
    torch.testing.assert_close(HD95Metric(reduction="none")(y_pred, y)[0], values)
    # MONAI's own metric hides the problem: NaN or 0 for the same cases, then averages what is left
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_hd = HausdorffDistanceMetric(percentile=95, include_background=True, reduction="none")(y_pred, y)
    assert not torch.allclose(monai_hd.nan_to_num(-1.0)[:, 0], values[:, 0])


def test_region_dice_metric_kwarg_channel_and_empty_region():
    pred = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 1]]).float()
    gt = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 1]]).float()
    m_f = torch.tensor([[1.0, 1.0, 0.9, 0.2], [1.0, 1.0, 0.5, 1.0]])
    y_pred = one_hot(torch.stack([pred, pred])[:, None].long(), 2)
    y = one_hot(torch.stack([gt, gt])[:, None].long(), 2)
    region = torch.stack([m_f, torch.zeros_like(m_f)])[:, None]
    metric = RegionDiceMetric(get_not_nans=True)
    values, status = metric(y_pred, y, region=region)
    assert values[0, 0].item() == pytest.approx(0.75) and math.isnan(values[1, 0].item())
    assert status[:, 0].tolist() == [EmptyCase.NONEMPTY, EmptyCase.REGION_EMPTY]
    value, not_nans = metric.aggregate()
    assert value.item() == pytest.approx(0.75) and not_nans.item() == 1
    assert metric.empty_counts()["fuzzy_region_empty"] == 1
    packed = RegionDiceMetric(reduction="none")(y_pred, torch.cat([y, region], dim=1))[0]
    torch.testing.assert_close(packed, values, equal_nan=True)


def test_metrics_in_a_supervised_evaluator_over_two_batches():
    """IgniteMetricHandler + SupervisedEvaluator: the handler values are the means of case_metrics."""
    rng = np.random.default_rng(0)
    labels = _blobs(rng, (16, 16), 2, 4)
    preds = _blobs(rng, (16, 16), 2, 4)
    preds[2] = 0  # one empty prediction must be counted, not dropped
    m_f = np.ones((4, 16, 16), np.float32)
    m_f[:, :, :8] = 0.3  # the left half is not fuzzy
    m_f[3] = 0.0  # one case has no fuzzy region
    data = [
        {
            "image": torch.from_numpy(p[None] * 2.0 - 1.0).float(),
            "label": torch.from_numpy(lab[None]).float(),
            "mask_f": torch.from_numpy(m[None]),
        }
        for p, lab, m in zip(preds, labels, m_f)
    ]

    class Echo(torch.nn.Module):  # logits whose argmax is the prepared prediction
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([-x, x], dim=1)

    post = Compose(
        [
            AsDiscreted(keys="pred", argmax=True, to_onehot=2),
            AsDiscreted(keys="label", to_onehot=2),
            EnsureTyped(keys="mask_f"),  # ConcatItemsd needs one type; AsDiscreted made the label a MetaTensor
            ConcatItemsd(keys=["label", "mask_f"], name="label_region"),
        ]
    )
    spacing = (0.5, 2.0)
    pair = from_engine(["pred", "label"])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2, num_workers=0),
        network=Echo(),
        postprocessing=post,
        key_val_metric={"dice": IgniteMetricHandler(DiceScoreMetric(), output_transform=pair)},
        additional_metrics={
            "miou": IgniteMetricHandler(IoUScoreMetric(), output_transform=pair),
            "hd95": IgniteMetricHandler(HD95Metric(spacing=spacing), output_transform=pair),
            "asd": IgniteMetricHandler(ASDMetric(spacing=spacing), output_transform=pair),
            "fuzzy_dice": IgniteMetricHandler(
                RegionDiceMetric(), output_transform=from_engine(["pred", "label_region"])
            ),
        },
    )
    evaluator.run()
    assert evaluator.state.iteration == 2
    rows = [case_metrics(p, lab, spacing=spacing, fuzzy_mask=m) for p, lab, m in zip(preds, labels, m_f)]
    summary = summarize(rows)
    assert summary["empty_pred"] == 1 and summary["fuzzy_region_empty"] == 1
    for name in ("dice", "miou", "hd95", "asd", "fuzzy_dice"):
        assert evaluator.state.metrics[name] == pytest.approx(summary[name]["mean"], rel=1e-5), name
    assert summary["fuzzy_dice"]["n"] == 3
    values, status = evaluator.state.metric_details["hd95"]
    assert values.shape == (4, 1) and int((status == EmptyCase.PRED_EMPTY).sum()) == 1
    assert values[2, 0].item() == pytest.approx(worst_case_distance((16, 16), spacing))
