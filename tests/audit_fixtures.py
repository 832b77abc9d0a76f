"""Tiny PNG datasets for the label-audit tests: bright disks on a dark background, labelled by the disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ROWS, COLS = 14, 20  # non-square and not the network's grid, so a map must be resized back to be right


def disk(rows: int, cols: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:rows, :cols]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def make_dataset(root: Path, n: int = 12, corrupt: dict[int, str] | None = None, seed: int = 0,
                 twins: dict[int, int] | None = None) -> Path:
    """``n`` cases ``case<i>.png`` with labels ``case<i>_mask.png`` (0/1); ``corrupt`` maps a case index to
    ``"shift"`` (the label disk moved off the lesion) or ``"empty"``; ``twins`` maps a case index to an earlier
    one whose image (and clean label) it repeats. Returns the datalist path."""
    rng = np.random.default_rng(seed)
    made: dict[int, tuple] = {}
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        cy, cx, r = rng.uniform(5, ROWS - 5), rng.uniform(6, COLS - 6), rng.uniform(2.5, 4.0)
        mask = disk(ROWS, COLS, cy, cx, r)
        img = np.where(mask > 0, rng.integers(180, 255, mask.shape), rng.integers(0, 70, mask.shape))
        img.reshape(-1)[:2] = (0, 255)
        if twins and i in twins:
            mask, img, cx = made[twins[i]]
        made[i] = (mask, img, cx)
        label = mask.copy()
        kind = (corrupt or {}).get(i)
        if kind == "shift":
            label = np.roll(mask, (0, 7 if cx < COLS / 2 else -7), axis=(0, 1))
        elif kind == "empty":
            label = np.zeros_like(mask)
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(label.astype(np.uint8)).save(root / "labels" / f"case{i:02d}_mask.png")
        entries.append({"image": f"images/case{i:02d}.png", "label": f"labels/case{i:02d}_mask.png"})
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": entries, "validation": entries[:2]}, indent=1))
    return path


def bundle_copy(dest: Path, name: str = "synthetic2d_unet") -> Path:
    """A copy of a repository bundle's configs (no weights)."""
    shutil.copytree(REPO / "bundles" / name / "configs", dest / name / "configs")
    return dest / name


#: a 1x1 convolution (a learnt intensity threshold): trains in a few iterations, fast and deterministic
THRESHOLD_NET = {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 1, "kernel_size": 1}

#: bundle overrides that make its training tiny: the threshold network on a 16x16 grid, a few epochs
TINY = {"network_def": THRESHOLD_NET, "spatial_size": [16, 16], "num_epochs": 15, "batch_size": 4,
        "learning_rate": 0.3, "val_interval": 100, "dale#patch_size": 4}
