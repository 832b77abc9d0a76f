"""``covid_semiseg``: the Inf-Net layout, on a fake tree and on the real copy."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fixtures_datasets import blob_mask, make_covid_tree, read_json, read_png, save

from data_prep.__main__ import main


def _run(*argv) -> int:
    return main(["covid_semiseg", *map(str, argv)])


def test_default_trains_on_pseudo_labels_validates_on_doctor_labels(tmp_path, capsys):
    src = make_covid_tree(tmp_path / "src")
    out = tmp_path / "out"
    assert _run("--src", src, "--out", out) == 0
    text = capsys.readouterr().out
    assert "converted 9, reused 0, skipped 0 (training 4, validation 3, test 2)" in text
    dl = read_json(out / "datalist.json")
    assert [e["image"] for e in dl["training"]][:2] == ["images/pseudo/Data-1_coronacases_org_001_1.png",
                                                        "images/pseudo/Data-1_coronacases_org_001_2.png"]
    assert all(e["image"].startswith("images/doctor/") for e in dl["validation"])
    assert all(set(e) == {"image", "label", "label_soft"} for s in ("training", "validation", "test") for e in dl[s])
    # soft pseudo-label: binarised at 128 in 'label', kept 0..255 in 'label_soft'
    entry = dl["training"][0]
    soft = read_png(src / "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/GT/Data-1_coronacases_org_001_1.png")
    assert np.array_equal(read_png(out / entry["label_soft"]), soft)
    assert np.array_equal(read_png(out / entry["label"]), (soft >= 128).astype(np.uint8))
    # grey CT stays one channel, original size kept
    image = read_png(out / entry["image"])
    assert image.ndim == 2 and image.shape == soft.shape
    doctor = read_png(out / dl["validation"][0]["label"])
    assert set(np.unique(doctor)) == {0, 1}


def test_threshold_option_and_both_and_doctor_modes(tmp_path, capsys):
    src = make_covid_tree(tmp_path / "src", n_doctor=10)
    out = tmp_path / "both"
    assert _run("--src", src, "--out", out, "--train-labels", "both", "--val-fraction", "0.2", "--threshold", "50") == 0
    dl = read_json(out / "datalist.json")
    assert len(dl["validation"]) == 2 and len(dl["training"]) == 4 + 8
    assert {e["image"].split("/")[1] for e in dl["training"]} == {"pseudo", "doctor"}
    soft = read_png(out / dl["training"][0]["label_soft"])
    assert np.array_equal(read_png(out / dl["training"][0]["label"]), (soft >= 50).astype(np.uint8))
    assert _run("--src", src, "--out", tmp_path / "doc", "--train-labels", "doctor") == 0
    dl = read_json(tmp_path / "doc/datalist.json")
    assert len(dl["training"]) == 8 and all("pseudo" not in e["image"] for s in dl.values() if isinstance(s, list)
                                             for e in s)


def test_multiclass_task_keeps_palette_indices(tmp_path, capsys):
    src = make_covid_tree(tmp_path / "src", n_mc=5)
    out = tmp_path / "out"
    assert _run("--src", src / "Dataset", "--out", out, "--task", "multiclass") == 0
    dl = read_json(out / "datalist.json")
    assert len(dl["training"]) + len(dl["validation"]) == 5 and len(dl["test"]) == 2
    assert dl["labels"]["2"] == "consolidation"
    label = read_png(out / dl["test"][0]["label"])
    assert set(np.unique(label)) == {0, 1, 2}
    summary = read_json(out / "summary.json")
    assert set(summary["labels"]["test"]["label_values"]) == {"0", "1", "2"}


def test_bad_files_are_skipped_by_name(tmp_path, capsys):
    src = make_covid_tree(tmp_path / "src")
    doctor = src / "Dataset/TrainingSet/LungInfection-Train/Doctor-label"
    (doctor / "GT/2.png").unlink()  # image without mask
    save(doctor / "GT/7.png", blob_mask(10, 10) * 255)  # mask without image
    (doctor / "Imgs/1.jpg").write_bytes((doctor / "Imgs/1.jpg").read_bytes()[:200])  # truncated JPEG
    save(src / "Dataset/TestingSet/LungInfection-Test/GT/18.png", blob_mask(38, 34, 30) * 3)  # 0/3 mask
    assert _run("--src", src, "--out", tmp_path / "out") == 0
    text = capsys.readouterr().out
    assert "converted 6, reused 0, skipped 4" in text
    assert "Doctor-label/Imgs/2.jpg: image without mask" in text
    assert "Doctor-label/GT/7.png: mask without image" in text
    assert "Imgs/1.jpg: unreadable or truncated image" in text
    assert "GT/18.png: unexpected mask values [0, 3]" in text


def test_missing_folders_and_resume(tmp_path, capsys):
    src = make_covid_tree(tmp_path / "src")
    assert _run("--src", tmp_path / "nowhere", "--out", tmp_path / "out") == 1
    assert "--src" in capsys.readouterr().err
    shutil.rmtree(src / "Dataset/TestingSet/LungInfection-Test/GT")
    assert _run("--src", src, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: missing folder") and "LungInfection-Test/GT" in err and err.count("\n") == 1
    src = make_covid_tree(tmp_path / "src2")
    assert _run("--src", src, "--out", tmp_path / "out2", "--limit", "2") == 0
    assert _run("--src", src, "--out", tmp_path / "out2") == 0
    assert "converted 3, reused 6" in capsys.readouterr().out.splitlines()[-3]


def test_a_test_only_tree_gives_a_test_only_datalist(tmp_path, capsys):
    """A user holding only the TestingSet (to evaluate or predict with a trained bundle) converts it; every
    absent part is named with the sections it would have filled."""
    src = make_covid_tree(tmp_path / "src")
    shutil.rmtree(src / "Dataset/TrainingSet")
    for labels in ("pseudo", "doctor", "both"):
        out = tmp_path / labels
        assert _run("--src", src, "--out", out, "--train-labels", labels) == 0
        text = capsys.readouterr().out
        assert "converted 2, reused 0, skipped 0 (test 2)" in text
        dl = read_json(out / "datalist.json")
        assert {k for k, v in dl.items() if isinstance(v, list)} == {"test"} and len(dl["test"]) == 2
        assert f"absent: {src / 'Dataset/TrainingSet/LungInfection-Train/Doctor-label'}" in text
        assert ("Doctor-label; no validation section" if labels == "pseudo" else
                "Doctor-label; no training / validation section") in text
        assert ("LungInfection-Train/Pseudo-label; no training section" in text) == (labels != "doctor")
        assert "pseudo-labels binarised" not in text  # nothing was
        assert read_json(out / "summary.json")["counts"] == {"test": 2}
    out = tmp_path / "mc"
    assert _run("--src", src, "--out", out, "--task", "multiclass") == 0
    assert "MultiClassInfection-Train; no training / validation section" in capsys.readouterr().out
    assert {k for k, v in read_json(out / "datalist.json").items() if isinstance(v, list)} == {"test"}


def test_partial_trees_convert_what_is_there(tmp_path, capsys):
    src = make_covid_tree(tmp_path / "src")
    shutil.rmtree(src / "Dataset/TestingSet")  # training data only: no test section
    assert _run("--src", src, "--out", tmp_path / "train_only") == 0
    text = capsys.readouterr().out
    assert "(training 4, validation 3)" in text and "LungInfection-Test; no test section" in text
    dl = read_json(tmp_path / "train_only/datalist.json")
    assert "test" not in dl and len(dl["training"]) == 4
    # pseudo-labels absent under --train-labels both: training still gets the doctor slices
    src = make_covid_tree(tmp_path / "src2", n_doctor=10)
    shutil.rmtree(src / "Dataset/TrainingSet/LungInfection-Train/Pseudo-label")
    assert _run("--src", src, "--out", tmp_path / "both", "--train-labels", "both") == 0
    assert "Pseudo-label; training from the other parts only" in capsys.readouterr().out
    dl = read_json(tmp_path / "both/datalist.json")
    assert len(dl["training"]) == 8 and len(dl["validation"]) == 2 and len(dl["test"]) == 2
    # nothing of the task there: an error naming what was looked for
    empty = tmp_path / "empty/Dataset/TestingSet"
    empty.mkdir(parents=True)
    assert _run("--src", empty.parent, "--out", tmp_path / "none") == 1
    err = capsys.readouterr().err
    assert "none of the folders of --task binary found" in err and "LungInfection-Test" in err
    assert not (tmp_path / "none" / "datalist.json").exists()


def test_png_copies_convert_as_the_distributed_jpeg(tmp_path, capsys):
    """The help says PNG/JPEG/BMP/TIFF are accepted: a copy whose slices were re-saved as PNG converts alike."""
    src = make_covid_tree(tmp_path / "src")
    for jpg in (src / "Dataset").rglob("*.jpg"):
        save(jpg.with_suffix(".png"), read_png(jpg))
        jpg.unlink()
    assert _run("--src", src, "--out", tmp_path / "out") == 0
    assert "converted 9, reused 0, skipped 0 (training 4, validation 3, test 2)" in capsys.readouterr().out


@pytest.mark.realdata
def test_real_covid_semiseg(real_dataset, tmp_path, capsys):
    src = real_dataset("covid_semiseg")
    out = tmp_path / "out"
    assert _run("--src", src, "--out", out, "--limit", "3") == 0
    assert "converted 9, reused 0, skipped 0 (training 3, validation 3, test 3)" in capsys.readouterr().out
    dl = read_json(out / "datalist.json")
    for entry in dl["training"]:
        soft = read_png(out / entry["label_soft"])
        assert len(np.unique(soft)) > 2  # real pseudo-labels are soft
        assert np.array_equal(read_png(out / entry["label"]), (soft >= 128).astype(np.uint8))
        assert read_png(out / entry["image"]).shape == soft.shape
    assert all(set(np.unique(read_png(out / e["label"]))) <= {0, 1} for e in dl["test"])
    assert _run("--src", src, "--out", tmp_path / "mc", "--task", "multiclass", "--limit", "3") == 0
    mc = read_json(tmp_path / "mc/datalist.json")
    assert set(np.unique(np.concatenate([read_png(tmp_path / "mc" / e["label"]).ravel() for e in mc["test"]]))) <= {
        0, 1, 2}


# --------------------------------------------------------------------------------------------- the meta section
def test_meta_count_moves_doctor_slices_out_of_validation(tmp_path, capsys):
    src = make_covid_tree(tmp_path / "src", n_doctor=10)
    out = tmp_path / "out"
    assert _run("--src", src, "--out", out, "--meta-count", 4) == 0
    dl = read_json(out / "datalist.json")
    meta = {e["image"] for e in dl["meta"]}
    validation = {e["image"] for e in dl["validation"]}
    assert len(meta) == 4 and len(validation) == 6 and not meta & validation
    assert all(m.startswith("images/doctor/") for m in meta)  # radiologists' masks: the clean set
    assert all(set(e) == {"image", "label", "label_soft"} for e in dl["meta"])
    assert len(dl["training"]) == 4 and all("pseudo" in e["image"] for e in dl["training"])
    for e in dl["meta"]:
        assert set(np.unique(read_png(out / e["label"]))) <= {0, 1}
    # fixed by --seed, and --meta-fraction is the same choice as a share
    assert _run("--src", src, "--out", tmp_path / "again", "--meta-fraction", 0.4) == 0
    assert {e["image"] for e in read_json(tmp_path / "again" / "datalist.json")["meta"]} == meta
    assert _run("--src", src, "--out", tmp_path / "seed1", "--meta-count", 4, "--seed", 1) == 0
    assert {e["image"] for e in read_json(tmp_path / "seed1" / "datalist.json")["meta"]} != meta


@pytest.mark.parametrize("mode", ["both", "doctor"])
def test_meta_slices_are_left_out_of_training_and_validation(tmp_path, mode):
    src = make_covid_tree(tmp_path / "src", n_doctor=10)
    out = tmp_path / mode
    assert _run("--src", src, "--out", out, "--train-labels", mode, "--meta-count", 3, "--val-fraction", 0.25) == 0
    dl = read_json(out / "datalist.json")
    meta = {e["image"] for e in dl["meta"]}
    doctor = [e["image"] for s in ("training", "validation") for e in dl[s] if "/doctor/" in e["image"]]
    assert len(meta) == 3 and len(doctor) == 7 and not meta & set(doctor)
    assert len(dl["validation"]) == 2  # 0.25 of the 7 left


def test_meta_for_the_multiclass_task(tmp_path):
    src = make_covid_tree(tmp_path / "src", n_mc=6)
    assert _run("--src", src, "--out", tmp_path / "out", "--task", "multiclass", "--meta-count", 2) == 0
    dl = read_json(tmp_path / "out" / "datalist.json")
    assert len(dl["meta"]) == 2 and len(dl["training"]) + len(dl["validation"]) == 4


@pytest.mark.parametrize(("argv", "match"), [
    (("--meta-count", 3), "--meta-count 3: 3 meta slice"),  # 3 doctor slices: none would be left to validate on
    (("--meta-count", 0), "--meta-count 0"),
])
def test_bad_meta_options_name_the_option(tmp_path, capsys, argv, match):
    src = make_covid_tree(tmp_path / "src", n_doctor=3)
    assert _run("--src", src, "--out", tmp_path / "out", *argv) != 0
    assert match in capsys.readouterr().err
    assert not (tmp_path / "out" / "datalist.json").exists()
    with pytest.raises(SystemExit):  # argparse: one of the two, and a share in (0, 1)
        _run("--src", src, "--out", tmp_path / "o2", "--meta-count", 1, "--meta-fraction", 0.5)
    with pytest.raises(SystemExit):
        _run("--src", src, "--out", tmp_path / "o3", "--meta-fraction", 1.5)


def test_real_covid_semiseg_meta_set(real_dataset, tmp_path, capsys):
    src = real_dataset("covid_semiseg")
    out = tmp_path / "out"
    assert _run("--src", src, "--out", out, "--limit", "8", "--meta-count", 3) == 0
    assert "(training 8, validation 5, test 8, meta 3)" in capsys.readouterr().out
    dl = read_json(out / "datalist.json")
    assert all(e["image"].startswith("images/doctor/") for e in dl["meta"])
    for entry in dl["meta"]:  # radiologists' masks: exactly binary, unlike the soft pseudo-labels
        assert set(np.unique(read_png(out / entry["label"]))) <= {0, 1}
