"""The cases of a prediction run: image files, NIfTI files and DICOM series grouped by SeriesInstanceUID.

A folder may hold image and NIfTI files (its top level) and DICOM files (anywhere below it, in any layout): the
DICOM files are grouped by ``SeriesInstanceUID``, so a folder mixing several series gives one case per series
and no two series are ever stacked into one volume. A DICOM file that cannot be read becomes a failed case that
the run reports, instead of stopping the run.

Each series' slices are placed by :func:`data_prep.dicom_geometry.analyze_series`, the same analysis
``python -m data_prep dicom`` uses: the case holds the geometry (regular, gantry-tilted or irregular) and its files in
slice order, and a series whose slices form no stack (mixed sizes, orientations or pixel spacings, two slices at one
position, no order) is a failed case naming the cause before anything runs.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from data_prep.dicom_geometry import GeometryError, SeriesGeometry, analyze_series

from dale_monai.bundle import INPUT_SUFFIXES, _is_dicom, _suffix

from .files import safe_name

__all__ = ["Case", "discover_cases", "IMAGE_KINDS", "NIFTI_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: kinds of case: 2D image files (no physical spacing), NIfTI files, DICOM series
IMAGE_KINDS = ("image", "nifti", "dicom")
# DICOM objects that are not images to segment (earlier SEG outputs, reports, DICOMDIR)
_NOT_IMAGES = {"SEG", "SR", "RTSTRUCT", "PR", "KO", "DOC", "REG", "RTPLAN", "RTDOSE"}
_DICOMDIR = "1.2.840.10008.1.3.10"
_TAGS = ["SeriesInstanceUID", "SeriesNumber", "Modality", "SOPClassUID", "Rows", "Columns", "ImagePositionPatient",
         "ImageOrientationPatient", "PixelSpacing", "InstanceNumber", "SpacingBetweenSlices", "SliceThickness",
         "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames"]


@dataclass(frozen=True)
class Case:
    """One input to predict.

    Attributes:
        name: unique within the run and safe as a file name; outputs are ``<name>_seg.*``.
        source: the file, or for DICOM the folder holding the series (as the user will recognise it).
        kind: ``image`` (PNG/JPG/BMP/TIFF), ``nifti`` or ``dicom``.
        files: DICOM only: the series' instance files, in slice order (``geometry``'s).
        series_uid: DICOM only: the series' ``SeriesInstanceUID``.
        geometry: DICOM only: where the slices lie (:class:`~data_prep.dicom_geometry.SeriesGeometry`).
        error: why the input cannot be predicted (an unreadable DICOM file, slices that form no stack); such a case
            is reported as failed.
        volume: NIfTI only: the index along the 4th axis of a 4D file predicted volume by volume.
    """

    name: str
    source: str
    kind: str
    files: tuple[str, ...] = field(default=())
    series_uid: str | None = None
    geometry: SeriesGeometry | None = field(default=None, compare=False, repr=False)
    error: str | None = None
    volume: int | None = None


def _read_header(path: Path):
    from pydicom import dcmread

    return dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)


def _series(headers: list, paths: list[Path]) -> tuple[tuple[str, ...], SeriesGeometry | None, str | None]:
    """The series' files in slice order and its geometry, or (files, None, why it cannot be predicted)."""
    for h, p in zip(headers, paths):
        samples, frames = int(h.get("SamplesPerPixel", 1) or 1), int(h.get("NumberOfFrames", 1) or 1)
        photometric = str(h.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        if samples != 1 or frames != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            return (tuple(str(q) for q in sorted(paths)), None,
                    f"{p}: only single-frame greyscale slices are supported (SamplesPerPixel {samples}, "
                    f"NumberOfFrames {frames}, PhotometricInterpretation {photometric})")
    try:
        geometry = analyze_series(headers, [p.name for p in paths])
    except GeometryError as e:
        return tuple(str(q) for q in sorted(paths)), None, f"{e}; its slices cannot be stacked"
    return tuple(str(paths[i]) for i in geometry.order), geometry, None


def _dicom_cases(files: list[Path], root: Path) -> list[Case]:
    """Group DICOM files into series; a file pydicom cannot read becomes an error case."""
    groups: dict[str, list[Path]] = defaultdict(list)
    headers: dict[str, object] = {}
    slice_headers: dict[str, list] = defaultdict(list)
    out: list[Case] = []
    for path in files:
        try:
            ds = _read_header(path)
        except Exception as e:  # pydicom raises several types for damaged files
            out.append(Case(safe_name(path.stem), str(path), "dicom", files=(str(path),),
                            error=f"{path}: not a readable DICOM file ({type(e).__name__}: {e})"))
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
        if not uid or sop_class == _DICOMDIR or str(ds.get("Modality", "")).upper() in _NOT_IMAGES:
            continue
        groups[uid].append(path)
        slice_headers[uid].append(ds)
        headers.setdefault(uid, ds)
    # a series is named after its folder; series sharing a folder add their series number (else a UID suffix)
    by_folder: dict[Path, list[str]] = defaultdict(list)
    for uid, paths in groups.items():
        by_folder[min(paths).parent].append(uid)
    for folder, uids in by_folder.items():
        rel = folder.relative_to(root) if folder != root and root in folder.parents else Path(folder.name)
        base = safe_name("_".join(rel.parts) if rel.parts else folder.name, fallback="series")
        for uid in sorted(uids, key=lambda u: (str(headers[u].get("SeriesNumber", "")), u)):
            name = base
            if len(uids) > 1:
                number = headers[uid].get("SeriesNumber")
                name = f"{base}_series{number}" if number not in (None, "") else f"{base}_{safe_name(uid[-12:])}"
            files, geometry, problem = _series(slice_headers[uid], groups[uid])
            out.append(Case(name, str(folder), "dicom", files=files, series_uid=uid, geometry=geometry,
                            error=None if problem is None else f"DICOM series {uid} in {folder}: {problem}"))
    return out


def _unique(cases: list[Case]) -> list[Case]:
    """Number repeated names (``a.png`` and ``a.nii.gz`` are both ``a``): ``a``, ``a_2``..."""
    used: set[str] = set()
    out = []
    for case in cases:
        name, k = case.name, 1
        while name in used:
            k += 1
            name = f"{case.name}_{k}"
        used.add(name)
        out.append(replace(case, name=name))
    return out


def _file_case(path: Path) -> Case | None:
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return Case(safe_name(path.name[: -len(suffix)]), str(path), "nifti")
    if suffix in INPUT_SUFFIXES and suffix != ".dcm":
        return Case(safe_name(path.stem), str(path), "image")
    return None


def discover_cases(path: str | os.PathLike) -> list[Case]:
    """The cases to predict under ``path``.

    - a PNG/JPG/BMP/TIFF or NIfTI file: one case;
    - a DICOM file: the case of its series (that file alone);
    - a folder: its top-level image and NIfTI files, and every DICOM series found below it (files grouped by
      ``SeriesInstanceUID`` wherever they lie). Hidden files and folders are ignored, as are DICOM objects that
      are not images (SEG, SR, DICOMDIR...).

    Args:
        path: a file or a folder.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: for a file of an unsupported kind, or a folder without any input.
    """
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"input {root} does not exist")
    accepted = ", ".join(s for s in INPUT_SUFFIXES if s != ".dcm")
    if root.is_file():
        case = _file_case(root)
        if case is not None:
            return [case]
        if _is_dicom(root):
            cases = _dicom_cases([root], root.parent)
            if cases:
                return cases
            raise ValueError(f"input {root}: a DICOM object that is not an image to segment (SEG, SR, DICOMDIR...)")
        raise ValueError(f"input {root}: unsupported file; expected one ending in {accepted}, or a DICOM file")
    cases: list[Case] = []
    for p in sorted(root.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            case = _file_case(p)
            if case is not None:
                cases.append(case)
    dicom_files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            p = Path(folder) / n
            if not n.startswith(".") and _file_case(p) is None and _is_dicom(p):
                dicom_files.append(p)
    cases += _dicom_cases(dicom_files, root)
    if not cases:
        raise ValueError(f"input {root}: no inputs found (files ending in {accepted} at its top level, or DICOM "
                         "series anywhere below it)")
    return _unique(cases)
