"""Noise-robust segmentation losses with a per-pixel form, usable by every trainer.

Each loss is a plain torch function giving its per-pixel map ``(B, 1, *spatial)`` and an ``nn.Module`` with
the call convention of :class:`dale_monai.losses.DALELoss`: ``pixel_map(input, target)`` for DALE's ω meta
step and ``forward(input, target, weight=None, extra=None)``, which returns ``weight ⊙ (map + extra)``
reduced by ``reduction``. So :class:`dale_monai.engines.DALETrainer` re-weights them with ω ⊙ M^f, and
:class:`monai.engines.SupervisedTrainer` calls them as ``loss(pred, label)``.

Inputs are logits ``(B, C, *spatial)``, 2D or 3D:

- **sigmoid** (default for ``C = 1``; ``sigmoid=True`` for multi-label): each channel is a binary problem with
  the two-class distribution (1 − p, p), p = sigmoid(x); the target has the input's shape with values in
  [0, 1] (soft targets allowed, since DALE multiplies binary labels by a soft mask). The map is the mean of
  the channels' losses, so a one-logit network gets exactly the values of a two-logit softmax network with
  logits (0, x) and the same hard label.
- **softmax** (default for ``C > 1``): the target holds class indices ``(B, 1, *spatial)`` (integer or
  integer-valued floats) or one-hot / soft class probabilities ``(B, C, *spatial)``.

With p_y the predicted probability of the labelled class, A = ln(1e-4) ≈ −9.21 and hard labels:

=================  =============================================  ======================================
loss               per pixel                                      source
=================  =============================================  ======================================
GCE (L_q)          (1 − p_y^q) / q, q = 0.5                       Zhang & Sabuncu, NeurIPS 2018
SCE                α·CE + β·RCE, RCE = −A·(1 − p_y), α = β = 0.5  Wang et al., ICCV 2019
MAE                Σ_k |p_k − y_k| = 2·(1 − p_y)                  Ghosh et al., AAAI 2017
noise-robust Dice  Σ|p − y|^γ / (Σp² + Σy² + ε), γ = 1.5          Wang et al., IEEE TMI 2020 (COPLE-Net)
=================  =============================================  ======================================

For hard labels GCE(q = 1) = MAE / 2 = 1 − p_y and RCE = −A/2 · MAE; GCE → CE as q → 0. Half-precision
(AMP) logits are scored in float32. Conventions compared with PyMIC (``pymic/loss/seg``): its GCE is the
same; its MAE averages over the C classes (= our MAE / C); its noise-robust Dice sums over the whole batch
(our ``batch=True``) with the denominator Σ(p + y) (our ``squared_pred=False``).

The noise-robust Dice is a region loss: its ``forward`` applies a weight in both of its sums (as
:class:`dale_monai.losses.WeightedDiceLoss` does) and its ``pixel_map`` is each pixel's share of the loss, a
per-pixel numerator over the shared denominator (:func:`noise_robust_dice_map`).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from monai.networks.utils import one_hot
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from dale_monai.losses import _check_logits, _check_weight_shape, _indices, _is_index_target, _weighted_map

__all__ = [
    "RCE_LABEL_FLOOR",
    "generalized_ce_map",
    "reverse_ce_map",
    "symmetric_ce_map",
    "mae_map",
    "noise_robust_dice",
    "noise_robust_dice_map",
    "GeneralizedCELoss",
    "SymmetricCELoss",
    "MAELoss",
    "NoiseRobustDiceLoss",
]

RCE_LABEL_FLOOR = 1e-4
"""Label clamp of reverse cross-entropy, as in public SCE code (e.g. 2BDenoise): log 0 becomes A = ln 1e-4 ≈ −9.21.

Another A is ``label_floor = exp(A)``."""


# ----------------------------------------------------------------------------------------------- options
def _number(owner: str, name: str, value: object, low: float, high: float, closed: str, why: str = "") -> float:
    """``value`` as a float in the interval (low, high) with the ends ``closed`` ("", "low", "high", "both")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}.")
    value = float(value)
    low_ok = value >= low if closed in ("low", "both") else value > low
    high_ok = value <= high if closed in ("high", "both") else value < high
    if not (math.isfinite(value) and low_ok and high_ok):
        left = "[" if closed in ("low", "both") else "("
        right = "]" if closed in ("high", "both") else ")"
        interval = f"{left}{low:g}, {'inf' if math.isinf(high) else f'{high:g}'}{right}"
        raise ValueError(f"{owner}: {name} must lie in {interval}, got {value!r}.{' ' + why if why else ''}")
    return value


def _sigmoid_option(owner: str, sigmoid: object) -> bool | None:
    if sigmoid is not None and not isinstance(sigmoid, bool):
        raise TypeError(f"{owner}: sigmoid must be True, False or None, got {sigmoid!r}.")
    return sigmoid


def _reduction_option(owner: str, reduction: object) -> str:
    try:
        return LossReduction(reduction).value
    except ValueError:
        raise ValueError(f"{owner}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}.") from None


def _use_sigmoid(sigmoid: bool | None, input: torch.Tensor, owner: str) -> bool:
    if sigmoid is None:
        return input.shape[1] == 1
    if not sigmoid and input.shape[1] == 1:
        raise ValueError(
            f"{owner}: sigmoid=False (softmax) needs at least 2 logit channels, got 1;"
            " use sigmoid=None or True for binary segmentation with one channel."
        )
    return sigmoid


def _full_precision(input: torch.Tensor) -> torch.Tensor:
    # powers and sums of half-precision probabilities lose too much; float32/float64 are kept as they are
    return input if input.dtype in (torch.float32, torch.float64) else input.float()


def _check_target(input: torch.Tensor, target: torch.Tensor, owner: str) -> None:
    if target.ndim != input.ndim or target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
        raise ValueError(
            f"{owner}: target shape {tuple(target.shape)} does not match input shape {tuple(input.shape)}"
            " in batch or spatial size."
        )


def _sigmoid_target(input: torch.Tensor, target: torch.Tensor, owner: str) -> torch.Tensor:
    """The per-channel target of a sigmoid input: the input's shape, values in [0, 1], in the input's dtype."""
    if target.shape != input.shape:
        raise ValueError(
            f"{owner}: with sigmoid the target must have the input's shape {tuple(input.shape)},"
            f" got {tuple(target.shape)}."
        )
    return target.to(input.dtype)


def _softmax_target(input: torch.Tensor, target: torch.Tensor, owner: str) -> torch.Tensor:
    """One-hot / soft target ``(B, C, *spatial)`` in the input's dtype, from indices or class probabilities."""
    num_classes = input.shape[1]
    if _is_index_target(input, target):
        return one_hot(_indices(target, num_classes, owner).unsqueeze(1), num_classes, dtype=input.dtype)
    if target.shape[1] != num_classes:
        raise ValueError(
            f"{owner}: softmax target must have 1 (class indices) or {num_classes} (one-hot/soft) channels,"
            f" got {target.shape[1]}."
        )
    return target.to(input.dtype)


def _class_log_probs(
    input: torch.Tensor, target: torch.Tensor, sigmoid: bool | None, owner: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log class probabilities and the target distribution with the class axis at dim 1.

    Returns ``(log_p, y)`` of shape ``(B, 2, C, *spatial)`` for sigmoid (classes background, foreground of each
    channel) and ``(B, C, 1, *spatial)`` for softmax; :func:`_per_pixel` sums dim 1 and averages dim 2.
    """
    _check_logits(input, owner)
    _check_target(input, target, owner)
    x = _full_precision(input)
    if _use_sigmoid(sigmoid, x, owner):
        t = _sigmoid_target(x, target, owner)
        # log(1 − sigmoid(x)) = logsigmoid(−x): finite for any logit, unlike log(1 − p)
        return torch.stack((F.logsigmoid(-x), F.logsigmoid(x)), 1), torch.stack((1 - t, t), 1)
    return torch.log_softmax(x, 1).unsqueeze(2), _softmax_target(x, target, owner).unsqueeze(2)


def _per_pixel(terms: torch.Tensor) -> torch.Tensor:
    """Sum per-class terms over the classes (dim 1), average over sigmoid channels (dim 2): ``(B, 1, ...)``."""
    return terms.sum(1).mean(1, keepdim=True)


# ----------------------------------------------------------------------------------------------- maps
def generalized_ce_map(
    input: torch.Tensor, target: torch.Tensor, q: float = 0.5, sigmoid: bool | None = None
) -> torch.Tensor:
    """Generalised cross-entropy L_q per pixel (Zhang & Sabuncu, NeurIPS 2018).

    ``Σ_k y_k·(1 − p_k^q)/q``, which is (1 − p_y^q)/q for a hard label. It tends to the cross-entropy
    −log p_y as q → 0 (0 ≤ CE − L_q ≤ q·(log p_y)²/2) and equals 1 − p_y = MAE/2 at q = 1. p^q is computed as
    exp(q·log p) and 1 − p^q as −expm1(q·log p), so the value is exact for small q and the gradient with
    respect to the logits is finite for any logit.

    Args:
        input: logits ``(B, C, *spatial)``.
        target: see the module docstring (sigmoid: the input's shape; softmax: indices or one-hot/soft).
        q: exponent in (0, 1]; 0.5 is the paper's recommended value and PyMIC's default.
        sigmoid: ``None`` chooses sigmoid for one channel and softmax otherwise.

    Returns:
        the map ``(B, 1, *spatial)``, float32 for half-precision input.

    Raises:
        ValueError: q outside (0, 1], or a target that does not fit the input.
    """
    owner = "generalized_ce_map"
    return _gce(input, target, _q_option(owner, q), _sigmoid_option(owner, sigmoid), owner)


def _q_option(owner: str, q: float) -> float:
    return _number(owner, "q", q, 0.0, 1.0, "high", "(q → 0 is cross-entropy; q = 1 is MAE / 2)")


def _gce(input: torch.Tensor, target: torch.Tensor, q: float, sigmoid: bool | None, owner: str) -> torch.Tensor:
    log_p, y = _class_log_probs(input, target, sigmoid, owner)
    return _per_pixel(y * (-torch.expm1(q * log_p) / q))


def _reverse_ce_terms(log_p: torch.Tensor, y: torch.Tensor, label_floor: float) -> torch.Tensor:
    return -log_p.exp() * torch.log(y.clamp(label_floor, 1.0))


def reverse_ce_map(
    input: torch.Tensor, target: torch.Tensor, label_floor: float = RCE_LABEL_FLOOR, sigmoid: bool | None = None
) -> torch.Tensor:
    """Reverse cross-entropy per pixel (Wang et al., ICCV 2019): ``−Σ_k p_k·log clamp(y_k, label_floor, 1)``.

    For a hard label this is −A·(1 − p_y) with A = ln(label_floor) (≈ 9.21·(1 − p_y) for the default 1e-4),
    i.e. −A/2 times the MAE.

    Args:
        input: logits ``(B, C, *spatial)``.
        target: see the module docstring.
        label_floor: the clamp of the label distribution, in (0, 1): log 0 is replaced by A = ln(label_floor).
        sigmoid: ``None`` chooses sigmoid for one channel and softmax otherwise.

    Returns:
        the map ``(B, 1, *spatial)``.

    Raises:
        ValueError: label_floor outside (0, 1), or a target that does not fit the input.
    """
    label_floor = _number("reverse_ce_map", "label_floor", label_floor, 0.0, 1.0, "")
    log_p, y = _class_log_probs(input, target, _sigmoid_option("reverse_ce_map", sigmoid), "reverse_ce_map")
    return _per_pixel(_reverse_ce_terms(log_p, y, label_floor))


def _sce_options(owner: str, alpha: float, beta: float, label_floor: float) -> tuple[float, float, float]:
    alpha = _number(owner, "alpha", alpha, 0.0, math.inf, "low")
    beta = _number(owner, "beta", beta, 0.0, math.inf, "low")
    if alpha == 0 and beta == 0:
        raise ValueError(f"{owner}: alpha and beta are both 0, so the loss would be identically 0.")
    return alpha, beta, _number(owner, "label_floor", label_floor, 0.0, 1.0, "")


def symmetric_ce_map(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    label_floor: float = RCE_LABEL_FLOOR,
    sigmoid: bool | None = None,
) -> torch.Tensor:
    """Symmetric cross-entropy per pixel (Wang et al., ICCV 2019): ``α·CE + β·RCE``.

    CE is −Σ_k y_k·log p_k (for sigmoid: binary cross-entropy with logits), RCE as in :func:`reverse_ce_map`.
    α = β = 0.5 follow the noisy-branch SCE of the public 2BDenoise code (the paper tunes α, β per data set).

    Args:
        input: logits ``(B, C, *spatial)``.
        target: see the module docstring.
        alpha: weight of CE, >= 0.
        beta: weight of RCE, >= 0 (not both 0).
        label_floor: see :func:`reverse_ce_map`.
        sigmoid: ``None`` chooses sigmoid for one channel and softmax otherwise.

    Returns:
        the map ``(B, 1, *spatial)``.

    Raises:
        ValueError: a negative or non-finite weight, both weights 0, label_floor outside (0, 1), or a target
            that does not fit the input.
    """
    owner = "symmetric_ce_map"
    alpha, beta, label_floor = _sce_options(owner, alpha, beta, label_floor)
    return _sce(input, target, alpha, beta, label_floor, _sigmoid_option(owner, sigmoid), owner)


def _sce(input: torch.Tensor, target: torch.Tensor, alpha: float, beta: float, label_floor: float,
         sigmoid: bool | None, owner: str) -> torch.Tensor:
    log_p, y = _class_log_probs(input, target, sigmoid, owner)
    return _per_pixel(alpha * (-y * log_p) + beta * _reverse_ce_terms(log_p, y, label_floor))


def mae_map(input: torch.Tensor, target: torch.Tensor, sigmoid: bool | None = None) -> torch.Tensor:
    """Mean absolute error between the predicted and the label distribution per pixel (Ghosh et al., AAAI 2017).

    ``Σ_k |p_k − y_k|``, the L1 distance of Ghosh et al., which is 2·(1 − p_y) for a hard label (for sigmoid:
    2·|p − t| per channel). This scale is the paper's and holds for soft targets as well; it makes
    GCE(q = 1) = MAE/2 and RCE = −A/2·MAE exact for hard labels. PyMIC's ``MAELoss`` averages over the classes
    instead, i.e. MAE / C.

    Args:
        input: logits ``(B, C, *spatial)``.
        target: see the module docstring.
        sigmoid: ``None`` chooses sigmoid for one channel and softmax otherwise.

    Returns:
        the map ``(B, 1, *spatial)``.

    Raises:
        ValueError: a target that does not fit the input.
    """
    return _mae(input, target, _sigmoid_option("mae_map", sigmoid), "mae_map")


def _mae(input: torch.Tensor, target: torch.Tensor, sigmoid: bool | None, owner: str) -> torch.Tensor:
    log_p, y = _class_log_probs(input, target, sigmoid, owner)
    return _per_pixel((log_p.exp() - y).abs())


def _gamma_option(owner: str, gamma: float) -> float:
    return _number(
        owner, "gamma", gamma, 1.0, 2.0, "both",
        "Below 1 the gradient of |p − y|^γ is infinite at p = y; at 2 the loss is the soft Dice loss, and above 2"
        " large (likely noisy) errors would weigh more than in Dice, not less.",
    )


def _nr_dice_parts(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    gamma: float,
    include_background: bool,
    squared_pred: bool,
    smooth_dr: float,
    batch: bool,
    sigmoid: bool | None,
    owner: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Per-pixel errors |p − y|^γ ``(B, C', *spatial)``, the weight, the denominators (kept dims) and the sum axes."""
    _check_logits(input, owner)
    _check_target(input, target, owner)
    if weight is not None:
        _check_weight_shape(weight, input, owner)
    x = _full_precision(input)
    n_ch = x.shape[1]
    if _use_sigmoid(sigmoid, x, owner):
        p, y = torch.sigmoid(x), _sigmoid_target(x, target, owner)
    else:
        p, y = torch.softmax(x, 1), _softmax_target(x, target, owner)
    w = torch.ones_like(x[:, :1]) if weight is None else weight.to(x.dtype)
    if not include_background:
        if n_ch == 1:
            warnings.warn(f"{owner}: single channel prediction, include_background=False ignored.", stacklevel=3)
        else:
            p, y = p[:, 1:], y[:, 1:]
            if w.shape[1] > 1:
                w = w[:, 1:]
    power = 2 if squared_pred else 1
    axes = ([0] if batch else []) + list(range(2, x.ndim))
    denominator = torch.sum(w * (p**power + y**power), dim=axes, keepdim=True) + smooth_dr
    return (p - y).abs() ** gamma, w, denominator, axes


def _nr_dice_options(owner: str, gamma: float, include_background: object, squared_pred: object,
                     smooth_dr: float, batch: object) -> tuple[float, float]:
    for name, value in (("include_background", include_background), ("squared_pred", squared_pred),
                        ("batch", batch)):
        if not isinstance(value, bool):
            raise TypeError(f"{owner}: {name} must be True or False, got {value!r}.")
    return _gamma_option(owner, gamma), _number(owner, "smooth_dr", smooth_dr, 0.0, math.inf, "low")


def noise_robust_dice(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    gamma: float = 1.5,
    include_background: bool = True,
    squared_pred: bool = True,
    smooth_dr: float = 1e-5,
    batch: bool = False,
    sigmoid: bool | None = None,
) -> torch.Tensor:
    """Noise-robust Dice loss per item and class (Wang et al., IEEE TMI 2020, COPLE-Net).

    With p the activated prediction, y the target and w a per-pixel weight (all ones by default)::

        L = Σ w·|p − y|^γ / (Σ w·(p^k + y^k) + smooth_dr),   k = 2 if squared_pred else 1

    summed over the pixels of each item (over the batch with ``batch=True``). The weight enters both sums, as
    in :class:`dale_monai.losses.WeightedDiceLoss`: a zero weight removes a pixel, and an integer weight
    counts a pixel that many times. γ = 2 with k = 2 (and γ = 1 with k = 1 for hard labels) gives exactly the
    soft Dice loss 1 − (2Σwpy + ε)/(Σw(p^k + y^k) + ε); γ = 1.5 is the paper's value, which lets large,
    likely noisy, errors weigh less than in Dice. The paper's denominator is squared (k = 2, the default);
    PyMIC's ``NoiseRobustDiceLoss`` uses k = 1 and ``batch=True``.

    Args:
        input: logits ``(B, C, *spatial)``.
        target: see the module docstring.
        weight: per-pixel weight ``(B, 1, *spatial)`` (or the input's shape); ``None`` means all ones.
        gamma: exponent of the error, in [1, 2].
        include_background: if False, channel 0 is excluded (ignored for one channel).
        squared_pred: squared (paper) or linear (PyMIC) terms in the denominator.
        smooth_dr: ε, added to the denominator, >= 0.
        batch: one value per class over the whole batch instead of one per item and class.
        sigmoid: ``None`` chooses sigmoid for one channel and softmax otherwise.

    Returns:
        ``(B, C')`` values, or ``(C',)`` with ``batch=True`` (C' = C, or C − 1 without background).

    Raises:
        ValueError: gamma outside [1, 2], a negative smooth_dr, or a target or weight that does not fit.
    """
    owner = "noise_robust_dice"
    gamma, smooth_dr = _nr_dice_options(owner, gamma, include_background, squared_pred, smooth_dr, batch)
    return _nr_dice(input, target, weight, gamma, include_background, squared_pred, smooth_dr, batch,
                    _sigmoid_option(owner, sigmoid), owner)


def _nr_dice(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, gamma: float,
             include_background: bool, squared_pred: bool, smooth_dr: float, batch: bool, sigmoid: bool | None,
             owner: str) -> torch.Tensor:
    err, w, den, axes = _nr_dice_parts(input, target, weight, gamma, include_background, squared_pred, smooth_dr,
                                       batch, sigmoid, owner)
    values = (torch.sum(w * err, dim=axes, keepdim=True) / den).flatten(2)[..., 0]
    return values[0] if batch else values


def noise_robust_dice_map(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 1.5,
    include_background: bool = True,
    squared_pred: bool = True,
    smooth_dr: float = 1e-5,
    batch: bool = False,
    sigmoid: bool | None = None,
) -> torch.Tensor:
    """Per-pixel share of the (unweighted) noise-robust Dice loss: a per-pixel numerator over a shared denominator.

    Dice is a region loss, so a pixel has no loss of its own. The map gives pixel i of item b::

        ℓ_i = K · mean_c ( |p_ic − y_ic|^γ / D_bc ),   D_bc = Σ_j (p_jc^k + y_jc^k) + smooth_dr

    with K the number of pixels in a denominator's sum (the spatial size, times B with ``batch=True``), so the
    mean of the map over all pixels is exactly the mean of :func:`noise_robust_dice` and its gradient is the
    loss's gradient. D is not detached: each ℓ_i depends on every pixel of its item through D, which is what
    DALE's meta step then differentiates. ``mean(w ⊙ ℓ)`` weights the numerator only; :class:`NoiseRobustDiceLoss`
    with ``weight`` weights both sums instead (the two agree for w = 1).

    Args:
        input, target, gamma, include_background, squared_pred, smooth_dr, batch, sigmoid: as for
            :func:`noise_robust_dice`.

    Returns:
        the map ``(B, 1, *spatial)``.

    Raises:
        ValueError: as for :func:`noise_robust_dice`.
    """
    owner = "noise_robust_dice_map"
    gamma, smooth_dr = _nr_dice_options(owner, gamma, include_background, squared_pred, smooth_dr, batch)
    return _nr_dice_map(input, target, gamma, include_background, squared_pred, smooth_dr, batch,
                        _sigmoid_option(owner, sigmoid), owner)


def _nr_dice_map(input: torch.Tensor, target: torch.Tensor, gamma: float, include_background: bool,
                 squared_pred: bool, smooth_dr: float, batch: bool, sigmoid: bool | None, owner: str) -> torch.Tensor:
    err, _, den, axes = _nr_dice_parts(input, target, None, gamma, include_background, squared_pred, smooth_dr,
                                       batch, sigmoid, owner)
    pixels = math.prod(err.shape[a] for a in axes)
    return pixels * (err / den).mean(1, keepdim=True)


# ----------------------------------------------------------------------------------------------- modules
class _PixelRobustLoss(_Loss):
    """A per-pixel loss with DALELoss's call convention; subclasses implement :meth:`pixel_map`."""

    def __init__(self, reduction: LossReduction | str, sigmoid: bool | None) -> None:
        owner = type(self).__name__
        super().__init__(reduction=_reduction_option(owner, reduction))
        self.sigmoid = _sigmoid_option(owner, sigmoid)

    def pixel_map(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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
            target: see the module docstring.
            weight: per-pixel weight ``(B, 1, *spatial)`` (e.g. DALE's ω ⊙ M^f); ``None`` means all ones.
            extra: an additive per-pixel map ``(B, 1, *spatial)`` or a scalar (e.g. α·L_W), weighted with the map.

        Returns:
            ``weight ⊙ (map + extra)``: its mean over all pixels (``"mean"``, as DALELoss: down-weighted pixels
            lower the loss rather than being renormalised away), its sum, or the map itself (``"none"``).
        """
        loss_map = _weighted_map(self.pixel_map(input, target), weight, extra, type(self).__name__)
        if self.reduction == LossReduction.MEAN.value:
            return loss_map.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss_map.sum()
        return loss_map


class GeneralizedCELoss(_PixelRobustLoss):
    """Generalised cross-entropy L_q (Zhang & Sabuncu, NeurIPS 2018); see :func:`generalized_ce_map`.

    Args:
        q: exponent in (0, 1]; default 0.5 (the paper's recommendation, PyMIC's default).
        sigmoid: ``None`` (default) chooses sigmoid for one channel and softmax otherwise.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (the weighted map ``(B, 1, *spatial)``).

    Raises:
        ValueError: q outside (0, 1] or an unknown reduction, naming the option.

    Example::

        loss = GeneralizedCELoss(q=0.5)
        trainer = DALETrainer(device, epochs, loader, net, opt, loss, omega_step=OmegaMetaStep())
    """

    def __init__(self, q: float = 0.5, sigmoid: bool | None = None,
                 reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction, sigmoid)
        self.q = _q_option("GeneralizedCELoss", q)

    def pixel_map(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The L_q map ``(B, 1, *spatial)``."""
        return _gce(input, target, self.q, self.sigmoid, "GeneralizedCELoss")


class SymmetricCELoss(_PixelRobustLoss):
    """Symmetric cross-entropy α·CE + β·RCE (Wang et al., ICCV 2019); see :func:`symmetric_ce_map`.

    Args:
        alpha: weight of CE, >= 0; default 0.5.
        beta: weight of RCE, >= 0 (not both 0); default 0.5.
        label_floor: the label clamp whose log A replaces log 0 in RCE, in (0, 1); default 1e-4 (A ≈ −9.21).
        sigmoid: ``None`` (default) chooses sigmoid for one channel and softmax otherwise.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Raises:
        ValueError: an out-of-range option, naming it.
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, label_floor: float = RCE_LABEL_FLOOR,
                 sigmoid: bool | None = None, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction, sigmoid)
        self.alpha, self.beta, self.label_floor = _sce_options("SymmetricCELoss", alpha, beta, label_floor)

    def pixel_map(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The α·CE + β·RCE map ``(B, 1, *spatial)``."""
        return _sce(input, target, self.alpha, self.beta, self.label_floor, self.sigmoid, "SymmetricCELoss")


class MAELoss(_PixelRobustLoss):
    """Mean absolute error Σ_k |p_k − y_k| on probabilities (Ghosh et al., AAAI 2017); see :func:`mae_map`.

    Args:
        sigmoid: ``None`` (default) chooses sigmoid for one channel and softmax otherwise.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Raises:
        ValueError: an unknown reduction.
    """

    def __init__(self, sigmoid: bool | None = None, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction, sigmoid)

    def pixel_map(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The MAE map ``(B, 1, *spatial)``."""
        return _mae(input, target, self.sigmoid, "MAELoss")


class NoiseRobustDiceLoss(_Loss):
    """Noise-robust Dice loss (Wang et al., IEEE TMI 2020, COPLE-Net) with DALELoss's call convention.

    ``forward(input, target, weight, extra)`` returns the mean (or sum) over items and classes of
    :func:`noise_robust_dice` with ``weight`` in both of its sums, plus ``mean(weight ⊙ extra)`` (or the sum)
    when ``extra`` is given. :meth:`pixel_map` is :func:`noise_robust_dice_map`, the per-pixel share DALE's meta
    step differentiates; read its docstring for how a region loss is split over pixels.

    Args:
        gamma: exponent of |p − y|, in [1, 2]; default 1.5 (the paper's).
        include_background: if False, channel 0 is excluded (ignored for one channel).
        squared_pred: squared denominator terms Σp² + Σy² (the paper, default) or Σp + Σy (PyMIC).
        smooth_dr: ε in the denominator, >= 0.
        batch: one value per class over the whole batch instead of one per item and class.
        sigmoid: ``None`` (default) chooses sigmoid for one channel and softmax otherwise.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (the values ``(B, C', 1, ...)``, or
            ``(C', 1, ...)`` with ``batch=True``, as :class:`dale_monai.losses.WeightedDiceLoss` returns).

    Raises:
        ValueError: an out-of-range option, naming it.
    """

    def __init__(self, gamma: float = 1.5, include_background: bool = True, squared_pred: bool = True,
                 smooth_dr: float = 1e-5, batch: bool = False, sigmoid: bool | None = None,
                 reduction: LossReduction | str = LossReduction.MEAN) -> None:
        owner = "NoiseRobustDiceLoss"
        super().__init__(reduction=_reduction_option(owner, reduction))
        self.gamma, self.smooth_dr = _nr_dice_options(owner, gamma, include_background, squared_pred, smooth_dr,
                                                      batch)
        self.include_background = include_background
        self.squared_pred = squared_pred
        self.batch = batch
        self.sigmoid = _sigmoid_option(owner, sigmoid)

    def _options(self) -> tuple:
        return (self.gamma, self.include_background, self.squared_pred, self.smooth_dr, self.batch, self.sigmoid,
                "NoiseRobustDiceLoss")

    def pixel_map(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The per-pixel share ``(B, 1, *spatial)`` of the unweighted loss (:func:`noise_robust_dice_map`)."""
        return _nr_dice_map(input, target, *self._options())

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
            target: see the module docstring.
            weight: per-pixel weight ``(B, 1, *spatial)`` (or the input's shape), applied in both sums.
            extra: an additive per-pixel map ``(B, 1, *spatial)`` or a scalar, weighted by ``weight`` and
                averaged (summed) over all pixels; needs reduction ``"mean"`` or ``"sum"``.

        Returns:
            the loss, reduced as ``reduction`` says.
        """
        values = _nr_dice(input, target, weight, *self._options())
        if self.reduction == LossReduction.NONE.value:
            if extra is not None:
                raise ValueError("NoiseRobustDiceLoss: extra needs reduction 'mean' or 'sum', not 'none'.")
            return values.view(list(values.shape) + [1] * (input.ndim - 2))
        reduce = torch.mean if self.reduction == LossReduction.MEAN.value else torch.sum
        loss = reduce(values)
        if extra is not None:
            # the extra term is per pixel, so it takes a (B, 1, *spatial) weight like the pixel losses
            zeros = values.new_zeros((input.shape[0], 1, *input.shape[2:]))
            loss = loss + reduce(_weighted_map(zeros, weight, extra, "NoiseRobustDiceLoss"))
        return loss
