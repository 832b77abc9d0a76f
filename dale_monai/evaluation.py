"""Per-case evaluation of a bundle: the paper's metrics for every case, in physical units, to CSV and JSON.

:class:`CaseMetricsSaver` is an Ignite handler for MONAI's ``SupervisedEvaluator``: after the postprocessing
has restored each prediction to its input's grid (``Invertd``), it scores the label map against the original
label with :func:`dale_monai.metrics.case_metrics` (Dice, mIoU, HD95, ASD, empty-mask flags; the distances
in the label's spacing, from its affine) and writes one row per case plus a summary
(:func:`dale_monai.metrics.summarize`) when the run completes.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import affine_to_spacing

from .metrics import case_metrics, summarize

__all__ = ["CaseMetricsSaver", "SUMMARY_METRICS"]

logger = logging.getLogger(__name__)

#: metrics copied into ``engine.state.metrics`` as ``<prefix>_<name>`` (the means over cases)
SUMMARY_METRICS = ("dice", "miou", "hd95", "asd")


def _spacing(label: Any) -> np.ndarray | None:
    affine = getattr(label, "affine", None)
    if affine is None:
        return None
    return np.asarray(affine_to_spacing(torch.as_tensor(affine), r=label.ndim - 1), dtype=np.float64)


def _case_name(item: dict, keys: tuple[str, ...]) -> str:
    for key in keys:
        meta = getattr(item.get(key), "meta", None) or {}
        src = meta.get("filename_or_obj")
        if src:
            return str(src)
    return ""


class CaseMetricsSaver:
    """Score every case of an evaluation run and write ``<prefix>_per_case.csv`` and ``<prefix>_summary.json``.

    Args:
        output_dir: folder of the outputs (created).
        num_classes: classes including background (2 for a binary mask).
        pred_key: key of the predicted label map ``(1, *spatial)`` in each decollated output item.
        label_key: key of the ground-truth label map ``(1, *spatial)``, with its original affine.
        prefix: file name prefix and ``engine.state.metrics`` key prefix.
        physical_units: distances in the label's spacing (from its affine); False gives pixels.

    The summary holds mean, std, count and NaN count per metric and the totals of the empty-mask flags; the
    means of Dice, mIoU, HD95 and ASD also go to ``engine.state.metrics`` (``<prefix>_dice``...).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        num_classes: int = 2,
        pred_key: str = "pred",
        label_key: str = "label",
        prefix: str = "test",
        physical_units: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.num_classes = int(num_classes)
        self.pred_key = pred_key
        self.label_key = label_key
        self.prefix = prefix
        self.physical_units = physical_units
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        """Reset at ``STARTED``, score at ``ITERATION_COMPLETED``, write at ``COMPLETED``."""
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the rows of a previous run."""
        self.rows = []
        self.summary = {}

    def collect(self, engine: Engine) -> None:
        """Score the cases of the current batch (``engine.state.output``, decollated)."""
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            if self.pred_key not in item or self.label_key not in item:
                raise KeyError(
                    f"CaseMetricsSaver: each output needs '{self.pred_key}' and '{self.label_key}' (has {sorted(item)});"
                    " the evaluator must keep decollate=True and the dataset must load the labels."
                )
            pred, label = item[self.pred_key], item[self.label_key]
            if pred.shape[0] != 1 or label.shape[0] != 1:
                raise ValueError(
                    f"CaseMetricsSaver: pred {tuple(pred.shape)} and label {tuple(label.shape)} must be one-channel "
                    "label maps (threshold or argmax in the postprocessing, no one-hot)."
                )
            if pred.shape != label.shape:
                raise ValueError(
                    f"CaseMetricsSaver: {_case_name(item, (self.label_key,))}: prediction {tuple(pred.shape)} and label "
                    f"{tuple(label.shape)} differ in shape; invert the preprocessing (Invertd) before scoring."
                )
            spacing = _spacing(label) if self.physical_units else None
            row: dict[str, Any] = {"case": _case_name(item, ("image", self.label_key, self.pred_key))}
            row.update(case_metrics(pred[0], label[0], spacing=spacing, num_classes=self.num_classes))
            self.rows.append(row)

    def write(self, engine: Engine | None = None) -> None:
        """Write the per-case CSV and the summary JSON; put the means in ``engine.state.metrics``."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with open(self.output_dir / f"{self.prefix}_per_case.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        self.summary = summarize(self.rows)
        with open(self.output_dir / f"{self.prefix}_summary.json", "w") as f:
            json.dump(self.summary, f, indent=2, allow_nan=True)
        for name in SUMMARY_METRICS:
            stats = self.summary.get(name)
            if isinstance(stats, dict):
                logger.info(f"{self.prefix} {name}: {stats['mean']:.4f} ± {stats['std']:.4f} (n={stats['n']})")
                if engine is not None:
                    engine.state.metrics[f"{self.prefix}_{name}"] = stats["mean"]
        if not self.rows:
            logger.warning(f"{self.prefix}: no case was evaluated")
        logger.info(f"{self.prefix}: {len(self.rows)} case(s) written to {self.output_dir}")
