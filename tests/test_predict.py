"""``dale_monai.predict`` end to end, through the bundles' own inference.json: PNG, NIfTI and DICOM series in,
masks in each input's geometry, DICOM SEG that pydicom/highdicom read back, summaries, failures, overwriting,
checkpoints, and the command line.

The network is overridden (``network_def``) with a 1x1 convolution whose weights make it a threshold, logit
``10 * (x - 0.5)`` of the [0, 1]-scaled image, saved as the bundle's ``models/model.pt``: random-free and exact,
so each output can be checked pixel by pixel against the input, at a ``spatial_size`` equal to the inputs' so
that resizing is the identity (test_bundles_inference.py covers resizing back on the real networks).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from test_predict_parts import write_series

from dale_monai.__main__ import main
from dale_monai.predict import CheckpointError, Predictor

REPO = Path(__file__).resolve().parents[1]
ROWS, COLS = 10, 14  # non-square, so a transposed output cannot pass
SPACING, STEP, ORIGIN = (0.8, 0.6), 2.5, (-10.0, 20.0, 30.0)
AFFINE_3D = np.array([[1.5, 0, 0, -20.0], [0, 1.2, 0, 10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


pytestmark = pytest.mark.usefixtures("one_thread")


def _threshold_net(dims: int, classes: int = 1) -> tuple[dict, dict]:
    """``network_def`` of a 1x1 convolution and its weights. One channel (sigmoid bundles): ``10 * (x - 0.5)``.
    Several (softmax bundles): class 0 scores 5, class 1 ``10 * x - 100``, the others -100, so the argmax is 1
    where ``x > 10.5`` and 0 elsewhere."""
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(1, classes, 1)
    with torch.no_grad():
        if classes == 1:
            conv.weight.fill_(10.0)
            conv.bias.fill_(-5.0)
        else:
            conv.weight.zero_()
            conv.bias.fill_(-100.0)
            conv.bias[0] = 5.0
            conv.weight[1] = 10.0
    target = f"torch.nn.Conv{dims}d"
    return {"_target_": target, "in_channels": 1, "out_channels": classes, "kernel_size": 1}, conv.state_dict()


def _bundle(tmp_path: Path, name: str, dims: int = 2, classes: int = 1, save: bool = True) -> tuple[Path, dict]:
    """A copy of bundle ``name`` with the threshold network's weights as ``models/model.pt``; returns the copy
    and the overrides that make its config build that network at the test images' size."""
    dest = tmp_path / name
    shutil.copytree(REPO / "bundles" / name / "configs", dest / "configs")
    net, state = _threshold_net(dims, classes)
    if save:
        (dest / "models").mkdir()
        torch.save(state, dest / "models" / "model.pt")
    size = [COLS, ROWS] if dims == 2 else [COLS, ROWS, 4]
    # 3D bundles resample to their target spacing; non-positive values keep each input's own (MONAI's Spacing),
    # so the pipeline is the identity and every voxel can be checked (test_bundles_3d.py covers resampling)
    native = {"target_spacing": [0.0, 0.0, 0.0]} if dims == 3 else {}
    return dest, {"network_def": net, "spatial_size": size, **native}


def _voxels(rng, shape, top: int = 1000) -> np.ndarray:
    """Intensities away from the threshold (half of ``top``), with 0 and ``top`` present so the min-max scaling
    maps them onto [0, 1] exactly."""
    low = rng.integers(0, int(top * 0.3), size=shape)
    high = rng.integers(int(top * 0.7), top, size=shape)
    out = np.where(rng.random(shape) < 0.4, high, low)
    out.reshape(-1)[:2] = (0, top)
    return out


@pytest.fixture(scope="module")
def predictor2d(tmp_path_factory):
    bundle, overrides = _bundle(tmp_path_factory.mktemp("b2d"), "synthetic2d_unet")
    return Predictor(bundle, device="cpu", overrides=overrides)


# --------------------------------------------------------------------------------------------- DICOM
def test_dicom_series_gives_a_seg_on_its_series(predictor2d, tmp_path):
    import highdicom as hd
    from pydicom import dcmread

    voxels = _voxels(np.random.default_rng(0), (4, ROWS, COLS))
    series = write_series(tmp_path / "in" / "ct", voxels, SPACING, STEP, ORIGIN)
    report = predictor2d.predict_path(tmp_path / "in" / "ct", tmp_path / "out", progress=False)
    assert [c.status for c in report.cases] == ["ok"], report.describe()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["ct_seg.dcm", "ct_seg.nii.gz", "summary.csv", "summary.json"]
    ds = dcmread(out / "ct_seg.dcm")
    assert ds.Modality == "SEG" and int(ds.NumberOfFrames) == 4
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series["series"]
    assert ds.FrameOfReferenceUID == series["frame"]
    assert [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing] == \
        list(SPACING)
    positions = sorted(tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient)
                       for f in ds.PerFrameFunctionalGroupsSequence)
    assert positions == sorted(tuple(p) for _, p, _ in series["instances"])
    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "lesion" and segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    # every instance's frame is its own pixels thresholded
    seg = hd.seg.segread(out / "ct_seg.dcm")
    uids = [uid for uid, _, _ in series["instances"]]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    for i, (uid, _, k) in enumerate(series["instances"]):
        np.testing.assert_array_equal(pixels[i], voxels[k] > 500, err_msg=f"slice {k}")
    # the NIfTI has the series' geometry (RAS) and the same voxels
    nifti = nib.load(out / "ct_seg.nii.gz")
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.array([[SPACING[1], 0, 0, ORIGIN[0]], [0, SPACING[0], 0, ORIGIN[1]],
                                                      [0, 0, STEP, ORIGIN[2]], [0, 0, 0, 1]])
    np.testing.assert_allclose(nifti.affine, ras, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), (voxels > 500).transpose(2, 1, 0))
    # the summary's volume: voxels x 0.8 x 0.6 x 2.5 mm³
    case = json.loads((out / "summary.json").read_text())["cases"][0]
    n = int((voxels > 500).sum())
    assert case["series_uid"] == series["series"]
    assert case["measures"]["lesion"] == {"voxels": n, "area_mm2": None,
                                          "volume_ml": pytest.approx(n * 0.8 * 0.6 * 2.5 / 1000)}


def test_folder_of_mixed_series_and_bad_files_through_the_cli(tmp_path, capsys, caplog):
    """Two series in one folder stay apart; a corrupt PNG and a corrupt DICOM are reported, the rest succeed,
    and the exit status is 1."""
    from pydicom import dcmread

    bundle, overrides = _bundle(tmp_path, "synthetic2d_unet")
    rng = np.random.default_rng(1)
    inp = tmp_path / "in"
    a = write_series(inp, _voxels(rng, (3, ROWS, COLS)), series_number=3, prefix="a")
    b = write_series(inp, _voxels(rng, (5, ROWS, COLS)), series_number=4, prefix="b", step=1.25)
    Image.fromarray(_voxels(rng, (ROWS, COLS), 255).astype(np.uint8)).save(inp / "photo.png")
    (inp / "broken.png").write_bytes(b"\x89PNG but not really")
    (inp / "corrupt.dcm").write_bytes(b"DICM? no")
    # the CLI takes no overrides: bake them into the bundle copy's inference.json
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config.update(overrides)
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    code = main(["predict", "--bundle", str(bundle), "--input", str(inp), "--output", str(out), "--device", "cpu",
                 "--no-progress", "--overlay"])
    printed = capsys.readouterr().out
    assert code == 1
    assert not [r for r in caplog.records if "nvImageCodec" in r.getMessage()]  # no CPU-only noise per case
    assert "3 succeeded, 2 failed, 0 skipped (of 5)" in printed
    assert "FAILED  broken: " in printed and "broken.png" in printed
    assert "FAILED  corrupt: " in printed and "corrupt.dcm" in printed
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert {k: r["status"] for k, r in rows.items()} == {"photo": "ok", "broken": "failed", "corrupt": "failed",
                                                         "in_series3": "ok", "in_series4": "ok"}
    for name, series, frames in (("in_series3", a, 3), ("in_series4", b, 5)):
        ds = dcmread(out / f"{name}_seg.dcm")
        assert int(ds.NumberOfFrames) == frames
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series["series"]
        referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        assert referenced == {uid for uid, _, _ in series["instances"]}
        assert nib.load(out / f"{name}_seg.nii.gz").shape == (COLS, ROWS, frames)
        assert Image.open(out / f"{name}_overlay.png").size == (COLS, ROWS)
    assert rows["photo"]["lesion_area_mm2"] == "" and int(rows["photo"]["lesion_voxels"]) > 0
    assert float(rows["in_series4"]["lesion_volume_ml"]) == pytest.approx(
        int(rows["in_series4"]["lesion_voxels"]) * 0.8 * 0.6 * 1.25 / 1000, rel=1e-5)
    # only outputs under the output folder; no staging left behind; the input folder untouched
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["summary.csv", "summary.json", "photo_seg.png", "photo_overlay.png"]
        + [f"{n}_{s}" for n in ("in_series3", "in_series4") for s in ("seg.dcm", "seg.nii.gz", "overlay.png")])
    assert len(list(inp.iterdir())) == 3 + 5 + 3


# --------------------------------------------------------------------------------------------- PNG / NIfTI
def test_png_and_nifti_keep_size_affine_and_pixels(predictor2d, tmp_path):
    rng = np.random.default_rng(2)
    inp = tmp_path / "in"
    inp.mkdir()
    photo = _voxels(rng, (ROWS, COLS), 255).astype(np.uint8)
    Image.fromarray(photo).save(inp / "photo.png")
    rgb = np.stack([photo] * 3, -1)
    Image.fromarray(rgb).save(inp / "colour.jpg", quality=100)
    plane = _voxels(rng, (COLS, ROWS)).astype(np.float32)
    affine_2d = np.array([[0.7, 0, 0, -5.0], [0, 0.9, 0, 3.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(plane, affine_2d), inp / "plane.nii.gz")
    volume = _voxels(rng, (COLS, ROWS, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, AFFINE_3D), inp / "volume.nii")
    report = predictor2d.predict_path(inp, tmp_path / "out", progress=False)
    assert report.ok and len(report.cases) == 4, report.describe()
    out = tmp_path / "out"
    np.testing.assert_array_equal(np.asarray(Image.open(out / "photo_seg.png")), (photo > 127).astype(np.uint8))
    assert np.asarray(Image.open(out / "colour_seg.png")).shape == (ROWS, COLS)
    seg2d = nib.load(out / "plane_seg.nii.gz")
    np.testing.assert_allclose(seg2d.affine, affine_2d, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(seg2d.dataobj), plane > 500)
    seg3d = nib.load(out / "volume_seg.nii.gz")  # a volume through a 2D bundle: slice by slice, same grid
    np.testing.assert_allclose(seg3d.affine, AFFINE_3D, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(seg3d.dataobj), volume > 500)
    measures = {c.case: c.measures["lesion"] for c in report.cases}
    assert measures["photo"] == {"voxels": int((photo > 127).sum()), "area_mm2": None, "volume_ml": None}
    assert measures["plane"]["area_mm2"] == pytest.approx(int((plane > 500).sum()) * 0.7 * 0.9)
    assert measures["volume"]["volume_ml"] == pytest.approx(int((volume > 500).sum()) * 1.5 * 1.2 * 2.0 / 1000)


def test_sizes_are_restored_when_the_network_resizes(tmp_path):
    """At the bundle's own kind of size (here 32 x 32) inputs are resized and masks come back at input size."""
    bundle, overrides = _bundle(tmp_path, "synthetic2d_unet")
    predictor = Predictor(bundle, device="cpu", overrides={**overrides, "spatial_size": [32, 32]})
    rng = np.random.default_rng(3)
    Image.fromarray(_voxels(rng, (ROWS, COLS), 255).astype(np.uint8)).save(tmp_path / "photo.png")
    report = predictor.predict_path(tmp_path / "photo.png", tmp_path / "out", progress=False)
    assert report.ok
    assert Image.open(tmp_path / "out" / "photo_seg.png").size == (COLS, ROWS)


def test_3d_bundle_on_nifti_and_dicom(tmp_path, capsys):
    bundle, overrides = _bundle(tmp_path, "synthetic3d_unet", dims=3)
    predictor = Predictor(bundle, device="cpu", overrides=overrides)
    rng = np.random.default_rng(4)
    voxels = _voxels(rng, (4, ROWS, COLS))
    write_series(tmp_path / "in" / "ct", voxels, SPACING, STEP, ORIGIN)
    volume = _voxels(rng, (COLS, ROWS, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, AFFINE_3D), tmp_path / "in" / "volume.nii.gz")
    report = predictor.predict_path(tmp_path / "in", tmp_path / "out")
    assert report.ok, report.describe()
    assert "2/2" in capsys.readouterr().err  # the progress bar of a folder
    seg = nib.load(tmp_path / "out" / "volume_seg.nii.gz")
    np.testing.assert_allclose(seg.affine, AFFINE_3D, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), volume > 500)
    from pydicom import dcmread

    assert int(dcmread(tmp_path / "out" / "ct_seg.dcm").NumberOfFrames) == 4


def test_multiclass_bundle_writes_one_segment_per_label(tmp_path):
    from pydicom import dcmread

    bundle, overrides = _bundle(tmp_path, "synapse_unet", classes=9)
    voxels = _voxels(np.random.default_rng(5), (3, ROWS, COLS))
    write_series(tmp_path / "ct", voxels, SPACING, STEP, ORIGIN)
    # Synapse bundles expect CT already windowed to [0, 1] (TransUNet's preprocessing): raw HU are refused
    report = Predictor(bundle, device="cpu", overrides=overrides).predict_path(tmp_path / "ct", tmp_path / "raw",
                                                                                 progress=False)
    assert not report.ok and "outside 0..1" in report.cases[0].error
    check = json.loads((bundle / "configs" / "inference.json").read_text())["preprocessing"]["transforms"]
    index = [t["_target_"] for t in check].index("dale_monai.bundle_transforms.CheckSampled")
    overrides = {**overrides, f"preprocessing#transforms#{index}#intensity_range": None}
    predictor = Predictor(bundle, device="cpu", overrides=overrides)
    report = predictor.predict_path(tmp_path / "ct", tmp_path / "out", progress=False)
    assert report.ok, report.describe()
    ds = dcmread(tmp_path / "out" / "ct_seg.dcm")
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["spleen", "right kidney", "left kidney", "gallbladder",
                                                           "liver", "stomach", "aorta", "pancreas"]
    assert int(ds.NumberOfFrames) == 3 * 8
    # Synapse bundles take intensities unscaled (TransUNet's preprocessing): the argmax is 1 where x > 10.5
    assert report.cases[0].measures["spleen"]["voxels"] == int((voxels > 10.5).sum())
    assert report.cases[0].measures["liver"]["voxels"] == 0


# --------------------------------------------------------------------------------------------- safety
def test_existing_outputs_are_kept_unless_overwrite(predictor2d, tmp_path, capsys):
    rng = np.random.default_rng(6)
    Image.fromarray(_voxels(rng, (ROWS, COLS), 255).astype(np.uint8)).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo_seg.png").write_bytes(b"precious")
    report = predictor2d.predict_path(tmp_path / "photo.png", out, progress=False)
    assert [c.status for c in report.cases] == ["skipped"] and report.ok
    assert f"output exists: {out / 'photo_seg.png'}" in report.cases[0].error
    assert "--overwrite" in report.cases[0].error
    assert (out / "photo_seg.png").read_bytes() == b"precious"
    report = predictor2d.predict_path(tmp_path / "photo.png", out, overwrite=True, progress=False)
    assert [c.status for c in report.cases] == ["ok"]
    assert Image.open(out / "photo_seg.png").size == (COLS, ROWS)
    assert sorted(p.name for p in out.iterdir()) == ["photo_seg.png", "summary.csv", "summary.json"]
    # outputs written into the input folder are not taken as inputs by the next run
    for _ in range(2):
        report = predictor2d.predict_path(tmp_path, tmp_path, overlay=True, progress=False)
    assert [(c.case, c.status) for c in report.cases] == [("photo", "skipped")]


def test_missing_and_mismatched_checkpoints_stop_before_predicting(tmp_path, capsys):
    bundle, overrides = _bundle(tmp_path, "synthetic2d_unet", save=False)
    with pytest.raises(CheckpointError, match=rf"bundle {bundle}: checkpoint {bundle}/models/model\.pt does not "
                                              "exist"):
        Predictor(bundle, device="cpu", overrides=overrides)
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Conv2d(1, 2, 1).state_dict(), wrong)  # two output channels: another bundle's
    with pytest.raises(CheckpointError, match=r"wrong\.pt does not fit .*weight \(2, 1, 1, 1\) vs \(1, 1, 1, 1\)"):
        Predictor(bundle, device="cpu", checkpoint=wrong, overrides=overrides)
    # the real network against the threshold's weights: every key missing
    (bundle / "models").mkdir()
    torch.save(_threshold_net(2)[1], bundle / "models" / "model.pt")
    Image.fromarray(np.zeros((ROWS, COLS), np.uint8)).save(tmp_path / "photo.png")
    code = main(["predict", "--bundle", str(bundle), "--input", str(tmp_path / "photo.png"),
                 "--output", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.pt does not fit the bundle's network" in err and "missing key(s)" in err and str(bundle) in err
    assert not (tmp_path / "out").exists()


def test_cli_help_and_usage_errors(tmp_path):
    run = subprocess.run([sys.executable, "-m", "dale_monai", "--help"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and "predict" in run.stdout
    run = subprocess.run([sys.executable, "-m", "dale_monai", "predict", "--help"], capture_output=True, text=True,
                         cwd=REPO)
    assert run.returncode == 0
    for flag in ("--bundle", "--input", "--output", "--overwrite", "--overlay", "--device", "--checkpoint"):
        assert flag in run.stdout
    with pytest.raises(SystemExit) as e:
        main(["predict", "--bundle", "x"])
    assert e.value.code == 2
    assert main(["predict", "--bundle", str(tmp_path), "--input", ".", "--output", str(tmp_path / "o")]) == 2


# --------------------------------------------------------------------------------------------- overrides
def test_override_words_are_parsed_as_monai_bundle_parses_them():
    from dale_monai.predict.overrides import parse_override_args

    parsed = parse_override_args(
        ["--network_def#channels", "[8, 16, 32, 64]", "--spatial_size=[32,32]", "--device", "$torch.device('cpu')",
         "--dale#tau", "0.8", "--network_def#dropout", "None", "--amp", "True", "--ckpt_path", "-1"],
        ["network_def#strides=[2, 2, 2]", "spatial_size=[48, 48]"])
    assert parsed == {"network_def#channels": [8, 16, 32, 64], "spatial_size": [48, 48],  # --override comes last
                      "device": "$torch.device('cpu')", "dale#tau": 0.8, "network_def#dropout": None, "amp": True,
                      "ckpt_path": -1, "network_def#strides": [2, 2, 2]}
    for args, pairs, message in ((["[8]"], [], "unexpected argument '\\[8\\]'"), (["--spatial_size"], [], "needs a value"),
                                 (["--a", "--b", "1"], [], "--a needs a value"), ([], ["spatial_size"], "KEY=VALUE")):
        with pytest.raises(ValueError, match=message):
            parse_override_args(args, pairs)


def test_a_bundle_trained_with_network_overrides_predicts_with_the_same_ones(tmp_path, capsys):
    """--network_def#channels as on monai.bundle's command line, --override KEY=VALUE, and the Python API."""
    from monai.bundle import ConfigParser

    name = "synthetic2d_unet"
    bundle = tmp_path / name
    shutil.copytree(REPO / "bundles" / name / "configs", bundle / "configs")
    trained = {"network_def#channels": [4, 8, 16, 32], "spatial_size": [16, 16]}
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    for key, value in trained.items():
        parser[key] = value
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    Image.fromarray(_voxels(np.random.default_rng(0), (ROWS, COLS), 255).astype(np.uint8)).save(tmp_path / "photo.png")
    base = ["predict", "--bundle", str(bundle), "--input", str(tmp_path / "photo.png"), "--device", "cpu",
            "--no-progress"]

    # without the overrides: the shipped channels do not fit the weights, and the message says what to do
    assert main([*base, "--output", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "does not fit the bundle's network" in err and "--network_def#channels" in err
    assert not (tmp_path / "none").exists()

    assert main([*base, "--output", str(tmp_path / "cli"), "--network_def#channels", "[4, 8, 16, 32]",
                 "--override", "spatial_size=[16,16]"]) == 0
    assert "1 succeeded, 0 failed" in capsys.readouterr().out
    by_cli = np.asarray(Image.open(tmp_path / "cli" / "photo_seg.png"))
    report = Predictor(bundle, device="cpu", overrides=trained).predict_path(tmp_path / "photo.png", tmp_path / "api",
                                                                            progress=False)
    assert report.ok and by_cli.shape == (ROWS, COLS)
    np.testing.assert_array_equal(by_cli, np.asarray(Image.open(tmp_path / "api" / "photo_seg.png")))
    # the spelling --KEY=VALUE and the override recorded nowhere but in the network used
    assert main([*base, "--output", str(tmp_path / "eq"), "--network_def#channels=[4,8,16,32]",
                 "--spatial_size=[16,16]"]) == 0
    np.testing.assert_array_equal(by_cli, np.asarray(Image.open(tmp_path / "eq" / "photo_seg.png")))


@pytest.mark.parametrize(("words", "message"), [
    (["--netwrk_def#channels", "[4, 8]"], "override 'netwrk_def#channels': .*inference.json has no config item "
                                          "'netwrk_def'"),
    (["--spatial_sise", "[16, 16]"], "has no config item 'spatial_sise'"),
    (["--output_dir", "elsewhere"], "override 'output_dir': not used by predict, the output folder is predict's "
                                    "--output"),
    (["--input_dir", "elsewhere"], "the inputs are predict's --input"),
    (["--network_def#chanels", "[4, 8]"], "network_def cannot be built with the overrides .*chanels"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_overrides_stop_before_predicting_and_name_the_key(words, message, tmp_path, capsys):
    bundle, overrides = _bundle(tmp_path, "synthetic2d_unet")
    Image.fromarray(np.zeros((ROWS, COLS), np.uint8)).save(tmp_path / "photo.png")
    code = main(["predict", "--bundle", str(bundle), "--input", str(tmp_path / "photo.png"),
                 "--output", str(tmp_path / "out"), "--device", "cpu", *words])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()
