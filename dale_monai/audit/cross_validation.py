"""Out-of-fold predicted probabilities of the training cases, each fold trained by the bundle's own training config.

Fold ``k`` trains the bundle's ``train#trainer`` (network, loss, optimizer, transforms, paradigm: whatever its
``train.json`` and the extra config files say) on the training cases outside fold ``k`` and then predicts the cases
of fold ``k`` with the bundle's deterministic validation preprocessing and inferer. A finished fold is stored in
``<output>/folds/fold<k>/`` (``probs.npz``, ``fold.json``, the per-case training statistics ``case_stats.csv``),
so an interrupted audit resumes with the next fold.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..handlers.case_stats import CaseStatsHandler
from .folds import kfold_indices

__all__ = ["BundleTraining", "FoldResult", "AuditConfigError", "out_of_fold_probabilities", "probabilities"]


class AuditConfigError(ValueError):
    """The audit's output folder holds results of another configuration, or a setting is invalid."""


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(B, K, *spatial)``, K >= 2, of logits ``(B, C, *spatial)``: sigmoid as ``[1 - p, p]``
    for one channel (the bundles' binary networks), softmax otherwise."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


class BundleTraining:
    """A bundle's training config, ready to train on a list of cases and to predict others.

    Args:
        bundle: the bundle folder (``configs/train.json``).
        configs: further config files of the bundle, merged over ``train.json`` in order, as on the command line
            of ``python -m monai.bundle run --config_file "[train.json, plain_train.json]"`` (names relative to
            the bundle's ``configs/`` folder, or paths).
        overrides: config items to replace, id -> value (``{"num_epochs": 5, "network_def#channels": [8, 16]}``).
        device: ``cpu``, ``cuda``...; None keeps the bundle's choice.

    Raises:
        FileNotFoundError: when a config file is missing, naming it.
        AuditConfigError: for an override of an id the config does not have.
    """

    def __init__(self, bundle: str | os.PathLike, configs: Sequence[str] = (),
                 overrides: Mapping[str, Any] | None = None, device: str | None = None) -> None:
        self.bundle_dir = Path(bundle).expanduser().resolve()
        files = [self.bundle_dir / "configs" / "train.json"]
        for name in configs:
            p = Path(name)
            files.append(p if p.is_absolute() or p.exists() else self.bundle_dir / "configs" / name)
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"bundle {self.bundle_dir}: config file {f} does not exist")
        self.files = [str(f) for f in files]
        self.overrides = dict(overrides or {})
        self.device = device

    def fingerprint(self) -> str:
        """SHA-1 of the config files' contents and the overrides: a fold cached under another one is stale."""
        h = hashlib.sha1()
        for f in self.files:
            h.update(Path(f).read_bytes())
        h.update(json.dumps(self.overrides, sort_keys=True, default=str).encode())
        h.update(str(self.device).encode())
        return h.hexdigest()[:16]

    def parser(self, train_items: list[dict], val_items: list[dict], work_dir: Path, seed: int):
        """A fresh ``ConfigParser`` of the training config for one fold, writing only under ``work_dir``."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(self.files)
        parser["bundle_root"] = str(self.bundle_dir)
        managed = {"train_datalist": train_items, "val_datalist": val_items, "seed": int(seed),
                   "ckpt_dir": str(work_dir / "models"), "output_dir": str(work_dir / "eval"),
                   "log_dir": str(work_dir / "logs"), "resume": False}
        for key, value in managed.items():
            if key in parser:
                parser[key] = value
        for key, value in self.overrides.items():
            if key in managed:
                raise AuditConfigError(f"override {key!r}: the audit sets it itself for every fold")
            owner = key.rsplit("#", 1)[0]
            if owner not in parser:
                raise AuditConfigError(f"override {key!r}: {self.files[0]} has no config item {owner!r}")
            parser[key] = value
        if self.device is not None:
            parser["device"] = f"$torch.device('{torch.device(self.device)}')"
        for key in ("train#trainer", "network", "validate#preprocessing", "device"):
            if key not in parser:
                raise AuditConfigError(f"bundle {self.bundle_dir}: {self.files[0]} has no '{key}'")
        return parser

    def train(self, parser, stats_file: Path | None = None) -> CaseStatsHandler:
        """Run the parsed config's ``initialize`` (seeds) and its trainer, with a :class:`CaseStatsHandler`."""
        if "initialize" in parser:
            parser.get_parsed_content("initialize")
        trainer = parser.get_parsed_content("train#trainer")
        stats = CaseStatsHandler(output_file=stats_file)
        stats.attach(trainer)
        trainer.run()
        return stats

    @staticmethod
    @torch.no_grad()
    def predict(parser, items: Sequence[dict]) -> list[np.ndarray]:
        """Class probabilities ``(K, *grid)`` (float16) of each item on the grid of the bundle's validation
        preprocessing, with its validation inferer and the network in eval mode."""
        preprocessing = parser.get_parsed_content("validate#preprocessing")
        inferer = parser.get_parsed_content("validate#inferer") if "validate#inferer" in parser else None
        network = parser.get_parsed_content("network")
        device = torch.device(parser.get_parsed_content("device"))
        network.eval()
        out = []
        for item in items:
            x = preprocessing(dict(item))["image"]
            x = torch.as_tensor(x)[None].to(device)
            logits = inferer(x, network) if inferer is not None else network(x)
            out.append(probabilities(torch.as_tensor(logits))[0].cpu().numpy().astype(np.float16))
        return out


class FoldResult(dict):
    """Case name -> out-of-fold probabilities ``(K, *grid)``, with ``fold_of`` (case -> fold) and ``stats_files``."""

    fold_of: dict[str, int]
    stats_files: list[Path]


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def out_of_fold_probabilities(training: BundleTraining, cases: Sequence[dict], output_dir: str | os.PathLike,
                              folds: int = 5, seed: int = 0, val_items: Sequence[dict] | None = None,
                              overwrite: bool = False, progress: bool = True) -> FoldResult:
    """Train ``folds`` models, each without one part of ``cases``, and predict that part: every case gets
    probabilities from the one model that never saw it.

    Args:
        training: the bundle's training config.
        cases: the training cases, dicts with ``case`` (a unique name), ``image`` and ``label`` paths.
        output_dir: the audit's folder; folds go to ``folds/fold<k>/``.
        folds: number of folds (>= 2).
        seed: seed of the split and (plus the fold number) of each fold's training.
        val_items: the validation cases of the bundle's validation handler (it only reports; the audit uses the
            final weights of each fold); None uses the fold's held-out cases, whose labels then enter no weight.
        overwrite: retrain folds whose stored record does not match this configuration (else an error).
        progress: a tqdm bar over the folds.

    Returns:
        a :class:`FoldResult`.

    Raises:
        AuditConfigError: when a stored fold belongs to another configuration (cases, split, config, overrides)
            and ``overwrite`` is false.
    """
    from tqdm.auto import tqdm

    names = [c["case"] for c in cases]
    parts = kfold_indices(len(cases), folds, seed)
    root = Path(output_dir) / "folds"
    root.mkdir(parents=True, exist_ok=True)
    result = FoldResult()
    result.fold_of, result.stats_files = {}, []
    bar = tqdm(range(folds), desc="audit folds", unit="fold", disable=not progress)
    for k in bar:
        held_idx = set(parts[k].tolist())
        held = [cases[i] for i in parts[k]]
        train = [cases[i] for i in range(len(cases)) if i not in held_idx]
        record = {"fold": k, "folds": folds, "seed": seed, "config": training.fingerprint(),
                  "config_files": training.files, "overrides": training.overrides,
                  "held_out": [c["case"] for c in held], "trained_on": [c["case"] for c in train],
                  "labels": {c["case"]: c["label"] for c in cases}}
        fold_dir = root / f"fold{k}"
        rec_file, probs_file, stats_file = fold_dir / "fold.json", fold_dir / "probs.npz", fold_dir / "case_stats.csv"
        done = rec_file.is_file() and probs_file.is_file()
        if done:
            stored = json.loads(rec_file.read_text())
            if json.loads(json.dumps(record, default=str)) != stored:
                if not overwrite:
                    raise AuditConfigError(
                        f"{rec_file}: this fold was trained with another configuration (cases, labels, folds, seed, "
                        "bundle config or overrides); pass --overwrite to retrain it, or choose another --output")
                done = False
        if not done:
            bar.set_postfix_str(f"training fold {k}")
            fold_dir.mkdir(parents=True, exist_ok=True)
            rec_file.unlink(missing_ok=True)  # a fold is finished only when its record is written, last
            parser = training.parser([_train_item(c) for c in train],
                                     [_train_item(c) for c in (val_items if val_items else held)], fold_dir, seed + k)
            training.train(parser, stats_file)
            probs = training.predict(parser, [_train_item(c) for c in held])
            _write_npz(probs_file, {f"p{i}": p for i, p in enumerate(probs)})
            tmp = rec_file.with_name(".fold.json.tmp")
            tmp.write_text(json.dumps(record, indent=1, default=str))
            os.replace(tmp, rec_file)
        with np.load(probs_file) as z:
            for i, case in enumerate(held):
                result[case["case"]] = z[f"p{i}"]
                result.fold_of[case["case"]] = k
        if stats_file.is_file():
            result.stats_files.append(stats_file)
    missing = [n for n in names if n not in result]
    if missing:  # cannot happen with a partition; guards the out-of-fold contract
        raise RuntimeError(f"cases without out-of-fold probabilities: {missing[:5]}")
    return result


def _train_item(case: Mapping) -> dict:
    """The keys a bundle's training pipeline reads (extra keys such as ``label_clean`` would be collated)."""
    return {"image": case["image"], "label": case["label"], "case": case["case"]}
