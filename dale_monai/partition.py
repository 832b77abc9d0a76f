"""AE&ER soft-threshold partition of DALE (paper Eqs. 3–6), as plain, vectorised torch functions.

An image and its label are cut into non-overlapping patches (h×w in 2D, h×w×d in 3D). Each patch
gets an average entropy ``r`` (Eq. 3, from the image) and an edge ratio ``e`` (Eq. 4, from the
label); both are min-max normalised over the patches of the image (Eq. 5), combined as
``m = max(r_std, e_std)`` and turned into a soft fuzzy mask ``M^f`` and a soft non-fuzzy mask
``M^n`` (Eq. 6), which are expanded back to pixels.

Three partition modes (``mode``), each a named, fixed recipe:

- ``"paper"``: Eqs. 3–6 as the paper prints them (Eq. 3's average entropy, ``m = max``); it rejects
  any other entropy form or combination, so a configuration naming it keeps the paper's form whatever
  the defaults become.
- ``"patch"`` (default; with the default options the same masks as ``"paper"``): the same patch
  scores with the variants measured in ``benchmarks/partition_noise.py``: the Shannon entropy
  (``entropy``) and other combinations of the normalised scores (``combine``: ``"max"``, a
  ``"weighted"`` mean, or one score alone, ``"ae"`` / ``"er"``).
- ``"band"``: no patches; a pixel-level band around the label's class boundaries
  (:func:`boundary_distance`, :func:`band_score`). It reads the label only.

Conventions shared by every function here:

- Inputs are channel-first: an image ``(C, *spatial)`` and a label ``(1, *spatial)`` of class
  indices, or ``(K, *spatial)`` with ``K > 1`` read as one channel per class (one-hot); 2D
  (``spatial = (H, W)``) or 3D (``(H, W, D)``). The ``*_batch`` forms take a leading batch axis.
  numpy arrays are accepted; results are torch tensors on the input's device.
- Patches that the image size does not fill (the last patch along an axis when the size is not a
  multiple of the patch) are computed from their real pixels only: there is no padding, so no
  padded value enters a histogram or an edge count, and ``h×w`` in Eqs. 3–4 is the number of real
  pixels of the patch.
- Grayscale: one channel as is, three channels as ITU-R BT.601 luminance
  (0.299 R + 0.587 G + 0.114 B), any other number of channels as their mean. The grayscale image
  is min-max scaled to [0, 1] over the whole image (a constant image becomes all zeros) and
  quantised into ``bins`` equal-width bins, ``q = min(floor(x·bins), bins − 1)``.

The partition depends on image and label only, never on the model: compute it once per sample
after the random augmentations (see :class:`dale_monai.transforms.FuzzyPartition`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms.utils import distance_transform_edt

__all__ = [
    "PARTITION_MODES",
    "ENTROPY_FORMS",
    "EDGE_OPERATORS",
    "COMBINE_FORMS",
    "BAND_PROFILES",
    "check_options",
    "check_patch_size",
    "to_grayscale",
    "quantise",
    "label_edges",
    "patch_average_entropy",
    "patch_edge_ratio",
    "combine_scores",
    "soft_threshold",
    "boundary_distance",
    "band_score",
    "fuzzy_masks",
    "fuzzy_masks_batch",
]

PARTITION_MODES = ("patch", "paper", "band")
ENTROPY_FORMS = ("paper", "shannon")
EDGE_OPERATORS = ("morph", "sobel")
COMBINE_FORMS = ("max", "weighted", "ae", "er")
BAND_PROFILES = ("hard", "linear")

_LUMA_BT601 = (0.299, 0.587, 0.114)

# Above this many histogram cells per pixel, a dense (patches × bins) histogram wastes memory
# (tiny patches, many bins): count only the (patch, bin) pairs that occur instead.
_DENSE_HIST_CELLS_PER_PIXEL = 4


# ---------------------------------------------------------------------------------------------
# argument checks, shared with dale_monai.transforms so that transforms fail at construction


def check_patch_size(patch_size: int | Sequence[int], spatial_dims: int | None = None) -> tuple[int, ...] | int:
    """Validate ``patch_size``; with ``spatial_dims`` return it as a tuple of that length.

    Raises:
        ValueError: a size below 1, a non-integer, or a sequence whose length is not ``spatial_dims``.
    """
    if isinstance(patch_size, (int, np.integer)):
        sizes: tuple = (patch_size,)
    elif isinstance(patch_size, Sequence) and not isinstance(patch_size, str):
        sizes = tuple(patch_size)
    else:
        raise ValueError(f"patch_size must be a positive int or a sequence of positive ints, got {patch_size!r}.")
    if not sizes or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
        raise ValueError(f"patch_size must be a positive int or a sequence of positive ints, got {patch_size!r}.")
    if spatial_dims is None:
        return tuple(int(s) for s in sizes) if len(sizes) > 1 else int(sizes[0])
    if len(sizes) == 1:
        return (int(sizes[0]),) * spatial_dims
    if len(sizes) != spatial_dims:
        raise ValueError(
            f"patch_size {tuple(sizes)} has {len(sizes)} entries but the image has {spatial_dims} spatial dims."
        )
    return tuple(int(s) for s in sizes)


def _is_number(x: object) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float, np.floating, np.integer))


def check_options(
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
    """Raise ``ValueError`` naming the setting when a partition option is out of range, unknown or conflicting.

    See :func:`fuzzy_masks` for the options.
    """
    if not _is_number(tau) or not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be a number in [0, 1], got {tau!r}.")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}.")
    if edge not in EDGE_OPERATORS:
        raise ValueError(f"edge must be one of {EDGE_OPERATORS}, got {edge!r}.")
    if entropy not in ENTROPY_FORMS:
        raise ValueError(f"entropy must be one of {ENTROPY_FORMS}, got {entropy!r}.")
    if mode not in PARTITION_MODES:
        raise ValueError(f"mode must be one of {PARTITION_MODES}, got {mode!r}.")
    if combine not in COMBINE_FORMS:
        raise ValueError(f"combine must be one of {COMBINE_FORMS}, got {combine!r}.")
    if not _is_number(ae_weight) or not 0.0 <= ae_weight <= 1.0:
        raise ValueError(f"ae_weight must be a number in [0, 1], got {ae_weight!r}.")
    if band_profile not in BAND_PROFILES:
        raise ValueError(f"band_profile must be one of {BAND_PROFILES}, got {band_profile!r}.")
    if mode == "band":
        if band_width is None:
            raise ValueError("band_width is required with mode='band' (band half-width in pixels, >= 1).")
        if not _is_number(band_width) or not math.isfinite(band_width) or band_width < 1:
            # below 1 pixel the band would hold no pixel: every distance to another class is >= 1
            raise ValueError(f"band_width must be a finite number >= 1 (pixels), got {band_width!r}.")
        return
    if band_width is not None:
        raise ValueError(f"band_width is only used with mode='band', got band_width={band_width!r} with mode={mode!r}.")
    if not (use_entropy or use_edges):
        raise ValueError("use_entropy and use_edges are both False: at least one score is needed for the partition.")
    if mode == "paper":
        for name, value, paper in (("entropy", entropy, "paper"), ("combine", combine, "max"),
                                   ("use_entropy", use_entropy, True), ("use_edges", use_edges, True)):
            if value != paper:
                raise ValueError(
                    f"mode='paper' fixes {name}={paper!r} (paper Eqs. 3-6), got {name}={value!r}; "
                    "use mode='patch' for the variants."
                )
    for name, used, alone in (("use_entropy", use_entropy, "er"), ("use_edges", use_edges, "ae")):
        if not used and combine not in ("max", alone):
            raise ValueError(
                f"{name}=False leaves one score, which conflicts with combine={combine!r}; "
                f"use combine={alone!r} (the same as {name}=False) instead."
            )


def _combination(combine: str, use_entropy: bool, use_edges: bool) -> str:
    """The combination of Eq. 5's scores that ``check_options``-valid settings ask for."""
    if not use_entropy:
        return "er"
    if not use_edges:
        return "ae"
    return combine


def _as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "u" and x.dtype.itemsize > 1:  # torch lacks most ops on uint16/32/64
            x = x.astype(np.int64)
        elif not x.flags.writeable:  # e.g. np.asarray(PIL image): torch warns on read-only memory
            x = x.copy()
        return torch.as_tensor(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}.")
    # plain Tensor: MetaTensor's __torch_function__ overhead (and meta bookkeeping) is not needed here
    x = x.as_subclass(torch.Tensor) if type(x) is not torch.Tensor else x
    if x.dtype in (torch.uint16, torch.uint32, torch.uint64):  # few ops exist for these
        x = x.to(torch.int64)
    return x


def _check_batch(x: torch.Tensor, name: str) -> None:
    if x.ndim not in (4, 5):
        raise ValueError(
            f"{name} must be batched channel-first (B, C, H, W) or (B, C, H, W, D), got shape {tuple(x.shape)}."
        )


def _unbatched(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = _as_tensor(x, name)
    if t.ndim not in (3, 4):
        raise ValueError(f"{name} must be channel-first (C, H, W) or (C, H, W, D), got shape {tuple(t.shape)}.")
    return t[None]


def _check_pair(image: torch.Tensor, label: torch.Tensor) -> None:
    if image.shape[0] != label.shape[0] or image.shape[2:] != label.shape[2:]:
        raise ValueError(
            f"image and label must share batch size and spatial shape: image {tuple(image.shape)} "
            f"vs label {tuple(label.shape)} (channel-first)."
        )


# ---------------------------------------------------------------------------------------------
# patches


class _Patches:
    """The patch grid of a batch: for every pixel the flat index of its patch, and patch sizes.

    Indexing pixels instead of padding and unfolding lets a partial patch at the border be exactly
    its real pixels: no padded value is ever counted.

    Attributes:
        grid: patch-grid shape, ``ceil(size / patch)`` per axis.
        count: patches per image.
        key: ``(B, *spatial)`` int64, ``b · count + (patch of the pixel in image b)``.
        n_valid: ``(count,)`` number of real pixels of every patch.
    """

    def __init__(self, batch: int, spatial: Sequence[int], patch: Sequence[int], device: torch.device) -> None:
        self.grid = tuple(-(-s // p) for s, p in zip(spatial, patch))
        self.count = int(np.prod(self.grid))
        index = torch.zeros((), dtype=torch.long, device=device)
        for axis, (s, p, g) in enumerate(zip(spatial, patch, self.grid)):
            shape = [1] * len(spatial)
            shape[axis] = s
            index = index * g + (torch.arange(s, device=device) // p).view(shape)
        self.n_valid = torch.bincount(index.reshape(-1), minlength=self.count)
        offsets = torch.arange(batch, device=device).view(-1, *([1] * len(spatial))) * self.count
        self.key = (offsets + index) if batch > 1 else index[None]


def _stat_dtype(device: torch.device) -> torch.dtype:
    # patch statistics are few (patches × bins): float64 keeps CPU and GPU results identical in
    # practice, so a value at the threshold τ does not flip between devices; MPS has no float64
    return torch.float32 if device.type == "mps" else torch.float64


# ---------------------------------------------------------------------------------------------
# image: grayscale, quantisation, average entropy (Eq. 3)


def to_grayscale(image: torch.Tensor) -> torch.Tensor:
    """Batched ``(B, C, *spatial)`` image → ``(B, *spatial)`` floating grayscale.

    One channel is kept, three are combined as ITU-R BT.601 luminance, others are averaged.
    """
    low_precision = (torch.float16, torch.bfloat16)
    img = image if image.is_floating_point() and image.dtype not in low_precision else image.to(torch.float32)
    if img.shape[1] == 1:
        return img[:, 0]
    if img.shape[1] == 3:
        w = torch.tensor(_LUMA_BT601, dtype=img.dtype, device=img.device)
        return torch.tensordot(w, img, dims=([0], [1]))
    return img.mean(dim=1)


def quantise(gray: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Min-max scale each image of a batch ``(B, *spatial)`` to [0, 1] and bin it into ``bins`` levels.

    Returns int64 bin indices in ``[0, bins)``; a constant image is all zeros.

    Raises:
        ValueError: the image holds NaN or infinite values.
    """
    lo, hi = torch.aminmax(gray.reshape(gray.shape[0], -1), dim=1)
    # amin/amax propagate NaN, so finite extremes mean a finite image: no extra pass over the pixels
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        raise ValueError("image holds NaN or infinite values: the partition needs finite intensities.")
    shape = (-1,) + (1,) * (gray.ndim - 1)
    span = hi - lo
    span = torch.where(span > 0, span, torch.ones_like(span)).view(shape)  # constant image: 0 / 1 = 0
    # divide, then multiply by bins: a value exactly on a bin edge stays there; values are ≥ 0, so
    # the integer cast is the floor
    return ((gray - lo.view(shape)) / span * bins).long().clamp_(max=bins - 1)


def _histogram_entropy(bins_idx: torch.Tensor, patches: _Patches, bins: int, form: str) -> torch.Tensor:
    """Per-patch entropy ``(B, patches.count)`` from per-pixel bin indices ``(B, *spatial)``.

    With ``q_b = c_b / n`` the share of the patch's ``n`` real pixels in bin ``b``, Eq. 3 as written
    sums ``p_k log p_k`` over pixels, and the ``c_b`` pixels of bin ``b`` share ``p_k = q_b``, so
    ``r = -(1/n) Σ_b c_b q_b log q_b = -Σ_b q_b² log q_b``; Shannon is ``-Σ_b q_b log q_b``.
    """
    batch = bins_idx.shape[0]
    dtype = _stat_dtype(bins_idx.device)
    key = (patches.key * bins + bins_idx).reshape(-1)
    n_valid = patches.n_valid.to(dtype)
    cells = batch * patches.count * bins
    if cells <= _DENSE_HIST_CELLS_PER_PIXEL * key.numel():
        counts = torch.bincount(key, minlength=cells).to(dtype).view(batch, patches.count, bins)
        q = counts / n_valid.view(1, -1, 1)
        terms = torch.special.xlogy(q, q)
        if form == "paper":
            terms = terms * q
        return 0.0 - terms.sum(dim=-1)  # 0.0 - x rather than -x: no -0.0 for uniform patches
    # sparse: only the (patch, bin) cells that occur, so memory stays O(pixels)
    cell, counts = torch.unique(key, return_counts=True)
    owner = cell // bins
    q = counts.to(dtype) / n_valid[owner % patches.count]
    terms = torch.special.xlogy(q, q)
    if form == "paper":
        terms = terms * q
    out = torch.zeros(batch * patches.count, dtype=dtype, device=key.device).scatter_add_(0, owner, terms)
    return 0.0 - out.view(batch, patches.count)


def _entropy_batch(image: torch.Tensor, patches: _Patches, bins: int, form: str) -> torch.Tensor:
    """Average entropy per patch, ``(B, patches.count)``, of a batched image."""
    return _histogram_entropy(quantise(to_grayscale(image), bins), patches, bins, form)


def patch_average_entropy(
    image: torch.Tensor | np.ndarray,
    patch_size: int | Sequence[int] = 16,
    bins: int = 256,
    form: str = "paper",
) -> torch.Tensor:
    """Average entropy ``r`` of every patch of one image (paper Eq. 3).

    ``form="paper"``: Eq. 3 as printed, ``r = -(1/hw) Σ_k p_k log p_k`` over the ``hw`` real pixels
    ``k`` of the patch, ``p_k`` the relative frequency within the patch of pixel ``k``'s quantised
    intensity (equal to ``-Σ_b q_b² log q_b`` over the histogram shares ``q_b``; at most ``1/e``).
    This is not the Shannon entropy of the patch histogram; ``form="shannon"`` gives that,
    ``-Σ_b q_b log q_b`` (at most ``log(bins)``).

    Both are 0 on a uniform patch, but only Shannon grows with the spread of the intensities. The
    printed form peaks for two or three equally frequent levels (``ln 3 / 3``) and falls as the
    levels multiply: ``k`` equally frequent levels give ``ln(k) / k``, so a patch of 256 distinct
    values scores ``0.022`` against ``0.347`` for a two-level patch. On textured images (e.g.
    dermoscopy, lesion border patches) it therefore ranks patches almost opposite to Shannon.

    Args:
        image: ``(C, H, W)`` or ``(C, H, W, D)``; grayscale conversion and scaling as in the module doc.
        patch_size: patch edge length, one int for all axes or one per spatial axis.
        bins: number of quantisation levels ``Q``.
        form: ``"paper"`` or ``"shannon"``.

    Returns:
        ``r`` shaped as the patch grid, ``(ceil(H/h), ceil(W/w)[, ceil(D/d)])``, float64 (float32 on MPS).
    """
    check_options(bins=bins, entropy=form)
    img = _unbatched(image, "image")
    patch = check_patch_size(patch_size, img.ndim - 2)
    patches = _Patches(1, img.shape[2:], patch, img.device)
    return _entropy_batch(img, patches, bins, form).view(patches.grid)


# ---------------------------------------------------------------------------------------------
# label: edge map, edge ratio (Eq. 4)


def _sobel_kernels(spatial_dims: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """3×3 (or 3×3×3) Sobel kernels, one per axis: derivative [-1, 0, 1] along it, [1, 2, 1] across."""
    deriv = torch.tensor([-1.0, 0.0, 1.0], dtype=dtype, device=device)
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=dtype, device=device)
    kernels = []
    for axis in range(spatial_dims):
        k = torch.ones((), dtype=dtype, device=device)
        for a in range(spatial_dims):
            k = k[..., None] * (deriv if a == axis else smooth)
        kernels.append(k)
    return torch.stack(kernels)[:, None]  # (spatial_dims, 1, 3, ..., 3)


def _class_maps(label: torch.Tensor) -> torch.Tensor:
    """``(B, K, *spatial)`` float maps whose boundaries are the label's class boundaries."""
    if label.shape[1] > 1:  # one channel per class already
        return label.to(torch.float32)
    values = torch.unique(label)
    # the one-hot maps of all classes sum to 1, whose Sobel response is 0, so any one class's
    # response is minus the sum of the others: dropping one class loses no edge
    values = values[1:]
    view = (1, -1) + (1,) * (label.ndim - 2)
    return (label == values.view(view)).to(torch.float32)


def _window_extreme(x: torch.Tensor, op) -> torch.Tensor:
    """Max (or min) over the 3×3(×3) window of every pixel of ``(B, K, *spatial)``, separably.

    The window is cut at the image border (the nearest pixel is repeated), so the outside of the
    image never makes an edge. Shifted slices instead of ``max_pool``: several times faster on CPU,
    and exact for any dtype.
    """
    for axis in range(2, x.ndim):
        n = x.shape[axis]
        if n == 1:
            continue
        y = x.clone()
        shifted = y.narrow(axis, 1, n - 1)
        op(shifted, x.narrow(axis, 0, n - 1), out=shifted)  # with the previous pixel along the axis
        shifted = y.narrow(axis, 0, n - 1)
        op(shifted, x.narrow(axis, 1, n - 1), out=shifted)  # with the next one
        x = y
    return x


def _edges_batch(label: torch.Tensor, edge: str) -> torch.Tensor:
    """Boolean edge map ``(B, *spatial)`` of a batched label ``(B, K, *spatial)``."""
    spatial_dims = label.ndim - 2
    if edge == "morph":
        # morphological gradient with the full 3×3(×3) square: dilation ≠ erosion, i.e. another
        # class (another value, on any channel) lies in the 8-/26-neighbourhood
        x = label if label.dtype != torch.bool else label.to(torch.uint8)
        return (_window_extreme(x, torch.maximum) != _window_extreme(x, torch.minimum)).any(dim=1)
    maps = _class_maps(label)
    batch, k = maps.shape[:2]
    if k == 0:
        return torch.zeros((batch, *label.shape[2:]), dtype=torch.bool, device=label.device)
    x = maps.reshape(batch * k, 1, *label.shape[2:])
    # replicate padding: a class touching the image border has no edge along the border
    x = F.pad(x, (1, 1) * spatial_dims, mode="replicate")
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    grad = conv(x, _sobel_kernels(spatial_dims, x.dtype, x.device))
    # class maps and kernels are small integers, so the responses are exact: 0 means no edge
    return (grad != 0).any(dim=1).view(batch, k, *label.shape[2:]).any(dim=1)


def label_edges(label: torch.Tensor | np.ndarray, edge: str = "morph") -> torch.Tensor:
    """Edge map ``I^e`` of a label: True where a class boundary passes (any class, any channel).

    Args:
        label: ``(1, *spatial)`` class indices, or ``(K, *spatial)`` one map per class (one-hot).
        edge: ``"morph"`` (default): morphological gradient with a full 3×3(×3) square, i.e. a pixel
            is an edge if its 8- (26-) neighbourhood holds a different class. ``"sobel"``: 3×3(×3)
            Sobel gradient magnitude > 0 on each class's one-hot map (replicate padding). Both mark
            the pixels on both sides of a boundary. Sobel misses the middle of one-pixel-thin
            structures (the left and right neighbours cancel), so its edges are a subset of
            ``"morph"``'s; morph is the default for that reason and because it needs one pass for
            any number of classes.

    Returns:
        Boolean ``(*spatial)`` tensor on the label's device.
    """
    check_options(edge=edge)
    return _edges_batch(_unbatched(label, "label"), edge)[0]


def _edge_ratio_batch(label: torch.Tensor, patches: _Patches, edge: str) -> torch.Tensor:
    """Edge ratio per patch, ``(B, patches.count)``, of a batched label."""
    edges = _edges_batch(label, edge)
    total = label.shape[0] * patches.count
    # non-edge pixels go to one extra, discarded cell: counting keys rather than weighting them
    # (weighted bincount has no deterministic CUDA kernel) and no boolean indexing (a device sync)
    key = torch.where(edges, patches.key, total).reshape(-1)
    hits = torch.bincount(key, minlength=total + 1)[:-1]
    dtype = _stat_dtype(label.device)
    return hits.view(-1, patches.count).to(dtype) / patches.n_valid.to(dtype)


def patch_edge_ratio(
    label: torch.Tensor | np.ndarray, patch_size: int | Sequence[int] = 16, edge: str = "morph"
) -> torch.Tensor:
    """Edge-pixel ratio ``e`` of every patch of one label (paper Eq. 4).

    ``e`` = (number of edge pixels of :func:`label_edges` in the patch) / (number of real pixels of
    the patch).

    Args:
        label: ``(1, *spatial)`` class indices or ``(K, *spatial)`` one-hot.
        patch_size: patch edge length, one int for all axes or one per spatial axis.
        edge: ``"morph"`` or ``"sobel"``, see :func:`label_edges`.

    Returns:
        ``e`` in [0, 1] shaped as the patch grid, float64 (float32 on MPS).
    """
    check_options(edge=edge)
    lab = _unbatched(label, "label")
    patch = check_patch_size(patch_size, lab.ndim - 2)
    patches = _Patches(1, lab.shape[2:], patch, lab.device)
    return _edge_ratio_batch(lab, patches, edge).view(patches.grid)


# ---------------------------------------------------------------------------------------------
# normalisation (Eq. 5) and soft threshold (Eq. 6)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Eq. 5 over the last axis; where max = min the result is 0 (no patch stands out)."""
    lo = x.amin(dim=-1, keepdim=True)
    span = x.amax(dim=-1, keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)


def combine_scores(
    r_std: torch.Tensor, e_std: torch.Tensor, combine: str = "max", ae_weight: float = 0.5
) -> torch.Tensor:
    """Combine the normalised patch scores of Eq. 5 into ``m`` in [0, 1].

    - ``"max"``: ``m = max(r_std, e_std)``, paper Eqs. 5–6: a patch is fuzzy when its image is
      textured *or* its label has many edge pixels.
    - ``"weighted"``: ``m = ae_weight · r_std + (1 − ae_weight) · e_std``. Under ``max`` a textured
      patch is fuzzy whatever its label, and on dermoscopy images texture is almost everywhere
      (``benchmarks/results/partition_noise_quick.md``); a weighted mean needs both scores high for
      ``m`` to reach τ. ``ae_weight`` 1 and 0 give ``r_std`` and ``e_std`` exactly.
    - ``"ae"``: ``m = r_std`` (AE only, the paper's ablation of ER).
    - ``"er"``: ``m = e_std`` (ER only, the paper's ablation of AE).

    Args:
        r_std, e_std: normalised average entropy and edge ratio, same shape, in [0, 1].
        combine: one of :data:`COMBINE_FORMS`.
        ae_weight: weight of ``r_std`` in ``"weighted"``, in [0, 1].

    Returns:
        ``m``, same shape and dtype as the inputs.

    Raises:
        ValueError: unknown ``combine`` or ``ae_weight`` outside [0, 1].
    """
    check_options(combine=combine, ae_weight=ae_weight)
    if combine == "max":
        return torch.maximum(r_std, e_std)
    if combine == "ae":
        return r_std
    if combine == "er":
        return e_std
    return ae_weight * r_std + (1.0 - ae_weight) * e_std


def soft_threshold(m: torch.Tensor, tau: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft masks from the combined score ``m`` in [0, 1] (paper Eq. 6, with one deviation).

    ``M^f = 1`` where ``m > τ``, else ``m``. ``M^n = 1`` where ``m < τ``, else ``1 − m``.

    The paper prints ``τ − m`` for the second case of ``M^n``; there ``m ≥ τ``, so ``τ − m ≤ 0``:
    a negative (or zero) weight would flip the sign of the image and the target, so ``1 − m``
    (in ``[0, 1 − τ]``, falling as the patch gets fuzzier) is used instead.

    Returns:
        ``(M^n, M^f)``, same shape and dtype as ``m``.
    """
    one = torch.ones_like(m)
    mask_f = torch.where(m > tau, one, m)
    mask_n = torch.where(m < tau, one, 1.0 - m)
    return mask_n, mask_f


# ---------------------------------------------------------------------------------------------
# label-boundary band (mode="band")


def _boundary_distance_batch(label: torch.Tensor) -> torch.Tensor:
    """Distance to another class, ``(B, *spatial)``, of a batched label ``(B, K, *spatial)``; inf without one."""
    batch, spatial = label.shape[0], label.shape[2:]
    dtype = _stat_dtype(label.device)
    view = (1, -1) + (1,) * len(spatial)
    if label.shape[1] == 1:
        # class indices: the class maps partition the image, and the distance transform of a pixel's own
        # class map is its distance to the nearest pixel outside that class
        one_sided = True
        maps = label[:, 0, None] == torch.unique(label).view(view)
    else:
        # one map per class, which may overlap (nested regions): a pixel's distance to a boundary of map c
        # is its distance to the nearest pixel on the other side of c, inside or out
        one_sided = False
        maps = label != 0
    flat = maps.reshape(batch, maps.shape[1], -1)
    crossed = flat.any(dim=-1) & ~flat.all(dim=-1)  # maps holding a boundary: both sides present
    if not bool(crossed.any()):
        return torch.full((batch, *spatial), math.inf, dtype=dtype, device=label.device)
    sel = maps[crossed]  # (N, *spatial)
    # MONAI's helper: scipy on CPU, cuCIM for CUDA tensors when installed; float64 as scipy computes
    chans = sel if one_sided else torch.cat([sel, ~sel])
    dist = torch.as_tensor(distance_transform_edt(chans, float64_distances=True), device=label.device).to(dtype)
    every = torch.zeros(maps.shape, dtype=dtype, device=label.device) if one_sided else torch.full(
        maps.shape, math.inf, dtype=dtype, device=label.device
    )
    if one_sided:  # each pixel lies in exactly one map, and the transform is 0 outside it
        every[crossed] = dist
        no_boundary = ~crossed.any(dim=1).view(-1, *([1] * len(spatial)))
        return every.sum(dim=1).masked_fill_(no_boundary, math.inf)
    n = sel.shape[0]
    every[crossed] = dist[:n] + dist[n:]
    return every.amin(dim=1)


def boundary_distance(label: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Euclidean distance in pixels from each pixel to the nearest pixel of another class.

    For class indices ``(1, *spatial)``: the distance from a pixel to the nearest pixel with another
    value (pixel centres, unit spacing; 1 for a pixel with a face neighbour of another class, √2 for
    a diagonal one). For ``(K, *spatial)`` maps (one-hot, or overlapping regions, non-zero = inside):
    the smallest over the maps of the distance to the nearest pixel on the other side of that map.
    The image border is no boundary. Computed with MONAI's ``distance_transform_edt`` (scipy on CPU).

    Returns:
        ``(*spatial)`` float64 (float32 on MPS) on the label's device, ``inf`` everywhere when the
        label has no boundary (a single class).
    """
    return _boundary_distance_batch(_unbatched(label, "label"))[0]


def band_score(distance: torch.Tensor, band_width: float, profile: str = "hard") -> torch.Tensor:
    """Fuzzy score of a label-boundary band from :func:`boundary_distance` ``d`` (pixels).

    - ``"hard"``: 1 where ``d ≤ band_width``, else 0: the pixels within ``band_width`` of a pixel of
      another class, on both sides of the boundary. ``band_width`` 1 gives the pixels with a face
      neighbour of another class; 1.5 the 8-neighbourhood edges of :func:`label_edges` (``"morph"``).
    - ``"linear"``: 1 where ``d ≤ band_width``, then falling linearly to 0 at ``2 · band_width``
      (``clip(2 − d / band_width, 0, 1)``): the hard band plus a fading margin of the same width.

    Rationale: injected boundary noise (dilation/erosion by ``k`` pixels, annotators' disagreement)
    lies within a few pixels of the observed boundary. The band reads the noisy label only, so it finds
    such noise by construction and is blind to missed or spurious whole structures away from it.

    Raises:
        ValueError: ``band_width`` below 1 or not finite, or unknown ``profile``.
    """
    check_options(mode="band", band_width=band_width, band_profile=profile)
    if profile == "hard":
        return (distance <= band_width).to(distance.dtype)
    return (2.0 - distance / band_width).clamp_(0.0, 1.0)


def _to_pixels(values: torch.Tensor, grid: Sequence[int], patch: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Per-patch ``(B, n_patches)`` → per-pixel ``(B, 1, *spatial)`` float32.

    Each value is repeated over a full patch and the overhang of partial patches cropped: a
    broadcast and one copy, cheaper than gathering by patch index.
    """
    batch = values.shape[0]
    tiled = values.to(torch.float32).view(batch, 1, *[v for g in grid for v in (g, 1)])
    tiled = tiled.expand(batch, 1, *[v for g, p in zip(grid, patch) for v in (g, p)])
    tiled = tiled.reshape(batch, 1, *[g * p for g, p in zip(grid, patch)])
    return tiled[(..., *[slice(0, s) for s in spatial])].contiguous()


def fuzzy_masks_batch(
    image: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched :func:`fuzzy_masks`: image ``(B, C, *spatial)``, label ``(B, K, *spatial)``.

    Every image is scaled and normalised on its own, exactly as :func:`fuzzy_masks` does one at a
    time. Returns ``(M^n, M^f)``, each ``(B, 1, *spatial)`` float32.
    """
    check_options(tau, bins, edge, entropy, use_entropy, use_edges, mode, combine, ae_weight, band_width, band_profile)
    img, lab = _as_tensor(image, "image"), _as_tensor(label, "label")
    _check_batch(img, "image")
    _check_batch(lab, "label")
    _check_pair(img, lab)
    if img.device != lab.device:
        raise ValueError(f"image and label are on different devices: {img.device} vs {lab.device}.")
    if mode == "band":
        score = band_score(_boundary_distance_batch(lab), band_width, band_profile)[:, None]
        # a pixel's weight is split between the two steps: no threshold, M^n = 1 − M^f
        return (1.0 - score).to(torch.float32), score.to(torch.float32)
    spatial = tuple(img.shape[2:])
    patch = check_patch_size(patch_size, len(spatial))
    patches = _Patches(img.shape[0], spatial, patch, img.device)
    grid = patches.grid
    how = _combination(combine, use_entropy, use_edges)
    if how == "er":
        m = _minmax(_edge_ratio_batch(lab, patches, edge))
    elif how == "ae":
        m = _minmax(_entropy_batch(img, patches, bins, entropy))
    else:
        r_std = _minmax(_entropy_batch(img, patches, bins, entropy))
        m = combine_scores(r_std, _minmax(_edge_ratio_batch(lab, patches, edge)), how, ae_weight)
    mask_n, mask_f = soft_threshold(m, tau)
    return _to_pixels(mask_n, grid, patch, spatial), _to_pixels(mask_f, grid, patch, spatial)


def fuzzy_masks(
    image: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft non-fuzzy and fuzzy masks ``(M^n, M^f)`` of one image and its label (paper Eqs. 3–6).

    Patch modes (``"paper"``, ``"patch"``), per patch: ``r`` (Eq. 3, :func:`patch_average_entropy`)
    and ``e`` (Eq. 4, :func:`patch_edge_ratio`), min-max normalised over the patches of the image
    (Eq. 5; 0 where all patches are equal), combined into ``m`` (:func:`combine_scores`; the paper:
    ``max``), masks by :func:`soft_threshold` (Eq. 6, with ``1 − m`` in place of the paper's
    ``τ − m``), expanded to the patch's pixels.

    Band mode: ``M^f`` = :func:`band_score` of :func:`boundary_distance` per pixel, ``M^n = 1 − M^f``
    (no τ); the image only has to match the label's shape.

    Args:
        image: ``(C, H, W)`` or ``(C, H, W, D)``, any real dtype; see the module doc for grayscale
            conversion and scaling.
        label: ``(1, *spatial)`` class indices or ``(K, *spatial)`` one-hot, same spatial shape.
        patch_size: patch edge length ``h`` (one int for every axis) or ``(h, w[, d])``; paper: 16.
        tau: soft threshold τ in [0, 1]; paper: 0.9. Patch modes only.
        bins: quantisation levels ``Q`` of the entropy histogram.
        edge: label edge operator, ``"morph"`` (default) or ``"sobel"``, see :func:`label_edges`.
        entropy: ``"paper"`` (Eq. 3 as printed, default) or ``"shannon"``.
        use_entropy: include AE; ``False`` gives the "ER only" ablation (``m = e_std``, as
            ``combine="er"``).
        use_edges: include ER; ``False`` gives the "AE only" ablation (``m = r_std``, as
            ``combine="ae"``).
        mode: ``"patch"`` (default), ``"paper"`` (the paper's form; rejects other ``entropy`` /
            ``combine`` / ``use_*`` values) or ``"band"``; see the module doc.
        combine: ``"max"`` (paper, default), ``"weighted"``, ``"ae"`` or ``"er"``, see
            :func:`combine_scores`. Patch modes only.
        ae_weight: weight of the entropy score with ``combine="weighted"``, in [0, 1].
        band_width: band half-width in pixels (>= 1), required with ``mode="band"`` and only there.
        band_profile: ``"hard"`` (default) or ``"linear"``, see :func:`band_score`.

    Returns:
        ``(M^n, M^f)``, each ``(1, *spatial)`` float32 in [0, 1] on the input's device.

    Raises:
        ValueError: bad or conflicting option, bad shape, image/label spatial mismatch, or non-finite
            image (patch modes).
    """
    img, lab = _unbatched(image, "image"), _unbatched(label, "label")
    if img.shape[2:] != lab.shape[2:]:
        raise ValueError(
            f"image and label must share the spatial shape: image {tuple(img.shape[1:])} "
            f"vs label {tuple(lab.shape[1:])} (channel-first)."
        )
    mask_n, mask_f = fuzzy_masks_batch(
        img, lab, patch_size, tau, bins, edge, entropy, use_entropy, use_edges, mode, combine, ae_weight,
        band_width, band_profile,
    )
    return mask_n[0], mask_f[0]
