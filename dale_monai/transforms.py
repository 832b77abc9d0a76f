"""MONAI transforms computing DALE's soft non-fuzzy / fuzzy masks (AE&ER soft threshold, Eqs. 3–6).

Place the partition after the random augmentations of the training pipeline (the masks depend on the
image and label the model will see) and before batching::

    Compose([..., RandFlipd(keys=("image", "label"), prob=0.5), FuzzyPartitiond(keys=("image", "label"))])

adds ``"mask_n"`` (M^n) and ``"mask_f"`` (M^f) to each sample, ``(1, *spatial)`` float32 in [0, 1].
The mathematics is in :mod:`dale_monai.partition`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from .partition import check_options, check_patch_size, fuzzy_masks

__all__ = ["FuzzyPartition", "FuzzyPartitiond", "FuzzyPartitionD", "FuzzyPartitionDict"]


class FuzzyPartition(Transform):
    """Soft masks ``(M^n, M^f)`` of an image and its label, as DALE's AE&ER soft threshold defines them.

    Per non-overlapping patch: average entropy of the image (Eq. 3) and edge-pixel ratio of the label
    (Eq. 4), min-max normalised over the image's patches (Eq. 5), ``m = max(r_std, e_std)``;
    ``M^f = 1`` where ``m > τ`` else ``m``; ``M^n = 1`` where ``m < τ`` else ``1 − m`` (the paper
    prints ``τ − m``, which is ≤ 0 there; see :func:`dale_monai.partition.soft_threshold`). Partial
    patches at the image border are computed from their real pixels only.

    ``mode`` picks the recipe (see :mod:`dale_monai.partition`): ``"patch"`` (default) the patch
    scores with the options below, whose defaults are the paper's; ``"paper"`` the paper's form,
    refusing non-paper ``entropy`` / ``combine`` / ``use_*`` values; ``"band"`` a pixel-level band of
    ``band_width`` pixels around the label's class boundaries (``M^n = 1 − M^f``, no patches, no τ).
    Partition noise statistics of each option on injected-noise PH2 training labels:
    ``benchmarks/results/partition_noise_quick.md``.

    Args:
        patch_size: patch edge length (one int for every spatial axis) or ``(h, w[, d])``; paper: 16.
        tau: soft threshold τ in [0, 1]; paper: 0.9.
        bins: intensity quantisation levels of the entropy histogram.
        edge: label edge operator, ``"morph"`` (morphological gradient, default) or ``"sobel"``.
        entropy: ``"paper"`` (Eq. 3 as printed, default) or ``"shannon"`` (histogram entropy).
        use_entropy: include the average entropy (``False``: the "ER only" ablation, as ``combine="er"``).
        use_edges: include the edge ratio (``False``: the "AE only" ablation, as ``combine="ae"``).
        mode: ``"patch"`` (default), ``"paper"`` or ``"band"``.
        combine: how the normalised scores make ``m``: ``"max"`` (paper Eqs. 5–6, default),
            ``"weighted"`` (``ae_weight · r_std + (1 − ae_weight) · e_std``), ``"ae"`` or ``"er"`` (one
            score alone); see :func:`dale_monai.partition.combine_scores`.
        ae_weight: weight of the entropy score with ``combine="weighted"``, in [0, 1].
        band_width: with ``mode="band"`` (required there, refused elsewhere): pixels whose Euclidean
            distance to the nearest pixel of another class is at most this (>= 1) are fuzzy.
        band_profile: ``"hard"`` (M^f 1 inside the band, 0 outside) or ``"linear"`` (1 inside, then
            falling to 0 at twice the width); see :func:`dale_monai.partition.band_score`.

    Raises:
        ValueError: at construction, for an option out of range, unknown or conflicting, naming it.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        patch_size: int | Sequence[int] = 16,
        tau: float = 0.9,
        bins: int = 256,
        edge: str = "morph",
        entropy: str = "paper",
        use_entropy: bool = True,
        use_edges: bool = True,
        mode: str = "patch",
        combine: str = "max",
        ae_weight: float = 0.5,
        band_width: float | None = None,
        band_profile: str = "hard",
    ) -> None:
        check_options(
            tau, bins, edge, entropy, use_entropy, use_edges, mode, combine, ae_weight, band_width, band_profile
        )
        self.patch_size = check_patch_size(patch_size)
        self.tau = float(tau)
        self.bins = int(bins)
        self.edge = edge
        self.entropy = entropy
        self.use_entropy = use_entropy
        self.use_edges = use_edges
        self.mode = mode
        self.combine = combine
        self.ae_weight = float(ae_weight)
        self.band_width = None if band_width is None else float(band_width)
        self.band_profile = band_profile

    def __call__(self, img: NdarrayOrTensor, label: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Compute the masks.

        Args:
            img: ``(C, H, W)`` or ``(C, H, W, D)`` image, numpy or torch (CPU or GPU).
            label: ``(1, *spatial)`` class indices or ``(K, *spatial)`` one-hot, same spatial shape.

        Returns:
            ``(mask_n, mask_f)``, each ``(1, *spatial)`` float32, of the label's type and device (a
            MetaTensor label gives MetaTensors carrying a copy of its meta data).
        """
        mask_n, mask_f = fuzzy_masks(
            img,
            label,
            patch_size=self.patch_size,
            tau=self.tau,
            bins=self.bins,
            edge=self.edge,
            entropy=self.entropy,
            use_entropy=self.use_entropy,
            use_edges=self.use_edges,
            mode=self.mode,
            combine=self.combine,
            ae_weight=self.ae_weight,
            band_width=self.band_width,
            band_profile=self.band_profile,
        )
        dtype = np.float32 if isinstance(label, np.ndarray) else torch.float32
        out_n = convert_to_dst_type(mask_n, dst=label, dtype=dtype)[0]
        out_f = convert_to_dst_type(mask_f, dst=label, dtype=dtype)[0]
        return out_n, out_f


class FuzzyPartitiond(MapTransform):
    """Dictionary form of :class:`FuzzyPartition`: adds the masks to the sample under two new keys.

    Args:
        keys: the image and label keys, in that order (MONAI's ``keys`` argument).
        image_key: key of the image; default ``keys[0]``. Must be one of ``keys``.
        label_key: key of the label; default ``keys[1]``. Must be one of ``keys``.
        nonfuzzy_key: key written with M^n (default ``"mask_n"``, as ``DALEKeys.MASK_N``).
        fuzzy_key: key written with M^f (default ``"mask_f"``, as ``DALEKeys.MASK_F``).
        patch_size, tau, bins, edge, entropy, use_entropy, use_edges, mode, combine, ae_weight, band_width,
            band_profile: see :class:`FuzzyPartition`.
        allow_missing_keys: when the image or the label is missing, return the sample unchanged
            instead of raising ``KeyError``.

    The new entries have the label's type; for a MetaTensor label (the usual case after
    ``LoadImaged`` or ``EnsureTyped``) they are MetaTensors with a copy of the label's meta data and
    applied operations, so later spatial transforms, ``Invertd`` and collation treat them like the
    label.

    Raises:
        ValueError: at construction, for an option out of range or unknown, or clashing keys; at call
            time, for an image/label spatial shape mismatch (naming both shapes and keys).
    """

    backend = FuzzyPartition.backend

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        image_key: Hashable | None = None,
        label_key: Hashable | None = None,
        nonfuzzy_key: Hashable = "mask_n",
        fuzzy_key: Hashable = "mask_f",
        patch_size: int | Sequence[int] = 16,
        tau: float = 0.9,
        bins: int = 256,
        edge: str = "morph",
        entropy: str = "paper",
        use_entropy: bool = True,
        use_edges: bool = True,
        allow_missing_keys: bool = False,
        mode: str = "patch",
        combine: str = "max",
        ae_weight: float = 0.5,
        band_width: float | None = None,
        band_profile: str = "hard",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if (image_key is None or label_key is None) and len(self.keys) != 2:
            raise ValueError(
                f"keys must be the (image, label) pair when image_key/label_key are not given, got {self.keys!r}."
            )
        self.image_key = self.keys[0] if image_key is None else image_key
        self.label_key = self.keys[1] if label_key is None else label_key
        for name, key in (("image_key", self.image_key), ("label_key", self.label_key)):
            if key not in self.keys:
                raise ValueError(f"{name} {key!r} is not one of keys {self.keys!r}.")
        if self.image_key == self.label_key:
            raise ValueError(f"image_key and label_key are the same key {self.image_key!r}.")
        if nonfuzzy_key == fuzzy_key:
            raise ValueError(f"nonfuzzy_key and fuzzy_key are the same key {fuzzy_key!r}.")
        for name, key in (("nonfuzzy_key", nonfuzzy_key), ("fuzzy_key", fuzzy_key)):
            if key in (self.image_key, self.label_key):
                raise ValueError(f"{name} {key!r} would overwrite the image or the label.")
        self.nonfuzzy_key = nonfuzzy_key
        self.fuzzy_key = fuzzy_key
        self.partition = FuzzyPartition(
            patch_size=patch_size,
            tau=tau,
            bins=bins,
            edge=edge,
            entropy=entropy,
            use_entropy=use_entropy,
            use_edges=use_edges,
            mode=mode,
            combine=combine,
            ae_weight=ae_weight,
            band_width=band_width,
            band_profile=band_profile,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        missing = [k for k in (self.image_key, self.label_key) if k not in d]
        if missing:
            if self.allow_missing_keys:
                return d
            raise KeyError(
                f"Key {missing[0]!r} of transform {type(self).__name__} was missing in the data "
                "and allow_missing_keys==False."
            )
        img, label = d[self.image_key], d[self.label_key]
        img_spatial, label_spatial = tuple(img.shape[1:]), tuple(label.shape[1:])
        if img_spatial != label_spatial:
            raise ValueError(
                f"{type(self).__name__}: image {self.image_key!r} has shape {tuple(img.shape)} and label "
                f"{self.label_key!r} has shape {tuple(label.shape)}: their spatial shapes "
                f"{img_spatial} and {label_spatial} differ."
            )
        d[self.nonfuzzy_key], d[self.fuzzy_key] = self.partition(img, label)
        return d


FuzzyPartitionD = FuzzyPartitionDict = FuzzyPartitiond
