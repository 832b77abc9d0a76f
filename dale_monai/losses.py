"""Segmentation losses with a per-pixel form, as DALE needs them.

DALE re-weights the loss pixel by pixel (ω ⊙ M^f in the fuzzy step) and differentiates a per-pixel
loss map in its ω meta step, so every loss here either returns a map ``(B, 1, *spatial)`` or accepts a
per-pixel weight of that shape. All of them work for 2D and 3D inputs, binary (one logit channel,
sigmoid) and multi-class (``C > 1`` channels, softmax) segmentation.

- :class:`PixelwiseCELoss`: binary or softmax cross-entropy, unreduced, as a ``(B, 1, *spatial)`` map.
- :class:`WeightedDiceLoss`: soft Dice in which each pixel's contribution to the intersection and to
  the denominators is multiplied by a weight; with no weight it equals :class:`monai.losses.DiceLoss`.
- :class:`DALELoss`: the loss object the DALE trainer uses: ``pixel_map`` for the meta step, and
  ``forward(input, target, weight, extra)`` = ``mean(weight ⊙ (ce_weight·CE + extra)) +
  dice_weight·WeightedDice(weight)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.networks.utils import one_hot
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["PixelwiseCELoss", "WeightedDiceLoss", "DALELoss"]


def _check_logits(input: torch.Tensor, owner: str) -> None:
    if input.ndim < 3:
        raise ValueError(
            f"{owner}: input must be logits of shape (B, C, *spatial) with 1-3 spatial dims, got {tuple(input.shape)}."
        )


def _check_weight_shape(weight: torch.Tensor, input: torch.Tensor, owner: str) -> None:
    expected = (input.shape[0], 1, *input.shape[2:])
    if tuple(weight.shape) not in (expected, tuple(input.shape)):
        raise ValueError(
            f"{owner}: weight must have shape (B, 1, *spatial) = {expected}"
            f" (or the input's shape {tuple(input.shape)}), got {tuple(weight.shape)}."
        )


def _is_index_target(input: torch.Tensor, target: torch.Tensor) -> bool:
    """True when ``target`` holds class indices (one channel) for a multi-channel ``input``."""
    return input.shape[1] > 1 and target.shape[1] == 1


def _indices(target: torch.Tensor, num_classes: int, owner: str) -> torch.Tensor:
    """Class-index target ``(B, 1, ...)`` → long ``(B, ...)``, refusing values that ``.long()`` would truncate."""
    if target.is_floating_point():
        if bool(torch.any(target != torch.round(target))):
            raise ValueError(
                f"{owner}: a one-channel target for {num_classes}-channel logits must hold class indices, but it has"
                " non-integer values. A soft target (e.g. a label multiplied by a DALE mask) needs one channel per"
                " class; for multi-class labels weight the loss by the mask (``weight=``) instead."
            )
    idx = target[:, 0].long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        raise ValueError(
            f"{owner}: class indices must lie in [0, {num_classes - 1}] for {num_classes}-channel logits,"
            f" got values in [{int(idx.min())}, {int(idx.max())}]."
        )
    return idx


def _weighted_map(
    loss_map: torch.Tensor, weight: torch.Tensor | None, extra: torch.Tensor | float | None, owner: str
) -> torch.Tensor:
    """``weight ⊙ (loss_map + extra)``, the per-pixel convention every loss here shares with the DALE trainer.

    Args:
        loss_map: ``(B, 1, *spatial)``.
        weight: ``(B, 1, *spatial)`` or ``None`` (all ones).
        extra: a scalar or a map that broadcasts to ``loss_map`` without enlarging it, or ``None``.
        owner: the loss named in error messages.

    Raises:
        ValueError: when ``weight`` or ``extra`` has a shape that does not fit ``loss_map``.
    """
    if weight is not None:
        _check_weight_shape(weight, loss_map, owner)
    if extra is not None:
        if isinstance(extra, torch.Tensor) and extra.ndim > 0:
            try:
                shape = torch.broadcast_shapes(extra.shape, loss_map.shape)
            except RuntimeError as e:
                raise ValueError(
                    f"{owner}: extra must be a scalar or broadcast to the loss map {tuple(loss_map.shape)},"
                    f" got {tuple(extra.shape)}."
                ) from e
            if shape != loss_map.shape:
                raise ValueError(
                    f"{owner}: extra of shape {tuple(extra.shape)} would enlarge the loss map"
                    f" {tuple(loss_map.shape)}; pass a scalar or a (B, 1, *spatial) map."
                )
        loss_map = loss_map + extra
    return loss_map if weight is None else weight * loss_map


class PixelwiseCELoss(_Loss):
    """Unreduced cross-entropy as a per-pixel map ``(B, 1, *spatial)``.

    - Sigmoid (binary, or multi-label): binary cross-entropy with logits per channel, averaged over the
      channels. ``target`` has the input's shape and values in [0, 1]; soft targets are allowed, because
      DALE multiplies binary labels by a soft mask (Y^n = M^n ⊙ Y).
    - Softmax (``C > 1``): cross-entropy of ``log_softmax(input)`` against either class indices
      ``(B, 1, *spatial)`` or one-hot / soft class probabilities ``(B, C, *spatial)``.

    The mean of the map over all its elements equals ``torch.nn.BCEWithLogitsLoss()`` (sigmoid) or
    ``torch.nn.CrossEntropyLoss()`` (softmax) with their default mean reduction.

    Args:
        sigmoid: ``True`` for per-channel sigmoid BCE, ``False`` for softmax CE, ``None`` (default) to choose
            from the input: sigmoid when it has one channel, softmax otherwise.

    Example::

        loss_map = PixelwiseCELoss()(logits, label)  # (B, 1, H, W)
    """

    def __init__(self, sigmoid: bool | None = None) -> None:
        super().__init__(reduction="none")
        if sigmoid is not None and not isinstance(sigmoid, bool):
            raise TypeError(f"PixelwiseCELoss: sigmoid must be True, False or None, got {sigmoid!r}.")
        self.sigmoid = sigmoid

    def use_sigmoid(self, input: torch.Tensor) -> bool:
        """Whether ``input`` is scored with sigmoid BCE (else softmax CE)."""
        if self.sigmoid is None:
            return input.shape[1] == 1
        if not self.sigmoid and input.shape[1] == 1:
            raise ValueError(
                "PixelwiseCELoss: sigmoid=False (softmax) needs at least 2 logit channels, got 1;"
                " use sigmoid=None or True for binary segmentation with one channel."
            )
        return self.sigmoid

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, *spatial)``.
            target: ``(B, C, *spatial)`` values in [0, 1] (sigmoid; one-hot or soft for softmax), or class
                indices ``(B, 1, *spatial)`` (softmax).

        Returns:
            the loss map ``(B, 1, *spatial)``, in the input's dtype (float32 under autocast).
        """
        _check_logits(input, "PixelwiseCELoss")
        if target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
            raise ValueError(
                f"PixelwiseCELoss: target shape {tuple(target.shape)} does not match input shape"
                f" {tuple(input.shape)} in batch or spatial size."
            )
        if self.use_sigmoid(input):
            if target.shape != input.shape:
                raise ValueError(
                    f"PixelwiseCELoss: with sigmoid the target must have the input's shape {tuple(input.shape)},"
                    f" got {tuple(target.shape)}."
                )
            bce = F.binary_cross_entropy_with_logits(input, target.to(input.dtype), reduction="none")
            return bce.mean(dim=1, keepdim=True)
        num_classes = input.shape[1]
        if _is_index_target(input, target):
            idx = _indices(target, num_classes, "PixelwiseCELoss")
            return F.cross_entropy(input, idx, reduction="none").unsqueeze(1)
        if target.shape[1] != num_classes:
            raise ValueError(
                f"PixelwiseCELoss: softmax target must have 1 (class indices) or {num_classes} (one-hot/soft)"
                f" channels, got {target.shape[1]}."
            )
        return F.cross_entropy(input, target.to(input.dtype), reduction="none").unsqueeze(1)


class WeightedDiceLoss(_Loss):
    """Soft Dice loss with a per-pixel weight on every pixel's contribution.

    For each item and class (or each class when ``batch=True``), with p the activated prediction, t the
    target and w the weight::

        I = Σ w·p·t,  P = Σ w·p^k,  T = Σ w·t^k        (k = 2 if squared_pred else 1)
        Dice loss    = 1 − (2I + smooth_nr) / (P + T + smooth_dr)
        Jaccard loss = 1 − (2I + smooth_nr) / (2(P + T − I) + smooth_dr)

    With ``weight=None`` (all ones) this is :class:`monai.losses.DiceLoss` with the same settings (its
    default ``soft_label=False`` formulation). A zero weight removes a pixel from the loss entirely, so a
    mask-weighted Dice scores only the region the mask selects. Weights are expected to be non-negative;
    they are not checked on every call, to avoid a device synchronisation per iteration.

    Args:
        include_background: if False, channel 0 (background) is excluded (ignored for one channel).
        to_onehot_y: convert a class-index ``target`` ``(B, 1, ...)`` to one-hot with ``input.shape[1]``
            classes.
        sigmoid: apply a sigmoid to the input.
        softmax: apply a softmax over the channels of the input.
        other_act: another activation applied to the input.
        squared_pred: squared prediction and target in the denominator.
        jaccard: soft Jaccard (IoU) loss instead of Dice.
        reduction: ``"none"`` (shape ``(B, C, 1, ...)``, like MONAI), ``"mean"`` or ``"sum"``.
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
        batch: sum over the batch before dividing (one Dice per class) instead of one per item.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: LossReduction | str = LossReduction.MEAN,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if other_act is not None and not callable(other_act):
            raise TypeError(f"WeightedDiceLoss: other_act must be None or callable, got {type(other_act).__name__}.")
        if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
            raise ValueError("WeightedDiceLoss: set at most one of sigmoid=True, softmax=True, other_act.")
        if smooth_nr < 0 or smooth_dr < 0:
            raise ValueError(f"WeightedDiceLoss: smooth_nr and smooth_dr must be >= 0, got {smooth_nr}, {smooth_dr}.")
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.squared_pred = squared_pred
        self.jaccard = jaccard
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = batch

    def forward(self, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            input: logits or probabilities ``(B, C, *spatial)``.
            target: ``(B, C, *spatial)``, or ``(B, 1, *spatial)`` class indices with ``to_onehot_y=True``.
            weight: per-pixel weight ``(B, 1, *spatial)`` (or the input's shape); ``None`` means all ones.

        Returns:
            the loss, reduced as ``reduction`` says.
        """
        _check_logits(input, "WeightedDiceLoss")
        if weight is not None:
            _check_weight_shape(weight, input, "WeightedDiceLoss")
        n_pred_ch = input.shape[1]
        if self.sigmoid:
            input = torch.sigmoid(input)
        if self.softmax:
            if n_pred_ch == 1:
                warnings.warn("WeightedDiceLoss: single channel prediction, softmax=True ignored.", stacklevel=2)
            else:
                input = torch.softmax(input, 1)
        if self.other_act is not None:
            input = self.other_act(input)
        if self.to_onehot_y:
            if n_pred_ch == 1:
                warnings.warn("WeightedDiceLoss: single channel prediction, to_onehot_y=True ignored.", stacklevel=2)
            else:
                target = one_hot(_indices(target, n_pred_ch, "WeightedDiceLoss").unsqueeze(1), num_classes=n_pred_ch)
        if not self.include_background:
            if n_pred_ch == 1:
                warnings.warn(
                    "WeightedDiceLoss: single channel prediction, include_background=False ignored.", stacklevel=2
                )
            else:
                target = target[:, 1:]
                input = input[:, 1:]
                if weight is not None and weight.shape[1] > 1:
                    weight = weight[:, 1:]
        if target.shape != input.shape:
            raise ValueError(
                f"WeightedDiceLoss: target shape {tuple(target.shape)} differs from input shape {tuple(input.shape)}"
                " (after one-hot conversion and background removal)."
            )
        target = target.to(input.dtype)
        reduce_axis = list(range(2, input.ndim))
        if self.batch:
            reduce_axis = [0] + reduce_axis
        w = torch.ones_like(input[:, :1]) if weight is None else weight.to(input.dtype)
        power = 2 if self.squared_pred else 1
        intersection = torch.sum(w * input * target, dim=reduce_axis)
        pred_o = torch.sum(w * input**power, dim=reduce_axis)
        ground_o = torch.sum(w * target**power, dim=reduce_axis)
        denominator = 2.0 * (pred_o + ground_o - intersection) if self.jaccard else pred_o + ground_o
        f = 1.0 - (2.0 * intersection + self.smooth_nr) / (denominator + self.smooth_dr)
        if self.reduction == LossReduction.MEAN.value:
            return torch.mean(f)
        if self.reduction == LossReduction.SUM.value:
            return torch.sum(f)
        # MONAI's broadcastable shape for "none", kept identical (with batch=True it is (C, 1, ...)).
        return f.view(list(f.shape[0:2]) + [1] * (input.ndim - 2))


class DALELoss(_Loss):
    """The segmentation loss L of DALE: a per-pixel cross-entropy map plus an optional weighted Dice term.

    ``forward(input, target, weight, extra)`` returns::

        mean over all pixels of  weight ⊙ (ce_weight·CE(input, target) + extra)
          + dice_weight · WeightedDice(input, target, weight)

    The mean runs over every pixel of the batch (not over Σ weight), as the released ω code does with
    ``mean(ω ⊙ ℓ)``, so down-weighted pixels lower the loss rather than being renormalised away.
    :meth:`pixel_map` returns ``ce_weight·CE``, the per-pixel part, which the ω meta step differentiates:
    a Dice term has no per-pixel decomposition, so it enters the optimizer steps only.

    Binary (one channel): sigmoid BCE with soft targets allowed (Y^n = M^n ⊙ Y). Multi-class: softmax CE
    with index or one-hot/soft targets; there, apply a DALE mask through ``weight`` rather than by
    multiplying one-hot targets (METHOD.md).

    Args:
        ce_weight: factor of the cross-entropy map; must be > 0, because DALE needs a per-pixel loss.
        dice_weight: factor of the weighted Dice term; must be >= 0 (0, the default, skips it).
        sigmoid: passed to :class:`PixelwiseCELoss` (``None``: sigmoid for one channel, softmax otherwise);
            the Dice term uses the same activation.
        include_background: whether the Dice term scores channel 0 (multi-class only).
        squared_pred: squared terms in the Dice denominator.
        smooth_nr: Dice numerator smoothing.
        smooth_dr: Dice denominator smoothing.
        batch: Dice over the whole batch (one value per class) instead of per item.

    Example::

        loss = DALELoss(dice_weight=1.0)
        l_n = loss(net(x * m_n), y * m_n)                                     # non-fuzzy step
        ell = loss.pixel_map(net(x * m_f), y * m_f)                           # (B, 1, H, W) for the meta step
        l_f = loss(net(x * m_f), y * m_f, weight=omega * m_f, extra=alpha * l_w)  # fuzzy step
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 0.0,
        sigmoid: bool | None = None,
        include_background: bool = True,
        squared_pred: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
    ) -> None:
        super().__init__(reduction="mean")
        for name, value in (("ce_weight", ce_weight), ("dice_weight", dice_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"DALELoss: {name} must be a number, got {value!r}.")
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"DALELoss: {name} must be finite, got {value}.")
            if value < 0:
                raise ValueError(f"DALELoss: {name} must be >= 0, got {value}.")
        if ce_weight == 0:
            raise ValueError(
                "DALELoss: ce_weight must be > 0: DALE re-weights and differentiates a per-pixel loss map, so the"
                " cross-entropy term cannot be switched off (a Dice term alone has no per-pixel form)."
            )
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.ce = PixelwiseCELoss(sigmoid=sigmoid)
        self.dice = WeightedDiceLoss(
            include_background=include_background,
            squared_pred=squared_pred,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            reduction="mean",
        )

    def pixel_map(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The per-pixel part of the loss, ``ce_weight·CE``, shape ``(B, 1, *spatial)``.

        Args:
            input: logits ``(B, C, *spatial)``.
            target: as for :class:`PixelwiseCELoss`.
        """
        ce = self.ce(input, target)
        return ce if self.ce_weight == 1.0 else self.ce_weight * ce

    def _dice(self, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        # half-precision sums over a whole image lose too much; float32/float64 are kept as they are
        x = input if input.dtype in (torch.float32, torch.float64) else input.float()
        if self.ce.use_sigmoid(x):
            probs = torch.sigmoid(x)
        else:
            probs = torch.softmax(x, dim=1)
            if _is_index_target(x, target):
                target = one_hot(_indices(target, x.shape[1], "DALELoss").unsqueeze(1), num_classes=x.shape[1])
        return self.dice(probs, target.to(x.dtype), None if weight is None else weight.to(x.dtype))

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        extra: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, *spatial)``.
            target: as for :class:`PixelwiseCELoss`.
            weight: per-pixel weight ``(B, 1, *spatial)`` (e.g. ω ⊙ M^f); ``None`` means all ones.
            extra: an additive per-pixel map ``(B, 1, *spatial)`` or a scalar (e.g. α·L_W), weighted with
                the cross-entropy map.

        Returns:
            the scalar loss.
        """
        loss_map = _weighted_map(self.pixel_map(input, target), weight, extra, "DALELoss")
        loss = loss_map.mean()
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * self._dice(input, target, weight)
        return loss
