"""Synapse multi-organ CT in the TransUNet preprocessed layout (9 classes).

``--src`` holds::

    train_npz/case0005_slice000.npz     keys image (H, W float in [0, 1]), label (H, W, 0..8)
    test_vol_h5/case0001.npy.h5         keys image, label, shape (D, H, W)
    lists/lists_Synapse/{train.txt, test_vol.txt}    optional (or --lists DIR)

When the lists are there, they choose the files (a listed file that is missing is reported);
otherwise every file is taken. Output, all NIfTI so that image and label load with the same axis
order in MONAI (a PNG loads transposed with respect to a NIfTI):

* training slices → ``images/train/<slice>.nii.gz`` float32 ``(H, W)`` + ``labels/...`` uint8;
  validation = the slices of a ``--val-fraction`` of the training *cases* (never part of a case);
* test volumes → ``images/test/<case>.nii.gz`` float32 ``(H, W, D)`` (slice ``k`` is the
  ``(H, W)`` training orientation) + labels uint8, identity affine: the preprocessed files keep
  no voxel spacing.

Reading ``test_vol_h5`` needs ``h5py``.
"""

from __future__ import annotations

import argparse
import zipfile
from functools import partial
from pathlib import Path

import numpy as np

from ..convert import (
    ConversionJob,
    Pair,
    Sample,
    Skip,
    add_common_arguments,
    assign_sections,
    limit_items,
    natural_sorted,
    require_dir,
    run_job,
)
from ..io import DataPrepError
from ..masks import class_mask

__all__ = ["add_parser", "convert", "load_npz_slice", "load_h5_volume", "CLASS_NAMES"]

CLASS_NAMES = {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gallbladder",
               "5": "liver", "6": "stomach", "7": "aorta", "8": "pancreas"}
NUM_CLASSES = 9


def _check(path: Path, image: np.ndarray, label: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    if image.ndim != ndim or label.ndim != ndim:
        raise DataPrepError(f"{path}: expected {ndim}D image and label, got shapes {image.shape} and {label.shape}")
    if image.shape != label.shape:
        raise DataPrepError(f"{path}: image/label size mismatch ({image.shape} vs {label.shape})")
    if not np.isfinite(image).all():
        raise DataPrepError(f"{path}: image holds NaN or infinite values")
    return image.astype(np.float32), class_mask(label, path, NUM_CLASSES)


def load_npz_slice(path: Path) -> Sample:
    """Read one training slice (``image``, ``label`` of shape ``(H, W)``)."""
    try:
        with np.load(path) as z:
            image, label = np.asarray(z["image"]), np.asarray(z["label"])
    except KeyError as e:
        raise DataPrepError(f"{path}: no {e} array (expected keys 'image' and 'label')") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataPrepError(f"{path}: unreadable or truncated npz ({e})") from None
    image, label = _check(path, image, label, 2)
    return Sample(image, label)


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataPrepError("reading Synapse test_vol_h5/*.npy.h5 needs h5py: pip install h5py") from None
    return h5py


def load_h5_volume(path: Path) -> Sample:
    """Read one test volume (``image``, ``label`` of shape ``(D, H, W)``) as ``(H, W, D)``."""
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            image, label = np.asarray(f["image"][:]), np.asarray(f["label"][:])
    except KeyError as e:
        raise DataPrepError(f"{path}: missing dataset ({e}); expected 'image' and 'label'") from None
    except OSError as e:
        raise DataPrepError(f"{path}: unreadable or truncated HDF5 ({e})") from None
    image, label = _check(path, image, label, 3)
    return Sample(np.transpose(image, (1, 2, 0)), np.transpose(label, (1, 2, 0)))


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _select(folder: Path, suffix: str, listed: list[str] | None, list_name: str) -> tuple[dict[str, Path], list[Skip]]:
    on_disk = {p.name[: -len(suffix)]: p for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file()}
    if listed is None:
        return {k: on_disk[k] for k in natural_sorted(on_disk)}, []
    skips = [Skip((str(folder / f"{name}{suffix}"),), f"listed in {list_name} but missing")
             for name in listed if name not in on_disk]
    return {name: on_disk[name] for name in listed if name in on_disk}, skips


def convert(args: argparse.Namespace) -> int:
    """Convert the training slices and test volumes."""
    if not args.src.is_dir():
        raise DataPrepError(f"--src {args.src}: no such folder")
    train_dir = require_dir(args.src / "train_npz", "TransUNet training slices *.npz")
    test_dir = require_dir(args.src / "test_vol_h5", "TransUNet test volumes *.npy.h5")
    lists = args.lists if args.lists is not None else args.src / "lists" / "lists_Synapse"
    if args.lists is not None:
        require_dir(lists, "the TransUNet lists train.txt and test_vol.txt")
    notes = []
    train_list = _read_list(lists / "train.txt") if (lists / "train.txt").is_file() else None
    test_list = _read_list(lists / "test_vol.txt") if (lists / "test_vol.txt").is_file() else None
    notes.append(f"file lists: {lists if train_list or test_list else 'none, every file is taken'}")
    slices, skips = _select(train_dir, ".npz", train_list, "train.txt")
    volumes, test_skips = _select(test_dir, ".npy.h5", test_list, "test_vol.txt")
    slices = dict(limit_items(list(slices.items()), args.limit))
    volumes = dict(limit_items(list(volumes.items()), args.limit))
    if volumes:
        _h5py()  # fail once, clearly, rather than once per volume
    sections = assign_sections(slices, (1 - args.val_fraction, args.val_fraction, 0), args.seed,
                               group=lambda name: name.split("_slice")[0])
    pairs = [Pair(f"train/{name}", sections[name], partial(load_npz_slice, path), (str(path),))
             for name, path in slices.items()]
    pairs += [Pair(f"test/{name}", "test", partial(load_h5_volume, path), (str(path),))
              for name, path in volumes.items()]
    job = ConversionJob("synapse", args.src, pairs, skips + test_skips, settings={}, image_format="nifti",
                        label_format="nifti", labels=CLASS_NAMES, notes=notes,
                        description="Synapse multi-organ CT (TransUNet preprocessed): 2D training slices, 3D test")
    return run_job(job, args)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``synapse``."""
    p = subparsers.add_parser("synapse", help="Synapse multi-organ CT (TransUNet layout)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, val_fraction=0.1, threshold=False)
    p.add_argument("--lists", type=Path, default=None,
                   help="folder with train.txt and test_vol.txt (default: <src>/lists/lists_Synapse when present)")
    p.set_defaults(func=convert)
