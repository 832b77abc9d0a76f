"""Label-noise injection for experiments on clean datasets, and the measured noise level.

The protocols are the ones the noisy-label segmentation literature uses:

- ``dilate`` / ``erode`` / ``dilate_erode``: the boundary moved outwards or inwards by ``k`` pixels
  (Euclidean ball; ``dilate_erode`` draws dilation or erosion per image, ``k`` may be a range drawn
  per image);
- ``elastic``: a smooth random displacement field applied to the mask (nearest-neighbour warp);
- ``components``: small connected components dropped and small false components added;
- ``class_boundary``: class-dependent, pixel-dependent multi-class noise (the setting of CLCS, Guo et al., TMI
  2025): pixels near another class are relabelled as that neighbouring class, with a probability that is highest
  at the boundary, decays with the distance from it, and is larger for rarer classes (or set per class and per
  class pair); the flipped pixels form smooth patches, not salt and pepper;

and a ``fraction`` of the training cases is corrupted (the others keep their clean label).

Every function works on 2D and 3D label arrays, binary or multi-class (0 is background, every other
value a class; values are preserved, so 0/255 masks stay 0/255), and on empty masks. Multi-class
masks are perturbed per class without creating overlaps or new label values: dilation only claims
background pixels (each one goes to the nearest class), erosion only releases pixels to background.

Command line (through ``python -m data_prep noise``)::

    python -m data_prep noise --datalist DIR/datalist.json --out DIR2 --protocol dilate_erode --k 2-4 --seed 0

writes the noisy training labels under ``DIR2/labels_noisy/``, ``DIR2/noise_report.json`` and last
``DIR2/datalist.json``. Paths in the new datalist are **relative to DIR2** (MONAI's
``load_decathlon_datalist`` default base directory): noisy labels lie under it, images, clean labels
and the validation/test entries point back at the original files with ``../`` paths, so the two
folders stay valid when moved together.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from .datalist import DATALIST_NAME
from .io import (
    IMAGE_EXTENSIONS,
    DataPrepError,
    atomic_path,
    nifti_spatial_header,
    read_mask_2d,
    save_nifti,
    save_png,
    write_json,
)

__all__ = [
    "PROTOCOLS",
    "NOISE_REPORT_NAME",
    "dilate_erode",
    "elastic_perturb",
    "drop_add_components",
    "class_boundary_flip",
    "parse_rates",
    "apply_protocol",
    "label_dice",
    "DiceAccumulator",
    "read_label",
    "write_label",
    "make_noisy_dataset",
    "add_parser",
]

NOISE_REPORT_NAME = "noise_report.json"
NOISY_DIR = "labels_noisy"
# top-level datalist keys that record how a dataset was generated: not carried over to the noisy copy
_PROVENANCE_KEYS = ("noise", "synthetic")

# --------------------------------------------------------------------------------------------- helpers


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _as_labels(mask: Any, name: str = "mask") -> np.ndarray:
    """Validate a label array (2D/3D, non-negative integer values) and return it as an integer array."""
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3):
        raise DataPrepError(f"{name}: expected a 2D or 3D label array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or \
                not np.array_equal(arr, np.round(arr)):
            raise DataPrepError(f"{name}: label values must be integers, got dtype {arr.dtype} with non-integer values")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise DataPrepError(f"{name}: label values must be non-negative, found {int(arr.min())}")
    return arr


def _restore(out: np.ndarray, like: Any) -> np.ndarray:
    return out.astype(np.asarray(like).dtype, copy=False)


def _draw(value: Any, rng: np.random.Generator, kind: type, name: str):
    """A scalar, or a ``(lo, hi)`` range drawn uniformly (inclusive for integers)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] > value[1]:
            raise DataPrepError(f"{name}: a range must be (low, high) with low <= high, got {value}")
        lo, hi = value
        v = rng.integers(int(lo), int(hi) + 1) if kind is int else rng.uniform(float(lo), float(hi))
    else:
        v = value
    v = kind(v)
    if v < 0:
        raise DataPrepError(f"{name} must be non-negative, got {v}")
    return v


def _classes(arr: np.ndarray) -> np.ndarray:
    vals = np.unique(arr)
    return vals[vals != 0]


# --------------------------------------------------------------------------------------------- protocols


def dilate_erode(mask: Any, k: int | Sequence[int], rng: np.random.Generator | int | None = None,
                 mode: str = "random", spacing: Sequence[float] | None = None) -> np.ndarray:
    """Move every class boundary outwards (dilation) or inwards (erosion) by ``k`` pixels.

    The structuring element is the Euclidean ball of radius ``k`` (computed with distance transforms,
    so large ``k`` costs the same as small). Dilation gives each background pixel within ``k`` of a
    class the label of the nearest labelled pixel, so classes never overlap; erosion sets to
    background the pixels of each class within ``k`` of any pixel of another value (the image border
    does not count as a boundary).

    Args:
        mask: 2D or 3D label array (0 background).
        k: radius in pixels, or a ``(low, high)`` range drawn per call (inclusive).
        rng: random generator or seed (used for the range and for ``mode="random"``).
        mode: ``"dilate"``, ``"erode"`` or ``"random"`` (one of the two, equally likely).
        spacing: voxel spacing for anisotropic volumes; ``k`` is then in the same unit.

    Returns:
        The perturbed mask, same shape and dtype.
    """
    rng = _rng(rng)
    m = _as_labels(mask)
    k_val = _draw(k, rng, float if isinstance(k, float) else int, "k")
    if mode == "random":
        mode = "dilate" if rng.random() < 0.5 else "erode"
    if mode not in ("dilate", "erode"):
        raise DataPrepError(f"mode must be 'dilate', 'erode' or 'random', got {mode!r}")
    if k_val == 0 or not m.any():
        return _restore(m.copy(), mask)
    out = m.copy()
    if mode == "dilate":
        background = m == 0
        if background.any():
            dist, idx = ndi.distance_transform_edt(background, sampling=spacing, return_indices=True)
            grow = background & (dist <= k_val)
            out[grow] = m[tuple(i[grow] for i in idx)]
    else:
        for c in _classes(m):
            inside = m == c
            if inside.all():
                continue  # nothing else in the image: no boundary to move
            dist = ndi.distance_transform_edt(inside, sampling=spacing)
            out[inside & (dist <= k_val)] = 0
    return _restore(out, mask)


def elastic_perturb(mask: Any, alpha: float | Sequence[float], sigma: float,
                    rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Warp the mask with a smooth random displacement field (nearest-neighbour, so no new labels).

    Each displacement component is white noise smoothed by a Gaussian of width ``sigma`` and scaled to
    a standard deviation of ``alpha`` pixels, so ``alpha`` is the typical boundary displacement
    whatever ``sigma`` (unlike the unnormalised field of Simard et al., whose amplitude shrinks with
    ``sigma``).

    Args:
        mask: 2D or 3D label array.
        alpha: displacement amplitude in pixels (standard deviation per axis), or a range drawn per call.
        sigma: smoothness of the field in pixels (larger: longer, gentler boundary undulations).
        rng: random generator or seed.
    """
    rng = _rng(rng)
    m = _as_labels(mask)
    amp = _draw(alpha, rng, float, "alpha")
    if sigma <= 0:
        raise DataPrepError(f"sigma must be positive, got {sigma}")
    if amp == 0 or not m.any():
        return _restore(m.copy(), mask)
    coords = np.indices(m.shape, dtype=np.float32)
    for axis in range(m.ndim):
        field = ndi.gaussian_filter(rng.standard_normal(m.shape).astype(np.float32), sigma, mode="reflect")
        std = float(field.std())
        if std > 0:
            coords[axis] += field * (amp / std)
    out = ndi.map_coordinates(m, coords, order=0, mode="nearest")
    return _restore(out, mask)


def drop_add_components(mask: Any, rng: np.random.Generator | int | None = None, drop_prob: float = 0.5,
                        max_drop_size: int | None = None, n_add: int | Sequence[int] = (0, 2),
                        add_radius: float | Sequence[float] = (2.0, 5.0),
                        add_labels: Sequence[int] | None = None) -> np.ndarray:
    """Drop connected components and add small false ones (missed and spurious lesions).

    Args:
        mask: 2D or 3D label array.
        rng: random generator or seed.
        drop_prob: probability that each candidate component is removed.
        max_drop_size: components of at most this many pixels are candidates; ``None``: every
            component except the largest of its class (so a class is never wiped out by default).
        n_add: number of false components to add, or an inclusive ``(low, high)`` range.
        add_radius: radius in pixels of each added ellipsoidal blob (semi-axes 60-100 % of it), or a range.
        add_labels: labels the added blobs may take; default the classes present, else 1.

    Added blobs are placed on background pixels at least their radius away from existing labels, so
    they are separate components and overwrite nothing.
    """
    rng = _rng(rng)
    m = _as_labels(mask)
    if not 0.0 <= drop_prob <= 1.0:
        raise DataPrepError(f"drop_prob must be in [0, 1], got {drop_prob}")
    out = m.copy()
    structure = ndi.generate_binary_structure(m.ndim, m.ndim)
    for c in _classes(m):
        comp, n = ndi.label(m == c, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        if max_drop_size is None:
            candidate = np.ones(n, dtype=bool)
            candidate[int(np.argmax(sizes))] = False
        else:
            candidate = sizes <= max_drop_size
        dropped = candidate & (rng.random(n) < drop_prob)
        if dropped.any():
            out[np.isin(comp, np.flatnonzero(dropped) + 1)] = 0

    count = _draw(n_add, rng, int, "n_add")
    labels = list(add_labels) if add_labels is not None else _classes(m).tolist() or [1]
    for _ in range(count):
        radius = max(_draw(add_radius, rng, float, "add_radius"), 0.5)
        semi = radius * rng.uniform(0.6, 1.0, size=m.ndim)
        free = out == 0
        if not free.any():
            break
        # keep false blobs apart from real structures where there is room
        clearance = ndi.distance_transform_edt(free) if not free.all() else np.full(m.shape, np.inf)
        ok = np.flatnonzero(clearance.ravel() > radius + 1)
        if ok.size == 0:
            ok = np.flatnonzero(free.ravel())
        centre = np.array(np.unravel_index(ok[rng.integers(ok.size)], m.shape))
        lo = np.maximum(centre - np.ceil(semi).astype(int), 0)
        hi = np.minimum(centre + np.ceil(semi).astype(int) + 1, m.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.ogrid[box]
        inside = sum(((g - c0) / s) ** 2 for g, c0, s in zip(grid, centre, semi)) <= 1.0
        region = out[box]
        region[inside & (region == 0)] = labels[rng.integers(len(labels))]
    return _restore(out, mask)


def parse_rates(rates: str | Mapping | None) -> dict[str, float]:
    """Flip rates per source class (``"a"``) or per class pair (``"a>b"``), from ``"2>1:0.6,1:0.3"`` or a mapping.

    Raises:
        DataPrepError: a malformed entry, a class that is not a non-negative integer, or a rate outside [0, 1],
            naming ``--rates``.
    """
    if rates is None:
        return {}
    items = rates.items() if isinstance(rates, Mapping) else (
        part.rsplit(":", 1) if ":" in part else (part, None) for part in str(rates).split(",") if part.strip())
    out: dict[str, float] = {}
    for key, value in items:
        key = str(key).strip().replace(" ", "")
        classes = key.split(">")
        try:
            if len(classes) not in (1, 2) or any(int(c) < 0 or str(int(c)) != c for c in classes):
                raise ValueError
            rate = float(value)
        except (TypeError, ValueError):
            raise DataPrepError(f"--rates: expected entries CLASS:RATE or CLASS>NEIGHBOUR:RATE with class indices, "
                                f"e.g. '2>1:0.6,1:0.3'; got {key!r}: {value!r}") from None
        if not 0.0 <= rate <= 1.0:
            raise DataPrepError(f"--rates: the rate of {key} must lie in [0, 1], got {rate}")
        out[key] = rate
    return out


def _uniform_field(shape: tuple[int, ...], smooth: float, rng: np.random.Generator) -> np.ndarray:
    """Uniform(0, 1) values per pixel, spatially correlated over about ``smooth`` pixels (0: independent)."""
    if smooth == 0:
        return rng.random(shape)
    from scipy.special import ndtr

    field = ndi.gaussian_filter(rng.standard_normal(shape), smooth, mode="reflect")
    std = float(field.std())
    # a standard normal field through its CDF: each pixel is uniform, neighbours are correlated
    return ndtr(field / std) if std > 0 else rng.random(shape)


def class_boundary_flip(mask: Any, rng: np.random.Generator | int | None = None, rate: float = 0.4,
                        scale: float = 3.0, smooth: float = 2.0, imbalance: float = 0.5,
                        rates: str | Mapping | None = None,
                        spacing: Sequence[float] | None = None) -> np.ndarray:
    """Class-dependent, pixel-dependent noise: pixels near a neighbouring class are relabelled as that class.

    The label noise CLCS addresses (Guo et al., IEEE TMI 2025) is pixel-dependent (annotators err near boundaries)
    and hits minority classes hardest. For every pixel x of a source class a (the foreground classes, and
    background only when ``rates`` names it), with b the class of the nearest pixel that is not a and d(x) ≥ 1 its
    distance (Euclidean, in ``spacing`` units; 1 next to the boundary)::

        P(x is relabelled b) = r_ab · exp(−(d(x) − 1) / scale)

    The flips are decided by one spatially smooth random field per image (uniform marginals, correlated over about
    ``smooth`` pixels), so each pixel flips with exactly that probability and flipped pixels form patches along
    boundaries. Rates r_ab: ``rates["a>b"]``, else ``rates["a"]``, else the class-dependent default
    min(1, ``rate`` · (n_max / n_a)^``imbalance``), n_a the pixels of class a in this image and n_max those of its
    largest foreground class: a class 4 times rarer than the largest flips 2 times as often at ``imbalance`` 0.5.
    Flips are decided on the clean mask (no chains); no new label values appear. All defaults are this project's
    choice (the CLCS paper's noise settings were not available).

    Args:
        mask: 2D or 3D label array (0 background).
        rng: random generator or seed.
        rate: r ∈ [0, 1], the boundary flip probability of the largest foreground class.
        scale: decay length of the probability away from the boundary (> 0, pixels or ``spacing`` units).
        smooth: correlation length of the random field in pixels (>= 0; 0: independent pixels).
        imbalance: γ >= 0, how much more often rarer classes flip (0: class-independent).
        rates: per-class / per-pair rates, a mapping or ``"2>1:0.6,1:0.3"`` (:func:`parse_rates`).
        spacing: voxel spacing for anisotropic volumes.

    Returns:
        The noisy mask, same shape and dtype.

    Raises:
        DataPrepError: an option out of range, naming it.
    """
    rng = _rng(rng)
    m = _as_labels(mask)
    for name, value, low, high in (("rate", rate, 0.0, 1.0), ("scale", scale, 0.0, np.inf),
                                   ("smooth", smooth, 0.0, np.inf), ("imbalance", imbalance, 0.0, np.inf)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or \
                not low <= value <= high or (name == "scale" and value == 0):
            bound = f"in [{low:g}, {high:g}]" if np.isfinite(high) else ("> 0" if name == "scale" else ">= 0")
            raise DataPrepError(f"--{name}: must be a finite number {bound}, got {value!r}")
    table = parse_rates(rates)
    values, sizes = np.unique(m, return_counts=True)
    size = dict(zip(values.tolist(), sizes.tolist()))
    foreground = [c for c in size if c != 0]
    n_max = max((size[c] for c in foreground), default=0)
    sources = foreground + ([0] if any(k.split(">")[0] == "0" for k in table) else [])
    u = _uniform_field(m.shape, float(smooth), rng)  # drawn even when nothing flips: one stream per case
    out = m.copy()
    for a in sources:
        inside = m == a
        if inside.all():
            continue  # nothing else in the image: no neighbour to be mistaken for
        dist, idx = ndi.distance_transform_edt(inside, sampling=spacing, return_indices=True)
        neighbour = m[tuple(idx)]
        default = min(1.0, rate * (n_max / size[a]) ** imbalance) if a != 0 else 0.0
        r_a = table.get(str(a), default)
        r = np.full(m.shape, r_a, dtype=np.float64)
        for key, value in table.items():
            if ">" in key and key.split(">")[0] == str(a):
                r[neighbour == int(key.split(">")[1])] = value
        # outside the class dist is 0: clip so that exp never overflows there
        flip = inside & (u < r * np.exp(-(np.maximum(dist, 1.0) - 1.0) / scale))
        out[flip] = neighbour[flip]
    return _restore(out, mask)


def _protocol_dilate(mask, rng, k=2, spacing=None):
    return dilate_erode(mask, k, rng, mode="dilate", spacing=spacing)


def _protocol_erode(mask, rng, k=2, spacing=None):
    return dilate_erode(mask, k, rng, mode="erode", spacing=spacing)


def _protocol_dilate_erode(mask, rng, k=2, spacing=None):
    return dilate_erode(mask, k, rng, mode="random", spacing=spacing)


def _protocol_elastic(mask, rng, alpha=2.0, sigma=6.0):
    return elastic_perturb(mask, alpha, sigma, rng)


def _protocol_components(mask, rng, drop_prob=0.5, max_drop_size=None, n_add=(0, 2), add_radius=(2.0, 5.0),
                         add_labels=None):
    return drop_add_components(mask, rng, drop_prob=drop_prob, max_drop_size=max_drop_size, n_add=n_add,
                               add_radius=add_radius, add_labels=add_labels)


def _protocol_class_boundary(mask, rng, rate=0.4, scale=3.0, smooth=2.0, imbalance=0.5, rates=None, spacing=None):
    return class_boundary_flip(mask, rng, rate=rate, scale=scale, smooth=smooth, imbalance=imbalance, rates=rates,
                               spacing=spacing)


#: protocol name → function ``(mask, rng, **options)``; the options and their defaults are the keyword arguments.
PROTOCOLS: dict[str, Callable[..., np.ndarray]] = {
    "dilate": _protocol_dilate,
    "erode": _protocol_erode,
    "dilate_erode": _protocol_dilate_erode,
    "elastic": _protocol_elastic,
    "components": _protocol_components,
    "class_boundary": _protocol_class_boundary,
}


def _protocol_options(protocol: str) -> tuple[str, ...]:
    params = list(inspect.signature(PROTOCOLS[protocol]).parameters)
    return tuple(params[2:])


def apply_protocol(mask: Any, protocol: str, rng: np.random.Generator | int | None = None, **kwargs) -> np.ndarray:
    """Apply one named noise protocol to a mask.

    Args:
        mask: 2D or 3D label array.
        protocol: one of :data:`PROTOCOLS` (``dilate``, ``erode``, ``dilate_erode``, ``elastic``, ``components``,
            ``class_boundary``).
        rng: random generator or seed.
        kwargs: the protocol's options: ``k`` (and ``spacing``) for the dilation/erosion protocols,
            ``alpha``/``sigma`` for ``elastic``, ``drop_prob``/``max_drop_size``/``n_add``/``add_radius``/
            ``add_labels`` for ``components``, ``rate``/``scale``/``smooth``/``imbalance``/``rates`` (and
            ``spacing``) for ``class_boundary``.

    Raises:
        DataPrepError: unknown protocol, or an option the protocol does not take.
    """
    if protocol not in PROTOCOLS:
        raise DataPrepError(f"unknown noise protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    allowed = _protocol_options(protocol)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise DataPrepError(f"noise protocol {protocol!r} does not take option(s) {unknown}; it takes {list(allowed)}")
    return PROTOCOLS[protocol](mask, _rng(rng), **kwargs)


# --------------------------------------------------------------------------------------------- noise level


def _dice_counts(noisy: np.ndarray, clean: np.ndarray) -> dict[int, tuple[int, int]]:
    """Per class present in either mask: (2·|intersection|, |noisy| + |clean|)."""
    if noisy.shape != clean.shape:
        raise DataPrepError(f"noisy and clean labels differ in shape: {noisy.shape} vs {clean.shape}")
    out = {}
    for c in np.union1d(_classes(noisy), _classes(clean)).tolist():
        a, b = noisy == c, clean == c
        out[int(c)] = (2 * int(np.count_nonzero(a & b)), int(np.count_nonzero(a)) + int(np.count_nonzero(b)))
    return out


def label_dice(noisy: Any, clean: Any) -> float:
    """Dice of a noisy label against the clean one.

    The mean over the classes present in either mask; 1.0 when both are empty.
    """
    counts = _dice_counts(_as_labels(noisy, "noisy label"), _as_labels(clean, "clean label"))
    if not counts:
        return 1.0
    return float(np.mean([i / s for i, s in counts.values()]))


class DiceAccumulator:
    """Noise level over a dataset: per-image Dice, their mean, and the pooled Dice.

    The pooled Dice sums intersections and sizes over all images per class before dividing (then
    averages over classes), so large lesions weigh more; the mean weighs every image equally. Per class
    (``per_class`` of :meth:`summary`), pooled over the images: the clean pixels of the class, its Dice (not for
    background), the share of its clean pixels that the noisy label gives another value, and to which values:
    the measured noise level of each class, which class-dependent noise (``class_boundary``) makes unequal.
    """

    def __init__(self) -> None:
        self.per_image: dict[str, float] = {}
        self.wrong: dict[str, float] = {}
        self._inter: dict[int, int] = {}
        self._sum: dict[int, int] = {}
        self._wrong_pixels = 0
        self._pixels = 0
        self._confusion: dict[tuple[int, int], int] = {}  # (clean value, noisy value) -> pixels

    def add(self, name: str, noisy: Any, clean: Any) -> float:
        """Record one image; returns its Dice."""
        noisy_a, clean_a = _as_labels(noisy, f"{name} (noisy)"), _as_labels(clean, f"{name} (clean)")
        counts = _dice_counts(noisy_a, clean_a)
        for c, (i, s) in counts.items():
            self._inter[c] = self._inter.get(c, 0) + i
            self._sum[c] = self._sum.get(c, 0) + s
        dice = float(np.mean([i / s for i, s in counts.values()])) if counts else 1.0
        pairs, n = np.unique(np.stack((clean_a.reshape(-1), noisy_a.reshape(-1))).astype(np.int64), axis=1,
                             return_counts=True)
        for (c, v), k in zip(pairs.T.tolist(), n.tolist()):
            self._confusion[c, v] = self._confusion.get((c, v), 0) + k
        wrong = int(np.count_nonzero(noisy_a != clean_a))
        self._wrong_pixels += wrong
        self._pixels += noisy_a.size
        self.per_image[name] = dice
        self.wrong[name] = wrong / noisy_a.size if noisy_a.size else 0.0
        return dice

    def per_class(self) -> dict[str, dict]:
        """Clean label value → ``clean_pixels``, ``dice`` (pooled; foreground only), ``relabelled_fraction`` and
        ``relabelled_to`` (noisy value → share of the class's clean pixels)."""
        out: dict[str, dict] = {}
        for c in sorted({c for c, _ in self._confusion}):
            row = {v: k for (cc, v), k in self._confusion.items() if cc == c}
            n = sum(row.values())
            entry: dict[str, Any] = {"clean_pixels": n}
            if c != 0:
                entry["dice"] = self._inter[c] / self._sum[c] if self._sum.get(c) else 1.0
            entry["relabelled_fraction"] = (n - row.get(c, 0)) / n if n else 0.0
            entry["relabelled_to"] = {str(v): k / n for v, k in sorted(row.items()) if v != c}
            out[str(c)] = entry
        return out

    def summary(self) -> dict:
        """``dice_mean``, ``dice_pooled``, ``dice_min``, ``wrong_pixel_fraction``, ``n_images``, ``per_class``
        (:meth:`per_class`), ``per_image``."""
        values = np.array(list(self.per_image.values()), dtype=np.float64)
        pooled = float(np.mean([self._inter[c] / self._sum[c] for c in self._inter])) if self._inter else 1.0
        return {
            "n_images": len(self.per_image),
            "dice_mean": float(values.mean()) if values.size else 1.0,
            "dice_pooled": pooled,
            "dice_min": float(values.min()) if values.size else 1.0,
            "wrong_pixel_fraction": self._wrong_pixels / self._pixels if self._pixels else 0.0,
            "per_class": self.per_class(),
            "per_image": {k: {"dice": v, "wrong_pixel_fraction": self.wrong[k]} for k, v in self.per_image.items()},
        }


# --------------------------------------------------------------------------------------------- label files


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def read_label(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a label file (2D image formats, NIfTI, ``.npy``) as an integer array plus what writing it back needs.

    Raises:
        DataPrepError: missing, unreadable, unsupported or non-integer file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"{path}: label file not found")
    name = path.name.lower()
    if _is_nifti(path):
        import nibabel as nib

        try:
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
        except Exception as e:  # nibabel raises many types for corrupt files
            raise DataPrepError(f"{path}: unreadable NIfTI label ({e})") from None
        # the header travels with the label, so that the noisy copy keeps the source's qform, sform and codes
        return _as_labels(data, str(path)), {"format": "nifti", "affine": img.affine, "dtype": data.dtype,
                                             "header": nifti_spatial_header(img.header)}
    if name.endswith(".npy"):
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as e:
            raise DataPrepError(f"{path}: unreadable .npy label ({e})") from None
        return _as_labels(data, str(path)), {"format": "npy", "dtype": data.dtype}
    if name.endswith(IMAGE_EXTENSIONS):
        return _as_labels(read_mask_2d(path), str(path)), {"format": "png"}
    raise DataPrepError(f"{path}: unsupported label format (expected PNG/BMP/TIFF/JPEG, NIfTI or .npy)")


def _output_name(path: Path, meta: Mapping) -> str:
    """2D labels are always written as PNG (lossless, even when the source was JPEG)."""
    if meta["format"] == "png" and path.suffix.lower() != ".png":
        return path.stem + ".png"
    return path.name


def write_label(path: str | os.PathLike, array: np.ndarray, meta: Mapping) -> None:
    """Write a label in the format :func:`read_label` reported, atomically."""
    arr = np.asarray(array)
    if meta["format"] == "nifti":
        save_nifti(path, arr.astype(meta["dtype"]), meta["affine"], meta.get("header"))
    elif meta["format"] == "npy":
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, arr.astype(meta["dtype"]))
    else:
        top = int(arr.max()) if arr.size else 0
        if top > 65535:
            raise DataPrepError(f"{path}: label value {top} does not fit a PNG")
        save_png(path, arr.astype(np.uint8 if top <= 255 else np.uint16))


# --------------------------------------------------------------------------------------------- datasets


def _load_datalist(path: Path) -> dict:
    if not path.is_file():
        raise DataPrepError(f"{path}: datalist not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataPrepError(f"{path}: not a valid JSON datalist ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("training"), list):
        raise DataPrepError(f"{path}: datalist has no 'training' list")
    return doc


def _rebase(value: Any, src_root: Path, out_root: Path) -> Any:
    """Rewrite paths relative to ``src_root`` (those that exist) as paths relative to ``out_root``."""
    if isinstance(value, list):
        return [_rebase(v, src_root, out_root) for v in value]
    if isinstance(value, str) and value.strip() not in ("", ".", "./", ".."):
        p = Path(value) if Path(value).is_absolute() else src_root / value
        if p.exists():
            return os.path.relpath(p.resolve(), out_root)
    return value


def _noisy_path(label: Path, src_root: Path, out_root: Path, index: int, meta: Mapping) -> Path:
    name = _output_name(label, meta)
    try:
        rel = label.resolve().relative_to(src_root).parent
    except ValueError:
        return out_root / NOISY_DIR / "external" / f"{index:05d}_{name}"
    return out_root / NOISY_DIR / rel / name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_noisy_dataset(datalist: str | os.PathLike, out: str | os.PathLike, protocol: str, seed: int = 0,
                       fraction: float = 1.0, source_key: str | None = None, overwrite: bool = False,
                       verbose: bool = True, meta_fraction: float | None = None, meta_count: int | None = None,
                       **protocol_kwargs) -> dict:
    """Write a seeded noisy copy of a dataset's training labels and a datalist that uses them.

    Args:
        datalist: the source MONAI datalist JSON (paths relative to its folder, or absolute).
        out: output folder (must differ from the datalist's folder).
        protocol: a key of :data:`PROTOCOLS`.
        seed: seed (non-negative); case ``i`` uses its own stream ``[seed, 1, i]``.
        fraction: fraction of training cases to corrupt (chosen at random, rounded half up); the others keep
            their clean label (``label`` then points at the original file).
        source_key: entry key holding the clean label; default ``label_clean`` when an entry has one
            (datasets that already carry noisy labels), else ``label``.
        overwrite: allow replacing a ``datalist.json`` in ``out`` that this function did not write.
        verbose: print the per-image and overall noise level.
        meta_fraction: share of the training cases (chosen by ``seed``, rounded half up) moved, with their clean
            labels and never corrupted, into a ``meta`` section: the small clean set of meta re-weighting
            (MW-Net). The noise of the remaining cases is the same as without it.
        meta_count: the same as a number of cases (give one of the two).
        protocol_kwargs: options of the protocol (see :func:`apply_protocol`).

    Returns:
        The report written to ``out/noise_report.json``.

    Raises:
        DataPrepError: missing datalist or label file, bad options (the message names them).
    """
    datalist = Path(datalist)
    doc = _load_datalist(datalist)
    src_root = datalist.resolve().parent
    out_root = Path(out).resolve()
    if out_root == src_root:
        raise DataPrepError(f"--out {out}: must differ from the datalist's folder {src_root} (it would overwrite it)")
    if protocol not in PROTOCOLS:
        raise DataPrepError(f"unknown noise protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    unknown = sorted(set(protocol_kwargs) - set(_protocol_options(protocol)))
    if unknown:
        raise DataPrepError(f"noise protocol {protocol!r} does not take option(s) {unknown}")
    if not 0.0 <= fraction <= 1.0:
        raise DataPrepError(f"--fraction must be in [0, 1], got {fraction}")
    if seed < 0:
        raise DataPrepError(f"--seed must be non-negative, got {seed}")
    if meta_fraction is not None and meta_count is not None:
        raise DataPrepError("--meta-fraction and --meta-count: give one of them")
    if meta_fraction is not None and not 0.0 < meta_fraction < 1.0:
        raise DataPrepError(f"--meta-fraction must be in (0, 1), got {meta_fraction}")
    n_all = len(doc["training"])
    n_meta = (int(np.floor(meta_fraction * n_all + 0.5)) if meta_fraction is not None else
              int(meta_count) if meta_count is not None else 0)
    if (meta_fraction is not None or meta_count is not None) and not 1 <= n_meta <= n_all - 1:
        option = f"--meta-fraction {meta_fraction}" if meta_fraction is not None else f"--meta-count {meta_count}"
        raise DataPrepError(f"{option}: {n_meta} meta case(s) of {n_all} training cases; choose 1..{n_all - 1} so "
                            "that training keeps at least one")
    if n_meta and "meta" in doc:
        raise DataPrepError(f"{datalist}: already has a 'meta' section; drop --meta-fraction/--meta-count")

    # record the effective options, defaults included, so a re-run notices any change of them
    defaults = {name: prm.default for name, prm in inspect.signature(PROTOCOLS[protocol]).parameters.items()
                if prm.default is not inspect.Parameter.empty}
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in {**defaults, **protocol_kwargs}.items()}
    config = {"source": str(datalist.resolve()), "source_sha256": _sha256(datalist), "protocol": protocol,
              "options": options, "seed": int(seed), "fraction": float(fraction), "source_key": source_key}
    if n_meta:  # absent without a meta set, so noisy copies written before stay up to date
        config["meta_cases"] = n_meta
    out_list = out_root / DATALIST_NAME
    report_path = out_root / NOISE_REPORT_NAME
    if out_list.is_file():
        try:
            previous = json.loads(out_list.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = {}
        if previous.get("noise") == config and report_path.is_file() and all(
                (out_root / e["label"]).is_file() for e in previous.get("training", [])):
            report = json.loads(report_path.read_text())
            if verbose:
                print(f"noise: {out_list} is up to date ({protocol}, seed {seed}); nothing to do")
            return report
        if "noise" not in previous and not overwrite:
            raise DataPrepError(f"{out_list}: exists and was not written by the noise command; "
                                "choose another --out (or pass overwrite=True)")
        out_list.unlink()  # a datalist must never describe a half-rewritten set of labels

    # the meta cases first (their own stream); the noise is then drawn over the rest exactly as without them
    meta_index = set(np.random.default_rng([int(seed), 2]).permutation(n_all)[:n_meta].tolist()) if n_meta else set()
    kept = [i for i in range(n_all) if i not in meta_index]
    training = [doc["training"][i] for i in kept]
    n = len(training)
    n_noisy = int(np.floor(fraction * n + 0.5))  # half up: 0.5 of 5 cases corrupts 3
    chosen = set(np.random.default_rng([int(seed), 0]).permutation(n)[:n_noisy].tolist())
    meta_entries = []
    for i in sorted(meta_index):
        entry = doc["training"][i]
        key = source_key or ("label_clean" if isinstance(entry, dict) and "label_clean" in entry else "label")
        if not isinstance(entry, dict) or key not in entry:
            raise DataPrepError(f"{datalist}: training entry {i} has no {key!r} key")
        meta_entry = {k: _rebase(v, src_root, out_root) for k, v in entry.items() if k != "label_clean"}
        meta_entry["label"] = _rebase(entry[key], src_root, out_root)
        meta_entries.append(meta_entry)

    acc_all, acc_noisy = DiceAccumulator(), DiceAccumulator()
    new_training, cases, written, sources = [], [], set(), set()
    for i, entry in enumerate(training):
        if not isinstance(entry, dict):
            raise DataPrepError(f"{datalist}: training entry {kept[i]} is not an object")
        key = source_key or ("label_clean" if "label_clean" in entry else "label")
        if key not in entry:
            raise DataPrepError(f"{datalist}: training entry {kept[i]} has no {key!r} key")
        label_path = Path(entry[key]) if Path(entry[key]).is_absolute() else src_root / entry[key]
        try:
            clean, meta = read_label(label_path)
        except DataPrepError as e:
            raise DataPrepError(f"{datalist}: training entry {kept[i]} ({key}): {e}") from None
        sources.add(label_path.resolve())
        new_entry = {k: _rebase(v, src_root, out_root) for k, v in entry.items()}
        clean_rel = os.path.relpath(label_path.resolve(), out_root)
        name = str(entry[key]) if str(entry[key]) not in acc_all.per_image else f"{entry[key]}#{i}"
        if i in chosen:
            # one stream per case: a case's noise does not depend on the others or on the fraction
            noisy = apply_protocol(clean, protocol, np.random.default_rng([int(seed), 1, kept[i]]), **protocol_kwargs)
            target = _noisy_path(label_path, src_root, out_root, kept[i], meta)
            write_label(target, noisy, meta)
            written.add(target)
            new_entry["label"] = os.path.relpath(target, out_root)
            acc_noisy.add(name, noisy, clean)
        else:
            noisy = clean
            new_entry["label"] = clean_rel
        new_entry["label_clean"] = clean_rel
        acc_all.add(name, noisy, clean)
        new_training.append(new_entry)
        cases.append({"label_clean": clean_rel, "label": new_entry["label"], "corrupted": i in chosen,
                      "dice": acc_all.per_image[name], "wrong_pixel_fraction": acc_all.wrong[name]})

    # labels of an earlier run with other settings would otherwise linger beside the new set
    noisy_dir = out_root / NOISY_DIR
    if noisy_dir.is_dir():
        for f in noisy_dir.rglob("*"):
            if f.is_file() and f not in written and f.resolve() not in sources and not f.name.startswith("."):
                f.unlink()

    overall = acc_all.summary()
    overall.pop("per_image")
    corrupted = acc_noisy.summary()
    corrupted.pop("per_image")
    report = {"config": config, "n_training": n, "n_corrupted": n_noisy, "n_meta": n_meta, "overall": overall,
              "corrupted_only": corrupted, "cases": cases}
    write_json(report_path, report)

    new_doc: dict[str, Any] = {}
    for key, value in doc.items():
        if key in _PROVENANCE_KEYS:
            continue  # describes how the source was made, not this copy
        if key == "training":
            new_doc[key] = new_training
            if meta_entries:
                new_doc["meta"] = meta_entries
        elif isinstance(value, list):
            new_doc[key] = [{k: _rebase(v, src_root, out_root) for k, v in e.items()} if isinstance(e, dict)
                            else e for e in value]
        else:
            new_doc[key] = value
    note = f"training labels corrupted with the {protocol!r} noise protocol (see {NOISE_REPORT_NAME})"
    new_doc["description"] = f"{doc['description']}; {note}" if isinstance(doc.get("description"), str) else note
    new_doc["noise"] = config
    write_json(out_list, new_doc)  # last: its presence means the noisy set is complete

    if verbose:
        for c in cases:
            flag = "noisy" if c["corrupted"] else "clean"
            print(f"  {c['label_clean']}: {flag}  Dice {c['dice']:.4f}  wrong pixels {c['wrong_pixel_fraction']:.4f}")
        if n_meta:
            print(f"noise: {n_meta} training case(s) kept clean in the 'meta' section")
        print(f"noise: protocol {protocol} {options or ''} seed {seed}: corrupted {n_noisy}/{n} training labels; "
              f"Dice noisy vs clean: mean {overall['dice_mean']:.4f}, pooled {overall['dice_pooled']:.4f}, "
              f"min {overall['dice_min']:.4f}; wrong pixels {overall['wrong_pixel_fraction']:.4%}")
        for c, entry in overall["per_class"].items():
            dice = f"Dice {entry['dice']:.4f}, " if "dice" in entry else ""
            print(f"noise: class {c} ({entry['clean_pixels']} clean pixels): {dice}relabelled "
                  f"{entry['relabelled_fraction']:.4%}")
        print(f"noise: wrote {out_list} and {report_path}")
    return report


# --------------------------------------------------------------------------------------------- CLI


def _range(kind: type) -> Callable[[str], Any]:
    """Parse ``"3"`` or ``"2-5"`` (an inclusive range drawn per image)."""

    def parse(text: str):
        parts = text.split("-")
        try:
            if len(parts) == 1:
                return kind(parts[0])
            if len(parts) == 2:
                lo, hi = kind(parts[0]), kind(parts[1])
                if lo > hi:
                    raise ValueError
                return (lo, hi)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"expected a number or a range LOW-HIGH, got {text!r}")

    return parse


def _run(args: argparse.Namespace) -> int:
    allowed = _protocol_options(args.protocol)
    opts: dict[str, Any] = {}
    for name in _CLI_OPTIONS:
        value = getattr(args, name)
        if value is None:
            continue  # not given: the protocol's default applies
        if name not in allowed:
            flag = "--" + name.replace("_", "-")
            raise DataPrepError(f"{flag} does not apply to the {args.protocol!r} protocol (it takes "
                                f"{', '.join('--' + a.replace('_', '-') for a in allowed if a in _CLI_OPTIONS)})")
        opts[name] = value
    make_noisy_dataset(args.datalist, args.out, args.protocol, seed=args.seed, fraction=args.fraction,
                       source_key=args.source_key, meta_fraction=args.meta_fraction, meta_count=args.meta_count,
                       **opts)
    return 0


_CLI_OPTIONS = ("k", "alpha", "sigma", "drop_prob", "max_drop_size", "n_add", "add_radius",
                "rate", "scale", "smooth", "imbalance", "rates")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``noise`` subcommand (``python -m data_prep noise ...``)."""
    p = subparsers.add_parser(
        "noise", help="write a seeded noisy copy of a dataset's training labels",
        description="Corrupt the training labels of a MONAI datalist with a noise protocol of the noisy-label "
                    "segmentation literature; writes OUT/labels_noisy/, OUT/noise_report.json and OUT/datalist.json "
                    "(paths relative to OUT; training entries keep the clean label as 'label_clean').")
    p.add_argument("--datalist", required=True, type=Path, help="source datalist JSON")
    p.add_argument("--out", required=True, type=Path, help="output folder (not the datalist's folder)")
    p.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of training cases to corrupt (default 1)")
    meta = p.add_mutually_exclusive_group()
    meta.add_argument("--meta-fraction", type=float, default=None,
                      help="share of the training cases moved, with clean labels and uncorrupted, into a 'meta' "
                           "section: the clean set of MW-Net (bundles' configs/mwnet_train.json)")
    meta.add_argument("--meta-count", type=int, default=None, help="the same as a number of training cases")
    p.add_argument("--source-key", default=None,
                   help="entry key of the clean label (default: label_clean when present, else label)")
    p.add_argument("--k", type=_range(int), default=None,
                   help="dilate/erode/dilate_erode: radius in pixels, or a range LOW-HIGH (default 2)")
    p.add_argument("--alpha", type=_range(float), default=None,
                   help="elastic: displacement amplitude in pixels (std per axis), or a range (default 2)")
    p.add_argument("--sigma", type=float, default=None,
                   help="elastic: smoothness of the displacement field in pixels (default 6)")
    p.add_argument("--drop-prob", type=float, default=None,
                   help="components: probability to drop each candidate component (default 0.5)")
    p.add_argument("--max-drop-size", type=int, default=None,
                   help="components: largest droppable component in pixels (default: all but the largest per class)")
    p.add_argument("--n-add", type=_range(int), default=None,
                   help="components: false components to add, or a range (default 0-2)")
    p.add_argument("--add-radius", type=_range(float), default=None,
                   help="components: radius of added components in pixels, or a range (default 2-5)")
    p.add_argument("--rate", type=float, default=None,
                   help="class_boundary: boundary flip probability of the largest foreground class (default 0.4)")
    p.add_argument("--scale", type=float, default=None,
                   help="class_boundary: decay length of the flip probability away from the boundary (default 3 px)")
    p.add_argument("--smooth", type=float, default=None,
                   help="class_boundary: correlation length of the flips in pixels, 0 for independent (default 2)")
    p.add_argument("--imbalance", type=float, default=None,
                   help="class_boundary: rarer classes flip (n_max/n_c)^IMBALANCE times as often (default 0.5)")
    p.add_argument("--rates", default=None,
                   help="class_boundary: flip rates per class or class pair, e.g. '2>1:0.6,1:0.3' (override --rate)")
    p.set_defaults(func=_run)
