"""Smoke test of the accuracy benchmarks (benchmarks/accuracy.py) on a tiny synthetic PH2-like folder.

Checks that a protocol runs end to end with the ``toy`` profile and writes its tables with the expected
columns (and figures when matplotlib is installed); never the accuracy values themselves.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy  # noqa: E402
from accuracy_report import (  # noqa: E402
    COMPARISON_COLUMNS,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    paired_comparison,
    time_to_target,
)


def _fake_ph2(root: Path, n: int = 16, h: int = 40, w: int = 48) -> Path:
    """PH2's resized layout (images/IMDxxx.png RGB, masks/IMDxxx.png 0/255): a bright ellipse on noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        cy, cx, ry, rx = rng.uniform(15, 25), rng.uniform(18, 30), rng.uniform(6, 12), rng.uniform(6, 12)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img = rng.integers(0, 120, (h, w, 3)) + 120 * mask[..., None]
        for sub, arr in (("images", img.astype(np.uint8)), ("masks", (mask * 255).astype(np.uint8))):
            (root / "ph2" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / "ph2" / sub / f"IMD{i:03d}.png")
    return root


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_injected_noise_toy_writes_tables_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("DALE_DATA_DIR", str(_fake_ph2(tmp_path / "data")))
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["injected_noise", "--profile", "toy", "--arms", "dale", "--out", str(out), "--work", str(work)]
    assert accuracy.main(argv) == 0
    res = out / "injected_noise_toy"

    cols, runs = _read(res / "runs.csv")
    assert cols == list(RUN_COLUMNS)
    # (clean, one noise level) x (standard, dale) x 2 seeds x (final, best-validation weights)
    assert len(runs) == 2 * 2 * 2 * 2
    assert {r["arm"] for r in runs} == {"standard", "dale", "standard@best", "dale@best"}
    assert {(r["arm"].endswith("@best"), r["weights"]) for r in runs} == {(False, "final"), (True, "best")}
    # the best-validation weights are those of the first curve point with the highest validation Dice
    with open(res / "curves.csv", newline="") as f:
        points = list(csv.DictReader(f))
    for r in runs:
        pts = [p for p in points if (p["dataset"], p["arm"], p["seed"]) == (r["dataset"], r["arm"].split("@")[0],
                                                                          r["seed"])]
        best = max(pts, key=lambda p: float(p["val_dice"]))
        assert int(r["best_iteration"]) == int(best["iteration"])
        assert float(r["best_val_dice"]) == pytest.approx(float(best["val_dice"]))
    assert {r["dataset"] for r in runs} == {"ph2", "ph2_dilate_erode_k3"}
    assert all(r["dice"] != "" and 0 <= float(r["dice"]) <= 1 for r in runs)
    dale = [r for r in runs if r["arm"].startswith("dale")]
    assert all(r["omega_frac_small_grad"] != "" and r["fuzzy_fraction"] != "" for r in dale)
    # injected noise: the clean reference label is carried through, so the ω/noise diagnostics exist
    assert all(r["noisy_in_fuzzy"] != "" and r["omega_below1_noisy"] != "" for r in dale
               if r["dataset"] != "ph2")

    cols, summary = _read(res / "summary.csv")
    assert cols == list(SUMMARY_COLUMNS) and len(summary) == 8
    cols, comps = _read(res / "comparisons.csv")
    assert cols == list(COMPARISON_COLUMNS)
    assert {(c["dataset"], c["arm"], c["baseline"], c["metric"]) for c in comps} == {
        (d, a, b, m) for d in ("ph2", "ph2_dilate_erode_k3") for a, b in (("dale", "standard"),
                                                                          ("dale@best", "standard@best"))
        for m in ("dice", "miou", "hd95", "asd", "fuzzy_dice")}
    cols, curves = _read(res / "curves.csv")
    assert cols == ["dataset", "arm", "seed", "iteration", "wall_s", "cpu_s", "val_dice"] and curves

    readme = (res / "README.md").read_text()
    assert "Protocol 2" in readme and "Complete" in readme and "--profile toy" in readme
    if importlib.util.find_spec("matplotlib") is not None:
        for fig in ("dice.png", "dice_vs_noise.png", "examples_ph2.png", "partition_ph2_dilate_erode_k3.png"):
            assert (res / fig).stat().st_size > 0, fig
            assert f"({fig})" in readme

    # a second call reuses the cached runs and writes the same per-run table
    before = (res / "runs.csv").read_text()
    assert accuracy.main(argv) == 0
    assert (res / "runs.csv").read_text() == before

    # an external test datalist re-scores the cached weights without training: given the clean dataset's own
    # datalist, every metric equals the run's own test metrics
    ext_argv = [*argv, "--test-datalist", str(work / "ph2" / "datalist.json")]
    assert accuracy.main(ext_argv) == 0
    _, ext_runs = _read(out / "injected_noise_toy_ext-ph2" / "runs.csv")
    assert [(r["dataset"], r["arm"], r["seed"], r["dice"], r["hd95"]) for r in ext_runs] == [
        (r["dataset"], r["arm"], r["seed"], r["dice"], r["hd95"]) for r in runs]
    assert "ext-ph2" not in str(res) and "datalist.json` (test section" in (
        out / "injected_noise_toy_ext-ph2" / "README.md").read_text()

    # --cached-only trains nothing: the cached runs are reported, a missing arm is listed
    assert accuracy.main([*argv, "--cached-only", "--arms", "dale,dale_unmasked"]) == 0
    partial = (res / "README.md").read_text()
    assert "PARTIAL" in partial and "seed 0 ph2 dale_unmasked" in partial
    _, cached_runs = _read(res / "runs.csv")
    assert {r["arm"] for r in cached_runs} == {"standard", "dale", "standard@best", "dale@best"}
    assert accuracy.main(argv) == 0  # the complete report again

    # a profile with many validation points reports the paired time to standard training's best validation
    # Dice; standard reaches its own best exactly at its own time
    assert accuracy.main([*argv, "--set", "val_points=20"]) == 0
    _, tta = _read(out / "injected_noise_toy_val_points-20" / "time_to_standard_best.csv")
    std_rows = [r for r in tta if r["arm"] == "standard"]
    assert len(std_rows) == 4 and all(r["cpu_s_to_target"] == r["standard_cpu_s_to_target"] != "" for r in std_rows)
    assert "Time to standard training's best validation Dice" in (
        out / "injected_noise_toy_val_points-20" / "README.md").read_text()

    # the validation-only selection reuses the same cache and never reports test metrics
    import select_variant

    sel_argv = ["--profile", "toy", "--seeds", "2", "--arms", "standard,dale", "--work", str(work), "--out", str(out)]
    assert select_variant.main(sel_argv) == 0
    table = (out / "selection_toy" / "README.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ph2")]
    assert len(rows) == 4 and all("| 2 |" in r for r in rows), table
    assert "the test set is not used" in table
    again = ["--profile", "toy", "--seeds", "1", "--arms", "dale", "--work", str(work), "--out", str(out)]
    assert select_variant.main(again) == 0  # seed 0 again: a shared run counts once
    table2 = (out / "selection_toy" / "README.md").read_text()
    assert sorted(line for line in table2.splitlines() if line.startswith("| ph2")) == sorted(rows), table2


def test_semisup_toy_trains_every_arm_on_two_loaders(tmp_path, monkeypatch):
    """Protocol 6 at toy size: every semi-supervised arm draws from the unlabelled section, ``full`` trains on the
    fully labelled dataset and is reported in the semi-supervised dataset's rows, the cost table is written."""
    monkeypatch.setenv("DALE_DATA_DIR", str(_fake_ph2(tmp_path / "data", n=32)))
    out, work = tmp_path / "out", tmp_path / "work"
    arms = ["meanteacher", "cps", "fixeddynamic", "dalepl", "gapmatch", "arco", "full"]
    argv = ["semisup", "--profile", "toy", "--seeds", "1", "--datasets", "ph2_l25", "--arms", ",".join(arms),
            "--out", str(out), "--work", str(work)]
    assert accuracy.main(argv) == 0
    res = out / "semisup_toy_ph2_l25"
    _, runs = _read(res / "runs.csv")
    assert {r["arm"] for r in runs if r["weights"] == "final"} == {"standard", *arms}
    assert {r["dataset"] for r in runs} == {"ph2_l25"}
    # equal iterations: the epoch is one pass over the labelled loader for every arm but the upper bound
    iterations = {r["arm"]: int(r["iterations"]) for r in runs if r["weights"] == "final"}
    assert len({v for a, v in iterations.items() if a != "full"}) == 1
    import json

    datalist = json.loads((work / "ph2_l25" / "datalist.json").read_text())
    assert datalist["unlabeled"] and all("label" not in e for e in datalist["unlabeled"])
    records = {json.loads(p.read_text())["config"]["paradigm"]: json.loads(p.read_text())
               for p in (work / "runs").glob("*.json")}
    assert records["meanteacher"]["n_unlabeled"] == len(datalist["unlabeled"]) > 0
    assert records["standard"]["n_unlabeled"] == 0
    assert {json.loads(p.read_text())["config"]["dataset"] for p in (work / "runs").glob("*.json")} == {
        "ph2_l25", "ph2"}  # `full` trained on the fully labelled conversion
    cols, cost = _read(res / "cost.csv")
    assert cols == ["dataset", "arm", "seeds", "iterations", "train_cpu_s", "cpu_s_per_iteration",
                    "per_iteration_vs_standard"]
    assert {r["arm"] for r in cost} == {"standard", *arms}
    assert float(next(r for r in cost if r["arm"] == "standard")["per_iteration_vs_standard"]) == 1.0
    _, comps = _read(res / "comparisons.csv")
    assert {c["arm"] for c in comps if c["metric"] == "dice"} >= set(arms)
    readme = (res / "README.md").read_text()
    assert "Protocol 6" in readme and "per iteration vs standard" in readme


def test_semisup_paradigm_without_unlabeled_data_is_refused():
    import accuracy_core as ac

    cfg = ac.RunConfig(dataset="ph2", paradigm="meanteacher", seed=0, profile="toy", profile_fields="{}")
    item = {"image": np.zeros((3, 32, 32), np.float32), "label": np.zeros((1, 32, 32), np.float32), "name": "a"}
    with pytest.raises(ValueError, match="no unlabelled images"):
        ac.train_and_evaluate(cfg, ac.PROFILES["toy"], [item] * 4, [item], [item], unlabeled=None)
    with pytest.raises(ValueError, match="--profile semi"):
        ac.PROFILES["long"].epochs_for("covid_semi")


def test_missing_data_skips_with_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DALE_DATA_DIR", str(tmp_path / "nothing"))
    argv = ["3", "--profile", "toy", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    assert accuracy.main(argv) == 0
    assert "SKIPPED" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_trace_collapse_prints_the_class_probabilities(tmp_path, monkeypatch, capsys):
    import trace_collapse

    monkeypatch.setenv("DALE_DATA_DIR", str(_fake_ph2(tmp_path / "data")))
    argv = ["--dataset", "ph2", "--profile", "toy", "--iterations", "3", "--every", "1", "--work", str(tmp_path / "w")]
    assert trace_collapse.main(argv) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("iteration")]
    assert len(lines) == 3 and all("mean p on lesion" in x and "on background" in x for x in lines)
    monkeypatch.setenv("DALE_DATA_DIR", str(tmp_path / "nothing"))
    assert trace_collapse.main([*argv[:-1], str(tmp_path / "w2")]) == 0
    assert "SKIPPED" in capsys.readouterr().err


def test_code_versions_ignore_documentation_and_other_paradigms():
    import accuracy_core as ac

    doc = 'def f(x):\n    """Doc."""\n    # why\n    return x + 1  # note\n'
    assert ac._code_text(doc) == ac._code_text("def f(x):\n    return x + 1\n")
    assert ac._code_text(doc) != ac._code_text("def f(x):\n    return x + 2\n")
    before = {p: ac.code_version(p) for p in ("standard", "dale", "gce", "coteaching")}
    assert len(set(before.values())) == 4 and ac.code_version() not in before.values()

    @ac.register_paradigm("_probe_a")
    def _a(cfg, common, extras):
        return None, None

    @ac.register_paradigm("_probe_b", files=("dale_monai/meta.py",))
    def _b(cfg, common, extras):
        return 1, None

    try:
        # a new paradigm leaves every other paradigm's runs valid, and has a version of its own
        assert {p: ac.code_version(p) for p in before} == before
        assert len({ac.code_version("_probe_a"), ac.code_version("_probe_b"), ac.code_version("standard")}) == 3
        with pytest.raises(ValueError, match="twice"):
            ac.register_paradigm("_probe_a")(_a)
        with pytest.raises(ValueError, match="unknown paradigm"):
            ac.paradigm("_nothing")
        cfg = dict(dataset="ph2", seed=0, profile="toy", profile_fields="{}")
        assert ac.RunConfig(paradigm="_probe_a", **cfg).key() != ac.RunConfig(paradigm="_probe_b", **cfg).key()
    finally:
        ac.PARADIGMS.pop("_probe_a", None)
        ac.PARADIGMS.pop("_probe_b", None)


def test_profile_settings_and_external_test_datalist_are_checked(tmp_path, capsys):
    base = accuracy.PROFILES["toy"]
    assert not base.dice_batch
    changed = accuracy._profile_with(base, ["dice_batch=true", "lr=0.01", "channels=[2,4]"])
    assert changed.dice_batch is True and changed.lr == 0.01 and changed.channels == (2, 4)
    assert "over the batch" in changed.describe() and "over the batch" not in base.describe()
    for bad in ("bogus=1", "lr", "dice_batch=3", "epochs=2"):
        with pytest.raises(ValueError, match="--set"):
            accuracy._profile_with(base, [bad])
    with pytest.raises(SystemExit):
        accuracy.main(["2", "--profile", "toy", "--set", "bogus=1", "--out", str(tmp_path)])
    assert "FIELD=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        accuracy.main(["2", "--profile", "toy", "--test-datalist", str(tmp_path / "missing.json"),
                       "--out", str(tmp_path)])
    assert "missing.json: no such file" in capsys.readouterr().err


def test_unknown_protocol_and_arm_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        accuracy.main(["7", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        accuracy.main(["1", "--arms", "dale,bogus", "--out", str(tmp_path)])


def test_paired_comparison_and_time_to_target():
    c = paired_comparison([0.6, 0.7, 0.8], [0.5, 0.7, 0.6])
    d = np.array([0.1, 0.0, 0.2])
    assert c["n"] == 3 and math.isclose(c["diff_mean"], d.mean()) and math.isclose(c["diff_std"], d.std(ddof=1))
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert math.isclose(c["t"], t) and 0 < c["p"] < 1
    assert math.isclose(c["rel_diff"], d.mean() / np.mean([0.5, 0.7, 0.6]))
    assert math.isnan(paired_comparison([0.5], [0.4])["p"])  # one pair: no test
    curve = [{"iteration": 10, "wall_s": 1.0, "cpu_s": 0.9, "val_dice": 0.3},
             {"iteration": 20, "wall_s": 2.0, "cpu_s": 1.8, "val_dice": 0.6}]
    assert time_to_target(curve, 0.5, "iteration") == 20 and time_to_target(curve, 0.5, "cpu_s") == 1.8
    assert math.isnan(time_to_target(curve, 0.9, "wall_s"))
