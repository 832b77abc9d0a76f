"""Small-loss pixel selection of Co-teaching and TriNet as plain torch functions (no Ignite).

Both methods train several networks on the same batch and let the networks choose each other's training
pixels: a pixel whose loss is small under a network is likely to carry a correct label (networks fit clean
labels before they memorise noisy ones).

- **Co-teaching** (Han et al., "Co-teaching: Robust training of deep neural networks with extremely noisy
  labels", NeurIPS 2018): two networks; each is trained on the ⌊r(t)·N⌋ pixels of the batch with the smallest
  loss under the *other* network (:func:`coteaching_weights`).
- **TriNet** (Zhang et al., "Robust medical image segmentation from non-expert annotations with
  tri-network", MICCAI 2020): three networks; each selects its ⌊r(t)·N⌋ smallest-loss pixels and network i
  is trained on the pixels that both other networks select (:func:`trinet_weights`).

The keep ratio r(t) falls from about 1 to the select ratio s during a ramp (:func:`keep_ratio`):

    r(t) = 1 − (1 − s)·ramp(x),   x = clip((t − t_start)/(t_end − t_start), 0, 1),

with ramp(x) = exp(−5·(1 − x)²) (``"sigmoid"``, Laine & Aila's ramp-up, used by PyMIC's Co-teaching) or x
(``"linear"``, PyMIC's TriNet). PyMIC (``pymic/net_run/noisy_label/nll_co_teaching.py``, ``nll_trinet.py``,
``pymic/util/ramps.py::get_rampup_ratio``) is the reference implementation of both rules for segmentation;
its JSRT examples (``PyMIC_examples/seg_noisy_label/JSRT/config/unet_cot.cfg``, ``unet_trinet.cfg``) use
s = 0.85 (Co-teaching) and 0.9 (TriNet) with the ramp from iteration 1,000 to 8,000 of 10,000.

Selection is exact and works on any number of pixels: the k-th smallest loss comes from
:func:`torch.kthvalue` (linear time), never :func:`torch.quantile`, which refuses inputs above 2^24 elements
(pytorch/pytorch#64947) that 3D batches reach; ties at the threshold are broken by position, so exactly k
pixels are kept.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["RAMPS", "keep_ratio", "small_loss_mask", "selection_weights", "coteaching_weights", "trinet_weights",
           "check_select_ratio", "check_ramp"]

RAMPS = ("sigmoid", "linear")


def check_select_ratio(select_ratio: float, owner: str = "keep_ratio") -> float:
    """``select_ratio`` as a float in [0, 1].

    Raises:
        ValueError: outside [0, 1] or not a finite number, naming ``select_ratio``.
    """
    if isinstance(select_ratio, bool) or not isinstance(select_ratio, (int, float)) or not (
        math.isfinite(select_ratio) and 0 <= select_ratio <= 1
    ):
        raise ValueError(f"{owner}: select_ratio (s, the final share of pixels kept) must lie in [0, 1], "
                         f"got {select_ratio!r}")
    return float(select_ratio)


def check_ramp(ramp_start: int | None, ramp_end: int | None, ramp: str, owner: str = "keep_ratio") -> None:
    """Validate the ramp of :func:`keep_ratio` (``None`` ends are allowed: callers fill them in later).

    Raises:
        ValueError: a negative or non-integer end, ``ramp_end < ramp_start``, or an unknown ``ramp``, naming it.
    """
    for name, value in (("ramp_start", ramp_start), ("ramp_end", ramp_end)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{owner}: {name} must be an iteration number >= 0 (or None), got {value!r}")
    if ramp_start is not None and ramp_end is not None and ramp_end < ramp_start:
        raise ValueError(f"{owner}: ramp_end ({ramp_end}) must not be before ramp_start ({ramp_start})")
    if ramp not in RAMPS:
        raise ValueError(f"{owner}: ramp must be one of {RAMPS}, got {ramp!r}")


def keep_ratio(iteration: int, select_ratio: float, ramp_start: int, ramp_end: int, ramp: str = "sigmoid") -> float:
    """The share r(t) of pixels kept at ``iteration``: 1 − (1 − s)·ramp(x), x the position in the ramp.

    Args:
        iteration: t, the current iteration (any integer; before the ramp x = 0, after it x = 1).
        select_ratio: s ∈ [0, 1], the share kept once the ramp has ended.
        ramp_start: first iteration of the ramp.
        ramp_end: last iteration of the ramp (>= ``ramp_start``; equal means a step at that iteration).
        ramp: ``"sigmoid"`` (exp(−5(1 − x)²): r is 1 − 0.0067·(1 − s) before the ramp, as in PyMIC) or
            ``"linear"`` (x: r is exactly 1 before the ramp).

    Returns:
        r(t) ∈ [s, 1].

    Raises:
        ValueError: for s ∉ [0, 1], a negative ramp end, ``ramp_end < ramp_start`` or an unknown ``ramp``.
    """
    s = check_select_ratio(select_ratio)
    check_ramp(ramp_start, ramp_end, ramp)
    if ramp_end == ramp_start:
        x = 1.0 if iteration >= ramp_end else 0.0
    else:
        x = min(max((iteration - ramp_start) / (ramp_end - ramp_start), 0.0), 1.0)
    up = math.exp(-5.0 * (1.0 - x) ** 2) if ramp == "sigmoid" else x
    return 1.0 - (1.0 - s) * up


def small_loss_mask(loss_map: Tensor, ratio: float, per_sample: bool = False) -> Tensor:
    """The k = ⌊ratio·N⌋ pixels with the smallest loss, as a boolean mask of ``loss_map``'s shape.

    Exactly k pixels are selected: the k-th smallest value v comes from :func:`torch.kthvalue`, every pixel
    below v is kept and the pixels equal to v fill the remaining places in memory order. Works on any size
    (no :func:`torch.quantile`, which fails above 2^24 elements); NaN losses sort last, as in ``kthvalue``.

    Args:
        loss_map: per-pixel losses, e.g. ``(B, 1, *spatial)``; not differentiated.
        ratio: share of pixels to keep, in [0, 1].
        per_sample: select ⌊ratio·N⌋ pixels in each item (dim 0) instead of across the whole batch (the
            default, as Co-teaching and PyMIC select within the mini-batch).

    Returns:
        bool tensor of ``loss_map``'s shape with exactly ⌊ratio·N⌋ ``True`` per batch (or per item).

    Raises:
        ValueError: for a ratio outside [0, 1] or an empty ``loss_map``.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ValueError(f"small_loss_mask: ratio must lie in [0, 1], got {ratio!r}")
    if loss_map.numel() == 0:
        raise ValueError("small_loss_mask: empty loss map")
    values = loss_map.detach()
    rows = values.reshape(values.shape[0], -1) if per_sample else values.reshape(1, -1)
    n = rows.shape[1]
    k = int(math.floor(ratio * n + 1e-9))  # r·N computed in floating point may land just below an integer
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    kth = torch.kthvalue(rows, k, dim=1, keepdim=True).values
    below, ties = rows < kth, rows == kth
    nan_kth = kth.isnan()
    if nan_kth.any():  # kthvalue sorts NaN last; a NaN k-th value keeps every number and fills up with NaNs
        nans = rows.isnan()
        below = below | (nan_kth & ~nans)
        ties = ties | (nan_kth & nans)
    missing = k - below.sum(dim=1, keepdim=True)
    chosen_ties = ties & (torch.cumsum(ties.to(torch.int64), dim=1) <= missing)
    return (below | chosen_ties).reshape(values.shape)


def selection_weights(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-pixel loss weights from a selection mask: the mask divided by its mean, so mean(w ⊙ ℓ) is the mean
    loss over the selected pixels (PyMIC's Σ(ℓ·m)/Σm). An empty selection gives all-zero weights (no update)
    instead of PyMIC's 0/0.

    Args:
        mask: bool or {0, 1} tensor.
        dtype: floating dtype of the weights.

    Returns:
        weights of ``mask``'s shape.
    """
    m = mask.to(dtype)
    return m * (m.numel() / m.sum().clamp_min(1.0))


def coteaching_weights(loss_maps: tuple[Tensor, Tensor] | list[Tensor], ratio: float,
                       per_sample: bool = False) -> list[Tensor]:
    """Co-teaching's exchange: network 0 learns from the pixels network 1 selects, and vice versa.

    Args:
        loss_maps: the two networks' per-pixel losses on the same batch, same shape.
        ratio: r(t), the share of pixels each network selects (:func:`keep_ratio`).
        per_sample: select per item instead of across the batch.

    Returns:
        the loss weights of network 0 and network 1 (:func:`selection_weights` of the other's selection).

    Raises:
        ValueError: for other than two maps, or maps of different shapes.
    """
    if len(loss_maps) != 2:
        raise ValueError(f"coteaching_weights: Co-teaching needs exactly 2 loss maps, got {len(loss_maps)}")
    _same_shape(loss_maps, "coteaching_weights")
    m0, m1 = (small_loss_mask(m, ratio, per_sample) for m in loss_maps)
    dtype = loss_maps[0].dtype
    return [selection_weights(m1, dtype), selection_weights(m0, dtype)]


def trinet_weights(loss_maps: tuple[Tensor, Tensor, Tensor] | list[Tensor], ratio: float,
                   per_sample: bool = False) -> list[Tensor]:
    """TriNet's rule: network i learns from the pixels that both other networks select.

    Args:
        loss_maps: the three networks' per-pixel losses on the same batch, same shape.
        ratio: r(t), the share of pixels each network selects (:func:`keep_ratio`).
        per_sample: select per item instead of across the batch.

    Returns:
        the loss weights of networks 0, 1, 2 (:func:`selection_weights` of the other two's agreement).

    Raises:
        ValueError: for other than three maps, or maps of different shapes.
    """
    if len(loss_maps) != 3:
        raise ValueError(f"trinet_weights: TriNet needs exactly 3 loss maps, got {len(loss_maps)}")
    _same_shape(loss_maps, "trinet_weights")
    m = [small_loss_mask(x, ratio, per_sample) for x in loss_maps]
    dtype = loss_maps[0].dtype
    return [selection_weights(m[1] & m[2], dtype), selection_weights(m[0] & m[2], dtype),
            selection_weights(m[0] & m[1], dtype)]


def _same_shape(loss_maps, owner: str) -> None:
    shapes = {tuple(m.shape) for m in loss_maps}
    if len(shapes) != 1:
        raise ValueError(f"{owner}: the loss maps must have one shape, got {sorted(shapes)}")
