"""``data_prep.masks``: one decoding rule for every mask encoding and bit depth, and thresholds that never erase a
mask's foreground silently; ``read_mask_2d`` keeps the stored type the rule needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures_datasets import blob_mask, save
from PIL import Image

from data_prep.io import DataPrepError, read_mask_2d
from data_prep.masks import binary_foreground, binary_mask, class_mask, full_scale, label_indices, soft_mask

M = blob_mask(12, 14, 3).astype(np.int64)

#: the same binary mask in each encoding met in datasets: (stored array, what it is)
BINARY_ENCODINGS = {
    "uint8 0/1": M.astype(np.uint8),
    "uint8 0/255": (M * 255).astype(np.uint8),
    "uint16 0/65535": (M * 65535).astype(np.uint16),
    "uint16 0/1": M.astype(np.uint16),
    "uint16 0/255": (M * 255).astype(np.uint16),
    "bool": M.astype(bool),
    "int32 0/65535": (M * 65535).astype(np.int32),  # a 16-bit PNG as older PIL loads it (mode I)
    "int16 0/32767": (M * 32767).astype(np.int16),
    "float32 0/1": M.astype(np.float32),
}


@pytest.mark.parametrize("encoding", list(BINARY_ENCODINGS))
@pytest.mark.parametrize("threshold", [None, 128, 1, 255])
def test_every_0_max_encoding_is_binary_with_or_without_threshold(encoding, threshold):
    out = binary_mask(BINARY_ENCODINGS[encoding], "m.png", threshold=threshold)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, M)


@pytest.mark.parametrize("encoding", list(BINARY_ENCODINGS))
def test_label_volumes_map_full_scale_foreground_to_1(encoding):
    np.testing.assert_array_equal(label_indices(BINARY_ENCODINGS[encoding], "m.nii.gz"), M)


def test_binary_foreground_names_the_encoding():
    assert binary_foreground(np.array([0, 65535], np.uint16)) == 65535
    assert binary_foreground(np.array([0, 255], np.uint16)) == 255
    assert binary_foreground(np.array([0], np.uint8)) == 1  # an empty mask
    assert binary_foreground(np.array([0, 2], np.uint8)) is None  # a class index, not a full scale
    assert binary_foreground(np.array([0, 1, 255], np.uint8)) is None
    assert full_scale(np.zeros(2, np.uint16)) == 65535 and full_scale(np.array([0, 300], np.int32)) == 65535
    assert full_scale(np.array([0.0, 0.7], np.float32)) == 1 and full_scale(np.array([0, 7], np.int64)) == 255


def test_threshold_is_on_the_masks_bit_depth():
    soft8 = np.array([[0, 127, 128, 255]], np.uint8)
    assert binary_mask(soft8, "s.png", threshold=128).tolist() == [[0, 0, 1, 1]]
    soft16 = np.array([[0, 32895, 32896, 65535]], np.uint16)  # 128/255 of 65535 is 32896
    assert binary_mask(soft16, "s16.png", threshold=128).tolist() == [[0, 0, 1, 1]]
    assert binary_mask(np.array([[0.0, 0.4, 0.6, 1.0]], np.float32), "f.tif", threshold=128).tolist() == \
        [[0, 0, 1, 1]]
    with pytest.raises(DataPrepError, match=r"s\.png: unexpected mask values \[0, 127, 128, 255\]"):
        binary_mask(soft8, "s.png")
    with pytest.raises(DataPrepError, match=r"--threshold 300: must be within 1\.\.255"):
        binary_mask(soft8, "s.png", threshold=300)
    with pytest.raises(DataPrepError, match=r"w\.tif: mask values up to 70000 exceed 16 bits"):
        binary_mask(np.array([[0, 5, 70000]], np.int32), "w.tif", threshold=128)


@pytest.mark.parametrize(("mask", "threshold", "shown"), [
    (np.array([[0, 40, 100]], np.uint8), 128, r"mask values up to 100 never reach --threshold 128: "),
    (np.array([[0, 3, 20000]], np.uint16), 128,
     r"mask values up to 20000 never reach --threshold 128 \(32896 on this mask's 0\.\.65535 scale\)"),
    (np.array([[0, 1, 2]], np.uint8), 200, r"mask values up to 2 never reach --threshold 200"),
])
def test_a_threshold_that_erases_the_foreground_is_refused_naming_file_threshold_and_max(mask, threshold, shown):
    with pytest.raises(DataPrepError, match=r"faint\.png: " + shown):
        binary_mask(mask, "faint.png", threshold=threshold)
    with pytest.raises(DataPrepError, match=r"faint\.png: " + shown):
        soft_mask(mask, "faint.png", threshold)


def test_empty_masks_stay_empty_without_error():
    for arr in (np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint16), np.zeros((3, 3), bool)):
        assert not binary_mask(arr, "e.png", threshold=128).any()
        assert not soft_mask(arr, "e.png", 128)[0].any()


def test_soft_masks_of_16_bits_are_scaled_to_0_255():
    label, soft = soft_mask(np.array([[0, 257 * 100, 257 * 200, 65535]], np.uint16), "p.png", 128)
    assert soft.tolist() == [[0, 100, 200, 255]] and soft.dtype == np.uint8
    assert label.tolist() == [[0, 0, 1, 1]]


def test_class_masks_keep_indices_and_refuse_what_is_not_an_index():
    three = np.array([[0, 1, 2, 2]], np.uint8)
    assert class_mask(three, "c.png", 3).tolist() == three.tolist()
    assert class_mask(three.astype(np.float32), "c.npz", 3).tolist() == three.tolist()  # TransUNet float labels
    with pytest.raises(DataPrepError, match=r"c\.npz: unexpected label values \[1\.5\]"):
        class_mask(np.array([[0, 1.5]], np.float32), "c.npz", 3)
    with pytest.raises(DataPrepError, match=r"c\.png: unexpected label values \[255\].*a 0/255 binary mask"):
        class_mask(np.array([[0, 255]], np.uint8), "c.png", 3)
    with pytest.raises(DataPrepError, match=r"negative mask values"):
        class_mask(np.array([[0, -1]], np.int16), "c.png", 3)


def test_label_volumes_keep_multi_class_indices():
    multi = np.array([[0, 1, 2, 255]], np.uint8)  # 255 among other classes: an index (e.g. "ignore"), kept
    assert label_indices(multi, "l.nii.gz").tolist() == multi.tolist()
    assert label_indices(np.array([[0, 2]], np.int16), "l.nii.gz").tolist() == [[0, 2]]  # one class present
    wide = label_indices(np.array([[0, 300]], np.int32), "l.nii.gz")
    assert wide.dtype == np.uint16 and wide.tolist() == [[0, 300]]
    with pytest.raises(DataPrepError, match=r"l\.nii\.gz: label values must be non-negative integers"):
        label_indices(np.array([[0, 0.5]], np.float32), "l.nii.gz")
    with pytest.raises(DataPrepError, match=r"l\.nii\.gz: mask holds NaN"):
        label_indices(np.array([[0, np.nan]], np.float32), "l.nii.gz")


def test_read_mask_2d_keeps_the_stored_bit_depth(tmp_path):
    cases = {
        "m8.png": ((M * 255).astype(np.uint8), np.uint8),
        "m16.png": ((M * 65535).astype(np.uint16), np.uint16),
        "m16.tif": ((M * 65535).astype(np.uint16), np.uint16),
        "m32.tif": ((M * 65535).astype(np.int32), np.int32),
        "mf.tif": (M.astype(np.float32), np.float32),
    }
    for name, (arr, dtype) in cases.items():
        save(tmp_path / name, arr)
        got = read_mask_2d(tmp_path / name)
        assert got.dtype == dtype and np.array_equal(got, arr), name
        np.testing.assert_array_equal(binary_mask(got, tmp_path / name), M)
    Image.fromarray(M.astype(bool)).save(tmp_path / "m1.png")  # 1-bit
    np.testing.assert_array_equal(binary_mask(read_mask_2d(tmp_path / "m1.png"), tmp_path / "m1.png"), M)
    save(tmp_path / "p.png", (M * 2).astype(np.uint8), palette=True)
    assert read_mask_2d(tmp_path / "p.png").tolist() == (M * 2).tolist()  # palette indices, not colours


def test_check_names_full_scale_binary_masks_of_any_bit_depth(tmp_path):
    """``data_prep check`` uses the same rule: a 0/65535 or 0/32767 mask is named as the binary encoding it is."""
    import json

    import nibabel as nib

    from data_prep.check import check_datalist

    root = tmp_path / "ds"
    save(root / "images/a.png", (M * 200).astype(np.uint8))
    save(root / "labels/a.png", (M * 65535).astype(np.uint16))
    save(root / "images/b.png", (M * 200).astype(np.uint8))
    save(root / "labels/b.png", (M * 2).astype(np.uint8))  # class 2 alone: an index, not a binary encoding
    nib.save(nib.Nifti1Image((M * 100).astype(np.float32)[..., None], np.eye(4)), str(root / "images/c.nii.gz"))
    nib.save(nib.Nifti1Image((M * 32767).astype(np.int16)[..., None], np.eye(4)), str(root / "labels/c.nii.gz"))
    entries = [{"image": f"images/{n}.{e}", "label": f"labels/{n}.{e}"} for n, e in (("a", "png"), ("b", "png"),
                                                                                     ("c", "nii.gz"))]
    (root / "datalist.json").write_text(json.dumps({"training": entries}))
    report = check_datalist(root / "datalist.json", num_classes=2)
    by_file = {Path(p.file).name: p for p in report.errors}
    assert by_file["a.png"].kind == "label_255" and "0/65535 mask" in by_file["a.png"].message
    assert "map 65535 to 1" in by_file["a.png"].message
    assert by_file["c.nii.gz"].kind == "label_255" and "0/32767 mask" in by_file["c.nii.gz"].message
    assert by_file["b.png"].kind == "label_values"
