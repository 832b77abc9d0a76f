"""NIfTI through ``dale_monai.predict``: masks carry their input's spatial header (qform, sform, codes, units), so
nibabel and ITK place image and mask alike; 4D NIfTI volumes are refused naming the file and its volume count,
or predicted volume by volume with ``each_volume``.

The bundles' networks are replaced by test_predict.py's threshold network (mask = image > half its range), so
each mask is checked voxel by voxel.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from test_predict import _bundle, _voxels

from dale_monai.__main__ import main
from dale_monai.bundle_transforms import AdaptChannels, nifti_header_like
from dale_monai.predict import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (14, 10, 4)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _affine(angle: float, zooms, offset) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = _rotation(angle) @ np.diag(zooms)
    a[:3, 3] = offset
    return a


Q = _affine(0.3, (1.5, 1.2, 2.0), (-20.0, 10.0, 5.0))  # oblique, so an axis swap or sign flip cannot pass
S = _affine(-0.5, (1.5, 1.2, 2.0), (31.0, -7.0, 9.0))

#: (qform, qform code, sform, sform code, pixdim) of the header cases readers resolve differently
HEADERS = {
    "qform_only": (Q, 1, None, 0, (1.5, 1.2, 2.0)),
    "sform_only": (None, 0, S, 2, (1.5, 1.2, 2.0)),
    # pixdim left at 1: MONAI's reader rewrites such forms (rectify_header_sform_qform), ITK warns and mixes them
    "sform_only_stale_pixdim": (None, 0, S, 2, (1.0, 1.0, 1.0)),
    "both_agree": (Q, 1, Q, 1, (1.5, 1.2, 2.0)),
    "both_disagree": (Q, 1, S, 2, (1.5, 1.2, 2.0)),  # nibabel/MONAI use the sform, ITK (Slicer, ITK-SNAP) the qform
    "scanner_vs_aligned": (S, 2, Q, 1, (1.5, 1.2, 2.0)),
}


def _nifti(path, data, qform, qcode, sform, scode, zooms=(1.5, 1.2, 2.0), units=("mm", "sec")):
    img = nib.Nifti1Image(data, None)
    img.header.set_zooms(tuple(zooms) + img.header.get_zooms()[3:])
    img.header.set_qform(qform, code=qcode)  # None with code 0: no qform
    img.header.set_sform(sform, code=scode)
    img.header.set_xyzt_units(*units)
    nib.save(img, str(path))
    return path


def _itk_geometry(path):
    import itk

    image = itk.imread(str(path))
    return (np.asarray(itk.origin(image)), np.asarray(image.GetDirection()), np.asarray(itk.spacing(image)))


def _assert_same_space(image_path, mask_path):
    """Both readers resolve image and mask to the same space; the mask header holds the input's qform, sform and
    their codes, units and pixdim."""
    image, mask = nib.load(str(image_path)), nib.load(str(mask_path))
    for xform in ("get_qform", "get_sform"):
        (m_img, c_img), (m_mask, c_mask) = getattr(image.header, xform)(coded=True), getattr(mask.header, xform)(
            coded=True)
        assert c_img == c_mask, xform
        if c_img:
            np.testing.assert_allclose(m_mask, m_img, atol=1e-5)
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)
    assert mask.header.get_xyzt_units() == image.header.get_xyzt_units()
    np.testing.assert_allclose(mask.header.get_zooms()[:3], image.header.get_zooms()[:3])
    for field in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "srow_x", "srow_y", "srow_z"):
        np.testing.assert_array_equal(mask.header[field], image.header[field])
    for a, b in zip(_itk_geometry(image_path), _itk_geometry(mask_path)):
        np.testing.assert_allclose(b, a, atol=1e-4)


@pytest.fixture(scope="module")
def predictor3d(tmp_path_factory):
    bundle, overrides = _bundle(tmp_path_factory.mktemp("b3d"), "synthetic3d_unet", dims=3)
    return Predictor(bundle, device="cpu", overrides=overrides)


@pytest.fixture(scope="module")
def predictor2d(tmp_path_factory):
    bundle, overrides = _bundle(tmp_path_factory.mktemp("b2d"), "synthetic2d_unet")
    return Predictor(bundle, device="cpu", overrides=overrides)


# --------------------------------------------------------------------------------------------- headers
@pytest.mark.parametrize("bundle", ["predictor3d", "predictor2d"])
def test_masks_carry_the_inputs_spatial_header(bundle, request, tmp_path):
    predictor = request.getfixturevalue(bundle)
    rng = np.random.default_rng(0)
    inp = tmp_path / "in"
    inp.mkdir()
    volumes = {}
    for name, (q, qc, s, sc, zooms) in HEADERS.items():
        volumes[name] = _voxels(rng, SHAPE).astype(np.float32)
        _nifti(inp / f"{name}.nii.gz", volumes[name], q, qc, s, sc, zooms)
    report = predictor.predict_path(inp, tmp_path / "out", progress=False)
    assert report.ok and len(report.cases) == len(HEADERS), report.describe()
    for name in HEADERS:
        mask_path = tmp_path / "out" / f"{name}_seg.nii.gz"
        _assert_same_space(inp / f"{name}.nii.gz", mask_path)
        mask = nib.load(str(mask_path))
        assert mask.get_data_dtype() == np.uint8 and mask.header.get_slope_inter() in ((1.0, 0.0), (None, None))
        np.testing.assert_array_equal(np.asarray(mask.dataobj), volumes[name] > 500)


def test_disagreeing_forms_were_resolved_differently_before(tmp_path):
    """The case of the report: ITK and nibabel really place the input differently, so a mask holding one affine
    in both forms (MONAI's NibabelWriter) cannot match it in both."""
    path = _nifti(tmp_path / "x.nii.gz", np.zeros(SHAPE, np.float32), Q, 1, S, 2)
    origin_itk = _itk_geometry(path)[0]
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(origin_itk, lps @ Q[:3, 3], atol=1e-4)
    np.testing.assert_allclose(nib.load(str(path)).affine, S, atol=1e-5)


def test_header_is_copied_only_for_the_inputs_grid(tmp_path):
    scaled = nib.Nifti1Image(np.zeros(SHAPE, np.int16), None)
    scaled.header.set_qform(Q, code=1)
    scaled.header.set_sform(S, code=2)
    scaled.header.set_slope_inter(2.0, -1024.0)
    scaled.header["cal_max"] = 400
    scaled.header.set_intent("t test", (5.0,))
    nib.save(scaled, str(tmp_path / "ct.nii.gz"))
    hdr = nifti_header_like(tmp_path / "ct.nii.gz", SHAPE, S)
    assert hdr is not None and hdr.get_slope_inter() == (1.0, 0.0) and float(hdr["cal_max"]) == 0
    assert hdr.get_intent()[0] == "none" and hdr.get_qform(coded=True)[1] == 1
    assert nifti_header_like(tmp_path / "ct.nii.gz", SHAPE, Q) is not None  # the qform, as ITK reads it
    assert nifti_header_like(tmp_path / "ct.nii.gz", (7, 5, 2), S) is None  # another grid
    assert nifti_header_like(tmp_path / "ct.nii.gz", SHAPE, np.eye(4)) is None  # resampled
    assert nifti_header_like(tmp_path / "scan.png", (4, 4), np.eye(3)) is None
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    assert nifti_header_like(tmp_path / "bad.nii.gz", SHAPE, S) is None


# --------------------------------------------------------------------------------------------- 4D
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("volumes", [2, 3, 4, 5])
def test_volumes_of_a_nifti_are_not_colour_channels(channels, volumes):
    img = MetaTensor(torch.rand(volumes, 6, 5, 4), meta={"filename_or_obj": "/data/fmri.nii.gz"})
    if volumes == channels:
        assert AdaptChannels(channels)(img) is img  # a multi-modal input: its volumes are the channels
        return
    with pytest.raises(ValueError, match=rf"fmri\.nii\.gz: a 4D NIfTI holding {volumes} volumes \(shape "
                                         rf"6x5x4x{volumes}\), and this network takes {channels} channel"):
        AdaptChannels(channels)(img)


def test_colour_rule_still_applies_to_image_files_and_single_volumes():
    rgb = MetaTensor(torch.rand(3, 6, 5), meta={"filename_or_obj": "photo.png"})
    torch.testing.assert_close(AdaptChannels(1)(rgb)[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])
    rgba = MetaTensor(torch.rand(4, 6, 5), meta={"filename_or_obj": "photo.tif"})
    assert AdaptChannels(3)(rgba).shape == (3, 6, 5)
    single = MetaTensor(torch.rand(1, 6, 5, 4), meta={"filename_or_obj": "ct.nii"})
    assert AdaptChannels(3)(single).shape == (3, 6, 5, 4)  # grey volume into an RGB network, as a grey image


def _four_d(inp, rng, counts):
    data = {}
    for n in counts:
        shape = SHAPE + (n,)
        data[n] = _voxels(rng, shape).astype(np.float32)
        img = nib.Nifti1Image(data[n], None)
        img.header.set_zooms((1.5, 1.2, 2.0, 2500.0))
        img.header.set_qform(Q, code=1)
        img.header.set_sform(S, code=2)
        img.header.set_xyzt_units("mm", "msec")
        nib.save(img, str(inp / f"t{n}.nii.gz"))
    return data


def test_4d_nifti_is_refused_naming_the_file_and_its_volumes(predictor3d, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    data = _four_d(inp, np.random.default_rng(1), (1, 2, 3, 4, 5))
    report = predictor3d.predict_path(inp, tmp_path / "out", progress=False)
    status = {c.case: c for c in report.cases}
    assert status["t1"].status == "ok"  # a singleton 4th axis is one volume
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "out" / "t1_seg.nii.gz")).dataobj),
                                  data[1][..., 0] > 500)
    for n in (2, 3, 4, 5):
        assert status[f"t{n}"].status == "failed"
        assert f"t{n}.nii.gz: a 4D NIfTI holding {n} volumes" in status[f"t{n}"].error
        assert "--each-volume" in status[f"t{n}"].error
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["t1_seg.nii.gz"]


def test_each_volume_predicts_every_volume_with_the_files_header(predictor3d, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    data = _four_d(inp, np.random.default_rng(2), (1, 3))
    out = tmp_path / "out"
    report = predictor3d.predict_path(inp, out, progress=False, each_volume=True)
    assert report.ok, report.describe()
    assert [c.case for c in report.cases] == ["t1", "t3_vol0", "t3_vol1", "t3_vol2"]
    assert all(c.input == str(inp / ("t1.nii.gz" if c.case == "t1" else "t3.nii.gz")) for c in report.cases)
    for t in range(3):
        mask = nib.load(str(out / f"t3_vol{t}_seg.nii.gz"))
        assert mask.shape == SHAPE
        np.testing.assert_array_equal(np.asarray(mask.dataobj), data[3][..., t] > 500)
        np.testing.assert_allclose(mask.header.get_qform(), Q, atol=1e-5)
        np.testing.assert_allclose(mask.header.get_sform(), S, atol=1e-5)
        assert int(mask.header["qform_code"]) == 1 and int(mask.header["sform_code"]) == 2
        assert mask.header.get_xyzt_units() == ("mm", "msec")
    assert json.loads((out / "summary.json").read_text())["each_volume"] is True


def test_each_volume_from_the_command_line(tmp_path, capsys):
    bundle, overrides = _bundle(tmp_path, "synthetic3d_unet", dims=3)
    config = bundle / "configs" / "inference.json"
    doc = json.loads(config.read_text())
    doc.update(overrides)  # the CLI takes no overrides: bake the threshold network into the copy
    config.write_text(json.dumps(doc))
    inp = tmp_path / "in"
    inp.mkdir()
    _four_d(inp, np.random.default_rng(3), (2,))
    args = ["predict", "--bundle", str(bundle), "--input", str(inp), "--device", "cpu", "--no-progress"]
    assert main(args + ["--output", str(tmp_path / "refused")]) == 1
    assert "t2.nii.gz: a 4D NIfTI holding 2 volumes" in capsys.readouterr().out
    assert main(args + ["--output", str(tmp_path / "each"), "--each-volume"]) == 0
    assert sorted(p.name for p in (tmp_path / "each").glob("*_seg.nii.gz")) == ["t2_vol0_seg.nii.gz",
                                                                                  "t2_vol1_seg.nii.gz"]
