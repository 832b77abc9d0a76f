"""Smoke tests of the noisy-label paradigm arms of ``benchmarks/accuracy.py`` (issue 11) at toy size, and of the
clean meta set the meta re-weighting arms draw. They check that the arms run and write complete tables and that
the meta set holds only trusted, clean labels; never accuracy values."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy  # noqa: E402
import accuracy_core as ac  # noqa: E402
import paradigm_table  # noqa: E402
from test_accuracy_smoke import _fake_ph2  # noqa: E402


def _item(i: int, trusted: bool = True, clean: bool = False) -> dict:
    it = {"image": np.full((1, 4, 4), i, np.float32), "label": np.zeros((1, 4, 4), np.float32), "name": f"c{i}",
          "trusted": trusted}
    if clean:
        it["label_clean"] = np.ones((1, 4, 4), np.float32)
    return it


def test_meta_split_draws_trusted_cases_with_their_clean_labels():
    train = [_item(i, trusted=i % 2 == 0) for i in range(10)]
    meta = ac.meta_split(train, 3, seed=0)
    assert len(meta) == 3 and all(int(m["name"][1:]) % 2 == 0 for m in meta)  # model-generated labels excluded
    assert [m["name"] for m in meta] == [m["name"] for m in ac.meta_split(train, 3, seed=0)]  # seeded
    assert {m["name"] for m in ac.meta_split(train, 5, seed=1)} == {f"c{i}" for i in range(0, 10, 2)}
    noisy = [_item(i, clean=True) for i in range(4)]
    assert all(m["label"].min() == 1 for m in ac.meta_split(noisy, 2))  # the clean reference, not the noisy label
    with pytest.raises(ValueError, match="need 6 trusted training cases; this training set has 5"):
        ac.meta_split(train, 6)


def test_paradigm_arms_run_and_are_tabled(tmp_path, monkeypatch):
    monkeypatch.setenv("DALE_DATA_DIR", str(_fake_ph2(tmp_path / "data")))
    out, work = tmp_path / "out", tmp_path / "work"
    arms = ["gce", "sce", "coteaching", "trinet", "mwnet", "l2rw"]
    argv = ["injected_noise", "--profile", "toy", "--arms", ",".join(arms), "--seeds", "1", "--out", str(out),
            "--work", str(work)]
    assert accuracy.main(argv) == 0
    with open(out / "injected_noise_toy" / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    want = {"standard", *arms}
    assert {r["arm"] for r in runs} == want | {a + "@best" for a in want}
    assert all(0 <= float(r["dice"]) <= 1 and float(r["train_cpu_s"]) > 0 for r in runs)
    md = paradigm_table.table(out / "injected_noise_toy")
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(lines) == 2 * (1 + len(want))  # a header and one row per arm, final and best-validation weights
    n_ds = len({r["dataset"] for r in runs})
    assert all(ln.count("|") == n_ds + 3 for ln in lines)  # arm, the datasets, CPU
    assert md.count("**") == 2 * 2 * n_ds  # the best arm of each dataset, final and best-validation weights
    assert "(1.0×)" in md and f"uncorrected for the {6 * n_ds} comparisons" in md
    with pytest.raises(FileNotFoundError):
        paradigm_table.table(tmp_path)
    versions = {p: ac.code_version(p) for p in ("standard", "mwnet", "l2rw", "coteaching")}
    assert len(set(versions.values())) == 4  # each arm's cached runs depend on its own code


def test_epochs_scale_multiplies_every_datasets_epochs_and_enters_the_key():
    base = ac.PROFILES["long"]
    scaled = accuracy._profile_with(base, ["epochs_scale=2"])
    assert scaled.epochs_for("ph2_dilate_erode_k15") == 2 * base.epochs_for("ph2") == 400
    assert scaled.epochs_for("covid_both") == 90 and "× 2" in scaled.describe()
    assert ac.profile_fields(base, "ph2") != ac.profile_fields(scaled, "ph2")
    assert accuracy._profile_with(base, ["epochs_scale=0.001"]).epochs_for("ph2") == 1
