"""MosMedData+ (COVID-19 CT lesions) in the LViT layout.

``--src`` holds ``Train_Folder``, ``Val_Folder`` and ``Test_Folder``, each with ``img/*.png`` and
``labelcol/*.png`` (masks 0/255, or 0/1; other 2D formats, below, are read too) matched by file stem; a ``mask_`` prefix on the mask name
(as in LViT's QaTa-COV19 copy) is accepted too. The dataset's own split is kept.
"""

from __future__ import annotations

import argparse

from ..convert import (
    IMAGE_FILES_HELP,
    ConversionJob,
    add_common_arguments,
    binary_pairs,
    limit_items,
    list_files,
    match_pairs,
    require_dir,
    run_job,
)
from ..io import DataPrepError

__all__ = ["add_parser", "convert", "FOLDERS"]

FOLDERS = {"Train_Folder": "training", "Val_Folder": "validation", "Test_Folder": "test"}


def convert(args: argparse.Namespace) -> int:
    """Convert the three LViT folders into the matching sections."""
    if not args.src.is_dir():
        raise DataPrepError(f"--src {args.src}: no such folder")
    pairs, skips = [], []
    for folder, section in FOLDERS.items():
        base = require_dir(args.src / folder, f"MosMedData+ {section} set, with img/ and labelcol/")
        images, s1 = list_files(require_dir(base / "img", f"{folder} images"))
        masks, s2 = list_files(require_dir(base / "labelcol", f"{folder} masks"))
        masks = {(k[len("mask_"):] if k.startswith("mask_") and k[len("mask_"):] in images else k): v
                 for k, v in masks.items()}
        found, s3 = match_pairs(images, masks)
        skips += s1 + s2 + s3
        pairs += binary_pairs(limit_items(found, args.limit), section, section, args.threshold)
    job = ConversionJob("mosmed", args.src, pairs, skips, settings={"threshold": args.threshold},
                        labels={"0": "background", "1": "lesion"},
                        description="MosMedData+ COVID-19 CT lesions (LViT split)")
    return run_job(job, args)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mosmed``."""
    p = subparsers.add_parser("mosmed", help="MosMedData+ (LViT layout)", description=__doc__, epilog=IMAGE_FILES_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.set_defaults(func=convert)
