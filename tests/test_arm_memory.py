"""Tests of ``benchmarks/arm_memory.py`` (peak training memory per benchmark arm) and ``benchmarks/peak_memory.py``.

The end-to-end test measures ``standard`` and ``trinet`` (three networks) with the ``toy`` profile on a small
synthetic PH2-like folder (no real data), at 96 px so that the activations dominate the measurement; it checks
that the heavier arm measures more, that a re-run reads the cache instead of measuring, and the report files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import arm_memory  # noqa: E402
from peak_memory import FALLBACK, RESET, PeakMemory  # noqa: E402
from test_accuracy_smoke import _fake_ph2  # noqa: E402

#: the toy network at a resolution where its activations, not the allocator's noise, set the peak
_SETTINGS = ["size=96", "batch=8", "epochs_scale=3", "channels=[16,32]"]


def test_peak_memory_sees_an_allocation_between_reset_and_read():
    probe = PeakMemory("cpu")
    with pytest.raises(RuntimeError, match="before reset"):
        probe.read()
    probe.reset()
    block = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, every page touched
    got = probe.read()
    del block
    assert got["method"] in (RESET, FALLBACK)
    if got["method"] == RESET:  # the fall-back only sees the growth of the all-time peak
        assert got["increment_mib"] >= 60
        assert got["peak_mib"] == pytest.approx(got["before_mib"] + got["increment_mib"])


def test_bad_arm_profile_or_dataset_fail_before_measuring(tmp_path):
    with pytest.raises(ValueError, match=r"unknown arm 'trinett'; choose from \[.*'trinet'"):
        arm_memory.measure("toy", "ph2", ["trinett"], tmp_path)
    with pytest.raises(ValueError, match="unknown profile 'tiny'"):
        arm_memory.measure("tiny", "ph2", ["trinet"], tmp_path)
    with pytest.raises(ValueError, match="arm 'full' has no run on dataset 'ph2'"):
        arm_memory.measure("toy", "ph2", ["full"], tmp_path)
    with pytest.raises(ValueError, match="iterations and repeats must be at least 1"):
        arm_memory.measure("toy", "ph2", ["trinet"], tmp_path, iterations=0)
    assert not (tmp_path / "arm_memory").exists()  # nothing was started
    with pytest.raises(SystemExit):
        arm_memory.main(["--profile", "toy", "--dataset", "ph2", "--arms", "nope", "--work", str(tmp_path)])


def test_repeats_are_summarised_by_their_median_and_range():
    recs = [{"arm": "dale", "repeat": r, "increment_mib": inc, "peak_mib": 500 + inc, "before_mib": 500.0,
             "process_s": 1.0, "method": RESET} for r, inc in enumerate((40.0, 10.0, 25.0))]
    got = arm_memory._summary(recs)
    assert (got["increment_mib"], got["increment_min_mib"], got["increment_max_mib"]) == (25.0, 10.0, 40.0)
    assert got["peak_mib"] == 525.0 and got["repeats"] == 3 and got["measurements"] == recs
    assert "repeat" not in got and got["arm"] == "dale"


def test_arm_config_is_the_harness_run():
    prof = arm_memory.resolve_profile("semi")
    cfg = arm_memory.arm_config("full", "ph2_l25", prof)
    assert cfg.dataset == "ph2" and cfg.paradigm == "standard"  # accuracy.ARM_DATASETS
    assert arm_memory.arm_config("dale_unmasked", "ph2", prof).mask_mode == "weight"


@pytest.mark.slow
def test_trinet_measures_more_than_standard_and_the_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("DALE_DATA_DIR", str(_fake_ph2(tmp_path / "data", n=20)))
    work, out = tmp_path / "work", tmp_path / "out"
    res = arm_memory.measure("toy", "ph2", ["trinet"], work, iterations=3, settings=_SETTINGS, log=lambda s: None)
    assert list(res) == ["standard", "trinet"]  # standard added first
    std, tri = res["standard"], res["trinet"]
    assert std["iterations"] == tri["iterations"] == 3 and std["repeats"] == 1
    assert std["paradigm"] == "standard" and tri["paradigm"] == "trinet"
    assert std["ratio_to_standard"] == 1.0
    # three networks' activations, gradients and Adam states against one (measured 1.5-1.7x; RSS noise ~ 10 %)
    assert tri["increment_mib"] > 1.25 * std["increment_mib"] > 0
    assert tri["ratio_to_standard"] == pytest.approx(tri["increment_mib"] / std["increment_mib"])
    assert len(list((work / "arm_memory").glob("*.json"))) == 2

    def no_measuring(spec):
        raise AssertionError(f"{spec['arm']} measured again instead of read from the cache")

    monkeypatch.setattr(arm_memory, "_run_child", no_measuring)
    lines: list[str] = []
    again = arm_memory.measure("toy", "ph2", ["trinet"], work, iterations=3, settings=_SETTINGS, log=lines.append)
    assert again == res and all("cached" in ln for ln in lines)

    prof = arm_memory.resolve_profile("toy", _SETTINGS)
    js, md = arm_memory.write_report(res, prof, "ph2", out, "python benchmarks/arm_memory.py ...")
    assert js.name == "arm_memory_toy_ph2.json" and json.loads(js.read_text())["arms"]["trinet"] == tri
    assert "| trinet | trinet | ph2 | 3 |" in md.read_text() and "Commit: " in md.read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        arm_memory.write_report(res, prof, "ph2", out, "again")
