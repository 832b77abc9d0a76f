"""DICOM series: find them in a folder tree, order their slices, check them, read them.

Slices are grouped by ``SeriesInstanceUID``, then placed by :func:`data_prep.dicom_geometry.analyze_series` (ordered
along the slice normal, or by ``InstanceNumber``; regular, gantry-tilted or irregular) and decoded by
:func:`data_prep.dicom_pixels.decode_pixels` (Modality LUT, MONOCHROME1 inverted, no VOI LUT): the same geometry and
decoding as ``python -m dale_monai predict``. Volumes are ``(columns, rows, slices)`` so that the first voxel axis
runs along a DICOM row, and the affine maps voxels to RAS millimetres (the NIfTI convention; DICOM positions are
LPS). A gantry-tilted series gets its exact, sheared affine. A series no affine holds (uneven spacing, missing
slices, positions off a line) is rejected naming the cause, unless ``allow_irregular`` (its :attr:`DicomSeries.affine`
then raises, and it must be resampled: :mod:`data_prep.dicom_resample`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..convert import Skip, natural_sorted
from ..dicom_geometry import LPS_TO_RAS, GeometryError, SeriesGeometry, analyze_series
from ..dicom_pixels import decode_pixels
from ..io import DataPrepError

__all__ = ["DicomSeries", "find_series", "read_slice", "read_volume", "LPS_TO_RAS"]


@dataclass(frozen=True)
class DicomSeries:
    """One ordered, checked series.

    Args:
        uid: ``SeriesInstanceUID``.
        key: output name, from the series' folder (safe characters only).
        files: slice files in slice order (:attr:`geometry`'s).
        geometry: where the slices lie (:func:`~data_prep.dicom_geometry.analyze_series`).
    """

    uid: str
    key: str
    files: tuple[Path, ...]
    geometry: SeriesGeometry

    @property
    def rows(self) -> int:
        return self.geometry.rows

    @property
    def columns(self) -> int:
        return self.geometry.columns

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.columns, self.rows, len(self.files))

    @property
    def affine(self) -> np.ndarray:
        """Voxel ``(column, row, slice)`` → RAS mm (sheared for a gantry-tilted series).

        Raises:
            GeometryError: when no affine holds the series (found only with ``allow_irregular``).
        """
        return self.geometry.affine_ras()


def _header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom raises many types for non-DICOM or damaged headers; all mean "skip it"
        return None


def _order(uid: str, items: list[tuple[Path, object]], where: str) -> tuple[list[Path], SeriesGeometry]:
    """Order a series' slices; raises GeometryError (a DataPrepError) for slices that form no stack."""
    try:
        geometry = analyze_series([ds for _, ds in items], [p.name for p, _ in items])
    except GeometryError as e:
        raise GeometryError(f"series {uid} in {where}: {e}") from None
    return [items[i][0] for i in geometry.order], geometry


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "series"


def find_series(src: Path, allow_irregular: bool = False) -> tuple[list[DicomSeries], list[Skip]]:
    """Every DICOM series under ``src``; files that are not DICOM images and rejected series are skipped.

    Args:
        src: the folder to search (recursively).
        allow_irregular: also return series that no affine holds (uneven spacing, missing slices, positions off a
            line), for the caller to resample; by default they are skipped with the cause.

    Raises:
        DataPrepError: ``src`` is not a folder.
    """
    if not src.is_dir():
        raise DataPrepError(f"--src {src}: no such folder")
    skips: list[Skip] = []
    groups: dict[str, list[tuple[Path, object]]] = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.name.upper() == "DICOMDIR":
            continue
        ds = _header(path)
        if ds is None:
            skips.append(Skip((str(path),), "not a DICOM file, or its header is unreadable"))
            continue
        if "Rows" not in ds or "Columns" not in ds or "SeriesInstanceUID" not in ds:
            skips.append(Skip((str(path),), "DICOM file without an image (no Rows/Columns/SeriesInstanceUID)"))
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        greyscale = photometric in ("MONOCHROME1", "MONOCHROME2")
        if frames > 1 or int(ds.get("SamplesPerPixel", 1)) != 1 or not greyscale:
            skips.append(Skip((str(path),), f"multi-frame or colour DICOM (NumberOfFrames {frames}, "
                                            f"SamplesPerPixel {ds.get('SamplesPerPixel', 1)}, PhotometricInterpretation "
                                            f"{photometric}) is not supported"))
            continue
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    found: list[tuple[str, object, DicomSeries]] = []
    for uid, items in groups.items():
        parents = {p.parent for p, _ in items}
        parent = parents.pop() if len(parents) == 1 else Path(*_common_parts([p for p, _ in items]))
        rel = parent.relative_to(src) if src in parent.parents else Path(src.name)
        named = (str(items[0][0]),) if len(items) == 1 else (str(items[0][0]), f"and {len(items) - 1} more")
        try:
            files, geometry = _order(uid, items, str(parent))
        except DataPrepError as e:
            skips.append(Skip(named, str(e)))
            continue
        if not geometry.has_affine and not allow_irregular:
            skips.append(Skip(named, f"series {uid} in {parent}: no affine holds its slices: {geometry.describe()} "
                                     "(data_prep dicom --resample-irregular resamples it onto a regular grid; "
                                     "--mode 2d writes its slices as they are)"))
            continue
        base = _safe_name("_".join(rel.parts))
        found.append((base, items[0][1].get("SeriesNumber"), DicomSeries(uid, base, tuple(files), geometry)))
    # several series in one folder: told apart by SeriesNumber when that is unique, else by UID
    series_list = []
    for base, number, series in found:
        twins = [n for b, n, _ in found if b == base]
        if len(twins) > 1:
            unique = number is not None and twins.count(number) == 1
            key = f"{base}_s{_safe_name(str(number))}" if unique else f"{base}_{_safe_name(series.uid[-12:])}"
            series = DicomSeries(series.uid, key, series.files, series.geometry)
        series_list.append(series)
    order = {k: i for i, k in enumerate(natural_sorted(s.key for s in series_list))}
    return sorted(series_list, key=lambda s: order[s.key]), skips


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    parts = [p.parent.parts for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return tuple(common)


def read_slice(path: Path, rows: int, columns: int) -> np.ndarray:
    """One slice as float32 ``(columns, rows)``, decoded by :func:`~data_prep.dicom_pixels.decode_pixels`.

    Raises:
        DataPrepError: unreadable or undecodable file, or pixel data of another size.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # damaged files: pydicom raises several types
        raise DataPrepError(f"{path}: unreadable DICOM file ({type(e).__name__}: {e})") from None
    pixels = decode_pixels(ds, path)
    if pixels.shape != (rows, columns):
        raise DataPrepError(f"{path}: pixel data of shape {pixels.shape}, expected {rows}x{columns}")
    return pixels.T


def read_volume(series: DicomSeries) -> np.ndarray:
    """The series as ``(columns, rows, slices)`` in slice order: int16 when the decoded values are integers that
    fit, else float32."""
    vol = np.stack([read_slice(p, series.rows, series.columns) for p in series.files], axis=-1)
    if np.array_equal(vol, np.round(vol)) and vol.min() >= -32768 and vol.max() <= 32767:
        return vol.astype(np.int16)
    return vol
