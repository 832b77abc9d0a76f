"""Smoke test of benchmarks/audit_ph2.py's scoring: case and pixel AUCs of a tiny audit against known clean labels
(the values are not asserted beyond their range and the obvious ranking; no real data needed)."""

from __future__ import annotations

import importlib.util
import json
from argparse import Namespace
from pathlib import Path

import pytest
from audit_fixtures import TINY, bundle_copy, make_dataset

from dale_monai.audit import LabelAudit

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_scores_and_report_of_a_tiny_audit(tmp_path):
    spec = importlib.util.spec_from_file_location("audit_ph2", REPO / "benchmarks" / "audit_ph2.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    clean = make_dataset(tmp_path / "clean", n=9)
    noisy = make_dataset(tmp_path / "noisy", n=9, corrupt={1: "shift", 5: "shift"})
    doc = json.loads(noisy.read_text())
    for e in doc["training"]:  # as data_prep noise writes it: the clean label beside the training label
        e["label_clean"] = str(tmp_path / "clean" / e["label"])
        if e["label"] not in ("labels/case01_mask.png", "labels/case05_mask.png"):
            e["label"] = e["label_clean"]
    noisy.write_text(json.dumps(doc))
    assert clean.is_file()
    bundle = bundle_copy(tmp_path)
    result = LabelAudit(bundle, configs=["plain_train.json"], overrides=TINY, folds=3, worst=2,
                        progress=False).run(noisy, tmp_path / "out")
    ev = bench.evaluate(result, noisy, bundle, ["plain_train.json"], overrides=TINY)
    assert ev["n_cases"] == 9 and ev["n_corrupted"] == 2 and 0 < ev["wrong_pixel_fraction"] < 0.2
    assert set(ev["case"]) >= {"cleanlab", "cleanlab_issues", "disagreement", "partition", "loss", "combined"}
    assert ev["case"]["combined"]["auc"] == 1.0 and ev["case"]["combined"]["precision_at_n"] == 1.0
    assert ev["pixel"]["cleanlab"]["auc"] > 0.8 and 0 <= ev["pixel"]["cleanlab"]["recall"] <= 1
    args = Namespace(k=15, fraction=0.3, seed=0, epochs=1, folds=3)
    bench.write_report(tmp_path / "r.md", {"standard": {"configs": [], "seconds": 1.0, "eval": ev}}, args,
                       "python benchmarks/audit_ph2.py", "abc1234")
    text = (tmp_path / "r.md").read_text()
    assert "| combined | 1.000 | 1.000 |" in text and "abc1234" in text
