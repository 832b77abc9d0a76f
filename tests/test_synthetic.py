"""The synthetic default dataset: determinism, lesion appearance, where the label noise lies, files and CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from data_prep.io import DataPrepError, read_mask_2d
from data_prep.noise import label_dice
from data_prep.synthetic import add_parser, default_noise_px, generate_case, make_synthetic_dataset


def render_case(case, path: Path, zoom: int = 3) -> None:
    """Save image | image with clean (green) and noisy (red) outlines, for looking at a case by eye."""
    def outline(m):
        return m.astype(bool) & ~ndi.binary_erosion(m.astype(bool))

    img = case.image if case.image.ndim == 2 else case.image[:, :, case.image.shape[2] // 2]
    lab = case.label if case.label.ndim == 2 else case.label[:, :, case.label.shape[2] // 2]
    noisy = case.label_noisy if case.label_noisy.ndim == 2 else case.label_noisy[:, :, case.label.shape[2] // 2]
    grey = np.repeat((img * 255).astype(np.uint8)[..., None], 3, axis=-1)
    over = grey.copy()
    over[outline(lab)] = (0, 255, 0)
    over[outline(noisy) & ~outline(lab)] = (255, 0, 0)
    tile = np.concatenate([grey, over], axis=1)
    Image.fromarray(tile).resize((tile.shape[1] * zoom, tile.shape[0] * zoom), Image.NEAREST).save(path)


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    return ndi.gaussian_gradient_magnitude(image.astype(np.float64), 1.0)


# ----------------------------------------------------------------------------------- one case


@pytest.mark.parametrize("dims,size", [(2, 64), (3, 32)])
def test_generate_case_is_deterministic_and_typed(dims, size):
    a = generate_case(np.random.default_rng(5), size=size, dims=dims, n_lesions=1)
    b = generate_case(5, size=size, dims=dims, n_lesions=1)
    c = generate_case(6, size=size, dims=dims, n_lesions=1)
    for x, y in [(a.image, b.image), (a.label, b.label), (a.label_noisy, b.label_noisy)]:
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (size,) * dims and a.image.dtype == np.float32
    assert 0 <= a.image.min() and a.image.max() <= 1
    assert a.label.dtype == np.uint8 and set(np.unique(a.label)) == {0, 1}
    assert set(np.unique(a.label_noisy)) <= {0, 1}
    assert a.label.any() and not a.label[0].any() and not a.label[-1].any()  # the lesion fits in the image


@pytest.mark.parametrize("dims,size", [(2, 96), (3, 40)])
def test_lesions_are_brighter_and_boundary_contrast_varies(dims, size, tmp_path):
    faint_grad, sharp_grad, inside, outside = [], [], [], []
    for seed in range(6 if dims == 2 else 3):
        case = generate_case(seed, size=size, dims=dims, n_lesions=1)
        if seed == 0:
            render_case(case, tmp_path / "case.png")  # kept for eyeballing when debugging
        grad = gradient_magnitude(case.image)
        edge = case.label.astype(bool) & ~ndi.binary_erosion(case.label.astype(bool))
        sharp_band = case.boundary & ~case.faint
        faint_grad.append(grad[edge & case.faint].mean())
        sharp_grad.append(grad[edge & sharp_band].mean())
        core = ndi.binary_erosion(case.label.astype(bool), iterations=3)
        far = ~ndi.binary_dilation(case.label.astype(bool), iterations=10)
        inside.append(case.image[core].mean())
        outside.append(case.image[far].mean())
    assert np.mean(inside) > np.mean(outside) + 0.15
    # the edge is much weaker where the boundary is faint than where it is sharp
    assert np.mean(faint_grad) < 0.6 * np.mean(sharp_grad), (faint_grad, sharp_grad)


@pytest.mark.parametrize("dims,size", [(2, 96), (3, 40)])
def test_noise_concentrates_in_faint_sectors(dims, size):
    wrong_total = wrong_faint = wrong_sharp = faint_px = band_px = 0
    dice = []
    for seed in range(10 if dims == 2 else 4):
        case = generate_case(seed, size=size, dims=dims, n_lesions=1)
        wrong = case.label != case.label_noisy
        wrong_total += wrong.sum()
        wrong_faint += (wrong & case.faint).sum()
        wrong_sharp += (wrong & case.boundary & ~case.faint).sum()
        faint_px += case.faint.sum()
        band_px += case.boundary.sum()
        dice.append(label_dice(case.label_noisy, case.label))
        assert not (wrong & ~case.boundary).any()  # never far from the true boundary
    share_faint = wrong_faint / wrong_total
    share_band = faint_px / band_px
    assert 0.3 < share_band < 0.7  # roughly half the boundary is faint...
    assert share_faint > 0.85  # ...yet it holds nearly all the wrong pixels
    sharp_error_rate = wrong_sharp / (band_px - faint_px)
    faint_error_rate = wrong_faint / faint_px
    assert faint_error_rate > 8 * sharp_error_rate
    assert 0.6 < np.mean(dice) < 0.97  # noisy enough to matter, not destroyed


def test_noise_px_controls_noise_and_lesion_count():
    a = generate_case(3, size=64, noise_px=0, n_lesions=2)
    np.testing.assert_array_equal(a.label, a.label_noisy)
    d_small = np.mean([label_dice(generate_case(s, 64, noise_px=2, n_lesions=1).label_noisy,
                                  generate_case(s, 64, noise_px=2, n_lesions=1).label) for s in range(5)])
    d_big = np.mean([label_dice(generate_case(s, 64, noise_px=6, n_lesions=1).label_noisy,
                                generate_case(s, 64, noise_px=6, n_lesions=1).label) for s in range(5)])
    assert d_big < d_small < 1
    empty = generate_case(0, size=32, n_lesions=0)
    assert not empty.label.any() and not empty.label_noisy.any() and not empty.faint.any()
    assert ndi.label(generate_case(1, size=96, n_lesions=2).label)[1] in (1, 2)  # two lesions may touch
    assert default_noise_px(96) == 6 and default_noise_px(16) == 2


def test_generate_case_bad_options():
    with pytest.raises(DataPrepError, match="dims"):
        generate_case(0, size=32, dims=4)
    with pytest.raises(DataPrepError, match="size"):
        generate_case(0, size=8)
    with pytest.raises(DataPrepError, match="noise_px"):
        generate_case(0, size=32, noise_px=-1)


# ----------------------------------------------------------------------------------- datasets


def small_2d(out: Path, **kw) -> dict:
    options = dict(dims=2, n_train=4, n_val=2, n_test=2, size=32, seed=0, verbose=False)
    options.update(kw)
    return make_synthetic_dataset(out, **options)


def test_dataset_2d_layout_and_summary(tmp_path):
    summary = small_2d(tmp_path / "s")
    root = tmp_path / "s"
    doc = json.loads((root / "datalist.json").read_text())
    assert [len(doc[s]) for s in ("training", "validation", "test")] == [4, 2, 2]
    assert set(doc["training"][0]) == {"image", "label", "label_clean"}
    assert set(doc["test"][0]) == {"image", "label"}
    for entry in doc["training"]:
        assert not Path(entry["image"]).is_absolute() and entry["label"].startswith("labels_noisy/")
        img = Image.open(root / entry["image"])
        assert img.mode == "L" and img.size == (32, 32)
        noisy, clean = read_mask_2d(root / entry["label"]), read_mask_2d(root / entry["label_clean"])
        assert set(np.unique(clean)) <= {0, 1} and set(np.unique(noisy)) <= {0, 1}
        name = Path(entry["image"]).stem
        assert summary["noise"]["per_image"][name]["dice"] == pytest.approx(label_dice(noisy, clean))
    for entry in doc["validation"] + doc["test"]:
        assert entry["label"].startswith("labels/")
    assert summary["counts"] == {"training": 4, "validation": 2, "test": 2}
    assert summary["size"] == [32, 32] and summary["labels"]["training"]["count"] == 4
    noise = summary["noise"]
    assert {"dice_mean", "dice_pooled", "wrong_pixel_fraction", "wrong_pixels_in_faint_region",
            "faint_region_share_of_boundary_band"} <= set(noise)
    assert json.loads((root / "summary.json").read_text()) == summary


def test_dataset_is_byte_identical_by_seed(tmp_path):
    small_2d(tmp_path / "a", seed=3)
    small_2d(tmp_path / "b", seed=3)
    small_2d(tmp_path / "c", seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4 * 3 + 4 * 2 + 2
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a" / "images" / "train_000.png").read_bytes() != \
        (tmp_path / "c" / "images" / "train_000.png").read_bytes()


def test_rerun_does_not_redo_and_option_change_regenerates(tmp_path, capsys):
    root = tmp_path / "s"
    small_2d(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    small_2d(root, verbose=True)
    assert "up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == mtimes

    # an incomplete output (a file lost) is regenerated
    (root / "labels" / "val_001.png").unlink()
    small_2d(root)
    assert (root / "labels" / "val_001.png").is_file()

    # fewer cases: the surplus files of the earlier run go away, the kept cases are unchanged
    before = (root / "images" / "train_001.png").read_bytes()
    small_2d(root, n_train=2)
    assert sorted(p.name for p in (root / "images").glob("train_*")) == ["train_000.png", "train_001.png"]
    assert (root / "images" / "train_001.png").read_bytes() == before
    assert len(json.loads((root / "datalist.json").read_text())["training"]) == 2


def test_refuses_foreign_datalist(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "datalist.json").write_text(json.dumps({"training": []}))
    with pytest.raises(DataPrepError, match="not a synthetic datalist"):
        small_2d(tmp_path / "x")


@pytest.mark.parametrize("kw,match", [({"dims": 4}, "dims"), ({"size": 8}, "size"), ({"seed": -1}, "seed"),
                                      ({"n_train": -2}, "counts"), ({"noise_px": -1.0}, "noise-px")])
def test_dataset_bad_options(tmp_path, kw, match):
    with pytest.raises(DataPrepError, match=match):
        small_2d(tmp_path / "s", **kw)


def test_dataset_3d(tmp_path):
    summary = make_synthetic_dataset(tmp_path / "v", dims=3, n_train=2, n_val=1, n_test=1, size=24, verbose=False)
    root = tmp_path / "v"
    doc = json.loads((root / "datalist.json").read_text())
    entry = doc["training"][0]
    assert entry["image"].endswith(".nii.gz")
    img = nib.load(str(root / entry["image"]))
    assert img.get_data_dtype() == np.float32 and img.shape == (24, 24, 24)
    for key in ("label", "label_clean"):
        lab = nib.load(str(root / entry[key]))
        assert lab.get_data_dtype() == np.uint8 and set(np.unique(np.asanyarray(lab.dataobj))) <= {0, 1}
    assert summary["dims"] == 3 and summary["size"] == [24, 24, 24]
    # deterministic in 3D too (gzip without timestamps or file names)
    make_synthetic_dataset(tmp_path / "w", dims=3, n_train=2, n_val=1, n_test=1, size=24, verbose=False)
    assert (root / entry["image"]).read_bytes() == (tmp_path / "w" / entry["image"]).read_bytes()


def test_default_2d_dataset(tmp_path):
    summary = make_synthetic_dataset(tmp_path / "d", verbose=False)
    assert summary["counts"] == {"training": 48, "validation": 12, "test": 12} and summary["size"] == [96, 96]
    lesions = summary["lesions_per_image"]
    assert lesions.get("0", 0) >= 1 and lesions.get("2", 0) >= 1  # a few empty images, some with two lesions
    noise = summary["noise"]
    assert 0.8 < noise["dice_mean"] < 0.97 and noise["wrong_pixels_in_faint_region"] > 0.85
    assert noise["concentration"] > 1.5


def test_add_parser_registers_synthetic_command(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="python -m data_prep")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["synthetic", "--out", str(tmp_path / "o"), "--dims", "3", "--n-train", "1",
                              "--n-val", "1", "--n-test", "0", "--size", "20", "--seed", "2"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "Dice mean" in printed and "faint-boundary region" in printed
    doc = json.loads((tmp_path / "o" / "datalist.json").read_text())
    assert doc["synthetic"]["seed"] == 2 and doc["synthetic"]["dims"] == 3 and doc["test"] == []
    with pytest.raises(SystemExit):
        parser.parse_args(["synthetic", "--out", "x", "--dims", "4"])


def test_meta_section_adds_clean_cases_and_changes_no_other_case(tmp_path):
    small_2d(tmp_path / "plain")
    summary = small_2d(tmp_path / "meta", n_meta=3)
    doc = json.loads((tmp_path / "meta" / "datalist.json").read_text())
    assert [e["image"] for e in doc["meta"]] == [f"images/meta_{i:03d}.png" for i in range(3)]
    assert all(set(e) == {"image", "label"} and e["label"].startswith("labels/") for e in doc["meta"])
    assert summary["counts"]["meta"] == 3 and summary["labels"]["meta"]["count"] == 3
    for rel in ("images/train_000.png", "labels_noisy/train_001.png", "images/val_001.png", "labels/test_000.png"):
        assert (tmp_path / "plain" / rel).read_bytes() == (tmp_path / "meta" / rel).read_bytes(), rel
    plain = json.loads((tmp_path / "plain" / "datalist.json").read_text())
    assert "meta" not in plain and "meta" not in json.loads((tmp_path / "plain" / "summary.json").read_text())["counts"]
    # dropping the meta cases again removes their files
    small_2d(tmp_path / "meta")
    assert not list((tmp_path / "meta" / "images").glob("meta_*"))
    with pytest.raises(DataPrepError, match="non-negative"):
        small_2d(tmp_path / "bad", n_meta=-1)


# ----------------------------------------------------------------------------------- realistic 3D option
def test_realistic_volumes_are_anisotropic_with_small_faint_lesions(tmp_path):
    from data_prep.synthetic import generate_realistic_case

    a = generate_realistic_case(3, size=64, depth=16)
    b = generate_realistic_case(np.random.default_rng(3), size=64, depth=16)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label_noisy, b.label_noisy)
    summary = make_synthetic_dataset(tmp_path, dims=3, realistic=True, size=64, depth=16, n_train=3, n_val=1,
                                     n_test=1, verbose=False)
    assert summary["size"] == [64, 64, 16] and summary["spacing_mm"] == [0.8, 0.8, 2.5]
    image = nib.load(tmp_path / "images" / "train_000.nii.gz")
    label = nib.load(tmp_path / "labels" / "train_000.nii.gz")
    assert image.shape == (64, 64, 16)
    np.testing.assert_allclose(image.header.get_zooms(), (0.8, 0.8, 2.5))
    np.testing.assert_allclose(label.affine, image.affine)
    voxel_mm3 = 0.8 * 0.8 * 2.5
    for name in ("train_000", "train_001", "train_002", "val_000", "test_000"):
        mask = np.asarray(nib.load(tmp_path / "labels" / f"{name}.nii.gz").dataobj)
        parts, n = ndi.label(mask)
        assert n >= 1
        # lesions of a few mm: radius at most 6 mm x 1.3 (the radius field), so under 2,100 mm^3 each
        sizes = ndi.sum(mask, parts, range(1, n + 1)) * voxel_mm3
        assert sizes.max() < 2100, sizes
    # the noisy labels differ from the clean ones, and mostly where the boundary is faint
    case = generate_realistic_case(5, size=96, depth=24, n_lesions=3)
    wrong = case.label_noisy != case.label
    assert wrong.any() and (wrong & case.faint).sum() > 0.5 * wrong.sum()
    # re-running with the same options does nothing; other options are refused in 2D
    assert make_synthetic_dataset(tmp_path, dims=3, realistic=True, size=64, depth=16, n_train=3, n_val=1,
                                  n_test=1, verbose=False) == summary
    with pytest.raises(DataPrepError, match="--dims 3"):
        make_synthetic_dataset(tmp_path / "x", dims=2, realistic=True, verbose=False)
    with pytest.raises(DataPrepError, match="add --realistic"):
        make_synthetic_dataset(tmp_path / "x", dims=3, depth=20, verbose=False)
