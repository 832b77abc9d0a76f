"""FuzzyPartition / FuzzyPartitiond: types, meta data, validation, pipelines and collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, EnsureTyped, Flipd, RandFlipd, RandRotate90d
from monai.utils import TransformBackends

from dale_monai.engines import DALEKeys
from dale_monai.partition import fuzzy_masks
from dale_monai.transforms import FuzzyPartition, FuzzyPartitionD, FuzzyPartitiond, FuzzyPartitionDict


def sample(shape=(1, 32, 24), n_classes=2, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    label = np.zeros((1, *shape[1:]), dtype=np.float32)
    # a blob, so that edges are where a boundary is
    grids = np.meshgrid(*[np.arange(s) for s in shape[1:]], indexing="ij")
    dist = sum((g - s / 2) ** 2 for g, s in zip(grids, shape[1:]))
    label[0][dist < (min(shape[1:]) / 3) ** 2] = 1
    if n_classes > 2:
        label[0][dist < (min(shape[1:]) / 6) ** 2] = 2
    return image, label


def test_array_transform_numpy_in_numpy_out():
    image, label = sample()
    mask_n, mask_f = FuzzyPartition(patch_size=8)(image, label)
    assert isinstance(mask_n, np.ndarray) and isinstance(mask_f, np.ndarray)
    assert mask_n.dtype == mask_f.dtype == np.float32
    expected = fuzzy_masks(image, label, patch_size=8)
    np.testing.assert_allclose(mask_n, expected[0].numpy())
    np.testing.assert_allclose(mask_f, expected[1].numpy())


def test_array_transform_torch_and_metatensor():
    image, label = sample(n_classes=3)
    partition = FuzzyPartition(8, tau=0.5, edge="sobel", entropy="shannon")
    t_n, t_f = partition(torch.as_tensor(image), torch.as_tensor(label))
    assert type(t_n) is torch.Tensor and t_n.dtype == torch.float32
    affine = torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0]))
    meta_label = MetaTensor(torch.as_tensor(label), affine=affine, meta={"filename_or_obj": "case_001.nii.gz"})
    m_n, m_f = partition(MetaTensor(image), meta_label)
    for out, ref in ((m_n, t_n), (m_f, t_f)):
        assert isinstance(out, MetaTensor) and out.dtype == torch.float32
        torch.testing.assert_close(out.affine, affine.to(out.affine.dtype))
        assert out.meta["filename_or_obj"] == "case_001.nii.gz"
        torch.testing.assert_close(out.as_tensor(), ref)
    # the copy is not the label's own meta dictionary
    m_n.meta["filename_or_obj"] = "changed"
    assert meta_label.meta["filename_or_obj"] == "case_001.nii.gz"


def test_backend_and_aliases():
    assert FuzzyPartition.backend == [TransformBackends.TORCH, TransformBackends.NUMPY]
    assert FuzzyPartitionD is FuzzyPartitiond and FuzzyPartitionDict is FuzzyPartitiond
    # default output keys are the ones the DALE trainer reads
    t = FuzzyPartitiond()
    assert (t.nonfuzzy_key, t.fuzzy_key) == (DALEKeys.MASK_N, DALEKeys.MASK_F)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tau=1.5), "tau"),
        (dict(tau=-0.1), "tau"),
        (dict(patch_size=0), "patch_size"),
        (dict(patch_size=(16, 0)), "patch_size"),
        (dict(patch_size=2.5), "patch_size"),
        (dict(bins=0), "bins"),
        (dict(edge="canny"), "edge"),
        (dict(entropy="renyi"), "entropy"),
        (dict(use_entropy=False, use_edges=False), "use_entropy and use_edges"),
        (dict(mode="pixel"), "mode"),
        (dict(mode="paper", entropy="shannon"), "mode='paper' fixes entropy"),
        (dict(mode="paper", combine="weighted"), "mode='paper' fixes combine"),
        (dict(combine="mean"), "combine"),
        (dict(combine="weighted", ae_weight=-0.1), "ae_weight"),
        (dict(use_edges=False, combine="weighted"), "use_edges=False"),
        (dict(mode="band"), "band_width is required"),
        (dict(mode="band", band_width=0), "band_width"),
        (dict(band_width=3), "band_width is only used with mode='band'"),
        (dict(mode="band", band_width=3, band_profile="cosine"), "band_profile"),
    ],
)
def test_invalid_options_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FuzzyPartition(**kwargs)
    with pytest.raises(ValueError, match=match):
        FuzzyPartitiond(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(keys="image"), "pair"),
        (dict(keys=("img", "seg"), image_key="image"), "image_key 'image' is not one of keys"),
        (dict(keys=("img", "seg"), image_key="seg", label_key="seg"), "same key"),
        (dict(nonfuzzy_key="m", fuzzy_key="m"), "same key"),
        (dict(fuzzy_key="label"), "overwrite"),
    ],
)
def test_invalid_keys_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FuzzyPartitiond(**kwargs)


def test_spatial_mismatch_names_both_shapes():
    image, label = sample(shape=(3, 32, 24))
    with pytest.raises(ValueError, match=r"\(3, 32, 24\).*\(1, 32, 20\)"):
        FuzzyPartition(8)(image, label[..., :20])
    with pytest.raises(ValueError, match=r"'image'.*\(3, 32, 24\).*'label'.*\(1, 32, 20\)"):
        FuzzyPartitiond(patch_size=8)({"image": image, "label": label[..., :20]})


def test_dictionary_transform_custom_keys_and_missing_keys():
    image, label = sample()
    t = FuzzyPartitiond(keys=("img", "seg"), nonfuzzy_key="n", fuzzy_key="f", patch_size=8)
    out = t({"img": image, "seg": label, "other": 1})
    assert set(out) == {"img", "seg", "other", "n", "f"}
    assert out["img"] is image and out["seg"] is label
    ref_n, ref_f = FuzzyPartition(8)(image, label)
    np.testing.assert_array_equal(out["n"], ref_n)
    np.testing.assert_array_equal(out["f"], ref_f)
    with pytest.raises(KeyError, match="seg"):
        t({"img": image})
    lenient = FuzzyPartitiond(keys=("img", "seg"), allow_missing_keys=True)
    assert set(lenient({"img": image})) == {"img"}


def test_pipeline_of_tensors_then_collate():
    data = []
    for seed in range(4):
        image, label = sample(shape=(3, 40, 40), n_classes=3, seed=seed)  # square: rotations keep the shape
        data.append({"image": image, "label": label})
    keys = ("image", "label")
    pipeline = Compose(
        [
            EnsureTyped(keys=keys, track_meta=True),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            RandRotate90d(keys=keys, prob=0.5, spatial_axes=(0, 1)),
            FuzzyPartitiond(keys=keys, patch_size=16, tau=0.9),
        ]
    )
    pipeline.set_random_state(seed=0)
    loader = DataLoader(Dataset(data, pipeline), batch_size=2, num_workers=0)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        for key in ("mask_n", "mask_f"):
            mask = batch[key]
            assert isinstance(mask, MetaTensor) and mask.dtype == torch.float32
            assert mask.shape[0] == 2 and mask.shape[1] == 1
            assert mask.shape[2:] == batch["label"].shape[2:]
            assert torch.all((mask >= 0) & (mask <= 1))
            assert mask.affine.shape == (2, 4, 4)
        # masks describe the augmented sample (label and image as the model sees them)
        for i in range(2):
            ref_n, ref_f = fuzzy_masks(batch["image"][i].as_tensor(), batch["label"][i].as_tensor(), 16)
            torch.testing.assert_close(batch["mask_n"][i].as_tensor(), ref_n)
            torch.testing.assert_close(batch["mask_f"][i].as_tensor(), ref_f)


def test_masks_follow_later_spatial_transforms():
    # with sizes that are multiples of the patch, flipping commutes with the partition
    image, label = sample(shape=(1, 32, 32), n_classes=3, seed=5)
    keys = ("image", "label")
    partition_first = Compose(
        [
            EnsureTyped(keys=keys),
            FuzzyPartitiond(keys=keys, patch_size=8),
            Flipd(keys=(*keys, "mask_n", "mask_f"), spatial_axis=1),
        ]
    )({"image": image, "label": label})
    flip_first = Compose(
        [EnsureTyped(keys=keys), Flipd(keys=keys, spatial_axis=1), FuzzyPartitiond(keys=keys, patch_size=8)]
    )({"image": image, "label": label})
    for key in ("mask_n", "mask_f"):
        torch.testing.assert_close(partition_first[key].as_tensor(), flip_first[key].as_tensor())
        # the flip is recorded on the mask as on the label (so Invertd can undo it)
        assert [op["class"] for op in partition_first[key].applied_operations] == ["Flip"]
    assert partition_first["mask_f"].max() == 1 and partition_first["mask_n"].min() < 1


@pytest.mark.parametrize(
    "options",
    [
        dict(mode="paper"),
        dict(combine="er"),
        dict(combine="weighted", ae_weight=0.25, entropy="shannon"),
        dict(mode="band", band_width=2),
        dict(mode="band", band_width=1.5, band_profile="linear"),
    ],
)
def test_transform_options_reach_the_partition(options):
    image, label = sample(shape=(3, 32, 24), n_classes=3, seed=2)
    meta_label = MetaTensor(torch.as_tensor(label), meta={"filename_or_obj": "case_002.png"})
    t = FuzzyPartitiond(keys=("image", "label"), patch_size=8, **options)
    for name, value in options.items():
        assert getattr(t.partition, name) == value
    out = t({"image": MetaTensor(image), "label": meta_label})
    ref_n, ref_f = fuzzy_masks(image, label, patch_size=8, **options)
    for key, ref in (("mask_n", ref_n), ("mask_f", ref_f)):
        assert isinstance(out[key], MetaTensor) and out[key].meta["filename_or_obj"] == "case_002.png"
        torch.testing.assert_close(out[key].as_tensor(), ref)
    # each option changes the masks of this sample but the paper preset, which is the default
    default_f = fuzzy_masks(image, label, patch_size=8)[1]
    assert torch.equal(ref_f, default_f) == (options == dict(mode="paper"))


def test_band_transform_numpy_and_3d():
    image, label = sample(shape=(1, 20, 18, 12), n_classes=3, seed=6)
    mask_n, mask_f = FuzzyPartition(mode="band", band_width=2)(image, label)
    assert isinstance(mask_f, np.ndarray) and mask_f.dtype == np.float32 and mask_f.shape == (1, 20, 18, 12)
    np.testing.assert_array_equal(mask_n, 1 - mask_f)
    assert set(np.unique(mask_f)) == {0.0, 1.0}
    # both class boundaries (0/1 and 1/2) are in the band
    inner = label[0] == 2
    assert mask_f[0][inner].max() == 1 and mask_f[0][label[0] == 1].max() == 1


def test_3d_dictionary_transform():
    image, label = sample(shape=(1, 20, 18, 12), seed=6)
    out = FuzzyPartitiond(patch_size=(8, 8, 4))({"image": torch.as_tensor(image), "label": torch.as_tensor(label)})
    assert out["mask_n"].shape == out["mask_f"].shape == (1, 20, 18, 12)
    assert type(out["mask_f"]) is torch.Tensor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_tensors_stay_on_device():
    image, label = sample()
    mask_n, mask_f = FuzzyPartition(8)(MetaTensor(image).cuda(), MetaTensor(label).cuda())
    assert mask_n.is_cuda and mask_f.is_cuda and isinstance(mask_f, MetaTensor)
    ref_n, ref_f = FuzzyPartition(8)(image, label)
    np.testing.assert_allclose(mask_n.cpu().numpy(), ref_n)
    np.testing.assert_allclose(mask_f.cpu().numpy(), ref_f)


@pytest.mark.realdata
def test_ph2_fuzzy_mask_is_higher_on_the_lesion_border(real_dataset):
    from PIL import Image

    from dale_monai.partition import label_edges

    root = real_dataset("ph2")
    names = sorted(p.name for p in (root / "images").glob("*.png"))[:4]
    assert names, f"no PNG images under {root / 'images'}"
    for name in names:
        rgb = np.asarray(Image.open(root / "images" / name).convert("RGB")).transpose(2, 0, 1)  # (3, H, W) uint8
        mask = np.asarray(Image.open(root / "masks" / name))[None]  # (1, H, W), 0/255
        assert rgb.shape[1:] == mask.shape[1:], f"{name}: image {rgb.shape} and mask {mask.shape} differ"
        edges = label_edges(mask).numpy()[None]
        assert edges.any(), f"{name}: the lesion mask has no border"
        # 192 × 256: the last row of 16 × 16 patches is complete, so is the grid; all still in [0, 1]
        for entropy, margin in (("paper", 0.05), ("shannon", 0.1)):
            mask_n, mask_f = FuzzyPartition(entropy=entropy)(rgb, mask)
            assert mask_n.shape == mask_f.shape == mask.shape
            # pixels on the lesion border sit in fuzzier patches than the rest
            assert mask_f[edges].mean() > mask_f[~edges].mean() + margin, (name, entropy)
            assert mask_n[edges].mean() < mask_n[~edges].mean() + 0.05, (name, entropy)
