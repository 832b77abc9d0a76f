"""The one decoding of DICOM pixel data into intensities, shared by training data and prediction.

``python -m data_prep dicom`` (the training data), ``data_prep check``, ``python -m dale_monai predict`` and the
bundles' DICOM loader all decode a slice with :func:`decode_pixels`, so a network sees the same values for the same
series when it is trained and when it predicts:

1. the stored values (pydicom's ``pixel_array``: ``BitsStored``, ``PixelRepresentation`` and the transfer syntax
   applied);
2. the **Modality LUT** (DICOM PS3.3 C.11.1) with pydicom's ``apply_modality_lut``: ``RescaleSlope`` /
   ``RescaleIntercept`` (Hounsfield units for CT), or a ``ModalityLUTSequence`` table;
3. **MONOCHROME1** (stored so that the lowest value displays white) turned into the MONOCHROME2 sense, so that a
   higher value is always brighter (denser on radiographs): ``v' = lo + hi - v`` where ``[lo, hi]`` is the range
   the Modality LUT maps the stored range (``BitsStored``, ``PixelRepresentation``) onto, constant across a series.
   For unsigned data this is what ITK/GDCM does (stored ``(2^BitsStored - 1) - s``, then rescaled).

Not applied: the **VOI LUT** or window (``WindowCenter``/``WindowWidth``, ``VOILUTSequence``) and the Presentation
LUT. They are display choices that vary between slices, vendors and viewers and would clip the modality's values;
training and prediction keep the modality's units and window explicitly (``data_prep --window``, a bundle's
intensity transforms). Colour (``SamplesPerPixel`` > 1) and multi-frame objects are refused.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .io import DataPrepError

__all__ = ["decode_pixels", "modality_range", "DECODING"]

#: names this decoding in conversion manifests, so that files decoded otherwise are never mixed with these
DECODING = "modality-lut, monochrome1-inverted, no-voi (v1)"


def _apply_modality_lut(arr: np.ndarray, ds: Any) -> np.ndarray:
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut
    return apply_modality_lut(arr, ds)


def _stored_range(ds: Any) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def modality_range(ds: Any) -> tuple[float, float]:
    """``(lo, hi)``: the range of the Modality LUT's output over every value the slice can store.

    With a ``ModalityLUTSequence``: the smallest and largest table entries (pydicom maps values outside the table onto
    its ends). Otherwise the rescale of the stored range (``BitsStored``, ``PixelRepresentation``), as PS3.3 C.11.1
    defines it; without a rescale, the stored range itself.
    """
    if ds.get("ModalityLUTSequence"):
        descriptor = ds.ModalityLUTSequence[0].LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        # every input the table maps; inputs before or past it clamp to its ends
        inputs = np.arange(first, first + entries, dtype=np.int64)
        table = np.asarray(_apply_modality_lut(inputs, ds), dtype=np.float64)
        return float(table.min()), float(table.max())
    lo, hi = _stored_range(ds)
    ends = np.asarray(_apply_modality_lut(np.array([lo, hi], dtype=np.int64), ds), dtype=np.float64)
    return float(ends.min()), float(ends.max())


def decode_pixels(ds: Any, path: str | os.PathLike | None = None) -> np.ndarray:
    """The intensities of one single-frame greyscale slice, ``(Rows, Columns)`` float32, decoded as the module
    docstring says (Modality LUT, MONOCHROME1 inverted, no VOI LUT).

    Args:
        ds: the slice's pydicom dataset, pixel data included.
        path: its file, named in errors (default: ``ds.filename``).

    Raises:
        DataPrepError: undecodable pixel data, a colour or multi-frame object, or a photometric interpretation other
            than MONOCHROME1/MONOCHROME2; the message names the file.
    """
    where = str(path if path is not None else getattr(ds, "filename", None) or "<dataset>")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples != 1 or frames != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataPrepError(f"{where}: only single-frame greyscale slices are supported (SamplesPerPixel {samples}, "
                            f"NumberOfFrames {frames}, PhotometricInterpretation {photometric})")
    try:
        stored = np.asarray(ds.pixel_array)
    except Exception as e:  # truncated or undecodable pixel data: pydicom raises several types
        raise DataPrepError(f"{where}: cannot decode its pixel data ({type(e).__name__}: {e})") from None
    try:
        values = np.asarray(_apply_modality_lut(stored, ds), dtype=np.float64)
        if photometric == "MONOCHROME1":
            lo, hi = modality_range(ds)
            values = (lo + hi) - values
    except (AttributeError, TypeError, ValueError, IndexError, KeyError) as e:
        raise DataPrepError(f"{where}: unusable Modality LUT or rescale ({type(e).__name__}: {e})") from None
    return values.astype(np.float32)
