"""Smoke test of benchmarks/bench_speed.py: a tiny run writes complete result files (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_speed.py"
TINY = ["--size", "32", "--batch", "1", "--repeats", "1", "--warmup", "0", "--backbones", "unet"]  # 2 batches


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    # the benchmark sets torch's thread count for the whole process: restore it for the other tests
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_tiny_run_writes_results_with_every_field(bench, tmp_path, keep_threads):
    variants = "standard,dale_jvp,dale_jvp_w,dale_double_backward,dale_first_order,dale_first_order_head"
    # memory of two variants only: each is a fresh Python process (seconds to import torch)
    argv = TINY + ["--variants", variants, "--memory-variants", "standard,dale_jvp", "--memory-iterations", "1",
                   "--memory-jobs", "2", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    results = json.loads((tmp_path / "speed.json").read_text())
    env = results["environment"]
    for key in ("command", "commit", "torch", "monai", "threads", "nproc", "size", "batch", "repeats"):
        assert key in env, key
    assert env["threads"] == 2 and env["size"] == 32 and env["batch"] == 1
    assert "--size 32" in env["command"]

    unet = results["backbones"]["unet"]
    assert list(unet["variants"]) == variants.split(",")
    for name, entry in unet["variants"].items():
        assert len(entry["times_s"]) == 1 and entry["median_s"] > 0, name
        assert entry["ratio"] > 0 and entry["ratio_paired_median"] > 0 and entry["ratio_of_minima"] > 0
        assert len(entry["breakdown_per_round_s"]) == 1
    assert unet["variants"]["standard"]["ratio"] == pytest.approx(1.0)
    jvp = unet["variants"]["dale_jvp"]["breakdown_median_s"]
    assert jvp["meta_jvp"] > 0 and jvp["meta_v_pass"] > 0 and jvp["meta_virtual_grad"] > 0
    assert jvp["meta_second_backward"] == 0
    db = unet["variants"]["dale_double_backward"]["breakdown_median_s"]
    assert db["meta_second_backward"] > 0 and db["meta_jvp"] == 0
    for name in ("dale_first_order", "dale_first_order_head"):  # one jvp, no virtual step, no v pass
        fo = unet["variants"][name]["breakdown_median_s"]
        assert fo["meta_jvp"] > 0 and fo["meta_v_pass"] == 0 and fo["meta_virtual_grad"] == 0, name
    # the phases of an iteration add up to its total
    for name in ("dale_jvp", "dale_double_backward", "dale_first_order", "dale_first_order_head"):
        rnd = unet["variants"][name]["breakdown_per_round_s"][0]
        assert sum(v for k, v in rnd.items() if k != "total") == pytest.approx(rnd["total"], rel=1e-6), name
    assert {"forward", "backward_and_step"} <= set(unet["variants"]["standard"]["breakdown_median_s"])

    assert unet["partition"]["per_sample_s"] > 0
    assert 0 < unet["partition"]["share_of_dale_jvp_iteration"] < 1
    assert set(unet["memory"]) == {"standard", "dale_jvp"}
    for name, mem in unet["memory"].items():
        assert mem["peak_rss_mib"] >= mem["rss_before_mib"] > 0, name
        assert mem["increment_mib"] == pytest.approx(mem["peak_rss_mib"] - mem["rss_before_mib"])

    agreement = unet["agreement"]
    assert agreement["batches"] == 2 and len(agreement["per_batch"]) == 2 * 3
    assert set(agreement["summary"]) == {"first_order", "first_order_head", "jvp_head"}
    for name, m in agreement["summary"].items():
        assert 0 <= m["sign_agreement_min"] <= m["sign_agreement_mean"] <= 1, name
        assert -1 <= m["spearman_mean"] <= 1 and 0 < m["selected_fraction_mean"] <= 1, name

    targets = {(t["variant"], t["quantity"]): t for t in results["targets"]}
    assert {q for _, q in targets} == {"time_ratio", "partition_share", "memory_ratio", "sign_agreement"}
    assert ("dale_first_order", "time_ratio") in targets and ("first_order_head", "sign_agreement") in targets
    for t in targets.values():
        assert isinstance(t["value"], float) and isinstance(t["met"], bool)
        expected = {"partition_share": t["value"] < t["limit"], "sign_agreement": t["value"] >= t["limit"]}
        assert t["met"] == expected.get(t["quantity"], t["value"] <= t["limit"])

    md = (tmp_path / "speed.md").read_text()
    assert env["commit"] in md and "dale_double_backward" in md and "Targets" in md
    assert "dale_first_order_head" in md and "Spearman" in md


@pytest.mark.slow
def test_results_go_to_the_named_files(bench, tmp_path, keep_threads):
    argv = TINY + ["--variants", "standard,dale_first_order_head", "--memory-backbones", "none",
                   "--agreement-batches", "1", "--name", "speed_fast_omega", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speed_fast_omega.json", "speed_fast_omega.md"]
    results = json.loads((tmp_path / "speed_fast_omega.json").read_text())
    assert results["backbones"]["unet"]["agreement"]["batches"] == 1


def test_a_run_without_the_standard_iteration_is_refused(bench, tmp_path):
    with pytest.raises(SystemExit, match="must include 'standard'"):
        bench.main(TINY + ["--variants", "dale_jvp", "--out", str(tmp_path)])
    assert not (tmp_path / "speed.json").exists()


@pytest.mark.slow
def test_paradigm_speed_tiny_run_writes_every_paradigm(tmp_path, keep_threads):
    spec = importlib.util.spec_from_file_location("bench_paradigms", REPO / "benchmarks" / "bench_paradigms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--rounds", "1", "--warmup", "1", "--size", "32", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "paradigms_speed.json").read_text())
    assert set(results["seconds_per_iteration"]) == set(module.PARADIGMS)
    assert results["ratio_to_standard"]["standard"] == 1.0
    assert all(v > 0 for v in results["seconds_per_iteration"].values())
    table = (tmp_path / "paradigms_speed.md").read_text()
    assert all(f"| {p} |" in table for p in module.PARADIGMS) and results["commit"] in table
    with pytest.raises(SystemExit):
        module.main(["--paradigms", "standard,bogus", "--out", str(tmp_path)])
