"""Bad samples inside a bundle's pipeline stop with the file's name, never train silently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from dale_monai.bundle_transforms import CheckSampled
from tests.conftest import REPO


def _meta(arr, name):
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(arr), meta={"filename_or_obj": name})


def test_valid_sample_passes_unchanged():
    d = {"image": _meta(np.random.rand(1, 8, 8), "img.png"), "label": _meta(np.eye(8)[None], "lbl.png")}
    assert CheckSampled(num_classes=2)(d)["label"] is d["label"]


def test_0_255_mask_is_rejected_naming_the_file():
    d = {"image": _meta(np.random.rand(1, 8, 8), "img.png"), "label": _meta(np.eye(8)[None] * 255, "case7_mask.png")}
    with pytest.raises(ValueError, match=r"case7_mask\.png.*255.*0\.\.1.*map 255 to 1"):
        CheckSampled(num_classes=2)(d)


def test_class_out_of_range_and_soft_values_rejected():
    d = {"image": _meta(np.zeros((1, 4, 4)), "a.png"), "label": _meta(np.full((1, 4, 4), 3), "b.nii.gz")}
    with pytest.raises(ValueError, match=r"b\.nii\.gz.*3"):
        CheckSampled(num_classes=3)(d)
    d["label"] = _meta(np.full((1, 4, 4), 0.5), "soft.png")
    with pytest.raises(ValueError, match=r"soft\.png.*0\.5"):
        CheckSampled(num_classes=2)(d)


def test_nan_image_rejected_and_inference_without_label():
    img = np.random.rand(1, 4, 4)
    img[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"scan\.nii\.gz.*1 NaN/Inf"):
        CheckSampled(num_classes=2)({"image": _meta(img, "scan.nii.gz")})
    assert "label" not in CheckSampled(num_classes=2)({"image": _meta(np.ones((1, 4, 4)), "x.png")})


def test_bad_setting():
    with pytest.raises(ValueError, match="num_classes"):
        CheckSampled(num_classes=1)


def test_default_bundle_pipeline_rejects_a_0_255_mask(tmp_path):
    Image.fromarray((np.random.rand(32, 32) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "synthetic2d_unet" / "configs" / "train.json"))
    transform = parser.get_parsed_content("train#preprocessing")
    with pytest.raises(Exception) as excinfo:
        transform({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "mask.png")})
    # MONAI wraps transform errors ("applying transform ..."); ours is the cause, shown in the traceback
    messages, err = [], excinfo.value
    while err is not None:
        messages.append(str(err))
        err = err.__cause__
    assert any("mask.png" in m and "255" in m for m in messages), messages
