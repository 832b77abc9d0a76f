"""The Medical Segmentation Decathlon layout (``TaskXX_Name/``), the most common layout of 3D datasets.

Layout, as distributed (http://medicaldecathlon.com; Antonelli et al., Nat. Commun. 13, 4128, 2022)::

    Task01_BrainTumour/
        dataset.json        # name, modality {"0": "FLAIR", ...}, labels {"0": "background", ...},
                            # training [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
                            # test ["./imagesTs/y.nii.gz"]
        imagesTr/  labelsTr/  imagesTs/

``training`` lists the labelled cases: a fixed-seed ``--split`` (by case) makes the ``training``, ``validation``
and ``test`` sections of the datalist, since the Decathlon's own test images have no public labels. Those
(``test``/``imagesTs``) go to the ``unlabeled`` section by default, images only, for the semi-supervised
paradigms and for ``predict`` (``--images-ts skip`` leaves them out). macOS resource forks (``._*`` files, which
the distributed tarballs hold) and files that ``dataset.json`` does not list are never read.

Multi-modal tasks (BraTS, prostate) store one 4D NIfTI per case, the modalities on the 4th axis in the order of
``modality``: by default they stay there, as the channels MONAI loads (``EnsureChannelFirstd``), for a bundle
with as many ``in_channels``; ``--modalities FLAIR,T2w`` (names or indices) keeps those, a single one giving a 3D
volume for a one-channel bundle. Labels keep the task's class indices and names (``--binary``: every class but
background becomes 1, for binary bundles). Images keep their values (HU for CT: the bundles window them) and the
source's spatial header (qform, sform, codes, units) goes onto image and label alike; a label whose shape or
affine differs from its image's is skipped, naming both files.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np

from ..convert import (
    UNLABELED_SECTION,
    ConversionJob,
    Pair,
    Sample,
    Skip,
    add_common_arguments,
    assign_sections,
    limit_items,
    run_job,
)
from ..io import DataPrepError, nifti_spatial_header
from ..masks import label_indices

__all__ = ["add_parser", "convert", "read_dataset_json", "select_modalities"]

#: affine difference (mm) below which a label lies in its image's grid (float32 headers round the affines)
AFFINE_TOLERANCE = 1e-3


def read_dataset_json(src: Path) -> dict:
    """``<src>/dataset.json``, checked for what the converter needs.

    Raises:
        DataPrepError: missing or unreadable file, or ``labels``/``modality``/``training`` missing or malformed.
    """
    path = src / "dataset.json"
    if not path.is_file():
        raise DataPrepError(f"--src {src}: no dataset.json; expected a Decathlon task folder (TaskXX_Name) holding "
                            "dataset.json, imagesTr/ and labelsTr/")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataPrepError(f"{path}: not valid JSON ({e})") from None
    for key, kind in (("labels", dict), ("modality", dict), ("training", list)):
        if not isinstance(doc.get(key), kind):
            raise DataPrepError(f"{path}: '{key}' is missing or not a {kind.__name__}")
    try:
        labels = {int(k): str(v) for k, v in doc["labels"].items()}
        modality = {int(k): str(v) for k, v in doc["modality"].items()}
    except ValueError:
        raise DataPrepError(f"{path}: 'labels' and 'modality' keys must be integers as strings") from None
    if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
        raise DataPrepError(f"{path}: 'labels' must number the classes 0..N-1 (N >= 2), got {sorted(labels)}")
    if sorted(modality) != list(range(len(modality))) or not modality:
        raise DataPrepError(f"{path}: 'modality' must number the channels 0..C-1, got {sorted(modality)}")
    for i, entry in enumerate(doc["training"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("image"), str) and isinstance(entry.get("label"),
                                                                                                  str)):
            raise DataPrepError(f"{path}: training[{i}] needs 'image' and 'label' paths, got {entry!r}")
    test = doc.get("test", [])
    if not isinstance(test, list) or not all(isinstance(t, (str, dict)) for t in test):
        raise DataPrepError(f"{path}: 'test' must be a list of image paths")
    return {**doc, "labels": labels, "modality": modality,
            "test": [t if isinstance(t, str) else t.get("image", "") for t in test]}


def select_modalities(modality: dict[int, str], wanted: str | None) -> list[int]:
    """Channel indices for ``--modalities`` (comma-separated names or indices; None: all, in order).

    Raises:
        DataPrepError: an unknown name or index, or one given twice.
    """
    if wanted is None:
        return sorted(modality)
    by_name = {name.lower(): i for i, name in modality.items()}
    out: list[int] = []
    for word in (w.strip() for w in wanted.split(",") if w.strip()):
        index = int(word) if word.isdigit() else by_name.get(word.lower())
        if index is None or index not in modality:
            raise DataPrepError(f"--modalities {wanted}: {word!r} is not one of this task's modalities "
                                f"({', '.join(f'{i}: {n}' for i, n in sorted(modality.items()))})")
        if index in out:
            raise DataPrepError(f"--modalities {wanted}: {word!r} is given twice")
        out.append(index)
    if not out:
        raise DataPrepError("--modalities: empty")
    return out


def _resolve(src: Path, rel: str) -> Path:
    path = (src / rel).resolve()
    if src.resolve() not in path.parents:
        raise DataPrepError(f"{src / 'dataset.json'}: {rel!r} points outside the task folder")
    return path


def _load_image(path: Path, channels: list[int], n_modalities: int):
    """The image with the chosen channels (3D for one, 4D channel-last for several), its header and affine."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise DataPrepError(f"{path}: listed in dataset.json but missing") from None
    except Exception as e:  # nibabel/gzip raise several types for damaged files
        raise DataPrepError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})") from None
    if arr.ndim == 3 and n_modalities == 1:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[3] != n_modalities:
        raise DataPrepError(f"{path}: shape {'x'.join(map(str, arr.shape))}, but dataset.json lists "
                            f"{n_modalities} modalit{'y' if n_modalities == 1 else 'ies'} (expected a 3D volume per "
                            "modality on the 4th axis)")
    arr = arr[..., channels]
    if arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr), img.header, img.affine


def _load_case(image: Path, label: Path | None, channels: list[int], n_modalities: int, binary: bool,
               num_classes: int) -> Sample:
    import nibabel as nib

    arr, header, affine = _load_image(image, channels, n_modalities)
    # a 4D source's header describes 4D data: the spatial header of its first three axes goes on the outputs
    spatial = nifti_spatial_header(header)
    if label is None:
        return Sample(arr, None, header=spatial)
    try:
        lab_img = nib.load(str(label))
        lab = np.asanyarray(lab_img.dataobj)
    except FileNotFoundError:
        raise DataPrepError(f"{label}: listed in dataset.json but missing") from None
    except Exception as e:
        raise DataPrepError(f"{label}: unreadable NIfTI ({type(e).__name__}: {e})") from None
    if tuple(lab.shape) != tuple(arr.shape[:3]):
        raise DataPrepError(f"{label}: shape {'x'.join(map(str, lab.shape))} differs from its image's "
                            f"{'x'.join(map(str, arr.shape[:3]))} ({image})")
    if not np.allclose(lab_img.affine, affine, atol=AFFINE_TOLERANCE):
        raise DataPrepError(f"{label}: its affine differs from its image's ({image}) by up to "
                            f"{np.abs(lab_img.affine - affine).max():.3g} mm: the label is not in the image's grid")
    lab = label_indices(lab, label)
    if int(lab.max()) >= num_classes:
        raise DataPrepError(f"{label}: label value {int(lab.max())}, but dataset.json names {num_classes} classes")
    if binary:
        lab = (lab > 0).astype(np.uint8)
    return Sample(arr, lab, header=spatial)


def _key(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem


def convert(args: argparse.Namespace) -> int:
    """Read ``dataset.json``, split its training cases and convert them (and the test images)."""
    src = args.src
    if not src.is_dir():
        raise DataPrepError(f"--src {src}: no such folder")
    doc = read_dataset_json(src)
    channels = select_modalities(doc["modality"], args.modalities)
    n_mod = len(doc["modality"])
    labels = dict(doc["labels"])
    load = partial(_load_case, channels=channels, n_modalities=n_mod, binary=args.binary, num_classes=len(labels))
    skips: list[Skip] = []
    found: list[tuple[str, Path, Path]] = []
    for entry in doc["training"]:
        try:
            image, label = _resolve(src, entry["image"]), _resolve(src, entry["label"])
        except DataPrepError as e:
            skips.append(Skip((entry["image"],), str(e)))
            continue
        found.append((_key(image), image, label))
    found = limit_items(found, args.limit)
    sections = assign_sections([k for k, _, _ in found], args.split, args.seed)
    pairs = [Pair(k, sections[k], partial(load, image, label), (str(image), str(label))) for k, image, label in found]
    if args.images_ts == "unlabeled":
        tests = []
        for rel in doc["test"]:
            try:
                tests.append(_resolve(src, rel))
            except DataPrepError as e:
                skips.append(Skip((rel,), str(e)))
        pairs += [Pair(f"imagesTs/{_key(p)}", UNLABELED_SECTION, partial(load, p, None), (str(p),), has_label=False)
                  for p in limit_items(tests, args.limit)]
    names = [doc["modality"][c] for c in channels]
    if args.binary:
        labels = {0: labels[0], 1: " + ".join(v for k, v in sorted(labels.items()) if k > 0)}
    notes = [f"modalities kept as channels, in this order: {', '.join(names)}" if len(names) > 1 else
             f"modality {names[0]} (a 3D volume per case)"]
    if args.binary:
        notes.append(f"--binary: classes {', '.join(doc['labels'][k] for k in sorted(doc['labels']) if k)} are "
                     "merged into 1")
    job = ConversionJob(
        "decathlon", src, pairs, skips,
        settings={"modalities": names, "binary": bool(args.binary)},
        image_format="nifti", label_format="nifti",
        labels={str(k): v for k, v in sorted(labels.items())},
        description=f"Medical Segmentation Decathlon {doc.get('name', src.name)} ({', '.join(names)}) from {src}",
        notes=notes,
        sections=("training", "validation", "test") + ((UNLABELED_SECTION,) if args.images_ts == "unlabeled" and
                                                      doc["test"] else ()),
    )
    return run_job(job, args)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``decathlon``."""
    p = subparsers.add_parser("decathlon", help="a Medical Segmentation Decathlon task folder (TaskXX_Name)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, split=True, threshold=False)
    p.add_argument("--modalities", default=None, metavar="NAMES",
                   help="comma-separated modality names or indices to keep, in that order (default: all, as channels)")
    p.add_argument("--binary", action="store_true", help="merge every class but background into one (label 1)")
    p.add_argument("--images-ts", choices=("unlabeled", "skip"), default="unlabeled",
                   help="the task's unlabelled test images: list them in the 'unlabeled' section (default) or skip")
    p.set_defaults(func=convert)
