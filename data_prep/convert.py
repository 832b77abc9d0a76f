"""The shared conversion engine: a list of image/label pairs → written files, a datalist and a summary.

Every converter in :mod:`data_prep.converters` only finds the pairs of its dataset's distributed
layout and says how to decode them (a :class:`Pair` whose ``load`` returns a :class:`Sample`);
:func:`run_conversion` does the rest, the same way for all of them:

* outputs go to ``<out>/images/<key>.<ext>``, ``<out>/labels/<key>.<ext>`` and one folder per
  extra key (e.g. ``<out>/label_soft/<key>.png``), paths built with :func:`~data_prep.io.safe_join`;
* every file is written atomically, so an output that exists is complete: a re-run reuses a pair
  whose outputs all exist instead of converting it again (``--overwrite`` forces it);
* a pair that cannot be converted (unreadable file, size mismatch, unexpected label values, ...)
  is skipped and reported with the files it names and the reason, never fatal;
* ``summary.json`` then ``datalist.json`` are written last, each atomically.

A small manifest (``.data_prep.json``) records the settings that change file contents (e.g. the
binarisation threshold), so a re-run with different settings refuses to mix old and new files.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

import numpy as np

from .datalist import DATALIST_NAME, SUMMARY_NAME, LabelSummary, split_items, write_datalist
from .io import IMAGE_EXTENSIONS, DataPrepError, read_mask_2d, safe_join, save_nifti, save_png, write_json
from .masks import binary_mask

__all__ = [
    "Sample",
    "Pair",
    "Skip",
    "ConversionJob",
    "ConversionResult",
    "run_conversion",
    "run_job",
    "MANIFEST_NAME",
    "STANDARD_SECTIONS",
    "image_2d",
    "load_binary_pair",
    "binary_pairs",
    "require_dir",
    "list_files",
    "match_pairs",
    "natural_sorted",
    "limit_items",
    "assign_sections",
    "add_common_arguments",
    "command_options",
    "IMAGE_FILES_HELP",
    "image_files_help",
    "UNLABELED_SECTION",
    "load_image_only",
    "unlabeled_pair",
    "labeled_keys",
    "move_to_unlabeled",
    "add_labeled_fraction_argument",
]

MANIFEST_NAME = ".data_prep.json"
STANDARD_SECTIONS = ("training", "validation", "test")
#: the datalist section of images without labels (``{"image": ...}`` entries), for semi-supervised training
UNLABELED_SECTION = "unlabeled"
FORMATS = {"png": ".png", "nifti": ".nii.gz"}
MAX_PRINTED_SKIPS = 20


def image_files_help(subject: str = "Image and mask files") -> str:
    """What :func:`list_files` accepts, for the help of every converter reading 2D image files (an ``epilog``).

    Args:
        subject: the files it speaks of, e.g. ``"Image and mask files"``.

    Returns:
        a paragraph wrapped at 100 columns, naming every suffix of :data:`~data_prep.io.IMAGE_EXTENSIONS`.
    """
    import textwrap

    return textwrap.fill(f"{subject} may be PNG, JPEG, BMP or TIFF ({', '.join(IMAGE_EXTENSIONS)}), whatever the "
                         "suffixes of the layout shown above; an image and its mask are matched by file stem.",
                         width=100)


IMAGE_FILES_HELP = image_files_help()


@dataclass
class Sample:
    """One decoded pair, ready to be written.

    Args:
        image: ``(H, W)``/``(H, W, 3)`` for 2D PNG output (uint8/uint16), any real array for NIfTI.
        label: class indices with the image's spatial shape, or ``None`` for unlabelled images.
        extras: further label-like arrays with the image's spatial shape (e.g. ``label_soft``).
        affine: NIfTI affine (identity when ``None``); ignored for PNG.
        header: NIfTI header of the source (from :func:`~data_prep.io.nifti_spatial_header`) whose qform, sform,
            codes and units every NIfTI output of the pair carries instead of ``affine``; ignored for PNG.
    """

    image: np.ndarray
    label: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    affine: np.ndarray | None = None
    header: Any = None


@dataclass(frozen=True)
class Pair:
    """One image (and label) to convert.

    Args:
        key: output name without extension, relative (``/`` allowed), unique within the job.
        section: datalist section (``training``, ``validation``, ``test``, or e.g. ``test_Kvasir``).
        load: reads and decodes the sources; raises :class:`~data_prep.io.DataPrepError` to skip.
        sources: the source files, named in skip reports; the image first.
        has_label: whether ``load`` gives a label.
        extras: the keys of ``Sample.extras`` that ``load`` gives.
        sections: further sections listing the same outputs (e.g. ``test`` beside ``test_Kvasir``).
        info: ``(key, value)`` pairs copied into the pair's datalist entries (e.g. ``("volume", "case_001")``
            for the unlabelled slices of a CT volume).
    """

    key: str
    section: str
    load: Callable[[], Sample]
    sources: tuple[str, ...]
    has_label: bool = True
    extras: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    info: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Skip:
    """A file or pair left out, with why."""

    files: tuple[str, ...]
    reason: str

    def as_dict(self) -> dict:
        return {"files": list(self.files), "reason": self.reason}

    def __str__(self) -> str:
        if any(self.reason.startswith(f) for f in self.files):
            return self.reason  # the reason already names the file at fault
        return f"{', '.join(self.files)}: {self.reason}"


@dataclass
class ConversionJob:
    """What a converter found, and how to write it.

    Args:
        dataset: the command name (e.g. ``covid_semiseg``).
        src: the source folder.
        pairs: the pairs to convert.
        skipped: files already left out while pairing (images without masks, ...).
        settings: settings that change file contents; a re-run with other settings is refused.
        options: all command options, recorded in the summary.
        image_format: ``png`` or ``nifti``.
        label_format: ``png`` or ``nifti``.
        labels: class index → name, written into the datalist.
        description: one line written into the datalist.
        notes: lines printed and recorded in the summary (choices the converter made).
        sections: the sections the datalist always lists, even when empty (further ones are listed when a pair
            goes there); a converter given only part of a dataset passes the parts it found.
    """

    dataset: str
    src: Path
    pairs: list[Pair]
    skipped: list[Skip] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    image_format: str = "png"
    label_format: str = "png"
    labels: dict[str, str] | None = None
    description: str = ""
    notes: list[str] = field(default_factory=list)
    sections: tuple[str, ...] = STANDARD_SECTIONS


@dataclass
class ConversionResult:
    """Counts and the files written by :func:`run_conversion`."""

    converted: int
    reused: int
    skipped: list[Skip]
    counts: dict[str, int]
    datalist: Path | None
    summary: Path


def _output_paths(out: Path, pair: Pair, image_format: str, label_format: str) -> dict[str, Path]:
    paths = {"image": safe_join(out, f"images/{pair.key}{FORMATS[image_format]}")}
    if pair.has_label:
        paths["label"] = safe_join(out, f"labels/{pair.key}{FORMATS[label_format]}")
    for extra in pair.extras:
        paths[extra] = safe_join(out, f"{extra}/{pair.key}{FORMATS[label_format]}")
    return paths


def _read_label_output(path: Path) -> np.ndarray:
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            return np.asarray(nib.load(str(path)).dataobj)
        except Exception as e:  # nibabel raises several types for damaged files
            raise DataPrepError(f"{path}: unreadable NIfTI ({e})") from None
    return read_mask_2d(path)


def _label_dtype(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataPrepError(f"{path}: label values outside 0..65535")
    return arr.astype(np.uint8 if (not arr.size or arr.max() < 256) else np.uint16)


def _write(path: Path, arr: np.ndarray, fmt: str, affine: np.ndarray | None, is_label: bool,
           header: Any = None) -> None:
    if is_label:
        arr = _label_dtype(arr, path)
    if fmt == "png":
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
            raise DataPrepError(f"{path}: PNG output needs a 2D grey or RGB array, got shape {arr.shape}")
        save_png(path, arr)
    else:
        if not is_label and arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        save_nifti(path, arr, affine, header)


def _check_shapes(pair: Pair, sample: Sample) -> None:
    spatial = sample.image.shape
    for name, arr in [("mask", sample.label), *sample.extras.items()]:
        if arr is None:
            continue
        if tuple(spatial[: arr.ndim]) != tuple(arr.shape) or arr.ndim < 2:
            raise DataPrepError(
                f"{', '.join(pair.sources)}: image/{name} size mismatch "
                f"(image {'x'.join(map(str, spatial))}, {name} {'x'.join(map(str, arr.shape))})"
            )


def _check_manifest(out: Path, job: ConversionJob, overwrite: bool) -> None:
    import json

    manifest = out / MANIFEST_NAME
    current = {"dataset": job.dataset, "settings": job.settings,
               "image_format": job.image_format, "label_format": job.label_format}
    if manifest.exists() and not overwrite:
        try:
            previous = json.loads(manifest.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != current:
            raise DataPrepError(
                f"{out} holds a conversion made with other settings ({previous}); now {current}: "
                "use an empty --out, or --overwrite to convert everything again"
            )
    write_json(manifest, current)


def _print_report(stream: TextIO, job: ConversionJob, result: ConversionResult) -> None:
    sections = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    print(
        f"{job.dataset}: converted {result.converted}, reused {result.reused}, skipped {len(result.skipped)}"
        f" ({sections})",
        file=stream,
    )
    for skip in result.skipped[:MAX_PRINTED_SKIPS]:
        print(f"  skipped {skip}", file=stream)
    if len(result.skipped) > MAX_PRINTED_SKIPS:
        print(f"  ... and {len(result.skipped) - MAX_PRINTED_SKIPS} more, listed in {result.summary}", file=stream)
    if result.datalist is not None:
        print(f"datalist: {result.datalist}", file=stream)
    print(f"summary: {result.summary}", file=stream)


def run_conversion(job: ConversionJob, out_dir: str | os.PathLike, overwrite: bool = False,
                   stream: TextIO | None = None, progress: bool | None = None) -> ConversionResult:
    """Convert the job's pairs into ``out_dir``, then write ``summary.json`` and ``datalist.json``.

    Args:
        job: the pairs and settings found by a converter.
        out_dir: the output root; datalist paths are relative to it.
        overwrite: convert pairs again even when their outputs exist.
        stream: where the counts and skips are printed (stdout by default).
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        DataPrepError: ``out_dir`` is a file, holds a conversion with other settings, two pairs
            share a key, or no pair could be converted (the summary is written all the same).
    """
    stream = sys.stdout if stream is None else stream
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataPrepError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    seen: dict[str, Pair] = {}
    for pair in job.pairs:
        if pair.key in seen:
            raise DataPrepError(
                f"two pairs would be written as {pair.key!r}: {', '.join(seen[pair.key].sources)} and "
                f"{', '.join(pair.sources)}"
            )
        seen[pair.key] = pair
    _check_manifest(out, job, overwrite)
    for note in job.notes:
        print(f"note: {note}", file=stream)

    from tqdm import tqdm

    sections: dict[str, list[dict]] = {s: [] for s in job.sections}
    label_stats: dict[str, LabelSummary] = {}
    skipped = list(job.skipped)
    converted = reused = 0
    for pair in tqdm(job.pairs, desc=job.dataset, unit="pair", disable=(not sys.stderr.isatty()) if progress is None
                     else not progress, file=sys.stderr):
        try:
            paths = _output_paths(out, pair, job.image_format, job.label_format)
        except DataPrepError as e:
            skipped.append(Skip(pair.sources, str(e)))
            continue
        label = None
        done = not overwrite and all(p.is_file() for p in paths.values())
        if done and pair.has_label:
            try:
                label = _read_label_output(paths["label"])
            except DataPrepError:
                done = False  # damaged by something else than us: convert it again
        if done:
            reused += 1
        else:
            try:
                sample = pair.load()
                if pair.has_label and sample.label is None:
                    raise DataPrepError(f"{', '.join(pair.sources)}: no label decoded")
                missing = set(pair.extras) - set(sample.extras)
                if missing:
                    raise DataPrepError(f"{', '.join(pair.sources)}: no {', '.join(sorted(missing))} decoded")
                _check_shapes(pair, sample)
                # image last: a pair counts as done only once all its files exist
                for name in [*pair.extras, "label"] if pair.has_label else list(pair.extras):
                    arr = sample.label if name == "label" else sample.extras[name]
                    _write(paths[name], arr, job.label_format, sample.affine, is_label=True, header=sample.header)
                _write(paths["image"], sample.image, job.image_format, sample.affine, is_label=False,
                       header=sample.header)
            except DataPrepError as e:
                skipped.append(Skip(pair.sources, str(e)))
                continue
            label = sample.label
            converted += 1
        entry = {**dict(pair.info), **{k: str(p) for k, p in paths.items()}}
        for section in (pair.section, *pair.sections):
            sections.setdefault(section, []).append(entry)
            if label is not None:
                label_stats.setdefault(section, LabelSummary()).add(label)

    counts = {k: len(v) for k, v in sections.items()}
    summary = {
        "dataset": job.dataset,
        "source": str(job.src),
        "output": str(out),
        "options": job.options,
        "settings": job.settings,
        "image_format": job.image_format,
        "label_format": job.label_format,
        "counts": counts,
        "converted": converted,
        "reused": reused,
        "skipped": len(skipped),
        "skipped_files": [s.as_dict() for s in skipped],
        "labels": {k: v.as_dict() for k, v in label_stats.items()},
        "class_names": job.labels,
        "notes": job.notes,
    }
    summary_path = out / SUMMARY_NAME
    write_json(summary_path, summary)
    datalist_path = None
    if converted + reused > 0:
        extra = {"dataset": job.dataset, "description": job.description}
        if job.labels:
            extra["labels"] = job.labels
        datalist_path = write_datalist(out, sections, name=DATALIST_NAME, **extra)
    result = ConversionResult(converted, reused, skipped, counts, datalist_path, summary_path)
    _print_report(stream, job, result)
    if datalist_path is None:
        raise DataPrepError(
            f"{job.dataset}: no pair could be converted from {job.src} ({len(skipped)} skipped, see {summary_path})"
        )
    return result


# ----------------------------------------------------------------------------------------------
# image decoding and binary pairs (the mask rules are data_prep.masks)


def image_2d(arr: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Make a decoded 2D image writable as PNG (uint8/uint16), keeping its values.

    Raises:
        DataPrepError: values that do not fit 16-bit PNG.
    """
    arr = np.asarray(arr)
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        return arr.astype(np.uint16)
    raise DataPrepError(f"{path}: pixel type {arr.dtype} does not fit an 8- or 16-bit PNG")


def load_binary_pair(image: Path, mask: Path, threshold: int | None = None) -> Sample:
    """Read a 2D image and its binary mask (see :func:`~data_prep.masks.binary_mask`) into a :class:`Sample`."""
    from .io import read_image_2d

    return Sample(image_2d(read_image_2d(image), image), binary_mask(read_mask_2d(mask), mask, threshold))


def binary_pairs(found: Iterable[tuple[str, Path, Path]], prefix: str, sections: str | Mapping[str, str],
                 threshold: int | None = None) -> list[Pair]:
    """:class:`Pair` s of binary 2D masks keyed ``<prefix>/<stem>``.

    Args:
        found: ``(stem, image, mask)`` triples.
        prefix: output sub-folder.
        sections: one section for all, or key → section.
        threshold: see :func:`~data_prep.masks.binary_mask`.
    """
    out = []
    for stem, image, mask in found:
        key = f"{prefix}/{stem}" if prefix else stem
        section = sections if isinstance(sections, str) else sections[key]
        out.append(Pair(key, section, partial(load_binary_pair, image, mask, threshold), (str(image), str(mask))))
    return out


# ----------------------------------------------------------------------------------------------
# unlabelled images (semi-supervised training)


def load_image_only(image: Path) -> Sample:
    """Read a 2D image alone (no label) into a :class:`Sample`, for the ``unlabeled`` section."""
    from .io import read_image_2d

    return Sample(image_2d(read_image_2d(image), image))


def unlabeled_pair(key: str, image: Path, info: Sequence[tuple[str, Any]] = ()) -> Pair:
    """A :class:`Pair` writing only ``image`` (as ``images/<key>.png``) into the ``unlabeled`` section.

    Args:
        key: output name without extension.
        image: the source image (2D, any format :func:`~data_prep.io.read_image_2d` reads).
        info: further ``(key, value)`` pairs for the datalist entry.
    """
    return Pair(key, UNLABELED_SECTION, partial(load_image_only, Path(image)), (str(image),), has_label=False,
                info=tuple(info))


def labeled_keys(keys: Iterable[str], fraction: float, seed: int, option: str = "--labeled-fraction") -> set[str]:
    """The ``round(fraction·n)`` of ``keys`` whose labels are kept, chosen by ``seed`` (its own random stream).

    The choice depends on the set of keys and the seed only (not on their order), and each key's chance is
    the same: a fixed-seed permutation of the sorted keys, its first ``round(fraction·n)`` entries.

    Args:
        keys: the training cases.
        fraction: the share that keeps its labels, in (0, 1).
        seed: the split seed.
        option: the command-line option, named in errors.

    Raises:
        DataPrepError: ``fraction`` outside (0, 1), or a choice leaving no labelled or no unlabelled case,
            naming ``option``.
    """
    ordered = sorted(set(keys))
    if not 0 < fraction < 1:
        raise DataPrepError(f"{option} {fraction}: must lie strictly between 0 and 1")
    n = int(np.floor(fraction * len(ordered) + 0.5))
    if n < 1 or n >= len(ordered):
        raise DataPrepError(f"{option} {fraction}: keeps the labels of {n} of {len(ordered)} training case(s); "
                            "choose a fraction that leaves at least one labelled and one unlabelled case")
    perm = np.random.default_rng([int(seed), 11]).permutation(len(ordered))
    return {ordered[i] for i in perm[:n]}


def move_to_unlabeled(pairs: Sequence[Pair], fraction: float | None, seed: int,
                      option: str = "--labeled-fraction") -> tuple[list[Pair], list[str]]:
    """Keep ``fraction`` of the ``training`` pairs' labels and move the other training images to ``unlabeled``.

    The moved pairs are written as images only (:func:`unlabeled_pair`, under the same key), so their masks are
    neither read nor listed. Other sections are unchanged.

    Args:
        pairs: the converter's pairs; ``sources[0]`` of each is its image.
        fraction: the labelled share of the training pairs (:func:`labeled_keys`), or ``None`` to change nothing.
        seed: the split seed.
        option: the command-line option, named in errors and in the note.

    Returns:
        the new pairs and a note for the summary (empty when ``fraction`` is ``None``).

    Raises:
        DataPrepError: see :func:`labeled_keys`.
    """
    if fraction is None:
        return list(pairs), []
    training = [p.key for p in pairs if p.section == "training"]
    keep = labeled_keys(training, fraction, seed, option)
    out = [p if p.section != "training" or p.key in keep else unlabeled_pair(p.key, Path(p.sources[0]))
           for p in pairs]
    note = (f"{option} {fraction}: {len(keep)} of {len(training)} training cases keep their labels (seed {seed}); "
            f"the other {len(training) - len(keep)} are listed in '{UNLABELED_SECTION}' as images only")
    return out, [note]


def _labeled_fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must lie strictly between 0 and 1")
    return value


def add_labeled_fraction_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--labeled-fraction F``: keep F of the training labels, list the other training images as unlabelled."""
    parser.add_argument("--labeled-fraction", type=_labeled_fraction, default=None, metavar="F",
                        help="semi-supervised split: keep the labels of a fixed-seed share F (in (0, 1)) of the "
                             f"training cases and list the other training images, without labels, in an "
                             f"'{UNLABELED_SECTION}' section (default: every training case keeps its label)")


# ----------------------------------------------------------------------------------------------
# finding pairs


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise naming it and what it should hold."""
    if not path.is_dir():
        raise DataPrepError(f"missing folder {path} ({what})")
    return path


def list_files(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS,
               strip_suffix: str = "") -> tuple[dict[str, Path], list[Skip]]:
    """Files of ``folder`` with the given extensions, by stem (``strip_suffix`` removed from it).

    Two files with one stem are both reported as skipped (nothing says which is meant); hidden
    files and other extensions are ignored.
    """
    found: dict[str, list[Path]] = {}
    exts = tuple(e.lower() for e in extensions)
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in exts:
            continue
        stem = p.stem
        if strip_suffix and stem.endswith(strip_suffix):
            stem = stem[: -len(strip_suffix)]
        found.setdefault(stem, []).append(p)
    files, skips = {}, []
    for stem, paths in found.items():
        if len(paths) == 1:
            files[stem] = paths[0]
        else:
            skips.append(Skip(tuple(map(str, paths)), f"several files share the name {stem!r}"))
    return files, skips


def match_pairs(images: Mapping[str, Path], masks: Mapping[str, Path]) -> tuple[list[tuple[str, Path, Path]],
                                                                             list[Skip]]:
    """Match images and masks by stem; the unmatched ones are reported as skipped, each by name."""
    pairs = [(stem, images[stem], masks[stem]) for stem in natural_sorted(images) if stem in masks]
    skips = [Skip((str(images[s]),), "image without mask") for s in natural_sorted(images) if s not in masks]
    skips += [Skip((str(masks[s]),), "mask without image") for s in natural_sorted(masks) if s not in images]
    return pairs, skips


def natural_sorted(names: Iterable[str]) -> list[str]:
    """Sort so that ``2`` comes before ``10`` (then ``--limit`` takes what a person calls the first)."""
    return sorted(names, key=lambda n: [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", n)])


def limit_items(items: Sequence, limit: int | None) -> list:
    """The first ``limit`` items (all when ``None``), for quick trial conversions."""
    if limit is not None and limit < 1:
        raise DataPrepError(f"--limit {limit}: must be at least 1")
    return list(items) if limit is None else list(items)[:limit]


def assign_sections(keys: Iterable[str], fractions: Sequence[float], seed: int,
                    group: Callable[[str], str] | None = None) -> dict[str, str]:
    """Fixed-seed split of ``keys`` into sections with :func:`~data_prep.datalist.split_items`.

    Args:
        keys: the items.
        fractions: training, validation, test fractions.
        seed: the split seed.
        group: key → group (e.g. patient or volume); a group's keys stay in one section.
    """
    keys = list(keys)
    group = group or (lambda k: k)
    groups = sorted({group(k) for k in keys})
    where = {g: section for section, members in split_items(groups, fractions, seed).items() for g in members}
    return {k: where[group(k)] for k in keys}


# ----------------------------------------------------------------------------------------------
# command-line plumbing shared by the converters


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be within [0, 1)")
    return value


def add_common_arguments(parser: argparse.ArgumentParser, split: bool = False,
                         val_fraction: float | None = None, threshold: bool = True) -> None:
    """Add ``--src``, ``--out``, ``--seed``, ``--limit``, ``--overwrite`` and optional split options.

    Args:
        parser: the subcommand's parser.
        split: add ``--split TRAIN VAL TEST`` (for datasets distributed without a split).
        val_fraction: add ``--val-fraction`` with this default (datasets with a test set but no
            validation set).
        threshold: add ``--threshold`` (binary masks).
    """
    parser.add_argument("--src", type=Path, required=True, help="the dataset folder, as distributed")
    parser.add_argument("--out", type=Path, required=True, help="output folder (datalist paths are relative to it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation/test split")
    parser.add_argument("--limit", type=int, default=None,
                        help="convert only the first N pairs (volumes for dicom/nifti) of each source folder")
    parser.add_argument("--overwrite", action="store_true", help="convert again pairs whose outputs exist")
    if split:
        parser.add_argument("--split", type=float, nargs=3, default=(0.7, 0.1, 0.2),
                            metavar=("TRAIN", "VAL", "TEST"), help="split fractions (default 0.7 0.1 0.2)")
    if val_fraction is not None:
        parser.add_argument("--val-fraction", type=_fraction, default=val_fraction,
                            help=f"fraction of the training set held out for validation (default {val_fraction})")
    if threshold:
        parser.add_argument("--threshold", type=int, default=None,
                            help="binarise masks that are not exactly binary at this value of the 0..255 scale "
                                 "(T/255 of a 16-bit mask's range); JPEG masks always are, at 128 by default; "
                                 "0/1, 0/255 and 0/65535 masks are binary as they are")


def command_options(args: argparse.Namespace) -> dict:
    """The parsed options as JSON-friendly values, for the summary."""
    out = {}
    for k, v in vars(args).items():
        if callable(v):
            continue
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, (list, tuple)):
            v = [str(x) if isinstance(x, Path) else x for x in v]
        out[k] = v
    return out


def run_job(job: ConversionJob, args: argparse.Namespace) -> int:
    """Run a converter's job with the common options; the return value is the exit code."""
    job.options = command_options(args)
    run_conversion(job, args.out, overwrite=args.overwrite)
    return 0
