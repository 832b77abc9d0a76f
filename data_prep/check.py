"""``python -m data_prep check``: validate a MONAI datalist up front and list every problem at once.

A long training run should not die at epoch 37 on a truncated PNG or a 0/255 mask. This module
reads every file a datalist names, once, with the same readers as the converters
(:mod:`data_prep.io` for 2D formats, nibabel for NIfTI, :mod:`data_prep.converters.dicom_series`
for DICOM folders, numpy for ``.npy``/``.npz``), and reports:

* errors (exit code 1): unreadable or missing datalist, entry without ``image``, missing,
  unreadable or truncated file, DICOM folder with mixed series or with a slice geometry no affine holds (uneven
  spacing or missing slices, named with the values and slices, as :mod:`data_prep.dicom_geometry` finds it), image/label
  size mismatch, label values outside the configured classes (a 0/255 or 0/65535 mask is named as such),
  soft labels under a key other than ``label_soft``, NaN/Inf intensities, an image smaller than
  ``--min-size`` or ``--patch-size``, a palette (mode ``P``) or CMYK/YCbCr/LAB/HSV image (MONAI loads
  palette indices or those values, not intensities);
* warnings: constant image, single-pixel lesion, RGBA or grey+alpha image, a format this module cannot read,
  a gantry-tilted DICOM series or a NIfTI with a sheared affine,
  the same image listed twice, the same image in training and in validation/test (leakage);
* info: empty masks and 16-bit images, counted.

Relative paths are resolved against the datalist's folder (MONAI's ``load_decathlon_datalist``
default); messages always name absolute paths. Only one file is held in memory at a time per
worker.

Command line::

    python -m data_prep check --datalist DIR/datalist.json [--sections training validation test]
        [--num-classes N | --label-values 0,1] [--min-size 16] [--patch-size 16] [--json REPORT.json]
        [--workers N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .io import IMAGE_EXTENSIONS, DataPrepError, read_image_2d, read_mask_2d, write_json
from .masks import binary_foreground

__all__ = ["Problem", "CheckReport", "check_datalist", "add_parser", "SOFT_LABEL_KEY"]

#: the only entry key allowed to hold soft (non-integer or 0..255 probability-like) labels
SOFT_LABEL_KEY = "label_soft"
ERROR, WARNING, INFO = "error", "warning", "info"
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
NUMPY_EXTENSIONS = (".npy", ".npz")
_PATH_KEY_PREFIXES = ("image", "label", "mask", "seg")
_MAX_SHOWN_VALUES = 8
# 2D PIL modes holding more than 8 bits per pixel
_WIDE_PIL_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# PIL modes whose values MONAI loads as they are stored, which are not grey/RGB intensities
_PALETTE_MODES = ("P", "PA")
_OTHER_COLOUR_MODES = ("CMYK", "YCbCr", "LAB", "HSV")
# axes of a NIfTI affine further than this from perpendicular are sheared; float32 storage keeps far below
_SHEAR_TOLERANCE_DEG = 0.01


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth knowing) about a datalist, an entry or a file.

    Args:
        level: ``"error"``, ``"warning"`` or ``"info"``.
        kind: a short stable code (e.g. ``missing_file``, ``label_values``), counted in the report.
        message: what is wrong, and what to do where it is not obvious.
        section: datalist section (``"datalist"`` for problems of the datalist itself).
        index: position of the entry in its section, ``None`` for datalist-level problems.
        key: entry key of the file (``image``, ``label``, ...), if any.
        file: absolute path of the file at fault, if any.
    """

    level: str
    kind: str
    message: str
    section: str = "datalist"
    index: int | None = None
    key: str | None = None
    file: str | None = None

    @property
    def where(self) -> str:
        return self.section if self.index is None else f"{self.section}[{self.index}]"

    def __str__(self) -> str:
        return f"{self.level.upper()} {self.where}{' ' + self.file if self.file else ''}: {self.message}"

    def as_dict(self) -> dict:
        return {"level": self.level, "kind": self.kind, "section": self.section, "index": self.index,
                "key": self.key, "file": self.file, "message": self.message}


@dataclass
class CheckReport:
    """The result of :func:`check_datalist`.

    Attributes:
        datalist: absolute path of the checked datalist.
        errors: problems that would break or corrupt training.
        warnings: problems worth a look that do not stop training.
        info: noteworthy facts (empty masks, 16-bit images).
        counts: entries per section, files checked, and problems per level and kind.
        settings: the settings used, including the allowed label values and where they came from.
    """

    datalist: str
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    info: list[Problem] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether there is no error (warnings and info do not count)."""
        return not self.errors

    def add(self, problem: Problem) -> None:
        {ERROR: self.errors, WARNING: self.warnings, INFO: self.info}[problem.level].append(problem)

    def summary(self) -> str:
        """One line: entries, files, problems per level and kind."""
        entries = self.counts.get("entries", {})
        total = sum(entries.values())
        parts = [f"{self.datalist}: {total} entr{'y' if total == 1 else 'ies'}"
                 + (f" ({', '.join(f'{k} {v}' for k, v in entries.items())})" if entries else "")
                 + f", {self.counts.get('files', 0)} files"]
        for level, items in ((ERROR, self.errors), (WARNING, self.warnings)):
            kinds = Counter(p.kind for p in items)
            name = level if len(items) == 1 else level + "s"
            parts.append(f"{len(items)} {name}" + (f" ({_kinds(kinds)})" if kinds else ""))
        if self.info:
            parts.append(f"info: {_kinds(Counter(p.kind for p in self.info))}")
        return "; ".join(parts) + (" -> OK" if self.ok else " -> FAILED")

    def format(self) -> str:
        """Errors, then warnings, one line each, then the summary line (info is only counted)."""
        return "\n".join([*map(str, self.errors), *map(str, self.warnings), self.summary()])

    def as_dict(self) -> dict:
        return {"datalist": self.datalist, "ok": self.ok, "settings": self.settings, "counts": self.counts,
                "errors": [p.as_dict() for p in self.errors], "warnings": [p.as_dict() for p in self.warnings],
                "info": [p.as_dict() for p in self.info]}


def _kinds(kinds: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))


# ----------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class _Settings:
    root: Path
    classes: frozenset[int] | None
    classes_from: str
    min_size: int
    patch_size: tuple[int, ...]


def _class_set(num_classes: int | None, label_values: Sequence[int] | None,
               doc: Mapping | None) -> tuple[frozenset[int] | None, str]:
    if label_values is not None:
        values = frozenset(int(v) for v in label_values)
        if not values:
            raise DataPrepError("--label-values: give at least one value, e.g. 0,1")
        if num_classes is not None and not values <= set(range(num_classes)):
            raise DataPrepError(f"--label-values {sorted(values)} do not fit --num-classes {num_classes} "
                                f"(class indices 0..{num_classes - 1})")
        return values, "--label-values " + ",".join(map(str, sorted(values)))
    if num_classes is not None:
        return frozenset(range(num_classes)), f"--num-classes {num_classes}"
    names = doc.get("labels") if isinstance(doc, Mapping) else None
    if isinstance(names, Mapping) and names:
        try:
            return frozenset(int(k) for k in names), "the datalist's 'labels'"
        except (TypeError, ValueError):
            pass
    return None, "not configured (give --num-classes or --label-values)"


def _patch(patch_size: int | Sequence[int]) -> tuple[int, ...]:
    sizes = (int(patch_size),) if np.isscalar(patch_size) else tuple(int(s) for s in patch_size)
    if not sizes or any(s < 1 for s in sizes):
        raise DataPrepError(f"--patch-size {patch_size}: every size must be at least 1")
    return sizes


# ----------------------------------------------------------------------------------------------
# reading one file


@dataclass
class _Loaded:
    array: np.ndarray
    spatial: tuple[int, ...]
    pil_mode: str | None = None
    notes: list[tuple[str, str, str]] = field(default_factory=list)  # (level, kind, message)


class _Unsupported(Exception):
    """A format this module does not read (MONAI may: e.g. ``.mha`` through ITK)."""


def _strip(message: str, path: Path) -> str:
    """Reader messages start with the path, which each report line already shows."""
    for prefix in (f"{path}: ", f"{path} "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _squeeze_trailing(shape: tuple[int, ...]) -> tuple[int, ...]:
    # NIfTI stores 2D slices as (H, W, 1) and volumes with one time point as (X, Y, Z, 1)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _load_dicom_folder(path: Path) -> _Loaded:
    from .converters.dicom_series import find_series, read_volume

    series, skips = find_series(path)
    notes: list[tuple[str, str, str]] = []
    rejected = [s for s in skips if s.reason.startswith("series ")]
    ignored = [s for s in skips if not s.reason.startswith("series ")]
    if ignored:
        names = ", ".join(Path(s.files[0]).name for s in ignored[:3])
        notes.append((WARNING, "dicom_ignored_files", f"{len(ignored)} file(s) in the DICOM folder ignored "
                                                      f"({ignored[0].reason}): {names}"))
    if len(series) + len(rejected) > 1:
        uids = [s.uid for s in series] + [s.reason.split()[1] for s in rejected]
        raise DataPrepError(f"DICOM folder with mixed series: {len(uids)} series ({', '.join(uids[:4])}); "
                            "an entry must point at a folder holding one series")
    if rejected:
        raise DataPrepError(f"DICOM series rejected: {rejected[0].reason}")
    if not series:
        raise DataPrepError("folder holds no DICOM series")
    if series[0].geometry.tilted:
        notes.append((WARNING, "dicom_gantry_tilt", f"{series[0].geometry.describe()}; the volume's affine is "
                                                    "sheared (data_prep dicom --resample-irregular gives an orthogonal "
                                                    "grid)"))
    volume = read_volume(series[0])
    return _Loaded(volume, tuple(volume.shape), notes=notes)


def _shear_deg(affine: np.ndarray) -> float:
    """Largest departure from 90 degrees between two spatial axes of ``affine``, in degrees."""
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(axes, axis=0)
    if np.any(norms == 0):
        return 0.0
    unit = axes / norms
    cosines = [abs(float(unit[:, i] @ unit[:, j])) for i, j in ((0, 1), (0, 2), (1, 2))]
    return float(np.degrees(np.arcsin(min(1.0, max(cosines)))))


def _load_nifti(path: Path, role: str) -> _Loaded:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel/gzip raise many types for damaged or truncated files
        raise DataPrepError(f"unreadable or truncated NIfTI ({type(e).__name__}: {e})") from None
    shape = tuple(int(s) for s in arr.shape)
    notes: list[tuple[str, str, str]] = []
    shear = _shear_deg(img.affine)
    if role == "image" and shear > _SHEAR_TOLERANCE_DEG:  # its label shares the grid: one warning
        notes.append((WARNING, "sheared_affine", f"its affine is sheared: two voxel axes are {90 - shear:.2f} degrees "
                                                 "apart, not 90 (a gantry-tilted CT converted with its exact "
                                                 "geometry); transforms that assume orthogonal axes misplace it"))
    return _Loaded(arr, _squeeze_trailing(shape[:3] if len(shape) > 3 else shape), notes=notes)


def _load_numpy(path: Path, role: str) -> _Loaded:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.keys())
                pick = keys[0] if len(keys) == 1 else role if role in keys else None
                if pick is None:
                    raise DataPrepError(f".npz with arrays {keys}: expected one array, or one named {role!r}")
                arr = np.asarray(loaded[pick])
        else:
            arr = np.asarray(loaded)
    except DataPrepError:
        raise
    except Exception as e:  # numpy/zipfile raise many types for damaged files; pickles are refused here too
        raise DataPrepError(f"unreadable or truncated {path.suffix} file ({type(e).__name__}: {e})") from None
    return _Loaded(arr, tuple(int(s) for s in arr.shape))


def _load_2d(path: Path, role: str) -> _Loaded:
    from PIL import Image

    try:
        with Image.open(path) as im:  # header only: the mode, which the readers below convert away
            mode = im.mode
    except Exception:
        mode = None  # the reader below names the problem
    arr = read_image_2d(path) if role == "image" else read_mask_2d(path)
    return _Loaded(arr, tuple(int(s) for s in arr.shape[:2]), pil_mode=mode)


def _load(path: Path, role: str) -> _Loaded:
    name = path.name.lower()
    if path.is_dir():
        return _load_dicom_folder(path)
    if name.endswith(NIFTI_EXTENSIONS):
        return _load_nifti(path, role)
    if name.endswith(NUMPY_EXTENSIONS):
        return _load_numpy(path, role)
    if name.endswith(IMAGE_EXTENSIONS):
        return _load_2d(path, role)
    raise _Unsupported(path.suffix or path.name)


def _digest(path: Path) -> str | None:
    """Content hash of a file, so that a copy of a training image under another name is found too."""
    if not path.is_file():
        return None
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# checks of one array


def _shown(values: Iterable) -> str:
    values = list(values)
    text = ", ".join(_fmt(v) for v in values[:_MAX_SHOWN_VALUES])
    return text + (f", ... ({len(values)} values)" if len(values) > _MAX_SHOWN_VALUES else "")


def _fmt(v: Any) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else f"{v:.4g}"


def _size(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _check_image(loaded: _Loaded, s: _Settings) -> list[tuple[str, str, str]]:
    out = []
    arr = loaded.array
    if loaded.pil_mode in _PALETTE_MODES:
        out.append((ERROR, "palette_image", f"palette image (mode {loaded.pil_mode}): MONAI's PILReader loads its "
                                            "palette indices, not colours, and the bundles reject it; save it as RGB "
                                            "or grey (e.g. re-run the data_prep converter)"))
    elif loaded.pil_mode in _OTHER_COLOUR_MODES:
        out.append((ERROR, "colour_space", f"{loaded.pil_mode} image: MONAI's PILReader loads {loaded.pil_mode} "
                                           "values, not RGB, and the bundles reject it; convert it to RGB or grey"))
    elif loaded.pil_mode in ("RGBA", "LA"):
        out.append((WARNING, "rgba", f"{loaded.pil_mode} image: the bundles (AdaptChannelsd) and data_prep's readers "
                                     "drop the alpha channel, but a plain MONAI pipeline loads it as an extra channel; "
                                     "save it without alpha to be safe (e.g. re-run the data_prep converter)"))
    if loaded.pil_mode in _WIDE_PIL_MODES:
        top = int(arr.max()) if arr.size else 0
        bits = 16 if loaded.pil_mode.startswith("I;16") else 32
        out.append((INFO, "16bit", f"{bits}-bit image (mode {loaded.pil_mode}, values up to {top}): scale "
                                   "intensities (e.g. ScaleIntensityd) rather than assume 0..255"))
    finite = True
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            finite = False
            n_nan = int(np.count_nonzero(np.isnan(arr)))
            out.append((ERROR, "non_finite", f"{bad} non-finite intensities ({n_nan} NaN, {bad - n_nan} Inf) in "
                                             f"{arr.size} values: they turn the loss into NaN"))
    if finite and arr.size and arr.min() == arr.max():
        out.append((WARNING, "constant_image", f"constant image (every value is {_fmt(arr.flat[0])}): nothing to "
                                               "learn, and intensity scaling divides by zero"))
    spatial = loaded.spatial
    need = [(f"--min-size {s.min_size}", (s.min_size,) * len(spatial))]
    patch = s.patch_size * len(spatial) if len(s.patch_size) == 1 else s.patch_size
    if len(patch) != len(spatial):
        out.append((ERROR, "patch_size", f"image {_size(spatial)} has {len(spatial)} spatial dims but --patch-size "
                                         f"{_size(s.patch_size)} has {len(patch)}"))
    else:
        need.append((f"--patch-size {_size(s.patch_size)}", patch))
    too_small = [name for name, req in need if any(d < r for d, r in zip(spatial, req))]
    if too_small:
        out.append((ERROR, "too_small", f"image {_size(spatial)} is smaller than {' and '.join(too_small)}: "
                                        "crop/network input would not fit (resize it or lower the setting)"))
    return out


def _check_label(loaded: _Loaded, key: str, s: _Settings) -> list[tuple[str, str, str]]:
    arr = loaded.array
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        return [(ERROR, "label_dtype", f"label of type {arr.dtype}: expected integer class indices")]
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            return [(ERROR, "non_finite", f"{bad} non-finite (NaN/Inf) label values")]
    if key == SOFT_LABEL_KEY:
        if arr.size and arr.min() < 0:
            return [(ERROR, "label_values", f"negative soft label values (down to {_fmt(arr.min())})")]
        return []  # soft labels are meant to be non-integer; no class set applies
    values = np.unique(arr)
    out = []
    fractional = values[values != np.round(values)] if np.issubdtype(values.dtype, np.floating) else values[:0]
    if fractional.size:
        return [(ERROR, "soft_label", f"non-integer label values ({_shown(fractional)}): soft labels are allowed "
                                      f"only under the '{SOFT_LABEL_KEY}' key; '{key}' must hold class indices")]
    # a binary mask stored at full scale (0/255, 0/65535, 0/type max): the encoding data_prep.masks decodes to 0/1
    top = binary_foreground(values, arr.dtype) if values.size and values.max() > 1 else None
    binary_full_scale = top is not None and top > 1
    encoding = f"0/{_fmt(top)}" if binary_full_scale else ""
    if s.classes is not None:
        bad = [v for v in values.tolist() if int(v) not in s.classes]
        allowed = "{" + ", ".join(map(str, sorted(s.classes))) + "}"
        if bad and binary_full_scale and 0 in s.classes:
            fg = 1 if 1 in s.classes else max(s.classes)
            out.append((ERROR, "label_255", f"{encoding} mask, but labels must be class indices {allowed} "
                                            f"({s.classes_from}): map {_fmt(top)} to {fg} (e.g. re-run the "
                                            "data_prep converter, which writes 0/1 masks); as is, "
                                            f"{_fmt(top)} would be trained as class {_fmt(top)}"))
        elif bad:
            out.append((ERROR, "label_values", f"label values {_shown(bad)} outside the classes {allowed} "
                                               f"({s.classes_from})"))
    elif values.size and values.min() < 0:
        out.append((ERROR, "label_values", f"negative label values ({_shown(values[values < 0])})"))
    elif binary_full_scale:
        out.append((WARNING, "label_255", f"{encoding} mask and no classes configured: unless {_fmt(top)} is meant "
                                          "as a class index, map it to 1 (e.g. re-run the data_prep converter); give "
                                          "--num-classes to make this an error"))
    if values.size == 1 and values[0] == 0:
        out.append((INFO, "empty_mask", "empty mask (no foreground)"))
    elif not out:
        out.extend(_single_pixel_lesions(arr, values))
    return out


def _single_pixel_lesions(arr: np.ndarray, values: np.ndarray) -> list[tuple[str, str, str]]:
    from scipy import ndimage as ndi

    found, first = 0, None
    for c in values[values != 0].tolist():
        components, n = ndi.label(arr == c)
        sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
        singles = np.flatnonzero(sizes == 1)
        if singles.size:
            found += int(singles.size)
            if first is None:
                first = tuple(int(i) for i in np.argwhere(components == singles[0] + 1)[0])
    if not found:
        return []
    return [(WARNING, "single_pixel_lesion", f"{found} single-pixel lesion(s) (isolated foreground pixels, first "
                                             f"at index {first}): annotation noise, or too small to learn")]


# ----------------------------------------------------------------------------------------------
# checks of one entry


def _path_values(entry: Mapping) -> list[tuple[str, str]]:
    """``(key, path string)`` of the entry's file references: keys named like images/labels, or
    string values with a known file extension (lists, as for multi-file images, are flattened)."""
    exts = (*IMAGE_EXTENSIONS, *NIFTI_EXTENSIONS, *NUMPY_EXTENSIONS)
    out = []
    for key, value in entry.items():
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            continue
        for v in items:
            if str(key).lower().startswith(_PATH_KEY_PREFIXES) or v.lower().endswith(exts):
                out.append((str(key), v))
    return out


@dataclass
class _EntryResult:
    problems: list[Problem] = field(default_factory=list)
    files: int = 0
    image_ids: list[tuple[str, str | None]] = field(default_factory=list)  # (absolute path, content digest)


def _check_entry(section: str, index: int, entry: Any, s: _Settings) -> _EntryResult:
    res = _EntryResult()

    def report(level: str, kind: str, message: str, key: str | None = None, file: Path | None = None) -> None:
        res.problems.append(Problem(level, kind, message, section, index, key, None if file is None else str(file)))

    if isinstance(entry, str):
        entry = {"image": entry}  # MONAI allows a test section listing image paths only
    if not isinstance(entry, Mapping):
        report(ERROR, "bad_entry", f"entry is a {type(entry).__name__}, expected an object with an 'image' key")
        return res
    refs = _path_values(entry)
    if "image" not in entry:
        report(ERROR, "no_image", f"entry has no 'image' key (keys: {', '.join(map(str, entry)) or 'none'})")
    elif not any(k == "image" for k, _ in refs):
        report(ERROR, "no_image", f"'image' is not a path: {entry['image']!r}")
    # image first: labels are compared with its size
    refs.sort(key=lambda kv: kv[0] != "image")
    shapes: dict[str, tuple[tuple[int, ...], Path]] = {}
    for key, value in refs:
        if not value.strip():
            report(ERROR, "missing_file", f"'{key}' is an empty path", key)
            continue
        path = Path(value).expanduser()
        path = Path(os.path.abspath(path if path.is_absolute() else s.root / path))
        role = "image" if key.lower().startswith("image") else "label"
        res.files += 1
        if not path.exists():
            report(ERROR, "missing_file", f"'{key}' file not found", key, path)
            continue
        if role == "image":
            res.image_ids.append((str(path), _digest(path)))
        try:
            loaded = _load(path, role)
        except _Unsupported as e:
            report(WARNING, "unsupported_format", f"'{key}': format {e} not checked by data_prep", key, path)
            continue
        except DataPrepError as e:
            report(ERROR, "unreadable", f"'{key}': {_strip(str(e), path)}", key, path)
            continue
        except Exception as e:  # any reader failure is this file's problem, never the checker's crash
            report(ERROR, "unreadable", f"'{key}': unreadable ({type(e).__name__}: {e})", key, path)
            continue
        found = loaded.notes + (_check_image(loaded, s) if role == "image" else _check_label(loaded, key, s))
        for level, kind, message in found:
            report(level, kind, message, key, path)
        reference = shapes.get("image") if role == "label" else shapes.get(key)
        if reference is not None and reference[0] != loaded.spatial:
            ref_shape, ref_path = reference
            ref_key = "image" if role == "label" else key
            report(ERROR, "size_mismatch", f"{ref_key}/{key} size mismatch: {ref_key} {_size(ref_shape)} "
                                           f"({ref_path.name}), {key} {_size(loaded.spatial)}", key, path)
        shapes.setdefault(key, (loaded.spatial, path))
        del loaded  # one file in memory at a time
    return res


def _duplicates(results: list[tuple[str, int, _EntryResult]]) -> list[Problem]:
    """The same image twice in a section, or in training and another section (leakage)."""
    out = []
    by_path: dict[str, list[tuple[str, int]]] = {}
    by_digest: dict[str, list[tuple[str, int, str]]] = {}
    for section, index, res in results:
        for path, digest in res.image_ids:
            for other_section, other_index, *rest in by_path.get(path, []) + by_digest.get(digest or "", []):
                same_path = not rest or rest[0] == path
                if other_section == section:
                    what = "duplicate image"
                elif "training" in (section, other_section):
                    what = f"leakage between {other_section} and {section}"
                else:
                    continue  # e.g. 'test' beside 'test_Kvasir' listing the same outputs on purpose
                how = "same file as" if same_path else f"identical content to {rest[0]} in"
                out.append(Problem(WARNING, "leakage" if other_section != section else "duplicate",
                                   f"{what}: {how} {other_section}[{other_index}]", section, index, "image", path))
                break
            by_path.setdefault(path, []).append((section, index))
            if digest is not None:
                by_digest.setdefault(digest, []).append((section, index, path))
    return out


# ----------------------------------------------------------------------------------------------
# the datalist


def _read_datalist(path: Path, report: CheckReport) -> dict | None:
    def fail(kind: str, message: str) -> None:
        report.add(Problem(ERROR, kind, message, file=str(path)))

    if not path.exists():
        fail("missing_datalist", "datalist not found")
        return None
    if path.is_dir():
        fail("bad_datalist", "is a folder, expected a datalist JSON file")
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        fail("bad_datalist", f"unreadable datalist ({type(e).__name__}: {e})")
        return None
    except json.JSONDecodeError as e:
        fail("bad_datalist", f"not valid JSON ({e})")
        return None
    if not isinstance(doc, dict):
        fail("bad_datalist", f"datalist is a JSON {type(doc).__name__}, expected an object of sections")
        return None
    return doc


def check_datalist(path: str | os.PathLike, sections: Sequence[str] | None = None, num_classes: int | None = None,
                   label_values: Sequence[int] | None = None, min_size: int = 16,
                   patch_size: int | Sequence[int] = 16, workers: int = 1) -> CheckReport:
    """Check every entry and file of a MONAI datalist and collect all problems.

    Args:
        path: the datalist JSON; relative entry paths are resolved against its folder.
        sections: sections to check; default: every top-level list (``training``, ``validation``,
            ``test``, ``test_Kvasir``, ...). A section named here that is absent is an error.
        num_classes: labels must hold ``0..num_classes-1`` (background included: binary is 2).
        label_values: the allowed label values (overrides ``num_classes``, which they must fit).
            With neither, the datalist's top-level ``labels`` mapping gives the classes if present,
            else only integrality and sign are checked.
        min_size: smallest allowed image side (the network's minimum input size).
        patch_size: training patch size, one value for every spatial dim or one per dim.
        workers: files checked in parallel threads (each holds one file in memory).

    Returns:
        The report; ``report.ok`` is false when any error was found.

    Raises:
        DataPrepError: a bad setting (the problems of the data are reported, never raised).
    """
    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 2):
        raise DataPrepError(f"--num-classes {num_classes}: must be at least 2, background included (a binary "
                            "mask is --num-classes 2)")
    if int(min_size) < 1:
        raise DataPrepError(f"--min-size {min_size}: must be at least 1")
    if int(workers) < 1:
        raise DataPrepError(f"--workers {workers}: must be at least 1")
    patch = _patch(patch_size)
    path = Path(os.path.abspath(Path(path).expanduser()))
    report = CheckReport(str(path))
    doc = _read_datalist(path, report)
    classes, classes_from = _class_set(num_classes, label_values, doc)
    s = _Settings(path.parent, classes, classes_from, int(min_size), patch)
    report.settings = {"sections": list(sections) if sections else None,
                       "classes": None if classes is None else sorted(classes), "classes_from": classes_from,
                       "min_size": s.min_size, "patch_size": list(patch), "base_dir": str(s.root)}
    report.counts = {"entries": {}, "files": 0}
    if doc is not None:
        chosen = _sections(doc, sections, report)
        jobs = [(name, i, entry) for name in chosen for i, entry in enumerate(doc[name])]
        report.counts["entries"] = {name: len(doc[name]) for name in chosen}
        if workers > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(int(workers)) as pool:
                done = list(pool.map(lambda job: _check_entry(*job, s), jobs))
        else:
            done = [_check_entry(*job, s) for job in jobs]
        results = [(name, i, res) for (name, i, _), res in zip(jobs, done)]
        for _, _, res in results:
            report.counts["files"] += res.files
            for problem in res.problems:
                report.add(problem)
        for problem in _duplicates(results):
            report.add(problem)
        order = {name: i for i, name in enumerate(chosen)}
        for items in (report.errors, report.warnings, report.info):
            items.sort(key=lambda p: (p.index is not None, order.get(p.section, -1), p.index or 0))
    for level, items in (("errors", report.errors), ("warnings", report.warnings), ("info", report.info)):
        report.counts[level] = dict(sorted(Counter(p.kind for p in items).items()))
    return report


def _sections(doc: dict, sections: Sequence[str] | None, report: CheckReport) -> list[str]:
    where = Path(report.datalist)
    lists = [k for k, v in doc.items() if isinstance(v, list)]
    if sections:
        chosen = []
        for name in sections:
            if name not in doc:
                report.add(Problem(ERROR, "missing_section", f"no section {name!r} (sections: "
                                                             f"{', '.join(lists) or 'none'})", file=str(where)))
            elif not isinstance(doc[name], list):
                report.add(Problem(ERROR, "bad_section", f"section {name!r} is a {type(doc[name]).__name__}, "
                                                         "expected a list of entries", file=str(where)))
            else:
                chosen.append(name)
        return chosen
    if not lists:
        report.add(Problem(ERROR, "no_sections", "no sections: expected lists such as 'training', 'validation', "
                                                 "'test'", file=str(where)))
    return lists


# ----------------------------------------------------------------------------------------------
# command line


def _values(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1, got {text!r}")
    return values


def _run(args: argparse.Namespace) -> int:
    report = check_datalist(args.datalist, sections=args.sections, num_classes=args.num_classes,
                            label_values=args.label_values, min_size=args.min_size, patch_size=args.patch_size,
                            workers=args.workers)
    print(f"checking {report.datalist} (label classes: {report.settings['classes_from']})")
    print(report.format())
    if args.json is not None:
        try:
            write_json(args.json, report.as_dict())
        except OSError as e:
            raise DataPrepError(f"--json {args.json}: cannot write the report ({e})") from None
        print(f"report: {Path(args.json).resolve()}")
    return 0 if report.ok else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``check`` subcommand (``python -m data_prep check ...``)."""
    p = subparsers.add_parser(
        "check", help="validate a datalist and every file it names, listing all problems at once",
        description="Read every file a MONAI datalist names and list every problem at once (errors, then warnings, "
                    "then counts); exit code 1 if any error. Relative paths are resolved against the datalist's "
                    "folder.")
    p.add_argument("--datalist", required=True, type=Path, help="the datalist JSON")
    p.add_argument("--sections", nargs="+", default=None, metavar="NAME",
                   help="sections to check (default: every list in the datalist)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="labels must hold class indices 0..N-1 (default: the datalist's 'labels' if present)")
    p.add_argument("--label-values", type=_values, default=None, metavar="V,V,...",
                   help="the allowed label values, e.g. 0,1 (overrides --num-classes)")
    p.add_argument("--min-size", type=int, default=16, help="smallest allowed image side (default 16)")
    p.add_argument("--patch-size", type=int, nargs="+", default=[16], metavar="N",
                   help="training patch size: one value for every dim or one per dim (default 16)")
    p.add_argument("--json", type=Path, default=None, metavar="REPORT.json", help="also write the report as JSON")
    p.add_argument("--workers", type=int, default=1, help="files checked in parallel threads (default 1)")
    p.set_defaults(func=_run)
