"""Per-case statistics of a training run (loss, and DALE's ω), logged every iteration for a label audit."""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from ..engines.dale_events import DALEKeys

__all__ = ["CaseStatsHandler", "CASE_STATS_FIELDS", "read_case_stats", "summarise_case_stats"]

#: columns of the CSV written by :class:`CaseStatsHandler`
CASE_STATS_FIELDS = ("case", "epoch", "iteration", "loss", "omega_mean", "omega_below_1")


def _case_ids(batch: Any, id_key: str | None, n: int) -> list[str]:
    """The case names of a collated batch: ``batch[id_key]``, else the image's ``filename_or_obj`` meta data."""
    if id_key is not None and isinstance(batch, dict) and id_key in batch:
        ids = batch[id_key]
    else:
        image = batch.get(Keys.IMAGE) if isinstance(batch, dict) else None
        meta = getattr(image, "meta", None) or {}
        ids = meta.get("filename_or_obj")
    if isinstance(ids, (str, os.PathLike)):
        ids = [ids]
    if ids is None or len(ids) != n:
        raise KeyError(
            "CaseStatsHandler: cannot name the cases of a batch: give each item a case name under id_key "
            f"({id_key!r}) or load the images as MetaTensors (LoadImaged) so that their filename_or_obj is known"
        )
    return [str(i) for i in ids]


def pixel_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy of logits ``(B, C, *spatial)``: binary (sigmoid) for one channel, else softmax
    against class indices ``(B, 1, *spatial)`` or one-hot ``(B, C, *spatial)``; returns ``(B, *spatial)``."""
    logits = logits.float()
    label = label.to(logits.device).float()
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], label[:, 0], reduction="none")
    target = label.argmax(1) if label.shape[1] == logits.shape[1] and label.shape[1] > 1 else label[:, 0].long()
    return F.cross_entropy(logits, target, reduction="none")


class CaseStatsHandler:
    """Record, for every training case and every time it is seen, its loss and (DALE) its mean ω.

    Noisy-label methods read the training dynamics of each sample: wrongly labelled samples keep a high loss
    until the network memorises them (Arpit et al., "A closer look at memorization in deep networks", ICML
    2017; the small-loss criterion of Co-teaching, Han et al., NeurIPS 2018), and DALE's meta step gives a pixel
    whose loss gradient disagrees with the clean-looking region a confidence ω* below one (DALE, CVPR 2025,
    Eqs. 8-11). This handler keeps both per case, for any MONAI trainer, without changing the training.

    Per iteration (at ``IterationEvents.LOSS_COMPLETED``, where the logits of the batch are still batched):

    - ``loss``: the mean per-pixel cross-entropy of the case's prediction against its (augmented) label
      (binary for one output channel, softmax otherwise), independent of the trainer's own loss weights. For
      :class:`~dale_monai.engines.DALETrainer` the prediction of each region is the one its step trained on:
      ``M^n ⊙ ℓ(pred_n) + M^f ⊙ ℓ(pred_f)`` (ω not applied), so that the fuzzy pixels, where boundary noise
      lies, count.
    - ``omega_mean`` / ``omega_below_1`` (DALETrainer only; empty otherwise): mean of ω* over the case's fuzzy
      pixels (M^f > 0, as the trainer's own ``omega_mean``) and the share of them below one.

    Cases are named by ``batch[id_key]`` when the batch has that key, else by the image's ``filename_or_obj``
    meta data (the image path, with MONAI's ``LoadImaged``).

    Example::

        stats = CaseStatsHandler(output_file="logs/case_stats.csv")
        stats.attach(trainer)
        trainer.run()
        worst = sorted(stats.summary().items(), key=lambda kv: -kv[1]["loss"])[:10]

    Args:
        output_file: CSV written (atomically, whole) after every epoch and at the end of the run, columns
            :data:`CASE_STATS_FIELDS`; None keeps the records in memory only (:attr:`records`).
        id_key: batch key of a case name, used before the image meta data.

    Raises:
        KeyError: during training, when a batch's cases cannot be named.
    """

    def __init__(self, output_file: str | os.PathLike | None = None, id_key: str | None = "case") -> None:
        self.output_file = None if output_file is None else Path(output_file)
        self.id_key = id_key
        self.records: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        """Record at every ``LOSS_COMPLETED`` and write the file after every epoch and when the run ends.

        Args:
            engine: a MONAI trainer (``SupervisedTrainer`` or a subclass).
        """
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)
        if self.output_file is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)
            engine.add_event_handler(Events.COMPLETED, self.write)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        pred, label = out[Keys.PRED], out[Keys.LABEL]
        loss = pixel_loss(pred, label)
        omega = None
        if DALEKeys.MASK_F in out and DALEKeys.PRED_N in out:
            mask_f = out[DALEKeys.MASK_F][:, 0].float().to(loss.device)
            mask_n = out[DALEKeys.MASK_N][:, 0].float().to(loss.device)
            loss = mask_n * pixel_loss(out[DALEKeys.PRED_N], label) + mask_f * loss
            omega = out.get(DALEKeys.OMEGA)
        ids = _case_ids(engine.state.batch, self.id_key, loss.shape[0])
        for i, case in enumerate(ids):
            row = {"case": case, "epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration),
                   "loss": float(loss[i].mean()), "omega_mean": math.nan, "omega_below_1": math.nan}
            if omega is not None:
                w, fuzzy = omega[i, 0].float(), out[DALEKeys.MASK_F][i, 0] > 0
                if bool(fuzzy.any()):
                    row["omega_mean"] = float(w[fuzzy].mean())
                    row["omega_below_1"] = float((w[fuzzy] < 1).float().mean())
            self.records.append(row)

    def write(self, engine: Engine | None = None) -> Path | None:
        """Write :attr:`records` to ``output_file`` (atomically: a temporary file renamed over it)."""
        if self.output_file is None:
            return None
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output_file.with_name(f".{self.output_file.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CASE_STATS_FIELDS)
            writer.writeheader()
            writer.writerows(self.records)
        os.replace(tmp, self.output_file)
        return self.output_file

    def summary(self) -> dict[str, dict[str, float]]:
        """Per case: the means of its records (see :func:`summarise_case_stats`)."""
        return summarise_case_stats(self.records)


def read_case_stats(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The records of one or more CSV files written by :class:`CaseStatsHandler`.

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: for a file without the columns ``case`` and ``loss``, naming it.
    """
    records: list[dict[str, Any]] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"case statistics {p} does not exist")
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            if not {"case", "loss"} <= set(reader.fieldnames or ()):
                raise ValueError(f"{p}: not a per-case statistics file (needs the columns case and loss, has "
                                 f"{reader.fieldnames})")
            for row in reader:
                records.append({"case": row["case"], "loss": float(row["loss"]),
                                "omega_mean": float(row.get("omega_mean") or "nan"),
                                "omega_below_1": float(row.get("omega_below_1") or "nan")})
    return records


def summarise_case_stats(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per case, the mean over its records of ``loss``, ``omega_mean`` and ``omega_below_1`` (NaN records
    ignored; NaN when a case has none), and ``n`` its number of records.

    The mean over the whole run, not the last value: a noisy label's loss is high before the network memorises
    it and low afterwards, so the area under the loss curve separates it best (the argument of the "area under
    the margin" statistic, Pleiss et al., NeurIPS 2020).
    """
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for key in ("loss", "omega_mean", "omega_below_1"):
            v = float(r.get(key, math.nan))
            if not math.isnan(v):
                sums[r["case"]][key].append(v)
        sums[r["case"]]["n"].append(1.0)
    out = {}
    for case, d in sums.items():
        out[case] = {k: (sum(d[k]) / len(d[k]) if d.get(k) else math.nan) for k in ("loss", "omega_mean",
                                                                                    "omega_below_1")}
        out[case]["n"] = float(len(d["n"]))
    return out
