"""DICOM SEG output: a predicted label map stored against the DICOM series it was predicted on.

Each source instance gets the frame of the mask under it, found in one of three ways (``frames_by``):

* ``geometry``: the mask lies on the series' own grid (a regular series, or a gantry-tilted one with its sheared
  affine); each instance's pixels (``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``) are
  mapped through the mask's affine and must land exactly on voxels, never matched by file order;
* ``nearest``: the mask lies on a regular grid the series was resampled onto (a 3D bundle on an irregular series);
  each instance pixel takes the nearest voxel's label;
* ``index``: the mask is a stack whose slice ``k`` was predicted from instance ``k`` (a 2D bundle on a series no
  affine holds); the SEG's frames keep each instance's own position.

The SEG (highdicom, ``BINARY``, one segment per foreground label with the bundle's names, colours and codes)
references the source series, shares its ``FrameOfReferenceUID`` and has one frame per instance at that instance's
position, so viewers (OHIF, 3D Slicer, Weasis...) overlay it on the series, irregular series included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import atomic_path
from .segments import Segment

__all__ = ["instance_frames", "write_dicom_seg", "RAS_TO_LPS", "FRAMES_BY"]

#: MONAI reports affines in RAS; DICOM patient coordinates are LPS
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_TOL = 1e-2  # voxels: DICOM decimal strings carry at most 16 characters
#: how frames are taken from a mask (see the module docstring)
FRAMES_BY = ("geometry", "nearest", "index")
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _axis_step(vec: np.ndarray) -> bool:
    """True when ``vec`` moves by exactly one voxel along one axis."""
    return bool(np.isclose(np.abs(vec).max(), 1.0, atol=_TOL) and np.sum(np.abs(vec) > _TOL) == 1)


def instance_frames(mask: np.ndarray, affine_lps: np.ndarray, datasets: Sequence,
                    frames_by: str = "geometry") -> np.ndarray:
    """The frame of ``mask`` under each single-frame DICOM instance, ``(len(datasets), Rows, Columns)``.

    Args:
        mask: the label map, spatial axes only ``(column, row, slice)``: 3D, or 2D for a single slice.
        affine_lps: voxel index → patient coordinates (LPS, mm), ``4 x 4`` (unused for ``index``).
        datasets: the source instances (headers suffice); for ``index``, in the mask's slice order.
        frames_by: ``geometry`` (exact: each instance's pixels must be voxels of the mask), ``nearest`` (each pixel
            takes its nearest voxel: a mask on a grid the series was resampled onto) or ``index`` (slice ``k`` of
            the mask is instance ``k``).

    Raises:
        ValueError: when an instance lacks geometry, its pixel grid is not a slice of the mask's grid
            (``geometry``), it lies outside the mask, or the mask's shape does not match the instances (``index``).
    """
    if frames_by not in FRAMES_BY:
        raise ValueError(f"instance_frames: frames_by {frames_by!r}, expected one of {FRAMES_BY}")
    arr = np.asarray(mask)
    arr = arr[..., None] if arr.ndim == 2 else arr
    if arr.ndim != 3:
        raise ValueError(f"instance_frames: expected a 2D or 3D mask, got shape {arr.shape}")
    if frames_by == "index":
        sizes = {(int(ds.Columns), int(ds.Rows)) for ds in datasets}
        if len(sizes) != 1 or arr.shape != (*sizes.pop(), len(datasets)):
            raise ValueError(f"instance_frames: a mask of shape {arr.shape} is not a stack of the {len(datasets)} "
                             "instances (columns, rows, instances)")
        return np.stack([arr[:, :, k].T for k in range(len(datasets))])
    inv = np.linalg.inv(np.asarray(affine_lps, dtype=np.float64))
    frames = []
    for ds in datasets:
        try:
            origin = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
            cosines = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
            row_step, col_step = (float(s) for s in ds.PixelSpacing)
            rows, cols = int(ds.Rows), int(ds.Columns)
        except (AttributeError, TypeError, ValueError) as e:
            raise ValueError(f"instance {ds.get('SOPInstanceUID', '?')}: no usable image geometry ({e})") from None
        # pixel (r, c) lies at origin + c * col_step * cosines[:3] + r * row_step * cosines[3:]
        start = inv[:3, :3] @ origin + inv[:3, 3]
        down = inv[:3, :3] @ (row_step * cosines[3:])
        right = inv[:3, :3] @ (col_step * cosines[:3])
        if frames_by == "geometry" and not (_axis_step(down) and _axis_step(right)
                                            and np.allclose(start, np.round(start), atol=0.1)):
            raise ValueError(
                f"instance {ds.get('SOPInstanceUID', '?')}: its pixel grid is not a slice of the predicted mask's "
                f"grid (first pixel at voxel {np.round(start, 3).tolist()}, steps {np.round(down, 3).tolist()} and "
                f"{np.round(right, 3).tolist()})"
            )
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        idx = np.rint(start[:, None, None] + r * down[:, None, None] + c * right[:, None, None]).astype(np.int64)
        if frames_by == "nearest":
            # a resampled grid spans the series exactly; rounding may step half a voxel past its last slice
            over = [(idx[a] < -1) | (idx[a] > arr.shape[a]) for a in range(3)]
            idx = np.stack([np.clip(idx[a], 0, arr.shape[a] - 1) for a in range(3)])
        else:
            over = [(idx[a] < 0) | (idx[a] >= arr.shape[a]) for a in range(3)]
        if any(o.any() for o in over):
            raise ValueError(f"instance {ds.get('SOPInstanceUID', '?')}: lies outside the predicted mask "
                             f"(shape {arr.shape})")
        frames.append(arr[idx[0], idx[1], idx[2]])
    return np.stack(frames)


def write_dicom_seg(path: str | os.PathLike, mask: np.ndarray, affine_lps: np.ndarray, files: Sequence[str],
                    segments: Sequence[Segment], bundle: str, version: str = "", overwrite: bool = False,
                    frames_by: str = "geometry") -> Path:
    """Write ``mask`` as a DICOM SEG of the series made of ``files``.

    Every source instance gets one frame per segment, empty ones included, so the SEG covers the whole series.

    Args:
        path: the SEG file to write (atomically).
        mask: label map (values 0 and segment values), ``(column, row, slice)``.
        affine_lps: the mask's voxel → LPS affine.
        files: the series' single-frame instance files (for ``frames_by="index"``, in the mask's slice order).
        segments: the bundle's segments; values in ``mask`` beyond them are an error.
        bundle: the bundle's name (algorithm name, manufacturer model name).
        version: the bundle's version (algorithm version).
        overwrite: replace an existing ``path``.
        frames_by: how each instance's frame is taken from ``mask``: see :func:`instance_frames`.

    Raises:
        ValueError: for multi-frame or geometry-less instances, a mask not on the instances' grid, or mask values
            without a segment.
        ImportError: when highdicom is missing (``pip install dale-monai[dicomseg]``).
    """
    try:
        import highdicom as hd
    except ImportError as e:
        raise ImportError("DICOM SEG output needs highdicom: pip install 'dale-monai[dicomseg]'") from e
    from pydicom import dcmread
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    datasets = [dcmread(f, stop_before_pixels=True) for f in files]
    for ds in datasets:  # type 2 (required, may be empty) attributes the SEG copies; anonymisers drop some
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    multi = [f for f, ds in zip(files, datasets) if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        raise ValueError(f"{multi[0]}: multi-frame DICOM images are not supported for DICOM SEG output")
    frames = instance_frames(mask, affine_lps, datasets, frames_by)
    known = {s.value for s in segments}
    extra = sorted(set(np.unique(frames).tolist()) - known - {0})
    if extra:
        raise ValueError(f"mask values {extra} have no segment in the bundle's metadata (known: {sorted(known)})")
    algorithm = hd.AlgorithmIdentificationSequence(name=bundle[:64], version=version or "unknown",
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s.value,
            segment_label=s.name[:64],
            segmented_property_category=hd.sr.CodedConcept(s.category[1], s.category[0], s.category[2]),
            segmented_property_type=hd.sr.CodedConcept(s.type[1], s.type[0], s.type[2]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*s.color),
        )
        for s in sorted(segments, key=lambda s: s.value)
    ]
    source_number = datasets[0].get("SeriesNumber")
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=int(source_number) + 1000 if source_number not in (None, "") else 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="dale-monai",
        manufacturer_model_name=bundle[:64],
        software_versions=f"dale-monai {version}".strip()[:64],
        device_serial_number="none",
        series_description=f"{bundle} segmentation"[:64],
        content_description=f"Automatic segmentation by bundle {bundle}"[:64],
        omit_empty_frames=False,
    )
    out = Path(path)
    with atomic_path(out, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    return out
