"""Reading and writing images and masks, always atomically (temporary file, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DataPrepError",
    "atomic_path",
    "write_json",
    "read_image_2d",
    "read_mask_2d",
    "save_png",
    "save_nifti",
    "safe_join",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DataPrepError(ValueError):
    """Bad input for data preparation; the message always names the file or the setting."""


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` and rename it onto ``path`` on success.

    A crash or an exception while writing leaves ``path`` untouched (either the previous
    complete file or nothing), never half a file.

    Args:
        path: final destination.
        suffix: suffix of the temporary file (defaults to the destination's full suffix, so that
            writers choosing a format by extension, e.g. ``.nii.gz``, keep working).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()  # forces decoding so truncated files fail here, with their name
    except FileNotFoundError:
        raise DataPrepError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataPrepError(f"{path}: unreadable or truncated image ({e})") from None
    return img


def read_image_2d(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D image as ``uint8``/``uint16`` array, ``(H, W)`` for grayscale or ``(H, W, 3)`` for colour.

    Palette and alpha channels are resolved (RGBA → RGB, palette → RGB), 16-bit grayscale is kept.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(img).astype(np.uint16 if img.mode != "I" else np.int32)
    if img.mode in ("L", "1"):
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("RGB"))


def read_mask_2d(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D mask as an integer array ``(H, W)`` holding its stored values.

    Palette PNGs give their palette indices (the class ids), not colours; RGB masks are reduced
    to one channel when their channels agree (grey saved as RGB), else rejected.
    """
    path = Path(path)
    img = _open(path)
    if img.mode == "P":
        return np.asarray(img).astype(np.int64)
    if img.mode in ("RGB", "RGBA"):
        arr = np.asarray(img.convert("RGB")).astype(np.int64)
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            # JPEG-compressed grey masks differ by a few levels between channels
            if np.abs(arr - arr.mean(axis=-1, keepdims=True)).max() > 16:
                raise DataPrepError(f"{path}: colour mask with differing channels; expected a grey or palette mask")
        return arr.mean(axis=-1).round().astype(np.int64)
    return np.asarray(img.convert("I") if img.mode not in ("L", "1") else img.convert("L")).astype(np.int64)


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a ``(H, W)`` or ``(H, W, 3)`` array as PNG atomically (uint8, or uint16 grayscale)."""
    arr = np.asarray(array)
    if arr.dtype not in (np.uint8, np.uint16):
        raise DataPrepError(f"{path}: save_png expects uint8 or uint16, got {arr.dtype}")
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Save an array as NIfTI (``.nii`` or ``.nii.gz``) atomically with the given affine (identity by default)."""
    import nibabel as nib

    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(np.asarray(array), affine), str(tmp))


def safe_join(root: str | os.PathLike, name: str) -> Path:
    """Join ``name`` (which may come from a dataset's file names or DICOM tags) under ``root``.

    Raises:
        DataPrepError: when ``name`` would escape ``root`` (absolute, ``..``).
    """
    root_p = Path(root).resolve()
    target = (root_p / name).resolve()
    if root_p != target and root_p not in target.parents:
        raise DataPrepError(f"refusing to write {name!r}: it resolves outside the output directory {root_p}")
    return target
