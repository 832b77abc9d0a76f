"""Fixed and dynamic pseudo-labels with CutMix, as plain torch functions (Kumari & Singh, arXiv 2405.07256).

"Leveraging fixed and dynamic pseudo-labels for semi-supervised medical image segmentation" (published as
CoTwin, CVPRW 2025) co-trains two subnets. Only its abstract and figure captions were available (no code, no
equations, no hyper-parameters: ``../shared/PARADIGMS.md``); what follows is what the captions say, and every
choice they leave open is marked **ours**.

- **Fixed pseudo-label** (Fig. 1): a random crop x^{u_f} of the unlabelled image (:func:`random_crop_starts`,
  :func:`crop_at`); a subnet's hard prediction on it.
- **Temporary pseudo-label** (Fig. 1, 2d): four crops c_d1…c_d4 of the same size, shifted from the fixed crop;
  the subnet's predictions on them, mapped back into the fixed crop's frame. **Ours:** the shifts are the four
  diagonal offsets (±s, ±s) along the first two spatial axes (:func:`shift_offsets`; other axes unshifted), and the
  temporary label is the hard label of the mean of the four probability maps on the pixels all four crops cover.
- **COM** (Fig. 2d): the dynamic pseudo-label takes the temporary label on the overlapping region and the fixed
  label elsewhere (:func:`dynamic_pseudo_label`). **Ours:** "overlapping region" = the pixels covered by all four
  shifted crops (:func:`overlap_bounds`): with diagonal shifts of s, the fixed crop without a border of s.
- **CUT** (Fig. 3): a CutMix of two unlabelled images of the batch (:func:`cutmix_masks`, :func:`cutmix`). **Ours:**
  the box of Yun et al. (CutMix, ICCV 2019): volume share 1 − λ with λ ~ U(0, 1), the image's aspect ratio, a
  uniform centre, clipped to the image; image b takes the box from image b − 1 of the batch (cyclically), so a
  batch of one image is not mixed.

Crops are taken per image at its own position; every function works on 2D ``(B, C, H, W)`` and 3D
``(B, C, H, W, D)`` tensors.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .semisup import hard_labels

__all__ = ["crop_geometry", "shift_offsets", "random_crop_starts", "crop_at", "overlap_bounds",
           "temporary_probabilities", "dynamic_pseudo_label", "cutmix_masks", "cutmix"]


def crop_geometry(spatial: Sequence[int], crop_fraction: float = 0.75, size_multiple: int = 32,
                  shift_fraction: float = 0.125) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Crop size and shift (per axis, in pixels) for an input of spatial size ``spatial``.

    The crop side is ``crop_fraction`` of the input's, rounded down to a multiple of ``size_multiple`` (networks
    that halve the resolution k times need multiples of 2^k: 16 for the bundles' U-Nets, 32 for SwinUNETR) and at
    least ``size_multiple``; the shift is ``shift_fraction`` of the crop side (at least 1) on the first two axes, 0
    on the others. All three defaults are **ours** (the paper's are not known).

    Args:
        spatial: the input's spatial size.
        crop_fraction: crop side / input side, in (0, 1].
        size_multiple: the crop side is a multiple of this (>= 1).
        shift_fraction: shift / crop side, in (0, 0.5).

    Returns:
        ``(crop, shift)``.

    Raises:
        ValueError: an option out of range, or an input too small for the crop shifted both ways
            (crop + 2·shift > input on an axis), naming the options.
    """
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must lie in (0, 1], got {crop_fraction!r}")
    if isinstance(size_multiple, bool) or not isinstance(size_multiple, int) or size_multiple < 1:
        raise ValueError(f"size_multiple must be an integer >= 1, got {size_multiple!r}")
    if not 0 < shift_fraction < 0.5:
        raise ValueError(f"shift_fraction must lie in (0, 0.5), got {shift_fraction!r}")
    crop = tuple(max(size_multiple, int(math.floor(crop_fraction * s / size_multiple)) * size_multiple)
                 for s in spatial)
    shift = tuple(max(1, round(shift_fraction * c)) if axis < 2 else 0 for axis, c in enumerate(crop))
    too_small = [axis for axis, (s, c, d) in enumerate(zip(spatial, crop, shift)) if c + 2 * d > s]
    if too_small:
        raise ValueError(
            f"an input of spatial size {tuple(spatial)} cannot hold a crop of {crop} shifted by {shift} both ways "
            f"(axis {too_small[0]}): lower crop_fraction, size_multiple or shift_fraction, or enlarge the input")
    return crop, shift


def shift_offsets(shift: Sequence[int]) -> list[tuple[int, ...]]:
    """The four diagonal offsets (+s0, +s1), (+s0, −s1), (−s0, +s1), (−s0, −s1) of the shifted crops, with the
    further axes' entries of ``shift`` unchanged (normally 0)."""
    s0, s1, *rest = (int(s) for s in shift)
    return [(a, b, *rest) for a in (s0, -s0) for b in (s1, -s1)]


def random_crop_starts(batch: int, spatial: Sequence[int], crop: Sequence[int], margin: Sequence[int] | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
    """Uniform crop positions, one per image: start_d ∈ [margin_d, spatial_d − crop_d − margin_d].

    Args:
        batch: number of images.
        spatial: their spatial size.
        crop: the crop size.
        margin: room kept on both sides (the shift of the shifted crops); default 0.
        generator: torch generator (default: the global one).

    Returns:
        ``(batch, dims)`` int64 starts.
    """
    margin = [0] * len(spatial) if margin is None else list(margin)
    starts = []
    for s, c, m in zip(spatial, crop, margin):
        high = s - c - m
        if high < m:
            raise ValueError(f"a crop of {c} with a margin of {m} does not fit in {s}")
        starts.append(torch.randint(m, high + 1, (batch,), generator=generator))
    return torch.stack(starts, dim=1)


def crop_at(x: Tensor, starts: Tensor, crop: Sequence[int]) -> Tensor:
    """Image b cropped at ``starts[b]`` to ``crop``: ``(B, C, *crop)``.

    Raises:
        ValueError: a crop reaching outside an image.
    """
    crop = tuple(int(c) for c in crop)
    spatial = x.shape[2:]
    out = []
    for b in range(x.shape[0]):
        begin = [int(v) for v in starts[b]]
        if any(v < 0 or v + c > s for v, c, s in zip(begin, crop, spatial)):
            raise ValueError(f"crop {crop} at {tuple(begin)} reaches outside the image {tuple(spatial)}")
        out.append(x[(b, slice(None), *(slice(v, v + c) for v, c in zip(begin, crop)))])
    return torch.stack(out)


def overlap_bounds(offsets: Sequence[Sequence[int]], crop: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Per axis, [lo, hi) of the fixed crop covered by every shifted crop (offsets relative to the fixed crop).

    Raises:
        ValueError: no offset, or shifted crops that share no pixel with the fixed crop.
    """
    if not offsets:
        raise ValueError("overlap_bounds: no shifted crop")
    bounds = []
    for axis, c in enumerate(crop):
        lo = max(max(int(o[axis]), 0) for o in offsets)
        hi = c + min(min(int(o[axis]), 0) for o in offsets)
        if hi <= lo:
            raise ValueError(f"the shifted crops {list(offsets)} share no pixel of a crop of {tuple(crop)}")
        bounds.append((lo, hi))
    return tuple(bounds)


def temporary_probabilities(shifted_probs: Sequence[Tensor], offsets: Sequence[Sequence[int]]) -> Tensor:
    """Mean of the shifted crops' probabilities on the overlap (:func:`overlap_bounds`), in the fixed crop's frame.

    Pixel u of the fixed crop is pixel u − o_k of shifted crop k (it starts o_k further).

    Args:
        shifted_probs: K tensors ``(B, C, *crop)``, crop k starting ``offsets[k]`` from the fixed crop.
        offsets: the K offsets.

    Returns:
        ``(B, C, *overlap)``, the overlap's size being ``hi − lo`` per axis.
    """
    if len(shifted_probs) != len(offsets):
        raise ValueError(f"{len(shifted_probs)} shifted predictions for {len(offsets)} offsets")
    crop = shifted_probs[0].shape[2:]
    bounds = overlap_bounds(offsets, crop)
    parts = [p[(slice(None), slice(None), *(slice(lo - int(o[a]), hi - int(o[a])) for a, (lo, hi) in
                                              enumerate(bounds)))] for p, o in zip(shifted_probs, offsets)]
    return torch.stack(parts).mean(dim=0)


def dynamic_pseudo_label(fixed_probs: Tensor, shifted_probs: Sequence[Tensor], offsets: Sequence[Sequence[int]]
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """COM: the dynamic pseudo-label from the fixed crop's probabilities and the shifted crops'.

    Args:
        fixed_probs: ``(B, C, *crop)`` probabilities on the fixed crop (sigmoid for ``C = 1``, softmax otherwise).
        shifted_probs: K tensors of the same shape on the shifted crops.
        offsets: the K offsets of the shifted crops from the fixed crop.

    Returns:
        ``(fixed, dynamic, overlap)``: the fixed and the dynamic hard labels ``(B, 1, *crop)`` (the format of
        :func:`dale_monai.semisup.hard_labels`) and the overlap as a boolean ``(1, 1, *crop)`` mask.
    """
    fixed = hard_labels(fixed_probs, from_probabilities=True)
    bounds = overlap_bounds(offsets, fixed_probs.shape[2:])
    region = (slice(None), slice(None), *(slice(lo, hi) for lo, hi in bounds))
    dynamic = fixed.clone()
    dynamic[region] = hard_labels(temporary_probabilities(shifted_probs, offsets), from_probabilities=True)
    overlap = torch.zeros((1, 1, *fixed.shape[2:]), dtype=torch.bool, device=fixed.device)
    overlap[region] = True
    return fixed, dynamic, overlap


def cutmix_masks(batch: int, spatial: Sequence[int], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """One CutMix box per image: ``(B, 1, *spatial)`` float, 1 inside the box (the part taken from the partner).

    The box of Yun et al. (CutMix, ICCV 2019), in any number of dimensions: λ ~ U(0, 1), box side
    (1 − λ)^(1/D) of the image side on each of the D axes (volume share 1 − λ before clipping), centre uniform
    over the image, clipped to it.
    """
    dims = len(spatial)
    masks = torch.zeros((batch, 1, *spatial), device=device)
    lam = torch.rand(batch, generator=generator)
    centres = torch.rand(batch, dims, generator=generator)
    for b in range(batch):
        ratio = float(1.0 - lam[b]) ** (1.0 / dims)
        box = []
        for axis, s in enumerate(spatial):
            side = int(round(ratio * s))
            centre = int(centres[b, axis] * s)
            box.append(slice(max(centre - side // 2, 0), min(centre - side // 2 + side, s)))
        masks[(b, 0, *box)] = 1.0
    return masks


def cutmix(x: Tensor, masks: Tensor) -> Tensor:
    """Image b with the box of ``masks[b]`` taken from image b − 1 (cyclically): x ⊙ (1 − m) + roll(x, 1) ⊙ m.

    The same masks mix images and their hard pseudo-labels consistently (a label is taken wholly from one side).
    """
    if masks.shape[0] != x.shape[0] or masks.shape[2:] != x.shape[2:]:
        raise ValueError(f"cutmix: masks {tuple(masks.shape)} do not match the batch {tuple(x.shape)}")
    m = masks.to(x.dtype)
    return x * (1 - m) + torch.roll(x, shifts=1, dims=0) * m
