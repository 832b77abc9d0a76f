"""Overlay PNGs: the input with its predicted mask in the bundle's colours, for a quick visual check."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from .files import atomic_path
from .segments import Segment

__all__ = ["overlay_rgb", "write_overlay"]


def _display_range(img: np.ndarray) -> np.ndarray:
    """Scale to uint8 between the 1st and 99th percentiles (CT windows and 8-bit photos alike)."""
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    return (np.clip((img - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def overlay_rgb(image: np.ndarray, mask: np.ndarray, segments: Sequence[Segment], alpha: float = 0.4) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture of ``image`` with each segment filled at ``alpha`` and outlined.

    Arrays are in MONAI's layout (first spatial axis = image column), so the picture is their transpose: a PNG
    input looks as it did. A volume shows the slice (last axis) with the most foreground, else its middle slice.

    Args:
        image: ``(C, *spatial)`` on the mask's grid; 1 channel (grey) or 3+ (the first three as RGB).
        mask: the label map, ``spatial`` axes.
        segments: colours by value.
        alpha: opacity of the fill.

    Raises:
        ValueError: when image and mask grids differ.
    """
    img = np.asarray(image, dtype=np.float64)
    lab = np.asarray(mask)
    if img.shape[1:] != lab.shape:
        raise ValueError(f"overlay: image grid {img.shape[1:]} differs from the mask's {lab.shape}")
    if lab.ndim == 3:
        counts = (lab > 0).sum(axis=(0, 1))
        k = int(counts.argmax()) if counts.any() else lab.shape[2] // 2
        img, lab = img[..., k], lab[..., k]
    rgb = img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
    out = _display_range(np.moveaxis(rgb, 0, -1).transpose(1, 0, 2)).astype(np.float64)
    lab = lab.T
    for seg in segments:
        region = lab == seg.value
        if not region.any():
            continue
        color = np.asarray(seg.color, dtype=np.float64)
        out[region] = (1 - alpha) * out[region] + alpha * color
        out[region & ~ndimage.binary_erosion(region)] = color
    return out.round().astype(np.uint8)


def write_overlay(path: str | os.PathLike, picture: np.ndarray, overwrite: bool = False) -> Path:
    """Save an ``(H, W, 3)`` uint8 picture as PNG, atomically.

    Args:
        path: the PNG to write.
        picture: from :func:`overlay_rgb`.
        overwrite: replace an existing ``path``.
    """
    from PIL import Image

    out = Path(path)
    with atomic_path(out, overwrite=overwrite) as tmp:
        Image.fromarray(np.asarray(picture, dtype=np.uint8)).save(tmp, format="PNG")
    return out
