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
    "nifti_spatial_header",
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
    """Read a 2D mask as an array ``(H, W)`` holding its stored values in their stored type.

    The type is the file's bit depth, which :mod:`data_prep.masks` needs to tell a 0/65535 binary mask from
    class indices: ``uint8`` (8-bit grey, 1-bit as 0/255, palette indices), ``uint16`` (16-bit grey),
    ``int32``/``float32`` (32-bit integer/float TIFF). Palette PNGs give their palette indices (the class ids),
    not colours; RGB masks are reduced to one channel when their channels agree (grey saved as RGB), else
    rejected; an alpha channel is dropped.
    """
    path = Path(path)
    img = _open(path)
    if img.mode == "P":
        return np.asarray(img)
    if img.mode in ("RGB", "RGBA"):
        arr = np.asarray(img.convert("RGB")).astype(np.int16)
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            # JPEG-compressed grey masks differ by a few levels between channels
            if np.abs(arr - arr.mean(axis=-1, keepdims=True)).max() > 16:
                raise DataPrepError(f"{path}: colour mask with differing channels; expected a grey or palette mask")
        return arr.mean(axis=-1).round().astype(np.uint8)
    if img.mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)  # native byte order whatever the file's
    if img.mode in ("I", "F"):
        return np.asarray(img)
    return np.asarray(img.convert("L"))  # L, 1 (as 0/255), LA (alpha dropped)


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a ``(H, W)`` or ``(H, W, 3)`` array as PNG atomically (uint8, or uint16 grayscale)."""
    arr = np.asarray(array)
    if arr.dtype not in (np.uint8, np.uint16):
        raise DataPrepError(f"{path}: save_png expects uint8 or uint16, got {arr.dtype}")
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def nifti_spatial_header(header: Any, slice_index: int | None = None) -> Any:
    """A copy of a NIfTI header for an output lying in its voxel grid: its spatial fields, nothing of its values.

    Kept: the qform and sform with their codes (nibabel/MONAI place a file at its sform, ITK-based viewers such
    as 3D Slicer and ITK-SNAP at its qform: both must find an output where they found its source), ``pixdim``,
    ``xyzt_units``, ``dim_info``. Reset: scaling, display window (``cal_min``/``cal_max``), intent, description,
    ``aux_file`` and extensions, which describe the source's values.

    Args:
        header: a ``nibabel`` ``Nifti1Header`` (or ``Nifti2Header``).
        slice_index: for a 2D output holding slice ``k`` of the third voxel axis: both forms shifted to that slice.
    """
    hdr = header.copy()
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"] = hdr["cal_max"] = 0
    hdr.set_intent("none")
    hdr["descrip"] = b""
    hdr["aux_file"] = b""
    hdr.extensions.clear()
    if slice_index is not None:
        shift = np.eye(4)
        shift[2, 3] = slice_index
        q_code, s_code = int(hdr["qform_code"]), int(hdr["sform_code"])
        hdr.set_qform(hdr.get_qform() @ shift, code=q_code)
        hdr.set_sform(hdr.get_sform() @ shift, code=s_code)
    return hdr


def save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray | None = None,
               header: Any = None) -> None:
    """Save an array as NIfTI (``.nii`` or ``.nii.gz``) atomically.

    Args:
        path: the file.
        array: the data, in its own type.
        affine: voxel to world (identity by default), written as nibabel does (sform, code aligned).
        header: a header from :func:`nifti_spatial_header`: its qform, sform, codes and units are written
            unchanged and ``affine`` is ignored.
    """
    import nibabel as nib

    arr = np.asarray(array)
    if header is not None:
        hdr = header.copy()
        hdr.set_data_dtype(arr.dtype)
        zooms = hdr["pixdim"][1:4].copy()
        hdr.set_data_shape(arr.shape)
        # a 2D slice keeps its thickness: nibabel resets unused pixdims to 1, and the qform is built from them
        hdr["pixdim"][1:4] = zooms
        image_class = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        img = image_class(arr, None, hdr)  # affine None: the header's forms are written as they are
    else:
        img = nib.Nifti1Image(arr, np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


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
