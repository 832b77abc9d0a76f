"""Per-case results of a prediction run: label sizes in physical units, and the summary CSV/JSON files."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_path
from .segments import Segment

__all__ = ["CaseResult", "PredictionReport", "mask_measures", "write_summary", "SUMMARY_CSV", "SUMMARY_JSON"]

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"


def _element_size(affine: np.ndarray, dims: int) -> float:
    """Area (``dims`` 2) or volume (3) of one voxel: ``sqrt(det(J^T J))`` of the affine's first ``dims`` columns,
    which holds for oblique and anisotropic grids alike."""
    jac = np.asarray(affine, dtype=np.float64)[:-1, :dims]
    return float(np.sqrt(abs(np.linalg.det(jac.T @ jac))))


def mask_measures(mask: np.ndarray, affine: np.ndarray | None, segments: Sequence[Segment],
                  slice_extents: Sequence[float] | None = None) -> dict[str, dict]:
    """Size of each segment in a label map.

    A mask with two spatial axes, or three whose last has one slice (a single DICOM slice), is measured as an
    area in mm²; otherwise as a volume in mL (1 mL = 1000 mm³). Spacing comes from ``affine`` (mm per voxel,
    as NIfTI and DICOM give it).

    Args:
        mask: the label map, spatial axes only (no channel axis), values 0 (background) and segment values.
        affine: voxel-to-world affine in mm, ``(n + 1, n + 1)`` for ``n >= 2`` spatial axes; None when the input
            carries no physical spacing (PNG, JPG...): only voxel counts are given.
        segments: the labels to measure.
        slice_extents: for a 3D stack whose slices are unevenly spaced (no affine holds it): each slice's thickness
            along its normal, mm; the volume is then the sum over slices of the in-plane area (from the affine's
            first two columns) times that thickness.

    Returns:
        segment name → ``{"voxels": int, "area_mm2": float | None, "volume_ml": float | None}``; the measure that
        does not apply to the mask's dimensionality is None, as both are without an affine.
    """
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3):
        raise ValueError(f"mask_measures: expected a 2D or 3D label map, got shape {arr.shape}")
    planar = arr.ndim == 2 or arr.shape[-1] == 1
    weights = None
    if slice_extents is not None and not planar:
        extents = np.asarray(slice_extents, dtype=np.float64)
        if arr.ndim != 3 or extents.shape != (arr.shape[-1],):
            raise ValueError(f"mask_measures: {extents.shape[0]} slice extents for a mask of shape {arr.shape}")
        weights = None if affine is None else _element_size(affine, 2) * extents
    element = None if affine is None else _element_size(affine, 2 if planar else 3)
    out = {}
    for seg in segments:
        hit = arr == seg.value
        n = int(np.count_nonzero(hit))
        if weights is not None:
            physical = float(hit.reshape(-1, arr.shape[-1]).sum(axis=0) @ weights)
        else:
            physical = None if element is None else n * element
        out[seg.name] = {"voxels": n,
                         "area_mm2": physical if planar else None,
                         "volume_ml": None if planar or physical is None else physical / 1000.0}
    return out


@dataclass
class CaseResult:
    """The outcome of one case.

    Attributes:
        case: the case's name (outputs are ``<case>_seg.*``).
        input: the input file or DICOM series folder.
        status: ``ok``, ``failed`` or ``skipped`` (outputs exist and overwriting was not asked).
        outputs: files written, in the output folder.
        error: why it failed or was skipped.
        series_uid: DICOM only: the input series' ``SeriesInstanceUID``.
        measures: see :func:`mask_measures`.
        notes: what was done to the input and why (a DICOM series predicted slice by slice or resampled).
    """

    case: str
    input: str
    status: str
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    series_uid: str | None = None
    measures: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class PredictionReport:
    """All cases of a run, and where its summary files are.

    Attributes:
        cases: one result per case, in the order they ran.
        summary_csv: the CSV summary (one row per case).
        summary_json: the JSON summary (the run's settings and every case).
    """

    cases: list[CaseResult]
    summary_csv: Path | None = None
    summary_json: Path | None = None

    def with_status(self, status: str) -> list[CaseResult]:
        """The cases with ``status`` (``ok``, ``failed``, ``skipped``)."""
        return [c for c in self.cases if c.status == status]

    @property
    def ok(self) -> bool:
        """True when no case failed (skipped cases are not failures)."""
        return not self.with_status("failed")

    def describe(self) -> str:
        """A few lines for the end of a run: counts, then each failed and skipped case with its reason."""
        lines = [f"{len(self.with_status('ok'))} succeeded, {len(self.with_status('failed'))} failed, "
                 f"{len(self.with_status('skipped'))} skipped (of {len(self.cases)})"]
        lines += [f"  FAILED  {c.case}: {c.error}" for c in self.with_status("failed")]
        lines += [f"  SKIPPED {c.case}: {c.error}" for c in self.with_status("skipped")]
        lines += [f"  NOTE    {c.case}: {note}" for c in self.cases for note in c.notes]
        if self.summary_csv is not None:
            lines.append(f"summary: {self.summary_csv} and {self.summary_json}")
        return "\n".join(lines)


def _column(name: str) -> str:
    return name.replace(" ", "_")


def write_summary(report: PredictionReport, output_dir: str | os.PathLike, segments: Sequence[Segment],
                  run_info: dict | None = None) -> PredictionReport:
    """Write ``summary.csv`` and ``summary.json`` for the run into ``output_dir`` (replacing a previous run's).

    The CSV has one row per case: ``case, input, status, output`` (files separated by ``;``), then per segment
    ``<name>_voxels, <name>_area_mm2, <name>_volume_ml`` (spaces in names become ``_``), then ``error`` and ``notes``
    (separated by `` | ``).

    Args:
        report: the run's results; its summary paths are set.
        output_dir: the run's output folder.
        segments: the bundle's segments, in column order.
        run_info: settings recorded in the JSON (bundle, checkpoint, input...).
    """
    out = Path(output_dir)
    header = ["case", "input", "status", "output"]
    for seg in segments:
        header += [f"{_column(seg.name)}_voxels", f"{_column(seg.name)}_area_mm2", f"{_column(seg.name)}_volume_ml"]
    header += ["error", "notes"]
    csv_path, json_path = out / SUMMARY_CSV, out / SUMMARY_JSON
    with atomic_path(csv_path, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for c in report.cases:
            row = [c.case, c.input, c.status, ";".join(c.outputs)]
            for seg in segments:
                m = c.measures.get(seg.name, {})
                row += ["" if m.get(k) is None else (f"{m[k]:.6g}" if isinstance(m[k], float) else m[k])
                        for k in ("voxels", "area_mm2", "volume_ml")]
            row += [c.error, " | ".join(c.notes)]
            writer.writerow(row)
    counts = {s: len(report.with_status(s)) for s in ("ok", "failed", "skipped")}
    doc = {**(run_info or {}), "counts": counts, "cases": [asdict(c) for c in report.cases]}
    with atomic_path(json_path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    report.summary_csv, report.summary_json = csv_path, json_path
    return report
