"""Transforms the bundles' inference configs use around MONAI's own: input channels, and saving masks.

- :class:`AdaptChannels` / :class:`AdaptChannelsd`: give a loaded image the channel count the network was
  trained with (a grey CT slice into an RGB dermoscopy network, an RGB photo into a grey network), and reject a
  2D image given to a 3D network with a message naming the file;
- :class:`SaveMaskd`: MONAI's ``SaveImaged`` writing each mask in its input's kind of file: a PNG for a 2D
  PNG/JPG/BMP/TIFF input, NIfTI otherwise (volumes, DICOM series, NIfTI). Being a ``SaveImaged``, MONAI Label's
  bundle app drops it from the postprocessing as it does for every bundle.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, SaveImage, SaveImaged, Transform
from monai.utils import TransformBackends

__all__ = [
    "AdaptChannels",
    "AdaptChannelsd",
    "AdaptChannelsD",
    "AdaptChannelsDict",
    "CheckSampled",
    "SaveMaskd",
    "IMAGE_SUFFIXES",
]

#: file suffixes saved back as PNG by :class:`SaveMaskd` (2D images that carry no spacing worth a NIfTI)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# ITU-R BT.601 luma, the weights PIL's convert("L") uses
_LUMA = (0.299, 0.587, 0.114)


def _source(img: Any) -> str:
    meta = getattr(img, "meta", None) or {}
    src = meta.get("filename_or_obj", "")
    return str(src) if src else "<in-memory image>"


class AdaptChannels(Transform):
    """Give a channel-first image ``channels`` channels: grey → RGB repeats, RGB(A) → grey takes the luma,
    RGBA → RGB drops alpha.

    Args:
        channels: channels the network takes (1 or 3 for these conversions; equal counts pass unchanged).
        spatial_dims: if set, images with fewer spatial dimensions are rejected (a 2D image for a 3D network).

    Raises:
        ValueError: at call time, for a channel count that cannot be converted or too few spatial dimensions,
            naming the image's file.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channels: int, spatial_dims: int | None = None) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = int(channels)
        self.spatial_dims = spatial_dims

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Convert ``img``, ``(C, *spatial)``; the result keeps the input's type and meta data."""
        if self.spatial_dims is not None and img.ndim - 1 < self.spatial_dims:
            raise ValueError(
                f"{_source(img)}: a {img.ndim - 1}D image of shape {tuple(img.shape[1:])} cannot go into this "
                f"{self.spatial_dims}D network; give it a volume (NIfTI or a DICOM series folder)."
            )
        c = img.shape[0]
        if c == self.channels:
            return img
        if self.channels == 3 and c == 1:
            return img.repeat(3, *([1] * (img.ndim - 1))) if isinstance(img, torch.Tensor) else np.repeat(img, 3, 0)
        if self.channels == 3 and c == 4:
            return img[:3]
        if self.channels == 1 and c in (3, 4):
            shape = (3,) + (1,) * (img.ndim - 1)
            if isinstance(img, torch.Tensor):
                w = torch.as_tensor(_LUMA, dtype=torch.float32, device=img.device).reshape(shape)
                return (img[:3].float() * w).sum(0, keepdim=True)
            return (np.asarray(img[:3], dtype=np.float32) * np.reshape(_LUMA, shape)).sum(0, keepdims=True)
        raise ValueError(
            f"{_source(img)}: the image has {c} channels and the network takes {self.channels}; only grey/RGB/RGBA "
            "conversions are made."
        )


class AdaptChannelsd(MapTransform):
    """Dictionary form of :class:`AdaptChannels`.

    Args:
        keys: keys of the images to convert.
        channels: see :class:`AdaptChannels`.
        spatial_dims: see :class:`AdaptChannels`.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = AdaptChannels.backend

    def __init__(
        self, keys: KeysCollection, channels: int, spatial_dims: int | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.adapter = AdaptChannels(channels, spatial_dims)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.adapter(d[key])
        return d


AdaptChannelsD = AdaptChannelsDict = AdaptChannelsd


class SaveMaskd(SaveImaged):
    """Save a segmentation mask beside its input's kind: PNG for 2D image files, NIfTI for everything else.

    The mask is written unresampled (``Invertd`` has already restored the input's grid) as ``output_dtype``
    class indices (0 background, 1.. the classes), named ``<input stem>_<output_postfix><ext>``; a DICOM series
    folder gives ``<folder name>_<output_postfix>.nii.gz`` with the series' affine.

    Args:
        keys: keys of the masks to save.
        output_dir: folder of the outputs.
        output_postfix: appended to the input's name.
        image_ext: extension for 2D inputs whose file suffix is one of :data:`IMAGE_SUFFIXES`.
        volume_ext: extension for all other inputs.
        output_dtype: data type of the written masks.
        separate_folder: one sub-folder per input, as MONAI's ``SaveImaged``.
        print_log: log each written file.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path = "./",
        output_postfix: str = "seg",
        image_ext: str = ".png",
        volume_ext: str = ".nii.gz",
        output_dtype: DtypeLike = np.uint8,
        separate_folder: bool = False,
        print_log: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        common = dict(output_dir=output_dir, output_postfix=output_postfix, resample=False, output_dtype=output_dtype,
                      separate_folder=separate_folder, print_log=print_log)
        super().__init__(keys, output_ext=volume_ext, allow_missing_keys=allow_missing_keys, **common)
        self.image_saver = SaveImage(output_ext=image_ext, **common)

    def saver_for(self, img: Any) -> SaveImage:
        """The saver for ``img``: PNG-like for a 2D mask of a 2D image file, else the volume saver."""
        if img.ndim - 1 == 2 and Path(_source(img)).suffix.lower() in IMAGE_SUFFIXES:
            return self.image_saver
        return self.saver

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor):
                raise TypeError(f"SaveMaskd: '{key}' must be a MetaTensor carrying its input's meta data, got {type(img)}")
            self.saver_for(img)(img)
        return d


class CheckSampled(MapTransform):
    """Reject a sample the network must not be trained on, with a message naming its file.

    - the image holds NaN or Inf values;
    - the label holds values that are not class indices ``0 .. num_classes - 1``: a 0/255 mask given to a
      2-class bundle would otherwise be trained on as class 255 (or, after a sigmoid, as a target of 255).

    ``python -m data_prep check --datalist ... --num-classes N`` finds the same problems for a whole datalist
    before training starts; this transform is the last line of defence inside the pipeline.

    Args:
        num_classes: number of classes including background (2 for a binary bundle).
        image_key: key of the image.
        label_key: key of the label (skipped when absent, as in inference).
    """

    def __init__(self, num_classes: int, image_key: str = "image", label_key: str = "label") -> None:
        if int(num_classes) < 2:
            raise ValueError(f"CheckSampled: num_classes must be at least 2 (background included), got {num_classes}")
        super().__init__(keys=[image_key, label_key], allow_missing_keys=True)
        self.num_classes = int(num_classes)
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = torch.as_tensor(d[self.image_key])
        if not bool(torch.isfinite(image).all()):
            bad = int((~torch.isfinite(image)).sum())
            raise ValueError(f"{_source(d[self.image_key])}: the image holds {bad} NaN/Inf value(s)")
        if self.label_key in d:
            label = torch.as_tensor(d[self.label_key])
            values = torch.unique(label)
            invalid = values[(values < 0) | (values > self.num_classes - 1) | (values != values.round())]
            if invalid.numel():
                shown = ", ".join(f"{v:g}" for v in invalid[:8].tolist())
                hint = " (a 0/255 mask: map 255 to 1, e.g. by converting the dataset with python -m data_prep)" if \
                    255 in invalid.tolist() else ""
                raise ValueError(
                    f"{_source(d[self.label_key])}: label values {shown} are not class indices 0..{self.num_classes - 1}"
                    f"{hint}"
                )
        return d
