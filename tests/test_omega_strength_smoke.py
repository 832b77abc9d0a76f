"""Smoke test of benchmarks/omega_strength.py on a tiny PH2-like folder (the ``toy`` profile): it converts the data,
trains, compares every ω option and writes complete results; never the values themselves. And its statistics."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fixtures_datasets import make_ph2_distributed

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def script():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("omega_strength", REPO / "benchmarks" / "omega_strength.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_omega_stats_known_values(script):
    omega = np.array([0.5, 0.9, 1.1, 1.2, 1.2, 0.9])
    wrong = np.array([True, True, False, False, True, False])
    s = script.omega_stats(omega, wrong)
    assert (s["n_wrong"], s["n_right"]) == (3, 3)
    assert s["mean_wrong"] == pytest.approx((0.5 + 0.9 + 1.2) / 3) and s["mean_right"] == pytest.approx(3.2 / 3)
    assert s["below1_wrong"] == pytest.approx(2 / 3) and s["below1_right"] == pytest.approx(1 / 3)
    # pairs (wrong, right) with ω_wrong < ω_right: 0.5 < all 3; 0.9 < 1.1, 1.2 and ties 0.9; 1.2 ties 1.2
    assert s["auroc"] == pytest.approx((3 + 2 + 0.5 + 0.5) / 9)
    assert s["weight_share_wrong"] == pytest.approx(2.6 / 5.8)
    assert math.isnan(script.omega_stats(np.array([1.0, 0.9]), np.array([False, False]))["auroc"])  # no wrong pixel
    assert script.omega_stats(np.array([0.1, 2.0]), np.array([True, False]))["auroc"] == 1.0


@pytest.mark.slow
def test_toy_run_writes_every_option(script, tmp_path):
    cases = {f"IMD{i:03d}": (40, 48) for i in range(12)}
    make_ph2_distributed(tmp_path / "data" / "ph2", cases)
    out = tmp_path / "out"
    argv = ["--profile", "toy", "--data-dir", str(tmp_path / "data"), "--work", str(tmp_path / "work"),
            "--snapshots", "1,2", "--eval-batches", "1", "--out", str(out)]
    assert script.main(argv) == 0
    results = json.loads((out / "omega_strength_toy.json").read_text())
    (level,) = results["levels"].values()
    assert set(level["snapshots"]) == {"1", "2"} and level["eval_batches"] == 1
    labels = [label for label, _ in script.OPTIONS]
    for options in level["snapshots"].values():
        assert list(options) == labels
        for label, s in options.items():
            assert s["n_wrong"] + s["n_right"] > 0 and s["seconds_per_iteration"] > 0, label
            for key in ("mean_wrong", "mean_right", "below1_wrong", "below1_right", "weight_share_wrong", "auroc"):
                assert math.isnan(s[key]) or s[key] >= 0, (label, key)
        # the released update stays within ±lr of 1; l2rw is non-negative with mean 1 under M^f (not per class)
        released = options["jvp, mean, lr 0.1 (released)"]
        assert 0.9 - 1e-6 <= released["mean_right"] <= 1.1 + 1e-6
    md = (out / "omega_strength_toy.md").read_text()
    assert results["environment"]["commit"] in md and "first_order head, l2rw" in md and "AUROC" in md


def test_missing_data_skips_with_a_message(script, tmp_path, capsys):
    out = tmp_path / "out"
    assert script.main(["--profile", "toy", "--data-dir", str(tmp_path / "none"), "--work", str(tmp_path / "w"),
                        "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "SKIPPED" in err and "PH2 not found" in err
    assert not out.exists()
