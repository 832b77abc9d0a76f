"""The mask rule of ``data_prep.masks`` through every converter that reads masks: 0/max masks of any bit depth are
binary, multi-level masks keep their class indices, and a threshold that would empty a mask is refused for that
file (naming it, the threshold and the mask's maximum) instead of being counted as converted. And the ``nifti``
converter keeps its sources' spatial headers on images and labels.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from fixtures_datasets import (
    blob_mask,
    grey_image,
    make_covid_tree,
    make_mosmed,
    make_polyp_benchmark,
    make_synapse,
    read_json,
    read_png,
    rgb_image,
    save,
)
from PIL import Image

from data_prep.__main__ import main


def _blob(h, w, seed):
    return blob_mask(h, w, seed).astype(np.int64)


def _faint(h, w, seed):
    """A soft mask whose foreground never reaches 128: values 0..100."""
    return (_blob(h, w, seed) * 100 - (np.arange(w) % 3)).clip(0).astype(np.uint8)


def _counts(text):
    line = next(line for line in text.splitlines() if ": converted " in line)
    return line


# --------------------------------------------------------------------------------------------- folder
def _encodings_folder(src, h=20, w=22):
    """One image per encoding: 16-bit PNG 0/65535, 0/1 PNG, 16-bit TIFF 0/65535, 1-bit PNG, 16-bit 0/1 PNG."""
    masks = {
        "png16": (_blob(h, w, 0) * 65535).astype(np.uint16),
        "zero_one": _blob(h, w, 1).astype(np.uint8),
        "tif16": (_blob(h, w, 2) * 65535).astype(np.uint16),
        "zero_one_16": _blob(h, w, 4).astype(np.uint16),
    }
    for i, (name, arr) in enumerate(masks.items()):
        save(src / "images" / f"{name}.png", grey_image(h, w, i))
        save(src / "masks" / f"{name}.{'tif' if name == 'tif16' else 'png'}", arr)
    save(src / "images" / "bilevel.png", grey_image(h, w, 3))
    Image.fromarray(_blob(h, w, 3).astype(bool)).save(src / "masks" / "bilevel.png")
    seeds = {"png16": 0, "zero_one": 1, "tif16": 2, "bilevel": 3, "zero_one_16": 4}
    return seeds


@pytest.mark.parametrize("threshold", [[], ["--threshold", "128"]])
def test_folder_decodes_every_bit_depth_and_refuses_an_erasing_threshold(tmp_path, capsys, threshold):
    src = tmp_path / "src"
    seeds = _encodings_folder(src)
    save(src / "images" / "faint.png", grey_image(20, 22, 9))
    save(src / "masks" / "faint.png", _faint(20, 22, 9))
    out = tmp_path / "out"
    assert main(["folder", "--src", str(src), "--out", str(out), "--split", "1", "0", "0", *threshold]) == 0
    text = capsys.readouterr().out
    assert "folder: converted 5, reused 0, skipped 1" in _counts(text)
    for name, seed in seeds.items():
        np.testing.assert_array_equal(read_png(out / "labels" / f"{name}.png"), _blob(20, 22, seed))
    if threshold:
        assert "masks/faint.png: mask values up to 100 never reach --threshold 128" in text
    else:
        assert "masks/faint.png: unexpected mask values" in text
    assert not (out / "labels" / "faint.png").exists()


def test_folder_16_bit_class_masks_keep_their_indices(tmp_path, capsys):
    src = tmp_path / "src"
    classes = (_blob(16, 16, 0) + 2 * _blob(16, 16, 5) * (1 - _blob(16, 16, 0))).astype(np.uint16)
    save(src / "images" / "a.png", grey_image(16, 16, 0))
    save(src / "masks" / "a.png", classes)
    assert main(["folder", "--src", str(src), "--out", str(tmp_path / "out"), "--classes", "3",
                 "--split", "1", "0", "0"]) == 0
    np.testing.assert_array_equal(read_png(tmp_path / "out" / "labels" / "a.png"), classes)


# --------------------------------------------------------------------------------------------- ph2, mosmed
def test_ph2_resized_layout_with_16_bit_and_0_1_masks(tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(3):
        save(src / "images" / f"IMD00{i}.png", rgb_image(24, 30, i))
    save(src / "masks" / "IMD000.png", (_blob(24, 30, 0) * 65535).astype(np.uint16))
    save(src / "masks" / "IMD001.png", _blob(24, 30, 1).astype(np.uint8))
    save(src / "masks" / "IMD002.png", _faint(24, 30, 2))
    out = tmp_path / "out"
    assert main(["ph2", "--src", str(src), "--out", str(out), "--split", "1", "0", "0", "--threshold", "128"]) == 0
    text = capsys.readouterr().out
    assert "ph2: converted 2, reused 0, skipped 1" in _counts(text)
    assert "IMD002.png: mask values up to 100 never reach --threshold 128" in text
    for i in range(2):
        np.testing.assert_array_equal(read_png(out / "labels" / f"IMD00{i}.png"), _blob(24, 30, i))


def test_mosmed_16_bit_masks(tmp_path, capsys):
    src = make_mosmed(tmp_path / "src")
    save(src / "Train_Folder/labelcol/study_Tr_0.png", (_blob(32, 32, 0) * 65535).astype(np.uint16))
    save(src / "Val_Folder/labelcol/study_Va_1.png", _blob(32, 32, 1).astype(np.uint8))
    out = tmp_path / "out"
    assert main(["mosmed", "--src", str(src), "--out", str(out), "--threshold", "128"]) == 0
    assert "mosmed: converted 7, reused 0, skipped 0" in _counts(capsys.readouterr().out)
    np.testing.assert_array_equal(read_png(out / "labels/training/study_Tr_0.png"), _blob(32, 32, 0))
    np.testing.assert_array_equal(read_png(out / "labels/validation/study_Va_1.png"), _blob(32, 32, 1))


# --------------------------------------------------------------------------------------------- polyps
def test_cvc_clinicdb_16_bit_tiff_masks(tmp_path, capsys):
    src = tmp_path / "src"
    for i in (1, 2):
        save(src / "Original" / f"{i}.tif", rgb_image(28, 36, i))
        save(src / "Ground Truth" / f"{i}.tif", (_blob(28, 36, i) * 65535).astype(np.uint16))
    out = tmp_path / "out"
    assert main(["cvc_clinicdb", "--src", str(src), "--out", str(out), "--split", "1", "0", "0"]) == 0
    assert "cvc_clinicdb: converted 2, reused 0, skipped 0" in _counts(capsys.readouterr().out)
    for i in (1, 2):
        np.testing.assert_array_equal(read_png(out / "labels" / f"{i}.png"), _blob(28, 36, i))


def test_polyp_benchmark_default_threshold_keeps_0_1_masks_and_refuses_faint_ones(tmp_path, capsys):
    """The benchmark is always thresholded (at 128 by default): a 0/1 mask there used to become all background."""
    src = make_polyp_benchmark(tmp_path / "src", n_train=3, n_test=1)
    save(src / "TrainDataset/mask/1.png", _blob(32, 32, 0).astype(np.uint8))
    save(src / "TrainDataset/mask/2.png", (_blob(32, 32, 1) * 65535).astype(np.uint16))
    save(src / "TrainDataset/mask/3.png", _faint(32, 32, 2))
    out = tmp_path / "out"
    assert main(["polyp_benchmark", "--src", str(src), "--out", str(out), "--val-fraction", "0"]) == 0
    text = capsys.readouterr().out
    assert "polyp_benchmark: converted 7, reused 0, skipped 1" in _counts(text)
    assert "TrainDataset/mask/3.png: mask values up to 100 never reach --threshold 128" in text
    np.testing.assert_array_equal(read_png(out / "labels/train/1.png"), _blob(32, 32, 0))
    np.testing.assert_array_equal(read_png(out / "labels/train/2.png"), _blob(32, 32, 1))


# --------------------------------------------------------------------------------------------- covid
def test_covid_semiseg_16_bit_doctor_masks_and_faint_pseudo_labels(tmp_path, capsys):
    root = make_covid_tree(tmp_path / "src", n_doctor=2, n_pseudo=3, n_test=1, n_mc=2)
    doctor = root / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/GT/0.png"
    save(doctor, (_blob(40, 36, 0) * 65535).astype(np.uint16))
    pseudo = sorted((root / "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/GT").glob("*.png"))
    h, w = np.asarray(Image.open(pseudo[0])).shape
    save(pseudo[0], _faint(h, w, 7))
    h, w = np.asarray(Image.open(pseudo[1])).shape
    soft16 = (_blob(h, w, 8) * 257 * 200).astype(np.uint16)  # 16-bit soft: 200 of 255
    save(pseudo[1], soft16)
    out = tmp_path / "out"
    assert main(["covid_semiseg", "--src", str(tmp_path / "src"), "--out", str(out), "--train-labels", "both",
                 "--val-fraction", "0"]) == 0
    text = capsys.readouterr().out
    assert f"{pseudo[0].name}: mask values up to 100 never reach --threshold 128" in text
    assert "skipped 1" in _counts(text)
    np.testing.assert_array_equal(read_png(out / "labels/doctor/0.png"), _blob(40, 36, 0))
    key = pseudo[1].stem
    np.testing.assert_array_equal(read_png(out / f"labels/pseudo/{key}.png"), _blob(h, w, 8))
    np.testing.assert_array_equal(read_png(out / f"label_soft/pseudo/{key}.png"), _blob(h, w, 8) * 200)


def test_covid_semiseg_multiclass_keeps_class_indices(tmp_path, capsys):
    make_covid_tree(tmp_path / "src", n_doctor=1, n_pseudo=1, n_test=1, n_mc=2)
    out = tmp_path / "out"
    assert main(["covid_semiseg", "--src", str(tmp_path / "src"), "--out", str(out), "--task", "multiclass",
                 "--val-fraction", "0"]) == 0
    label = read_png(out / "labels/multiclass_train/0.png")
    assert set(np.unique(label).tolist()) == {0, 1, 2}


# --------------------------------------------------------------------------------------------- synapse
def test_synapse_labels_must_be_class_indices(tmp_path, capsys):
    src = make_synapse(tmp_path / "src", cases=("case0005",), slices=2, test_cases=())
    with np.load(src / "train_npz/case0005_slice001.npz") as z:
        image, label = z["image"], z["label"]
    np.savez(src / "train_npz/case0005_slice001.npz", image=image, label=label * 0.5 + 0.25)
    out = tmp_path / "out"
    assert main(["synapse", "--src", str(src), "--out", str(out), "--val-fraction", "0"]) == 0
    text = capsys.readouterr().out
    assert "case0005_slice001.npz: unexpected label values [0.25" in text
    assert "synapse: converted 1, reused 0, skipped 1" in _counts(text)


# --------------------------------------------------------------------------------------------- nifti volumes
Q = np.array([[0.0, -1.2, 0.0, 30.0], [1.5, 0.0, 0.0, -10.0], [0.0, 0.0, 2.0, 5.0], [0, 0, 0, 1]])
S = np.array([[1.5, 0.0, 0.0, -7.0], [0.0, 1.2, 0.0, 12.0], [0.0, 0.0, 2.0, -3.0], [0, 0, 0, 1]])


def _nifti(path, data, qform, qcode, sform, scode):
    img = nib.Nifti1Image(data, None)
    img.header.set_zooms((1.5, 1.2, 2.0))
    img.header.set_qform(qform, code=qcode)
    img.header.set_sform(sform, code=scode)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _volume_tree(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    vols, labels = {}, {}
    blobs = np.stack([_blob(8, 6, k) for k in range(4)], -1)
    blobs[..., 1] = 0  # a slice holding background only: still decoded as the volume's encoding
    specs = {  # name: (label array, expected class indices)
        "bin16": ((blobs * 65535).astype(np.uint16), blobs),
        "bin255": ((blobs * 255).astype(np.uint8), blobs),
        "classes": ((blobs * 2).astype(np.int16), blobs * 2),
        "float01": (blobs.astype(np.float32), blobs),
    }
    for name, (label, expected) in specs.items():
        vols[name] = rng.normal(size=(8, 6, 4)).astype(np.float32)
        _nifti(src / f"{name}.nii.gz", vols[name], Q, 1, S, 2)
        _nifti(src / "masks" / f"{name}_seg.nii.gz", label, Q, 1, S, 2)
        labels[name] = expected
    return src, vols, labels


def _itk_origin_direction(path):
    import itk

    image = itk.imread(str(path))
    return np.asarray(itk.origin(image)), np.asarray(image.GetDirection())


def test_nifti_masks_of_any_encoding_and_headers_kept_in_3d(tmp_path, capsys):
    src, vols, labels = _volume_tree(tmp_path)
    four_d = np.zeros((8, 6, 4, 3), np.float32)
    nib.save(nib.Nifti1Image(four_d, S), str(src / "fmri.nii.gz"))
    out = tmp_path / "out"
    assert main(["nifti", "--src", str(src), "--out", str(out), "--masks", str(src / "masks"),
                 "--split", "1", "0", "0"]) == 0
    text = capsys.readouterr().out
    assert "nifti: converted 4, reused 0, skipped 1" in _counts(text)
    assert "fmri.nii.gz: a 4D NIfTI holding 3 volumes (shape 8x6x4x3)" in text
    for name in vols:
        image, label = nib.load(str(out / f"images/{name}.nii.gz")), nib.load(str(out / f"labels/{name}.nii.gz"))
        np.testing.assert_array_equal(np.asarray(label.dataobj), labels[name])
        np.testing.assert_allclose(image.get_fdata(), vols[name], atol=1e-6)
        source = nib.load(str(src / f"{name}.nii.gz"))
        for written in (image, label):  # the source's qform AND sform, with their codes
            assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 2
            np.testing.assert_allclose(written.header.get_qform(), source.header.get_qform(), atol=1e-5)
            np.testing.assert_allclose(written.header.get_sform(), source.header.get_sform(), atol=1e-5)
            assert written.header.get_xyzt_units() == ("mm", "sec")
        # ITK (qform) finds image, label and source at the same place
        origin, direction = _itk_origin_direction(src / f"{name}.nii.gz")
        for path in (out / f"images/{name}.nii.gz", out / f"labels/{name}.nii.gz"):
            o, d = _itk_origin_direction(path)
            np.testing.assert_allclose(o, origin, atol=1e-4)
            np.testing.assert_allclose(d, direction, atol=1e-5)


def test_nifti_2d_slices_decode_the_whole_volume_and_shift_both_forms(tmp_path, capsys):
    src, vols, labels = _volume_tree(tmp_path)
    out = tmp_path / "out"
    assert main(["nifti", "--src", str(src), "--out", str(out), "--masks", str(src / "masks"), "--mode", "2d",
                 "--split", "1", "0", "0"]) == 0
    assert "nifti: converted 16, reused 0, skipped 0" in _counts(capsys.readouterr().out)
    shift = np.eye(4)
    for k in range(4):
        shift[2, 3] = k
        for name in ("bin16", "classes"):
            label = nib.load(str(out / f"labels/{name}/{name}_{k:04d}.nii.gz"))
            np.testing.assert_array_equal(np.asarray(label.dataobj), labels[name][..., k])
            image = nib.load(str(out / f"images/{name}/{name}_{k:04d}.nii.gz"))
            for written in (image, label):
                np.testing.assert_allclose(written.header.get_qform(), Q @ shift, atol=1e-5)
                np.testing.assert_allclose(written.header.get_sform(), S @ shift, atol=1e-5)
                assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 2
    dl = read_json(out / "datalist.json")
    assert len(dl["training"]) == 16


def test_noisy_nifti_labels_keep_the_sources_forms(tmp_path):
    """``data_prep noise`` writes its noisy NIfTI copies with the clean label's header, as the converters do."""
    import json

    from data_prep.noise import make_noisy_dataset

    src = tmp_path / "src"
    label = np.zeros((10, 9, 6), np.uint8)
    label[2:7, 3:8, 1:5] = 1
    _nifti(src / "l0.nii.gz", label, Q, 1, S, 2)
    _nifti(src / "i0.nii.gz", np.zeros((10, 9, 6), np.float32), Q, 1, S, 2)
    (src / "datalist.json").write_text(json.dumps({"training": [{"image": "i0.nii.gz", "label": "l0.nii.gz"}]}))
    report = make_noisy_dataset(src / "datalist.json", tmp_path / "out", "dilate", seed=0, k=1, verbose=False)
    noisy = nib.load(str(tmp_path / "out" / report["cases"][0]["label"]))
    assert int(noisy.header["qform_code"]) == 1 and int(noisy.header["sform_code"]) == 2
    np.testing.assert_allclose(noisy.header.get_qform(), Q, atol=1e-5)
    np.testing.assert_allclose(noisy.header.get_sform(), S, atol=1e-5)
    assert np.asarray(noisy.dataobj).sum() > label.sum()  # dilated
