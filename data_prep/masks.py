"""Decoding stored masks into labels: the one rule every converter (and ``python -m data_prep check``) applies.

Masks come in several encodings, and the bit depth they are stored in is not a property of the labels:

* **binary**: background 0 and one foreground value that is 1 or the full scale of a bit depth: 255 (8-bit),
  65535 (16-bit) or the maximum of the array's own type (``True`` of a bool mask, 32767 of an int16 NIfTI).
  A 0/1, 0/255 or 0/65535 mask is binary whether it is stored in 8, 16 or 32 bits; 0/255 in a 16-bit file too.
* **class indices**: ``0 .. C-1`` (palette PNGs store them as palette indices), kept as they are.
* **soft** (probability-like, such as pseudo-labels) and **lossy** (JPEG) masks: intermediate values, read on
  the mask's bit depth (:func:`full_scale`) and binarised at a threshold given on the 0..255 scale: ``T`` means
  ``T / 255`` of full scale, so ``--threshold 128`` is 128 on an 8-bit mask and 32896 on a 16-bit one.

A threshold that leaves a mask holding foreground values entirely background is refused for that file, naming
the file, the threshold and the mask's maximum: a global ``--threshold`` must never turn valid labels into empty
ones that are then counted as converted. (A lossless, exactly binary mask is decoded as binary, threshold or
not; JPEG masks are always thresholded.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import DataPrepError

__all__ = [
    "LOSSY_EXTENSIONS",
    "is_lossy",
    "full_scale",
    "binary_foreground",
    "binary_mask",
    "soft_mask",
    "class_mask",
    "label_indices",
]

LOSSY_EXTENSIONS = (".jpg", ".jpeg")
#: the full scales of the usual bit depths (1-bit, 8-bit, 16-bit), foreground values of binary masks
_FULL_SCALES = (1, 255, 65535)
# a JPEG mask is accepted for thresholding when at most this fraction of its pixels lie mid-range (64..191 of 255)
_MAX_LOSSY_MIDDLE = 0.1


def is_lossy(path: str | os.PathLike) -> bool:
    """Whether ``path`` is JPEG-compressed (its masks need thresholding)."""
    return Path(path).suffix.lower() in LOSSY_EXTENSIONS


def _values(arr: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """The distinct values of a mask, which must be finite and non-negative."""
    if arr.size == 0:
        raise DataPrepError(f"{path}: empty mask")
    values = np.unique(arr)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise DataPrepError(f"{path}: mask holds NaN or infinite values")
    if values.dtype != bool and values[0] < 0:
        raise DataPrepError(f"{path}: negative mask values (down to {values[0]:g})")
    return values


def _shown(values: np.ndarray) -> str:
    return ", ".join(f"{v:g}" for v in values[:8].tolist()) + (", ..." if values.size > 8 else "")


def full_scale(arr: np.ndarray, path: str | os.PathLike = "mask") -> int:
    """The full-scale value of a mask's bit depth: 1 for bool, 255 for uint8, 65535 for uint16, the type's maximum
    for other 8/16-bit integers; for wider integers and floats (which PIL and NIfTI use for any content) the
    smallest of 1 (floats only), 255 and 65535 holding the mask's maximum.

    Args:
        arr: the mask in its stored type.
        path: the source, named in errors.

    Raises:
        DataPrepError: a wide or float mask above 65535 (not a mask encoding this module knows).
    """
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return 1
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize <= 2:
        return int(np.iinfo(arr.dtype).max)
    top = float(arr.max()) if arr.size else 0.0
    for scale in _FULL_SCALES if np.issubdtype(arr.dtype, np.floating) else _FULL_SCALES[1:]:
        if top <= scale:
            return scale
    raise DataPrepError(f"{path}: mask values up to {top:g} exceed 16 bits")


def binary_foreground(values: np.ndarray, dtype: np.dtype | None = None) -> float | None:
    """The foreground value when ``values`` (a mask's distinct values) are a binary encoding, else None.

    Binary: ``values`` are ``{0, f}`` or ``{f}`` with ``f`` 1, 255, 65535 or the maximum of ``dtype`` (an integer
    type); ``{0}`` alone (an empty mask) gives 1.

    Args:
        values: distinct values of the mask.
        dtype: the mask's stored type (default ``values.dtype``).
    """
    values = np.asarray(values)
    dtype = np.dtype(dtype if dtype is not None else values.dtype)
    if dtype == bool:
        return 1.0
    nonzero = values[values != 0]
    if nonzero.size == 0:
        return 1.0
    if nonzero.size > 1:
        return None
    f = float(nonzero[0])
    scales = set(_FULL_SCALES)
    if np.issubdtype(dtype, np.integer):
        scales.add(int(np.iinfo(dtype).max))
    return f if f in scales else None


def _refuse_erased(path, threshold: int, level: float, scale: int, top: float) -> None:
    on_scale = "" if scale == 255 else f" ({level:g} on this mask's 0..{scale} scale)"
    raise DataPrepError(
        f"{path}: mask values up to {top:g} never reach --threshold {threshold}{on_scale}: every pixel would become "
        "background; a 0/1 or 0/max mask needs no --threshold, and other masks need a lower one"
    )


def _check_threshold(threshold: int) -> None:
    if not 1 <= int(threshold) <= 255:
        raise DataPrepError(f"--threshold {threshold}: must be within 1..255 (the 0..255 scale)")


def binary_mask(arr: np.ndarray, path: str | os.PathLike, threshold: int | None = None,
                lossy: bool | None = None) -> np.ndarray:
    """Decode a binary mask to ``uint8`` 0/1.

    - A lossless, exactly binary mask (:func:`binary_foreground`: 0/1, 0/255, 0/65535, 0/type max, bool) is
      decoded as it is, with or without ``threshold``.
    - Other lossless masks are refused unless ``threshold`` is given; then ``>= threshold`` on the 0..255 scale,
      i.e. ``>= threshold * full_scale / 255`` on the mask's bit depth (:func:`full_scale`).
    - Lossy (JPEG) masks are thresholded (at 128 by default) when they look binary: at most 10% of pixels
      mid-range (64..191 of 255), and values reaching above 63 (a JPEG of a 0/1 mask cannot be thresholded).
    - A mask holding foreground values that the threshold turns all background is refused.

    Args:
        arr: the stored mask values (from :func:`~data_prep.io.read_mask_2d`, in their stored type).
        path: the source, named in errors.
        threshold: binarise at this value of the 0..255 scale instead of requiring a binary encoding.
        lossy: whether the file is JPEG-compressed (default: from its extension).

    Raises:
        DataPrepError: unexpected values, or a threshold that erases the foreground, naming the file.
    """
    arr = np.asarray(arr)
    lossy = is_lossy(path) if lossy is None else lossy
    values = _values(arr, path)
    if threshold is not None:
        _check_threshold(threshold)
    f = None if lossy else binary_foreground(values, arr.dtype)
    if f is not None:
        return (arr == f).astype(np.uint8) if arr.dtype != bool else arr.astype(np.uint8)
    if not lossy and threshold is None:
        raise DataPrepError(
            f"{path}: unexpected mask values [{_shown(values)}]; a binary mask holds 0 and one of 1, 255, 65535 "
            "(--threshold T binarises other values)"
        )
    scale = full_scale(arr, path)
    top = float(values[-1])
    if lossy:
        middle = float(((arr >= scale * 64 / 255) & (arr <= scale * 191 / 255)).mean())
        if middle > _MAX_LOSSY_MIDDLE:
            raise DataPrepError(
                f"{path}: not a binary mask: {middle:.0%} of pixels lie between 64 and 191 (JPEG masks "
                "are thresholded only when they are mostly 0 or 255)"
            )
        if 0 < top < scale * 64 / 255:
            raise DataPrepError(
                f"{path}: mask values only up to {top:g}: a 0/1 mask saved as JPEG cannot be thresholded at 128"
            )
    t = 128 if threshold is None else int(threshold)
    level = t * scale / 255
    out = (arr >= level).astype(np.uint8)
    if top > 0 and not out.any():
        _refuse_erased(path, t, level, scale, top)
    return out


def soft_mask(arr: np.ndarray, path: str | os.PathLike, threshold: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Decode a soft (probability-like) mask into ``(binary 0/1, soft 0..255)`` ``uint8`` arrays.

    The values are read on the mask's bit depth (:func:`full_scale`; a 16-bit soft mask is scaled to 0..255) and
    binarised ``>= threshold`` of 0..255.

    Raises:
        DataPrepError: values that are negative or not finite, a threshold outside 1..255, or a mask holding
            foreground values that all lie below the threshold (its binary label would be empty).
    """
    arr = np.asarray(arr)
    _check_threshold(threshold)
    values = _values(arr, path)
    scale = full_scale(arr, path)
    soft = np.rint(arr.astype(np.float64) * (255.0 / scale)).astype(np.uint8) if scale != 255 else arr.astype(np.uint8)
    out = (soft >= threshold).astype(np.uint8)
    top = float(values[-1])
    if top > 0 and not out.any():
        _refuse_erased(path, int(threshold), threshold * scale / 255, scale, top)
    return out, soft


def class_mask(arr: np.ndarray, path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """Check a class-index mask (palette indices, grey values, integral floats) holds only ``0..num_classes-1``.

    A binary mask (0/255, 0/65535) is not rescaled here: with more than two classes its foreground value is not a
    class index, and guessing one would mislabel it.

    Raises:
        DataPrepError: other values or non-integral values, naming the file.
    """
    arr = np.asarray(arr)
    values = _values(arr, path)
    bad = values[(values >= num_classes) | (values != np.round(values))] if values.dtype != bool else values[:0]
    if bad.size:
        f = binary_foreground(values, arr.dtype)
        hint = f" (a 0/{f:g} binary mask: convert it as a binary dataset)" if f is not None and f > 1 else ""
        raise DataPrepError(
            f"{path}: unexpected label values {bad[:8].tolist()} "
            f"(expected class indices 0..{num_classes - 1}){hint}"
        )
    return arr.astype(np.uint8 if num_classes <= 256 else np.uint16)


def label_indices(arr: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Class indices of a label volume whose number of classes is not given (NIfTI masks).

    A binary encoding whose foreground is a full scale above 1 (0/255, 0/65535, 0/32767 in int16) becomes 0/1;
    any other mask must hold non-negative integers up to 65535 (multi-class masks keep their indices).

    Returns:
        ``uint8`` indices, ``uint16`` when a value exceeds 255.

    Raises:
        DataPrepError: negative, non-integral or non-finite values, or values above 65535, naming the file.
    """
    arr = np.asarray(arr)
    values = _values(arr, path)
    f = binary_foreground(values, arr.dtype)
    if f is not None and f > 1:
        return (arr == f).astype(np.uint8)
    if values.dtype != bool and not np.array_equal(values, np.round(values)):
        raise DataPrepError(f"{path}: label values must be non-negative integers, found [{_shown(values)}]")
    if float(values[-1]) > 65535:
        raise DataPrepError(f"{path}: label values above 65535")
    return arr.astype(np.uint8 if float(values[-1]) < 256 else np.uint16)
