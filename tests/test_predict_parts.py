"""Parts of ``dale_monai.predict`` on hand-made data: label sizes in physical units, the summary files, case
discovery (DICOM series grouped by UID), the DICOM SEG writer's geometry, checkpoint checks, segments from
metadata, overlays, and file-name safety. End-to-end runs are in test_predict.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dale_monai.predict import (
    CaseResult,
    CheckpointError,
    PredictionReport,
    Segment,
    bundle_segments,
    discover_cases,
    load_weights,
    mask_measures,
)
from dale_monai.predict.dicom_seg import instance_frames, write_dicom_seg
from dale_monai.predict.files import atomic_path, safe_join, safe_name
from dale_monai.predict.overlay import overlay_rgb
from dale_monai.predict.summary import write_summary

REPO = Path(__file__).resolve().parents[1]
LESION = [Segment(1, "lesion", (255, 0, 0))]
ORGANS = [Segment(1, "right kidney", (0, 0, 255)), Segment(2, "liver", (0, 255, 0))]


# --------------------------------------------------------------------------------------------- DICOM builder
def write_series(folder: Path, voxels: np.ndarray, spacing=(0.8, 0.6), step: float = 2.5,
                 origin=(-10.0, 20.0, 30.0), series_uid: str | None = None, series_number: int = 1,
                 study_uid: str | None = None, frame_uid: str | None = None, prefix: str = "img",
                 type2: bool = True) -> dict:
    """A CT series of axial slices ``voxels[k]`` (rows x cols), slice k at ``origin + k * step`` along z.

    Files are written in reverse slice order under opaque names, so nothing may rely on file order. Returns the
    series' UIDs and each instance's (SOPInstanceUID, position).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid, frame_uid = series_uid or generate_uid(), study_uid or generate_uid(), \
        frame_uid or generate_uid()
    instances = []
    slices, rows, cols = voxels.shape
    for k in reversed(range(slices)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{prefix}{(7 * k + 3) % 101:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.Modality = "Test^Predict", "P1", "CT"
        if type2:
            ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "19700101", "O", "20240101", "120000"
            ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        position = [origin[0], origin[1], origin[2] + k * step]
        ds.ImagePositionPatient = position
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = step
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = voxels[k].astype(np.int16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        instances.append((ds.SOPInstanceUID, position, k))
    return {"series": series_uid, "study": study_uid, "frame": frame_uid, "instances": instances}


def itk_affine_lps(spacing=(0.8, 0.6), step: float = 2.5, origin=(-10.0, 20.0, 30.0)) -> np.ndarray:
    """The grid ITK reads such a series into: axes (column, row, slice), LPS."""
    affine = np.diag([spacing[1], spacing[0], step, 1.0])
    affine[:3, 3] = origin
    return affine


# --------------------------------------------------------------------------------------------- measures
def test_area_of_a_hand_made_2d_mask():
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 3:8] = 1  # 15 pixels
    affine = np.diag([0.5, 0.8, 1.0, 1.0])
    m = mask_measures(mask, affine, LESION)["lesion"]
    assert m == {"voxels": 15, "area_mm2": pytest.approx(15 * 0.4), "volume_ml": None}
    # a 2D affine (3 x 3) gives the same; no affine (a PNG) gives the count only
    assert mask_measures(mask, np.diag([0.5, 0.8, 1.0]), LESION)["lesion"]["area_mm2"] == pytest.approx(6.0)
    assert mask_measures(mask, None, LESION)["lesion"] == {"voxels": 15, "area_mm2": None, "volume_ml": None}
    # one DICOM slice (x, y, 1) is an area, not a volume with a made-up thickness
    assert mask_measures(mask[..., None], np.diag([0.5, 0.8, 7.0, 1.0]), LESION)["lesion"]["area_mm2"] == \
        pytest.approx(6.0)


def test_volume_of_a_hand_made_multiclass_mask():
    mask = np.zeros((8, 9, 10), np.uint8)
    mask[:4, :5, :5] = 1    # 100 voxels
    mask[5:, 5:, 5:] = 2    # 3 * 4 * 5 = 60 voxels
    affine = np.diag([0.5, 0.8, 2.5, 1.0])  # 1 mm³ per voxel
    m = mask_measures(mask, affine, ORGANS)
    assert m["right kidney"] == {"voxels": 100, "area_mm2": None, "volume_ml": pytest.approx(0.1)}
    assert m["liver"]["volume_ml"] == pytest.approx(0.06)


@settings(max_examples=25, deadline=None)
@given(spacing=st.tuples(*[st.floats(0.2, 5.0)] * 3), angle=st.floats(-3.1, 3.1), count=st.integers(0, 60))
def test_measures_hold_for_oblique_anisotropic_grids(spacing, angle, count):
    """Rotating the grid changes no size: voxel volume is det(spacing), pixel area the in-plane product."""
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0], [s * c, c * c, -s], [s * s, s * c, c]])
    rotation, _ = np.linalg.qr(rotation)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = (5.0, -3.0, 2.0)
    volume = np.zeros((6, 10, 4), np.uint8)
    volume.reshape(-1)[:count] = 1
    got = mask_measures(volume, affine, LESION)["lesion"]
    assert got["voxels"] == count
    assert got["volume_ml"] == pytest.approx(count * np.prod(spacing) / 1000, rel=1e-9, abs=1e-12)
    plane = volume[..., 0]
    assert mask_measures(plane, affine, LESION)["lesion"]["area_mm2"] == pytest.approx(
        int(plane.sum()) * spacing[0] * spacing[1], rel=1e-9, abs=1e-12)


def test_summary_files(tmp_path):
    report = PredictionReport([
        CaseResult("a", "/in/a.nii.gz", "ok", [str(tmp_path / "a_seg.nii.gz")],
                   measures=mask_measures(np.ones((2, 2, 2), np.uint8), np.diag([1.0, 2.0, 3.0, 1.0]), ORGANS[:1]),
                   notes=["resampled", "because"]),
        CaseResult("b", "/in/b.png", "failed", error="UnidentifiedImageError: cannot identify image file 'b.png'"),
        CaseResult("c", "/in/c.png", "skipped", error="output exists: c_seg.png"),
    ])
    write_summary(report, tmp_path, ORGANS[:1], {"bundle": "x"})
    rows = list(csv.DictReader(open(report.summary_csv)))
    assert [r["case"] for r in rows] == ["a", "b", "c"]
    assert list(rows[0]) == ["case", "input", "status", "output", "right_kidney_voxels", "right_kidney_area_mm2",
                             "right_kidney_volume_ml", "error", "notes"]
    assert rows[0]["notes"] == "resampled | because" and rows[1]["notes"] == ""
    assert rows[0]["right_kidney_voxels"] == "8" and float(rows[0]["right_kidney_volume_ml"]) == pytest.approx(0.048)
    assert rows[0]["right_kidney_area_mm2"] == "" and rows[0]["error"] == ""
    assert rows[1]["status"] == "failed" and "b.png" in rows[1]["error"]
    doc = json.loads(report.summary_json.read_text())
    assert doc["bundle"] == "x" and doc["counts"] == {"ok": 1, "failed": 1, "skipped": 1}
    assert doc["cases"][0]["measures"]["right kidney"]["voxels"] == 8
    assert not report.ok
    text = report.describe()
    assert "1 succeeded, 1 failed, 1 skipped" in text and "FAILED  b" in text and "SKIPPED c" in text
    assert "NOTE    a: resampled" in text and doc["cases"][0]["notes"] == ["resampled", "because"]


# --------------------------------------------------------------------------------------------- discovery
def test_discovery_groups_dicom_by_series_and_reports_unreadable_files(tmp_path):
    rng = np.random.default_rng(0)
    a = write_series(tmp_path, rng.integers(0, 100, (3, 6, 7)), series_number=2, prefix="a")
    b = write_series(tmp_path, rng.integers(0, 100, (2, 5, 4)), series_number=5, prefix="b")  # same folder
    c = write_series(tmp_path / "patient" / "study" / "ct", rng.integers(0, 100, (2, 4, 4)))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "photo.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "scan.png")
    nib.save(nib.Nifti1Image(np.zeros((3, 3), np.float32), np.eye(4)), tmp_path / "scan.nii.gz")
    (tmp_path / "broken.dcm").write_bytes(b"not dicom")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.png").write_bytes(b"ignored")
    cases = {c.name: c for c in discover_cases(tmp_path)}
    folder = tmp_path.name
    assert set(cases) == {"photo", "scan", "scan_2", f"{folder}_series2", f"{folder}_series5",
                          "patient_study_ct", "broken"}
    assert cases["scan"].kind == "nifti" and cases["scan_2"].kind == "image"  # sorted: .nii.gz before .png
    for name, series in ((f"{folder}_series2", a), (f"{folder}_series5", b), ("patient_study_ct", c)):
        case = cases[name]
        assert case.kind == "dicom" and case.series_uid == series["series"] and case.error is None
        assert len(case.files) == len(series["instances"])
    assert not set(cases[f"{folder}_series2"].files) & set(cases[f"{folder}_series5"].files)
    assert "broken.dcm" in cases["broken"].error and "not a readable DICOM file" in cases["broken"].error
    # a series folder alone is one case named after it; single files are one case
    assert [x.name for x in discover_cases(tmp_path / "patient" / "study" / "ct")] == ["ct"]
    assert [x.kind for x in discover_cases(tmp_path / "scan.nii.gz")] == ["nifti"]


def test_discovery_reports_series_with_missing_or_repeated_slices(tmp_path):
    import os

    from pydicom import dcmread

    rng = np.random.default_rng(1)
    write_series(tmp_path / "gap", rng.integers(0, 100, (5, 4, 4)))
    by_z = {float(dcmread(p).ImagePositionPatient[2]): p for p in (tmp_path / "gap").iterdir()}
    os.remove(by_z[30.0 + 2 * 2.5])  # the middle slice
    write_series(tmp_path / "dup", rng.integers(0, 100, (3, 4, 4)))
    first = sorted((tmp_path / "dup").iterdir())[0]
    ds = dcmread(first)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.save_as(tmp_path / "dup" / "copy.dcm")
    write_series(tmp_path / "fine", rng.integers(0, 100, (3, 4, 4)))
    cases = {c.name: c for c in discover_cases(tmp_path)}
    assert cases["fine"].error is None
    # missing slices are predictable (slice by slice, or resampled): the case carries the cause, not an error
    gap = cases["gap"]
    assert gap.error is None and gap.geometry.kinds == ("missing_slices",) and not gap.geometry.has_affine
    assert "missing slices where the spacing is 2.50 mm: 1 between" in gap.geometry.describe()
    assert "(a gap of 5.00 mm)" in gap.geometry.describe()
    assert [dcmread(f).ImagePositionPatient[2] for f in gap.files] == [30.0, 32.5, 37.5, 40.0]  # slice order
    assert "share one slice position" in cases["dup"].error and "copy.dcm" in cases["dup"].error


def test_discovery_errors_and_skipped_objects(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        discover_cases(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no inputs found"):
        discover_cases(tmp_path / "empty")
    (tmp_path / "table.csv").write_text("x")
    with pytest.raises(ValueError, match="unsupported file"):
        discover_cases(tmp_path / "table.csv")
    # an earlier DICOM SEG output in the input folder is not an image to segment
    series = write_series(tmp_path / "ct", np.zeros((2, 4, 4)), prefix="s")
    from pydicom import dcmread

    seg = dcmread(next((tmp_path / "ct").iterdir()))
    seg.Modality, seg.SeriesInstanceUID = "SEG", "1.2.3.4"
    seg.save_as(tmp_path / "ct" / "old_seg.dcm")
    cases = discover_cases(tmp_path / "ct")
    assert [(c.name, c.series_uid, len(c.files)) for c in cases] == [("ct", series["series"], 2)]


def test_safe_names_and_atomic_writes(tmp_path):
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("CT  abdomen/contrast:1") == "CT_abdomen_contrast_1"
    assert safe_name("...") == "case"
    assert safe_join(tmp_path, "a_seg.png") == tmp_path.resolve() / "a_seg.png"
    for bad in ("../x.png", "/etc/x.png", "."):
        with pytest.raises(ValueError, match="outside the output folder"):
            safe_join(tmp_path, bad)
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temporary file
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    with pytest.raises(FileExistsError, match="out.txt exists"):
        with atomic_path(target):
            pass
    with atomic_path(target, overwrite=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


# --------------------------------------------------------------------------------------------- DICOM SEG
def _pattern(shape) -> np.ndarray:
    """An asymmetric label map on the (column, row, slice) grid: no flip or transpose maps it to itself."""
    c, r, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    out = np.zeros(shape, np.uint8)
    out[(c + 2 * r + 3 * k) % 7 == 0] = 1
    out[(c < 2) & (r > shape[1] - 3)] = 2
    return out


@pytest.mark.parametrize("flipped", [False, True])
def test_dicom_seg_frames_and_geometry(tmp_path, flipped):
    """Frames land on the instance at their position, whatever the mask grid's slice order and the file order."""
    import highdicom as hd
    from pydicom import dcmread

    slices, rows, cols = 4, 6, 9
    series = write_series(tmp_path / "ct", np.zeros((slices, rows, cols)), type2=False)
    mask = _pattern((cols, rows, slices))
    affine = itk_affine_lps()
    if flipped:  # the same volume on a grid whose slice axis runs the other way
        mask = mask[:, :, ::-1]
        affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, slices - 1], [0, 0, 0, 1.0]])
        expected = {uid: _pattern((cols, rows, slices))[:, :, k].T for uid, _, k in series["instances"]}
    else:
        expected = {uid: mask[:, :, k].T for uid, _, k in series["instances"]}
    files = sorted(str(p) for p in (tmp_path / "ct").iterdir())
    out = write_dicom_seg(tmp_path / "seg.dcm", mask, affine, files, ORGANS, "my_bundle", "0.1.0")
    ds = dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert int(ds.NumberOfFrames) == slices * len(ORGANS)  # empty frames kept: the SEG covers the series
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series["series"]
    assert ds.FrameOfReferenceUID == series["frame"] and ds.StudyInstanceUID == series["study"]
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.8, 0.6]
    positions = sorted(tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient)
                       for f in ds.PerFrameFunctionalGroupsSequence)
    assert positions == sorted(tuple(p) for _, p, _ in series["instances"] for _ in ORGANS)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["right kidney", "liver"]
    seg = hd.seg.segread(out)
    uids = [uid for uid, _, _ in series["instances"]]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    for i, uid in enumerate(uids):
        np.testing.assert_array_equal(pixels[i], expected[uid], err_msg=uid)
    with pytest.raises(FileExistsError):
        write_dicom_seg(out, mask, affine, files, ORGANS, "my_bundle")


def test_dicom_seg_rejects_a_foreign_grid_and_unknown_labels(tmp_path):
    write_series(tmp_path / "ct", np.zeros((3, 6, 9)))
    files = sorted(str(p) for p in (tmp_path / "ct").iterdir())
    mask = _pattern((9, 6, 3))
    shifted = itk_affine_lps()
    shifted[:3, 3] += (0.3, 0.0, 0.0)  # half a column off
    with pytest.raises(ValueError, match="not a slice of the predicted mask's grid"):
        write_dicom_seg(tmp_path / "a.dcm", mask, shifted, files, ORGANS, "b")
    with pytest.raises(ValueError, match="outside the predicted mask"):
        write_dicom_seg(tmp_path / "a.dcm", mask[:, :, :2], itk_affine_lps(), files, ORGANS, "b")
    with pytest.raises(ValueError, match=r"mask values \[2\] have no segment"):
        write_dicom_seg(tmp_path / "a.dcm", mask, itk_affine_lps(), files, LESION, "b")
    assert not (tmp_path / "a.dcm").exists()


def test_instance_frames_reads_transposed_grids():
    """A grid stored (row, column, slice) instead of ITK's (column, row, slice) still maps pixel for pixel."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [1.0, 2.0, 3.0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.Rows, ds.Columns = [0.5, 0.25], 3, 5
    grid = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5)[..., None]  # (row, column, 1)
    affine = np.zeros((4, 4))
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3], affine[3, 3] = (0, 0.5, 0), (0.25, 0, 0), \
        (0, 0, 1), (1, 2, 3), 1
    np.testing.assert_array_equal(instance_frames(grid, affine, [ds])[0], grid[..., 0])


# --------------------------------------------------------------------------------------------- weights
def test_load_weights_checks_file_keys_and_shapes(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 1, 1))
    with pytest.raises(CheckpointError, match=r"bundle my_bundle: checkpoint .*nothing\.pt does not exist"):
        load_weights(net, tmp_path / "nothing.pt", "my_bundle")
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Conv2d(3, 1, 1), torch.nn.ReLU())
    torch.save(other.state_dict(), tmp_path / "shapes.pt")
    with pytest.raises(CheckpointError, match=r"shapes\.pt does not fit .*shape mismatch.*0\.weight \(3, 1, 3, 3\)"):
        load_weights(net, tmp_path / "shapes.pt", "my_bundle")
    torch.save({"encoder.weight": torch.zeros(1)}, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match=r"4 missing key\(s\): 0\.weight.*1 unexpected key\(s\): encoder"):
        load_weights(net, tmp_path / "keys.pt", "my_bundle")
    torch.save(other, tmp_path / "pickled.pt")  # a whole pickled module: refused by weights_only
    with pytest.raises(CheckpointError, match=r"pickled\.pt cannot be loaded with torch\.load\(weights_only=True\)"):
        load_weights(net, tmp_path / "pickled.pt", "my_bundle")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt cannot be loaded"):
        load_weights(net, tmp_path / "junk.pt", "my_bundle")
    # a plain state_dict and the bundles' {"model": ...} checkpoints both load, every tensor
    source = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 1, 1))
    torch.save({"model": source.state_dict(), "epoch": torch.tensor(3)}, tmp_path / "last.pt")
    load_weights(net, tmp_path / "last.pt", "my_bundle")
    for k, v in net.state_dict().items():
        assert torch.equal(v, source.state_dict()[k])


# --------------------------------------------------------------------------------------------- segments
def test_every_bundle_describes_its_labels():
    """Names, colours and SNOMED CT codes in every bundle's metadata; codes agree with pydicom's dictionary."""
    from pydicom.sr.codedict import codes

    known: dict[str, set] = {}  # code → its meanings (several keywords share a code: Spleen, SplenicStructure)
    for keyword in dir(codes.SCT):
        code = getattr(codes.SCT, keyword) if not keyword.startswith("_") else None
        if hasattr(code, "value"):
            known.setdefault(code.value, set()).add(code.meaning.lower())
    checked, unchecked = set(), set()
    for meta_file in sorted(REPO.glob("bundles/*/configs/metadata.json")):
        meta = json.loads(meta_file.read_text())
        inference = json.loads((meta_file.parent / "inference.json").read_text())
        segments = bundle_segments(meta, inference["num_classes"], str(meta_file))
        channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        assert [s.name for s in segments] == [channel_def[str(s.value)] for s in segments]
        for s in segments:
            assert s.category[0] == s.type[0] == "SCT"
            for scheme, value, meaning in (s.category, s.type):
                if value in known:
                    assert meaning.lower() in known[value], (meta_file, value, meaning, known[value])
                    checked.add(value)
                else:
                    unchecked.add((value, meaning))
    # pydicom's dictionary lacks these: the first three were checked by hand against SNOMED CT; the two of the
    # covid_multiclass bundles (ground-glass opacity, consolidation) come from public code and are not yet checked
    # against SNOMED CT itself (a new code must be added here deliberately)
    assert unchecked == {("9846003", "Right kidney"), ("18639004", "Left kidney"), ("41329004", "Polyp"),
                         ("1217294009", "Ground glass opacity"), ("95436008", "Lung consolidation")}
    assert len(checked) == 9


def test_segments_fallback_and_errors():
    meta = {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "tumour"}}}}}
    segs = bundle_segments(meta, 3)
    assert [(s.value, s.name) for s in segs] == [(1, "tumour"), (2, "class 2")]
    assert segs[0].type == ("SCT", "85756007", "Tissue") and segs[0].color != segs[1].color
    with pytest.raises(ValueError, match=r"m\.json: segments have values \[1\], but the bundle predicts 3"):
        bundle_segments({"segments": [{"value": 1, "name": "a", "color": [1, 2, 3],
                                       "category": {"scheme": "SCT", "value": "1", "meaning": "x"},
                                       "type": {"scheme": "SCT", "value": "1", "meaning": "x"}}]}, 3, "m.json")
    with pytest.raises(ValueError, match=r"segments\[0\]: needs value, name, color"):
        bundle_segments({"segments": [{"value": 1, "name": "a"}]}, 2)


# --------------------------------------------------------------------------------------------- overlay
def test_overlay_keeps_the_picture_orientation_and_colours():
    """MONAI holds a W x H picture as (W, H); the overlay is H x W like the input, regions in their colour."""
    h, w = 12, 20
    image = np.zeros((1, w, h))
    image[0, :, :] = np.arange(w)[:, None]  # brighter to the right
    mask = np.zeros((w, h), np.uint8)
    mask[14:19, 2:7] = 1  # right, near the top
    pic = overlay_rgb(image, mask, LESION)
    assert pic.shape == (h, w, 3) and pic.dtype == np.uint8
    assert tuple(pic[2, 14]) == (255, 0, 0)  # the region's outline is the segment's colour
    inner = pic[4, 16]
    assert inner[0] > inner[1] == inner[2]  # filled: tinted red over grey
    assert pic[10, 0].tolist() == [0, 0, 0] and pic[10, 19, 0] == pic[10, 19, 1]  # elsewhere grey
    # a volume shows the slice with the most foreground
    vol_mask = np.zeros((w, h, 3), np.uint8)
    vol_mask[:5, :5, 2] = 1
    assert overlay_rgb(np.zeros((1, w, h, 3)), vol_mask, LESION)[0, 0].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match="differs"):
        overlay_rgb(np.zeros((1, w, h)), np.zeros((h, w), np.uint8), LESION)


def test_generator_requires_a_segment_for_every_label(tmp_path):
    """bundles/matrix.yaml's ``segments`` table is checked when bundles are generated."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("generate_bundles", REPO / "scripts" / "generate_bundles.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    matrix = yaml.safe_load((REPO / "bundles" / "matrix.yaml").read_text())
    del matrix["segments"]["pancreas"]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(matrix))
    with pytest.raises(ValueError, match=r"bundles\[\d+\] \(synapse_unet\): segments: no entry for label 'pancreas'"):
        gen.load_matrix(tmp_path / "m.yaml")
    matrix = yaml.safe_load((REPO / "bundles" / "matrix.yaml").read_text())
    matrix["segments"]["lesion"]["color"] = [255, 0]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(matrix))
    with pytest.raises(ValueError, match="segments: lesion: color must be three integers"):
        gen.load_matrix(tmp_path / "m.yaml")
