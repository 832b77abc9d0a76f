"""Smoke tests of CLCS's benchmark commands at toy size: the ``clcs`` arm of ``benchmarks/accuracy.py`` and the
multi-class ``benchmarks/clcs_multiclass.py``. They check that the commands run and write complete tables, never
accuracy values."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures_datasets import make_covid_tree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy  # noqa: E402
import accuracy_core as ac  # noqa: E402
import clcs_multiclass  # noqa: E402
import provenance  # noqa: E402
from test_accuracy_smoke import _fake_ph2  # noqa: E402


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_clcs_arm_of_the_accuracy_benchmark(tmp_path, monkeypatch):
    monkeypatch.setenv("DALE_DATA_DIR", str(_fake_ph2(tmp_path / "data")))
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["injected_noise", "--profile", "toy", "--arms", "clcs", "--seeds", "1", "--out", str(out),
            "--work", str(work)]
    assert accuracy.main(argv) == 0
    runs = _read(out / "injected_noise_toy" / "runs.csv")
    assert {r["arm"] for r in runs} == {"standard", "clcs", "standard@best", "clcs@best"}
    assert all(0 <= float(r["dice"]) <= 1 for r in runs)
    assert ac.code_version("clcs") not in {ac.code_version(p) for p in ("standard", "coteaching", "dale")}

    # two epochs, so that the selection acts after the one-epoch warm-up, on the noisy copy with clean references
    profile = dataclasses.replace(ac.PROFILES["toy"], epochs={**ac.PROFILES["toy"].epochs, "ph2": 2})
    datalist = work / "ph2_dilate_erode_k3" / "datalist.json"
    splits = {s: ac.load_split(datalist, s, profile.size) for s in ("training", "validation", "test")}
    cfg = ac.RunConfig(dataset="ph2_dilate_erode_k3", paradigm="clcs", seed=0, profile="toy",
                       profile_fields=ac.profile_fields(profile, "ph2"), omega=None, wasserstein=False)
    record, _, weights = ac.train_and_evaluate(cfg, profile, splits["training"], splits["validation"],
                                               splits["test"])
    stats = record["dale_stats"]
    assert {"clcs_selected", "clcs_selected_after_warmup", "clcs_rejected_noisy", "clcs_rejected_clean"} <= set(stats)
    assert all(0 <= v <= 1 for v in stats.values())
    assert 0 <= record["metrics"]["dice"] <= 1 and set(weights) == {"final", "best"}


def test_clcs_multiclass_toy_writes_tables_and_reuses_runs(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    make_covid_tree(data / "covid_semiseg", n_doctor=1, n_pseudo=1, n_test=1, n_mc=6)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--profile", "toy", "--seeds", "2", "--arms", "standard,clcs", "--data-dir", str(data), "--work",
            str(work), "--out", str(out)]
    assert clcs_multiclass.main(argv) == 0
    res = out / "clcs_multiclass_toy"
    runs = _read(res / "runs.csv")
    assert [(r["arm"], r["seed"]) for r in runs] == [("standard", "0"), ("clcs", "0"), ("standard", "1"),
                                                    ("clcs", "1")]
    assert all(0 <= float(r["dice"]) <= 1 and r["dice_1"] != "" and r["dice_2"] != "" for r in runs)
    summary = _read(res / "summary.csv")
    assert [s["arm"] for s in summary] == ["standard", "clcs"]
    assert {"minority_dice_mean", "minority_dice_diff_vs_standard", "dice_p_vs_standard"} <= set(summary[0])
    readme = (res / "README.md").read_text()
    assert "Minority class:" in readme and "| clcs | 2 |" in readme and "relabelled" in readme
    # every run records the exact commands it ran; the CLCS run used the clcs overlay, the others not
    run_dirs = sorted((work / "clcs_multiclass_runs" / "toy").glob("*/*_seed*"))
    assert len(run_dirs) == 4
    commands = {d.name: json.loads((d / "run.json").read_text())["commands"] for d in run_dirs}
    assert "clcs_train.json" in commands["clcs_seed0"][0] and "--seed 1" in commands["clcs_seed1"][0]
    standard = commands["standard_seed0"][0]
    assert "clcs_train.json" not in standard and "clcs#" not in standard and "plain_train.json" in standard
    # a second call reuses the finished runs
    stamps = {d.name: (d / "run.json").stat().st_mtime_ns for d in run_dirs}
    assert clcs_multiclass.main(argv) == 0
    assert {d.name: (d / "run.json").stat().st_mtime_ns for d in run_dirs} == stamps
    assert _read(res / "runs.csv") == runs
    code = provenance.source_hash(clcs_multiclass.RUN_CODE)
    assert {json.loads((d / "run.json").read_text())["code"] for d in run_dirs} == {code}
    assert f"`{code}`" in (res / "README.md").read_text()
    # changed training code reruns a run's commands, even unchanged ones (recorded here, not run: training is
    # what the first call tested)
    ran = []
    monkeypatch.setattr(clcs_multiclass, "_run", lambda cmd, log=None: ran.append(cmd))
    monkeypatch.setattr(provenance, "source_hash", lambda paths, repo=None: "0" * 12)
    runs_dir = run_dirs[0].parent  # <work>/clcs_multiclass_runs/<profile>/<dataset>
    clcs_multiclass.run_one("clcs", 1, runs_dir, work / runs_dir.name, clcs_multiclass.PROFILES["toy"], True)
    assert len(ran) == 2 and "training" in ran[0] and "evaluating" in ran[1]
    assert json.loads((runs_dir / "clcs_seed1" / "run.json").read_text())["code"] == "0" * 12


def test_clcs_multiclass_skips_without_data_and_refuses_unknown_arms(tmp_path, capsys):
    argv = ["--profile", "toy", "--data-dir", str(tmp_path / "nothing"), "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "o")]
    assert clcs_multiclass.main(argv) == 0
    assert "SKIPPED" in capsys.readouterr().err and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        clcs_multiclass.main([*argv, "--arms", "clcs,bogus"])
    assert "bogus" in capsys.readouterr().err


def test_minority_class_is_the_rarest_foreground_class():
    report = {"overall": {"per_class": {"0": {"clean_pixels": 900}, "1": {"clean_pixels": 80},
                                        "2": {"clean_pixels": 20}}}}
    assert clcs_multiclass._minority(report) == 2
    report["overall"]["per_class"]["2"]["clean_pixels"] = 100
    assert clcs_multiclass._minority(report) == 1
    rows = [{"arm": a, "seed": s, "dice": d, "dice_1": d, "dice_2": m, "hd95": 1.0}
            for a, s, d, m in (("standard", 0, 0.5, 0.2), ("standard", 1, 0.6, 0.3), ("clcs", 0, 0.55, 0.3),
                               ("clcs", 1, 0.65, 0.35))]
    summary = {e["arm"]: e for e in clcs_multiclass.summarize(rows, 2)}
    assert summary["clcs"]["minority_dice_mean"] == pytest.approx(0.325)
    assert summary["clcs"]["minority_dice_diff_vs_standard"] == pytest.approx(0.075)
    assert summary["clcs"]["dice_diff_vs_standard"] == pytest.approx(0.05)
    assert np.isnan(summary["standard"]["dice_p_vs_standard"])
