"""Awkward image files through the bundles' own pipelines (parsed from ``bundles/<name>/configs``) and through
``python -m data_prep check``: a truncated PNG, RGBA / grey+alpha / 16-bit / palette PNGs, grey into an RGB bundle and
RGB into a grey one, a mask of the wrong size, images smaller than the patch and the network's minimum size, and
volumes with fewer slices than the network downsamples.

Each either trains and predicts correctly (resized to ``spatial_size``, the mask restored to the input's size) or
stops with a message naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from data_prep.__main__ import main as data_prep_main
from tests.test_bundles_inference import _copy_with_random_weights
from tests.test_bundles_run import _configs, _train

LOADER = "dale_monai.bundle_transforms.CheckedLoadImaged"
# a narrower network than the shipped ph2_unet, same depth: 4 stride-2 downsamplings (minimum input 16 px)
NARROW_PH2 = {"network_def#channels": [4, 8, 8, 16, 16]}
H, W = 20, 30  # PNG size; MONAI loads PNGs transposed, as (W, H)


pytestmark = pytest.mark.usefixtures("one_thread")


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (H, W), dtype=np.uint8)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (H, W, 1), dtype=np.uint8)  # random: a network fed alpha would see it
    _save(root / "grey.png", grey)
    _save(root / "rgb.png", rgb)
    _save(root / "rgba.png", np.concatenate([rgb, alpha], -1))
    _save(root / "la.png", np.concatenate([grey[..., None], alpha], -1), mode="LA")
    _save(root / "grey_as_rgb.png", np.repeat(grey[..., None], 3, -1))
    # 16 bits: the 8-bit image times 257 (same picture, full 16-bit range) plus sub-8-bit detail
    _save(root / "g16x257.png", grey.astype(np.uint16) * 257)
    _save(root / "g16.png", grey.astype(np.uint16) * 257 + rng.integers(0, 257, (H, W)).astype(np.uint16))
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(root / "palette.png")
    raw = (root / "grey.png").read_bytes()
    (root / "truncated.png").write_bytes(raw[: len(raw) // 2])
    mask = np.zeros((H, W), np.uint8)
    mask[5:12, 8:20] = 1
    _save(root / "mask.png", mask)
    _save(root / "mask_21x30.png", np.zeros((H + 1, W), np.uint8))
    _save(root / "tiny.png", rng.integers(0, 256, (7, 9, 3), dtype=np.uint8))
    tiny_mask = np.zeros((7, 9), np.uint8)
    tiny_mask[2:5, 3:7] = 1
    _save(root / "tiny_mask.png", tiny_mask)
    _save(root / "one_row.png", rng.integers(0, 256, (1, 9, 3), dtype=np.uint8))
    _save(root / "one_column.png", rng.integers(0, 256, (9, 1, 3), dtype=np.uint8))
    return root


def _pipeline(name: str, overrides: dict | None = None, which: str = "train"):
    """The bundle's deterministic training transforms (what validation runs) or its inference preprocessing."""
    parser = ConfigParser()
    parser.read_config(_configs(name, f"{which}.json"))
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser.get_parsed_content("validate#preprocessing" if which == "train" else "preprocessing")


def _errors(call) -> list[str]:
    """Messages of the exception ``call()`` raises and of its causes (MONAI wraps transform errors)."""
    with pytest.raises(Exception) as excinfo:
        call()
    messages, err = [], excinfo.value
    while err is not None:
        messages.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return messages


def _sample(pngs: Path, image: str, label: str = "mask.png") -> dict:
    return {"image": str(pngs / image), "label": str(pngs / label)}


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    return (arr - arr.min()) / (arr.max() - arr.min())


# ------------------------------------------------------------------------------------------ corrupt files
@pytest.mark.parametrize("which", ["train", "inference"])
def test_truncated_png_is_named_by_the_checked_loader(pngs, which):
    key = "train#deterministic_transforms#0#_target_" if which == "train" else "preprocessing#transforms#0#_target_"
    transform = _pipeline("synthetic2d_unet", {key: LOADER}, which)
    messages = _errors(lambda: transform(_sample(pngs, "truncated.png")))
    assert any(str(pngs / "truncated.png") in m and "truncated" in m for m in messages), messages


def test_shipped_bundle_names_a_truncated_png(pngs):
    transform = _pipeline("synthetic2d_unet")
    messages = _errors(lambda: transform(_sample(pngs, "truncated.png")))
    assert any("truncated.png" in m for m in messages), messages


def test_data_prep_check_lists_every_bad_file(pngs, tmp_path, capsys):
    entries = {name: {"image": str(pngs / name), "label": str(pngs / label)} for name, label in [
        ("truncated.png", "mask.png"), ("grey.png", "mask_21x30.png"), ("palette.png", "mask.png"),
        ("rgba.png", "mask.png"), ("la.png", "mask.png"), ("g16.png", "mask.png"), ("tiny.png", "tiny_mask.png")]}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": list(entries.values())}))
    rc = data_prep_main(["check", "--datalist", str(datalist), "--num-classes", "2", "--min-size", "16",
                         "--patch-size", "16"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 1

    def line(level: str, file: str) -> str:
        found = [s for s in lines if s.startswith(level) and str(pngs / file) in s]
        assert len(found) == 1, (level, file, lines)
        return found[0]

    assert "truncated" in line("ERROR", "truncated.png")
    assert "size mismatch" in line("ERROR", "mask_21x30.png") and "21x30" in line("ERROR", "mask_21x30.png")
    assert "palette" in line("ERROR", "palette.png")
    assert "7x9" in line("ERROR", "tiny.png") and "--min-size 16" in line("ERROR", "tiny.png")
    assert "alpha" in line("WARNING", "rgba.png") and "alpha" in line("WARNING", "la.png")
    assert not any(s.startswith("ERROR") and any(f in s for f in ("rgba.png", "la.png", "g16.png")) for s in lines)


# ------------------------------------------------------------------------------------------ channels and depth
@pytest.mark.parametrize("name", ["synthetic2d_unet", "ph2_unet"])  # a grey bundle and an RGB bundle
def test_alpha_is_dropped_never_fed_as_a_channel(pngs, name):
    transform = _pipeline(name, {"spatial_size": [W, H]})  # the loaded size: no resampling
    rgba, rgb = transform(_sample(pngs, "rgba.png"))["image"], transform(_sample(pngs, "rgb.png"))["image"]
    la, grey = transform(_sample(pngs, "la.png"))["image"], transform(_sample(pngs, "grey.png"))["image"]
    channels = 1 if name == "synthetic2d_unet" else 3
    assert rgba.shape == la.shape == (channels, W, H)
    torch.testing.assert_close(rgba, rgb, rtol=0, atol=0)
    torch.testing.assert_close(la, grey, rtol=0, atol=0)


def test_grey_into_rgb_bundle_and_rgb_into_grey_bundle(pngs):
    grey_png = np.asarray(Image.open(pngs / "grey.png"))
    rgb_png = np.asarray(Image.open(pngs / "rgb.png")).astype(np.float64)
    rgb_bundle = _pipeline("ph2_unet", {"spatial_size": [W, H]})
    grey_bundle = _pipeline("synthetic2d_unet", {"spatial_size": [W, H]})
    repeated = rgb_bundle(_sample(pngs, "grey.png"))["image"]
    assert repeated.shape == (3, W, H)
    for c in range(3):
        np.testing.assert_allclose(repeated[c].numpy(), _minmax(grey_png).T, atol=1e-6)
    luma = grey_bundle(_sample(pngs, "rgb.png"))["image"]
    assert luma.shape == (1, W, H)
    np.testing.assert_allclose(luma[0].numpy(), _minmax(rgb_png @ [0.299, 0.587, 0.114]).T, atol=1e-5)
    # grey saved as RGB comes back as the grey image
    same = grey_bundle(_sample(pngs, "grey_as_rgb.png"))["image"]
    torch.testing.assert_close(same, grey_bundle(_sample(pngs, "grey.png"))["image"], rtol=0, atol=1e-5)


def test_16bit_png_is_scaled_over_its_range_not_clipped(pngs):
    g16 = np.asarray(Image.open(pngs / "g16.png"))
    assert g16.dtype == np.uint16 and g16.max() > 255
    out = _pipeline("synthetic2d_unet", {"spatial_size": [W, H]})(_sample(pngs, "g16.png"))["image"]
    np.testing.assert_allclose(out[0].numpy(), _minmax(g16).T, atol=1e-6)
    assert len(torch.unique(out)) > 256  # the 16-bit detail survives: not reduced to 8 bits


def test_palette_png_is_rejected_naming_the_file(pngs):
    messages = _errors(lambda: _pipeline("ph2_unet")(_sample(pngs, "palette.png")))
    assert any("palette.png" in m and "palette indices" in m for m in messages), messages


def test_mask_of_another_size_is_rejected_naming_both_files(pngs):
    messages = _errors(lambda: _pipeline("synthetic2d_unet")(_sample(pngs, "grey.png", "mask_21x30.png")))
    assert any("mask_21x30.png" in m and "grey.png" in m and "30x21" in m and "30x20" in m for m in messages), messages


def test_unscaled_bundle_rejects_intensities_outside_its_range(pngs):
    """The synapse bundles do not rescale (their data is in [0, 1]); CheckSampled's intensity_range makes a 16-bit
    PNG (or a CT in HU) an error naming the file instead of input 10^4 times out of range."""
    parser = ConfigParser()
    parser.read_config(_configs("synapse_unet", "train.json"))
    targets = [t["_target_"] for t in parser["train"]["deterministic_transforms"]]
    index = targets.index("dale_monai.bundle_transforms.CheckSampled")
    transform = _pipeline("synapse_unet", {f"train#deterministic_transforms#{index}#intensity_range": [0, 1]})
    messages = _errors(lambda: transform(_sample(pngs, "g16.png")))
    assert any("g16.png" in m and "outside 0..1" in m for m in messages), messages


def test_shipped_unscaled_bundle_rejects_a_16bit_png(pngs):
    messages = _errors(lambda: _pipeline("synapse_unet")(_sample(pngs, "g16.png")))
    assert any("g16.png" in m and "outside 0..1" in m for m in messages), messages


# ------------------------------------------------------------------------------------------ small inputs
@pytest.fixture(scope="module")
def awkward_dataset(pngs, tmp_path_factory) -> Path:
    """Training on alpha, 16-bit, grey and 7x9 images at once, validation on 7x9 and 16-bit ones."""
    root = tmp_path_factory.mktemp("awkward")
    for name in ("rgba.png", "la.png", "g16.png", "grey.png", "tiny.png", "mask.png", "tiny_mask.png"):
        shutil.copy(pngs / name, root / name)
    pair = lambda image: {"image": image, "label": "tiny_mask.png" if image == "tiny.png" else "mask.png"}  # noqa
    (root / "datalist.json").write_text(json.dumps({
        "training": [pair(i) for i in ("rgba.png", "la.png", "g16.png", "tiny.png")],
        "validation": [pair("tiny.png"), pair("g16.png")]}))
    return root


def test_one_epoch_on_alpha_16bit_grey_and_7x9_images(awkward_dataset, tmp_path):
    """ph2_unet: an RGB bundle with 4 stride-2 downsamplings and partition patch 16, trained on images as small as
    7x9 (resized to ``spatial_size`` like every image) and on grey, grey+alpha, RGBA and 16-bit PNGs."""
    root = tmp_path / "bundle"
    _train("ph2_unet", root, awkward_dataset, **NARROW_PH2)
    state = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert (root / "models" / "model.pt").is_file()  # validation ran (on the 7x9 and 16-bit images) and scored


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) if path.suffix == ".png" else np.asarray(nib.load(path).dataobj)


def test_inference_restores_tiny_and_one_pixel_wide_images(pngs, tmp_path):
    name = "ph2_unet"
    _copy_with_random_weights(name, tmp_path / name, [32, 32])
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in ("tiny.png", "one_row.png", "one_column.png", "rgb.png", "rgba.png", "grey.png"):
        shutil.copy(pngs / f, inputs / f)
    out = tmp_path / "out"
    from monai.bundle import run

    run("run", config_file=str(tmp_path / name / "configs" / "inference.json"), input_dir=str(inputs),
        output_dir=str(out), spatial_size=[32, 32])
    shapes = {p.name: _mask(p).shape for p in out.iterdir()}
    assert shapes == {"tiny_seg.png": (7, 9), "one_row_seg.png": (1, 9), "one_column_seg.png": (9, 1),
                      "rgb_seg.png": (H, W), "rgba_seg.png": (H, W), "grey_seg.png": (H, W)}
    np.testing.assert_array_equal(_mask(out / "rgba_seg.png"), _mask(out / "rgb_seg.png"))


def test_inference_on_a_16bit_png_matches_the_8bit_image(pngs, tmp_path):
    from monai.bundle import run

    name = "synthetic2d_unet"
    _copy_with_random_weights(name, tmp_path / name, [32, 32])
    for f in ("grey.png", "g16x257.png"):
        run("run", config_file=str(tmp_path / name / "configs" / "inference.json"), input_dir=str(pngs / f),
            output_dir=str(tmp_path / "out"), spatial_size=[32, 32])
    eight, sixteen = _mask(tmp_path / "out" / "grey_seg.png"), _mask(tmp_path / "out" / "g16x257_seg.png")
    assert eight.shape == (H, W) and 0 < eight.mean() < 1  # both classes predicted: the match means something
    np.testing.assert_array_equal(sixteen, eight)


@pytest.fixture(scope="module")
def thin_volumes(tmp_path_factory) -> Path:
    """3D volumes of 1, 2 and 3 slices (the 3D UNet downsamples 3 times: at least 8 voxels a side), labelled."""
    root = tmp_path_factory.mktemp("thin")
    rng = np.random.default_rng(2)
    entries = []
    for z in (1, 2, 3):
        image = rng.random((20, 24, z)).astype(np.float32)
        label = (image > 0.6).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, np.diag([0.8, 0.8, 3.0, 1.0])), root / f"vol{z}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.diag([0.8, 0.8, 3.0, 1.0])), root / f"vol{z}_label.nii.gz")
        entries.append({"image": f"vol{z}.nii.gz", "label": f"vol{z}_label.nii.gz"})
    (root / "datalist.json").write_text(json.dumps({"training": entries[1:], "validation": entries[:1],
                                                    "test": entries}))
    return root


def test_3d_bundle_on_volumes_with_fewer_slices_than_it_downsamples(thin_volumes, tmp_path):
    from monai.bundle import run

    name = "synthetic3d_unet"
    root = tmp_path / "bundle"
    _train(name, root, thin_volumes)  # resized to spatial_size: 16^3 here
    assert torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)["trainer"]["iteration"] == 1
    out = tmp_path / "out"
    run("run", config_file=_configs(name, "inference.json"), bundle_root=str(root), input_dir=str(thin_volumes),
        output_dir=str(out), spatial_size=[16, 16, 16])
    for z in (1, 2, 3):
        written = nib.load(out / f"vol{z}_seg.nii.gz")
        assert written.shape == (20, 24, z)  # a one-slice volume's mask stays 3D
        np.testing.assert_allclose(written.affine, np.diag([0.8, 0.8, 3.0, 1.0]), atol=1e-6)


# ------------------------------------------------------------------------------------------ the transforms alone
def test_checked_loader_is_a_load_image_that_names_the_file(pngs, tmp_path):
    from monai.transforms import LoadImaged

    from dale_monai.bundle_transforms import CheckedLoadImaged, UnreadableImageError

    loader = CheckedLoadImaged(keys=["image", "label"], image_only=True, ensure_channel_first=True)
    assert isinstance(loader, LoadImaged)  # what MONAI Label's bundle app looks for
    good = loader(_sample(pngs, "grey.png"))
    assert good["image"].shape == (1, W, H) and good["label"].shape == (1, W, H)
    with pytest.raises(UnreadableImageError, match=r"missing\.png: cannot be read"):
        loader({"image": str(pngs / "grey.png"), "label": str(tmp_path / "missing.png")})
    loader._loader.image_only = False  # as MONAI Label switches it: image and meta data come back
    assert "image_meta_dict" in loader(_sample(pngs, "grey.png"))


def test_adapt_channels_alpha_palette_and_colour_spaces():
    from monai.data import MetaTensor

    from dale_monai.bundle_transforms import AdaptChannels, CheckSampled

    la = MetaTensor(torch.stack([torch.full((4, 5), 3.0), torch.full((4, 5), 9.0)]), meta={"mode": "LA"})
    assert torch.equal(AdaptChannels(1)(la), la[:1]) and torch.equal(AdaptChannels(3)(la)[2], la[0])
    with pytest.raises(ValueError, match="holding 2 volumes"):  # two volumes of a NIfTI: not an alpha to drop
        AdaptChannels(1)(MetaTensor(torch.rand(2, 4, 5, 6), meta={"filename_or_obj": "two_modalities.nii.gz"}))
    for mode, match in (("P", "palette indices"), ("CMYK", "CMYK image")):
        with pytest.raises(ValueError, match=rf"scan\.png: .*{match}"):
            AdaptChannels(3)(MetaTensor(torch.rand(1, 4, 5), meta={"mode": mode, "filename_or_obj": "scan.png"}))
    for bad in ([1, 0], [0, 1, 2]):
        with pytest.raises(ValueError, match="intensity_range"):
            CheckSampled(2, intensity_range=bad)
    inside = MetaTensor(torch.rand(1, 4, 5), meta={"filename_or_obj": "ok.nii.gz"})
    assert CheckSampled(2, intensity_range=[0, 1])({"image": inside})["image"] is inside
