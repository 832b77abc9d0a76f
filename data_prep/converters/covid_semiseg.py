"""COVID-SemiSeg (CT lung infection) as laid out by the Inf-Net repository.

``--src`` holds ``Dataset/`` (or is it)::

    TrainingSet/LungInfection-Train/Doctor-label/{Imgs/*.jpg, GT/*.png}   50, radiologists, 0/255
    TrainingSet/LungInfection-Train/Pseudo-label/{Imgs/*.jpg, GT/*.png}   1,600 soft pseudo-labels 0..255
    TestingSet/LungInfection-Test/{Imgs, GT}                              radiologists, 0/255
    TrainingSet/MultiClassInfection-Train/{Imgs, GT}                      palette PNG 0/1/2
    TestingSet/MultiClassInfection-Test/{Imgs, GT, GT-1, GT-2}            same (GT-1/GT-2 unused)

The parts present are converted: a tree holding only ``TestingSet`` gives a datalist with only
``test`` (e.g. to evaluate or predict with a trained bundle), one without ``TestingSet`` has no
``test``; each absent part is reported with the sections it would have filled. A part that is
present but lacks its ``Imgs`` or ``GT`` folder is an error.

``--task binary`` (default) sections, by ``--train-labels``:

* ``pseudo`` (default): training = the 1,600 pseudo-labels, validation = the 50 doctor-labelled
  slices, test = the radiologists' test set: the noisy-label benchmark;
* ``doctor``: training/validation = a ``--val-fraction`` split of the 50 doctor-labelled slices;
* ``both``: training = the pseudo-labels and the doctor slices not held out for validation.

Pseudo-labels are soft masks; ``label`` binarises them at ``--threshold`` (128) and ``label_soft``
keeps them as 0..255 PNG. Every entry carries ``label_soft`` (radiologists' masks as 0/255) so that
all sections share the same keys. ``--task multiclass``: 0 background, 1 ground-glass opacity,
2 consolidation; training/validation split of the 50 training slices, test = the test set.

``--unlabeled pseudo`` (semi-supervised training): the 1,600 pseudo-labelled images, without their masks, form
an ``unlabeled`` section (``{"image", "volume"}`` entries), and training/validation are a ``--val-fraction``
split of the 50 doctor-labelled slices (``--train-labels doctor``, implied): the defaults give COVID-SemiSeg's
semi-supervised protocol, 40 labelled training slices, 10 validation slices, 1,600 unlabelled images, the
radiologists' test set. The pseudo-labelled images come from 20 CT volumes, named in their file names
(``Data-1_coronacases_org_001_17.jpg``: volume ``Data-1_coronacases_org_001``, slice 17); each entry carries
its volume, and ``--unlabeled-fraction F`` keeps a fixed-seed share F of the volumes, whole (neighbouring
slices of one volume are near copies: a subset by slice would keep some of every volume).

``--meta-count N`` (or ``--meta-fraction F``) moves N fixed-seed radiologist-labelled training slices (the
doctor-labelled ones; for ``--task multiclass`` the multi-class training slices) into a ``meta`` section,
left out of training and validation: the small clean set of meta re-weighting (MW-Net, learning to
re-weight: ``configs/mwnet_train.json`` of the bundles).
"""

from __future__ import annotations

import argparse
import re
from functools import partial
from pathlib import Path

import numpy as np

from ..convert import (
    IMAGE_FILES_HELP,
    ConversionJob,
    Pair,
    Sample,
    Skip,
    UNLABELED_SECTION,
    add_common_arguments,
    assign_sections,
    image_2d,
    limit_items,
    list_files,
    match_pairs,
    natural_sorted,
    require_dir,
    run_job,
    unlabeled_pair,
)
from ..io import DataPrepError, read_image_2d, read_mask_2d
from ..masks import binary_mask, class_mask, soft_mask

__all__ = ["add_parser", "convert", "find_dataset_root", "present_parts", "PARTS", "meta_keys", "volume_of",
           "unlabeled_volumes"]

DOCTOR = "TrainingSet/LungInfection-Train/Doctor-label"
PSEUDO = "TrainingSet/LungInfection-Train/Pseudo-label"
TEST = "TestingSet/LungInfection-Test"
MC_TRAIN = "TrainingSet/MultiClassInfection-Train"
MC_TEST = "TestingSet/MultiClassInfection-Test"
MULTICLASS_NAMES = {"0": "background", "1": "ground-glass opacity", "2": "consolidation"}
_SLICE = re.compile(r"^(?P<volume>.+)_(?P<slice>\d+)$")


def find_dataset_root(src: Path) -> Path:
    """The ``Dataset`` folder: ``src/Dataset`` or ``src`` itself."""
    if not src.is_dir():
        raise DataPrepError(f"--src {src}: no such folder")
    for root in (src / "Dataset", src):
        if (root / "TrainingSet").is_dir() or (root / "TestingSet").is_dir():
            return root
    raise DataPrepError(f"--src {src}: no TrainingSet/TestingSet found (expected the Inf-Net 'Dataset' layout)")


def _folder_pairs(root: Path, rel: str, limit: int | None) -> tuple[list[tuple[str, Path, Path]], list[Skip]]:
    base = root / rel
    imgs, skips = list_files(require_dir(base / "Imgs", f"{rel} images"))
    gts, gt_skips = list_files(require_dir(base / "GT", f"{rel} masks"))
    pairs, match_skips = match_pairs(imgs, gts)
    return limit_items(pairs, limit), skips + gt_skips + match_skips


def _load_hard(image: Path, mask: Path) -> Sample:
    label = binary_mask(read_mask_2d(mask), mask)  # radiologists' masks must be exactly binary
    return Sample(image_2d(read_image_2d(image), image), label, {"label_soft": label * 255})


def _load_soft(image: Path, mask: Path, threshold: int) -> Sample:
    label, soft = soft_mask(read_mask_2d(mask), mask, threshold)
    return Sample(image_2d(read_image_2d(image), image), label, {"label_soft": soft})


def _load_classes(image: Path, mask: Path) -> Sample:
    return Sample(image_2d(read_image_2d(image), image), class_mask(read_mask_2d(mask), mask, 3))


#: the parts of each task and training-label choice, with the sections each one fills
PARTS: dict[tuple[str, str], list[tuple[str, tuple[str, ...]]]] = {
    ("binary", "pseudo"): [(PSEUDO, ("training",)), (DOCTOR, ("validation",)), (TEST, ("test",))],
    ("binary", "doctor"): [(DOCTOR, ("training", "validation")), (TEST, ("test",))],
    ("binary", "both"): [(PSEUDO, ("training",)), (DOCTOR, ("training", "validation")), (TEST, ("test",))],
    ("multiclass", "-"): [(MC_TRAIN, ("training", "validation")), (MC_TEST, ("test",))],
}


def present_parts(root: Path, task: str, train_labels: str, unlabeled: bool = False
                  ) -> tuple[list[str], tuple[str, ...], list[str]]:
    """Which parts of the layout are there, the sections they fill, and a note for each absent part.

    Args:
        root: the ``Dataset`` folder (:func:`find_dataset_root`).
        task: ``binary`` or ``multiclass``.
        train_labels: ``pseudo``, ``doctor`` or ``both`` (ignored for ``multiclass``).
        unlabeled: the pseudo-labelled images fill an ``unlabeled`` section (``--unlabeled pseudo``).

    Returns:
        the present parts (relative folders), the sections they fill (in the standard order), and the notes.

    Raises:
        DataPrepError: when no part of the task is there, naming the folders looked for.
    """
    parts = PARTS[(task, train_labels if task == "binary" else "-")]
    if unlabeled:
        parts = [*parts, (PSEUDO, (UNLABELED_SECTION,))]
    found = [rel for rel, _ in parts if (root / rel).is_dir()]
    if not found:
        raise DataPrepError(f"{root}: none of the folders of --task {task} found: "
                            + ", ".join(rel for rel, _ in parts))
    sections = tuple(s for s in ("training", "validation", "test", UNLABELED_SECTION)
                     if any(s in filled for rel, filled in parts if rel in found))
    notes = []
    for rel, filled in parts:
        if rel not in found:
            lost = [s for s in filled if s not in sections]
            notes.append(f"absent: {root / rel}; " + (f"no {' / '.join(lost)} section" if lost else
                                                      f"{' / '.join(filled)} from the other parts only"))
    return found, sections, notes


def meta_keys(keys: list[str], count: int | None, fraction: float | None, seed: int,
              keep: int = 1) -> set[str]:
    """The keys of the ``meta`` section: ``count`` (or ``round(fraction·n)``) of ``keys``, chosen by ``seed``.

    Args:
        keys: the radiologist-labelled training slices.
        count: how many (``--meta-count``), or ``None``.
        fraction: which share (``--meta-fraction``), or ``None``.
        seed: the split seed (its own stream: the choice does not depend on the validation split).
        keep: slices that must remain for validation.

    Raises:
        DataPrepError: both options given, or too few slices left, naming the option.
    """
    if count is not None and fraction is not None:
        raise DataPrepError("--meta-count and --meta-fraction: give one of them")
    if count is None and fraction is None:
        return set()
    option = f"--meta-count {count}" if count is not None else f"--meta-fraction {fraction}"
    n = count if count is not None else int(np.floor(fraction * len(keys) + 0.5))
    if n < 1 or n > len(keys) - keep:
        raise DataPrepError(f"{option}: {n} meta slice(s) of {len(keys)} radiologist-labelled training slices; "
                            f"choose 1..{max(len(keys) - keep, 0)} so that {keep} remain for validation")
    ordered = sorted(keys)
    return {ordered[i] for i in np.random.default_rng([int(seed), 7]).permutation(len(ordered))[:n]}


def volume_of(stem: str) -> str:
    """The CT volume of a pseudo-labelled slice: its file stem without the trailing ``_<slice number>``.

    ``Data-1_coronacases_org_001_17`` → ``Data-1_coronacases_org_001``; a stem without a slice number is its
    own volume.
    """
    match = _SLICE.match(stem)
    return match["volume"] if match else stem


def unlabeled_volumes(stems: list[str], fraction: float, seed: int) -> set[str]:
    """The volumes kept by ``--unlabeled-fraction``: ``round(fraction·V)`` (at least 1) of the V volumes of
    ``stems``, chosen whole by ``seed`` (its own random stream).

    Raises:
        DataPrepError: ``fraction`` outside (0, 1], naming the option.
    """
    if not 0 < fraction <= 1:
        raise DataPrepError(f"--unlabeled-fraction {fraction}: must lie in (0, 1]")
    volumes = sorted({volume_of(s) for s in stems})
    n = max(1, int(np.floor(fraction * len(volumes) + 0.5)))
    perm = np.random.default_rng([int(seed), 17]).permutation(len(volumes))
    return {volumes[i] for i in perm[:n]}


def _unlabeled_pairs(root: Path, args: argparse.Namespace) -> tuple[list[Pair], list[Skip], list[str]]:
    """The pseudo-labelled images as image-only pairs of the ``unlabeled`` section (their masks are not read)."""
    images, skips = list_files(require_dir(root / PSEUDO / "Imgs", f"{PSEUDO} images"))
    stems = limit_items(natural_sorted(images), args.limit)
    fraction = getattr(args, "unlabeled_fraction", None)
    keep = unlabeled_volumes(stems, fraction, args.seed) if fraction is not None else {volume_of(s) for s in stems}
    pairs = [unlabeled_pair(f"pseudo/{s}", images[s], info=(("volume", volume_of(s)),))
             for s in stems if volume_of(s) in keep]
    n_volumes = len({volume_of(s) for s in stems})
    note = (f"--unlabeled pseudo: {len(pairs)} pseudo-labelled images of {len(keep)} of {n_volumes} CT volume(s) "
            f"in '{UNLABELED_SECTION}', without their masks")
    if fraction is not None:
        note += f" (--unlabeled-fraction {fraction}, seed {args.seed}: whole volumes)"
    return pairs, skips, [note]


def _training_labels(args: argparse.Namespace) -> str:
    """``--train-labels``, resolved against ``--unlabeled``: the pseudo-labelled images are either training
    labels or unlabelled images, never both."""
    unlabeled = getattr(args, "unlabeled", "none")
    chosen = getattr(args, "train_labels", None)
    if unlabeled == "pseudo":
        if chosen not in (None, "doctor"):
            raise DataPrepError(f"--unlabeled pseudo lists the pseudo-labelled images without their masks; it cannot "
                                f"be combined with --train-labels {chosen}, which trains on those masks (leave "
                                "--train-labels out: the doctor-labelled slices are then the labelled training set)")
        return "doctor"
    if getattr(args, "unlabeled_fraction", None) is not None:
        raise DataPrepError("--unlabeled-fraction selects volumes of the unlabelled images: it needs "
                            "--unlabeled pseudo")
    return "pseudo" if chosen is None else chosen


def convert(args: argparse.Namespace) -> int:
    """Find the pairs of the requested task in the parts present and convert them."""
    root = find_dataset_root(args.src)
    threshold = args.threshold
    if not 1 <= threshold <= 255:
        raise DataPrepError(f"--threshold {threshold}: must be within 1..255")
    args.train_labels = _training_labels(args)
    unlabeled = getattr(args, "unlabeled", "none") == "pseudo"
    present, sections_found, absent_notes = present_parts(root, args.task, args.train_labels, unlabeled)
    meta_count, meta_fraction = getattr(args, "meta_count", None), getattr(args, "meta_fraction", None)
    pairs: list[Pair] = []
    skipped: list[Skip] = []

    def add(rel: str, prefix: str, sections: dict[str, str] | str, loader) -> None:
        if rel not in present:
            return
        found, skips = _folder_pairs(root, rel, args.limit)
        skipped.extend(skips)
        for stem, image, mask in found:
            key = f"{prefix}/{stem}"
            section = sections if isinstance(sections, str) else sections[key]
            pairs.append(Pair(key, section, partial(loader, image, mask), (str(image), str(mask)),
                              extras=("label_soft",) if args.task == "binary" else ()))

    def split(rel: str, prefix: str, fixed: str | None = None) -> dict[str, str]:
        """Section of each radiologist-labelled training slice: meta slices first, then ``fixed`` or the split."""
        if rel not in present:
            return {}
        found, _ = _folder_pairs(root, rel, args.limit)
        keys = [f"{prefix}/{s}" for s, _, _ in found]
        meta = meta_keys(keys, meta_count, meta_fraction, args.seed)
        rest = [k for k in keys if k not in meta]
        where = ({k: fixed for k in rest} if fixed is not None else
                 assign_sections(rest, (1 - args.val_fraction, args.val_fraction, 0), args.seed))
        return {**where, **{k: "meta" for k in meta}}

    if args.task == "binary":
        hard = _load_hard
        if args.train_labels in ("pseudo", "both"):
            add(PSEUDO, "pseudo", "training", partial(_load_soft, threshold=threshold))
        if args.train_labels == "pseudo":
            add(DOCTOR, "doctor", split(DOCTOR, "doctor", fixed="validation"), hard)
        else:
            add(DOCTOR, "doctor", split(DOCTOR, "doctor"), hard)
        add(TEST, "test", "test", hard)
        labels = {"0": "background", "1": "infection"}
    else:
        add(MC_TRAIN, "multiclass_train", split(MC_TRAIN, "multiclass_train"), _load_classes)
        add(MC_TEST, "multiclass_test", "test", _load_classes)
        labels = MULTICLASS_NAMES
    notes = list(absent_notes)
    if unlabeled and PSEUDO in present:
        found, skips, unlabeled_notes = _unlabeled_pairs(root, args)
        pairs.extend(found)
        skipped.extend(skips)
        notes.extend(unlabeled_notes)
    if args.task == "binary" and args.train_labels != "doctor" and PSEUDO in present:
        notes.append(f"pseudo-labels binarised at {threshold} ('label'); soft masks kept as 'label_soft'")
    unlabeled_text = "; unlabelled: the pseudo-labelled images" if unlabeled else ""
    job = ConversionJob(
        dataset="covid_semiseg", src=args.src, pairs=pairs, skipped=skipped,
        settings={"task": args.task, "threshold": threshold},
        labels=labels, notes=notes, sections=sections_found,
        description=f"COVID-SemiSeg lung infection ({args.task}; training labels: "
                    f"{args.train_labels if args.task == 'binary' else 'radiologists'}{unlabeled_text})",
    )
    return run_job(job, args)


def _meta_fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be within (0, 1)")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``covid_semiseg``."""
    p = subparsers.add_parser("covid_semiseg", help="COVID-SemiSeg CT lung infection (Inf-Net layout)",
                              description=__doc__, epilog=IMAGE_FILES_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, val_fraction=0.2, threshold=False)
    p.add_argument("--threshold", type=int, default=128,
                   help="binarise the soft pseudo-labels at this value of 0..255 (default 128)")
    p.add_argument("--task", choices=("binary", "multiclass"), default="binary")
    p.add_argument("--train-labels", choices=("pseudo", "doctor", "both"), default=None,
                   help="training labels for --task binary (default pseudo; doctor with --unlabeled pseudo)")
    p.add_argument("--unlabeled", choices=("none", "pseudo"), default="none",
                   help="pseudo: list the 1,600 pseudo-labelled images without their masks in an 'unlabeled' "
                        "section, for semi-supervised training; the doctor-labelled slices are then the labelled "
                        "training and validation sets (default none)")
    p.add_argument("--unlabeled-fraction", type=float, default=None, metavar="F",
                   help="with --unlabeled pseudo: keep a fixed-seed share F in (0, 1] of the CT volumes of the "
                        "unlabelled images, whole volumes (default: all)")
    meta = p.add_mutually_exclusive_group()
    meta.add_argument("--meta-count", type=int, default=None,
                      help="radiologist-labelled training slices moved to a 'meta' section (the clean set of "
                           "MW-Net; left out of training and validation)")
    meta.add_argument("--meta-fraction", type=_meta_fraction, default=None,
                      help="the same as a share of those slices, in (0, 1)")
    p.set_defaults(func=convert)
