"""benchmarks/partition_noise.py: the statistics by hand, the settings grid, and an end-to-end toy run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import partition_noise  # noqa: E402

from dale_monai.partition import fuzzy_masks_batch  # noqa: E402
from dale_monai.transforms import FuzzyPartition  # noqa: E402


def test_roc_auc_by_hand():
    auc = partition_noise.roc_auc
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True])) == 1.0
    assert auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([False, False, True, True])) == 0.0
    assert auc(np.full(5, 0.3), np.array([True, False, True, False, False])) == 0.5
    # positives {0.4, 0.8} against negatives {0.1, 0.4}: 1 + 0.5 (tie) + 1 + 1 out of 4 pairs
    assert auc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([False, True, False, True])) == pytest.approx(0.875)
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([False, False])))


def _edge_case():
    """16×16: clean label = right half; noisy label also claims columns 6–7 (32 wrong pixels)."""
    image = np.zeros((1, 1, 16, 16), np.float32)
    clean = np.zeros((1, 1, 16, 16), np.float32)
    clean[..., 8:] = 1
    noisy = clean.copy()
    noisy[..., 6:8] = 1
    return image, noisy, noisy != clean


def test_noise_stats_band_by_hand():
    image, noisy, wrong = _edge_case()
    # band width 2 around the noisy boundary (between columns 5 and 6): columns 4–7, of which 6–7 are wrong
    _, mask_f = fuzzy_masks_batch(image, noisy, mode="band", band_width=2)
    st = partition_noise.noise_stats(mask_f.numpy(), wrong)
    assert st["wrong_fuzzy"] == 1.0 and st["wrong_tau"] == 1.0 and st["mf_wrong"] == 1.0
    assert st["right_fuzzy"] == pytest.approx(2 / 14) and st["mf_right"] == pytest.approx(2 / 14)
    # every wrong pixel scores 1; 12 of 14 right columns score 0, 2 tie at 1
    assert st["auc"] == pytest.approx(13 / 14)


def test_previous_stats_match_the_previous_definitions():
    image, noisy, wrong = _edge_case()
    part = FuzzyPartition(patch_size=4, tau=0.9, use_entropy=False)
    _, mask_f = part(torch.as_tensor(image[0]), torch.as_tensor(noisy[0]))
    st = partition_noise.previous_stats(np.asarray(mask_f)[None], wrong)
    fuzzy = np.asarray(mask_f[0]) >= 0.9
    w = wrong[0, 0]
    assert st["wrong_in_fuzzy"] == pytest.approx(fuzzy[w].mean()) and st["wrong_in_fuzzy"] == 1.0
    assert st["right_in_fuzzy"] == pytest.approx(fuzzy[~w].mean()) and 0 < st["right_in_fuzzy"] < 0.5
    assert st["fuzzy_fraction"] == pytest.approx(fuzzy.mean())
    # two cases: means over cases, the case without wrong pixels left out of the wrong-pixel means
    both = partition_noise.previous_stats(np.concatenate([np.asarray(mask_f)[None]] * 2),
                                          np.concatenate([wrong, np.zeros_like(wrong)]))
    assert both["wrong_in_fuzzy"] == st["wrong_in_fuzzy"]
    assert both["right_in_fuzzy"] == pytest.approx((st["right_in_fuzzy"] + fuzzy.mean()) / 2)


def test_settings_grid_is_valid_and_named_uniquely():
    grid = partition_noise.settings_grid()
    names = [partition_noise.setting_name(kw) for kw in grid]
    assert len(set(names)) == len(names) == len(grid)
    for kw in grid:
        FuzzyPartition(**{"patch_size": 8, **kw})  # every setting is a valid option set
    assert {kw["patch_size"] for kw in grid if "patch_size" in kw} == {4, 8, 16}
    assert "Eq. 3, max, patch 8 (paper)" in names and "ER only, patch 16" in names
    assert "band hard, width 1.5" in names and "Shannon, 0.25·AE + 0.75·ER, patch 4" in names


def _fake_ph2(root: Path, n: int = 12, h: int = 40, w: int = 48) -> Path:
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


def test_toy_run_reads_training_labels_only_and_writes_the_table(tmp_path, monkeypatch):
    sections = []
    real_load = partition_noise.load_split

    def recording_load(datalist, section, size, subset=None):
        sections.append(section)
        return real_load(datalist, section, size, subset)

    monkeypatch.setattr(partition_noise, "load_split", recording_load)
    data = _fake_ph2(tmp_path / "data")
    out = tmp_path / "table.md"
    argv = ["--profile", "toy", "--work", str(tmp_path / "work"), "--data-dir", str(data), "--out", str(out)]
    assert partition_noise.main(argv) == 0
    assert sections == ["training"] * 3  # the toy profile's dilate_erode level and the two extra protocols
    text = out.read_text()
    for ds in ("ph2_dilate_erode_k3", "ph2_elastic_a8", "ph2_components"):
        assert f"## {ds}" in text
    n_settings = len(partition_noise.settings_grid())
    rows = [line for line in text.splitlines() if line.startswith("| Eq. 3, max, patch 8 (paper) |")]
    assert len(rows) == 3
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 10
                  and not line.startswith("| setting")]
    assert len(table_rows) == 3 * n_settings
    assert "--profile toy" in text and "commit" in text


def test_missing_data_skips(tmp_path, capsys):
    argv = ["--profile", "toy", "--work", str(tmp_path / "work"), "--data-dir", str(tmp_path / "none")]
    assert partition_noise.main(argv) == 0
    assert "SKIPPED" in capsys.readouterr().err
