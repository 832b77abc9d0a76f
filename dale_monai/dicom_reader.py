"""A MONAI image reader for DICOM series that decodes and places slices exactly as ``python -m data_prep dicom`` does.

MONAI reads a DICOM folder with ITK by default, which decodes and places slices its own way (it ignores a Modality
LUT table, gives a gantry-tilted series an orthogonal grid, and stacks unevenly spaced slices at one spacing). The
bundles' loader (:class:`~dale_monai.bundle_transforms.CheckedLoadImage`) tries :class:`DicomSeriesReader` first,
so ``python -m monai.bundle run`` on a DICOM series sees the values and the geometry the training data was converted
with: :func:`data_prep.dicom_pixels.decode_pixels` (Modality LUT, MONOCHROME1 inverted, no VOI LUT) and
:func:`data_prep.dicom_geometry.analyze_series` (sheared affine for a tilted series). A series that no affine holds
(uneven spacing, missing slices) is refused naming the cause; ``python -m dale_monai predict`` predicts such series
slice by slice or on a resampled grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import PathLike
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from data_prep.converters.dicom_series import DicomSeries, find_series, read_volume
from data_prep.dicom_geometry import analyze_series

from .bundle import _is_dicom

__all__ = ["DicomSeriesReader"]


def _single(data: Sequence[PathLike] | PathLike) -> Path | None:
    names = ensure_tuple(data)
    return Path(names[0]).expanduser() if len(names) == 1 else None


class DicomSeriesReader(ImageReader):
    """Read a DICOM series folder (one series, any file names) or one DICOM file as a ``(columns, rows, slices)``
    volume with its RAS affine, as :mod:`data_prep.converters.dicom_series` does.

    Args:
        kwargs: accepted and ignored, as :class:`monai.transforms.LoadImage` passes its reader arguments to every
            reader it registers.

    Raises:
        ValueError: from :meth:`read`: a folder of several series or of none, or a series rejected by its geometry
            (slices that form no stack, or that no affine holds), naming the folder and the cause.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True for one DICOM file (``.dcm`` or the ``DICM`` magic) or a folder holding DICOM files."""
        path = _single(filename)
        if path is None:
            return False
        if path.is_file():
            return _is_dicom(path)
        if path.is_dir():
            return any(p.is_file() and not p.name.startswith(".") and _is_dicom(p) for p in path.iterdir())
        return False

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> DicomSeries:
        """The series of ``data`` (a folder or a file), ordered and checked; pixels are read by :meth:`get_data`."""
        path = _single(data)
        if path is None:
            raise ValueError(f"DicomSeriesReader: one folder or file expected, got {ensure_tuple(data)}")
        if path.is_file():
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return DicomSeries(str(ds.get("SeriesInstanceUID", "")), path.stem, (path,),
                               analyze_series([ds], [path.name]))
        series, skips = find_series(path)
        rejected = [s.reason for s in skips if s.reason.startswith("series ")]
        if len(series) + len(rejected) > 1:
            raise ValueError(f"{path}: {len(series) + len(rejected)} DICOM series in one folder; give each its own")
        if rejected:
            raise ValueError(f"{path}: {rejected[0]}; python -m dale_monai predict predicts such a series slice by "
                             "slice (2D bundles) or resampled onto a regular grid (3D bundles)")
        if not series:
            raise ValueError(f"{path}: no DICOM image series in this folder")
        return series[0]

    def get_data(self, img: DicomSeries) -> tuple[np.ndarray, dict]:
        """The decoded volume ``(columns, rows, slices)`` and MONAI's meta data (``affine`` in RAS)."""
        volume = read_volume(img)
        affine = img.affine
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(volume.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            "series_instance_uid": img.uid,
            "dicom_geometry": img.geometry.describe(),
        }
        return volume, meta
