"""Dermoscopy (skin lesions): PH2, ISIC-2016 Task 1 and the paper's ISIC-2016 → PH2 protocol.

PH2 as distributed (``--src`` holds ``PH2 Dataset images/`` or is it)::

    IMD002/IMD002_Dermoscopic_Image/IMD002.bmp     RGB, about 765x575
    IMD002/IMD002_lesion/IMD002_lesion.bmp          0/255

or the resized copy ``images/IMD002.png`` + ``masks/IMD002.png`` (any 2D format, below); the layout is
detected. PH2 has no
split: a fixed-seed ``--split``. ``--labeled-fraction F`` (semi-supervised training) keeps the labels of a
fixed-seed share F of the training cases and lists the other training images, without masks, in an
``unlabeled`` section.

ISIC-2016 Task 1 as distributed (``--src`` holds the four folders)::

    ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg
    ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png     0/255
    ISBI2016_ISIC_Part1_Test_Data/, ISBI2016_ISIC_Part1_Test_GroundTruth/

``isic2016``: training/validation = a ``--val-fraction`` split of the training set, test = the test
set. ``isic2016_ph2`` (the paper's cross-dataset protocol): the same training/validation, test =
all of PH2 (``--ph2-src``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..convert import (
    IMAGE_FILES_HELP,
    ConversionJob,
    Pair,
    Skip,
    add_common_arguments,
    add_labeled_fraction_argument,
    assign_sections,
    binary_pairs,
    image_files_help,
    limit_items,
    list_files,
    match_pairs,
    move_to_unlabeled,
    natural_sorted,
    require_dir,
    run_job,
)
from ..io import DataPrepError

__all__ = ["add_parser", "find_ph2", "find_isic2016", "convert_ph2", "convert_isic2016", "convert_isic2016_ph2"]

PH2_FOLDER = "PH2 Dataset images"
ISIC_TRAIN = ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth")
ISIC_TEST = ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth")
BINARY_NAMES = {"0": "background", "1": "lesion"}
#: PH2's distributed layout names its ``.bmp`` files exactly; everything else goes through ``list_files``
PH2_FILES_HELP = "PH2 as distributed: the .bmp files named above.\n" + image_files_help(
    "Other image and mask files (the resized PH2 copy, ISIC-2016)")


def _is_ph2_case_root(folder: Path) -> bool:
    return any(p.is_dir() and (p / f"{p.name}_Dermoscopic_Image").is_dir() for p in folder.iterdir())


def find_ph2(src: Path) -> tuple[list[tuple[str, Path, Path]], list[Skip], str]:
    """PH2's ``(case, image, mask)`` triples, the skipped files and the layout found.

    Raises:
        DataPrepError: ``src`` is neither layout.
    """
    if not src.is_dir():
        raise DataPrepError(f"PH2 source {src}: no such folder")
    root = src / PH2_FOLDER if (src / PH2_FOLDER).is_dir() else src
    if _is_ph2_case_root(root):
        found, skips = [], []
        for case in natural_sorted(p.name for p in root.iterdir() if p.is_dir()):
            image_dir, lesion_dir = root / case / f"{case}_Dermoscopic_Image", root / case / f"{case}_lesion"
            image, mask = image_dir / f"{case}.bmp", lesion_dir / f"{case}_lesion.bmp"
            if image.is_file() and mask.is_file():
                found.append((case, image, mask))
            elif image.is_file():
                skips.append(Skip((str(image),), f"image without mask (no {mask.relative_to(root)})"))
            elif mask.is_file():
                skips.append(Skip((str(mask),), f"mask without image (no {image.relative_to(root)})"))
            else:
                skips.append(Skip((str(root / case),), f"case folder without {image.name} and {mask.name}"))
        return found, skips, "distributed"
    if (src / "images").is_dir() or (src / "masks").is_dir():
        images, s1 = list_files(require_dir(src / "images", "PH2 resized images"))
        masks, s2 = list_files(require_dir(src / "masks", "PH2 resized masks"))
        found, s3 = match_pairs(images, masks)
        return found, s1 + s2 + s3, "resized"
    raise DataPrepError(
        f"PH2 source {src}: neither '{PH2_FOLDER}/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp' (as distributed) "
        "nor 'images/' + 'masks/' (resized copy) found"
    )


def find_isic2016(src: Path, part: tuple[str, str]) -> tuple[list[tuple[str, Path, Path]], list[Skip]]:
    """ISIC-2016 Task 1 ``(id, image, mask)`` triples of one part (training or test folders)."""
    if not src.is_dir():
        raise DataPrepError(f"--src {src}: no such folder")
    images, s1 = list_files(require_dir(src / part[0], "ISIC-2016 Task 1 images"))
    masks, s2 = list_files(require_dir(src / part[1], "ISIC-2016 Task 1 ground truth"),
                           strip_suffix="_Segmentation")
    found, s3 = match_pairs(images, masks)
    return found, s1 + s2 + s3


def _isic_train_pairs(args: argparse.Namespace) -> tuple[list[Pair], list[Skip]]:
    found, skips = find_isic2016(args.src, ISIC_TRAIN)
    found = limit_items(found, args.limit)
    sections = assign_sections([f"isic/{s}" for s, _, _ in found], (1 - args.val_fraction, args.val_fraction, 0),
                               args.seed)
    return binary_pairs(found, "isic", sections, args.threshold), skips


def convert_ph2(args: argparse.Namespace) -> int:
    """``ph2``: fixed-seed split of PH2 in either layout."""
    found, skips, layout = find_ph2(args.src)
    found = limit_items(found, args.limit)
    sections = assign_sections([s for s, _, _ in found], args.split, args.seed)
    pairs, notes = move_to_unlabeled(binary_pairs(found, "", sections, args.threshold), args.labeled_fraction,
                                     args.seed)
    job = ConversionJob("ph2", args.src, pairs, skips,
                        settings={"threshold": args.threshold, "layout": layout}, labels=BINARY_NAMES,
                        description=f"PH2 dermoscopy ({layout} layout), fixed-seed split",
                        notes=[f"PH2 layout: {layout}", *notes])
    return run_job(job, args)


def convert_isic2016(args: argparse.Namespace) -> int:
    """``isic2016``: training/validation split of the training set, the official test set."""
    pairs, skips = _isic_train_pairs(args)
    found, test_skips = find_isic2016(args.src, ISIC_TEST)
    pairs += binary_pairs(limit_items(found, args.limit), "isic_test", "test", args.threshold)
    job = ConversionJob("isic2016", args.src, pairs, skips + test_skips, settings={"threshold": args.threshold},
                        labels=BINARY_NAMES, description="ISIC-2016 Task 1 lesion segmentation")
    return run_job(job, args)


def convert_isic2016_ph2(args: argparse.Namespace) -> int:
    """``isic2016_ph2``: train/validate on ISIC-2016 training, test on PH2."""
    pairs, skips = _isic_train_pairs(args)
    found, ph2_skips, layout = find_ph2(args.ph2_src)
    pairs += binary_pairs(limit_items(found, args.limit), "ph2", "test", args.threshold)
    job = ConversionJob("isic2016_ph2", args.src, pairs, skips + ph2_skips,
                        settings={"threshold": args.threshold, "ph2_layout": layout}, labels=BINARY_NAMES,
                        description="ISIC-2016 training (with a validation split) → PH2 test",
                        notes=[f"PH2 test set from {args.ph2_src} ({layout} layout)"])
    return run_job(job, args)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``ph2``, ``isic2016`` and ``isic2016_ph2``."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("ph2", help="PH2 dermoscopy (as distributed, or the resized copy)",
                              description=__doc__, epilog=PH2_FILES_HELP, formatter_class=fmt)
    add_common_arguments(p, split=True)
    add_labeled_fraction_argument(p)
    p.set_defaults(func=convert_ph2)
    p = subparsers.add_parser("isic2016", help="ISIC-2016 Task 1 lesion segmentation", description=__doc__,
                              epilog=IMAGE_FILES_HELP, formatter_class=fmt)
    add_common_arguments(p, val_fraction=0.1)
    p.set_defaults(func=convert_isic2016)
    p = subparsers.add_parser("isic2016_ph2", help="train on ISIC-2016, test on PH2 (the paper's protocol)",
                              description=__doc__, epilog=PH2_FILES_HELP, formatter_class=fmt)
    add_common_arguments(p, val_fraction=0.1)
    p.add_argument("--ph2-src", type=Path, required=True, help="PH2 folder (either layout)")
    p.set_defaults(func=convert_isic2016_ph2)
