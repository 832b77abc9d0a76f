"""``python -m data_prep merge-corrections``: put corrected masks back into a datalist, so that the loop
audit -> relabel -> retrain closes.

A corrected mask replaces the ``label`` of the datalist entry it belongs to; that entry keeps its previous label as
``label_original`` (an entry corrected twice keeps the first, true original) and records the corrected file's
SHA-256 under ``corrected_sha256``. Nothing is copied or overwritten: the new datalist is written to ``--out`` and
points at the corrected files where they are.

Matching: a corrected file belongs to the entry whose label file has the same name, or whose image file has the
same name without extension (``IMD002.png`` corrects the entry of ``images/IMD002.png`` and of
``masks/IMD002.png``); a review datalist of ``python -m dale_monai audit`` whose entries were relabelled in place
can be given with ``--corrections review_datalist.json``: each of its entries corrects the entry of the same image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .io import DataPrepError, write_json
from .noise import read_label

__all__ = ["merge_corrections", "add_parser"]

_LABEL_SUFFIXES = (".nii.gz", ".nii", ".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".npy")


def _stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for ext in _LABEL_SUFFIXES:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem


def _abs(value: str, root: Path) -> Path:
    p = Path(value)
    return (p if p.is_absolute() else root / p).resolve()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _corrections(source: Path) -> dict[str, Path]:
    """Key -> corrected file: ``image:<abs path>`` from a review datalist, ``name:<file name>`` and
    ``stem:<name without extension>`` from a folder."""
    if source.is_dir():
        out = {}
        for p in sorted(source.rglob("*")):
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(_LABEL_SUFFIXES):
                for key in (f"name:{p.name}", f"stem:{_stem(p)}"):
                    if key in out:
                        raise DataPrepError(f"{source}: two corrected files match {key.split(':', 1)[1]!r}: "
                                            f"{out[key]} and {p}")
                    out[key] = p.resolve()
        return out
    if source.is_file():
        try:
            doc = json.loads(source.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataPrepError(f"{source}: not valid JSON ({e})") from None
        entries = doc.get("training") if isinstance(doc, dict) else doc
        if not isinstance(entries, list):
            raise DataPrepError(f"{source}: needs a 'training' list of entries with image and label")
        out = {}
        for i, e in enumerate(entries):
            if not isinstance(e, Mapping) or "image" not in e or "label" not in e:
                raise DataPrepError(f"{source}: entry {i} needs an image and a label")
            out[f"image:{_abs(e['image'], source.parent)}"] = _abs(e["label"], source.parent)
        return out
    raise DataPrepError(f"{source}: corrections not found (a folder of masks or a review datalist)")


def merge_corrections(datalist: str | os.PathLike, corrections: str | os.PathLike, out: str | os.PathLike,
                      section: str = "training", overwrite: bool = False, check_shape: bool = True) -> dict:
    """Write a copy of ``datalist`` whose entries of ``section`` use the corrected masks.

    Args:
        datalist: the MONAI datalist the masks correct.
        corrections: a folder of corrected masks, or a review datalist (see the module docstring).
        out: the new datalist file; paths in it are relative to its folder.
        section: the datalist section corrected.
        overwrite: replace an existing ``out``.
        check_shape: refuse a corrected mask whose shape differs from the label it replaces.

    Returns:
        ``{"merged": [{"image", "label", "label_original"}...], "out": path}``.

    Raises:
        DataPrepError: for a missing datalist or section, an existing ``out`` without ``overwrite``, ``out``
            equal to ``datalist``, a corrected file that matches no entry (all are listed), a corrected file
            matching two entries, or a corrected mask of another shape than the label it replaces (naming both).
    """
    src, dst = Path(datalist).resolve(), Path(out).resolve()
    if not src.is_file():
        raise DataPrepError(f"{src}: datalist not found")
    if dst == src:
        raise DataPrepError(f"--out {dst}: the corrected datalist is written beside the original, never over it")
    if dst.exists() and not overwrite:
        raise DataPrepError(f"{dst} exists; pass --overwrite to replace it")
    try:
        doc = json.loads(src.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataPrepError(f"{src}: not valid JSON ({e})") from None
    entries = doc.get(section) if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataPrepError(f"{src}: section {section!r} is missing or empty")
    fixes = _corrections(Path(corrections))
    used: dict[Path, int] = {}
    new_entries, merged = [], []
    for i, entry in enumerate(entries):
        e = {k: (os.path.relpath(_abs(v, src.parent), dst.parent) if k in ("image", "label", "label_clean",
                                                                            "label_original") and isinstance(v, str)
                 else v) for k, v in entry.items()}
        label = _abs(entry["label"], src.parent) if "label" in entry else None
        image = _abs(entry["image"], src.parent) if "image" in entry else None
        keys = [f"image:{image}"] if image else []
        keys += [f"name:{label.name}"] if label else []
        keys += [f"stem:{_stem(image)}"] if image else []
        fix = next((fixes[k] for k in keys if k in fixes), None)
        if fix is not None and label is not None and fix != label:
            if fix in used:
                raise DataPrepError(f"{fix}: matches training entries {used[fix]} and {i}")
            used[fix] = i
            if check_shape:
                new, old = read_label(fix)[0], read_label(label)[0]
                if new.shape != old.shape:
                    raise DataPrepError(f"{fix}: corrected mask of shape {new.shape} for {label} of shape "
                                        f"{old.shape}; a correction must match its image pixel for pixel")
            e.setdefault("label_original", os.path.relpath(label, dst.parent))
            e["label"] = os.path.relpath(fix, dst.parent)
            e["corrected_sha256"] = _sha256(fix)
            merged.append({"image": str(image), "label": str(fix), "label_original": str(label)})
        new_entries.append(e)
    unmatched = sorted({str(p) for p in fixes.values()} - {str(p) for p in used} -
                       {str(_abs(x["label"], src.parent)) for x in entries if "label" in x})
    if unmatched:
        shown = "\n    ".join(unmatched[:10])
        raise DataPrepError(f"{len(unmatched)} corrected file(s) match no entry of {src} section {section!r}:\n"
                            f"    {shown}")
    new_doc: dict[str, Any] = {}
    for key, value in doc.items():
        if key == section:
            new_doc[key] = new_entries
        elif isinstance(value, list):
            new_doc[key] = [{k: (os.path.relpath(_abs(v, src.parent), dst.parent)
                                 if k in ("image", "label", "label_clean", "label_original") and isinstance(v, str)
                                 else v) for k, v in x.items()} if isinstance(x, Mapping) else x for x in value]
        else:
            new_doc[key] = value
    history = list(doc.get("corrections", [])) if isinstance(doc.get("corrections"), list) else []
    history.append({"source_datalist": str(src), "corrections": str(Path(corrections).resolve()),
                    "section": section, "n_merged": len(merged)})
    new_doc["corrections"] = history
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_json(dst, new_doc)
    return {"merged": merged, "out": str(dst)}


def _run(args: argparse.Namespace) -> int:
    report = merge_corrections(args.datalist, args.corrections, args.out, section=args.section,
                               overwrite=args.overwrite)
    print(f"merge-corrections: {len(report['merged'])} corrected label(s) merged into {report['out']}")
    for m in report["merged"]:
        print(f"  {m['image']}: {m['label']} (was {m['label_original']})")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``merge-corrections``."""
    p = subparsers.add_parser(
        "merge-corrections", help="merge corrected masks back into a datalist (corrected file wins, original kept)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datalist", required=True, type=Path, help="the datalist the masks correct")
    p.add_argument("--corrections", required=True, type=Path,
                   help="a folder of corrected masks, or a review datalist whose labels were corrected")
    p.add_argument("--out", required=True, type=Path, help="the new datalist (never the original)")
    p.add_argument("--section", default="training", help="datalist section to correct (default training)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_run)
