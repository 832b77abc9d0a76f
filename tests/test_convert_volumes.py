"""``dicom`` and ``nifti``: series ordering and checks, rescale, affine, 2D/3D output, masks."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fixtures_datasets import make_dicom_series, read_json, read_png

from data_prep.__main__ import main
from data_prep.converters.dicom_series import find_series

SAGITTAL = (0, 1, 0, 0, 0, -1)


def _ras_of_voxel(i, j, k, origin, orientation, spacing, pixel_spacing=(0.8, 0.7)):
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    lps = np.asarray(origin) + i * pixel_spacing[1] * row + j * pixel_spacing[0] * col + k * spacing * normal
    return lps * np.array([-1, -1, 1])


def test_dicom_series_to_3d_nifti_with_rescale_and_affine(tmp_path, capsys):
    origin = (5.0, -3.0, 12.0)
    pixels, files = make_dicom_series(tmp_path / "src/patient1/ct", n=4, orientation=SAGITTAL, origin=origin)
    # InstanceNumber contradicting the positions: the positions must win
    for f in files:
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = 10 - ds.InstanceNumber
        ds.save_as(f)
    (tmp_path / "src/patient1/ct/README.txt").write_text("not dicom")
    out = tmp_path / "out"
    assert main(["dicom", "--src", str(tmp_path / "src"), "--out", str(out), "--split", "1", "0", "0"]) == 0
    text = capsys.readouterr().out
    assert "dicom: converted 1, reused 0, skipped 1" in text and "README.txt: not a DICOM file" in text
    img = nib.load(str(out / "images/patient1_ct.nii.gz"))
    vol = np.asarray(img.dataobj)
    assert vol.shape == (5, 6, 4) and vol.dtype == np.int16
    assert np.array_equal(vol, np.stack([(p * 2 - 1024).T for p in pixels], -1))
    for i, j, k in ((0, 0, 0), (4, 0, 0), (0, 5, 0), (2, 3, 3)):
        assert np.allclose((img.affine @ [i, j, k, 1])[:3], _ras_of_voxel(i, j, k, origin, SAGITTAL, 2.5), atol=1e-4)
    assert read_json(out / "datalist.json")["training"] == [{"image": "images/patient1_ct.nii.gz"}]


def test_dicom_rejected_series_are_named(tmp_path, capsys):
    make_dicom_series(tmp_path / "src/gap", n=5, drop=(2,), seed=1)
    make_dicom_series(tmp_path / "src/nopos", n=4, drop=(1,), positions=False, seed=2)
    _, files = make_dicom_series(tmp_path / "src/mixed", n=3, seed=3, uid="1.2.3.4")
    make_dicom_series(tmp_path / "src/mixed", n=1, rows=8, seed=4, uid="1.2.3.4")
    make_dicom_series(tmp_path / "src/ok", n=2, seed=5, positions=False)
    series, skips = find_series(tmp_path / "src")
    assert [s.key for s in series] == ["ok"]
    reasons = " | ".join(s.reason for s in skips)
    assert "in " + str(tmp_path / "src/gap") + ": no affine holds its slices: missing slices where the spacing is " \
        "2.50 mm: 1 between" in reasons and "(a gap of 5.00 mm)" in reasons
    assert "missing slices (InstanceNumber jumps from 1" in reasons
    assert "slices of mixed sizes: " in reasons and "6x5 (" in reasons and "8x5 (" in reasons
    assert main(["dicom", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    assert "converted 1, reused 0, skipped 3" in capsys.readouterr().out


def test_dicom_two_series_in_one_folder_and_missing_src(tmp_path, capsys):
    make_dicom_series(tmp_path / "src/study", n=2, seed=1, series_number=3)
    make_dicom_series(tmp_path / "src/study", n=2, seed=2, series_number=4)
    assert [s.key for s in find_series(tmp_path / "src")[0]] == ["study_s3", "study_s4"]
    assert main(["dicom", "--src", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith("error: --src")


def test_dicom_2d_slices_with_masks_and_window_load_like_the_volume_in_monai(tmp_path, capsys):
    pixels, _ = make_dicom_series(tmp_path / "src/p1", n=3, rows=6, columns=5)
    vol_out = tmp_path / "vol"
    assert main(["dicom", "--src", str(tmp_path / "src"), "--out", str(vol_out)]) == 0
    ref = nib.load(str(vol_out / "images/p1.nii.gz"))
    label = (np.asarray(ref.dataobj) > 800).astype(np.uint8)
    (tmp_path / "masks").mkdir()
    nib.save(nib.Nifti1Image(label, ref.affine), str(tmp_path / "masks/p1_seg.nii.gz"))
    nib.save(nib.Nifti1Image(label, ref.affine), str(tmp_path / "masks/p9.nii.gz"))  # no such series
    out = tmp_path / "out"
    argv = ["dicom", "--src", str(tmp_path / "src"), "--out", str(out), "--masks", str(tmp_path / "masks"),
            "--mode", "2d", "--format", "png", "--window", "500", "2000"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "converted 3, reused 0, skipped 1" in text and "p9.nii.gz: mask without image" in text
    dl = read_json(out / "datalist.json")
    entries = sorted(e["image"] for s in ("training", "validation", "test") for e in dl[s])
    assert entries == [f"images/p1/p1_{k:04d}.png" for k in range(3)]
    windowed = np.round(np.clip((np.asarray(ref.dataobj, dtype=np.float32) + 500) / 2000, 0, 1) * 255)
    png = read_png(out / "images/p1/p1_0001.png")
    assert png.dtype == np.uint8 and np.array_equal(png, windowed[..., 1].T.astype(np.uint8))
    from monai.transforms import LoadImage

    loaded = np.asarray(LoadImage(image_only=True)(str(out / "images/p1/p1_0001.png")))
    assert np.array_equal(loaded, windowed[..., 1])  # MONAI sees the volume's (x, y) order
    loaded_label = np.asarray(LoadImage(image_only=True)(str(out / "labels/p1/p1_0001.png")))
    assert np.array_equal(loaded_label, label[..., 1])
    # a mask on another grid is refused, naming it
    nib.save(nib.Nifti1Image(label, ref.affine * 2), str(tmp_path / "masks/p1_seg.nii.gz"))
    assert main([*argv[:4], str(tmp_path / "out2"), *argv[5:]]) == 1
    assert "p1_seg.nii.gz: mask affine differs" in capsys.readouterr().out


def _nifti_tree(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.array([[0, 0, 2.0, -5], [1.5, 0, 0, 3], [0, -1, 0, 7], [0, 0, 0, 1]])
    vols = {}
    for name in ("case1", "case2", "case3"):
        vol = rng.normal(0, 100, (6, 5, 4)).astype(np.float32)
        vols[name] = vol
        (tmp_path / "imgs").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "imgs" / f"{name}.nii.gz"))
        if name != "case3":
            nib.save(nib.Nifti1Image((vol > 0).astype(np.uint8), affine), str(tmp_path / "imgs" / f"{name}_seg.nii"))
    shutil.move(str(tmp_path / "imgs"), str(tmp_path / "data"))
    (tmp_path / "data/masks").mkdir()
    for f in (tmp_path / "data").glob("*_seg.nii"):
        shutil.move(str(f), str(tmp_path / "data/masks" / f.name))
    return tmp_path / "data", vols, affine


def test_nifti_3d_and_2d_with_masks(tmp_path, capsys):
    src, vols, affine = _nifti_tree(tmp_path)
    (src / "broken.nii.gz").write_bytes((src / "case1.nii.gz").read_bytes()[:300])
    out = tmp_path / "out3d"
    assert main(["nifti", "--src", str(src), "--out", str(out), "--masks", str(src / "masks"),
                 "--split", "1", "0", "0"]) == 0
    text = capsys.readouterr().out
    assert "nifti: converted 2, reused 0, skipped 2" in text
    assert "case3.nii.gz: image without mask" in text and "broken.nii.gz" in text
    img = nib.load(str(out / "images/case2.nii.gz"))
    assert np.allclose(img.affine, affine) and np.allclose(img.get_fdata(), vols["case2"])
    assert np.array_equal(np.asarray(nib.load(str(out / "labels/case2.nii.gz")).dataobj), vols["case2"] > 0)
    out2 = tmp_path / "out2d"
    assert main(["nifti", "--src", str(src), "--out", str(out2), "--masks", str(src / "masks"), "--mode", "2d",
                 "--split", "0.5", "0", "0.5"]) == 0
    dl = read_json(out2 / "datalist.json")
    assert len(dl["training"]) == len(dl["test"]) == 4  # one volume each side, never split
    s = nib.load(str(out2 / "images/case1/case1_0002.nii.gz"))
    assert np.allclose(s.get_fdata(), vols["case1"][..., 2])
    assert np.allclose((s.affine @ [1, 2, 0, 1]), affine @ [1, 2, 2, 1])
    # PNG without a window: float CT values do not fit, each slice is skipped saying so
    assert main(["nifti", "--src", str(src), "--out", str(tmp_path / "png"), "--mode", "2d", "--format", "png",
                 "--limit", "1"]) == 1
    assert "do not fit a 16-bit PNG; give --window" in capsys.readouterr().out


@pytest.mark.parametrize("width", ["0", "-5"])
def test_window_width_must_be_positive(tmp_path, capsys, width):
    src, _, _ = _nifti_tree(tmp_path)
    assert main(["nifti", "--src", str(src), "--out", str(tmp_path / "o"), "--window", "0", width]) == 1
    assert "--window" in capsys.readouterr().err
