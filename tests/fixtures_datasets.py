"""Tiny fake datasets in the exact layouts the public datasets are distributed in (names, extensions,
mask encodings), for the converter tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "blob_mask",
    "grey_image",
    "rgb_image",
    "save",
    "save_jpeg",
    "read_json",
    "read_png",
    "make_covid_tree",
    "make_ph2_distributed",
    "make_isic2016",
    "make_kvasir",
    "make_cvc_clinicdb",
    "make_polyp_benchmark",
    "make_mosmed",
    "make_synapse",
    "make_dicom_series",
    "write_dicom_slices",
    "pixel_positions",
    "tilted_orientation",
]


def blob_mask(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A 0/1 ellipse somewhere inside an ``h`` x ``w`` image."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    yy, xx = np.mgrid[:h, :w]
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)


def grey_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def rgb_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, arr: np.ndarray, mode: str | None = None, palette: bool = False) -> Path:
    """Save with the format chosen by the extension; ``palette`` writes a ``P`` image holding ``arr`` as indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    if palette:
        img = Image.fromarray(arr.astype(np.uint8), "P")
        img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.save(path)
    return path


def save_jpeg(path: Path, arr: np.ndarray, quality: int = 75) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=quality)
    return path


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def make_covid_tree(root: Path, n_doctor: int = 3, n_pseudo: int = 4, n_test: int = 2, n_mc: int = 3) -> Path:
    """Inf-Net ``Dataset/``: JPEG grey slices, 0/255 GT, soft 0..255 pseudo GT, palette 0/1/2 multi-class GT."""
    ds = root / "Dataset"
    train, test = ds / "TrainingSet", ds / "TestingSet"
    for i in range(n_doctor):
        h, w = 40 + i, 36
        save_jpeg(train / "LungInfection-Train/Doctor-label/Imgs" / f"{i}.jpg", grey_image(h, w, i))
        save(train / "LungInfection-Train/Doctor-label/GT" / f"{i}.png", blob_mask(h, w, i) * 255)
    for i in range(n_pseudo):
        h, w = 32, 30 + i
        name = f"Data-1_coronacases_org_001_{i + 1}"
        save_jpeg(train / "LungInfection-Train/Pseudo-label/Imgs" / f"{name}.jpg", grey_image(h, w, 10 + i))
        soft = np.clip(blob_mask(h, w, 10 + i) * 200 + np.random.default_rng(i).integers(0, 56, (h, w)), 0, 255)
        save(train / "LungInfection-Train/Pseudo-label/GT" / f"{name}.png", soft.astype(np.uint8))
    for i in range(n_test):
        h, w = 38, 34 + i
        save_jpeg(test / "LungInfection-Test/Imgs" / f"{18 + i}.jpg", grey_image(h, w, 30 + i))
        save(test / "LungInfection-Test/GT" / f"{18 + i}.png", blob_mask(h, w, 30 + i) * 255)
    for folder, n in (("TrainingSet/MultiClassInfection-Train", n_mc), ("TestingSet/MultiClassInfection-Test", 2)):
        for i in range(n):
            h, w = 36, 36
            save_jpeg(ds / folder / "Imgs" / f"{i}.jpg", grey_image(h, w, 40 + i))
            classes = blob_mask(h, w, 40 + i) + blob_mask(h, w, 50 + i) * (1 - blob_mask(h, w, 40 + i)) * 2
            save(ds / folder / "GT" / f"{i}.png", classes, palette=True)
    return root


def make_ph2_distributed(root: Path, cases: dict[str, tuple[int, int]]) -> Path:
    """``PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` + ``IMDxxx_lesion/IMDxxx_lesion.bmp``."""
    base = root / "PH2 Dataset images"
    for i, (case, (h, w)) in enumerate(cases.items()):
        save(base / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp", rgb_image(h, w, i))
        save(base / case / f"{case}_lesion" / f"{case}_lesion.bmp", blob_mask(h, w, i) * 255)
        (base / case / f"{case}_roi").mkdir()  # as distributed; not used
    return root


def make_isic2016(root: Path, n_train: int = 6, n_test: int = 2) -> Path:
    parts = (("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth", n_train, 0),
             ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth", n_test, 100))
    for data, gt, n, offset in parts:
        for i in range(n):
            name = f"ISIC_{offset + i:07d}"
            save_jpeg(root / data / f"{name}.jpg", rgb_image(30, 40, offset + i))
            save(root / gt / f"{name}_Segmentation.png", blob_mask(30, 40, offset + i) * 255)
    return root


def make_kvasir(root: Path, n: int = 5) -> Path:
    """``Kvasir-SEG/images/*.jpg`` and ``masks/*.jpg`` (RGB JPEG masks, as distributed)."""
    base = root / "Kvasir-SEG"
    for i in range(n):
        name = f"cju{i:02d}qkwl35piu0993l0dewei2"
        save_jpeg(base / "images" / f"{name}.jpg", rgb_image(48, 64, i))
        mask = np.repeat(blob_mask(48, 64, i)[..., None] * 255, 3, axis=-1).astype(np.uint8)
        save_jpeg(base / "masks" / f"{name}.jpg", mask)
    (base / "kavsir_bboxes.json").write_text("{}")
    return root


def make_cvc_clinicdb(root: Path, n: int = 5, variant: str = "tif") -> Path:
    base = root if variant == "tif" else root / "PNG"
    ext = ".tif" if variant == "tif" else ".png"
    for i in range(1, n + 1):
        save(base / "Original" / f"{i}{ext}", rgb_image(28, 36, i))
        save(base / "Ground Truth" / f"{i}{ext}", blob_mask(28, 36, i) * 255)
    return root


def make_polyp_benchmark(root: Path, n_train: int = 6, n_test: int = 2) -> Path:
    for i in range(n_train):
        save(root / "TrainDataset/image" / f"{i + 1}.png", rgb_image(32, 32, i))
        save(root / "TrainDataset/mask" / f"{i + 1}.png", blob_mask(32, 32, i) * 255)
    for j, name in enumerate(("Kvasir", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "CVC-300")):
        for i in range(n_test):
            mask = blob_mask(32, 32, 100 * j + i) * 255
            mask[0, 0] = 200  # resized masks hold some intermediate values
            save(root / "TestDataset" / name / "images" / f"{i}.png", rgb_image(32, 32, 100 * j + i))
            save(root / "TestDataset" / name / "masks" / f"{i}.png", mask.astype(np.uint8))
    return root


def make_mosmed(root: Path, n: dict[str, int] | None = None) -> Path:
    n = n or {"Train_Folder": 3, "Val_Folder": 2, "Test_Folder": 2}
    for folder, count in n.items():
        for i in range(count):
            name = f"study_{folder[:2]}_{i}.png"
            save(root / folder / "img" / name, grey_image(32, 32, i))
            save(root / folder / "labelcol" / name, blob_mask(32, 32, i) * 255)
    return root


def make_synapse(root: Path, cases: tuple[str, ...] = ("case0005", "case0006"), slices: int = 2,
                 test_cases: tuple[str, ...] = ("case0001",), lists: bool = True) -> Path:
    """``train_npz/*.npz`` slices and ``test_vol_h5/*.npy.h5`` volumes (TransUNet preprocessing)."""
    import h5py

    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for case in cases:
        for k in range(slices):
            name = f"{case}_slice{k:03d}"
            label = (blob_mask(16, 20, k) * rng.integers(1, 9)).astype(np.float32)
            np.savez(root / "train_npz" / f"{name}.npz", image=rng.random((16, 20), dtype=np.float32), label=label)
            names.append(name)
    for case in test_cases:
        label = np.stack([blob_mask(16, 20, k) * (k + 1) for k in range(3)]).astype(np.float32)
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f["image"] = rng.random((3, 16, 20), dtype=np.float32)
            f["label"] = label
    if lists:
        d = root / "lists" / "lists_Synapse"
        d.mkdir(parents=True)
        (d / "train.txt").write_text("\n".join(names) + "\n")
        (d / "test_vol.txt").write_text("\n".join(test_cases) + "\n")
    return root


def make_dicom_series(folder: Path, n: int = 4, rows: int = 6, columns: int = 5, spacing: float = 2.5,
                      slope: float = 2.0, intercept: float = -1024.0, seed: int = 0, uid: str | None = None,
                      drop: tuple[int, ...] = (), positions: bool = True, orientation=(1, 0, 0, 0, 1, 0),
                      origin=(-10.0, 20.0, 30.0), series_number: int = 1) -> tuple[np.ndarray, list[Path]]:
    """A CT series of ``n`` slices, one file per slice in shuffled order with meaningless names.

    Returns:
        the stored pixel values ``(n, rows, columns)`` (before rescale) in slice order, and the files.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 2000, (n, rows, columns)).astype(np.int16)
    series_uid = uid or generate_uid()
    study = generate_uid()
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in rng.permutation(n):
        if k in drop:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", study, series_uid
        ds.SeriesNumber, ds.InstanceNumber = series_number, int(k) + 1
        if positions:
            ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + normal * spacing * k]
            ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.7], spacing
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = pixels[k].tobytes()
        path = folder / f"IM{rng.integers(1e6):06d}_{k}"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return pixels, files


def tilted_orientation(degrees: float, axis: str = "row") -> tuple[float, ...]:
    """``ImageOrientationPatient`` of an axial plane tilted by ``degrees``: about the row axis (the columns rise
    towards +z, as a CT gantry tilts) or about the column axis (the rows do)."""
    c, s = float(np.cos(np.radians(degrees))), float(np.sin(np.radians(degrees)))
    if axis == "row":
        return (1.0, 0.0, 0.0, 0.0, c, s)
    if axis == "column":
        return (c, 0.0, s, 0.0, 1.0, 0.0)
    raise ValueError(axis)


def pixel_positions(position, orientation, pixel_spacing, rows: int, columns: int) -> np.ndarray:
    """LPS position of every pixel of a slice, ``(rows, columns, 3)`` (DICOM PS3.3 C.7.6.2.1.1)."""
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    return (np.asarray(position, float) + c[..., None] * pixel_spacing[1] * row_dir
            + r[..., None] * pixel_spacing[0] * col_dir)


def write_dicom_slices(folder: Path, pixels: np.ndarray, positions, orientation=(1, 0, 0, 0, 1, 0),
                       pixel_spacing=(0.8, 0.7), photometric: str = "MONOCHROME2", slope: float | None = None,
                       intercept: float | None = None, modality_lut: tuple[int, np.ndarray] | None = None,
                       bits_stored: int = 16, signed: bool = True, seed: int = 0,
                       series_uid: str | None = None) -> list[dict]:
    """A single-frame CT series, slice ``k`` holding the stored values ``pixels[k]`` at ``positions[k]``, written
    in a shuffled order under opaque names (nothing may rely on file order or names).

    Args:
        pixels: stored values ``(slices, rows, columns)``.
        positions: ``ImagePositionPatient`` of each slice (LPS mm).
        modality_lut: ``(first stored value mapped, table)``: a ``ModalityLUTSequence`` instead of a rescale.

    Returns:
        per slice, in slice order: ``{"path", "uid", "position"}``.
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    series_uid, study_uid, frame_uid = series_uid or generate_uid(), generate_uid(), generate_uid()
    n, rows, cols = pixels.shape
    out: list[dict] = [{} for _ in range(n)]
    for k in rng.permutation(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{rng.integers(1_000_000):06d}"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.Modality = "Test^Geometry", "P1", "CT"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "19700101", "O", "20240101", "120000"
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
        ds.SeriesNumber, ds.InstanceNumber = 1, int(k) + 1
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = 2.0
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0.0
        if modality_lut is not None:
            first, table = modality_lut
            item = Dataset()
            item.add_new("LUTDescriptor", "US", [len(table), int(first), 16])
            item.add_new("LUTData", "US", [int(v) for v in table])
            item.ModalityLUTType = "US"
            ds.ModalityLUTSequence = [item]
        ds.PixelData = pixels[k].astype(np.int16 if signed else np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        out[k] = {"path": path, "uid": ds.SOPInstanceUID, "position": [float(v) for v in positions[k]]}
    return out
