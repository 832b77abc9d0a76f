"""Tests of ``benchmarks/leaderboard.py`` (issue 17): Holm's correction, the per-setting statistics and tables,
BENCHMARKS.md's leaderboard block, and one toy regeneration that resumes from the cache without retraining."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy_core as ac  # noqa: E402
import leaderboard as lb  # noqa: E402
from test_accuracy_smoke import _fake_ph2  # noqa: E402


def test_holm_matches_the_step_down_definition():
    # sorted p 0.01, 0.02, 0.03, 0.5 -> ×4, ×3, ×2, ×1 = 0.04, 0.06, 0.06, 0.5 (monotone), NaN ignored in m
    got = lb.holm([0.03, 0.5, math.nan, 0.01, 0.02])
    assert np.allclose([got[0], got[1], got[3], got[4]], [0.06, 0.5, 0.04, 0.06])
    assert math.isnan(got[2])
    assert lb.holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert lb.holm([]) == []


def _runs(datasets=("a", "b"), arms=("standard", "gce", "clcs"), seeds=5, gap=0.02) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for ds in datasets:
        for s in range(seeds):
            base = 0.8 + 0.01 * rng.standard_normal()
            for i, arm in enumerate(arms):
                for suffix in ("", "@best"):
                    rows.append({"dataset": ds, "arm": arm + suffix, "seed": s, "dice": base + i * gap + 1e-3 * s * i,
                                 "hd95": 10.0 - i, "fuzzy_dice": 0.6 + 0.01 * i, "train_cpu_s": 5.0 * (i + 1),
                                 "code_version": "abc"})
    return rows


def test_setting_rows_pair_by_seed_and_correct_over_the_setting():
    setting = lb.Setting("x", "X", "injected_noise", None, ("standard", "gce", "clcs"), "short", "gpu")
    runs = _runs()
    runs = [r for r in runs if not (r["arm"] == "gce" and r["dataset"] == "b" and r["seed"] == 4)]  # one run missing
    rows = lb.setting_rows(setting, runs, {"standard": 100.0, "gce": 100.0, "clcs": 250.0})
    assert len(rows) == 2 * 2 * 3  # datasets × weights kinds × arms
    cell = {(r["dataset"], r["arm"], r["weights"]): r for r in rows}
    gce_b = cell[("b", "gce", "final")]
    assert gce_b["n_seeds"] == 4 and gce_b["n_pairs"] == 4 and gce_b["seeds"] == "0 1 2 3"
    assert gce_b["dice_diff"] == pytest.approx(0.02 + 1e-3 * 1.5, abs=1e-9)  # paired on seeds 0-3 only
    compared = [r for r in rows if r["arm"] != "standard"]
    assert len(compared) == 8 and all("p_holm" in r for r in compared)
    assert np.allclose([r["p_holm"] for r in compared], lb.holm([r["p"] for r in compared]))
    assert all(r["p_holm"] >= r["p"] for r in compared)
    assert cell[("a", "clcs", "final")]["cpu_vs_standard"] == pytest.approx(3.0)
    assert cell[("a", "clcs", "final")]["mem_vs_standard"] == pytest.approx(2.5)
    assert cell[("b", "clcs", "final")]["peak_mib"] == 250.0  # one measurement per setting (same size and batch)
    assert math.isnan(lb.setting_rows(setting, runs)[0]["peak_mib"])  # not measured: NaN, shown as "—"


def test_memory_reads_the_settings_dataset_first_then_any_of_the_profile(tmp_path):
    import json

    def report(ds, mib):
        (tmp_path / f"arm_memory_short_{ds}.json").write_text(json.dumps(
            {"dataset": ds, "arms": {"standard": {"increment_mib": mib, "peak_mib": 900.0}}}))

    assert lb._memory(tmp_path, "short", ["ph2"]) == ({}, None)
    report("covid_both", 40.0)
    assert lb._memory(tmp_path, "short", ["ph2"]) == ({"standard": 40.0}, "covid_both")  # the profile's other dataset
    report("ph2", 36.0)
    assert lb._memory(tmp_path, "short", ["ph2"]) == ({"standard": 36.0}, "ph2")  # the working memory, not the process
    assert lb._memory(tmp_path, "long", ["ph2"]) == ({}, None)


def test_markdown_marks_the_best_per_column_and_missing_seeds():
    setting = lb.Setting("x", "Setting X", "injected_noise", None, ("standard", "gce", "clcs", "trinet"), "short",
                         "gpu")
    rows = lb.setting_rows(setting, _runs(seeds=3))
    for r in rows:
        r["commit"] = "c0ffee"
    md = lb.markdown([(setting, "short", rows, "`benchmarks/results/accuracy/x`", "x.png"),
                      (lb.SETTINGS[0], "short", [], "`benchmarks/results/accuracy/none`", None)], "cmd", seeds=5)
    assert "## Setting X" in md and "`c0ffee`" in md and "![x](x.png)" in md
    assert "Not run yet" in md  # a setting without runs is listed, not dropped
    assert "`python benchmarks/leaderboard.py --gpu`" in md  # the GPU regeneration is one option away, and says so
    tables = [ln for ln in md.splitlines() if ln.startswith("| clcs")]
    assert len(tables) == 2  # final and best-validation weights
    # clcs has the highest Dice and fuzzy Dice and the lowest HD95 in both datasets: 3 bold cells per dataset
    assert all(ln.count("**") == 2 * 3 * 2 for ln in tables)
    assert "(n=3)" in md  # fewer seeds than the goal are marked
    assert "Status: **incomplete**: arms not run `trinet`; fewer than 5 seeds on a, b." in md
    assert not any(ln.startswith("| trinet") for ln in md.splitlines())  # an arm without runs gets no row


def test_update_benchmarks_replaces_its_block_only(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Does DALE help?\n\nIntro.\n\n## Older section\n\nText.\n")
    md = "# Leaderboard: x\n\n## Setting A\n\n![a](a.png)\n"
    lb.update_benchmarks(path, md, "benchmarks/results/leaderboard")
    lb.update_benchmarks(path, md.replace("Setting A", "Setting B"), "benchmarks/results/leaderboard")
    text = path.read_text()
    assert text.startswith("# Does DALE help?\n\n<!-- leaderboard:start -->\n## Leaderboard: x")
    assert "### Setting B" in text and "Setting A" not in text and text.count("<!-- leaderboard:start -->") == 1
    assert "![a](benchmarks/results/leaderboard/a.png)" in text
    assert "## Older section\n\nText." in text and "Intro." in text


def test_regeneration_trains_only_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("DALE_DATA_DIR", str(_fake_ph2(tmp_path / "data")))
    setting = lb.Setting("toy2", "Toy protocol 2", "injected_noise", None, ("standard", "gce"), "toy", "toy")
    monkeypatch.setattr(lb, "SETTINGS", (setting,))
    argv = ["--settings", "toy2", "--seeds", "1", "--work", str(tmp_path / "work"), "--protocols-out",
            str(tmp_path / "protocols"), "--out", str(tmp_path / "lb"), "--results", str(tmp_path), "--no-memory"]
    assert lb.main(argv) == 0
    with open(tmp_path / "lb" / "leaderboard.csv", newline="") as f:
        first = list(csv.DictReader(f))
    assert {r["arm"] for r in first} == {"standard", "gce"} and {r["weights"] for r in first} == {"final", "best"}

    trained = []
    real = ac.train_and_evaluate
    monkeypatch.setattr(ac, "train_and_evaluate", lambda *a, **k: trained.append(a) or real(*a, **k))
    assert lb.main([*argv[:3], "2", *argv[4:]]) == 0  # a second seed: only its runs train
    assert len(trained) == 2 * len({r["dataset"] for r in first})
    with open(tmp_path / "lb" / "leaderboard.csv", newline="") as f:
        second = list(csv.DictReader(f))
    assert {r["n_seeds"] for r in second} == {"2"}
    same = {(r["dataset"], r["arm"], r["weights"]): r for r in first}
    assert all(r["seeds"] == "0 1" for r in second) and len(second) == len(same)
    trained.clear()
    assert lb.main([*argv, "--report-only"]) == 0 and not trained


def test_unknown_setting_is_rejected(capsys):
    with pytest.raises(SystemExit):
        lb.main(["--settings", "p9", "--report-only"])
    assert "unknown setting(s) ['p9']" in capsys.readouterr().err


def test_training_settings_measure_memory_through_arm_memory(tmp_path, monkeypatch):
    import arm_memory

    calls = []

    def fake_measure(profile, dataset, arms, work, **kw):
        calls.append((profile, dataset, tuple(arms)))
        return {a: {"increment_mib": 10.0 * (i + 1), "peak_mib": 500.0, "ratio_to_standard": i + 1.0}
                for i, a in enumerate(arms)}

    monkeypatch.setattr(arm_memory, "measure", fake_measure)
    monkeypatch.setattr(arm_memory, "markdown", lambda *a, **k: "")
    setting = lb.Setting("toy6", "Toy protocol 6", "semisup", None, ("standard", "meanteacher", "full"), "toy", "toy")
    args = type("A", (), {"work": str(tmp_path), "data_dir": None, "results": str(tmp_path)})()
    lb._measure_memory(setting, "semi", "covid_semi", args)
    assert calls == [("semi", "covid_semi", ("standard", "meanteacher"))]  # `full` has no COVID dataset
    assert lb._memory(tmp_path, "semi", ["covid_semi"]) == ({"standard": 10.0, "meanteacher": 20.0}, "covid_semi")


@pytest.mark.parametrize("gpu", [False, True])
def test_every_setting_has_a_profile_with_epochs_for_its_datasets(gpu):
    import accuracy

    for setting in lb.SETTINGS:
        profile = ac.PROFILES[setting.gpu_profile if gpu else setting.profile]
        assert profile.device == ("cuda" if gpu else "cpu")
        protocol = accuracy.PROTOCOLS[setting.protocol]
        datasets = setting.datasets or [d for d in protocol.datasets if d != "noise"] + (
            [f"ph2_{lv.name}" for lv in profile.noise_levels] if "noise" in protocol.datasets else [])
        for ds in datasets:
            assert profile.epochs_for(ds) >= 1, (setting.name, ds)
            if ds.startswith("ph2_dilate"):
                assert ds[len("ph2_"):] in {lv.name for lv in profile.noise_levels}, (setting.name, ds)
        assert set(setting.arms) <= set(accuracy.ARMS) and setting.arms[0] == "standard"


def test_report_reads_a_protocol_run_in_parts(tmp_path):
    cols = ["dataset", "arm", "seed", "weights", "dice", "hd95", "fuzzy_dice", "train_cpu_s", "code_version"]
    for ds, commit in (("ph2_l25", "aaaaaaa1"), ("covid_semi", "bbbbbbb2")):
        folder = tmp_path / f"semisup_semi_{ds}"
        folder.mkdir()
        (folder / "README.md").write_text(f"- Commit: `{commit}`; code version\n")
        with open(folder / "runs.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in _runs(datasets=(ds,), arms=("standard", "meanteacher"), seeds=2):
                w.writerow({**{k: r[k] for k in cols if k in r}, "weights": "best" if "@" in r["arm"] else "final"})
    assert lb.main(["--settings", "p6", "--report-only", "--protocols-out", str(tmp_path), "--out",
                    str(tmp_path / "lb"), "--results", str(tmp_path)]) == 0
    with open(tmp_path / "lb" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["dataset"], r["commit"]) for r in rows} == {("ph2_l25", "aaaaaaa1"), ("covid_semi", "bbbbbbb2")}
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "semisup_semi_ph2_l25" in md and "semisup_semi_covid_semi" in md and "`aaaaaaa`, `bbbbbbb`" in md
