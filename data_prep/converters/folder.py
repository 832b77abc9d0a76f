"""A generic ``images/`` + ``masks/`` folder pair, matched by file stem.

Images and masks may be PNG, JPEG, BMP or TIFF. A mask's stem may carry a suffix: with
``--mask-suffix S`` exactly ``<stem>S`` is expected; by default the stem itself, else one of
``_mask``, ``_segmentation``, ``_Segmentation``, ``_seg``, ``_label``, ``_gt``. Binary masks by default
(0/1, 0/255 or 0/65535, 8- or 16-bit; JPEG masks thresholded; ``--threshold`` for others, see
:mod:`data_prep.masks`); ``--classes C`` for class-index masks 0..C-1 (palette or grey). Fixed-seed ``--split``;
``--labeled-fraction F`` (semi-supervised training) keeps the labels of a fixed-seed share F of the training
cases and lists the other training images, without masks, in an ``unlabeled`` section.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from ..convert import (
    IMAGE_FILES_HELP,
    ConversionJob,
    Pair,
    Sample,
    Skip,
    add_common_arguments,
    add_labeled_fraction_argument,
    assign_sections,
    binary_pairs,
    image_2d,
    limit_items,
    list_files,
    match_pairs,
    move_to_unlabeled,
    require_dir,
    run_job,
)
from ..io import DataPrepError, read_image_2d, read_mask_2d
from ..masks import class_mask

__all__ = ["add_parser", "convert", "find_folder_pairs", "DEFAULT_MASK_SUFFIXES"]

DEFAULT_MASK_SUFFIXES = ("_mask", "_segmentation", "_Segmentation", "_seg", "_label", "_gt")


def _image_stem(stem: str, images: dict[str, Path], mask_suffix: str | None) -> str:
    if mask_suffix is not None:
        return stem[: -len(mask_suffix)] if mask_suffix and stem.endswith(mask_suffix) else stem
    if stem in images:
        return stem
    for suffix in DEFAULT_MASK_SUFFIXES:
        if stem.endswith(suffix) and stem[: -len(suffix)] in images:
            return stem[: -len(suffix)]
    return stem  # reported as a mask without image


def find_folder_pairs(image_dir: Path, mask_dir: Path, mask_suffix: str | None = None
                      ) -> tuple[list[tuple[str, Path, Path]], list[Skip]]:
    """``(stem, image, mask)`` triples of two folders; unmatched files are reported as skipped."""
    images, s1 = list_files(require_dir(image_dir, "images"))
    raw, s2 = list_files(require_dir(mask_dir, "masks"))
    by_image: dict[str, list[Path]] = {}
    for stem, path in raw.items():
        by_image.setdefault(_image_stem(stem, images, mask_suffix), []).append(path)
    masks = {base: paths[0] for base, paths in by_image.items() if len(paths) == 1}
    s2 += [Skip(tuple(map(str, paths)), f"several masks for the image {base!r}")
           for base, paths in by_image.items() if len(paths) > 1]
    found, s3 = match_pairs(images, masks)
    return found, s1 + s2 + s3


def _load_classes(image: Path, mask: Path, num_classes: int) -> Sample:
    return Sample(image_2d(read_image_2d(image), image), class_mask(read_mask_2d(mask), mask, num_classes))


def convert(args: argparse.Namespace) -> int:
    """Pair, split and convert the folder."""
    if not args.src.is_dir():
        raise DataPrepError(f"--src {args.src}: no such folder")
    if args.classes < 2:
        raise DataPrepError(f"--classes {args.classes}: at least 2 (background and one class)")
    found, skips = find_folder_pairs(args.src / args.images_dir, args.src / args.masks_dir, args.mask_suffix)
    found = limit_items(found, args.limit)
    sections = assign_sections([s for s, _, _ in found], args.split, args.seed)
    if args.classes == 2:
        pairs = binary_pairs(found, "", sections, args.threshold)
    else:
        pairs = [Pair(s, sections[s], partial(_load_classes, image, mask, args.classes), (str(image), str(mask)))
                 for s, image, mask in found]
    pairs, notes = move_to_unlabeled(pairs, args.labeled_fraction, args.seed)
    labels = {str(i): ("background" if i == 0 else f"class {i}") for i in range(args.classes)}
    job = ConversionJob("folder", args.src, pairs, skips, settings={"threshold": args.threshold,
                                                                      "classes": args.classes},
                        labels=labels, description=f"images/masks folder pair from {args.src}", notes=notes)
    return run_job(job, args)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``folder``."""
    p = subparsers.add_parser("folder", help="generic images/ + masks/ folders matched by stem",
                              description=__doc__, epilog=IMAGE_FILES_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, split=True)
    p.add_argument("--images-dir", default="images", help="image sub-folder of --src (default images)")
    p.add_argument("--masks-dir", default="masks", help="mask sub-folder of --src (default masks)")
    p.add_argument("--mask-suffix", default=None, help="suffix of mask stems, e.g. _mask (default: detected)")
    p.add_argument("--classes", type=int, default=2, help="number of classes incl. background (default 2)")
    add_labeled_fraction_argument(p)
    p.set_defaults(func=convert)
