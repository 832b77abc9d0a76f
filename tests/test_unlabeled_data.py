"""The ``unlabeled`` datalist section: ``covid_semiseg --unlabeled pseudo``, ``--labeled-fraction`` of ``ph2``,
``folder`` and ``synthetic``, and the bundle's error when the section is missing or empty."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from fixtures_datasets import blob_mask, grey_image, make_covid_tree, make_ph2_distributed, read_json, read_png, save

from data_prep.__main__ import main
from data_prep.convert import labeled_keys
from data_prep.converters.covid_semiseg import unlabeled_volumes, volume_of
from data_prep.io import DataPrepError


def _covid_with_volumes(root, volumes: dict[str, int]):
    """The fake Inf-Net tree, its pseudo-labelled slices replaced by ``volumes`` (name → number of slices)."""
    src = make_covid_tree(root, n_doctor=10, n_pseudo=0)
    pseudo = src / "Dataset/TrainingSet/LungInfection-Train/Pseudo-label"
    for v, (name, n) in enumerate(volumes.items()):
        for i in range(1, n + 1):
            save(pseudo / "Imgs" / f"{name}_{i}.jpg", grey_image(24, 20, 100 * v + i))
            save(pseudo / "GT" / f"{name}_{i}.png", blob_mask(24, 20, i) * 200)
    return src


VOLUMES = {"Data-1_coronacases_org_001": 3, "Data-1_coronacases_org_002": 2,
           "Data-1_radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm": 4}


def test_covid_unlabeled_pseudo_lists_the_images_without_masks(tmp_path, capsys):
    src = _covid_with_volumes(tmp_path / "src", VOLUMES)
    out = tmp_path / "out"
    assert main(["covid_semiseg", "--src", str(src), "--out", str(out), "--unlabeled", "pseudo"]) == 0
    text = capsys.readouterr().out
    assert "(training 8, validation 2, test 2, unlabeled 9)" in text
    assert "9 pseudo-labelled images of 3 of 3 CT volume(s) in 'unlabeled', without their masks" in text
    dl = read_json(out / "datalist.json")
    # the labelled sets are the doctor-labelled slices: --train-labels doctor is implied
    assert all(e["image"].startswith("images/doctor/") for s in ("training", "validation") for e in dl[s])
    assert all(set(e) == {"image", "volume"} for e in dl["unlabeled"])
    assert {e["volume"] for e in dl["unlabeled"]} == set(VOLUMES)
    first = next(e for e in dl["unlabeled"] if e["image"] == "images/pseudo/Data-1_coronacases_org_002_2.png")
    assert first["volume"] == "Data-1_coronacases_org_002"
    jpeg = src / "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs/Data-1_coronacases_org_002_2.jpg"
    assert np.array_equal(read_png(out / first["image"]), np.asarray(Image.open(jpeg).convert("L")))
    # no mask of a pseudo-labelled slice is read or written
    assert not (out / "labels" / "pseudo").exists() and not (out / "label_soft" / "pseudo").exists()
    summary = read_json(out / "summary.json")
    assert summary["counts"]["unlabeled"] == 9 and "unlabeled" not in summary["labels"]


def test_covid_unlabeled_fraction_keeps_whole_volumes(tmp_path, capsys):
    src = _covid_with_volumes(tmp_path / "src", VOLUMES)
    out = tmp_path / "out"
    assert main(["covid_semiseg", "--src", str(src), "--out", str(out), "--unlabeled", "pseudo",
                 "--unlabeled-fraction", "0.5", "--seed", "4"]) == 0
    dl = read_json(out / "datalist.json")
    kept = {e["volume"] for e in dl["unlabeled"]}
    assert len(kept) == 2  # round(0.5 * 3)
    # every slice of a kept volume is there, none of the others
    assert len(dl["unlabeled"]) == sum(VOLUMES[v] for v in kept)
    assert kept == unlabeled_volumes([f"{v}_{i}" for v, n in VOLUMES.items() for i in range(1, n + 1)], 0.5, 4)


def test_volume_of_strips_the_slice_number():
    assert volume_of("Data-1_coronacases_org_001_17") == "Data-1_coronacases_org_001"
    assert volume_of("Data-1_radiopaedia_org_covid-19-pneumonia-10_85902_3-dcm_207") == (
        "Data-1_radiopaedia_org_covid-19-pneumonia-10_85902_3-dcm")
    assert volume_of("scan") == "scan" and volume_of("12") == "12"


@pytest.mark.parametrize(("argv", "match"), [
    (["--unlabeled", "pseudo", "--train-labels", "pseudo"], "cannot be combined with --train-labels pseudo"),
    (["--unlabeled", "pseudo", "--train-labels", "both"], "cannot be combined with --train-labels both"),
    (["--unlabeled-fraction", "0.5"], "--unlabeled-fraction .* needs --unlabeled pseudo"),
    (["--unlabeled", "pseudo", "--unlabeled-fraction", "1.5"], "--unlabeled-fraction 1.5: must lie in"),
])
def test_covid_bad_unlabeled_options_name_the_option(tmp_path, capsys, argv, match):
    src = _covid_with_volumes(tmp_path / "src", VOLUMES)
    assert main(["covid_semiseg", "--src", str(src), "--out", str(tmp_path / "out"), *argv]) == 1
    assert re.search(match, capsys.readouterr().err)


def test_real_covid_semiseg_unlabeled_section(real_dataset, tmp_path, capsys):
    """The real layout with --limit (each part's first slices): the volumes come from the real file names."""
    src = real_dataset("covid_semiseg")
    out = tmp_path / "out"
    assert main(["covid_semiseg", "--src", str(src), "--out", str(out), "--unlabeled", "pseudo", "--limit",
                 "120"]) == 0
    dl = read_json(out / "datalist.json")
    assert len(dl["unlabeled"]) == 120 and len(dl["training"]) + len(dl["validation"]) == 50
    # natural order: the first 100 slices of coronacases_org_001 (it has 100), then the next volume's
    assert {e["volume"] for e in dl["unlabeled"]} == {"Data-1_coronacases_org_001", "Data-1_coronacases_org_002"}
    assert sum(e["volume"] == "Data-1_coronacases_org_001" for e in dl["unlabeled"]) == 100


# --------------------------------------------------------------------------------------------- --labeled-fraction
def test_labeled_keys_is_seeded_order_free_and_counts():
    keys = [f"case{i}" for i in range(20)]
    a = labeled_keys(keys, 0.25, 0)
    assert len(a) == 5 and a == labeled_keys(list(reversed(keys)), 0.25, 0)
    assert labeled_keys(keys, 0.25, 1) != a
    assert len(labeled_keys(keys, 0.1, 0)) == 2
    with pytest.raises(DataPrepError, match="--labeled-fraction 0.01: keeps the labels of 0 of 20"):
        labeled_keys(keys, 0.01, 0)
    with pytest.raises(DataPrepError, match="--labeled-fraction 0.99: keeps the labels of 20 of 20"):
        labeled_keys(keys, 0.99, 0)
    with pytest.raises(DataPrepError, match="strictly between 0 and 1"):
        labeled_keys(keys, 1.0, 0)


def test_ph2_labeled_fraction_moves_training_images_to_unlabeled(tmp_path, capsys):
    cases = {f"IMD{i:03d}": (24, 32) for i in range(2, 22)}
    src = make_ph2_distributed(tmp_path / "PH2", cases)
    full, semi = tmp_path / "full", tmp_path / "semi"
    assert main(["ph2", "--src", str(src), "--out", str(full), "--seed", "2"]) == 0
    assert main(["ph2", "--src", str(src), "--out", str(semi), "--seed", "2", "--labeled-fraction", "0.25"]) == 0
    text = capsys.readouterr().out
    assert "--labeled-fraction 0.25: 4 of 14 training cases keep their labels (seed 2)" in text
    a, b = read_json(full / "datalist.json"), read_json(semi / "datalist.json")
    # validation and test are unchanged; training splits into labelled + unlabelled
    assert a["validation"] == b["validation"] and a["test"] == b["test"]
    assert len(b["training"]) == 4 and len(b["unlabeled"]) == 10
    assert {e["image"] for e in b["training"]} | {e["image"] for e in b["unlabeled"]} == {
        e["image"] for e in a["training"]}
    assert all(set(e) == {"image"} for e in b["unlabeled"])
    kept = labeled_keys([e["image"][len("images/"):-len(".png")] for e in a["training"]], 0.25, 2)
    assert {e["image"][len("images/"):-len(".png")] for e in b["training"]} == kept
    # the unlabelled images are written, their masks are not
    for e in b["unlabeled"]:
        assert (semi / e["image"]).is_file()
        assert not (semi / e["image"].replace("images/", "labels/")).exists()


def test_ph2_labeled_fraction_rejects_out_of_range(tmp_path, capsys):
    src = make_ph2_distributed(tmp_path / "PH2", {f"IMD{i:03d}": (16, 16) for i in range(2, 6)})
    with pytest.raises(SystemExit):
        main(["ph2", "--src", str(src), "--out", str(tmp_path / "o"), "--labeled-fraction", "1"])
    assert "argument --labeled-fraction: 1: must lie strictly between 0 and 1" in capsys.readouterr().err
    assert main(["ph2", "--src", str(src), "--out", str(tmp_path / "o"), "--labeled-fraction", "0.1"]) == 1
    assert "--labeled-fraction 0.1: keeps the labels of 0 of 3 training case(s)" in capsys.readouterr().err


def test_folder_labeled_fraction_multiclass(tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(10):
        save(src / "images" / f"s{i}.png", grey_image(16, 16, i))
        save(src / "masks" / f"s{i}.png", (blob_mask(16, 16, i) * 2).astype(np.uint8))
    out = tmp_path / "out"
    assert main(["folder", "--src", str(src), "--out", str(out), "--classes", "3", "--split", "0.8", "0.2", "0",
                 "--labeled-fraction", "0.5"]) == 0
    dl = read_json(out / "datalist.json")
    assert len(dl["training"]) == 4 and len(dl["unlabeled"]) == 4 and len(dl["validation"]) == 2
    assert all(set(e) == {"image", "label"} for e in dl["training"])
    assert all(set(e) == {"image"} for e in dl["unlabeled"])


@pytest.mark.parametrize("dims", [2, 3])
def test_synthetic_labeled_fraction_changes_only_the_datalist(tmp_path, dims):
    from data_prep.synthetic import make_synthetic_dataset

    kw = dict(dims=dims, n_train=8, n_val=2, n_test=1, size=16 if dims == 3 else 24, verbose=False)
    make_synthetic_dataset(tmp_path / "full", **kw)
    make_synthetic_dataset(tmp_path / "semi", labeled_fraction=0.25, **kw)
    full = json.loads((tmp_path / "full" / "datalist.json").read_text())
    semi = json.loads((tmp_path / "semi" / "datalist.json").read_text())
    assert len(semi["training"]) == 2 and len(semi["unlabeled"]) == 6
    assert semi["training"] == [e for e in full["training"] if e["image"] in {x["image"] for x in semi["training"]}]
    assert sorted(e["image"] for e in semi["unlabeled"]) == sorted(
        e["image"] for e in full["training"] if e not in semi["training"])
    assert all(set(e) == {"image"} for e in semi["unlabeled"])
    ext = ".png" if dims == 2 else ".nii.gz"
    for rel in (f"images/train_000{ext}", f"labels_noisy/train_003{ext}", f"labels/val_001{ext}"):
        assert (tmp_path / "full" / rel).read_bytes() == (tmp_path / "semi" / rel).read_bytes(), rel
    with pytest.raises(DataPrepError, match="--labeled-fraction 0.05"):
        make_synthetic_dataset(tmp_path / "bad", labeled_fraction=0.05, **kw)


def test_synthetic_labeled_fraction_rerun_and_change(tmp_path, capsys):
    from data_prep.synthetic import make_synthetic_dataset

    kw = dict(dims=2, n_train=8, n_val=1, n_test=1, size=24)
    make_synthetic_dataset(tmp_path, labeled_fraction=0.5, **kw)
    capsys.readouterr()
    make_synthetic_dataset(tmp_path, labeled_fraction=0.5, **kw)
    assert "up to date" in capsys.readouterr().out
    (tmp_path / "images" / "train_000.png").unlink()  # an unlabelled or labelled image: either is checked
    make_synthetic_dataset(tmp_path, labeled_fraction=0.5, **kw)
    assert "up to date" not in capsys.readouterr().out
    make_synthetic_dataset(tmp_path, labeled_fraction=0.25, **kw)
    assert len(json.loads((tmp_path / "datalist.json").read_text())["unlabeled"]) == 6
    make_synthetic_dataset(tmp_path, **kw)
    assert "unlabeled" not in json.loads((tmp_path / "datalist.json").read_text())


# --------------------------------------------------------------------------------------------- the bundle's loader
@pytest.mark.parametrize("sections", [{}, {"unlabeled": []}])
def test_missing_or_empty_unlabeled_section_names_the_data_prep_option(tmp_path, sections):
    from dale_monai.bundle import load_datalist

    (tmp_path / "datalist.json").write_text(json.dumps({"training": [], **sections}))
    hint = "re-create it with: python -m data_prep synthetic --out {out} --labeled-fraction 0.25"
    with pytest.raises(ValueError, match="section 'unlabeled' is missing or empty") as err:
        load_datalist(str(tmp_path), "unlabeled", "python -m data_prep synthetic --out {out}", missing_hint=hint)
    assert f"--out {tmp_path} --labeled-fraction 0.25" in str(err.value)
