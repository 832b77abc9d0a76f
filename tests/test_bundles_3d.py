"""3D bundles the way MONAI's model-zoo 3D bundles work: target spacing, patches, sliding window, inversion.

- a mask predicted on an oblique, anisotropic, non-RAS volume lands on the lesion in world coordinates (Dice
  against a sphere defined in mm), through the bundle's own inference.json (``Orientationd``, ``Spacingd``,
  sliding window, ``Invertd``), with a threshold network standing in for a trained one;
- the sliding window equals a whole-volume pass when the volume is one window;
- ``RandCropByPosNegLabeld`` centres patches on foreground at the configured ``pos / (pos + neg)``;
- a resumed 3D run with patch sampling ends bit-identical to an uninterrupted one;
- ``predict`` on a volume larger than the window never gives the network more than one window, and shows a bar
  over the windows of each case.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
NAME = "synthetic3d_unet"

pytestmark = pytest.mark.usefixtures("one_thread")


def _configs(*files: str) -> list[str]:
    return [str(REPO / "bundles" / NAME / "configs" / f) for f in files]


def _parser(*files: str, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_configs(*files))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


def _threshold_bundle(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the bundle whose network is a 1x1x1 convolution with logit ``10 * (x - 0.5)``: a stand-in for a
    trained network that finds the bright lesion, exact and random-free."""
    dest = tmp_path / NAME
    shutil.copytree(REPO / "bundles" / NAME / "configs", dest / "configs")
    conv = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(10.0)
        conv.bias.fill_(-5.0)
    (dest / "models").mkdir()
    torch.save(conv.state_dict(), dest / "models" / "model.pt")
    return dest, {"network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 1,
                                  "kernel_size": 1}}


def test_mask_of_an_oblique_anisotropic_volume_lands_on_the_lesion_in_world_coordinates(tmp_path):
    """A sphere of radius 7 mm in a volume of 0.8 x 0.8 x 2.5 mm voxels, rotated 20° and 30°, its first axis
    flipped (an LPS-like voxel order): the bundle resamples it to 1 mm RAS, predicts with a sliding window and
    inverts the mask onto the input's voxels, where it must cover the sphere (Dice against the sphere evaluated at
    the voxel centres in mm) and carry the input's affine."""
    from dale_monai.predict import Predictor

    zooms = np.array([0.8, 0.8, 2.5])
    shape = (48, 44, 14)
    affine = np.eye(4)
    affine[:3, :3] = _rotation(np.deg2rad(20), np.deg2rad(30)) @ np.diag(zooms * [-1, 1, 1])
    centre_vox = (np.array(shape) - 1) / 2 + [3, -2, 0.5]
    affine[:3, 3] = [12.0, -40.0, 7.0] - affine[:3, :3] @ centre_vox  # the lesion's centre at (12, -40, 7) mm
    centre_mm, radius = np.array([12.0, -40.0, 7.0]), 7.0
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    dist = np.linalg.norm(world - centre_mm, axis=1).reshape(shape)
    sphere = dist <= radius
    rng = np.random.default_rng(0)
    # a soft edge (a logistic of 0.5 mm) and a little noise, as a scanned lesion
    image = (1.0 / (1.0 + np.exp((dist - radius) / 0.5)) + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "oblique.nii.gz")

    bundle, overrides = _threshold_bundle(tmp_path)
    predictor = Predictor(bundle, device="cpu", overrides=overrides)
    report = predictor.predict_path(tmp_path / "oblique.nii.gz", tmp_path / "out", progress=False)
    assert report.ok, report.describe()
    seg = nib.load(tmp_path / "out" / "oblique_seg.nii.gz")
    np.testing.assert_allclose(seg.affine, affine, atol=1e-4)
    mask = np.asarray(seg.dataobj) > 0
    assert mask.shape == shape
    dice = 2 * (mask & sphere).sum() / (mask.sum() + sphere.sum())
    assert dice > 0.9, dice
    # the mask's centre of mass in mm is the lesion's (a flipped or swapped axis would move it by centimetres)
    com = affine[:3, :3] @ np.argwhere(mask).mean(0) + affine[:3, 3]
    np.testing.assert_allclose(com, centre_mm, atol=1.0)


def test_sliding_window_equals_a_whole_volume_pass_where_the_volume_is_one_window():
    """Validation's and inference's sliding window (Gaussian blending) on a volume of exactly one window gives
    the network's own output: the blending weights cancel."""
    parser = _parser("inference.json", spatial_size=[32, 32, 24], **{"network_def#channels": [8, 16, 32, 64]})
    inferer = parser.get_parsed_content("inferer")
    assert type(inferer).__name__ == "SlidingWindowInferer" and inferer.mode == "gaussian"
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    x = torch.rand(1, 1, 32, 32, 24)
    with torch.no_grad():
        torch.testing.assert_close(inferer(x, network), network(x), rtol=1e-5, atol=1e-5)
    train = _parser("train.json", spatial_size=[32, 32, 24], **{"network_def#channels": [8, 16, 32, 64]})
    validation = train.get_parsed_content("validate#inferer")
    with torch.no_grad():
        torch.testing.assert_close(validation(x, network), network(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("pos", "neg"), [(1, 3), (1, 1)])
def test_patch_sampling_draws_foreground_at_the_configured_ratio(pos, neg, tmp_path):
    """The training pipeline's patches are centred on foreground with probability ``pos / (pos + neg)``: the
    centre voxel of each of 200 patches (8 per volume, 25 passes) is counted."""
    from monai.utils import set_determinism

    shape = (40, 40, 24)
    grid = np.indices(shape)
    label = (np.sum((grid - np.reshape([20, 20, 12], (3, 1, 1, 1))) ** 2, 0) <= 16).astype(np.uint8)
    rng = np.random.default_rng(1)
    image = (0.5 * label + rng.random(shape)).astype(np.float32)
    for name, arr in (("image", image), ("label", label)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / f"{name}.nii.gz")
    set_determinism(seed=0)
    try:
        parser = _parser("train.json", spatial_size=[8, 8, 8],
                         **{"patch#pos": pos, "patch#neg": neg, "patch#num_samples": 8, "dale#patch_size": 4})
        preprocessing = parser.get_parsed_content("train#preprocessing")
        item = {"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")}
        hits = total = 0
        for _ in range(25):
            patches = preprocessing(item)
            assert len(patches) == 8
            for patch in patches:
                assert tuple(patch["label"].shape[1:]) == (8, 8, 8)
                # flips and 90° rotations move the centre voxel (4, 4, 4) only within the central 2x2x2
                hits += int(patch["label"][0, 3:5, 3:5, 3:5].max() > 0)
                total += 1
    finally:
        set_determinism(seed=None)
    expected = pos / (pos + neg)
    assert abs(hits / total - expected) < 0.1, (hits, total, expected)


@pytest.fixture(scope="module")
def tiny3d(tmp_path_factory) -> Path:
    from data_prep.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny3d")
    make_synthetic_dataset(out, dims=3, n_train=2, n_val=1, n_test=1, size=24, verbose=False)
    return out


def _train(root: Path, data: Path, **extra) -> None:
    from monai.bundle import run

    settings = {"bundle_root": str(root), "dataset_dir": str(data), "spatial_size": [16, 16, 16], "batch_size": 1,
                "num_epochs": 1, "val_interval": 1, "dale#patch_size": 8, "network_def#channels": [8, 16, 32, 64]}
    run("training", config_file=_configs("train.json"), **{**settings, **extra})


def test_resume_with_patch_sampling_is_bit_identical(tmp_path, tiny3d):
    """One epoch, then a resumed second one, equals two uninterrupted epochs to the bit: the patch sampler's
    random state travels with the last checkpoint like every other random transform's."""
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    _train(resumed, tiny3d)
    _train(resumed, tiny3d, num_epochs=2, resume=True)
    _train(straight, tiny3d, num_epochs=2)
    a = torch.load(resumed / "models" / "checkpoint_last.pt", weights_only=True)
    b = torch.load(straight / "models" / "checkpoint_last.pt", weights_only=True)
    # 2 volumes x 2 patches, batches of 1 volume: 2 iterations per epoch
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 4
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key


class _WindowRecorder(torch.nn.Module):
    """A threshold network that records the largest input it was given."""

    largest: tuple = ()

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0].numel() > int(np.prod(_WindowRecorder.largest or (0,))):
            _WindowRecorder.largest = tuple(x.shape[1:])
        return self.conv(x)


def test_predict_on_a_large_volume_sees_one_window_at_a_time_with_a_bar(tmp_path, capsys, monkeypatch):
    """A volume many windows large is predicted window by window (the network never sees more than
    ``sw_batch_size`` windows of ``spatial_size``), with a progress bar over the case's windows."""
    from dale_monai.predict import Predictor

    monkeypatch.setattr(_WindowRecorder, "largest", ())
    bundle, _ = _threshold_bundle(tmp_path)
    torch.save({"conv.weight": torch.full((1, 1, 1, 1, 1), 10.0), "conv.bias": torch.tensor([-5.0])},
               bundle / "models" / "model.pt")
    overrides = {"network_def": {"_target_": f"{__name__}._WindowRecorder"}, "spatial_size": [16, 16, 16],
                 "sliding_window#sw_batch_size": 2}
    rng = np.random.default_rng(2)
    # intensities away from the threshold, with 0 and 1 present so that the min-max scaling is the identity
    volume = np.where(rng.random((64, 56, 40)) < 0.4, rng.uniform(0.7, 1.0, (64, 56, 40)),
                      rng.uniform(0.0, 0.3, (64, 56, 40))).astype(np.float32)
    volume.reshape(-1)[:2] = (0.0, 1.0)
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 1.0, 1.0])), tmp_path / "large.nii.gz")
    predictor = Predictor(bundle, device="cpu", overrides=overrides)
    report = predictor.predict_path(tmp_path / "large.nii.gz", tmp_path / "out")
    assert report.ok, report.describe()
    assert _WindowRecorder.largest == (1, 16, 16, 16)  # sw_batch_size 2 windows stacked on the batch axis only
    err = capsys.readouterr().err
    assert "100%" in err, err  # the bar over the windows of the case
    seg = np.asarray(nib.load(tmp_path / "out" / "large_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(seg, volume > 0.5)
