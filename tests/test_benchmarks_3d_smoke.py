"""Smoke tests of the 3D benchmarks: ``memory_3d.py``'s largest-patch fit, and a tiny run of
``resize_vs_sliding.py`` writing complete result files (no timing or accuracy assertions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_largest_patch_follows_the_fitted_line():
    fit_largest = _module("memory_3d").fit_largest
    # 100 MiB + 1 MiB per 1,000 voxels of a batch of 2 patches
    rows = [{"side": s, "increment_mib": 100 + 2 * s ** 3 / 1000} for s in (16, 32, 48)]
    fit = fit_largest(rows, 2, [0.5, 1.0, 0.05])
    assert fit["intercept_mib"] == pytest.approx(100, abs=1e-6)
    assert fit["mib_per_megavoxel"] == pytest.approx(1000, rel=1e-6)
    # 512 MiB: 100 + 2 s^3 / 1000 <= 512 → s <= 59 → 48; 1024 MiB → s <= 77 → 64; 51 MiB: not even 16
    assert fit["largest_side"] == {"0.5": 48, "1": 64, "0.05": None}
    assert fit_largest(rows[:1], 2, [1.0]) == {}


@pytest.mark.slow
def test_tiny_resize_vs_sliding_run_writes_results(tmp_path, keep_threads):
    bench = _module("resize_vs_sliding")
    argv = ["--size", "48", "--depth", "16", "--n-train", "2", "--n-val", "1", "--n-test", "1", "--epochs", "1",
            "--val-interval", "1", "--patch", "32", "32", "8", "--grid", "16", "16", "16", "--out", str(tmp_path),
            "--cache", str(tmp_path / "cache")]
    assert bench.main(argv) == 0
    results = json.loads((tmp_path / "resize_vs_sliding.json").read_text())
    assert set(results["runs"]) == {"native", "resized", "native_weights_resized"}
    for run in results["runs"].values():
        assert 0 <= run["summary"]["dice"]["mean"] <= 1 and len(run["per_case"]) == 1
    assert results["runs"]["native_weights_resized"]["weights"] == results["runs"]["native"]["weights"]
    # a second run reuses every cached step
    assert bench.main(argv) == 0
