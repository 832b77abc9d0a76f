"""3D scans: DICOM series and NIfTI volumes, kept 3D or cut into 2D slices.

* ``dicom``: every series under ``--src`` (see :mod:`.dicom_series`: grouped by SeriesInstanceUID,
  ordered by position, decoded by the Modality LUT (RescaleSlope/Intercept: HU on CT) with MONOCHROME1
  inverted and no VOI window, the affine from the DICOM geometry). Its name is its folder under ``--src``.
  A gantry-tilted series keeps its exact, sheared affine (noted in the summary). A series that no affine
  holds (uneven slice spacing, missing slices, positions off a line) is never written with one: in
  ``--mode 2d`` each slice is written with its own exact affine (noted); in ``--mode 3d`` it is skipped naming
  the cause, unless ``--resample-irregular``, which resamples it, and tilted series too, onto a regular
  orthogonal grid (linear interpolation at the smallest gap; see :mod:`data_prep.dicom_resample`), noted in
  the summary. Masks cannot be matched to a series no affine holds (no grid to compare): such pairs are skipped.
* ``nifti``: every ``*.nii``/``*.nii.gz`` under ``--src``, its affine kept; named by its path.

``--masks DIR``: NIfTI label volumes matched by name (``<name>.nii.gz``, or with ``--mask-suffix``,
by default also ``_mask``/``_seg``/``_label``/``_segmentation``), in the image's voxel grid (same
shape and affine; for DICOM that of this converter's ``--mode 3d`` output). Masks hold class indices,
kept as they are; a binary mask stored as 0/255, 0/65535 or 0/type maximum becomes 0/1
(:mod:`data_prep.masks`). Without ``--masks`` the images are converted unlabelled.

A NIfTI source's spatial header (qform, sform, their codes, units) is kept on the converted image and
its label (for a 2D slice, shifted to the slice), so that ITK-based viewers and nibabel/MONAI place
them where they placed the source. A 4D NIfTI (several volumes) is skipped, naming its volume count.

``--mode 3d`` (default) writes NIfTI volumes; ``--mode 2d`` writes slices along the third voxel axis
as ``--format nifti`` (default; raw values, the slice's affine) or ``png`` (the slice transposed so
that MONAI loads it with the volume's axis order; values must fit 16-bit unless ``--window``).
``--window CENTER WIDTH`` clips to ``[C - W/2, C + W/2]`` and scales to 0..1 (0..255 in PNG).
The fixed-seed ``--split`` is by volume: slices of one scan never straddle sections.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

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
    run_job,
)
from ..io import DataPrepError, nifti_spatial_header
from ..masks import label_indices
from ..dicom_pixels import DECODING
from ..dicom_resample import regular_grid, resample_to_grid
from .dicom_series import LPS_TO_RAS, DicomSeries, find_series, read_slice, read_volume

__all__ = ["add_parser", "convert_dicom", "convert_nifti", "Volume", "find_nifti_volumes", "find_masks",
           "apply_window"]

MASK_SUFFIXES = ("_mask", "_seg", "_label", "_segmentation")


@dataclass(frozen=True)
class Volume:
    """A source scan: its name, shape, affine and how to read it whole or one slice at a time.

    ``affine`` is None for a DICOM series that no affine holds (uneven spacing, missing slices): it is then only
    written as 2D slices, each with its own ``slice_affines[k]``.
    """

    key: str
    shape: tuple[int, int, int]
    affine: np.ndarray | None
    sources: tuple[str, ...]
    read: Callable[[], np.ndarray]
    read_slice: Callable[[int], np.ndarray]
    header: Any = None  # a NIfTI source's header, whose spatial fields the outputs keep
    slice_affines: np.ndarray | None = None


class _VolumeCache:
    """Keeps the last few volumes read, since 2D mode asks for one slice after another."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str, read: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self.items:
            self.items[key] = read()
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        self.items.move_to_end(key)
        return self.items[key]


_CACHE = _VolumeCache()


def _nifti_name(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".nii", ".nii.gz")) and not path.name.startswith(".")


def _nifti_header(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for damaged or non-NIfTI files
        raise DataPrepError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 4:
        raise DataPrepError(f"{path}: a 4D NIfTI holding {shape[3]} volumes (shape {'x'.join(map(str, shape))}); "
                            "expected one 3D volume: extract the volume to convert (e.g. nibabel's "
                            "img.slicer[..., i])")
    if len(shape) != 3:
        raise DataPrepError(f"{path}: expected a 3D volume, got shape {img.shape}")
    return img, shape


def _read_nifti(path: Path) -> np.ndarray:
    img, shape = _nifti_header(path)
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # truncated data: nibabel/gzip raise several types
        raise DataPrepError(f"{path}: unreadable or truncated NIfTI data ({type(e).__name__}: {e})") from None
    arr = arr.reshape(shape)
    return arr.astype(np.float32) if arr.dtype == np.float64 else arr


def find_nifti_volumes(src: Path, exclude: Path | None = None) -> tuple[list[Volume], list[Skip]]:
    """Every readable 3D NIfTI under ``src`` but not under ``exclude``, named by its path (``/`` → ``_``)."""
    if not src.is_dir():
        raise DataPrepError(f"--src {src}: no such folder")
    volumes, skips = [], []
    exclude = exclude.resolve() if exclude is not None else None
    for path in sorted(p for p in src.rglob("*") if _is_nifti(p)):
        if exclude is not None and exclude in path.resolve().parents:
            continue
        try:
            img, shape = _nifti_header(path)
        except DataPrepError as e:
            skips.append(Skip((str(path),), str(e)))
            continue
        rel = path.relative_to(src)
        key = "_".join((*rel.parent.parts, _nifti_name(path)))
        cached = partial(_CACHE.get, str(path), partial(_read_nifti, path))
        volumes.append(Volume(key, shape, np.asarray(img.affine, dtype=np.float64), (str(path),), cached,
                              lambda k, c=cached: c()[..., k], header=img.header))
    rank = {k: i for i, k in enumerate(natural_sorted(v.key for v in volumes))}
    return sorted(volumes, key=lambda v: rank[v.key]), skips


def _dicom_volume(series: DicomSeries, resample: bool, notes: list[str]) -> Volume:
    """The series as a volume on its own grid, or (``resample`` and a tilted or irregular series) resampled onto a
    regular orthogonal one, or (an irregular series otherwise, only given in 2D mode) a stack of slices with their
    own affines; what was done to a series that is not regular goes into ``notes``."""
    sources = (str(series.files[0].parent),)
    geometry = series.geometry
    slice_of = partial(_dicom_slice, series)
    if resample and not geometry.orthogonal_regular:
        grid = regular_grid(geometry)
        notes.append(f"series {series.key} ({series.uid}): {grid.describe(geometry)}")
        cached = partial(_CACHE.get, f"dicom-resampled:{series.uid}",
                         lambda: resample_to_grid(read_volume(series), geometry, grid))
        return Volume(series.key, grid.shape, grid.affine_ras, sources, cached, lambda k: cached()[..., k])
    if not geometry.has_affine:
        notes.append(f"series {series.key} ({series.uid}): {geometry.describe()}; written as 2D slices, each with "
                     "its own exact affine")
        affines = np.stack([LPS_TO_RAS @ geometry.slice_affine_lps(k) for k in range(geometry.num_slices)])
        return Volume(series.key, series.shape, None, sources, partial(read_volume, series), slice_of,
                      slice_affines=affines)
    if geometry.tilted:
        notes.append(f"series {series.key} ({series.uid}): {geometry.describe()}; written with its exact sheared "
                     "affine (--resample-irregular resamples it onto an orthogonal grid)")
    return Volume(series.key, series.shape, series.affine, sources, partial(read_volume, series), slice_of)


def _dicom_slice(series: DicomSeries, k: int) -> np.ndarray:
    return read_slice(series.files[k], series.rows, series.columns)


def _volume_key(name: str, keys: set[str], suffix: str | None) -> str:
    if suffix is not None:
        return name[: -len(suffix)] if suffix and name.endswith(suffix) else name
    if name in keys:
        return name
    for s in MASK_SUFFIXES:
        if name.endswith(s) and name[: -len(s)] in keys:
            return name[: -len(s)]
    return name


def find_masks(mask_dir: Path, volumes: list[Volume], suffix: str | None) -> tuple[dict[str, Path], list[Skip]]:
    """Mask files of ``mask_dir`` by volume key; masks matching no volume are reported as skipped."""
    if not mask_dir.is_dir():
        raise DataPrepError(f"--masks {mask_dir}: no such folder")
    keys = {v.key for v in volumes}
    masks: dict[str, list[Path]] = {}
    skips: list[Skip] = []
    for path in sorted(p for p in mask_dir.rglob("*") if _is_nifti(p)):
        rel = path.relative_to(mask_dir)
        name = "_".join((*rel.parent.parts, _nifti_name(path)))
        base = _volume_key(name, keys, suffix)
        if base not in keys:
            skips.append(Skip((str(path),), "mask without image"))
            continue
        masks.setdefault(base, []).append(path)
    skips += [Skip(tuple(map(str, paths)), f"several masks for {base!r}") for base, paths in masks.items()
              if len(paths) > 1]
    return {base: paths[0] for base, paths in masks.items() if len(paths) == 1}, skips


def apply_window(arr: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Clip to ``[center - width/2, center + width/2]`` and scale to ``[0, 1]`` (float32); no window: unchanged."""
    if window is None:
        return arr
    center, width = window
    lo = center - width / 2
    return ((np.clip(arr.astype(np.float32), lo, lo + width) - lo) / width).astype(np.float32)


def _read_labels(mask: Path) -> np.ndarray:
    """A mask volume's class indices: decoded over the whole volume, so that every slice of a 0/255 mask maps
    255 to 1 even where a slice holds background only."""
    return label_indices(_read_nifti(mask), mask)


def _check_mask_geometry(volume: Volume, mask: Path) -> None:
    if volume.affine is None:
        raise DataPrepError(f"{mask}: the series {', '.join(volume.sources)} has no grid a mask could share (its "
                            "slices are unevenly spaced or missing); convert it with --resample-irregular and give "
                            "masks on that grid")
    img, shape = _nifti_header(mask)
    if shape != volume.shape:
        raise DataPrepError(f"{mask}: mask of shape {shape} for an image of shape {volume.shape} "
                            f"({', '.join(volume.sources)})")
    if not np.allclose(np.asarray(img.affine), volume.affine, atol=1e-3):
        raise DataPrepError(f"{mask}: mask affine differs from the image's ({', '.join(volume.sources)}); "
                            "masks must share the image's voxel grid")


def _load_3d(volume: Volume, mask: Path | None, window) -> Sample:
    image = apply_window(volume.read(), window)
    label = label_indices(_read_nifti(mask), mask) if mask is not None else None
    header = nifti_spatial_header(volume.header) if volume.header is not None else None
    return Sample(image, label, affine=volume.affine, header=header)


def _slice_affine(affine: np.ndarray, k: int) -> np.ndarray:
    shift = np.eye(4)
    shift[2, 3] = k
    return affine @ shift


def _load_2d(volume: Volume, k: int, mask: Path | None, window, fmt: str) -> Sample:
    image = apply_window(volume.read_slice(k), window)
    label = None
    if mask is not None:
        label = _CACHE.get(f"labels:{mask}", partial(_read_labels, mask))[..., k]
    if fmt == "png":
        if window is not None:
            image = np.round(image * 255).astype(np.uint8)
        elif np.array_equal(image, np.round(image)) and image.min() >= 0 and image.max() <= 65535:
            image = image.astype(np.uint16)
        else:
            raise DataPrepError(f"{', '.join(volume.sources)} slice {k}: values {image.min():g}..{image.max():g} "
                                "do not fit a 16-bit PNG; give --window CENTER WIDTH or use --format nifti")
        # PNG loads in MONAI as (width, height): transposing keeps the volume's (x, y) order
        return Sample(image.T, None if label is None else label.T)
    header = nifti_spatial_header(volume.header, slice_index=k) if volume.header is not None else None
    return Sample(image.astype(np.float32) if image.dtype == np.float64 else image, label,
                  affine=_slice_affine(volume.affine, k) if volume.slice_affines is None else volume.slice_affines[k],
                  header=header)


def _convert(name: str, args: argparse.Namespace, volumes: list[Volume], skips: list[Skip], notes: list[str],
             settings: dict | None = None) -> int:
    if args.window is not None and args.window[1] <= 0:
        raise DataPrepError(f"--window {args.window[0]:g} {args.window[1]:g}: the width must be positive")
    masks: dict[str, Path] = {}
    if args.masks is not None:
        masks, mask_skips = find_masks(args.masks, volumes, args.mask_suffix)
        skips += mask_skips
        kept = []
        for v in volumes:
            if v.key not in masks:
                skips.append(Skip(v.sources, "image without mask"))
                continue
            try:
                _check_mask_geometry(v, masks[v.key])
            except DataPrepError as e:
                skips.append(Skip((*v.sources, str(masks[v.key])), str(e)))
                continue
            kept.append(v)
        volumes = kept
    volumes = limit_items(volumes, args.limit)
    sections = assign_sections([v.key for v in volumes], args.split, args.seed)
    window = tuple(args.window) if args.window is not None else None
    pairs = []
    for v in volumes:
        mask = masks.get(v.key)
        if args.mode == "3d":
            pairs.append(Pair(v.key, sections[v.key], partial(_load_3d, v, mask, window),
                              (*v.sources, *([str(mask)] if mask else [])), has_label=mask is not None))
            continue
        for k in range(v.shape[2]):
            pairs.append(Pair(f"{v.key}/{v.key}_{k:04d}", sections[v.key], partial(_load_2d, v, k, mask, window,
                                                                                     args.format),
                              (f"{v.sources[0]} slice {k}", *([str(mask)] if mask else [])),
                              has_label=mask is not None))
    fmt = "nifti" if args.mode == "3d" else args.format
    job = ConversionJob(name, args.src, pairs, skips, image_format=fmt, label_format=fmt, notes=notes,
                        settings={"mode": args.mode, "format": fmt, "window": list(window) if window else None,
                                  **(settings or {})},
                        description=f"{name} volumes from {args.src} ({args.mode})")
    return run_job(job, args)


def convert_dicom(args: argparse.Namespace) -> int:
    """``dicom``: series under ``--src`` → NIfTI volumes or 2D slices."""
    resample = bool(getattr(args, "resample_irregular", False))
    # slices written one by one need no common grid: each gets its own exact affine
    series, skips = find_series(args.src, allow_irregular=resample or args.mode == "2d")
    notes = [f"{len(series)} series found under {args.src}"]
    volumes = []
    for s in series:
        try:
            volumes.append(_dicom_volume(s, resample, notes))
        except DataPrepError as e:  # a grid the smallest gap would make too large
            skips.append(Skip((str(s.files[0]), f"and {len(s.files) - 1} more"), f"series {s.uid}: {e}"))
    # the decoding is part of the files' contents: a conversion by an older decoding is not silently extended
    settings = {"decoding": DECODING, **({"resample_irregular": True} if resample else {})}
    return _convert("dicom", args, volumes, skips, notes, settings)


def convert_nifti(args: argparse.Namespace) -> int:
    """``nifti``: volumes under ``--src`` → NIfTI volumes or 2D slices."""
    volumes, skips = find_nifti_volumes(args.src, exclude=args.masks)
    return _convert("nifti", args, volumes, skips, [f"{len(volumes)} volumes found under {args.src}"])


def _add_volume_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, split=True, threshold=False)
    p.add_argument("--masks", type=Path, default=None, help="folder of NIfTI label volumes matched by name")
    p.add_argument("--mask-suffix", default=None, help="suffix of mask names, e.g. _seg (default: detected)")
    p.add_argument("--mode", choices=("2d", "3d"), default="3d", help="3D volumes or 2D slices (default 3d)")
    p.add_argument("--format", choices=("nifti", "png"), default="nifti", help="2D slice format (default nifti)")
    p.add_argument("--window", type=float, nargs=2, default=None, metavar=("CENTER", "WIDTH"),
                   help="intensity window, e.g. -600 1500 for lung CT")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``dicom`` and ``nifti``."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("dicom", help="DICOM series (3D NIfTI or 2D slices)", description=__doc__,
                              formatter_class=fmt)
    _add_volume_arguments(p)
    p.add_argument("--resample-irregular", action="store_true",
                   help="resample series with gantry tilt, uneven spacing or missing slices onto a regular "
                        "orthogonal grid (default: tilted series keep their sheared affine; the others are written "
                        "as 2D slices with their own affines in --mode 2d, skipped in --mode 3d)")
    p.set_defaults(func=convert_dicom)
    p = subparsers.add_parser("nifti", help="NIfTI volumes with masks (3D or 2D slices)", description=__doc__,
                              formatter_class=fmt)
    _add_volume_arguments(p)
    p.set_defaults(func=convert_nifti)
