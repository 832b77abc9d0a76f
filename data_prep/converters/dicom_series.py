"""DICOM series: find them in a folder tree, order their slices, check them, read them.

Slices are grouped by ``SeriesInstanceUID`` and ordered by ``ImagePositionPatient`` projected on
the slice normal (from ``ImageOrientationPatient``), falling back to ``InstanceNumber``. A series
with slices of mixed sizes or orientations, duplicate positions or a gap in positions (missing
slices) is rejected with a message naming it. Volumes are ``(columns, rows, slices)`` so that the
first voxel axis runs along a DICOM row, and the affine maps voxels to RAS millimetres (the
NIfTI convention; DICOM positions are LPS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..convert import Skip, natural_sorted
from ..io import DataPrepError

__all__ = ["DicomSeries", "find_series", "read_slice", "read_volume"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class DicomSeries:
    """One ordered, checked series.

    Args:
        uid: ``SeriesInstanceUID``.
        key: output name, from the series' folder (safe characters only).
        files: slice files in order along the slice normal.
        rows: ``Rows``.
        columns: ``Columns``.
        affine: voxel ``(column, row, slice)`` → RAS mm.
    """

    uid: str
    key: str
    files: tuple[Path, ...]
    rows: int
    columns: int
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.columns, self.rows, len(self.files))


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) else None


def _header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom raises many types for non-DICOM or damaged headers; all mean "skip it"
        return None


def _order(uid: str, items: list[tuple[Path, object]], where: str) -> tuple[list[Path], np.ndarray]:
    """Order a series' slices and build its affine; raises DataPrepError for an inconsistent series."""
    first = items[0][1]
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in items}
    if len(sizes) > 1:
        examples = {}
        for p, ds in items:
            examples.setdefault((int(ds.Rows), int(ds.Columns)), p.name)
        shown = ", ".join(f"{r}x{c} ({name})" for (r, c), name in examples.items())
        raise DataPrepError(f"series {uid} in {where}: slices of mixed sizes: {shown}")
    spacing = _floats(first.get("PixelSpacing", [1.0, 1.0]), 2)
    spacing = np.ones(2) if spacing is None else spacing
    orientations = [_floats(ds.get("ImageOrientationPatient"), 6) for _, ds in items]
    positions = [_floats(ds.get("ImagePositionPatient"), 3) for _, ds in items]
    if all(o is not None for o in orientations) and all(p is not None for p in positions):
        if any(not np.allclose(o, orientations[0], atol=1e-4) for o in orientations):
            raise DataPrepError(f"series {uid} in {where}: slices of mixed orientations")
        row_dir, col_dir = orientations[0][:3], orientations[0][3:]
        normal = np.cross(row_dir, col_dir)
        along = np.asarray([float(np.dot(p, normal)) for p in positions])
        order = np.argsort(along, kind="stable")
        files = [items[i][0] for i in order]
        along, pos = along[order], [positions[i] for i in order]
        if len(files) > 1:
            gaps = np.diff(along)
            step = float(np.median(gaps))
            if gaps.min() < 1e-3:
                i = int(np.argmin(gaps))
                raise DataPrepError(f"series {uid} in {where}: {files[i].name} and {files[i + 1].name} share "
                                    f"one slice position ({along[i]:.3f} mm)")
            if gaps.max() > 1.5 * step:
                i = int(np.argmax(gaps))
                raise DataPrepError(
                    f"series {uid} in {where}: missing slices between {files[i].name} and {files[i + 1].name} "
                    f"(gap {gaps[i]:.2f} mm, slice spacing {step:.2f} mm)"
                )
            slice_vec = (pos[-1] - pos[0]) / (len(files) - 1)
        else:
            thickness = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
            slice_vec = normal * thickness
        lps = np.eye(4)
        lps[:3, 0] = row_dir * spacing[1]  # along a row: the column index grows, spaced by PixelSpacing[1]
        lps[:3, 1] = col_dir * spacing[0]
        lps[:3, 2] = slice_vec
        lps[:3, 3] = pos[0]
        return files, LPS_TO_RAS @ lps
    numbers = [ds.get("InstanceNumber") for _, ds in items]
    if any(n is None for n in numbers):
        raise DataPrepError(f"series {uid} in {where}: neither ImagePositionPatient nor InstanceNumber on every "
                            "slice, so the slices cannot be ordered")
    numbers = [int(n) for n in numbers]
    order = np.argsort(numbers, kind="stable")
    files, numbers = [items[i][0] for i in order], [numbers[i] for i in order]
    for a, b, fa, fb in zip(numbers, numbers[1:], files, files[1:]):
        if b == a:
            raise DataPrepError(f"series {uid} in {where}: {fa.name} and {fb.name} share InstanceNumber {a}")
        if b != a + 1:
            raise DataPrepError(f"series {uid} in {where}: missing slices (InstanceNumber jumps from {a} in "
                                f"{fa.name} to {b} in {fb.name})")
    thickness = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
    return files, LPS_TO_RAS @ np.diag([spacing[1], spacing[0], thickness, 1.0])


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "series"


def find_series(src: Path) -> tuple[list[DicomSeries], list[Skip]]:
    """Every DICOM series under ``src``; files that are not DICOM images and rejected series are skipped.

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
        if frames > 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
            skips.append(Skip((str(path),), f"multi-frame or colour DICOM (NumberOfFrames {frames}, "
                                            f"SamplesPerPixel {ds.get('SamplesPerPixel', 1)}) is not supported"))
            continue
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    found: list[tuple[str, object, DicomSeries]] = []
    for uid, items in groups.items():
        parents = {p.parent for p, _ in items}
        parent = parents.pop() if len(parents) == 1 else Path(*_common_parts([p for p, _ in items]))
        rel = parent.relative_to(src) if src in parent.parents else Path(src.name)
        try:
            files, affine = _order(uid, items, str(parent))
        except DataPrepError as e:
            named = (str(items[0][0]),) if len(items) == 1 else (str(items[0][0]), f"and {len(items) - 1} more")
            skips.append(Skip(named, str(e)))
            continue
        first = items[0][1]
        base = _safe_name("_".join(rel.parts))
        found.append((base, first.get("SeriesNumber"),
                      DicomSeries(uid, base, tuple(files), int(first.Rows), int(first.Columns), affine)))
    # several series in one folder: told apart by SeriesNumber when that is unique, else by UID
    series_list = []
    for base, number, series in found:
        twins = [n for b, n, _ in found if b == base]
        if len(twins) > 1:
            unique = number is not None and twins.count(number) == 1
            key = f"{base}_s{_safe_name(str(number))}" if unique else f"{base}_{_safe_name(series.uid[-12:])}"
            series = DicomSeries(series.uid, key, series.files, series.rows, series.columns, series.affine)
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
    """One slice as float32 ``(columns, rows)`` with ``RescaleSlope``/``RescaleIntercept`` applied."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        pixels = np.asarray(ds.pixel_array)
    except Exception as e:  # truncated or undecodable pixel data: pydicom raises several types
        raise DataPrepError(f"{path}: cannot decode its pixel data ({type(e).__name__}: {e})") from None
    if pixels.shape != (rows, columns):
        raise DataPrepError(f"{path}: pixel data of shape {pixels.shape}, expected {rows}x{columns}")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return (pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)).T


def read_volume(series: DicomSeries) -> np.ndarray:
    """The series as ``(columns, rows, slices)``: int16 when the rescaled values are integers that fit, else float32."""
    vol = np.stack([read_slice(p, series.rows, series.columns) for p in series.files], axis=-1)
    if np.array_equal(vol, np.round(vol)) and vol.min() >= -32768 and vol.max() <= 32767:
        return vol.astype(np.int16)
    return vol
