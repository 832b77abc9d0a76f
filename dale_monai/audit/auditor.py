"""The label audit: read a datalist's training cases, compute the signals, rank the cases and write the outputs."""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..handlers.case_stats import read_case_stats, summarise_case_stats
from ..predict.files import atomic_path, safe_name
from ..predict.overlay import write_overlay
from .cross_validation import AuditConfigError, BundleTraining, out_of_fold_probabilities
from .outputs import (AUDIT_CSV, CONTACT_SHEET, REVIEW_DATALIST, MapWriter, suspect_overlay, write_contact_sheet,
                      write_review_datalist, write_table)
from .signals import (CASE_SIGNALS, DEFAULT_COMBINED, PIXEL_SIGNALS, agreeing_signals, cleanlab_signals,
                      combine_pixel_maps, disagreement_signal, partition_signal, rank_average, stats_signals,
                      weak_folds)

__all__ = ["AuditInputError", "AuditResult", "LabelAudit", "training_cases"]


class AuditInputError(ValueError):
    """A training case (or the datalist) cannot be audited; the message names the file."""


def _stem(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem


def training_cases(datalist: str | os.PathLike) -> tuple[list[dict], list[dict] | None]:
    """The training cases (``case``, ``image``, ``label``, absolute paths) of a MONAI datalist, and its validation
    cases (None without a validation section).

    Case names are the image file names without extension, with ``#<index>`` added to a repeated name.

    Raises:
        FileNotFoundError: when the datalist does not exist.
        AuditInputError: when it has no training cases, an entry lacks ``image`` or ``label``, or lists a file that
            does not exist (naming the datalist and the files).
    """
    from ..bundle import load_datalist

    path = Path(datalist).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} does not exist")
    try:
        items = load_datalist(str(path.parent), "training", prepare_command="", datalist=path.name)
    except ValueError as e:
        raise AuditInputError(f"{e} (the audit ranks the training cases)") from None
    cases, seen = [], set()
    for i, item in enumerate(items):
        if "image" not in item or "label" not in item:
            raise AuditInputError(f"{path}: training entry {i} needs an image and a label, has {sorted(item)}")
        name = _stem(item["image"])
        if name in seen:
            name = f"{name}#{i}"
        seen.add(name)
        cases.append({**item, "case": name})
    try:
        val = load_datalist(str(path.parent), "validation", prepare_command="", datalist=path.name)
    except ValueError:
        val = None
    if val is not None:
        val = [{"image": v["image"], "label": v["label"], "case": _stem(v["image"])} for v in val if "label" in v]
    return cases, val or None


@dataclass
class AuditResult:
    """What an audit found, worst case first.

    Attributes:
        rows: the rows of ``audit.csv`` (dicts), worst first.
        signals: signal name -> per-case suspicion, in the datalist's order of ``cases``.
        combined: per-case combined suspicion (rank average), datalist order.
        pixel_maps: case -> signal name -> per-pixel suspicion on the network grid (``combined`` included).
        issues: case -> cleanlab's boolean label-issue mask on the network grid.
        labels: case -> label class indices on the network grid.
        cases: the training cases, datalist order.
        fold_of: case -> the fold that scored it (absent with a checkpoint).
        outputs: name -> written path.
    """

    rows: list[dict]
    signals: dict[str, np.ndarray]
    combined: np.ndarray
    pixel_maps: dict[str, dict[str, np.ndarray]]
    issues: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    cases: list[dict]
    fold_of: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def _reason(exc: BaseException) -> str:
    from ..predict.predictor import _reason as reason

    return reason(exc)


class LabelAudit:
    """Rank the training labels of a datalist by how likely they are wrong, per case and per pixel.

    Example::

        from dale_monai.audit import LabelAudit

        result = LabelAudit("bundles/ph2_unet", folds=5, overrides={"num_epochs": 20}).run(
            "data/ph2/datalist.json", "audit_ph2/")
        print(result.rows[:10])

    Args:
        bundle: the bundle folder; its ``configs/train.json`` (plus ``configs``) trains the folds.
        configs: further config files merged over ``train.json`` (e.g. ``["plain_train.json"]`` for standard
            training instead of DALE).
        overrides: config items to replace for training and prediction (``{"num_epochs": 20, "spatial_size":
            [96, 96]}``).
        folds: cross-validation folds (>= 2); 0 scores every case with the trained weights ``checkpoint``
            instead (fast, but in-sample: a model that has memorised a wrong label agrees with it).
        checkpoint: the weights for ``folds=0`` (default: the bundle's ``models/model.pt``).
        seed: seed of the folds and of each fold's training.
        device: ``cpu``, ``cuda``...; None keeps the bundle's choice.
        signals: the case-level signals combined into the score (default: those of
            :data:`~dale_monai.audit.signals.DEFAULT_COMBINED` that are available; all of
            :data:`~dale_monai.audit.signals.CASE_SIGNALS` are reported).
        pixel_signals: the per-pixel maps averaged into the written suspicion map (default ``("cleanlab",)``).
        case_stats: CSV files of :class:`~dale_monai.handlers.CaseStatsHandler` from other training runs on
            these labels, read as the ``loss`` / ``omega`` signals together with the folds' own records.
        worst: number of worst cases given overlays, the contact sheet and the review datalist.
        agree_fraction: a signal "agrees" that a case is suspect when the case is among its worst
            ``agree_fraction`` of the cases.
        progress: tqdm progress bars.

    Raises:
        AuditConfigError: for an invalid setting.
    """

    def __init__(self, bundle: str | os.PathLike, configs: Sequence[str] = (),
                 overrides: Mapping[str, Any] | None = None, folds: int = 5, checkpoint: str | None = None,
                 seed: int = 0, device: str | None = None, signals: Sequence[str] | None = None,
                 pixel_signals: Sequence[str] = ("cleanlab",), case_stats: Sequence[str] = (), worst: int = 20,
                 agree_fraction: float = 0.2, progress: bool = True) -> None:
        if folds == 1 or folds < 0:
            raise AuditConfigError(f"folds must be 0 (use trained weights) or at least 2, got {folds}")
        if checkpoint is not None and folds:
            raise AuditConfigError("a checkpoint scores the cases with trained weights: give it with folds=0 "
                                   "(--folds 0), or drop it to cross-validate")
        unknown = [s for s in (signals or ()) if s not in CASE_SIGNALS]
        if unknown:
            raise AuditConfigError(f"unknown signal(s) {unknown}; choose among {list(CASE_SIGNALS)}")
        bad_maps = [s for s in pixel_signals if s not in PIXEL_SIGNALS]
        if bad_maps or not pixel_signals:
            raise AuditConfigError(f"pixel signals {list(pixel_signals)}: choose among {list(PIXEL_SIGNALS)}")
        if not 0 < agree_fraction <= 1:
            raise AuditConfigError(f"agree_fraction must be in (0, 1], got {agree_fraction}")
        self.training = BundleTraining(bundle, configs, overrides, device)
        self.folds, self.checkpoint, self.seed = int(folds), checkpoint, int(seed)
        self.signals = list(signals) if signals else None
        self.pixel_signals = list(pixel_signals)
        self.case_stats = [str(p) for p in case_stats]
        self.worst, self.agree_fraction, self.progress = int(worst), float(agree_fraction), progress

    # ------------------------------------------------------------------------------------------ inputs
    def _prepare(self, parser, cases: list[dict]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Each case through the bundle's validation preprocessing: its label on the grid and its M^f.

        Raises:
            AuditInputError: for a case the pipeline refuses (e.g. a label of another size than its image),
                naming its files and the reason.
        """
        from tqdm.auto import tqdm

        preprocessing = parser.get_parsed_content("validate#preprocessing")
        partition = self._partition(parser)
        labels, mask_f = [], []
        for case in tqdm(cases, desc="audit inputs", unit="case", disable=not self.progress):
            try:
                d = preprocessing({"image": case["image"], "label": case["label"]})
            except Exception as e:
                raise AuditInputError(f"training case {case['case']} (image {case['image']}, label "
                                      f"{case['label']}): {_reason(e)}") from e
            lab = np.asarray(d["label"])
            lab = lab.argmax(0) if lab.shape[0] > 1 else lab[0]
            labels.append(np.rint(lab).astype(np.int64))
            mask_f.append(np.asarray(partition(np.asarray(d["image"]), np.asarray(d["label"]))[1][0], np.float32))
        return labels, mask_f

    @staticmethod
    def _partition(parser):
        """DALE's partition with the bundle's ``dale`` options (the paper's defaults for a bundle without them)."""
        from ..transforms import FuzzyPartition

        opts = dict(parser.get_parsed_content("dale")) if "dale" in parser else {}
        if "partition_mode" in opts:
            opts["mode"] = opts.pop("partition_mode")
        accepted = set(inspect.signature(FuzzyPartition).parameters)
        return FuzzyPartition(**{k: v for k, v in opts.items() if k in accepted})

    # ------------------------------------------------------------------------------------------ probabilities
    def _trained_probabilities(self, parser, cases: list[dict]) -> dict[str, np.ndarray]:
        from ..predict.checkpoint import load_weights

        ckpt = Path(self.checkpoint) if self.checkpoint else self.training.bundle_dir / "models" / "model.pt"
        device = parser.get_parsed_content("device")
        load_weights(parser.get_parsed_content("network"), ckpt, bundle=str(self.training.bundle_dir),
                     map_location=device)
        probs = self.training.predict(parser, [{"image": c["image"], "label": c["label"]} for c in cases])
        return dict(zip([c["case"] for c in cases], probs))

    # ------------------------------------------------------------------------------------------ run
    def run(self, datalist: str | os.PathLike, output_dir: str | os.PathLike, overwrite: bool = False
            ) -> AuditResult:
        """Audit the training cases of ``datalist`` and write the outputs into ``output_dir``.

        Outputs: ``audit.csv`` (worst first), ``audit.json`` (settings and the same rows), ``maps/<case>_suspicion
        .png|.nii.gz`` (every case, input geometry), ``overlays/<case>_overlay.png`` and ``contact_sheet.png``
        (the worst ``worst``), ``review_datalist.json``; with cross-validation ``folds/fold<k>/`` (resumable).

        Raises:
            FileNotFoundError: for a missing datalist, bundle config or file it lists.
            FileExistsError: when ``output_dir`` holds an audit and ``overwrite`` is false (checked first).
            AuditInputError: for a datalist without training cases or a case the bundle cannot read.
            AuditConfigError: when ``output_dir`` holds folds of another configuration.
            CheckpointError: with ``folds=0``, for missing or mismatched weights, naming the file.
        """
        from monai.transforms import LoadImage
        from tqdm.auto import tqdm

        load_image = LoadImage(image_only=True, ensure_channel_first=True)
        out = Path(output_dir).expanduser().resolve()
        if (out / AUDIT_CSV).exists() and not overwrite:
            raise FileExistsError(f"{out / AUDIT_CSV} exists: this folder holds an audit; pass --overwrite to "
                                  "replace it (finished folds of the same configuration are reused)")
        cases, val = training_cases(datalist)
        if self.folds > len(cases):
            raise AuditInputError(f"{datalist}: {len(cases)} training case(s) for {self.folds} folds")
        parser = self.training.parser([_item(c) for c in cases], [_item(c) for c in (val or cases[:1])],
                                      out / "scoring", self.seed)
        if self.folds == 0:  # weights first: a missing file must not wait for the inputs to be read
            probs = self._trained_probabilities(parser, cases)
        labels, mask_f = self._prepare(parser, cases)
        out.mkdir(parents=True, exist_ok=True)
        fold_of: dict[str, int] = {}
        stats_files = [Path(p) for p in self.case_stats]
        if self.folds:
            oof = out_of_fold_probabilities(self.training, cases, out, folds=self.folds, seed=self.seed,
                                            val_items=val, overwrite=overwrite, progress=self.progress)
            probs, fold_of = dict(oof), oof.fold_of
            stats_files += oof.stats_files
        names = [c["case"] for c in cases]
        prob_list = [probs[n].astype(np.float32) for n in names]
        for name, lab, p in zip(names, labels, prob_list):
            if lab.shape != p.shape[1:]:
                raise AuditInputError(f"case {name}: label grid {lab.shape} differs from the prediction's "
                                      f"{p.shape[1:]} (a bundle whose validation pipeline crops the label?)")

        signals: dict[str, np.ndarray] = {}
        signals["cleanlab"], pixel_cl, issues = cleanlab_signals(labels, prob_list)
        signals["cleanlab_issues"] = np.asarray([float(m.mean()) for m in issues])
        signals["disagreement"] = disagreement_signal(labels, prob_list)
        signals["partition"] = partition_signal(mask_f)
        weak = weak_folds(signals["disagreement"], [fold_of[n] for n in names]) if fold_of else {}
        for k, value in weak.items():
            warnings.warn(f"fold {k}: its model disagrees with its cases' labels far more than the other folds' "
                          f"(median 1 - Dice {value:.2f}); a failed training? Its cases' scores are unreliable: "
                          f"see {out / 'folds' / f'fold{k}'}, or retrain with more epochs or another seed",
                          stacklevel=2)
        if stats_files:
            # the folds name cases by ``case``; another run's handler by the image path (its meta data)
            by_path = {str(Path(c["image"]).resolve()): c["case"] for c in cases}
            records = read_case_stats(stats_files)
            for r in records:
                r["case"] = by_path.get(str(Path(r["case"]).resolve()), r["case"]) if os.sep in r["case"] else r["case"]
            signals.update(stats_signals(names, summarise_case_stats(records)))
        use = [s for s in (self.signals or DEFAULT_COMBINED) if s in signals]
        missing = [s for s in (self.signals or []) if s not in signals]
        if missing:
            raise AuditConfigError(f"signal(s) {missing} unavailable: 'loss' needs cross-validation folds or "
                                   "case statistics (--case-stats), 'omega' a DALE training run")
        combined = rank_average(signals, use)
        agree = agreeing_signals({k: signals[k] for k in use}, self.agree_fraction)
        pixel_maps = {}
        for i, n in enumerate(names):
            maps = {"cleanlab": pixel_cl[i], "partition": mask_f[i]}
            maps["combined"] = combine_pixel_maps(maps, self.pixel_signals)
            pixel_maps[n] = maps
        order = sorted(range(len(names)), key=lambda i: (-combined[i], names[i]))

        rows = []
        for rank, i in enumerate(order, 1):
            row = {"rank": rank, "case": names[i], "score": 1.0 - float(combined[i]),
                   "suspected_pixel_fraction": float(issues[i].mean()),
                   "agreeing_signals": ";".join(agree[i]), "fold": fold_of.get(names[i], "")}
            for s in CASE_SIGNALS:
                row[f"{s}_suspicion"] = float(signals[s][i]) if s in signals else math.nan
            row.update({"image": str(Path(cases[i]["image"]).resolve()),
                        "label": str(Path(cases[i]["label"]).resolve())})
            rows.append(row)
        result = AuditResult(rows, signals, combined, pixel_maps, dict(zip(names, issues)),
                             dict(zip(names, labels)), cases, fold_of)

        # outputs: maps of every case, then the worst cases' pictures, the review list, and the table last
        preprocessing = parser.get_parsed_content("validate#preprocessing")
        writer = MapWriter(preprocessing)
        maps_dir, ov_dir = out / "maps", out / "overlays"
        maps_dir.mkdir(exist_ok=True)
        ov_dir.mkdir(exist_ok=True)
        worst = set(order[: self.worst])
        pictures, titles, review = [], [], []
        for rank, i in enumerate(tqdm(order, desc="audit maps", unit="case", disable=not self.progress), 1):
            case = cases[i]
            d = preprocessing({"image": case["image"], "label": case["label"]})
            susp = writer.to_input(d, pixel_maps[names[i]]["combined"])
            path = writer.write(susp, maps_dir, names[i], overwrite=overwrite)
            rows[rank - 1]["suspicion_map"] = str(path)
            if i in worst:
                flagged = writer.to_input(d, issues[i].astype(np.float32))
                lab = writer.to_input(d, (labels[i] > 0).astype(np.float32))
                image = load_image(case["image"])
                pic = suspect_overlay(np.asarray(image), np.asarray(lab[0]) > 0.5, np.asarray(flagged[0]) > 0.5)
                write_overlay(ov_dir / f"{safe_name(names[i])}_overlay.png", pic, overwrite=overwrite)
                pictures.append(pic)
                titles.append(f"{rank}. {names[i]}  score {1 - combined[i]:.3f}")
                review.append({"case": names[i], "rank": rank, "score": 1.0 - float(combined[i]),
                               "image": rows[rank - 1]["image"], "label": rows[rank - 1]["label"],
                               "suspicion_map": str(path)})
        result.outputs["contact_sheet"] = str(write_contact_sheet(out / CONTACT_SHEET, pictures, titles,
                                                                  overwrite=overwrite))
        result.outputs["review_datalist"] = str(write_review_datalist(out / REVIEW_DATALIST, review,
                                                                      str(Path(datalist).resolve()),
                                                                      overwrite=overwrite))
        settings = {"bundle": str(self.training.bundle_dir), "config_files": self.training.files,
                    "overrides": self.training.overrides, "folds": self.folds, "seed": self.seed,
                    "checkpoint": self.checkpoint, "signals_combined": use, "pixel_signals": self.pixel_signals,
                    "case_stats": [str(p) for p in stats_files], "agree_fraction": self.agree_fraction,
                    "datalist": str(Path(datalist).resolve()), "weak_folds": weak}
        with atomic_path(out / "audit.json", overwrite=overwrite) as tmp:
            Path(tmp).write_text(json.dumps({"settings": settings, "cases": rows}, indent=1, default=float))
        result.outputs["audit_csv"] = str(write_table(out / AUDIT_CSV, rows, overwrite=overwrite))
        return result


def _item(case: Mapping) -> dict:
    return {"image": case["image"], "label": case["label"], "case": case["case"]}
