"""A DICOM series made ready for a bundle: decoded and placed exactly as ``python -m data_prep dicom`` does, on a grid
the bundle can predict on.

The series is decoded by :func:`data_prep.dicom_pixels.decode_pixels` (Modality LUT, MONOCHROME1 inverted, no VOI
LUT: the decoding of the training data) and staged as a NIfTI volume that the bundle's own pipeline loads. Its
geometry (:func:`data_prep.dicom_geometry.analyze_series`) decides the grid:

* ``exact``: a regular series, or a gantry-tilted one for a 2D bundle: the series' own grid (sheared when tilted),
  the mask written on it, the SEG's frames taken by geometry;
* ``stack``: a 2D bundle on a series no affine holds (uneven spacing, missing slices, positions off a line): the
  slices as they are, predicted one by one; the SEG's frames go back to their slices by index. No NIfTI mask is
  written (no affine would place its slices) and the volume is measured with each slice's own thickness;
* ``resampled``: a 3D bundle on a tilted or irregular series: resampled onto a regular orthogonal grid
  (:mod:`data_prep.dicom_resample`), the mask written on that grid, the SEG's frames taken by nearest neighbour.

Every case that is not ``exact`` on an orthogonal grid gets a note saying what was done and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.converters.dicom_series import DicomSeries, read_volume
from data_prep.dicom_geometry import LPS_TO_RAS, SeriesGeometry
from data_prep.dicom_resample import regular_grid, resample_to_grid

from .inputs import Case

__all__ = ["StagedSeries", "series_plan", "stage_series", "STAGING_MODES"]

#: how a series is given to a bundle (see the module docstring)
STAGING_MODES = ("exact", "stack", "resampled")


@dataclass(frozen=True)
class StagedSeries:
    """A series staged for a bundle.

    Attributes:
        path: the NIfTI volume given to the bundle's pipeline.
        mode: ``exact``, ``stack`` or ``resampled``.
        affine_lps: voxel → LPS of the staged grid (for ``stack`` a nominal one, exact in-plane only).
        frames_by: how the SEG takes each instance's frame from the mask
            (:func:`~dale_monai.predict.dicom_seg.instance_frames`).
        slice_extents: ``stack`` only: each slice's thickness along the normal, mm, for measuring volumes.
        write_nifti: whether a NIfTI mask holds the prediction faithfully (not for ``stack``).
        notes: what was done to the series and why, for the summary.
    """

    path: Path
    mode: str
    affine_lps: np.ndarray
    frames_by: str
    slice_extents: np.ndarray | None
    write_nifti: bool
    notes: tuple[str, ...]


def series_plan(geometry: SeriesGeometry, spatial_dims: int) -> str:
    """``exact``, ``stack`` or ``resampled`` for a series of ``geometry`` and a bundle of ``spatial_dims``."""
    if geometry.orthogonal_regular or (spatial_dims == 2 and geometry.has_affine):
        return "exact"
    return "stack" if spatial_dims == 2 else "resampled"


def _save(path: Path, volume: np.ndarray, affine_lps: np.ndarray) -> Path:
    import nibabel as nib

    # nibabel stores the affine as the sform (qform unset), which holds a sheared affine too
    nib.save(nib.Nifti1Image(volume, LPS_TO_RAS @ affine_lps), str(path))
    return path


def stage_series(case: Case, folder: Path, spatial_dims: int) -> StagedSeries:
    """Decode ``case``'s series and write it into ``folder`` on the grid :func:`series_plan` chooses.

    Args:
        case: a DICOM case from :func:`~dale_monai.predict.inputs.discover_cases` (with its geometry).
        folder: where the staged volume goes (created).
        spatial_dims: the bundle's network dimensionality: 2 predicts slice by slice, 3 on the whole volume.

    Raises:
        DataPrepError: for pixel data that cannot be decoded (naming the file), or a series that cannot be
            resampled.
    """
    geometry = case.geometry
    if geometry is None:
        raise ValueError(f"case {case.name}: not a DICOM series with a geometry")
    series = DicomSeries(case.series_uid or "", case.name, tuple(Path(f) for f in case.files), geometry)
    volume = read_volume(series)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case.name}.nii"
    mode = series_plan(geometry, spatial_dims)
    if mode == "exact":
        notes = (f"{geometry.describe()}; predicted slice by slice on the series' exact (sheared) grid",) \
            if geometry.tilted else ()
        affine = geometry.affine_lps()
        return StagedSeries(_save(path, volume, affine), mode, affine, "geometry", None, True, notes)
    if mode == "stack":
        affine = geometry.nominal_affine_lps()
        note = (f"{geometry.describe()}; predicted slice by slice, the DICOM SEG keeps each slice's own position; "
                "no NIfTI mask is written (no affine places these slices) and volumes use each slice's thickness")
        return StagedSeries(_save(path, volume, affine), mode, affine, "index", geometry.slice_extents(), False,
                            (note,))
    grid = regular_grid(geometry)
    resampled = resample_to_grid(volume, geometry, grid)
    note = (f"{grid.describe(geometry)}; the NIfTI mask is on that grid, the DICOM SEG on the source slices (nearest "
            "voxel)")
    return StagedSeries(_save(path, resampled, grid.affine_lps), mode, grid.affine_lps, "nearest", None, True,
                        (note,))
