"""The paper's segmentation metrics, per case, with empty masks counted honestly.

DALE reports Dice, mIoU, HD95 and ASD, and its ablations look at the fuzzy region, so this module gives:

- plain functions on one binary mask pair: :func:`dice`, :func:`iou`, :func:`hd95`, :func:`asd`,
  :func:`region_dice`, and :func:`case_metrics` for a label-map pair (binary or multi-class, 2D or 3D);
- :func:`summarize` for mean ± std over cases;
- MONAI :class:`~monai.metrics.CumulativeIterationMetric` subclasses (:class:`DiceScoreMetric`,
  :class:`IoUScoreMetric`, :class:`HD95Metric`, :class:`ASDMetric`, :class:`RegionDiceMetric`) that take
  one-hot ``y_pred`` / ``y`` like MONAI's metrics and plug into ``monai.handlers.IgniteMetricHandler``.

Empty masks (per case and foreground class; see :class:`EmptyCase`):

=====================  ==========  ==========  ===========================================
prediction / truth     Dice, IoU   HD95, ASD   why
=====================  ==========  ==========  ===========================================
both non-empty         computed    computed    same values as MONAI's metrics
both empty             1           0           the absence was predicted correctly
prediction empty only  0           worst       a missed object is the worst possible result
truth empty only       0           worst       a false alarm, likewise
=====================  ==========  ==========  ===========================================

"worst" is the diagonal of the field of view, ``sqrt(Σ (n_i·s_i)²)`` for an image of ``n_i`` pixels of
spacing ``s_i`` (physical units when a spacing is given, else pixels): it exceeds every distance two
pixels of the image can have, so an empty prediction always scores worse than any non-empty one. Nothing
is dropped from a mean: MONAI's own metrics return NaN or 0 distance there and then exclude or reward the
case. Every result also records its :class:`EmptyCase` so the count of such cases can be reported.

HD95 follows MONAI's ``HausdorffDistanceMetric(percentile=95)``: the larger of the two directed 95th
percentiles of the distances between the masks' edge pixels. ASD follows
``SurfaceDistanceMetric(symmetric=True)``: the mean of both directed edge distance sets together.
Multi-class values are means over the foreground classes (mIoU is the case mean of the per-class IoU).
"""

from __future__ import annotations

import math
import warnings
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction, get_edge_surface_distance, prepare_spacing
from monai.utils import MetricReduction, convert_to_numpy

__all__ = [
    "EmptyCase",
    "worst_case_distance",
    "empty_case",
    "dice",
    "iou",
    "surface_distances",
    "hd95",
    "asd",
    "region_dice",
    "binary_case_metrics",
    "case_metrics",
    "summarize",
    "DiceScoreMetric",
    "IoUScoreMetric",
    "HD95Metric",
    "ASDMetric",
    "RegionDiceMetric",
]

SpacingLike = float | Sequence[float] | np.ndarray | None

#: Default fuzzy-region threshold. M^f is 1 where the partition score m exceeds τ (= 0.9) and m
#: elsewhere, so ``M^f > 0.9`` selects exactly the fuzzy patches when the partition used τ = 0.9.
DEFAULT_REGION_THRESHOLD = 0.9


class EmptyCase(IntEnum):
    """How a (case, class) pair stands with respect to empty masks."""

    NONEMPTY = 0  #: prediction and truth both have foreground
    BOTH_EMPTY = 1  #: neither has foreground
    PRED_EMPTY = 2  #: the truth has foreground, the prediction none (a missed object)
    GT_EMPTY = 3  #: the prediction has foreground, the truth none (a false alarm)
    REGION_EMPTY = 4  #: region Dice only: the region holds no pixel, the value is NaN


_FLAG_KEYS = {
    EmptyCase.BOTH_EMPTY: "both_empty",
    EmptyCase.PRED_EMPTY: "empty_pred",
    EmptyCase.GT_EMPTY: "empty_gt",
    EmptyCase.REGION_EMPTY: "fuzzy_region_empty",
}


def _to_mask(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(convert_to_numpy(x))
    if arr.dtype == bool:
        return arr
    if arr.size and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(
            f"{name} must be a binary mask (bool or 0/1 values); threshold probabilities or take the argmax first."
        )
    return arr.astype(bool)


def _check_same_shape(**arrays: np.ndarray) -> tuple[int, ...]:
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    first = next(iter(shapes.values()))
    if any(s != first for s in shapes.values()):
        raise ValueError(f"masks must have the same spatial shape, got {shapes}.")
    if not 1 <= len(first) <= 3:
        raise ValueError(f"masks must have 1 to 3 spatial dimensions and no channel dimension, got shape {first}.")
    return first


def _spacing(spacing: SpacingLike, ndim: int) -> np.ndarray:
    """Validated per-axis spacing as float64 of length ``ndim`` (ones when ``None``)."""
    if spacing is None:
        return np.ones(ndim)
    sp = np.asarray(convert_to_numpy(spacing), dtype=np.float64).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing must be one number or {ndim} numbers (one per spatial axis), got {spacing!r}.")
    if not np.all(np.isfinite(sp) & (sp > 0)):
        raise ValueError(f"spacing must be positive and finite, got {spacing!r}.")
    return sp


def worst_case_distance(shape: Sequence[int], spacing: SpacingLike = None) -> float:
    """The distance given to HD95 / ASD when exactly one mask is empty: the field-of-view diagonal.

    Args:
        shape: the spatial shape of the image.
        spacing: pixel spacing (one number or one per axis); ``None`` means 1.

    Returns:
        ``sqrt(Σ (shape_i·spacing_i)²)``.
    """
    sp = _spacing(spacing, len(shape))
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=np.float64) * sp) ** 2)))


def empty_case(pred: Any, gt: Any) -> EmptyCase:
    """The :class:`EmptyCase` of a binary prediction / truth pair."""
    p, g = _to_mask(pred, "pred"), _to_mask(gt, "gt")
    return _empty_case(bool(p.any()), bool(g.any()))


def _empty_case(p_any: bool, g_any: bool) -> EmptyCase:
    if p_any and g_any:
        return EmptyCase.NONEMPTY
    if not p_any and not g_any:
        return EmptyCase.BOTH_EMPTY
    return EmptyCase.PRED_EMPTY if g_any else EmptyCase.GT_EMPTY


def _overlap(p: np.ndarray, g: np.ndarray) -> tuple[int, int, int]:
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g))


def _dice(p: np.ndarray, g: np.ndarray) -> float:
    inter, n_p, n_g = _overlap(p, g)
    return 1.0 if n_p + n_g == 0 else 2.0 * inter / (n_p + n_g)


def _iou(p: np.ndarray, g: np.ndarray) -> float:
    inter, n_p, n_g = _overlap(p, g)
    union = n_p + n_g - inter
    return 1.0 if union == 0 else inter / union


def dice(pred: Any, gt: Any) -> float:
    """Dice ``2|P∩G| / (|P| + |G|)`` of two binary masks (1 when both are empty).

    Args:
        pred: binary prediction, spatial shape only (no channel), array or tensor.
        gt: binary ground truth of the same shape.
    """
    p, g = _to_mask(pred, "pred"), _to_mask(gt, "gt")
    _check_same_shape(pred=p, gt=g)
    return _dice(p, g)


def iou(pred: Any, gt: Any) -> float:
    """IoU (Jaccard) ``|P∩G| / |P∪G|`` of two binary masks (1 when both are empty).

    Args:
        pred: binary prediction, spatial shape only (no channel), array or tensor.
        gt: binary ground truth of the same shape.
    """
    p, g = _to_mask(pred, "pred"), _to_mask(gt, "gt")
    _check_same_shape(pred=p, gt=g)
    return _iou(p, g)


def surface_distances(pred: Any, gt: Any, spacing: SpacingLike = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each edge pixel of one mask to the nearest edge pixel of the other (MONAI's edges).

    Args:
        pred: binary prediction with at least one foreground pixel.
        gt: binary ground truth of the same shape, with at least one foreground pixel.
        spacing: pixel spacing; distances are in its units (pixels when ``None``).

    Returns:
        ``(pred → gt, gt → pred)`` distances, float64.
    """
    p, g = _to_mask(pred, "pred"), _to_mask(gt, "gt")
    shape = _check_same_shape(pred=p, gt=g)
    if not (p.any() and g.any()):
        raise ValueError("surface_distances needs foreground in both masks; empty masks are scored by hd95/asd.")
    return _surface_distances(p, g, _spacing(spacing, len(shape)))


def _surface_distances(p: np.ndarray, g: np.ndarray, sp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 passes its own deprecated ``always_return_as_numpy`` internally; not ours to act on.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        _, distances, _ = get_edge_surface_distance(
            torch.from_numpy(p), torch.from_numpy(g), distance_metric="euclidean", spacing=sp.tolist(), symmetric=True
        )
    d_pg, d_gp = (np.asarray(convert_to_numpy(d), dtype=np.float64) for d in distances)
    return d_pg, d_gp


def _distance_scores(p: np.ndarray, g: np.ndarray, sp: np.ndarray) -> tuple[float, float]:
    """``(hd95, asd)`` of a mask pair with the empty-mask rules."""
    status = _empty_case(bool(p.any()), bool(g.any()))
    if status == EmptyCase.BOTH_EMPTY:
        return 0.0, 0.0
    if status != EmptyCase.NONEMPTY:
        worst = worst_case_distance(p.shape, sp)
        return worst, worst
    d_pg, d_gp = _surface_distances(p, g, sp)
    hd = max(float(np.percentile(d_pg, 95)), float(np.percentile(d_gp, 95)))
    return hd, float(np.concatenate([d_pg, d_gp]).mean())


def hd95(pred: Any, gt: Any, spacing: SpacingLike = None) -> float:
    """95th-percentile Hausdorff distance (symmetric, MONAI's definition) with the empty-mask rules.

    Args:
        pred: binary prediction, spatial shape only.
        gt: binary ground truth of the same shape.
        spacing: pixel spacing (one number or one per axis); ``None`` gives pixels.
    """
    p, g = _to_mask(pred, "pred"), _to_mask(gt, "gt")
    shape = _check_same_shape(pred=p, gt=g)
    return _distance_scores(p, g, _spacing(spacing, len(shape)))[0]


def asd(pred: Any, gt: Any, spacing: SpacingLike = None) -> float:
    """Average symmetric surface distance (MONAI's ``symmetric=True``) with the empty-mask rules.

    Args:
        pred: binary prediction, spatial shape only.
        gt: binary ground truth of the same shape.
        spacing: pixel spacing (one number or one per axis); ``None`` gives pixels.
    """
    p, g = _to_mask(pred, "pred"), _to_mask(gt, "gt")
    shape = _check_same_shape(pred=p, gt=g)
    return _distance_scores(p, g, _spacing(spacing, len(shape)))[1]


def _region(region: Any, threshold: float) -> np.ndarray:
    return np.asarray(convert_to_numpy(region), dtype=np.float64) > threshold


def _region_dice(p: np.ndarray, g: np.ndarray, r: np.ndarray) -> float:
    return math.nan if not r.any() else _dice(p & r, g & r)


def region_dice(pred: Any, gt: Any, region: Any, threshold: float = DEFAULT_REGION_THRESHOLD) -> float:
    """Dice restricted to a region: ``2|P∩G∩R| / (|P∩R| + |G∩R|)`` with ``R = region > threshold``.

    With ``region`` the fuzzy mask M^f of the DALE partition this is the paper's Dice in the fuzzy
    region. It is 1 when the region holds no foreground of either mask, and NaN when the region itself
    is empty (there is nothing to score; :func:`case_metrics` flags it).

    Args:
        pred: binary prediction, spatial shape only.
        gt: binary ground truth of the same shape.
        region: soft or binary mask of the same shape (e.g. M^f).
        threshold: pixels with ``region > threshold`` form the region (0.9 = the partition's τ).
    """
    p, g = _to_mask(pred, "pred"), _to_mask(gt, "gt")
    r = _region(region, threshold)
    _check_same_shape(pred=p, gt=g, region=r)
    return _region_dice(p, g, r)


def binary_case_metrics(
    pred: Any,
    gt: Any,
    spacing: SpacingLike = None,
    region: Any = None,
    threshold: float = DEFAULT_REGION_THRESHOLD,
) -> dict[str, float | int]:
    """All metrics of one binary mask pair.

    Args:
        pred: binary prediction, spatial shape only.
        gt: binary ground truth of the same shape.
        spacing: pixel spacing for HD95 / ASD.
        region: optional soft mask (M^f) for the fuzzy-region Dice.
        threshold: region threshold.

    Returns:
        ``dice``, ``iou``, ``hd95``, ``asd``, ``status`` (an :class:`EmptyCase` value), and with a region
        ``fuzzy_dice`` and ``region_status``.
    """
    p, g = _to_mask(pred, "pred"), _to_mask(gt, "gt")
    arrays = {"pred": p, "gt": g}
    r = None
    if region is not None:
        r = arrays["region"] = _region(region, threshold)
    shape = _check_same_shape(**arrays)
    return _binary_scores(p, g, _spacing(spacing, len(shape)), r)


def _binary_scores(p: np.ndarray, g: np.ndarray, sp: np.ndarray, r: np.ndarray | None) -> dict[str, float | int]:
    hd, sd = _distance_scores(p, g, sp)
    out: dict[str, float | int] = {
        "dice": _dice(p, g),
        "iou": _iou(p, g),
        "hd95": hd,
        "asd": sd,
        "status": int(_empty_case(bool(p.any()), bool(g.any()))),
    }
    if r is not None:
        out["fuzzy_dice"] = _region_dice(p, g, r)
        out["region_status"] = int(
            EmptyCase.REGION_EMPTY if not r.any() else _empty_case(bool((p & r).any()), bool((g & r).any()))
        )
    return out


def _label_map(x: Any, name: str, num_classes: int) -> np.ndarray:
    arr = np.asarray(convert_to_numpy(x))
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if arr.size:
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must be a label map of integer class indices (take the argmax of logits first).")
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} holds labels in [{lo}, {hi}], outside [0, {num_classes - 1}] (num_classes={num_classes})."
            )
    return arr.astype(np.int64)


def case_metrics(
    pred: Any,
    gt: Any,
    spacing: SpacingLike = None,
    fuzzy_mask: Any = None,
    num_classes: int = 2,
    threshold: float = DEFAULT_REGION_THRESHOLD,
) -> dict[str, float | int]:
    """The paper's metrics for one case: Dice, mIoU, HD95, ASD and, given M^f, the fuzzy-region Dice.

    Args:
        pred: predicted label map, spatial shape only (H, W or H, W, D), integer classes
            (``num_classes=2``: a binary mask).
        gt: ground-truth label map of the same shape.
        spacing: pixel spacing (one number or one per axis) for HD95 / ASD; ``None`` gives pixels.
        fuzzy_mask: optional soft fuzzy mask M^f of the same shape; adds ``fuzzy_dice``.
        num_classes: number of classes including background (class 0, never scored).
        threshold: fuzzy-region threshold on M^f.

    Returns:
        ``dice``, ``miou``, ``hd95``, ``asd`` (means over the foreground classes), ``fuzzy_dice`` (mean
        over classes, NaN when the region is empty), the counts over foreground classes ``both_empty``,
        ``empty_pred``, ``empty_gt`` (and ``fuzzy_region_empty``), and with ``num_classes > 2`` the
        per-class values ``dice_<c>``, ``iou_<c>``, ``hd95_<c>``, ``asd_<c>`` (``fuzzy_dice_<c>``).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}.")
    p, g = _label_map(pred, "pred", num_classes), _label_map(gt, "gt", num_classes)
    arrays = {"pred": p, "gt": g}
    r = None
    if fuzzy_mask is not None:
        r = arrays["fuzzy_mask"] = _region(fuzzy_mask, threshold)
    shape = _check_same_shape(**arrays)
    sp = _spacing(spacing, len(shape))
    per_class = [_binary_scores(p == c, g == c, sp, r) for c in range(1, num_classes)]
    names = {"dice": "dice", "iou": "miou", "hd95": "hd95", "asd": "asd"}
    if r is not None:
        names["fuzzy_dice"] = "fuzzy_dice"
    out: dict[str, float | int] = {key: float(np.mean([s[src] for s in per_class])) for src, key in names.items()}
    statuses = [s["status"] for s in per_class]
    for code in (EmptyCase.BOTH_EMPTY, EmptyCase.PRED_EMPTY, EmptyCase.GT_EMPTY):
        out[_FLAG_KEYS[code]] = sum(st == code for st in statuses)
    if r is not None:
        out[_FLAG_KEYS[EmptyCase.REGION_EMPTY]] = int(not r.any())
    if num_classes > 2:
        for c, s in enumerate(per_class, start=1):
            for src in names:
                out[f"{src}_{c}"] = s[src]
    return out


def summarize(rows: Iterable[Mapping[str, Any]], ddof: int = 1) -> dict[str, Any]:
    """Mean ± std of every metric over cases, and totals of the empty-mask flags.

    Args:
        rows: per-case dictionaries such as :func:`case_metrics` returns; non-numeric values (case ids)
            and :class:`EmptyCase` codes (keys ending in ``status``) are ignored.
        ddof: delta degrees of freedom of the standard deviation (1: sample std; NaN with fewer than
            ``ddof + 1`` values).

    Returns:
        ``{"cases": N, <metric>: {"mean", "std", "n", "n_nan"}, <flag>: total}``. NaN values (a fuzzy-region
        Dice over an empty region) are left out of mean and std and counted in ``n_nan``; nothing else is
        left out.
    """
    rows = list(rows)
    flags = set(_FLAG_KEYS.values())
    values: dict[str, list[float]] = {}
    totals: dict[str, int] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (np.generic,)):
                value = value.item()
            if key in flags:
                totals[key] = totals.get(key, 0) + int(value)
            elif key.endswith("status"):  # EmptyCase codes of binary_case_metrics are labels, not numbers
                continue
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(key, []).append(float(value))
    out: dict[str, Any] = {"cases": len(rows)}
    for key, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        finite = arr[~np.isnan(arr)]
        n = int(finite.size)
        out[key] = {
            "mean": float(finite.mean()) if n else math.nan,
            "std": float(finite.std(ddof=ddof)) if n > ddof else math.nan,
            "n": n,
            "n_nan": int(arr.size - n),
        }
    out.update(totals)
    return out


class _CaseMetric(CumulativeIterationMetric):
    """Per (case, class) metric on one-hot inputs, buffering the values and their :class:`EmptyCase`.

    ``get_buffer()`` returns ``[values (N, C), status (N, C)]``; :meth:`aggregate` reduces the values as
    MONAI's metrics do (mean over classes, then over cases, NaN left out and counted by ``not_nans``);
    :meth:`empty_counts` reports how many entries fell into each empty-mask case.
    """

    def __init__(
        self,
        include_background: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _masks(self, y_pred: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        name = type(self).__name__
        if y_pred.ndim < 3:
            raise ValueError(f"{name}: y_pred must be (B, C, *spatial), got shape {tuple(y_pred.shape)}.")
        if y_pred.shape != y.shape:
            raise ValueError(
                f"{name}: y_pred and y must both be one-hot (B, C, *spatial) of the same shape,"
                f" got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        if not self.include_background and y_pred.shape[1] > 1:
            y_pred, y = y_pred[:, 1:], y[:, 1:]
        return _to_mask(y_pred, f"{name} y_pred"), _to_mask(y, f"{name} y")

    @abstractmethod
    def _score(self, p: np.ndarray, g: np.ndarray, index: int, **kwargs: Any) -> tuple[float, int]:
        """``(value, EmptyCase code)`` of the binary pair of batch item ``index``."""

    def _batch(self, p: np.ndarray, g: np.ndarray, **kwargs: Any) -> list[torch.Tensor]:
        values = np.empty(p.shape[:2], dtype=np.float32)
        status = np.empty(p.shape[:2], dtype=np.int64)
        for b, c in np.ndindex(*p.shape[:2]):
            values[b, c], status[b, c] = self._score(p[b, c], g[b, c], b, **kwargs)
        return [torch.from_numpy(values), torch.from_numpy(status)]

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> list[torch.Tensor]:
        if y is None:
            raise ValueError(f"{type(self).__name__}: the ground truth y is required.")
        p, g = self._masks(y_pred, y)
        values, status = self._batch(p, g, **kwargs)
        return [values.to(y_pred.device), status.to(y_pred.device)]

    def _values_and_status(self) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.get_buffer()
        if not isinstance(data, list) or len(data) != 2:
            raise ValueError(f"{type(self).__name__}: nothing to aggregate; call the metric on a batch first.")
        return data[0], data[1]

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered values.

        Args:
            reduction: a MONAI ``MetricReduction`` mode; defaults to the one given at construction.

        Returns:
            the reduced metric, or ``(metric, not_nans)`` with ``get_not_nans=True``.
        """
        values, _ = self._values_and_status()
        f, not_nans = do_metric_reduction(values.float(), reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f

    def empty_counts(self) -> dict[str, int]:
        """Number of buffered (case, class) entries per empty-mask case, and the total ``entries``."""
        _, status = self._values_and_status()
        out = {"entries": int(status.numel()), "cases": int(status.shape[0])}
        for code, key in _FLAG_KEYS.items():
            out[key] = int((status == int(code)).sum())
        return out


class DiceScoreMetric(_CaseMetric):
    """Dice per case and class, 1 when prediction and truth are both empty, 0 when one is.

    Args:
        include_background: score channel 0 too (ignored with one channel). Defaults to False.
        reduction: MONAI ``MetricReduction`` for :meth:`aggregate`. Defaults to ``"mean"``.
        get_not_nans: :meth:`aggregate` also returns the count of non-NaN values.

    Example::

        handler = IgniteMetricHandler(DiceScoreMetric(), output_transform=from_engine(["pred", "label"]))
    """

    def _score(self, p: np.ndarray, g: np.ndarray, index: int, **kwargs: Any) -> tuple[float, int]:
        return _dice(p, g), int(_empty_case(bool(p.any()), bool(g.any())))


class IoUScoreMetric(_CaseMetric):
    """IoU per case and class (the mean over foreground classes is the paper's mIoU); empty rules as Dice.

    Args:
        include_background: score channel 0 too (ignored with one channel). Defaults to False.
        reduction: MONAI ``MetricReduction`` for :meth:`aggregate`. Defaults to ``"mean"``.
        get_not_nans: :meth:`aggregate` also returns the count of non-NaN values.
    """

    def _score(self, p: np.ndarray, g: np.ndarray, index: int, **kwargs: Any) -> tuple[float, int]:
        return _iou(p, g), int(_empty_case(bool(p.any()), bool(g.any())))


class _DistanceMetric(_CaseMetric):
    _which = 0

    def __init__(
        self,
        include_background: bool = False,
        spacing: SpacingLike | Sequence[SpacingLike] = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(include_background=include_background, reduction=reduction, get_not_nans=get_not_nans)
        self.spacing = spacing

    def _batch(self, p: np.ndarray, g: np.ndarray, **kwargs: Any) -> list[torch.Tensor]:
        spacing = kwargs.get("spacing", self.spacing)
        spacings = prepare_spacing(spacing=spacing, batch_size=p.shape[0], img_dim=p.ndim - 2)
        return super()._batch(p, g, spacings=[_spacing(s, p.ndim - 2) for s in spacings])

    def _score(self, p: np.ndarray, g: np.ndarray, index: int, **kwargs: Any) -> tuple[float, int]:
        value = _distance_scores(p, g, kwargs["spacings"][index])[self._which]
        return value, int(_empty_case(bool(p.any()), bool(g.any())))


class HD95Metric(_DistanceMetric):
    """HD95 per case and class (MONAI's ``HausdorffDistanceMetric(percentile=95)`` on non-empty pairs).

    Both empty: 0; exactly one empty: the field-of-view diagonal (:func:`worst_case_distance`).

    Args:
        include_background: score channel 0 too (ignored with one channel). Defaults to False.
        spacing: pixel spacing as MONAI accepts it (a number, one per axis, or one per batch item); a
            ``spacing=`` keyword at call time overrides it. ``None`` gives pixels.
        reduction: MONAI ``MetricReduction`` for :meth:`aggregate`. Defaults to ``"mean"``.
        get_not_nans: :meth:`aggregate` also returns the count of non-NaN values.
    """

    _which = 0


class ASDMetric(_DistanceMetric):
    """Average symmetric surface distance per case and class (MONAI's ``SurfaceDistanceMetric(symmetric=True)``).

    Empty rules as :class:`HD95Metric`.

    Args:
        include_background: score channel 0 too (ignored with one channel). Defaults to False.
        spacing: pixel spacing as MONAI accepts it (a number, one per axis, or one per batch item); a
            ``spacing=`` keyword at call time overrides it. ``None`` gives pixels.
        reduction: MONAI ``MetricReduction`` for :meth:`aggregate`. Defaults to ``"mean"``.
        get_not_nans: :meth:`aggregate` also returns the count of non-NaN values.
    """

    _which = 1


class RegionDiceMetric(_CaseMetric):
    """Dice restricted to a region (the fuzzy region ``M^f > threshold``), per case and class.

    The region comes either as ``region=`` at call time, shape ``(B, 1, *spatial)``, or, for
    ``monai.handlers.IgniteMetricHandler`` (which passes only ``y_pred`` and ``y``), as one extra last
    channel of ``y``; build it in the evaluator's postprocessing with
    ``ConcatItemsd(keys=["label", "mask_f"], name="label_region")`` (after ``AsDiscreted(keys="label",
    to_onehot=C)``; ``EnsureTyped(keys="mask_f")`` first if the mask is not yet a MetaTensor) and use
    ``output_transform=from_engine(["pred", "label_region"])``. A case whose region is empty gets NaN,
    which :meth:`aggregate` leaves out and counts (``not_nans``, :meth:`empty_counts`).

    Args:
        include_background: score channel 0 too (ignored with one channel). Defaults to False.
        threshold: region = pixels where the mask exceeds it. Defaults to 0.9 (the partition's τ).
        reduction: MONAI ``MetricReduction`` for :meth:`aggregate`. Defaults to ``"mean"``.
        get_not_nans: :meth:`aggregate` also returns the count of non-NaN values.
    """

    def __init__(
        self,
        include_background: bool = False,
        threshold: float = DEFAULT_REGION_THRESHOLD,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(include_background=include_background, reduction=reduction, get_not_nans=get_not_nans)
        self.threshold = threshold

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> list[torch.Tensor]:
        if y is None:
            raise ValueError("RegionDiceMetric: the ground truth y is required.")
        region = kwargs.get("region")
        if region is None:
            if y.ndim != y_pred.ndim or y.shape[1] != y_pred.shape[1] + 1:
                raise ValueError(
                    "RegionDiceMetric: without region=, y must carry the region as one extra last channel"
                    f" ({y_pred.shape[1] + 1} channels for {y_pred.shape[1]}-channel y_pred), got y of shape"
                    f" {tuple(y.shape)}."
                )
            y, region = y[:, :-1], y[:, -1:]
        region = torch.as_tensor(region)
        if region.shape != (y.shape[0], 1, *y.shape[2:]):
            raise ValueError(
                f"RegionDiceMetric: region must have shape (B, 1, *spatial) = {(y.shape[0], 1, *y.shape[2:])},"
                f" got {tuple(region.shape)}."
            )
        p, g = self._masks(y_pred, y)
        r = _region(region[:, 0], self.threshold)
        values, status = self._batch(p, g, region=r)
        return [values.to(y_pred.device), status.to(y_pred.device)]

    def _score(self, p: np.ndarray, g: np.ndarray, index: int, **kwargs: Any) -> tuple[float, int]:
        r = kwargs["region"][index]
        if not r.any():
            return math.nan, int(EmptyCase.REGION_EMPTY)
        return _dice(p & r, g & r), int(_empty_case(bool((p & r).any()), bool((g & r).any())))
