"""Label-noise protocols, the measured noise level and the ``noise`` command on small datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage as ndi

from data_prep.io import DataPrepError
from data_prep.noise import (
    PROTOCOLS,
    DiceAccumulator,
    add_parser,
    apply_protocol,
    dilate_erode,
    drop_add_components,
    elastic_perturb,
    label_dice,
    make_noisy_dataset,
    read_label,
)


def ball(shape, centre, radius, value=1, dtype=np.uint8) -> np.ndarray:
    grid = np.indices(shape)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return (d2 <= radius ** 2).astype(dtype) * value


def two_class_2d() -> np.ndarray:
    """Class 1 and class 2 blocks touching along a vertical line, inside background."""
    m = np.zeros((40, 40), np.uint8)
    m[10:30, 8:20] = 1
    m[10:30, 20:32] = 2
    return m


# ----------------------------------------------------------------------------------- protocol behaviour


@pytest.mark.parametrize("shape,centre", [((48, 48), (24, 24)), ((32, 32, 32), (16, 16, 16))])
def test_dilate_grows_and_erode_shrinks(shape, centre):
    m = ball(shape, centre, 8)
    grown = dilate_erode(m, 2, mode="dilate")
    shrunk = dilate_erode(m, 2, mode="erode")
    assert grown.sum() > m.sum() > shrunk.sum() > 0
    assert np.all(grown[m == 1] == 1) and np.all(m[shrunk == 1] == 1)  # superset / subset
    # exactly the morphological dilation / erosion by the digital Euclidean ball of radius 2
    element = ball((5,) * len(shape), (2,) * len(shape), 2).astype(bool)
    np.testing.assert_array_equal(grown, ndi.binary_dilation(m, element))
    np.testing.assert_array_equal(shrunk, ndi.binary_erosion(m, element))


@pytest.mark.parametrize("mode", ["dilate", "erode"])
def test_dice_decreases_with_k(mode):
    m = ball((64, 64), (32, 32), 14)
    dice = [label_dice(dilate_erode(m, k, mode=mode), m) for k in range(0, 6)]
    assert dice[0] == 1.0
    assert all(a > b for a, b in zip(dice, dice[1:])), dice


def test_dilate_erode_random_mode_and_k_range():
    m = ball((48, 48), (24, 24), 10)
    areas = {int(dilate_erode(m, (1, 3), np.random.default_rng(s)).sum()) for s in range(40)}
    expected = set()
    for k in (1, 2, 3):
        element = ball((2 * k + 1,) * 2, (k, k), k).astype(bool)
        expected |= {int(ndi.binary_dilation(m, element).sum()), int(ndi.binary_erosion(m, element).sum())}
    assert len(expected) == 6
    assert areas == expected  # both directions, every k of the inclusive range, nothing else


@pytest.mark.parametrize("protocol,kw", [("dilate", {"k": 2}), ("erode", {"k": 2}), ("dilate_erode", {"k": (1, 3)}),
                                         ("elastic", {"alpha": 2.0, "sigma": 4.0}),
                                         ("components", {"drop_prob": 0.5, "max_drop_size": 40, "n_add": (1, 3)})])
def test_determinism_by_seed(protocol, kw):
    m = ball((48, 48), (20, 20), 9) + ball((48, 48), (38, 38), 2)
    a = apply_protocol(m, protocol, np.random.default_rng(7), **kw)
    b = apply_protocol(m, protocol, 7, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, m)
    if protocol in ("elastic", "components", "dilate_erode"):
        outs = [apply_protocol(m, protocol, s, **kw) for s in range(6)]
        assert any(not np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("shape,centre", [((64, 64), (32, 32)), ((32, 32, 32), (16, 16, 16))])
def test_elastic_moves_only_the_boundary(shape, centre):
    m = ball(shape, centre, 10)
    alpha = 1.5
    out = elastic_perturb(m, alpha, 4.0, np.random.default_rng(0))
    assert set(np.unique(out)) <= {0, 1} and out.dtype == m.dtype
    changed = out != m
    assert changed.any()
    dist_to_boundary = np.where(m == 1, ndi.distance_transform_edt(m), ndi.distance_transform_edt(1 - m))
    assert not changed[dist_to_boundary > 6 * alpha].any()


def test_elastic_dice_decreases_with_alpha():
    m = ball((64, 64), (32, 32), 14)
    mean_dice = [np.mean([label_dice(elastic_perturb(m, a, 5.0, s), m) for s in range(5)]) for a in (0.5, 1.5, 3.0)]
    assert mean_dice[0] > mean_dice[1] > mean_dice[2]


def test_components_drop_and_add():
    m = ball((64, 64), (20, 20), 10)
    small = [(50, 50), (50, 10), (10, 50)]
    for c in small:
        m |= ball((64, 64), c, 2)
    dropped = drop_add_components(m, 0, drop_prob=1.0, n_add=0)  # default: all but the largest
    np.testing.assert_array_equal(dropped, ball((64, 64), (20, 20), 10))
    kept = drop_add_components(m, 0, drop_prob=1.0, max_drop_size=5, n_add=0)  # the small ones have 13 px
    np.testing.assert_array_equal(kept, m)

    added = drop_add_components(m, 3, drop_prob=0.0, n_add=3, add_radius=3.0)
    assert np.all(added[m == 1] == 1)
    n_before = ndi.label(m, ndi.generate_binary_structure(2, 2))[1]
    labelled, n_after = ndi.label(added, ndi.generate_binary_structure(2, 2))
    assert n_after == n_before + 3  # separate false components
    new = np.unique(labelled[(added == 1) & (m == 0)])
    assert all((labelled == i).sum() <= np.pi * 9 + 8 for i in new)  # small: within the radius-3 blob


@pytest.mark.parametrize("protocol,kw", [("dilate", {"k": 3}), ("erode", {"k": 3}), ("dilate_erode", {"k": 2}),
                                         ("elastic", {"alpha": 2.0, "sigma": 3.0}),
                                         ("components", {"drop_prob": 1.0, "max_drop_size": 500, "n_add": 2})])
def test_multiclass_no_overlap_no_new_labels(protocol, kw):
    m = two_class_2d()
    out = apply_protocol(m, protocol, 1, **kw)
    assert set(np.unique(out)) <= {0, 1, 2}
    if protocol == "dilate":
        np.testing.assert_array_equal(out[m > 0], m[m > 0])  # classes only claim background
        assert (out == 1).sum() > (m == 1).sum() and (out == 2).sum() > (m == 2).sum()
    if protocol == "erode":
        assert np.all((out == 0) | (out == m))  # only releases pixels
        assert not out[:, 20 - 3:20 + 3].any()  # the interface between the classes is eroded from both sides
    if protocol == "components":
        assert set(np.unique(out[(m == 0) & (out > 0)])) <= {1, 2}


def test_multiclass_dilation_goes_to_nearest_class():
    m = np.zeros((20, 30), np.uint8)
    m[8:12, 2:6] = 1
    m[8:12, 24:28] = 3
    out = dilate_erode(m, 20, mode="dilate")
    assert out[10, 10] == 1 and out[10, 20] == 3 and out.all()


def test_multiclass_3d():
    m = np.zeros((24, 24, 24), np.int16)
    m[6:18, 6:12, 6:18] = 4
    m[6:18, 12:18, 6:18] = 7
    for protocol, kw in [("dilate", {"k": 2}), ("erode", {"k": 1}), ("elastic", {"alpha": 1.0, "sigma": 3.0})]:
        out = apply_protocol(m, protocol, 0, **kw)
        assert out.shape == m.shape and out.dtype == m.dtype
        assert set(np.unique(out)) <= {0, 4, 7} and not np.array_equal(out, m)


@pytest.mark.parametrize("shape", [(16, 16), (8, 8, 8)])
@pytest.mark.parametrize("protocol,kw", [("dilate", {"k": 2}), ("erode", {"k": 2}), ("dilate_erode", {"k": 2}),
                                         ("elastic", {"alpha": 2.0, "sigma": 3.0}), ("components", {"n_add": 0})])
def test_empty_masks_stay_empty(shape, protocol, kw):
    out = apply_protocol(np.zeros(shape, np.uint8), protocol, 0, **kw)
    assert out.shape == shape and not out.any()


def test_components_can_add_false_lesions_to_empty_masks():
    out = drop_add_components(np.zeros((32, 32), np.uint8), 0, n_add=2, add_radius=3.0)
    assert set(np.unique(out)) == {0, 1}
    assert ndi.label(out)[1] >= 1


def test_dtypes_and_values_preserved():
    m = ball((32, 32), (16, 16), 8, value=255)
    out = dilate_erode(m, 2, mode="dilate")
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 255}
    b = dilate_erode(m > 0, 2, mode="erode")
    assert b.dtype == bool
    f = dilate_erode(m.astype(np.float64), 2, mode="erode")
    assert f.dtype == np.float64 and set(np.unique(f)) == {0.0, 255.0}


def test_whole_image_single_class_is_left_alone_by_erosion():
    m = np.ones((10, 10), np.uint8)
    np.testing.assert_array_equal(dilate_erode(m, 2, mode="erode"), m)


@pytest.mark.parametrize("bad,match", [
    (np.zeros(5), "2D or 3D"), (np.zeros((2, 2, 2, 2)), "2D or 3D"),
    (np.full((4, 4), 0.5), "integers"), (-np.ones((4, 4), int), "non-negative"),
])
def test_bad_masks(bad, match):
    with pytest.raises(DataPrepError, match=match):
        dilate_erode(bad, 1, mode="dilate")


def test_bad_protocol_and_options():
    m = ball((16, 16), (8, 8), 4)
    with pytest.raises(DataPrepError, match="unknown noise protocol 'blur'"):
        apply_protocol(m, "blur", 0)
    with pytest.raises(DataPrepError, match=r"does not take option\(s\) \['alpha'\]"):
        apply_protocol(m, "dilate", 0, alpha=3)
    with pytest.raises(DataPrepError, match="k must be non-negative"):
        apply_protocol(m, "dilate", 0, k=-1)
    with pytest.raises(DataPrepError, match="sigma"):
        apply_protocol(m, "elastic", 0, sigma=0)
    with pytest.raises(DataPrepError, match="mode"):
        dilate_erode(m, 1, mode="open")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 16), k=st.integers(0, 3), n_classes=st.integers(1, 3))
def test_property_dilation_superset_erosion_subset(seed, k, n_classes):
    rng = np.random.default_rng(seed)
    m = np.zeros((24, 24), np.uint8)
    for c in range(1, n_classes + 1):
        r0, c0 = rng.integers(0, 20, size=2)
        m[r0:r0 + rng.integers(1, 8), c0:c0 + rng.integers(1, 8)] = c
    grown = dilate_erode(m, k, mode="dilate")
    shrunk = dilate_erode(m, k, mode="erode")
    np.testing.assert_array_equal(grown[m > 0], m[m > 0])
    assert np.all((shrunk == 0) | (shrunk == m))
    assert set(np.unique(grown)) <= set(np.unique(m)) and set(np.unique(shrunk)) <= set(np.unique(m)) | {0}
    if k == 0:
        np.testing.assert_array_equal(grown, m)
        np.testing.assert_array_equal(shrunk, m)


# ----------------------------------------------------------------------------------- noise level


def test_label_dice_and_accumulator():
    clean = np.zeros((10, 10), np.uint8)
    clean[:5, :4] = 1  # 20 px
    noisy = np.zeros_like(clean)
    noisy[:5, :2] = 1  # 10 px, all inside
    assert label_dice(noisy, clean) == pytest.approx(2 * 10 / 30)
    assert label_dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert label_dice(np.zeros((3, 3)), np.eye(3)) == 0.0

    big_clean = np.zeros((10, 10), np.uint8)
    big_clean[:, :8] = 1  # 80 px, noisy identical
    acc = DiceAccumulator()
    acc.add("a", noisy, clean)
    acc.add("b", big_clean, big_clean)
    s = acc.summary()
    assert s["dice_mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["dice_pooled"] == pytest.approx((20 + 160) / (30 + 160))
    assert s["wrong_pixel_fraction"] == pytest.approx(10 / 200)
    assert s["per_image"]["a"]["dice"] == pytest.approx(2 / 3)

    multi = two_class_2d()
    only_one = np.where(multi == 2, 0, multi)
    assert label_dice(only_one, multi) == pytest.approx(0.5)  # class 1 perfect, class 2 missed


# ----------------------------------------------------------------------------------- datasets and CLI


def make_png_dataset(root: Path, n_train: int = 6) -> Path:
    """A converter-style 2D dataset: grey images, 0/255 masks, relative paths."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    sections = {"training": [], "validation": [], "test": []}
    for i in range(n_train + 2):
        img = (np.random.default_rng(i).random((32, 32)) * 255).astype(np.uint8)
        mask = ball((32, 32), (10 + i, 16), 6 + i % 3, value=255)
        Image.fromarray(img).save(root / "images" / f"c{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
        section = "training" if i < n_train else ("validation" if i == n_train else "test")
        sections[section].append({"image": f"images/c{i}.png", "label": f"masks/c{i}.png"})
    (root / "datalist.json").write_text(json.dumps({"name": "toy", **sections}))
    return root / "datalist.json"


def test_noisy_dataset_png(tmp_path, capsys):
    datalist = make_png_dataset(tmp_path / "src")
    out = tmp_path / "noisy"
    report = make_noisy_dataset(datalist, out, "dilate", seed=0, fraction=0.5, k=2)
    printed = capsys.readouterr().out
    assert "corrupted 3/6" in printed and "pooled" in printed and "c0.png" in printed

    doc = json.loads((out / "datalist.json").read_text())
    assert list(doc)[:4] == ["name", "training", "validation", "test"] and doc["noise"]["protocol"] == "dilate"
    corrupted = [c["corrupted"] for c in report["cases"]]
    assert sum(corrupted) == 3 and report["n_corrupted"] == 3
    for entry, case in zip(doc["training"], report["cases"]):
        image, label, clean = (out / entry[k] for k in ("image", "label", "label_clean"))
        assert image.is_file() and label.is_file() and clean.is_file()
        assert clean.resolve().parent == (tmp_path / "src" / "masks").resolve()
        noisy_arr, clean_arr = read_label(label)[0], read_label(clean)[0]
        if case["corrupted"]:
            assert label.resolve().is_relative_to(out.resolve() / "labels_noisy")
            assert noisy_arr.sum() > clean_arr.sum() and set(np.unique(noisy_arr)) == {0, 255}
            assert case["dice"] == pytest.approx(label_dice(noisy_arr, clean_arr)) and case["dice"] < 1
        else:
            assert label == clean and case["dice"] == 1.0
    for section in ("validation", "test"):
        for entry in doc[section]:
            assert (out / entry["image"]).is_file() and (out / entry["label"]).is_file()
            assert entry["label"].startswith("..")
    saved = json.loads((out / "noise_report.json").read_text())
    assert saved["overall"]["dice_mean"] == pytest.approx(np.mean([c["dice"] for c in report["cases"]]))
    assert saved["overall"]["dice_pooled"] < 1 and saved["corrupted_only"]["n_images"] == 3


def test_noisy_dataset_is_deterministic_and_not_redone(tmp_path, capsys):
    datalist = make_png_dataset(tmp_path / "src")
    a, b = tmp_path / "a", tmp_path / "b"
    make_noisy_dataset(datalist, a, "elastic", seed=3, alpha=2.0, sigma=3.0, verbose=False)
    make_noisy_dataset(datalist, b, "elastic", seed=3, alpha=2.0, sigma=3.0, verbose=False)
    files_a = sorted(p.relative_to(a) for p in (a / "labels_noisy").rglob("*.png"))
    assert len(files_a) == 6
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()

    mtimes = {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    report = make_noisy_dataset(datalist, a, "elastic", seed=3, alpha=2.0, sigma=3.0)
    assert "up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()} == mtimes
    assert report["config"]["seed"] == 3

    other = make_noisy_dataset(datalist, a, "elastic", seed=4, alpha=2.0, sigma=3.0, verbose=False)
    assert other["config"]["seed"] == 4
    assert json.loads((a / "datalist.json").read_text())["noise"]["seed"] == 4
    assert (a / files_a[0]).read_bytes() != (b / files_a[0]).read_bytes()

    # a smaller fraction: the noisy labels of the earlier run no longer in use are removed
    make_noisy_dataset(datalist, a, "elastic", seed=4, fraction=0.5, alpha=2.0, sigma=3.0, verbose=False)
    doc = json.loads((a / "datalist.json").read_text())
    in_use = {(a / e["label"]).resolve() for e in doc["training"]}
    left = {p.resolve() for p in (a / "labels_noisy").rglob("*.png")}
    assert len(left) == 3 and left <= in_use


def test_fraction_zero_keeps_everything_clean(tmp_path):
    datalist = make_png_dataset(tmp_path / "src", n_train=4)
    report = make_noisy_dataset(datalist, tmp_path / "out", "erode", k=1, fraction=0.0, verbose=False)
    assert report["n_corrupted"] == 0 and report["overall"]["dice_mean"] == 1.0
    assert not (tmp_path / "out" / "labels_noisy").exists()


@pytest.mark.parametrize("fraction,n,expected", [(0.25, 8, 2), (0.5, 5, 3), (0.3, 5, 2), (1.0, 3, 3)])
def test_fraction_honoured(tmp_path, fraction, n, expected):
    datalist = make_png_dataset(tmp_path / "src", n_train=n)
    report = make_noisy_dataset(datalist, tmp_path / "out", "dilate", k=1, fraction=fraction, verbose=False)
    assert sum(c["corrupted"] for c in report["cases"]) == report["n_corrupted"] == expected
    assert sum(c["dice"] < 1 for c in report["cases"]) == expected


def test_noisy_dataset_nifti_multiclass_3d(tmp_path):
    src = tmp_path / "src"
    (src / "vol").mkdir(parents=True)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    entries = []
    for i in range(3):
        lab = np.zeros((20, 20, 12), np.float64)  # many datasets store labels as float
        lab[4:12, 4:16, 3:9] = 1
        lab[12:17, 4:16, 3:9] = 3
        nib.save(nib.Nifti1Image(lab, affine), str(src / "vol" / f"l{i}.nii.gz"))
        nib.save(nib.Nifti1Image(np.zeros((20, 20, 12), np.float32), affine), str(src / "vol" / f"i{i}.nii.gz"))
        entries.append({"image": f"vol/i{i}.nii.gz", "label": f"vol/l{i}.nii.gz"})
    (src / "datalist.json").write_text(json.dumps({"training": entries, "validation": []}))
    report = make_noisy_dataset(src / "datalist.json", tmp_path / "out", "dilate_erode", seed=1, k=1, verbose=False)
    assert report["n_corrupted"] == 3
    for case in report["cases"]:
        img = nib.load(str(tmp_path / "out" / case["label"]))
        data = np.asanyarray(img.dataobj)
        assert data.dtype == np.float64 and set(np.unique(data)) <= {0.0, 1.0, 3.0}
        np.testing.assert_allclose(img.affine, affine)
        assert 0 < case["dice"] < 1


def test_missing_datalist(tmp_path):
    with pytest.raises(DataPrepError, match=r"nope\.json: datalist not found"):
        make_noisy_dataset(tmp_path / "nope.json", tmp_path / "out", "dilate")


def test_missing_label_file_names_it(tmp_path):
    datalist = make_png_dataset(tmp_path / "src", n_train=3)
    (tmp_path / "src" / "masks" / "c1.png").unlink()
    with pytest.raises(DataPrepError, match=r"training entry 1 \(label\).*c1\.png: label file not found"):
        make_noisy_dataset(datalist, tmp_path / "out", "dilate", verbose=False)
    assert not (tmp_path / "out" / "datalist.json").exists()


def test_bad_dataset_settings(tmp_path):
    datalist = make_png_dataset(tmp_path / "src", n_train=2)
    with pytest.raises(DataPrepError, match="must differ"):
        make_noisy_dataset(datalist, tmp_path / "src", "dilate", verbose=False)
    with pytest.raises(DataPrepError, match="fraction"):
        make_noisy_dataset(datalist, tmp_path / "o", "dilate", fraction=1.5, verbose=False)
    with pytest.raises(DataPrepError, match="does not take"):
        make_noisy_dataset(datalist, tmp_path / "o", "dilate", sigma=2.0, verbose=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "datalist.json").write_text("{}")
    with pytest.raises(DataPrepError, match="not written by the noise command"):
        make_noisy_dataset(datalist, tmp_path / "foreign", "dilate", verbose=False)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataPrepError, match=r"broken\.json: not a valid JSON"):
        make_noisy_dataset(tmp_path / "broken.json", tmp_path / "o", "dilate", verbose=False)


def test_synthetic_source_uses_label_clean(tmp_path):
    src = tmp_path / "src"
    (src / "l").mkdir(parents=True)
    clean = ball((24, 24), (12, 12), 5, value=1)
    Image.fromarray(clean).save(src / "l" / "clean.png")
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(src / "l" / "noisy.png")
    (src / "datalist.json").write_text(json.dumps(
        {"synthetic": {"seed": 0}, "training": [{"image": "l/clean.png", "label": "l/noisy.png",
                                                "label_clean": "l/clean.png"}]}))
    report = make_noisy_dataset(src / "datalist.json", tmp_path / "out", "dilate", k=1, verbose=False)
    doc = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert "synthetic" not in doc and "noise" in doc
    assert Path(doc["training"][0]["label_clean"]).name == "clean.png"
    assert 0.8 < report["cases"][0]["dice"] < 1


def test_add_parser_registers_noise_command(tmp_path):
    datalist = make_png_dataset(tmp_path / "src", n_train=2)
    parser = argparse.ArgumentParser(prog="python -m data_prep")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["noise", "--datalist", str(datalist), "--out", str(tmp_path / "o"),
                              "--protocol", "dilate_erode", "--k", "1-3", "--seed", "5", "--fraction", "0.5"])
    assert args.k == (1, 3) and args.protocol == "dilate_erode"
    assert args.func(args) == 0
    assert json.loads((tmp_path / "o" / "datalist.json").read_text())["noise"]["options"] == {"k": [1, 3],
                                                                                           "spacing": None}
    args = parser.parse_args(["noise", "--datalist", str(datalist), "--out", str(tmp_path / "e"),
                              "--protocol", "dilate", "--alpha", "2"])
    with pytest.raises(DataPrepError, match="--alpha does not apply to the 'dilate' protocol.*--k"):
        args.func(args)

    args = parser.parse_args(["noise", "--datalist", str(datalist), "--out", str(tmp_path / "c"),
                              "--protocol", "components", "--n-add", "2", "--max-drop-size", "10"])
    assert args.func(args) == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["noise", "--datalist", "x", "--out", "y", "--protocol", "dilate", "--k", "3-1"])
    with pytest.raises(SystemExit):
        parser.parse_args(["noise", "--datalist", "x", "--out", "y", "--protocol", "sharpen"])
    assert set(PROTOCOLS) == {"dilate", "erode", "dilate_erode", "elastic", "components", "class_boundary"}


def test_meta_fraction_keeps_clean_cases_apart_and_the_noise_of_the_others(tmp_path, capsys):
    datalist = make_png_dataset(tmp_path / "src", n_train=8)
    plain = make_noisy_dataset(datalist, tmp_path / "plain", "dilate", seed=0, k=2, verbose=False)
    report = make_noisy_dataset(datalist, tmp_path / "meta", "dilate", seed=0, k=2, meta_fraction=0.25)
    assert "2 training case(s) kept clean in the 'meta' section" in capsys.readouterr().out
    doc = json.loads((tmp_path / "meta" / "datalist.json").read_text())
    assert len(doc["meta"]) == 2 and len(doc["training"]) == 6 and report["n_meta"] == 2
    meta_labels = {Path(e["label"]).name for e in doc["meta"]}
    assert not meta_labels & {Path(e["label_clean"]).name for e in doc["training"]}
    for e in doc["meta"]:  # the source's clean masks, never corrupted
        assert (tmp_path / "meta" / e["label"]).resolve().parent == (tmp_path / "src" / "masks").resolve()
        assert (tmp_path / "meta" / e["image"]).is_file() and "label_clean" not in e
    # each remaining case has the noise it has without a meta set (its own stream)
    noisy_plain = {c["label_clean"]: c["label"] for c in plain["cases"]}
    for c in report["cases"]:
        a = read_label(tmp_path / "meta" / c["label"])[0]
        b = read_label(tmp_path / "plain" / noisy_plain[c["label_clean"]])[0]
        assert np.array_equal(a, b)
    again = make_noisy_dataset(datalist, tmp_path / "count", "dilate", seed=0, k=2, meta_count=2, verbose=False)
    assert [c["label"] for c in again["cases"]] == [c["label"] for c in report["cases"]]


@pytest.mark.parametrize(("kw", "match"), [
    (dict(meta_fraction=1.0), "--meta-fraction"), (dict(meta_fraction=0.0), "--meta-fraction"),
    (dict(meta_count=6), "--meta-count 6"), (dict(meta_count=0), "--meta-count 0"),
    (dict(meta_count=1, meta_fraction=0.5), "give one of them"),
])
def test_bad_meta_options(tmp_path, kw, match):
    datalist = make_png_dataset(tmp_path / "src", n_train=6)
    with pytest.raises(DataPrepError, match=match):
        make_noisy_dataset(datalist, tmp_path / "o", "dilate", verbose=False, **kw)


def test_a_source_with_a_meta_section_keeps_it_and_refuses_a_second(tmp_path):
    datalist = make_png_dataset(tmp_path / "src")
    doc = json.loads(datalist.read_text())
    doc["meta"] = [doc["validation"][0]]
    datalist.write_text(json.dumps(doc))
    out = make_noisy_dataset(datalist, tmp_path / "o", "dilate", verbose=False)
    assert out["n_meta"] == 0
    assert len(json.loads((tmp_path / "o" / "datalist.json").read_text())["meta"]) == 1
    with pytest.raises(DataPrepError, match="already has a 'meta' section"):
        make_noisy_dataset(datalist, tmp_path / "o2", "dilate", meta_count=1, verbose=False)
