"""Geometry of a DICOM series of single-frame slices: their order, spacing and tilt, and the grid (if any) holding them.

Every reader of DICOM in this project places slices with :func:`analyze_series`: ``python -m data_prep dicom`` and
``check`` (:mod:`data_prep.converters.dicom_series`), and ``python -m dale_monai predict`` with the bundles' DICOM
loader. They therefore agree on the order of the slices, on the affine, and on which series no affine holds.

Slices are ordered by ``ImagePositionPatient`` projected on the slice normal ``n = row × column`` of
``ImageOrientationPatient`` (DICOM PS3.3 C.7.6.2.1.1), or by ``InstanceNumber`` when a slice lacks either attribute.
A series is then one of:

* **regular**: equal gaps along ``n`` and every position on the line through the first and the last. One affine holds
  it exactly; its slice column is the step between consecutive positions.
* **gantry-tilted**: regular, but the positions step along a direction at an angle to ``n`` (a CT gantry tilted
  during acquisition). The exact affine is *sheared* (not orthogonal); the angle is :attr:`SeriesGeometry.tilt_deg`.
* **irregular**: uneven gaps, a gap that is a multiple of the others (missing slices), or positions off a straight
  line. No affine holds such a series: a uniform one misplaces slices (by up to
  :attr:`SeriesGeometry.max_misplacement_mm`). :attr:`SeriesGeometry.problems` names the cause with the values and
  the slices; :meth:`SeriesGeometry.affine_lps` refuses.

Slices of mixed sizes, orientations or pixel spacings, two slices at one position, and slices that cannot be ordered
raise :class:`GeometryError`.

Tolerance (:data:`GRID_TOLERANCE`): a slice is on a grid when it lies within 5 % of the grid's spacing of where the
grid puts it, along each axis. DICOM decimal strings (at most 16 characters) and scanner rounding stay far below that;
the smallest real irregularities (one missing slice, a step from 2.0 to 2.8 mm) move slices by 40 % of a spacing or
more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .io import DataPrepError

__all__ = ["GeometryError", "SeriesGeometry", "analyze_series", "LPS_TO_RAS", "GRID_TOLERANCE"]

#: DICOM patient coordinates are LPS, NIfTI/MONAI affines RAS
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: fraction of a grid spacing by which a slice may lie off the grid and still count as on it
GRID_TOLERANCE = 0.05
# two slices closer than this (mm) along the normal are at one position: a duplicate, not a spacing
_SAME_POSITION_MM = 1e-3
# orientation cosines that differ by more than this are different orientations (DICOM DS precision)
_ORIENTATION_ATOL = 1e-4
_MAX_RUNS_SHOWN = 4


class GeometryError(DataPrepError):
    """A DICOM series whose slices cannot form one stack, or (from :meth:`SeriesGeometry.affine_lps`) one that no
    affine holds. The message names the series' files and the cause."""


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.isfinite(out).all() else None


def _thickness(header: Any) -> float:
    """Slice spacing for a stack without positions: ``SpacingBetweenSlices``, else ``SliceThickness``, else 1 mm."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(header.get(keyword))
        except (TypeError, ValueError):
            continue
        if np.isfinite(value) and value > 0:
            return value
    return 1.0


@dataclass(frozen=True)
class SeriesGeometry:
    """Where each slice of a series lies, in slice order, and what grid holds them.

    Voxel axes, as everywhere in this project: ``(column, row, slice)``: the first index runs along a DICOM row
    (``row_dir``), the second down the columns (``col_dir``), the third through the slices in this order.

    Attributes:
        order: indices into the headers given to :func:`analyze_series`, in slice order.
        names: the slices' names (files), in slice order.
        rows: ``Rows``.
        columns: ``Columns``.
        pixel_spacing: ``PixelSpacing`` (between rows, between columns), mm; (1, 1) when absent.
        row_dir: unit vector (LPS) along a row, the first three ``ImageOrientationPatient`` values; None when the
            slices are ordered by ``InstanceNumber``.
        col_dir: unit vector (LPS) down a column; None as ``row_dir``.
        positions: ``ImagePositionPatient`` of each slice, ``(n, 3)`` LPS mm; None as ``row_dir``.
        thickness: ``SpacingBetweenSlices``, else ``SliceThickness``, else 1 mm: the slice step where positions
            give none (one slice, or slices ordered by ``InstanceNumber``).
        along: each slice's distance along the normal from the first, ``(n,)`` mm (``k * thickness`` without
            positions).
        tilt_deg: angle between the normal and the direction the positions step along (0 without positions).
        max_misplacement_mm: how far one uniform step along the normal would put a slice from where it is.
        problems: ``(kind, message)`` for each way the series departs from an orthogonal regular grid; kinds
            ``gantry_tilt``, ``uneven_spacing``, ``missing_slices``, ``off_line``.
    """

    order: tuple[int, ...]
    names: tuple[str, ...]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    row_dir: np.ndarray | None
    col_dir: np.ndarray | None
    positions: np.ndarray | None
    thickness: float
    along: np.ndarray
    tilt_deg: float = 0.0
    max_misplacement_mm: float = 0.0
    problems: tuple[tuple[str, str], ...] = field(default=())

    # ------------------------------------------------------------------------------------------- what it is
    @property
    def num_slices(self) -> int:
        return len(self.order)

    @property
    def normal(self) -> np.ndarray | None:
        """Unit slice normal ``row_dir × col_dir`` (LPS), None without orientation."""
        return None if self.row_dir is None else np.cross(self.row_dir, self.col_dir)

    @property
    def gaps(self) -> np.ndarray:
        """Distances between consecutive slices along the normal, ``(n - 1,)`` mm."""
        return np.diff(self.along)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind, _ in self.problems)

    @property
    def tilted(self) -> bool:
        """Gantry tilt: the positions step at an angle to the normal (the exact affine is sheared)."""
        return "gantry_tilt" in self.kinds

    @property
    def has_affine(self) -> bool:
        """One affine holds every slice exactly (regular, possibly tilted)."""
        return not (set(self.kinds) - {"gantry_tilt"})

    @property
    def orthogonal_regular(self) -> bool:
        """One orthogonal affine (rotation x spacing) holds every slice exactly."""
        return not self.problems

    def describe(self) -> str:
        """One line: the regular spacing, or every problem found."""
        if not self.problems:
            step = float(np.median(self.gaps)) if self.num_slices > 1 else self.thickness
            return f"regular: {self.num_slices} slice(s), {step:.2f} mm apart"
        return "; ".join(message for _, message in self.problems)

    # ------------------------------------------------------------------------------------------- affines
    def _in_plane(self) -> tuple[np.ndarray, np.ndarray]:
        row_dir = self.row_dir if self.row_dir is not None else np.array([1.0, 0.0, 0.0])
        col_dir = self.col_dir if self.col_dir is not None else np.array([0.0, 1.0, 0.0])
        # along a row the column index grows, spaced by PixelSpacing[1]; down a column by PixelSpacing[0]
        return row_dir * self.pixel_spacing[1], col_dir * self.pixel_spacing[0]

    def affine_lps(self) -> np.ndarray:
        """Voxel ``(column, row, slice)`` → LPS mm, ``4 x 4``; sheared for a gantry-tilted series.

        Raises:
            GeometryError: when no affine holds the series (uneven spacing, missing slices, positions off a line).
        """
        if not self.has_affine:
            raise GeometryError(f"no affine holds the {self.num_slices} slices {self.names[0]} .. {self.names[-1]}: "
                                f"{self.describe()}")
        return self._affine(None)

    def affine_ras(self) -> np.ndarray:
        """:meth:`affine_lps` in RAS (the NIfTI and MONAI convention)."""
        return LPS_TO_RAS @ self.affine_lps()

    def nominal_affine_lps(self) -> np.ndarray:
        """An affine exact in-plane for every slice, with a slice step of the median gap along the normal.

        For bookkeeping of a stack processed slice by slice only (the slices' real places are :attr:`positions`):
        for an irregular series it misplaces slices, so it must never be written as their geometry.
        """
        step = float(np.median(self.gaps)) if self.num_slices > 1 else self.thickness
        normal = self.normal if self.normal is not None else np.array([0.0, 0.0, 1.0])
        return self._affine(normal * step)

    def slice_affine_lps(self, k: int) -> np.ndarray:
        """Voxel ``(column, row, 0)`` of slice ``k`` (in slice order) → LPS mm: exact for that slice whatever the
        series' spacing; its third column is the normal times the slice's :meth:`slice_extents` (a 2D slice written
        on its own, e.g. by ``data_prep dicom --mode 2d``)."""
        normal = self.normal if self.normal is not None else np.array([0.0, 0.0, 1.0])
        lps = self._affine(normal * float(self.slice_extents()[k]))
        lps[:3, 3] = self.positions[k] if self.positions is not None else normal * float(self.along[k])
        return lps

    def _affine(self, slice_vec: np.ndarray | None) -> np.ndarray:
        right, down = self._in_plane()
        if slice_vec is None:
            if self.positions is not None and self.num_slices > 1:
                slice_vec = (self.positions[-1] - self.positions[0]) / (self.num_slices - 1)
            else:
                normal = self.normal if self.normal is not None else np.array([0.0, 0.0, 1.0])
                slice_vec = normal * self.thickness
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2] = right, down, slice_vec
        lps[:3, 3] = self.positions[0] if self.positions is not None else 0.0
        return lps

    def slice_extents(self) -> np.ndarray:
        """Thickness each slice stands for along the normal, ``(n,)`` mm: half the gap to each neighbour (the whole
        gap to the only neighbour at either end), ``thickness`` for a single slice. For a regular series each is
        the spacing; in general they sum to the stack's extent plus half its first and half its last gap."""
        if self.num_slices == 1:
            return np.array([self.thickness])
        gaps = self.gaps
        before = np.concatenate([[gaps[0]], gaps])
        after = np.concatenate([gaps, [gaps[-1]]])
        return (before + after) / 2


# ----------------------------------------------------------------------------------------------- analysis
def _name_of(names: Sequence[str], i: int) -> str:
    return str(names[i])


def _check_same(headers: Sequence[Any], names: Sequence[str]) -> tuple[int, int, tuple[float, float]]:
    sizes: dict[tuple[int, int], str] = {}
    for h, name in zip(headers, names):
        try:
            sizes.setdefault((int(h.get("Rows")), int(h.get("Columns"))), name)
        except (TypeError, ValueError):
            raise GeometryError(f"{name}: no Rows/Columns") from None
    if len(sizes) > 1:
        shown = ", ".join(f"{r}x{c} ({name})" for (r, c), name in sizes.items())
        raise GeometryError(f"slices of mixed sizes: {shown}")
    spacings: dict[tuple[float, float], str] = {}
    for h, name in zip(headers, names):
        value = _floats(h.get("PixelSpacing"), 2)
        key = (1.0, 1.0) if value is None else (float(value[0]), float(value[1]))
        if not any(np.allclose(key, seen, rtol=1e-4, atol=1e-6) for seen in spacings):
            spacings[key] = name
    if len(spacings) > 1:
        shown = ", ".join(f"{a:g} x {b:g} mm ({name})" for (a, b), name in spacings.items())
        raise GeometryError(f"slices of mixed PixelSpacing: {shown}")
    (rows, columns), spacing = next(iter(sizes)), next(iter(spacings))
    if min(spacing) <= 0:
        raise GeometryError(f"{next(iter(spacings.values()))}: PixelSpacing {spacing} is not positive")
    return rows, columns, spacing


def _by_instance_number(headers: Sequence[Any], names: Sequence[str], rows: int, columns: int,
                        spacing: tuple[float, float]) -> SeriesGeometry:
    numbers = []
    for h, name in zip(headers, names):
        try:
            numbers.append(int(h.get("InstanceNumber")))
        except (TypeError, ValueError):
            raise GeometryError(f"{name}: neither ImagePositionPatient/ImageOrientationPatient nor InstanceNumber, "
                                "so the slices cannot be ordered") from None
    order = [int(i) for i in np.argsort(numbers, kind="stable")]
    for a, b in zip(order, order[1:]):
        if numbers[b] == numbers[a]:
            raise GeometryError(f"{names[a]} and {names[b]} share InstanceNumber {numbers[a]}")
        if numbers[b] != numbers[a] + 1:
            raise GeometryError(f"missing slices (InstanceNumber jumps from {numbers[a]} in {names[a]} to "
                                f"{numbers[b]} in {names[b]}; without ImagePositionPatient they cannot be placed)")
    thickness = _thickness(headers[order[0]])
    return SeriesGeometry(tuple(order), tuple(names[i] for i in order), rows, columns, spacing, None, None, None,
                          thickness, np.arange(len(order)) * thickness)


def _runs(gaps: np.ndarray) -> list[tuple[int, int, float]]:
    """Consecutive gaps equal within tolerance: ``(first gap index, count, mean gap)``."""
    runs: list[list] = []
    for i, g in enumerate(gaps):
        if runs and abs(g - runs[-1][2]) <= GRID_TOLERANCE * runs[-1][2]:
            runs[-1][1] += 1
        else:
            runs.append([i, 1, float(g)])
    return [(start, count, float(np.mean(gaps[start:start + count]))) for start, count, _ in runs]


def _spacing_problem(gaps: np.ndarray, names: Sequence[str], misplacement: float,
                     mean_step: float) -> tuple[str, str]:
    base = float(gaps.min())
    multiples = gaps / base
    whole = np.rint(multiples)
    if np.all(np.abs(multiples - whole) <= GRID_TOLERANCE) and whole.max() >= 2:
        holes = [i for i in range(len(gaps)) if whole[i] >= 2]
        parts = [f"{int(whole[i]) - 1} between {names[i]} and {names[i + 1]} (a gap of {gaps[i]:.2f} mm)"
                 for i in holes]
        return ("missing_slices", f"missing slices where the spacing is {base:.2f} mm: " + ", ".join(parts))
    runs = _runs(gaps)
    shown = [f"{count} gap(s) of {mean:.2f} mm (slices {start}-{start + count}: {names[start]} .. "
             f"{names[start + count]})" for start, count, mean in runs[:_MAX_RUNS_SHOWN]]
    if len(runs) > _MAX_RUNS_SHOWN:
        shown.append(f"and {len(runs) - _MAX_RUNS_SHOWN} more runs")
    return ("uneven_spacing",
            f"uneven slice spacing ({gaps.min():.2f} to {gaps.max():.2f} mm): {', then '.join(shown)}; one spacing "
            f"of {mean_step:.3f} mm would misplace slices by up to {misplacement:.2f} mm")


def analyze_series(headers: Sequence[Any], names: Sequence[str]) -> SeriesGeometry:
    """Order the slices of one series and find the grid that holds them.

    Args:
        headers: one pydicom dataset (or any object with ``get(keyword)``) per single-frame slice, any order; read
            are ``Rows``, ``Columns``, ``PixelSpacing``, ``ImageOrientationPatient``, ``ImagePositionPatient``,
            ``InstanceNumber``, ``SpacingBetweenSlices``, ``SliceThickness``.
        names: a name per header (its file), used in messages.

    Returns:
        the series' geometry; see the module docstring for what is recorded in ``problems``.

    Raises:
        GeometryError: slices of mixed sizes, orientations or pixel spacings; two slices at one position; slices that
            can be ordered neither by position nor by a gap-free ``InstanceNumber``.
    """
    if not headers or len(headers) != len(names):
        raise ValueError(f"analyze_series: {len(headers)} headers for {len(names)} names")
    names = [str(n) for n in names]
    rows, columns, spacing = _check_same(headers, names)
    orients = [_floats(h.get("ImageOrientationPatient"), 6) for h in headers]
    positions = [_floats(h.get("ImagePositionPatient"), 3) for h in headers]
    if any(o is None for o in orients) or any(p is None for p in positions):
        return _by_instance_number(headers, names, rows, columns, spacing)
    first = orients[0]
    for o, name in zip(orients, names):
        if not np.allclose(o, first, atol=_ORIENTATION_ATOL):
            raise GeometryError(f"slices of mixed orientations: {names[0]} {np.round(first, 4).tolist()}, {name} "
                                f"{np.round(o, 4).tolist()}")
    row_dir, col_dir = first[:3] / np.linalg.norm(first[:3]), first[3:] / np.linalg.norm(first[3:])
    normal = np.cross(row_dir, col_dir)
    pos = np.stack(positions)
    dist = pos @ normal
    order = [int(i) for i in np.argsort(dist, kind="stable")]
    pos, dist = pos[order], dist[order]
    sorted_names = [names[i] for i in order]
    along = dist - dist[0]
    n = len(order)
    base = dict(order=tuple(order), names=tuple(sorted_names), rows=rows, columns=columns, pixel_spacing=spacing,
                row_dir=row_dir, col_dir=col_dir, positions=pos, thickness=_thickness(headers[order[0]]))
    if n == 1:
        return SeriesGeometry(along=along, **base)
    gaps = np.diff(along)
    if gaps.min() < _SAME_POSITION_MM:
        i = int(np.argmin(gaps))
        raise GeometryError(f"{sorted_names[i]} and {sorted_names[i + 1]} share one slice position "
                            f"({dist[i]:.3f} mm along the slice normal)")
    problems: list[tuple[str, str]] = []
    mean_step = along[-1] / (n - 1)
    misplacement = np.abs(along - mean_step * np.arange(n))
    # in-plane displacement of each slice from the first, and its straight-line part (the tilt)
    inplane = (pos - pos[0]) - np.outer(along, normal)
    drift = inplane[-1] / along[-1]  # mm in-plane per mm along the normal
    off_line = inplane - np.outer(along, drift)
    col_spacing, row_spacing = spacing[1], spacing[0]  # along row_dir, along col_dir
    off = np.maximum(np.abs(off_line @ row_dir) / col_spacing, np.abs(off_line @ col_dir) / row_spacing)
    tilt = float(np.degrees(np.arctan(np.linalg.norm(drift))))
    if abs(inplane[-1] @ row_dir) > GRID_TOLERANCE * col_spacing or \
            abs(inplane[-1] @ col_dir) > GRID_TOLERANCE * row_spacing:
        problems.append(("gantry_tilt", f"gantry tilt of {tilt:.2f} degrees: the slices step "
                                        f"{np.linalg.norm(pos[-1] - pos[0]) / (n - 1):.3f} mm along a direction "
                                        f"{tilt:.2f} degrees off their normal ({mean_step:.3f} mm apart along it)"))
    if misplacement.max() > GRID_TOLERANCE * mean_step:
        problems.append(_spacing_problem(gaps, sorted_names, float(misplacement.max()), float(mean_step)))
    if off.max() > GRID_TOLERANCE:
        k = int(np.argmax(off))
        problems.append(("off_line", f"slice positions off a straight line: {sorted_names[k]} lies "
                                     f"{np.linalg.norm(off_line[k]):.2f} mm in-plane from the line through "
                                     f"{sorted_names[0]} and {sorted_names[-1]}"))
    # a uniform grid's misplacement also counts the in-plane part off the line
    worst = float(max(misplacement.max(), np.linalg.norm(off_line, axis=1).max()))
    return SeriesGeometry(along=along, tilt_deg=tilt, max_misplacement_mm=worst, problems=tuple(problems), **base)
