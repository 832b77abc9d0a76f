"""``python -m data_prep decathlon``: the Medical Segmentation Decathlon layout, 3D (CT-like) and 4D multi-modal
(BraTS-like) tasks, written by the test in that exact layout (dataset.json, imagesTr/, labelsTr/, imagesTs/,
and the ``._*`` resource forks the distributed tarballs hold)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep.__main__ import main

AFFINE = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 80.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])


def _task(root: Path, name: str, modality: dict, labels: dict, n_train: int, n_test: int, shape=(12, 10, 6)) -> Path:
    """A task folder in the Decathlon layout; image voxel values encode (case, channel) for checking."""
    task = root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    n_mod = len(modality)
    training, test = [], []
    prefix = name.split("_")[1].lower()
    for i in range(n_train + n_test):
        case = f"{prefix}_{i:03d}"
        arr = np.stack([np.full(shape, 100 * i + c, np.int16) for c in range(n_mod)], -1)
        img = arr[..., 0] if n_mod == 1 else arr
        sub = "imagesTr" if i < n_train else "imagesTs"
        nib.save(nib.Nifti1Image(img, AFFINE), task / sub / f"{case}.nii.gz")
        (task / sub / f"._{case}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
        if i < n_train:
            label = rng.integers(0, len(labels), size=shape).astype(np.uint8)
            nib.save(nib.Nifti1Image(label, AFFINE), task / "labelsTr" / f"{case}.nii.gz")
            training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        else:
            test.append(f"./imagesTs/{case}.nii.gz")
    doc = {"name": name.split("_")[1], "description": "test task", "tensorImageSize": "4D" if n_mod > 1 else "3D",
           "modality": {str(k): v for k, v in modality.items()}, "labels": {str(k): v for k, v in labels.items()},
           "numTraining": n_train, "numTest": n_test, "training": training, "test": test}
    (task / "dataset.json").write_text(json.dumps(doc, indent=4))
    return task


def _datalist(out: Path) -> dict:
    return json.loads((out / "datalist.json").read_text())


def test_3d_task(tmp_path):
    task = _task(tmp_path, "Task09_Spleen", {0: "CT"}, {0: "background", 1: "spleen"}, 10, 2)
    out = tmp_path / "out"
    assert main(["decathlon", "--src", str(task), "--out", str(out)]) == 0
    doc = _datalist(out)
    assert doc["labels"] == {"0": "background", "1": "spleen"}
    assert [len(doc[s]) for s in ("training", "validation", "test", "unlabeled")] == [7, 1, 2, 2]
    entries = doc["training"] + doc["validation"] + doc["test"]
    assert len({e["image"] for e in entries}) == 10
    for entry in entries:
        image = nib.load(out / entry["image"])
        label = nib.load(out / entry["label"])
        case = int(Path(entry["image"]).name.split("_")[1].split(".")[0])
        assert image.shape == label.shape == (12, 10, 6)
        np.testing.assert_allclose(image.affine, AFFINE, atol=1e-5)
        np.testing.assert_allclose(label.affine, AFFINE, atol=1e-5)
        assert np.all(np.asarray(image.dataobj) == 100 * case)  # values (HU) kept
        source = nib.load(task / "labelsTr" / Path(entry["image"]).name)
        np.testing.assert_array_equal(np.asarray(label.dataobj), np.asarray(source.dataobj))
    assert all("label" not in e and "imagesTs" in e["image"] for e in doc["unlabeled"])
    # a re-run reuses everything; --images-ts skip into another folder leaves the test images out
    assert main(["decathlon", "--src", str(task), "--out", str(out)]) == 0
    assert main(["decathlon", "--src", str(task), "--out", str(tmp_path / "o2"), "--images-ts", "skip"]) == 0
    assert "unlabeled" not in _datalist(tmp_path / "o2")


def test_4d_multimodal_task_kept_as_channels_or_selected(tmp_path):
    modality = {0: "FLAIR", 1: "T1w", 2: "t1gd", 3: "T2w"}
    labels = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
    task = _task(tmp_path, "Task01_BrainTumour", modality, labels, 5, 1)
    out = tmp_path / "all"
    assert main(["decathlon", "--src", str(task), "--out", str(out), "--split", "0.6", "0.2", "0.2"]) == 0
    doc = _datalist(out)
    assert doc["labels"] == {str(k): v for k, v in labels.items()}
    entry = doc["training"][0]
    image = nib.load(out / entry["image"])
    case = int(Path(entry["image"]).name.split("_")[1].split(".")[0])
    assert image.shape == (12, 10, 6, 4)
    assert [int(np.asarray(image.dataobj)[0, 0, 0, c]) for c in range(4)] == [100 * case + c for c in range(4)]
    assert nib.load(out / entry["label"]).shape == (12, 10, 6)
    # MONAI loads the 4 modalities as the channels of a 4-channel bundle
    from monai.transforms import EnsureChannelFirst, LoadImage

    loaded = EnsureChannelFirst()(LoadImage(image_only=True)(str(out / entry["image"])))
    assert tuple(loaded.shape) == (4, 12, 10, 6)

    one = tmp_path / "flair"
    assert main(["decathlon", "--src", str(task), "--out", str(one), "--modalities", "flair", "--binary"]) == 0
    doc = _datalist(one)
    assert doc["labels"] == {"0": "background", "1": "edema + non-enhancing tumor + enhancing tumour"}
    entry = doc["training"][0]
    image = nib.load(one / entry["image"])
    case = int(Path(entry["image"]).name.split("_")[1].split(".")[0])
    assert image.shape == (12, 10, 6) and int(np.asarray(image.dataobj)[0, 0, 0]) == 100 * case
    assert set(np.unique(np.asarray(nib.load(one / entry["label"]).dataobj))) <= {0, 1}
    two = tmp_path / "two"
    assert main(["decathlon", "--src", str(task), "--out", str(two), "--modalities", "3,0"]) == 0
    image = nib.load(two / _datalist(two)["training"][0]["image"])
    assert image.shape == (12, 10, 6, 2)


def test_bad_input_is_named(tmp_path, capsys):
    task = _task(tmp_path, "Task09_Spleen", {0: "CT"}, {0: "background", 1: "spleen"}, 4, 0)
    # a label in another grid is skipped naming both files; the others are converted
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 6), np.uint8), np.eye(4)), task / "labelsTr" / "spleen_001.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 5), np.uint8), AFFINE), task / "labelsTr" / "spleen_002.nii.gz")
    out = tmp_path / "out"
    assert main(["decathlon", "--src", str(task), "--out", str(out), "--split", "1", "0", "0"]) == 0
    printed = capsys.readouterr().out
    assert "spleen_001.nii.gz: its affine differs" in printed and "spleen_002.nii.gz: shape 12x10x5" in printed
    assert len(_datalist(out)["training"]) == 2
    assert main(["decathlon", "--src", str(task), "--out", str(tmp_path / "x"), "--modalities", "T2w"]) == 1
    assert "'T2w' is not one of this task's modalities (0: CT)" in capsys.readouterr().err
    assert main(["decathlon", "--src", str(tmp_path), "--out", str(tmp_path / "y")]) == 1
    assert "no dataset.json" in capsys.readouterr().err
    doc = json.loads((task / "dataset.json").read_text())
    doc["training"][0]["image"] = "../../etc/passwd"
    (task / "dataset.json").write_text(json.dumps(doc))
    assert main(["decathlon", "--src", str(task), "--out", str(tmp_path / "z"), "--overwrite"]) == 0
    assert "points outside the task folder" in capsys.readouterr().out


@pytest.mark.parametrize("broken", [{"labels": {"1": "x"}}, {"training": [{"image": "a.nii.gz"}]}, {"modality": []}])
def test_malformed_dataset_json(tmp_path, capsys, broken):
    task = _task(tmp_path, "Task09_Spleen", {0: "CT"}, {0: "background", 1: "spleen"}, 2, 0)
    doc = {**json.loads((task / "dataset.json").read_text()), **broken}
    (task / "dataset.json").write_text(json.dumps(doc))
    assert main(["decathlon", "--src", str(task), "--out", str(tmp_path / "out")]) == 1
    assert "dataset.json" in capsys.readouterr().err
