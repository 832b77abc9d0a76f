"""Colonoscopy polyps: Kvasir-SEG, CVC-ClinicDB and the PraNet benchmark layout.

* ``kvasir``: Kvasir-SEG (``--src`` is ``Kvasir-SEG/`` or holds it): ``images/`` and ``masks/``, ``*.jpg`` as
  distributed or a PNG/BMP/TIFF copy. JPEG masks are thresholded at 128 (``--threshold``); masks of a
  lossless copy must hold 0/1 or 0/255 (or give ``--threshold``). Fixed-seed ``--split``.
* ``cvc_clinicdb``: ``Original/*.tif`` + ``Ground Truth/*.tif`` (also under ``TIF/``), or the PNG
  variant ``PNG/Original`` + ``PNG/Ground Truth``. Fixed-seed ``--split``.
* ``polyp_benchmark``: the PraNet layout, ``TrainDataset/{image,mask}/*.png`` and
  ``TestDataset/<Name>/{images,masks}/*.png`` for Kvasir, CVC-ClinicDB, CVC-ColonDB,
  ETIS-LaribPolypDB and CVC-300. Training + a ``--val-fraction`` validation split of TrainDataset,
  one ``test_<Name>`` section per test set and ``test`` holding them all. Its masks were resized by
  the benchmark's authors and hold intermediate values along edges, so they are thresholded at 128
  (``--threshold``), as the benchmark's own evaluation does.
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
    assign_sections,
    binary_pairs,
    limit_items,
    list_files,
    match_pairs,
    require_dir,
    run_job,
)
from ..io import DataPrepError

__all__ = ["add_parser", "find_kvasir", "find_cvc_clinicdb", "convert_kvasir", "convert_cvc_clinicdb",
           "convert_polyp_benchmark", "BENCHMARK_TEST_SETS"]

BENCHMARK_TEST_SETS = ("Kvasir", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "CVC-300")
BINARY_NAMES = {"0": "background", "1": "polyp"}


def _folder_pairs(image_dir: Path, mask_dir: Path, what: str) -> tuple[list[tuple[str, Path, Path]], list[Skip]]:
    images, s1 = list_files(require_dir(image_dir, f"{what} images"))
    masks, s2 = list_files(require_dir(mask_dir, f"{what} masks"))
    found, s3 = match_pairs(images, masks)
    return found, s1 + s2 + s3


def _check_src(src: Path) -> None:
    if not src.is_dir():
        raise DataPrepError(f"--src {src}: no such folder")


def find_kvasir(src: Path) -> tuple[list[tuple[str, Path, Path]], list[Skip]]:
    """Kvasir-SEG ``(name, image, mask)`` triples."""
    _check_src(src)
    root = src / "Kvasir-SEG" if (src / "Kvasir-SEG").is_dir() else src
    return _folder_pairs(root / "images", root / "masks", "Kvasir-SEG")


def find_cvc_clinicdb(src: Path) -> tuple[list[tuple[str, Path, Path]], list[Skip]]:
    """CVC-ClinicDB ``(number, image, mask)`` triples, from the TIFF or the PNG variant."""
    _check_src(src)
    for root in (src, src / "CVC-ClinicDB", src / "TIF", src / "PNG"):
        if (root / "Original").is_dir() or (root / "Ground Truth").is_dir():
            return _folder_pairs(root / "Original", root / "Ground Truth", f"CVC-ClinicDB ({root})")
    raise DataPrepError(f"--src {src}: no 'Original' + 'Ground Truth' folders (nor under TIF/ or PNG/)")


def _split_job(name: str, args: argparse.Namespace, found, skips, description: str) -> int:
    found = limit_items(found, args.limit)
    sections = assign_sections([s for s, _, _ in found], args.split, args.seed)
    job = ConversionJob(name, args.src, binary_pairs(found, "", sections, args.threshold), skips,
                        settings={"threshold": args.threshold}, labels=BINARY_NAMES, description=description)
    return run_job(job, args)


def convert_kvasir(args: argparse.Namespace) -> int:
    """``kvasir``: Kvasir-SEG with a fixed-seed split."""
    found, skips = find_kvasir(args.src)
    return _split_job("kvasir", args, found, skips, "Kvasir-SEG polyps, fixed-seed split")


def convert_cvc_clinicdb(args: argparse.Namespace) -> int:
    """``cvc_clinicdb``: CVC-ClinicDB with a fixed-seed split."""
    found, skips = find_cvc_clinicdb(args.src)
    return _split_job("cvc_clinicdb", args, found, skips, "CVC-ClinicDB polyps, fixed-seed split")


def convert_polyp_benchmark(args: argparse.Namespace) -> int:
    """``polyp_benchmark``: the PraNet TrainDataset/TestDataset protocol."""
    _check_src(args.src)
    threshold = 128 if args.threshold is None else args.threshold
    train_root = require_dir(args.src / "TrainDataset", "the PraNet training set, TrainDataset/{image,mask}")
    test_root = require_dir(args.src / "TestDataset", "the PraNet test sets, TestDataset/<Name>/{images,masks}")
    found, skips = _folder_pairs(train_root / "image", train_root / "mask", "TrainDataset")
    found = limit_items(found, args.limit)
    sections = assign_sections([f"train/{s}" for s, _, _ in found], (1 - args.val_fraction, args.val_fraction, 0),
                               args.seed)
    pairs: list[Pair] = binary_pairs(found, "train", sections, threshold)
    names = [n for n in BENCHMARK_TEST_SETS if (test_root / n).is_dir()]
    names += sorted(p.name for p in test_root.iterdir() if p.is_dir() and p.name not in BENCHMARK_TEST_SETS)
    if not names:
        raise DataPrepError(f"{test_root}: no test set folders (expected {', '.join(BENCHMARK_TEST_SETS)})")
    notes = []
    absent = [n for n in BENCHMARK_TEST_SETS if n not in names]
    if absent:
        notes.append(f"test sets not found under {test_root}: {', '.join(absent)}")
    for name in names:
        base = test_root / name
        found, test_skips = _folder_pairs(base / "images", base / "masks", f"TestDataset/{name}")
        skips += test_skips
        for pair in binary_pairs(limit_items(found, args.limit), f"test/{name}", f"test_{name}", threshold):
            pairs.append(Pair(pair.key, pair.section, pair.load, pair.sources, sections=("test",)))
    job = ConversionJob("polyp_benchmark", args.src, pairs, skips, settings={"threshold": threshold},
                        labels=BINARY_NAMES, notes=notes,
                        description="polyp benchmark (PraNet protocol): TrainDataset, five test sets")
    return run_job(job, args)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``kvasir``, ``cvc_clinicdb`` and ``polyp_benchmark``."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("kvasir", help="Kvasir-SEG polyps", description=__doc__, epilog=IMAGE_FILES_HELP,
                              formatter_class=fmt)
    add_common_arguments(p, split=True)
    p.set_defaults(func=convert_kvasir)
    p = subparsers.add_parser("cvc_clinicdb", help="CVC-ClinicDB polyps", description=__doc__,
                              epilog=IMAGE_FILES_HELP, formatter_class=fmt)
    add_common_arguments(p, split=True)
    p.set_defaults(func=convert_cvc_clinicdb)
    p = subparsers.add_parser("polyp_benchmark", help="PraNet polyp benchmark (TrainDataset/TestDataset)",
                              description=__doc__, epilog=IMAGE_FILES_HELP, formatter_class=fmt)
    add_common_arguments(p, val_fraction=0.1)
    p.set_defaults(func=convert_polyp_benchmark)
