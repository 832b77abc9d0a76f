"""MONAI datalists: fixed-seed splits, atomic writing and the dataset summary."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .io import DataPrepError, write_json

__all__ = ["split_items", "write_datalist", "summarize_labels", "LabelSummary", "DATALIST_NAME", "SUMMARY_NAME"]

DATALIST_NAME = "datalist.json"
SUMMARY_NAME = "summary.json"
SECTIONS = ("training", "validation", "test")


def split_items(items: Sequence, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> dict[str, list]:
    """Split ``items`` into ``training``/``validation``/``test`` with a fixed-seed permutation.

    Args:
        items: the items to split; the order given does not matter, they are sorted first.
        fractions: fractions of training, validation and test (normalised to sum to 1).
        seed: seed of the permutation.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise DataPrepError(f"split fractions must be three non-negative numbers, got {fractions}")
    ordered = sorted(items, key=lambda x: str(x))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    total = float(sum(fractions))
    n_train = int(round(len(ordered) * fractions[0] / total))
    n_val = int(round(len(ordered) * fractions[1] / total))
    idx = {"training": perm[:n_train], "validation": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}
    return {k: [ordered[i] for i in sorted(v)] for k, v in idx.items()}


def _relative(entry: Mapping[str, str], root: Path) -> dict:
    out = {}
    for k, v in entry.items():
        if isinstance(v, (str, os.PathLike)) and k in ("image", "label", "label_clean", "label_soft"):
            p = Path(v)
            out[k] = str(p.relative_to(root)) if p.is_absolute() else str(p)
        else:
            out[k] = v
    return out


def write_datalist(out_dir: str | os.PathLike, sections: Mapping[str, Sequence[Mapping]], name: str = DATALIST_NAME,
                   **extra) -> Path:
    """Write a MONAI datalist JSON with paths relative to ``out_dir``, atomically.

    Args:
        out_dir: dataset root; the datalist is written there and its paths are relative to it.
        sections: ``training``/``validation``/``test`` (others allowed) lists of ``{"image", "label"}``.
        name: file name of the datalist.
        extra: further top-level keys (e.g. ``name``, ``labels``, ``description``).
    """
    root = Path(out_dir).resolve()
    doc = dict(extra)
    for key, entries in sections.items():
        doc[key] = [_relative(e, root) for e in entries]
    path = root / name
    write_json(path, doc)
    return path


class LabelSummary:
    """Accumulates :func:`summarize_labels` one label array at a time, so large datasets need not
    be held in memory; :meth:`as_dict` gives the same dictionary.

    Args:
        background: the background value.
    """

    def __init__(self, background: int = 0) -> None:
        self.background = background
        self.sizes: Counter = Counter()
        self.values: Counter = Counter()
        self.fractions: list[float] = []

    def add(self, arr: np.ndarray) -> None:
        """Count one label array."""
        arr = np.asarray(arr)
        self.sizes["x".join(map(str, arr.shape))] += 1
        vals, counts = np.unique(arr, return_counts=True)
        for v, c in zip(vals.tolist(), counts.tolist()):
            self.values[int(v) if float(v).is_integer() else float(v)] += int(c)
        self.fractions.append(float((arr != self.background).mean()) if arr.size else 0.0)

    def as_dict(self) -> dict:
        """The summary: count, image sizes, label values and lesion (foreground) fraction."""
        fr = np.asarray(self.fractions) if self.fractions else np.zeros(0)
        return {
            "count": len(self.fractions),
            "sizes": dict(self.sizes.most_common()),
            "label_values": {str(k): v for k, v in sorted(self.values.items())},
            "lesion_fraction": {
                "mean": float(fr.mean()) if fr.size else 0.0,
                "min": float(fr.min()) if fr.size else 0.0,
                "max": float(fr.max()) if fr.size else 0.0,
                "empty_masks": int((fr == 0).sum()),
            },
        }


def summarize_labels(label_arrays: Mapping[str, np.ndarray], background: int = 0) -> dict:
    """Summarise labels: count, image sizes, label values and lesion (foreground) fraction.

    Args:
        label_arrays: case name → label array.
        background: the background value.
    """
    acc = LabelSummary(background)
    for arr in label_arrays.values():
        acc.add(arr)
    return acc.as_dict()
