"""``synapse``: TransUNet's train_npz slices and test_vol_h5 volumes."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_datasets import make_synapse, read_json

from data_prep.__main__ import main

h5py = pytest.importorskip("h5py", reason="h5py reads Synapse test volumes")
nib = pytest.importorskip("nibabel")


def test_synapse_slices_and_volumes(tmp_path, capsys):
    src = make_synapse(tmp_path / "src", cases=("case0005", "case0006", "case0007"), slices=2)
    out = tmp_path / "out"
    assert main(["synapse", "--src", str(src), "--out", str(out), "--val-fraction", "0.34"]) == 0
    assert "synapse: converted 7, reused 0, skipped 0 (training 4, validation 2, test 1)" in capsys.readouterr().out
    dl = read_json(out / "datalist.json")
    val_cases = {e["image"].split("/")[-1].split("_slice")[0] for e in dl["validation"]}
    train_cases = {e["image"].split("/")[-1].split("_slice")[0] for e in dl["training"]}
    assert len(val_cases) == 1 and not val_cases & train_cases  # split by case
    with np.load(src / "train_npz/case0005_slice001.npz") as z:
        image, label = z["image"], z["label"]
    img = nib.load(str(out / "images/train/case0005_slice001.nii.gz"))
    assert img.get_fdata().shape == (16, 20) and np.allclose(img.get_fdata(), image)
    assert np.array_equal(np.asarray(nib.load(str(out / "labels/train/case0005_slice001.nii.gz")).dataobj), label)
    assert dl["labels"]["8"] == "pancreas" and len(dl["labels"]) == 9
    with h5py.File(src / "test_vol_h5/case0001.npy.h5") as f:
        vol_label = f["label"][:]
    test_label = np.asarray(nib.load(str(out / dl["test"][0]["label"])).dataobj)
    assert test_label.shape == (16, 20, 3) and np.array_equal(test_label[..., 2], vol_label[2])


def test_synapse_list_entries_missing_and_bad_labels(tmp_path, capsys):
    src = make_synapse(tmp_path / "src", cases=("case0005",), slices=3)
    (src / "train_npz/case0005_slice001.npz").unlink()
    np.savez(src / "train_npz/case0005_slice002.npz", image=np.zeros((16, 20)), label=np.full((16, 20), 9.0))
    np.savez(src / "train_npz/case0099_slice000.npz", image=np.zeros((4, 4)), label=np.zeros((4, 4)))  # not listed
    (src / "test_vol_h5/case0001.npy.h5").write_bytes(b"not hdf5")
    assert main(["synapse", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "converted 1, reused 0, skipped 3" in text
    assert "case0005_slice001.npz: listed in train.txt but missing" in text
    assert "case0005_slice002.npz: unexpected label values [9.0]" in text
    assert "case0001.npy.h5: unreadable or truncated HDF5" in text


def test_synapse_without_lists_takes_every_file(tmp_path, capsys):
    src = make_synapse(tmp_path / "src", cases=("case0005",), slices=2, lists=False)
    assert main(["synapse", "--src", str(src), "--out", str(tmp_path / "out"), "--val-fraction", "0"]) == 0
    assert "converted 3, reused 0, skipped 0 (training 2, validation 0, test 1)" in capsys.readouterr().out
    assert main(["synapse", "--src", str(tmp_path), "--out", str(tmp_path / "o2")]) == 1
    assert "missing folder" in capsys.readouterr().err
