"""Transforms the bundles' configs use around MONAI's own: loading, input channels, sample checks, saving masks.

- :class:`CheckedLoadImage` / :class:`CheckedLoadImaged`: MONAI's ``LoadImage(d)`` whose errors name the file (a
  truncated PNG otherwise fails deep inside PIL with "image file is truncated" and no file name), and which reads
  DICOM with :class:`~dale_monai.dicom_reader.DicomSeriesReader` (the decoding and geometry of ``data_prep dicom``,
  so a bundle sees at inference the values it was trained on) instead of ITK;
- :class:`AdaptChannels` / :class:`AdaptChannelsd`: give a loaded image the channel count the network was
  trained with (a grey CT slice into an RGB dermoscopy network, an RGB photo into a grey network, the alpha
  channel of an RGBA or grey+alpha PNG dropped), and reject a 2D image given to a 3D network, a palette/CMYK
  image whose loaded values are not intensities, or a 4D NIfTI whose volumes are not the network's channels,
  with a message naming the file;
- :class:`CheckSampled`: reject NaN/Inf images, labels that are not class indices, a label whose size differs
  from its image, and (optionally) intensities outside the range a bundle expects;
- :class:`SaveMaskd`: MONAI's ``SaveImaged`` writing each mask in its input's kind of file: a PNG for a 2D
  PNG/JPG/BMP/TIFF input, NIfTI otherwise (volumes, DICOM series, NIfTI), with the input's number of spatial
  dimensions and, for a NIfTI input, its spatial header (qform, sform, codes, units), and never outside its
  output folder. Being a ``SaveImaged``, MONAI Label's bundle app drops it from
  the postprocessing as it does for every bundle.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor, PathLike
from monai.data import FolderLayout, MetaTensor
from monai.data.utils import to_affine_nd
from monai.data.image_writer import ImageWriter, NibabelWriter, PILWriter, resolve_writer
from monai.transforms import LoadImage, LoadImaged, MapTransform, SaveImage, SaveImaged, Transform
from monai.utils import TransformBackends, convert_data_type, get_equivalent_dtype
from monai.utils.enums import PostFix

__all__ = [
    "UnreadableImageError",
    "CheckedLoadImage",
    "CheckedLoadImaged",
    "CheckedLoadImageD",
    "CheckedLoadImageDict",
    "AdaptChannels",
    "AdaptChannelsd",
    "AdaptChannelsD",
    "AdaptChannelsDict",
    "CheckSampled",
    "SaveMaskd",
    "nifti_header_like",
    "IMAGE_SUFFIXES",
    "VOLUME_SUFFIXES",
]

#: file suffixes saved back as PNG by :class:`SaveMaskd` (2D images that carry no spacing worth a NIfTI)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: volume files whose channels (NIfTI's 4th axis) are volumes (time points, modalities), never colours
VOLUME_SUFFIXES = (".nii", ".nii.gz")

# ITU-R BT.601 luma, the weights PIL's convert("L") uses
_LUMA = (0.299, 0.587, 0.114)
# PIL modes (MONAI's PILReader records them as meta "mode") whose loaded values are not grey/RGB intensities
_PALETTE_MODES = ("P", "PA")
_OTHER_COLOUR_SPACES = ("CMYK", "YCbCr", "LAB", "HSV")


def _source(img: Any) -> str:
    meta = getattr(img, "meta", None) or {}
    src = meta.get("filename_or_obj", "")
    return str(src) if src else "<in-memory image>"


def _is_image_file(img: Any) -> bool:
    return Path(_source(img)).suffix.lower() in IMAGE_SUFFIXES


def _is_volume_file(img: Any) -> bool:
    return _source(img).lower().endswith(VOLUME_SUFFIXES)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


class UnreadableImageError(ValueError):
    """A file that MONAI's readers cannot load: missing, truncated, corrupt or of an unknown format."""


class CheckedLoadImage(LoadImage):
    """MONAI's :class:`~monai.transforms.LoadImage` whose failures name the file, and which reads DICOM as the
    training data was converted.

    MONAI passes the reader's own exception through, and PIL's for a truncated PNG is ``OSError: image file is
    truncated`` without the file's name: in a dataset of thousands of images that leaves the user guessing. Without
    an explicit ``reader``, a DICOM folder or file is read by :class:`~dale_monai.dicom_reader.DicomSeriesReader`
    (tried before MONAI's defaults), which decodes and places slices as ``python -m data_prep dicom`` does; MONAI's
    default, ITK, places a gantry-tilted series on an orthogonal grid and stacks uneven slices at one spacing. The
    arguments are those of ``LoadImage``.

    Raises:
        UnreadableImageError: naming the file(s) and the reader's error (which stays chained as the cause).
    """

    def __init__(self, reader: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(reader, *args, **kwargs)
        if reader is None:  # LoadImage tries the last registered reader first
            from .dicom_reader import DicomSeriesReader

            self.register(DicomSeriesReader())

    def __call__(self, filename: Sequence[PathLike] | PathLike, reader: Any = None):
        try:
            return super().__call__(filename, reader)
        except Exception as e:
            names = ", ".join(map(str, filename)) if isinstance(filename, (list, tuple)) else str(filename)
            raise UnreadableImageError(
                f"{names}: cannot be read ({type(e).__name__}: {e}); the file is missing, truncated, corrupt or in a "
                "format no installed reader handles"
            ) from e


class CheckedLoadImaged(LoadImaged):
    """Dictionary form of :class:`CheckedLoadImage`: MONAI's ``LoadImaged`` whose failures name the file.

    Being a ``LoadImaged``, MONAI Label's bundle app treats it as the loader it is (it switches off ``image_only``
    on instances of ``LoadImaged``). The arguments are those of ``LoadImaged``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: Any = None,
        dtype: DtypeLike = np.float32,
        meta_keys: KeysCollection | None = None,
        meta_key_postfix: str = PostFix.meta(),
        overwriting: bool = False,
        image_only: bool = True,
        ensure_channel_first: bool = False,
        simple_keys: bool = False,
        prune_meta_pattern: str | None = None,
        prune_meta_sep: str = ".",
        allow_missing_keys: bool = False,
        expanduser: bool = True,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, reader, dtype, meta_keys, meta_key_postfix, overwriting, image_only,
                         ensure_channel_first, simple_keys, prune_meta_pattern, prune_meta_sep, allow_missing_keys,
                         expanduser, *args, **kwargs)
        # the same loader as LoadImaged builds, of the class that names the file
        self._loader = CheckedLoadImage(reader, image_only, dtype, ensure_channel_first, simple_keys,
                                        prune_meta_pattern, prune_meta_sep, expanduser, *args, **kwargs)


CheckedLoadImageD = CheckedLoadImageDict = CheckedLoadImaged


class AdaptChannels(Transform):
    """Give a channel-first image ``channels`` channels: grey → RGB repeats, RGB(A) → grey takes the luma,
    RGBA → RGB drops alpha, grey+alpha (a 2-channel PNG/TIFF, PIL mode ``LA``) → grey or RGB drops alpha.

    Colour conversions are made only where the channels are colours: image files, DICOM colour samples and
    in-memory arrays. The channels of a NIfTI volume (its 4th axis, MONAI's channel axis) are volumes: time
    points, b-values, modalities. They pass when their count is the network's (a multi-modal bundle), a single
    volume may be repeated for an RGB network as a grey image is, and any other count is rejected naming the
    file and its number of volumes: fusing three time points with luma weights, or dropping a fourth, would give
    a mask of an image that does not exist. ``python -m dale_monai predict --each-volume`` predicts each volume.

    A palette image (PIL mode ``P``) loads as palette indices and a CMYK/YCbCr/LAB/HSV image as values of that
    colour space; neither is an intensity the network was trained on, so both are rejected (MONAI's PIL reader
    records the mode in the meta data).

    Args:
        channels: channels the network takes (1 or 3 for these conversions; equal counts pass unchanged).
        spatial_dims: if set, images with fewer spatial dimensions are rejected (a 2D image for a 3D network).

    Raises:
        ValueError: at call time, for a channel count that cannot be converted (a NIfTI volume count other than
            ``channels`` or 1), too few spatial dimensions, or a palette/non-RGB colour image, naming the file.
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
        mode = str((getattr(img, "meta", None) or {}).get("mode", ""))
        if mode in _PALETTE_MODES:
            raise ValueError(
                f"{_source(img)}: a palette image (PIL mode {mode}) loads as palette indices, not intensities; save "
                "it as grey or RGB (e.g. PIL's Image.convert('RGB'), or convert the dataset with python -m data_prep)"
            )
        if mode in _OTHER_COLOUR_SPACES:
            raise ValueError(f"{_source(img)}: a {mode} image; convert it to RGB or grey (e.g. PIL's "
                             "Image.convert('RGB'))")
        c = img.shape[0]
        if _is_volume_file(img) and c not in (1, self.channels):
            raise ValueError(
                f"{_source(img)}: a 4D NIfTI holding {c} volumes (shape {_shape(img.shape[1:])}x{c}), and this network "
                f"takes {self.channels} channel{'s' if self.channels > 1 else ''}: its volumes (time points, "
                "modalities) are not colour channels to fuse or drop. Give one volume (e.g. nibabel's "
                "img.slicer[..., i]), or predict each volume with python -m dale_monai predict --each-volume"
            )
        if c == 2 and (mode == "LA" or _is_image_file(img)):
            img = img[:1]  # grey + alpha: an image file's second channel is its alpha, never a modality
            c = 1
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
            "(and grey+alpha for image files) conversions are made."
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


class _MaskPILWriter(PILWriter):
    """MONAI's PNG writer keeping both spatial dims of a mask one pixel high.

    ``PILWriter`` squeezes every trailing singleton dimension, so a ``W x 1`` mask (a PNG one pixel high, loaded
    transposed) becomes 1D and the write fails deep inside numpy; only the single channel is dropped here.
    """

    def set_data_array(self, data_array: NdarrayOrTensor, channel_dim: int | None = 0, squeeze_end_dims: bool = True,
                       contiguous: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("spatial_ndim", None)
        super().set_data_array(data_array, channel_dim, squeeze_end_dims=False, contiguous=contiguous, **kwargs)
        if self.data_obj.ndim > 2 and self.data_obj.shape[-1] == 1:
            self.data_obj = self.data_obj[..., 0]


class _MaskNibabelWriter(NibabelWriter):
    """MONAI's NIfTI writer keeping the input's number of spatial dims and, for a NIfTI input, its spatial header.

    - A mask of a one-slice volume stays 3D (``NibabelWriter`` squeezes it to 2D) and a 2D slice's mask stays 2D.
    - ``NibabelWriter`` stores one affine as both qform and sform (code 1). A NIfTI input whose qform and sform
      differ is placed by nibabel/MONAI at its sform but by ITK (3D Slicer, ITK-SNAP) at its qform, so such a
      mask would sit elsewhere than its image in half the viewers. When the mask lies in the NIfTI input's voxel
      grid (see :func:`nifti_header_like`), it is written with the input's header instead: qform, sform, their
      codes, pixdim and units, so every reader resolves image and mask alike.
    """

    source: str | None = None
    read_affine: Any = None

    def set_data_array(self, data_array: NdarrayOrTensor, channel_dim: int | None = 0, squeeze_end_dims: bool = True,
                       **kwargs: Any) -> None:
        kwargs.setdefault("spatial_ndim", None)
        super().set_data_array(data_array, channel_dim, squeeze_end_dims=False, **kwargs)
        if self.data_obj.ndim > 2 and self.data_obj.shape[-1] == 1:
            self.data_obj = self.data_obj[..., 0]

    def set_metadata(self, meta_dict: Mapping | None, resample: bool = True, **options: Any) -> None:
        super().set_metadata(meta_dict, resample, **options)
        source = (meta_dict or {}).get("filename_or_obj")
        self.source = str(source) if isinstance(source, (str, Path)) else None
        self.read_affine = (meta_dict or {}).get("original_affine")

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        import nibabel as nib

        data = np.asarray(convert_data_type(self.data_obj, np.ndarray)[0])
        header = None
        if self.source is not None and self.affine is not None and not obj_kwargs:
            header = nifti_header_like(self.source, data.shape, convert_data_type(self.affine, np.ndarray)[0],
                                       self.read_affine)
        if header is None:
            super().write(filename, verbose=verbose, **obj_kwargs)
            return
        ImageWriter.write(self, filename, verbose=verbose)  # MONAI's logging only
        if self.output_dtype is not None:
            data = data.astype(get_equivalent_dtype(self.output_dtype, np.ndarray), copy=False)
        header.set_data_dtype(data.dtype)
        # affine None: nibabel writes the header's qform/sform and codes untouched
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        nib.save(image_class(data, None, header), str(filename))


def nifti_header_like(source: PathLike, shape: Sequence[int], affine: NdarrayOrTensor,
                      read_affine: NdarrayOrTensor | None = None) -> Any | None:
    """A header for a mask of NIfTI file ``source``: a copy of the file's header, or None when the mask does not
    lie in the file's voxel grid.

    Kept: the qform and sform with their codes, ``pixdim``, ``xyzt_units``, ``dim_info``, slice timing fields.
    Reset, as they describe the image's values rather than its space: scaling (``scl_slope``/``scl_inter``),
    display window (``cal_min``/``cal_max``), intent, description, ``aux_file`` and header extensions.

    Args:
        source: the input file (``.nii`` or ``.nii.gz``).
        shape: the mask's spatial shape.
        affine: the mask's affine as MONAI carries it (voxel to RAS mm), ``3x3`` for 2D or ``4x4``.
        read_affine: the input's affine as its reader gave it (MONAI's ``original_affine`` meta data): MONAI's
            NIfTI reader rewrites the forms of a header whose ``pixdim`` disagrees with them, so this may be
            neither the qform nor the sform of the file.

    Returns:
        a ``nibabel`` ``Nifti1Header`` (``Nifti2Header`` for a NIfTI-2 input), or None when ``source`` is not a
        readable NIfTI file, its first dims are not ``shape``, or ``affine`` is none of its qform, its sform and
        ``read_affine`` (the mask was resampled to another grid).
    """
    import nibabel as nib

    name = str(source).lower()
    if not name.endswith((".nii", ".nii.gz")) or not Path(source).is_file():
        return None
    try:
        src = nib.load(str(source))
    except Exception:  # not a NIfTI nibabel reads: MONAI's affine is all there is
        return None
    if not isinstance(src.header, (nib.Nifti1Header, nib.Nifti2Header)):
        return None
    shape = tuple(int(s) for s in shape)
    if tuple(src.shape[: len(shape)]) != shape or any(int(s) != 1 for s in src.shape[max(len(shape), 4):]):
        return None
    hdr = src.header.copy()
    candidates = [hdr.get_best_affine()]
    if read_affine is not None:
        candidates.append(to_affine_nd(3, np.asarray(convert_data_type(read_affine, np.ndarray)[0], np.float64)))
    for xform in ("qform", "sform"):
        matrix, code = getattr(hdr, f"get_{xform}")(coded=True)
        if code:
            candidates.append(matrix)
    mask_affine = to_affine_nd(3, np.asarray(convert_data_type(affine, np.ndarray)[0], np.float64))
    if not any(np.allclose(mask_affine, c, atol=1e-4) for c in candidates):
        return None
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"] = hdr["cal_max"] = 0
    hdr.set_intent("none")
    hdr["descrip"] = b"segmentation mask"
    hdr["aux_file"] = b""
    hdr.extensions.clear()
    return hdr


def _mask_writer(ext: str) -> type | None:
    """The dimension-keeping writer for ``ext`` when MONAI would pick PIL or nibabel, else MONAI's choice."""
    first = resolve_writer(ext.lstrip(".").lower(), error_if_not_found=False)
    first = first[0] if first else None
    return {PILWriter: _MaskPILWriter, NibabelWriter: _MaskNibabelWriter}.get(first)


class SaveMaskd(SaveImaged):
    """Save a segmentation mask beside its input's kind: PNG for 2D image files, NIfTI for everything else.

    The mask is written unresampled (``Invertd`` has already restored the input's grid) as ``output_dtype``
    class indices (0 background, 1.. the classes), named ``<input stem>_<output_postfix><ext>``; a DICOM series
    folder gives ``<folder name>_<output_postfix>.nii.gz`` with the series' affine; the mask of a NIfTI input
    carries that file's spatial header (qform, sform, their codes, pixdim, units; see :func:`nifti_header_like`),
    so ITK-based viewers, which prefer the qform, and nibabel/MONAI, which prefer the sform, place image and
    mask alike. The mask keeps its input's number of spatial dimensions (MONAI's writers squeeze trailing
    singleton dims: a PNG one pixel high, a volume of one slice). Output names come from input file names, which
    a datalist controls: a name that would resolve outside ``output_dir`` is refused before anything is written.

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

    Raises:
        ValueError: at call time, when an output path would leave ``output_dir``.
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
        super().__init__(keys, output_ext=volume_ext, allow_missing_keys=allow_missing_keys,
                         writer=_mask_writer(volume_ext), **common)
        self.image_saver = SaveImage(output_ext=image_ext, writer=_mask_writer(image_ext), **common)

    def saver_for(self, img: Any) -> SaveImage:
        """The saver for ``img``: PNG-like for a 2D mask of a 2D image file, else the volume saver."""
        if img.ndim - 1 == 2 and _is_image_file(img):
            return self.image_saver
        return self.saver

    @staticmethod
    def output_path(saver: SaveImage, img: MetaTensor) -> Path:
        """Where ``saver`` writes ``img``, without creating any folder.

        Raises:
            ValueError: when that path resolves outside the saver's output folder (``..`` in the input's name).
        """
        layout = saver.folder_layout
        if not isinstance(layout, FolderLayout):
            raise TypeError(f"SaveMaskd: expected MONAI's FolderLayout, got {type(layout).__name__}")
        dry = FolderLayout(output_dir=layout.output_dir, postfix=layout.postfix, extension=layout.ext,
                           parent=layout.parent, makedirs=False, data_root_dir=layout.data_root_dir)
        path = Path(dry.filename(**saver.fname_formatter(img.meta, saver))).resolve()
        root = Path(layout.output_dir).resolve()
        if root not in path.parents:
            raise ValueError(f"SaveMaskd: refusing to write {path} for input {_source(img)}: it resolves outside the "
                             f"output directory {root}")
        return path

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor):
                raise TypeError(f"SaveMaskd: '{key}' must be a MetaTensor carrying its input's meta data, got "
                                f"{type(img)}")
            saver = self.saver_for(img)
            self.output_path(saver, img)
            saver(img)
        return d


class CheckSampled(MapTransform):
    """Reject a sample the network must not be trained on (or predict from), with a message naming its file.

    - the image holds NaN or Inf values;
    - the image's intensities leave ``intensity_range``, for a bundle that does not rescale them (a 16-bit PNG or
      a CT in Hounsfield units given to a bundle trained on intensities in [0, 1]);
    - the label holds values that are not class indices ``0 .. num_classes - 1``: a 0/255 mask given to a
      2-class bundle would otherwise be trained on as class 255 (or, after a sigmoid, as a target of 255);
    - the label's spatial shape differs from its image's: the bundles resize image and label separately, so a
      mismatched mask would otherwise be stretched onto its image silently.

    ``python -m data_prep check --datalist ... --num-classes N`` finds the same problems for a whole datalist
    before training starts; this transform is the last line of defence inside the pipeline. Place it after
    ``EnsureChannelFirstd`` and before any resizing.

    Args:
        num_classes: number of classes including background (2 for a binary bundle).
        image_key: key of the image.
        label_key: key of the label (skipped when absent, as in inference).
        intensity_range: ``(low, high)`` the image's values must lie in; ``None`` (default) checks none.
    """

    def __init__(self, num_classes: int, image_key: str = "image", label_key: str = "label",
                 intensity_range: Sequence[float] | None = None) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"CheckSampled: num_classes must be at least 2 (background included), got {num_classes}")
        if intensity_range is not None:
            if len(intensity_range) != 2 or not float(intensity_range[0]) <= float(intensity_range[1]):
                raise ValueError(f"CheckSampled: intensity_range must be (low, high) with low <= high, got "
                                 f"{intensity_range}")
            intensity_range = (float(intensity_range[0]), float(intensity_range[1]))
        super().__init__(keys=[image_key, label_key], allow_missing_keys=True)
        self.num_classes = int(num_classes)
        self.image_key = image_key
        self.label_key = label_key
        self.intensity_range = intensity_range

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = torch.as_tensor(d[self.image_key])
        if not bool(torch.isfinite(image).all()):
            bad = int((~torch.isfinite(image)).sum())
            raise ValueError(f"{_source(d[self.image_key])}: the image holds {bad} NaN/Inf value(s)")
        if self.intensity_range is not None and image.numel():
            low, high = self.intensity_range
            lo, hi = float(image.min()), float(image.max())
            if lo < low or hi > high:
                raise ValueError(
                    f"{_source(d[self.image_key])}: intensities {lo:g}..{hi:g} outside {low:g}..{high:g}, the range "
                    "this bundle is trained on (it does not rescale intensities): prepare the image as the bundle's "
                    "dataset converter does (python -m data_prep)"
                )
        if self.label_key in d:
            label = torch.as_tensor(d[self.label_key])
            if tuple(label.shape[1:]) != tuple(image.shape[1:]):
                raise ValueError(
                    f"{_source(d[self.label_key])}: label size {_shape(label.shape[1:])} differs from its image's "
                    f"{_shape(image.shape[1:])} ({_source(d[self.image_key])}); a mask must match its image pixel for "
                    "pixel"
                )
            values = torch.unique(label)
            invalid = values[(values < 0) | (values > self.num_classes - 1) | (values != values.round())]
            if invalid.numel():
                shown = ", ".join(f"{v:g}" for v in invalid[:8].tolist())
                hint = " (a 0/255 mask: map 255 to 1, e.g. by converting the dataset with python -m data_prep)" if \
                    255 in invalid.tolist() else ""
                raise ValueError(
                    f"{_source(d[self.label_key])}: label values {shown} are not class indices "
                    f"0..{self.num_classes - 1}{hint}"
                )
        return d
