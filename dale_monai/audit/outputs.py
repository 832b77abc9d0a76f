"""What an audit writes: the ranked table, the suspicion maps in the input geometry, overlays, a contact sheet and
the review datalist of the worst cases."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..predict.files import atomic_path, safe_join, safe_name
from ..predict.overlay import overlay_rgb
from ..predict.segments import Segment

__all__ = ["AUDIT_CSV", "REVIEW_DATALIST", "CONTACT_SHEET", "write_table", "write_review_datalist",
           "MapWriter", "suspect_overlay", "write_contact_sheet"]

AUDIT_CSV = "audit.csv"
REVIEW_DATALIST = "review_datalist.json"
CONTACT_SHEET = "contact_sheet.png"

#: overlay colours: the label (green) and the suspected pixels (red, drawn over the label)
_OVERLAY_SEGMENTS = [Segment(1, "label", (0, 200, 0)), Segment(2, "suspected", (230, 30, 30))]


def write_table(path: Path, rows: Sequence[Mapping[str, Any]], overwrite: bool = False) -> Path:
    """Write ``rows`` (already sorted, worst first) as CSV, atomically; columns from the first row."""
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def write_review_datalist(path: Path, entries: Sequence[Mapping[str, Any]], source: str,
                          overwrite: bool = False) -> Path:
    """The worst cases as a MONAI datalist (section ``training``, absolute paths) for relabelling: each entry
    keeps its ``image`` and ``label`` and adds ``case``, ``rank``, ``score`` and ``suspicion_map``; a MONAI Label
    server or an annotation tool can load the images as its studies and the labels as the drafts to correct."""
    doc = {"description": "training cases an audit ranked most likely mislabelled, worst first "
                          "(python -m dale_monai audit)",
           "source_datalist": source, "training": list(entries)}
    with atomic_path(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=2))
    return path


class MapWriter:
    """Per-pixel maps on the network grid, mapped back to a case's input geometry and written beside its kind.

    The map is given the applied operations of the case's preprocessed image and inverted with MONAI's
    ``Invertd`` through the bundle's own preprocessing (bilinear, as the image was resized), then written by
    :class:`dale_monai.bundle_transforms.SaveMaskd` (the writer of ``predict``): a PNG for a 2D image file, a
    NIfTI with the input's spatial header otherwise. Values are stored as ``uint8``, suspicion × 255.

    Args:
        preprocessing: the bundle's ``validate#preprocessing`` (a MONAI ``Compose``).
        image_key: the key whose applied operations are inverted.
    """

    def __init__(self, preprocessing: Any, image_key: str = "image") -> None:
        from monai.transforms import Invertd

        self.preprocessing = preprocessing
        self.image_key = image_key
        self.invert = Invertd(keys="map", transform=preprocessing, orig_keys=image_key, nearest_interp=False,
                              to_tensor=True)

    def to_input(self, data: Mapping, grid_map: np.ndarray) -> Any:
        """``grid_map`` ``(*grid)`` in the input geometry, a MetaTensor ``(1, *input spatial)`` carrying the
        image's meta data; ``data`` is the case's preprocessed dict."""
        import torch
        from monai.data import MetaTensor

        image = data[self.image_key]
        m = MetaTensor(torch.as_tensor(np.asarray(grid_map, np.float32))[None], meta=dict(image.meta),
                       applied_operations=list(image.applied_operations))
        d = dict(data)
        d["map"] = m
        return self.invert(d)["map"]

    def write(self, inverted: Any, out_dir: Path, name: str, overwrite: bool = False) -> Path:
        """Write an inverted map as ``<name>_suspicion.<png|nii.gz>`` in ``out_dir`` (staged, then renamed)."""
        import torch
        from monai.data import MetaTensor

        from ..bundle_transforms import SaveMaskd

        stage = Path(tempfile.mkdtemp(prefix=".maps-", dir=out_dir))
        try:
            scaled = torch.clamp(torch.as_tensor(inverted).float() * 255.0, 0, 255).round()
            SaveMaskd(keys="map", output_dir=str(stage), output_postfix="suspicion", output_dtype=np.uint8,
                      print_log=False)({"map": MetaTensor(scaled, meta=dict(inverted.meta))})
            written = [p for p in stage.iterdir() if p.is_file()]
            if len(written) != 1:
                raise RuntimeError(f"the map writer wrote {len(written)} files for case {name} (expected 1)")
            ext = ".nii.gz" if written[0].name.endswith(".nii.gz") else written[0].suffix
            final = safe_join(out_dir, f"{safe_name(name)}_suspicion{ext}")
            if final.exists() and not overwrite:
                raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
            os.replace(written[0], final)
            return final
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def suspect_overlay(image: np.ndarray, label: np.ndarray, suspected: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` picture: ``image`` ``(C, *spatial)`` with its label (green) and suspected pixels (red),
    in MONAI's array layout (as :func:`dale_monai.predict.overlay.overlay_rgb`, which draws it)."""
    mask = (np.asarray(label) > 0).astype(np.uint8)
    mask[np.asarray(suspected, bool)] = 2
    return overlay_rgb(np.asarray(image), mask, _OVERLAY_SEGMENTS)


def write_contact_sheet(path: Path, pictures: Sequence[np.ndarray], titles: Sequence[str], columns: int = 5,
                        tile: int = 192, overwrite: bool = False) -> Path:
    """The overlays of the worst cases in one PNG: a grid of ``columns`` panels, each scaled to fit ``tile`` pixels
    and captioned with its title (PIL only; no plotting library needed)."""
    from PIL import Image, ImageDraw

    n = max(1, len(pictures))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    caption = 14
    sheet = Image.new("RGB", (cols * tile, rows * (tile + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (pic, title) in enumerate(zip(pictures, titles)):
        img = Image.fromarray(np.asarray(pic, dtype=np.uint8))
        img.thumbnail((tile, tile))
        x, y = (k % cols) * tile, (k // cols) * (tile + caption)
        sheet.paste(img, (x + (tile - img.width) // 2, y + caption + (tile - img.height) // 2))
        draw.text((x + 2, y + 1), title[:40], fill=(0, 0, 0))
    with atomic_path(path, overwrite=overwrite) as tmp:
        sheet.save(tmp, format="PNG")
    return path
