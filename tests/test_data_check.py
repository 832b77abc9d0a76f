"""``python -m data_prep check``: every problem of a datalist listed in one run, with the files named."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fixtures_datasets import blob_mask, grey_image, make_dicom_series, read_json, save

from data_prep.__main__ import main
from data_prep.check import CheckReport, Problem, check_datalist
from data_prep.io import DataPrepError


def _nii(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr), np.eye(4)), str(path))
    return path


def _pair(root: Path, name: str, image: np.ndarray | None = None, mask: np.ndarray | None = None,
          size: int = 32, seed: int = 0) -> dict:
    image = grey_image(size, size, seed) if image is None else image
    mask = blob_mask(size, size, seed) if mask is None else mask
    save(root / f"images/{name}.png", image)
    save(root / f"labels/{name}.png", mask)
    return {"image": f"images/{name}.png", "label": f"labels/{name}.png"}


def _datalist(root: Path, doc: dict) -> Path:
    path = root / "datalist.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _found(problems: list[Problem]) -> set[tuple[str, str]]:
    return {(p.kind, Path(p.file).name if p.file else p.where) for p in problems}


@pytest.fixture
def broken(tmp_path) -> Path:
    """A datalist holding one of each problem, beside clean entries."""
    root = tmp_path / "ds"
    training = [_pair(root, "good", seed=1)]
    # truncated PNG: header intact, pixel data cut
    training.append(_pair(root, "truncated", seed=2))
    data = (root / "images/truncated.png").read_bytes()
    (root / "images/truncated.png").write_bytes(data[: len(data) // 2])
    training.append(_pair(root, "mask255", mask=blob_mask(32, 32, 3) * 255, seed=3))
    nan_image = np.random.default_rng(4).normal(size=(32, 32)).astype(np.float32)
    nan_image[3, 4], nan_image[5, 6] = np.nan, np.inf
    _nii(root / "images/nan.nii.gz", nan_image)
    _nii(root / "labels/nan.nii.gz", blob_mask(32, 32, 4))
    training.append({"image": "images/nan.nii.gz", "label": "labels/nan.nii.gz"})
    training.append(_pair(root, "mismatch", mask=blob_mask(30, 32, 5), seed=5))
    rgba = np.dstack([np.random.default_rng(6).integers(0, 256, (32, 32, 3), dtype=np.uint8),
                      np.full((32, 32), 255, np.uint8)])
    training.append(_pair(root, "rgba", image=rgba, seed=6))
    training.append(_pair(root, "wide", image=(grey_image(32, 32, 7).astype(np.uint16) * 200), seed=7))
    training.append(_pair(root, "constant", image=np.full((32, 32), 80, np.uint8), seed=8))
    training.append(_pair(root, "tiny", size=8, seed=9))
    entry = _pair(root, "nolabel", seed=10)
    (root / entry["label"]).unlink()
    training.append(entry)
    training.append({"label": "labels/good.png"})
    soft = blob_mask(32, 32, 11).astype(np.float32) * 0.75
    _nii(root / "labels/soft.nii.gz", soft)
    save(root / "images/soft.png", grey_image(32, 32, 11))
    training.append({"image": "images/soft.png", "label": "labels/soft.nii.gz", "label_soft": "labels/soft.nii.gz"})
    single = blob_mask(32, 32, 12)
    single[1, 30] = 1
    training.append(_pair(root, "single", mask=single, seed=12))
    training.append(_pair(root, "empty", mask=np.zeros((32, 32), np.uint8), seed=13))
    training.append(_pair(root, "class2", mask=blob_mask(32, 32, 14) * 2, seed=14))
    validation = [_pair(root, "val", seed=15), dict(training[0]),
                  {"image": "images/val.png", "label": "labels/val.png"}]
    # a test image outside the dataset folder, reached through '..': read, and reported by absolute path
    save(tmp_path / "elsewhere/outside.png", grey_image(32, 32, 16))
    test = ["../elsewhere/outside.png", {"image": "images/missing.png", "label": "labels/good.png"}]
    return _datalist(root, {"labels": {"0": "background", "1": "lesion"}, "training": training,
                            "validation": validation, "test": test})


def test_every_problem_is_listed_in_one_run(broken, tmp_path):
    report = check_datalist(broken, num_classes=2)
    assert isinstance(report, CheckReport) and not report.ok
    assert _found(report.errors) == {
        ("unreadable", "truncated.png"),
        ("label_255", "mask255.png"),
        ("non_finite", "nan.nii.gz"),
        ("size_mismatch", "mismatch.png"),
        ("too_small", "tiny.png"),
        ("missing_file", "nolabel.png"),
        ("no_image", "training[10]"),
        ("soft_label", "soft.nii.gz"),
        ("label_values", "class2.png"),
        ("missing_file", "missing.png"),
    }
    assert _found(report.warnings) == {
        ("rgba", "rgba.png"),
        ("constant_image", "constant.png"),
        ("single_pixel_lesion", "single.png"),
        ("leakage", "good.png"),
        ("duplicate", "val.png"),
    }
    assert _found(report.info) == {("16bit", "wide.png"), ("empty_mask", "empty.png")}
    by_kind = {p.kind: p for p in report.errors + report.warnings}
    # each message says what is wrong and what to do, with both sizes / the setting / the values
    assert "map 255 to 1" in by_kind["label_255"].message and "re-run the data_prep converter" in \
        by_kind["label_255"].message
    assert "image 32x32" in by_kind["size_mismatch"].message and "label 30x32" in by_kind["size_mismatch"].message
    assert "8x8" in by_kind["too_small"].message and "--min-size 16" in by_kind["too_small"].message
    assert "1 NaN, 1 Inf" in by_kind["non_finite"].message
    assert "label_soft" in by_kind["soft_label"].message and "0.75" in by_kind["soft_label"].message
    assert "[2]" not in by_kind["label_values"].message and "2 outside the classes {0, 1}" in \
        by_kind["label_values"].message
    assert "truncated" in by_kind["unreadable"].message
    leak = by_kind["leakage"]
    assert (leak.section, leak.index) == ("validation", 1) and "training[0]" in leak.message
    # the soft label under 'label_soft' is accepted: only the 'label' key is an error
    assert [p.key for p in report.errors if (p.file or "").endswith("soft.nii.gz")] == ["label"]
    # paths are absolute, '..' resolved
    assert all(Path(p.file).is_absolute() for p in report.errors + report.warnings if p.file)
    assert report.counts["entries"] == {"training": 15, "validation": 3, "test": 2}
    assert report.counts["errors"]["missing_file"] == 2 and report.counts["info"] == {"16bit": 1, "empty_mask": 1}
    outside = (tmp_path / "elsewhere/outside.png").resolve()
    assert not any(p.file == str(outside) for p in report.errors + report.warnings)


def test_cli_lists_grouped_lines_writes_json_and_exits_1(broken, tmp_path, capsys):
    out = tmp_path / "reports/check.json"
    assert main(["check", "--datalist", str(broken), "--num-classes", "2", "--json", str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("ERROR ")]
    warnings = [i for i, line in enumerate(lines) if line.startswith("WARNING ")]
    assert len(errors) == 10 and len(warnings) == 5 and max(errors) < min(warnings)
    assert f"ERROR training[2] {broken.parent / 'labels/mask255.png'}: " in "\n".join(lines)
    assert "ERROR training[10]: entry has no 'image' key" in "\n".join(lines)
    summary = next(line for line in lines if "entries" in line)
    assert "10 errors" in summary and "5 warnings" in summary and summary.endswith("FAILED")
    doc = read_json(out)
    assert doc["ok"] is False and len(doc["errors"]) == 10 and doc["settings"]["classes"] == [0, 1]
    assert not [p for p in out.parent.iterdir() if p.name != "check.json"]  # written atomically: no temp left


def test_workers_give_the_same_report(broken):
    one = check_datalist(broken, num_classes=2).as_dict()
    two = check_datalist(broken, num_classes=2, workers=2).as_dict()
    assert one == two


def test_label_classes_come_from_options_or_the_datalist(tmp_path):
    root = tmp_path / "ds"
    path = _datalist(root, {"training": [_pair(root, "a", mask=blob_mask(32, 32) * 255),
                                         _pair(root, "b", mask=blob_mask(32, 32) * 2, seed=1)]})
    # no classes configured: integer labels pass, the 0/255 mask is still pointed out
    report = check_datalist(path)
    assert report.ok and report.settings["classes"] is None
    assert _found(report.warnings) == {("label_255", "a.png")} and "--num-classes" in report.warnings[0].message
    assert _found(check_datalist(path, label_values=[0, 255]).errors) == {("label_values", "b.png")}
    assert _found(check_datalist(path, num_classes=3).errors) == {("label_255", "a.png")}
    with pytest.raises(DataPrepError, match="--label-values"):
        check_datalist(path, num_classes=2, label_values=[0, 255])
    doc = read_json(path)
    doc["labels"] = {"0": "background", "1": "ggo", "2": "consolidation"}
    path.write_text(json.dumps(doc))
    report = check_datalist(path)
    assert report.settings["classes"] == [0, 1, 2] and _found(report.errors) == {("label_255", "a.png")}


def test_bad_datalists_are_reported_not_raised(tmp_path, capsys):
    missing = check_datalist(tmp_path / "nope.json")
    assert [p.kind for p in missing.errors] == ["missing_datalist"] and "nope.json" in missing.errors[0].file
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": [')
    assert [p.kind for p in check_datalist(bad).errors] == ["bad_datalist"]
    assert main(["check", "--datalist", str(bad)]) == 1
    assert f"ERROR datalist {bad}: not valid JSON" in capsys.readouterr().out
    empty = _datalist(tmp_path / "e", {"name": "x"})
    assert [p.kind for p in check_datalist(empty).errors] == ["no_sections"]
    wrong = _datalist(tmp_path / "w", {"training": [{"image": 3}, 5], "validation": {}})
    report = check_datalist(wrong, sections=["training", "validation", "test"])
    assert _found(report.errors) == {("no_image", "training[0]"), ("bad_entry", "training[1]"),
                                     ("bad_section", "datalist.json"), ("missing_section", "datalist.json")}


def test_bad_settings_exit_1_with_the_setting_named(tmp_path, capsys):
    root = tmp_path / "ds"
    path = _datalist(root, {"training": [_pair(root, "a")]})
    assert main(["check", "--datalist", str(path), "--num-classes", "0"]) == 1
    assert "--num-classes 0" in capsys.readouterr().err
    with pytest.raises(DataPrepError, match="background included"):
        check_datalist(path, num_classes=1)
    assert main(["check", "--datalist", str(path), "--workers", "0"]) == 1
    assert "--workers 0" in capsys.readouterr().err
    assert main(["check", "--datalist", str(path), "--patch-size", "0"]) == 1
    assert "--patch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["check", "--datalist", str(path), "--label-values", "0,x"])


def test_patch_size_per_dimension_and_3d_volumes(tmp_path):
    root = tmp_path / "ds"
    _nii(root / "img.nii.gz", np.random.default_rng(0).normal(size=(24, 24, 8)).astype(np.float32))
    _nii(root / "lab.nii.gz", np.pad(np.ones((4, 4, 2), np.uint8), ((10, 10), (10, 10), (3, 3))))
    path = _datalist(root, {"training": [{"image": "img.nii.gz", "label": "lab.nii.gz"}]})
    assert check_datalist(path, num_classes=2, min_size=4, patch_size=[16, 16, 8]).ok
    report = check_datalist(path, num_classes=2, min_size=4, patch_size=16)
    assert [p.kind for p in report.errors] == ["too_small"] and "--patch-size 16" in report.errors[0].message \
        and "24x24x8" in report.errors[0].message
    assert [p.kind for p in check_datalist(path, min_size=4, patch_size=[16, 16]).errors] == ["patch_size"]


def test_dicom_folders_numpy_and_other_formats(tmp_path):
    root = tmp_path / "ds"
    make_dicom_series(root / "ok", n=4, rows=16, columns=16, seed=1)
    make_dicom_series(root / "gap", n=5, rows=16, columns=16, drop=(2,), seed=2)
    make_dicom_series(root / "mixed", n=2, rows=16, columns=16, seed=3)
    make_dicom_series(root / "mixed", n=2, rows=16, columns=16, seed=4)
    np.save(root / "ok_label.npy", np.zeros((16, 16, 4), np.uint8))
    np.savez(root / "two.npz", image=np.zeros((16, 16, 4)), other=np.ones(3))
    (root / "vol.mha").write_bytes(b"ObjectType = Image\n")
    (root / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    path = _datalist(root, {"training": [
        {"image": "ok", "label": "ok_label.npy"},
        {"image": "gap"},
        {"image": "mixed"},
        {"image": "vol.mha", "label": "bad.npy"},
        {"image": "ok", "label": "two.npz"},
    ]})
    report = check_datalist(path, num_classes=2, min_size=4, patch_size=4)
    assert _found(report.errors) == {("unreadable", "gap"), ("unreadable", "mixed"), ("unreadable", "bad.npy"),
                                     ("unreadable", "two.npz")}
    messages = {Path(p.file).name: p.message for p in report.errors}
    assert "missing slices" in messages["gap"] and "mixed series: 2 series" in messages["mixed"]
    assert "'other'" in messages["two.npz"]
    assert ("unsupported_format", "vol.mha") in _found(report.warnings)
    assert ("empty_mask", "ok_label.npy") in _found(report.info)
    assert ("duplicate", "ok") in _found(report.warnings)


def test_copied_image_in_test_is_leakage(tmp_path):
    root = tmp_path / "ds"
    train = _pair(root, "a", seed=1)
    save(root / "images/copy_of_a.png", grey_image(32, 32, 1))
    path = _datalist(root, {"training": [train], "test": [{"image": "images/copy_of_a.png", "label": train["label"]}],
                            "test_other": [dict(train) | {"image": "images/copy_of_a.png"}]})
    report = check_datalist(path, num_classes=2)
    assert report.ok
    leaks = [p for p in report.warnings if p.kind == "leakage"]
    assert [(p.section, p.index) for p in leaks] == [("test", 0), ("test_other", 0)]
    assert "identical content" in leaks[0].message and "a.png" in leaks[0].message
    # 'test' and 'test_other' listing the same image on purpose is not reported
    assert len(report.warnings) == 2


def test_clean_synthetic_dataset_passes(tmp_path, capsys):
    from data_prep.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path, n_train=4, n_val=2, n_test=2, size=32, verbose=False)
    assert main(["check", "--datalist", str(tmp_path / "datalist.json"), "--num-classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "ERROR" not in out and "WARNING" not in out and out.rstrip().endswith("OK")
    assert "8 entries (training 4, validation 2, test 2), 20 files" in out


@pytest.mark.realdata
def test_real_covid_semiseg_passes(real_dataset, tmp_path, capsys):
    src = real_dataset("covid_semiseg")
    out = tmp_path / "out"
    assert main(["covid_semiseg", "--src", str(src), "--out", str(out), "--limit", "3"]) == 0
    capsys.readouterr()
    assert main(["check", "--datalist", str(out / "datalist.json"), "--num-classes", "2"]) == 0
    text = capsys.readouterr().out
    assert "ERROR" not in text and "9 entries (training 3, validation 3, test 3), 27 files" in text
    # the same labels checked as 0/255 masks are rejected: the check reads the real values
    report = check_datalist(out / "datalist.json", label_values=[0, 255])
    assert {p.kind for p in report.errors} == {"label_values"}
