"""Every bundle's inference.json on a PNG, a NIfTI and a DICOM series (built here with pydicom): masks written in
each input's geometry. Weights are random (bundles ship none); networks run at a small ``spatial_size``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
MATRIX = yaml.safe_load((BUNDLES / "matrix.yaml").read_text())
NAMES = [f"{row['dataset']}_{row['backbone']}" for row in MATRIX["bundles"]]
H, W = 40, 56  # non-square, so a transposed mask cannot pass
SMALL = {2: [32, 32], 3: [32, 32, 32]}
SMALL_SWIN = {2: [64, 64], 3: [64, 64, 64]}  # SwinUNETR's bottleneck (1/32) needs at least 2 pixels a side
NIFTI_AFFINE_2D = np.array([[0.7, 0, 0, -5.0], [0, 0.9, 0, 3.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
NIFTI_AFFINE_3D = np.array([[1.5, 0, 0, -20.0], [0, 1.2, 0, 10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
# DICOM geometry of the series: rows x cols x slices, (row, col) spacing, slice step, first slice's position (LPS)
DCM_SLICES, DCM_SPACING, DCM_STEP, DCM_ORIGIN = 3, (0.8, 0.6), 2.5, (-10.0, 20.0, 30.0)

pytestmark = pytest.mark.usefixtures("one_thread")



def _settings(name: str) -> dict:
    row = next(r for r in MATRIX["bundles"] if f"{r['dataset']}_{r['backbone']}" == name)
    return {**MATRIX["datasets"][row["dataset"]], **{k: v for k, v in row.items() if k not in ("dataset", "backbone",
                                                                                                   "args")}}


def write_dicom_series(folder: Path, rows: int = H, cols: int = W, slices: int = DCM_SLICES) -> np.ndarray:
    """A CT series of ``slices`` axial slices with known spacing and position; returns its voxels (z, y, x)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    voxels = rng.integers(0, 1000, size=(slices, rows, cols)).astype(np.int16)
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.Modality = "Test^Bundle", "0", "CT"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [DCM_ORIGIN[0], DCM_ORIGIN[1], DCM_ORIGIN[2] + k * DCM_STEP]
        ds.PixelSpacing = list(DCM_SPACING)
        ds.SliceThickness = DCM_STEP
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = voxels[k].tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return voxels


def _dicom_affine_ras() -> np.ndarray:
    """The series' voxel (column, row, slice) → RAS affine: ITK reads (x=column, y=row, z=slice) in LPS."""
    affine = np.diag([DCM_SPACING[1], DCM_SPACING[0], DCM_STEP, 1.0])
    affine[:3, 3] = DCM_ORIGIN
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1)
    for kind, channels in (("grey", 1), ("rgb", 3)):
        folder = root / f"2d_{kind}"
        folder.mkdir()
        arr = rng.integers(0, 255, size=(H, W) if channels == 1 else (H, W, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / "photo.png")
        nib.save(nib.Nifti1Image(rng.random((H, W)).astype(np.float32), NIFTI_AFFINE_2D), folder / "slice.nii.gz")
        write_dicom_series(folder / "series")
    folder = root / "3d"
    folder.mkdir()
    nib.save(nib.Nifti1Image(rng.random((20, 24, 12)).astype(np.float32), NIFTI_AFFINE_3D), folder / "volume.nii.gz")
    write_dicom_series(folder / "series", slices=6)
    return {"root": root, "2d_grey": root / "2d_grey", "2d_rgb": root / "2d_rgb", "3d": root / "3d"}


def _copy_with_random_weights(name: str, dest: Path, spatial_size: list[int]) -> dict:
    from monai.bundle import ConfigParser

    shutil.copytree(BUNDLES / name / "configs", dest / "configs")
    parser = ConfigParser()
    parser.read_config(str(dest / "configs" / "inference.json"))
    parser["spatial_size"] = spatial_size
    torch.manual_seed(0)
    state = parser.get_parsed_content("network_def").state_dict()
    (dest / "models").mkdir()
    torch.save(state, dest / "models" / "model.pt")
    return state


def _check_mask(path: Path, num_classes: int) -> np.ndarray:
    data = np.asarray(Image.open(path)) if path.suffix == ".png" else np.asarray(nib.load(path).dataobj)
    assert data.dtype == np.uint8
    assert data.min() >= 0 and data.max() < num_classes
    return data


@pytest.mark.parametrize("name", NAMES)
def test_inference_restores_each_inputs_geometry(name, inputs, tmp_path):
    from monai.bundle import load, run

    ds = _settings(name)
    small = (SMALL_SWIN if name.endswith("swinunetr") else SMALL)[ds["dims"]]
    state = _copy_with_random_weights(name, tmp_path / name, small)
    out = tmp_path / "out"
    folder = inputs["3d"] if ds["dims"] == 3 else inputs["2d_grey" if ds["in_channels"] == 1 else "2d_rgb"]
    extra = {}
    if ds["intensity"] == "none":
        # these inputs are raw (0..255, HU): the bundle refuses them (tests/test_bad_images.py); lift the
        # range check here, the geometry is what this test is about
        pre = json.loads((tmp_path / name / "configs" / "inference.json").read_text())["preprocessing"]["transforms"]
        index = [t["_target_"] for t in pre].index("dale_monai.bundle_transforms.CheckSampled")
        extra[f"preprocessing#transforms#{index}#intensity_range"] = "$None"  # a bare None is dropped by run()
    run("run", config_file=str(tmp_path / name / "configs" / "inference.json"), input_dir=str(folder),
        output_dir=str(out), spatial_size=small, **extra)
    n = ds["num_classes"]
    written = sorted(p.name for p in out.iterdir())
    dicom = nib.load(out / "series_seg.nii.gz")
    np.testing.assert_allclose(dicom.affine, _dicom_affine_ras(), atol=1e-4)
    if ds["dims"] == 2:
        assert written == ["photo_seg.png", "series_seg.nii.gz", "slice_seg.nii.gz"]
        assert _check_mask(out / "photo_seg.png", n).shape == (H, W)
        nifti = nib.load(out / "slice_seg.nii.gz")
        assert _check_mask(out / "slice_seg.nii.gz", n).shape == (H, W)
        np.testing.assert_allclose(nifti.affine, NIFTI_AFFINE_2D, atol=1e-5)
        assert _check_mask(out / "series_seg.nii.gz", n).shape == (W, H, DCM_SLICES)
    else:
        assert written == ["series_seg.nii.gz", "volume_seg.nii.gz"]
        volume = nib.load(out / "volume_seg.nii.gz")
        assert _check_mask(out / "volume_seg.nii.gz", n).shape == (20, 24, 12)
        np.testing.assert_allclose(volume.affine, NIFTI_AFFINE_3D, atol=1e-5)
        assert _check_mask(out / "series_seg.nii.gz", n).shape == (W, H, 6)
    # programmatic loading: monai.bundle.load builds network_def from inference.json and restores model.pt
    model = load(name, bundle_dir=str(tmp_path), workflow_type="inference", model_file="models/model.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_inference_takes_a_datalist_and_adapts_channels(inputs, tmp_path):
    """An RGB network given a grey PNG and a grey DICOM series (channels repeated), from --datalist."""
    from monai.bundle import run

    name = "ph2_unet"
    _copy_with_random_weights(name, tmp_path / name, SMALL[2])
    out = tmp_path / "out"
    datalist = [str(inputs["2d_grey"] / "photo.png"), {"image": str(inputs["2d_grey"] / "series")}]
    run("run", config_file=str(tmp_path / name / "configs" / "inference.json"), datalist=datalist,
        output_dir=str(out), spatial_size=SMALL[2])
    assert sorted(p.name for p in out.iterdir()) == ["photo_seg.png", "series_seg.nii.gz"]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps({"test": [{"image": "2d_rgb/photo.png"}]}))
    shutil.copy(inputs["2d_rgb"] / "photo.png", tmp_path / "photo.png")
    (tmp_path / "2d_rgb").mkdir()
    shutil.copy(inputs["2d_rgb"] / "photo.png", tmp_path / "2d_rgb" / "photo.png")
    run("run", config_file=str(tmp_path / name / "configs" / "inference.json"), datalist=str(listed),
        output_dir=str(tmp_path / "out2"), spatial_size=SMALL[2])
    assert (tmp_path / "out2" / "photo_seg.png").is_file()


def test_3d_network_rejects_a_2d_image(inputs, tmp_path):
    from monai.bundle import run

    name = "synthetic3d_unet"
    _copy_with_random_weights(name, tmp_path / name, SMALL[3])
    with pytest.raises(Exception) as err:
        run("run", config_file=str(tmp_path / name / "configs" / "inference.json"),
            input_dir=str(inputs["2d_grey"] / "photo.png"), output_dir=str(tmp_path / "out"), spatial_size=SMALL[3])
    chain, cause = [], err.value
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    assert any("photo.png" in m and "3D network" in m for m in chain), chain


def test_missing_weights_fail_clearly(inputs, tmp_path):
    from monai.bundle import run

    name = "synthetic2d_unet"
    shutil.copytree(BUNDLES / name / "configs", tmp_path / name / "configs")
    with pytest.raises(Exception) as err:
        run("run", config_file=str(tmp_path / name / "configs" / "inference.json"),
            input_dir=str(inputs["2d_grey"] / "photo.png"), output_dir=str(tmp_path / "out"), spatial_size=SMALL[2])
    chain, cause = [], err.value
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    assert any("model.pt" in m for m in chain), chain
