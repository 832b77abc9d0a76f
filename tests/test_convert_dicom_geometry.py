"""``data_prep dicom`` and ``data_prep check`` on series that no orthogonal regular grid holds (gantry tilt, uneven
spacing, missing slices) and on MONOCHROME1 / Modality LUT series: never a uniform affine for an irregular stack,
the cause named with its values, resampling only on request, and the shared decoding."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from fixtures_datasets import pixel_positions, read_json, tilted_orientation, write_dicom_slices

from data_prep.__main__ import main
from data_prep.check import check_datalist
from data_prep.dicom_geometry import LPS_TO_RAS

SPACING = (0.8, 0.7)
ROWS, COLS = 8, 6


def _z_positions(gaps, origin=(-10.0, 20.0, 30.0)) -> np.ndarray:
    z = np.concatenate([[0.0], np.cumsum(gaps)])
    return np.asarray(origin) + np.outer(z, [0.0, 0.0, 1.0])


def _field(positions, orientation, rows=ROWS, cols=COLS) -> np.ndarray:
    """Stored values that are a linear function of each pixel's LPS position (integers, so the converter keeps
    them exactly): ``(slices, rows, cols)``."""
    out = []
    for p in positions:
        xyz = pixel_positions(p, orientation, SPACING, rows, cols)
        out.append(np.rint(10 * xyz[..., 0] - 5 * xyz[..., 1] + 20 * xyz[..., 2]))
    return np.asarray(out, dtype=np.int32)


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.mark.parametrize("degrees, axis", [(15.0, "row"), (-10.0, "column")])
def test_tilted_series_keeps_its_exact_sheared_affine_and_says_so(tmp_path, capsys, degrees, axis):
    orientation = tilted_orientation(degrees, axis)
    positions = _z_positions([2.0] * 5)
    stored = _field(positions, orientation)
    write_dicom_slices(tmp_path / "src" / "tilt", stored, positions, orientation, SPACING)
    out = tmp_path / "out"
    code, text = _run(capsys, "dicom", "--src", str(tmp_path / "src"), "--out", str(out))
    assert code == 0 and "converted 1" in text
    assert f"gantry tilt of {abs(degrees):.2f} degrees" in text and "exact sheared affine" in text
    img = nib.load(out / "images" / "tilt.nii.gz")
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * SPACING[1], col * SPACING[0], [0, 0, 2.0], positions[0]
    np.testing.assert_allclose(img.affine, LPS_TO_RAS @ lps, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), stored.transpose(2, 1, 0))
    summary = read_json(out / "summary.json")
    assert any("gantry tilt" in n for n in summary["notes"])
    assert summary["settings"]["decoding"].startswith("modality-lut, monochrome1-inverted, no-voi")


@pytest.mark.parametrize("case", ["uneven", "missing"])
def test_irregular_series_is_refused_naming_the_cause_or_resampled_on_request(tmp_path, capsys, case):
    gaps = [2.0] * 11 + [2.8] * 12 if case == "uneven" else [2.5] * 3 + [5.0] + [2.5] * 3
    positions = _z_positions(gaps)
    stored = _field(positions, (1, 0, 0, 0, 1, 0))
    write_dicom_slices(tmp_path / "src" / case, stored, positions, pixel_spacing=SPACING)
    write_dicom_slices(tmp_path / "src" / "fine", stored[:3], _z_positions([2.0, 2.0]), pixel_spacing=SPACING, seed=1)
    out = tmp_path / "out"
    code, text = _run(capsys, "dicom", "--src", str(tmp_path / "src"), "--out", str(out))
    assert code == 0 and "converted 1, reused 0, skipped 1" in text
    assert not (out / "images" / f"{case}.nii.gz").exists()  # never a uniform affine for an irregular stack
    reason = read_json(out / "summary.json")["skipped_files"][0]["reason"]
    assert "no affine holds its slices" in reason and "--resample-irregular" in reason
    if case == "uneven":
        assert "11 gap(s) of 2.00 mm" in reason and "12 gap(s) of 2.80 mm" in reason
        assert "misplace slices by up to 4.59 mm" in reason
    else:
        assert "missing slices where the spacing is 2.50 mm: 1 between" in reason and "a gap of 5.00 mm" in reason

    again = tmp_path / "resampled"
    code, text = _run(capsys, "dicom", "--src", str(tmp_path / "src"), "--out", str(again), "--resample-irregular")
    assert code == 0 and "converted 2" in text and "resampled by linear interpolation" in text
    img = nib.load(again / "images" / f"{case}.nii.gz")
    extent = float(np.sum(gaps))
    step = min(gaps)
    count = int(np.ceil(extent / step - 1e-6)) + 1
    want_affine = np.diag([-SPACING[1], -SPACING[0], extent / (count - 1), 1.0])
    want_affine[:3, 3] = LPS_TO_RAS[:3, :3] @ positions[0]
    np.testing.assert_allclose(img.affine, want_affine, atol=1e-5)
    vol = np.asarray(img.dataobj, dtype=np.float64)
    assert vol.shape == (COLS, ROWS, count)
    # the stored field is linear in position: the resampled volume holds it exactly at every grid voxel
    idx = np.stack(np.meshgrid(np.arange(COLS), np.arange(ROWS), np.arange(count), indexing="ij"), -1)
    ras = idx @ img.affine[:3, :3].T + img.affine[:3, 3]
    lps = ras * [-1, -1, 1]
    np.testing.assert_allclose(vol, 10 * lps[..., 0] - 5 * lps[..., 1] + 20 * lps[..., 2], atol=0.02)
    summary = read_json(again / "summary.json")
    assert summary["settings"]["resample_irregular"] is True
    assert any(case in n and "resampled" in n for n in summary["notes"])


def test_2d_mode_writes_each_slice_of_an_irregular_series_with_its_own_exact_affine(tmp_path, capsys):
    """2D slices need no common grid: the issue's uneven series converts slice by slice, no interpolation, each
    slice NIfTI placed where DICOM puts it; masks cannot be matched to it and are refused naming why."""
    positions = _z_positions([2.0] * 11 + [2.8] * 12)
    stored = _field(positions, (1, 0, 0, 0, 1, 0))
    write_dicom_slices(tmp_path / "src" / "ct", stored, positions, pixel_spacing=SPACING)
    out = tmp_path / "out"
    code, text = _run(capsys, "dicom", "--src", str(tmp_path / "src"), "--out", str(out), "--mode", "2d")
    assert code == 0 and "converted 24" in text and "written as 2D slices, each with its own exact affine" in text
    for k in (0, 10, 11, 12, 23):
        img = nib.load(out / "images" / "ct" / f"ct_{k:04d}.nii.gz")
        np.testing.assert_array_equal(np.asarray(img.dataobj).reshape(COLS, ROWS), stored[k].T)  # not interpolated
        extent = 2.0 if k <= 10 else 2.4 if k == 11 else 2.8
        want = np.diag([-SPACING[1], -SPACING[0], extent, 1.0])
        want[:3, 3] = LPS_TO_RAS[:3, :3] @ positions[k]
        np.testing.assert_allclose(img.affine, want, atol=1e-5)
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((COLS, ROWS, 24), np.uint8), np.eye(4)), masks / "ct.nii.gz")
    code, text = _run(capsys, "dicom", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "m"), "--mode", "2d",
                      "--masks", str(masks))
    assert "has no grid a mask could share" in text and "--resample-irregular" in text


def test_check_reports_irregular_and_tilted_dicom_and_sheared_nifti(tmp_path, capsys):
    root = tmp_path / "ds"
    uneven = _z_positions([2.0] * 4 + [3.0] * 4)
    write_dicom_slices(root / "uneven", _field(uneven, (1, 0, 0, 0, 1, 0)), uneven, pixel_spacing=SPACING)
    tilted = _z_positions([2.0] * 4)
    orientation = tilted_orientation(15.0)
    write_dicom_slices(root / "tilted", _field(tilted, orientation), tilted, orientation, SPACING, seed=1)
    assert main(["dicom", "--src", str(root / "tilted"), "--out", str(tmp_path / "conv")]) == 0
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": [{"image": "uneven"}, {"image": "tilted"},
                                             {"image": str(tmp_path / "conv" / "images" / "tilted.nii.gz")}]}))
    report = check_datalist(path, min_size=2, patch_size=2)
    errors = {p.file.rsplit("/", 1)[-1]: p for p in report.errors}
    assert set(errors) == {"uneven"} and "uneven slice spacing (2.00 to 3.00 mm)" in errors["uneven"].message
    warnings = {(p.kind, p.file.rsplit("/", 1)[-1]) for p in report.warnings}
    assert ("dicom_gantry_tilt", "tilted") in warnings and ("sheared_affine", "tilted.nii.gz") in warnings
    shear = next(p for p in report.warnings if p.kind == "sheared_affine")
    assert "75.00 degrees apart, not 90" in shear.message


@pytest.mark.parametrize("lut", [False, True])
@pytest.mark.parametrize("slope, intercept", [(None, None), (2.0, -1024.0)])
def test_monochrome1_converts_with_the_lesion_bright(tmp_path, capsys, slope, intercept, lut):
    """The issue's MONOCHROME1 series: data_prep used to leave it inverted; now the lesion is the bright part, as
    in prediction."""
    lesion = np.zeros((3, ROWS, COLS), bool)
    lesion[:, 3:6, 2:4] = True
    stored = np.where(lesion, 100, 3000).astype(np.int32)
    table = (np.arange(4096) // 2).astype(np.uint16) if lut else None
    write_dicom_slices(tmp_path / "src" / "cr", stored, _z_positions([2.0, 2.0]), pixel_spacing=SPACING,
                       photometric="MONOCHROME1", slope=None if lut else slope, intercept=intercept,
                       modality_lut=(0, table) if lut else None, bits_stored=12, signed=False)
    assert main(["dicom", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    vol = np.asarray(nib.load(tmp_path / "out" / "images" / "cr.nii.gz").dataobj).transpose(2, 1, 0)
    if lut:
        want = 2047.0 - np.where(lesion, 50, 1500)  # table range [0, 2047], inverted
    else:
        m, b = (1.0, 0.0) if slope is None else (slope, intercept)
        want = m * (4095 - stored) + b
    np.testing.assert_array_equal(vol, want)
    assert vol[lesion].min() > vol[~lesion].max()
