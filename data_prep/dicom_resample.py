"""Resampling a DICOM series that no orthogonal regular grid holds (gantry tilt, uneven spacing, missing slices)
onto one, for the paths that need such a grid: ``data_prep dicom --resample-irregular`` and 3D bundles in
``python -m dale_monai predict``.

The grid (:func:`regular_grid`) keeps the slices' orientation and pixel spacing, spans the series from its first to
its last slice along the normal with the **smallest gap** as the slice spacing (shrunk so that the last slice is hit
exactly), and widens in-plane to hold every slice of a tilted series. :func:`resample_to_grid` interpolates linearly:
bilinearly within the two source slices around each grid slice (at the grid point's projection onto each), then
linearly between them along the normal. Grid voxels outside every slice get ``fill`` (the series' minimum: air on
CT). Labels are never resampled here; predicted masks go back to the source slices by nearest neighbour
(:func:`dale_monai.predict.dicom_seg.instance_frames`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dicom_geometry import LPS_TO_RAS, GeometryError, SeriesGeometry

__all__ = ["RegularGrid", "regular_grid", "resample_to_grid", "MAX_GROWTH"]

#: the grid may hold at most this many times the series' slices (a tiny gap would otherwise make a huge grid)
MAX_GROWTH = 4.0
_SNAP = 1e-6  # voxel offsets this close to a whole number are whole (exact copies, no interpolation)


@dataclass(frozen=True)
class RegularGrid:
    """An orthogonal regular grid, voxel axes ``(column, row, slice)`` like the series'.

    Attributes:
        shape: ``(columns, rows, slices)``.
        affine_lps: voxel → LPS mm, ``4 x 4``, orthogonal.
        spacing: ``(column, row, slice)`` spacing, mm.
        offsets: in-plane position of each source slice's first pixel on the grid, ``(n, 2)`` voxels.
    """

    shape: tuple[int, int, int]
    affine_lps: np.ndarray
    spacing: tuple[float, float, float]
    offsets: np.ndarray

    @property
    def affine_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine_lps

    def describe(self, geometry: SeriesGeometry) -> str:
        """What was done, for summaries and logs."""
        size = "x".join(str(s) for s in self.shape)
        spacing = " x ".join(f"{s:.3f}" for s in self.spacing)
        return (f"resampled by linear interpolation onto a regular orthogonal grid of {size} voxels of {spacing} mm, "
                f"because {geometry.describe()}")


def _snap(x: np.ndarray) -> np.ndarray:
    r = np.rint(x)
    return np.where(np.abs(x - r) < _SNAP, r, x)


def regular_grid(geometry: SeriesGeometry, max_growth: float = MAX_GROWTH) -> RegularGrid:
    """The orthogonal regular grid that holds every slice of ``geometry`` (see the module docstring).

    Args:
        geometry: from :func:`~data_prep.dicom_geometry.analyze_series`, with positions.
        max_growth: refuse grids with more than this many times the series' slices.

    Raises:
        GeometryError: a series without positions (ordered by ``InstanceNumber``), or one whose smallest gap would
            give more than ``max_growth`` times its slices.
    """
    if geometry.positions is None or geometry.row_dir is None:
        raise GeometryError(f"{geometry.names[0]}: no ImagePositionPatient/ImageOrientationPatient to resample by")
    n = geometry.num_slices
    col_spacing, row_spacing = geometry.pixel_spacing[1], geometry.pixel_spacing[0]
    rel = geometry.positions - geometry.positions[0]
    u, v = rel @ geometry.row_dir / col_spacing, rel @ geometry.col_dir / row_spacing  # voxels
    extra_c = int(math.ceil(float(u.max() - u.min()) - _SNAP))
    extra_r = int(math.ceil(float(v.max() - v.min()) - _SNAP))
    extent = float(geometry.along[-1])
    if n > 1:
        count = int(math.ceil(extent / float(geometry.gaps.min()) - _SNAP)) + 1
        if count > max_growth * n:
            raise GeometryError(
                f"{geometry.names[0]} .. {geometry.names[-1]}: resampling at the smallest gap "
                f"({geometry.gaps.min():.3f} mm) would need {count} slices for {n}; {geometry.describe()}")
        step = extent / (count - 1)
    else:
        count, step = 1, geometry.thickness
    origin = geometry.positions[0] + u.min() * col_spacing * geometry.row_dir + \
        v.min() * row_spacing * geometry.col_dir
    lps = np.eye(4)
    lps[:3, 0] = geometry.row_dir * col_spacing
    lps[:3, 1] = geometry.col_dir * row_spacing
    lps[:3, 2] = geometry.normal * step
    lps[:3, 3] = origin
    offsets = _snap(np.stack([u - u.min(), v - v.min()], axis=1))
    return RegularGrid((geometry.columns + extra_c, geometry.rows + extra_r, count), lps,
                       (col_spacing, row_spacing, step), offsets)


def _sample(slice_2d: np.ndarray, offset: np.ndarray, shape: tuple[int, int], fill: float) -> np.ndarray:
    """``slice_2d`` (whose first pixel sits at grid voxel ``offset``) on the grid's in-plane axes."""
    from scipy.ndimage import map_coordinates

    out = np.full(shape, fill, dtype=np.float32)
    if np.all(np.rint(offset) == offset):  # whole-voxel shift: an exact copy
        c, r = int(offset[0]), int(offset[1])
        out[c:c + slice_2d.shape[0], r:r + slice_2d.shape[1]] = slice_2d
        return out
    cc, rr = np.meshgrid(np.arange(shape[0]) - offset[0], np.arange(shape[1]) - offset[1], indexing="ij")
    return map_coordinates(slice_2d.astype(np.float32), [cc, rr], order=1, mode="constant", cval=fill).astype(
        np.float32)


def resample_to_grid(volume: np.ndarray, geometry: SeriesGeometry, grid: RegularGrid,
                     fill: float | None = None) -> np.ndarray:
    """The series' intensities on ``grid``, float32 ``grid.shape``.

    Args:
        volume: the series ``(columns, rows, slices)`` in ``geometry``'s slice order (as
            :func:`~data_prep.converters.dicom_series.read_volume` returns it).
        geometry: the series' geometry.
        grid: from :func:`regular_grid` for that geometry.
        fill: value of grid voxels outside every slice (default: ``volume.min()``).

    Raises:
        ValueError: when ``volume``'s shape does not match ``geometry``.
    """
    expected = (geometry.columns, geometry.rows, geometry.num_slices)
    if tuple(volume.shape) != expected:
        raise ValueError(f"resample_to_grid: volume of shape {tuple(volume.shape)}, the geometry's is {expected}")
    fill = float(volume.min()) if fill is None else float(fill)
    out = np.empty(grid.shape, dtype=np.float32)
    along, n = geometry.along, geometry.num_slices
    plane = grid.shape[:2]
    for j in range(grid.shape[2]):
        if n == 1:
            out[..., j] = _sample(volume[..., 0], grid.offsets[0], plane, fill)
            continue
        t = j * grid.spacing[2]
        k = int(np.clip(np.searchsorted(along, t, side="right") - 1, 0, n - 2))
        w = float(np.clip((t - along[k]) / (along[k + 1] - along[k]), 0.0, 1.0))
        w = 0.0 if w < _SNAP else 1.0 if w > 1 - _SNAP else w
        value = np.zeros(plane, dtype=np.float32)
        for idx, weight in ((k, 1.0 - w), (k + 1, w)):
            if weight > 0:
                value += np.float32(weight) * _sample(volume[..., idx], grid.offsets[idx], plane, fill)
        out[..., j] = value
    return out
