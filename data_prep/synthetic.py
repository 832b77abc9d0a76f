"""The synthetic default dataset: lesions whose boundary is sharp in places and faint in others.

Each lesion is a star-shaped blob, ``|x - c| < r(u)`` with a radius ``r(u)`` that varies smoothly with
the direction ``u``. A second smooth function of ``u`` sets the boundary *sharpness*: the lesion's
intensity profile across its boundary is a logistic of width ``w(u)``, about half a pixel in sharp
sectors and several pixels in faint ones, where the lesion fades smoothly into the background.
Background texture (smoothed noise at two scales and a gradient), a slight blur and acquisition noise
complete the image. The clean label is the half-contrast level set ``|x - c| < r(u)``.

The noisy training labels model an annotator who follows the edge where it is visible and guesses
where it is not: the boundary is displaced by up to ``noise_px`` pixels, scaled by the squared
faintness of the sector, so sharp sectors stay exact and the wrong pixels concentrate along the faint
parts of the boundary — the situation DALE targets. ``summary.json`` measures it: Dice of noisy vs
clean per image and overall, the fraction of wrong pixels, and the share of the wrong pixels lying in
the faint-boundary region against that region's share of the boundary band.

``--realistic`` (3D) draws the same lesion model in millimetres on an anisotropic CT-like grid (default
256 x 256 x 40 voxels of 0.8 x 0.8 x 2.5 mm, the spacing written in the NIfTI affine): lesions of 2.5-6 mm radius
whose border is sharp (0.3 mm) in places and fades over 2.5 mm in others, so that resizing a whole volume to a
small grid loses them and a sliding window at the native spacing does not (``benchmarks/resize_vs_sliding.py``).

Command line (through ``python -m data_prep synthetic``)::

    python -m data_prep synthetic --out data/synthetic [--dims 2|3] [--n-train N --n-val N --n-test N]
        [--n-meta N] [--labeled-fraction F] [--size S] [--seed S] [--noise-px P]
        [--realistic [--depth D] [--spacing X Y Z]]

Outputs: ``images/``, ``labels/`` (clean, 0/1), ``labels_noisy/`` (training only), ``summary.json`` and,
last, ``datalist.json`` (``training``: ``image``, ``label`` = noisy, ``label_clean``; ``validation`` and
``test``: ``image``, ``label`` = clean; with ``--n-meta N`` also ``meta``: N further cases with clean labels, the
small clean set that meta re-weighting (MW-Net) needs; with ``--labeled-fraction F`` only a fixed-seed share F
of the training cases stays in ``training`` and the others are listed in ``unlabeled`` as ``{"image"}`` only,
for semi-supervised training; their label files are written all the same, so the data do not depend on F).
2D: grayscale uint8 PNG images and uint8 PNG masks; 3D: float32 NIfTI images and uint8 NIfTI masks. Same seed
and options give byte-identical files; re-running on a complete output with the same options does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .convert import UNLABELED_SECTION, labeled_keys
from .datalist import DATALIST_NAME, SUMMARY_NAME, LabelSummary, write_datalist
from .io import DataPrepError, save_nifti, save_png, write_json
from .noise import DiceAccumulator

__all__ = [
    "SyntheticCase",
    "generate_case",
    "generate_realistic_case",
    "default_settings",
    "default_noise_px",
    "make_synthetic_dataset",
    "add_parser",
]

GENERATOR_VERSION = 1
SPLITS = (("training", "train"), ("validation", "val"), ("test", "test"), ("meta", "meta"))
_CASE_FILE = re.compile(r"^(train|val|test|meta)_\d+\.(png|nii\.gz)$")
# probabilities of 0, 1 and 2 lesions in an image
LESION_COUNT_P = (0.08, 0.60, 0.32)


@dataclass
class SyntheticCase:
    """One generated case.

    Attributes:
        image: float32 image in [0, 1].
        label: clean uint8 0/1 mask.
        label_noisy: noisy uint8 0/1 mask (boundary displaced in faint sectors).
        faint: bool map of the faint-boundary region (band around the boundary in faint sectors).
        boundary: bool map of the whole band around the boundary (faint and sharp sectors).
        n_lesions: number of lesions drawn.
    """

    image: np.ndarray
    label: np.ndarray
    label_noisy: np.ndarray
    faint: np.ndarray
    boundary: np.ndarray
    n_lesions: int


def default_settings(dims: int) -> dict:
    """Default ``size`` and split counts, small enough for a few CPU epochs in a minute or two."""
    if dims == 2:
        return {"size": 96, "n_train": 48, "n_val": 12, "n_test": 12}
    if dims == 3:
        return {"size": 48, "n_train": 16, "n_val": 4, "n_test": 4}
    raise DataPrepError(f"--dims must be 2 or 3, got {dims}")


def default_noise_px(size: int) -> int:
    """Largest boundary displacement of the noisy labels: about 6 % of the image side, at least 2 px."""
    return max(2, int(round(size / 16)))


def _reference_directions(dims: int) -> np.ndarray:
    """Evenly spread unit vectors, ``(dims, n)``, to standardise direction fields."""
    if dims == 2:
        t = np.linspace(0, 2 * np.pi, 360, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)]).astype(np.float32)
    n = 600  # Fibonacci sphere
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z ** 2)
    return np.stack([z, r * np.cos(phi), r * np.sin(phi)]).astype(np.float32)


def _direction_field(rng: np.random.Generator, u: np.ndarray, n_terms: int, freq: tuple[float, float]) -> np.ndarray:
    """A smooth random function of the direction ``u`` (``(dims, *shape)``), standardised to mean 0, std 1.

    A sum of cosines of projections on random axes works unchanged on the circle and on the sphere.
    """
    dims = u.shape[0]
    axes = rng.standard_normal((n_terms, dims)).astype(np.float32)
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    f = (rng.uniform(*freq, n_terms) * np.pi).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, n_terms).astype(np.float32)
    amp = rng.uniform(0.5, 1.0, n_terms).astype(np.float32)

    def evaluate(dirs: np.ndarray) -> np.ndarray:
        proj = np.tensordot(axes, dirs, axes=(1, 0))  # (n_terms, *shape)
        expand = (slice(None),) + (None,) * (proj.ndim - 1)
        return np.sum(amp[expand] * np.cos(f[expand] * proj + phase[expand]), axis=0)

    ref = evaluate(_reference_directions(dims))
    return (evaluate(u) - ref.mean()) / max(float(ref.std()), 1e-6)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return field / max(float(field.std()), 1e-6)


def generate_case(rng: np.random.Generator | int | None, size: int = 96, dims: int = 2, noise_px: float | None = None,
                  n_lesions: int | None = None) -> SyntheticCase:
    """Generate one image with its clean and noisy labels.

    Args:
        rng: random generator or seed.
        size: side of the square (2D) or cubic (3D) image in pixels.
        dims: 2 or 3.
        noise_px: largest boundary displacement of the noisy label in the faintest sectors
            (default :func:`default_noise_px`).
        n_lesions: number of lesions; default drawn (0, 1 or 2 with probabilities ``LESION_COUNT_P``).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if dims not in (2, 3):
        raise DataPrepError(f"dims must be 2 or 3, got {dims}")
    if size < 16:
        raise DataPrepError(f"size must be at least 16 pixels, got {size}")
    noise_px = float(default_noise_px(size) if noise_px is None else noise_px)
    if noise_px < 0:
        raise DataPrepError(f"noise_px must be non-negative, got {noise_px}")
    if n_lesions is None:
        n_lesions = int(rng.choice(len(LESION_COUNT_P), p=LESION_COUNT_P))

    shape = (size,) * dims
    grid = np.indices(shape, dtype=np.float32)
    w_sharp, w_faint = 0.6, max(3.0, 1.25 * noise_px)
    band = noise_px + 1.0

    lesion = np.zeros(shape, np.float32)
    clean = np.zeros(shape, bool)
    noisy = np.zeros(shape, bool)
    faint = np.zeros(shape, bool)
    boundary = np.zeros(shape, bool)
    for _ in range(n_lesions):
        r0 = size * (rng.uniform(0.11, 0.22) if n_lesions == 1 else rng.uniform(0.08, 0.15))
        margin = 1.35 * r0 + 2
        centre = rng.uniform(margin, size - 1 - margin, size=dims).astype(np.float32)
        rel = grid - centre.reshape((dims,) + (1,) * dims)
        rad = np.sqrt(np.sum(rel ** 2, axis=0))
        u = rel / np.maximum(rad, 1e-3)

        radius = r0 * (1 + 0.3 * np.clip(_direction_field(rng, u, 4, (0.5, 2.5)) / 2, -1, 1))
        d = rad - radius  # radial signed distance to the boundary, in pixels
        # sharp (faintness ~0) and faint (~1) sectors, roughly half of each, with smooth transitions
        faintness = 1 / (1 + np.exp(3 * _direction_field(rng, u, 3, (0.3, 1.5))))
        width = w_sharp + (w_faint - w_sharp) * faintness
        contrast = rng.uniform(0.28, 0.42)
        lesion = np.maximum(lesion, contrast / (1 + np.exp(np.clip(d / width, -30, 30))))

        # mostly one direction per lesion (an annotator who over- or under-segments), varying along it
        sign = 1.0 if rng.random() < 0.5 else -1.0
        direction = np.clip(0.75 * sign + 0.5 * _direction_field(rng, u, 2, (0.3, 1.0)), -1, 1)
        clean |= d < 0
        noisy |= d < noise_px * faintness ** 2 * direction
        near = np.abs(d) <= band
        boundary |= near
        faint |= near & (faintness > 0.5)

    image = 0.22 + 0.06 * _smooth_noise(rng, shape, size / 10) + 0.03 * _smooth_noise(rng, shape, 1.5)
    tilt = rng.standard_normal(dims).astype(np.float32)
    image += 0.05 * np.tensordot(tilt / np.linalg.norm(tilt), grid / size - 0.5, axes=(0, 0))
    image += lesion * (1 + 0.12 * _smooth_noise(rng, shape, 2.0))
    image = ndi.gaussian_filter(image, 0.5)  # point spread of the scanner
    image += 0.035 * rng.standard_normal(shape).astype(np.float32)
    image = np.clip(image, 0, 1).astype(np.float32)
    return SyntheticCase(image=image, label=clean.astype(np.uint8), label_noisy=noisy.astype(np.uint8),
                         faint=faint, boundary=boundary, n_lesions=n_lesions)


#: the realistic 3D option's defaults: a thin-slice CT-like grid (0.8 x 0.8 mm in-plane, 2.5 mm slices)
REALISTIC_SPACING = (0.8, 0.8, 2.5)
REALISTIC_SIZE, REALISTIC_DEPTH = 256, 40
#: lesion radii (mm) and boundary widths (mm) of the realistic option: lesions of a few millimetres whose border
#: is sharp (0.3 mm) in places and fades over 2.5 mm in others
REALISTIC_RADIUS_MM = (2.5, 6.0)
REALISTIC_WIDTH_MM = (0.3, 2.5)
REALISTIC_NOISE_MM = 1.5


def generate_realistic_case(rng: np.random.Generator | int | None, size: int = REALISTIC_SIZE,
                            depth: int = REALISTIC_DEPTH, spacing: tuple[float, float, float] = REALISTIC_SPACING,
                            noise_mm: float = REALISTIC_NOISE_MM, n_lesions: int | None = None) -> SyntheticCase:
    """One anisotropic volume of small lesions with faint borders, defined in millimetres.

    The lesion model is :func:`generate_case`'s (star-shaped blobs, a logistic boundary profile whose width
    varies with the direction, noisy labels displaced where the boundary is faint) evaluated at the voxel
    centres in mm, so that lesions of 2.5-6 mm radius span a few voxels in-plane and one to five slices: what
    resizing a whole CT to a small grid destroys. Texture, a point spread of 0.4 mm in-plane and the slice
    thickness through-plane, and acquisition noise complete it.

    Args:
        rng: random generator or seed.
        size: in-plane side in voxels (the first two axes).
        depth: number of slices (the third axis).
        spacing: voxel size in mm, ``(x, y, z)``.
        noise_mm: largest boundary displacement of the noisy label in the faintest sectors, in mm.
        n_lesions: number of lesions; default 1 to 4, uniformly.

    Raises:
        DataPrepError: for a size under 32 voxels, a depth under 8, non-positive spacing or negative noise.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if size < 32 or depth < 8:
        raise DataPrepError(f"realistic volumes need size >= 32 and depth >= 8 voxels, got {size} and {depth}")
    spacing_a = np.asarray(spacing, np.float32)
    if spacing_a.shape != (3,) or not (spacing_a > 0).all():
        raise DataPrepError(f"spacing must be three positive mm values, got {spacing}")
    if noise_mm < 0:
        raise DataPrepError(f"noise_mm must be non-negative, got {noise_mm}")
    if n_lesions is None:
        n_lesions = int(rng.integers(1, 5))
    shape = (size, size, depth)
    extent = np.asarray(shape, np.float32) * spacing_a
    lesion = np.zeros(shape, np.float32)
    clean, noisy, faint, boundary = (np.zeros(shape, bool) for _ in range(4))
    w_sharp, w_faint = REALISTIC_WIDTH_MM
    band = noise_mm + 1.0
    for _ in range(n_lesions):
        r0 = rng.uniform(*REALISTIC_RADIUS_MM)
        reach = 1.35 * r0 + 6 * w_faint + noise_mm  # mm around the centre where the lesion is not yet background
        centre = rng.uniform(1.35 * r0 + 2 * spacing_a, extent - 1.35 * r0 - 2 * spacing_a).astype(np.float32)
        lo = np.maximum(np.floor((centre - reach) / spacing_a), 0).astype(int)
        hi = np.minimum(np.ceil((centre + reach) / spacing_a) + 1, shape).astype(int)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.stack(np.meshgrid(*[(np.arange(a, b, dtype=np.float32)) * sp for a, b, sp in
                                      zip(lo, hi, spacing_a)], indexing="ij"))
        rel = grid - centre.reshape(3, 1, 1, 1)
        rad = np.sqrt(np.sum(rel ** 2, axis=0))
        u = rel / np.maximum(rad, 1e-3)
        radius = r0 * (1 + 0.3 * np.clip(_direction_field(rng, u, 4, (0.5, 2.5)) / 2, -1, 1))
        d = rad - radius  # mm
        faintness = 1 / (1 + np.exp(3 * _direction_field(rng, u, 3, (0.3, 1.5))))
        width = w_sharp + (w_faint - w_sharp) * faintness
        contrast = rng.uniform(0.2, 0.35)
        lesion[box] = np.maximum(lesion[box], contrast / (1 + np.exp(np.clip(d / width, -30, 30))))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        direction = np.clip(0.75 * sign + 0.5 * _direction_field(rng, u, 2, (0.3, 1.0)), -1, 1)
        clean[box] |= d < 0
        noisy[box] |= d < noise_mm * faintness ** 2 * direction
        near = np.abs(d) <= band
        boundary[box] |= near
        faint[box] |= near & (faintness > 0.5)
    # texture scales in mm (organ-sized and fine), anisotropic in voxels
    coarse = tuple(float(v) for v in 12.0 / spacing_a)
    fine = tuple(float(v) for v in 1.5 / spacing_a)
    image = 0.25 + 0.05 * _smooth_noise(rng, shape, coarse) + 0.025 * _smooth_noise(rng, shape, fine)
    image += lesion
    # point spread: 0.4 mm in-plane, the slice profile through-plane
    image = ndi.gaussian_filter(image, tuple(float(v) for v in np.array([0.4, 0.4, 0.4 * spacing_a[2]]) / spacing_a))
    image += 0.03 * rng.standard_normal(shape).astype(np.float32)
    image = np.clip(image, 0, 1).astype(np.float32)
    return SyntheticCase(image=image, label=clean.astype(np.uint8), label_noisy=noisy.astype(np.uint8),
                         faint=faint, boundary=boundary, n_lesions=n_lesions)


def _case_rng(seed: int, dims: int, split: int, index: int) -> np.random.Generator:
    # each case has its own stream: changing the split sizes leaves the other cases unchanged
    return np.random.default_rng([seed, dims, split, index])


def make_synthetic_dataset(out: str | os.PathLike, dims: int = 2, n_train: int | None = None,
                           n_val: int | None = None, n_test: int | None = None, size: int | None = None,
                           seed: int = 0, noise_px: float | None = None, verbose: bool = True,
                           n_meta: int = 0, labeled_fraction: float | None = None, realistic: bool = False,
                           depth: int | None = None, spacing: tuple[float, float, float] | None = None) -> dict:
    """Generate the synthetic dataset into ``out`` and return its summary.

    Args:
        out: output folder.
        dims: 2 (PNG) or 3 (NIfTI).
        n_train: training cases (default 48 in 2D, 16 in 3D).
        n_val: validation cases (default 12 / 4).
        n_test: test cases (default 12 / 4).
        size: image side in pixels (default 96 / 48).
        seed: seed (non-negative); same seed and options give byte-identical files.
        noise_px: largest boundary displacement of the noisy training labels (default about size / 16).
        verbose: print what was written and the measured noise level.
        n_meta: cases of a ``meta`` section with clean labels (default 0: no section), for meta re-weighting.
            Every case has its own random stream, so adding them changes no other case.
        labeled_fraction: keep the labels of this fixed-seed share of the training cases (in (0, 1)) and list the
            other training images in an ``unlabeled`` section without labels (default ``None``: all labelled).
            Only the datalist changes: every file is generated as without it.
        realistic: 3D only: anisotropic volumes of small lesions with faint borders
            (:func:`generate_realistic_case`): ``size`` is the in-plane side (default 256), ``depth`` the number of
            slices (default 40), ``spacing`` the voxel size in mm (default 0.8 x 0.8 x 2.5, written in the NIfTI
            affine) and ``noise_px`` the largest label displacement in mm (default 1.5).
        depth: slices of a realistic volume.
        spacing: voxel size (mm) of a realistic volume.

    Returns:
        The content of ``summary.json``.

    Raises:
        DataPrepError: bad option, or ``out`` holding a datalist this function did not write.
    """
    defaults = default_settings(dims)
    if realistic and dims != 3:
        raise DataPrepError("--realistic makes 3D volumes: use it with --dims 3")
    if not realistic and (depth is not None or spacing is not None):
        raise DataPrepError("--depth and --spacing describe --realistic volumes; add --realistic")
    if realistic:
        defaults = {**defaults, "size": REALISTIC_SIZE}
        depth = REALISTIC_DEPTH if depth is None else int(depth)
        spacing = tuple(float(v) for v in (REALISTIC_SPACING if spacing is None else spacing))
        if len(spacing) != 3 or min(spacing) <= 0:
            raise DataPrepError(f"--spacing must be three positive mm values, got {spacing}")
        if noise_px is None:
            noise_px = REALISTIC_NOISE_MM
    size = defaults["size"] if size is None else int(size)
    counts = {"training": defaults["n_train"] if n_train is None else int(n_train),
              "validation": defaults["n_val"] if n_val is None else int(n_val),
              "test": defaults["n_test"] if n_test is None else int(n_test)}
    if int(n_meta) != 0:  # absent when 0, so existing datasets stay up to date
        counts["meta"] = int(n_meta)
    if any(v < 0 for v in counts.values()):
        raise DataPrepError(f"case counts must be non-negative, got {counts}")
    if size < 16:
        raise DataPrepError(f"--size must be at least 16, got {size}")
    if seed < 0:
        raise DataPrepError(f"--seed must be non-negative, got {seed}")
    noise_px = float(default_noise_px(size) if noise_px is None else noise_px)
    if noise_px < 0:
        raise DataPrepError(f"--noise-px must be non-negative, got {noise_px}")
    config = {"generator_version": GENERATOR_VERSION, "dims": dims, "size": size, "counts": counts,
              "seed": int(seed), "noise_px": noise_px}
    if realistic:  # absent otherwise, so existing datasets stay up to date
        config["realistic"] = {"depth": depth, "spacing": list(spacing)}
    if labeled_fraction is not None:  # absent when not given, so existing datasets stay up to date
        config["labeled_fraction"] = float(labeled_fraction)
        # checked before anything is written
        labeled = labeled_keys([f"train_{i:03d}" for i in range(counts["training"])], float(labeled_fraction), seed)

    root = Path(out).resolve()
    datalist_path, summary_path = root / DATALIST_NAME, root / SUMMARY_NAME
    if datalist_path.is_file():
        try:
            previous = json.loads(datalist_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = {}
        if "synthetic" not in previous:
            raise DataPrepError(f"{datalist_path}: exists and is not a synthetic datalist; choose another --out")
        files = [root / e[k] for s in [*(s for s, _ in SPLITS), UNLABELED_SECTION] for e in previous.get(s, [])
                 for k in ("image", "label", "label_clean") if k in e]
        if previous["synthetic"] == config and summary_path.is_file() and all(f.is_file() for f in files):
            if verbose:
                print(f"synthetic: {datalist_path} is up to date; nothing to do")
            return json.loads(summary_path.read_text())
        datalist_path.unlink()  # never leave a datalist describing a half-rewritten set

    start = time.perf_counter()
    ext = ".png" if dims == 2 else ".nii.gz"
    affine = np.diag([*(spacing if realistic else (1.0, 1.0, 1.0)), 1.0])
    shape = [size, size, depth] if realistic else [size] * dims
    sections: dict[str, list[dict]] = {}
    label_summaries = {section: LabelSummary() for section, _ in SPLITS if section in counts}
    lesions_per_image: dict[str, int] = {}
    acc = DiceAccumulator()
    wrong_total = wrong_faint = faint_px = band_px = 0
    written: set[Path] = set()
    for split_id, (section, prefix) in enumerate(SPLITS):
        if section not in counts:
            continue
        sections[section] = []
        for i in range(counts[section]):
            name = f"{prefix}_{i:03d}"
            if realistic:
                case = generate_realistic_case(_case_rng(seed, dims, split_id, i), size=size, depth=depth,
                                               spacing=spacing, noise_mm=noise_px)
            else:
                case = generate_case(_case_rng(seed, dims, split_id, i), size=size, dims=dims, noise_px=noise_px)
            paths = {"image": root / "images" / (name + ext), "label_clean": root / "labels" / (name + ext)}
            if dims == 2:
                save_png(paths["image"], np.round(case.image * 255).astype(np.uint8))
                save_png(paths["label_clean"], case.label)
            else:
                save_nifti(paths["image"], case.image, affine)
                save_nifti(paths["label_clean"], case.label, affine)
            if section == "training":
                paths["label"] = root / "labels_noisy" / (name + ext)
                if dims == 2:
                    save_png(paths["label"], case.label_noisy)
                else:
                    save_nifti(paths["label"], case.label_noisy, affine)
                entry = {"image": paths["image"], "label": paths["label"], "label_clean": paths["label_clean"]}
                acc.add(name, case.label_noisy, case.label)
                wrong = case.label_noisy != case.label
                wrong_total += int(wrong.sum())
                wrong_faint += int((wrong & case.faint).sum())
                faint_px += int(case.faint.sum())
                band_px += int(case.boundary.sum())
            else:
                entry = {"image": paths["image"], "label": paths["label_clean"]}
            written.update(paths.values())
            sections[section].append(entry)
            label_summaries[section].add(case.label)
            key = str(case.n_lesions)
            lesions_per_image[key] = lesions_per_image.get(key, 0) + 1

    # files of an earlier, larger run with other options would otherwise linger beside the new set
    for sub in ("images", "labels", "labels_noisy"):
        folder = root / sub
        if folder.is_dir():
            for f in folder.iterdir():
                if _CASE_FILE.match(f.name) and f not in written:
                    f.unlink()

    if labeled_fraction is not None:
        training = sections["training"]
        sections["training"] = [e for e in training if Path(e["image"]).name.split(".")[0] in labeled]
        sections[UNLABELED_SECTION] = [{"image": e["image"]} for e in training
                                       if Path(e["image"]).name.split(".")[0] not in labeled]

    noise = acc.summary()
    per_image = noise.pop("per_image")
    share_wrong = wrong_faint / wrong_total if wrong_total else 0.0
    share_band = faint_px / band_px if band_px else 0.0
    summary = {
        "name": f"synthetic-{dims}d" + ("-realistic" if realistic else ""),
        "dims": dims,
        "size": shape,
        **({"spacing_mm": list(spacing)} if realistic else {}),
        "seed": int(seed),
        "counts": counts,
        **({"sections": {k: len(v) for k, v in sections.items()}} if labeled_fraction is not None else {}),
        "lesions_per_image": dict(sorted(lesions_per_image.items())),
        "labels": {s: acc_s.as_dict() for s, acc_s in label_summaries.items()},
        "noise": {
            "model": f"training labels: boundary displaced by up to noise_px {'mm' if realistic else 'pixels'} "
                     "times the squared faintness of the boundary sector; validation/test labels are clean",
            "noise_px": noise_px,
            **noise,
            "wrong_pixels_in_faint_region": share_wrong,
            "faint_region_share_of_boundary_band": share_band,
            "concentration": share_wrong / share_band if share_band else 0.0,
            "per_image": per_image,
        },
        "config": config,
    }
    write_json(summary_path, summary)
    write_datalist(root, sections, name=DATALIST_NAME, description="synthetic lesions with partly faint boundaries; "
                   "training 'label' is noisy, 'label_clean' is the clean mask", labels={"0": "background",
                                                                                          "1": "lesion"},
                   synthetic=config)
    if verbose:
        meta = f" / {counts['meta']} meta" if "meta" in counts else ""
        if labeled_fraction is not None:
            meta += (f" ({len(sections['training'])} training cases keep their labels, "
                     f"{len(sections[UNLABELED_SECTION])} are listed as unlabelled)")
        print(f"synthetic: wrote {counts['training']} training / {counts['validation']} validation / "
              f"{counts['test']} test{meta} {dims}D images of {'x'.join(map(str, shape))} to {root} "
              f"in {time.perf_counter() - start:.1f} s")
        print(f"synthetic: noisy training labels vs clean: Dice mean {noise['dice_mean']:.4f}, pooled "
              f"{noise['dice_pooled']:.4f}, min {noise['dice_min']:.4f}; wrong pixels "
              f"{noise['wrong_pixel_fraction']:.2%}, {share_wrong:.1%} of them in the faint-boundary region "
              f"({share_band:.1%} of the boundary band)")
    return summary


def _run(args: argparse.Namespace) -> int:
    make_synthetic_dataset(args.out, dims=args.dims, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                           size=args.size, seed=args.seed, noise_px=args.noise_px, n_meta=args.n_meta,
                           labeled_fraction=args.labeled_fraction, realistic=args.realistic, depth=args.depth,
                           spacing=args.spacing)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``synthetic`` subcommand (``python -m data_prep synthetic ...``)."""
    p = subparsers.add_parser(
        "synthetic", help="generate the synthetic default dataset (clean and noisy labels)",
        description="Generate lesions with partly faint boundaries, clean labels and noisy training labels whose "
                    "noise concentrates where the boundary is faint; deterministic by seed, no download.")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2 (PNG) or 3 (NIfTI); default 2")
    p.add_argument("--n-train", type=int, default=None, help="training cases (default 48 in 2D, 16 in 3D)")
    p.add_argument("--n-val", type=int, default=None, help="validation cases (default 12 / 4)")
    p.add_argument("--n-test", type=int, default=None, help="test cases (default 12 / 4)")
    p.add_argument("--n-meta", type=int, default=0,
                   help="cases of a 'meta' section with clean labels, the clean set MW-Net needs (default 0: none)")
    p.add_argument("--labeled-fraction", type=float, default=None, metavar="F",
                   help="semi-supervised split: keep the labels of a fixed-seed share F in (0, 1) of the training "
                        "cases and list the others in an 'unlabeled' section without labels (default: all labelled)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 96 / 48)")
    p.add_argument("--realistic", action="store_true",
                   help="3D: anisotropic CT-like volumes (0.8x0.8x2.5 mm, 256x256x40 voxels) of lesions 2.5-6 mm in "
                        "radius with faint borders, where resizing a whole volume loses them (--dims 3)")
    p.add_argument("--depth", type=int, default=None, help="slices of a --realistic volume (default 40)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="voxel size in mm of a --realistic volume (default 0.8 0.8 2.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-px", type=float, default=None,
                   help="largest boundary displacement of the noisy training labels (default about size/16; in mm "
                        "with --realistic, default 1.5)")
    p.set_defaults(func=_run)
