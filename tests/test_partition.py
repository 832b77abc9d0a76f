"""AE&ER soft-threshold partition (paper Eqs. 3–6): hand-computed examples and properties."""

from __future__ import annotations

import math
import re
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dale_monai import partition
from dale_monai.partition import (
    band_score,
    boundary_distance,
    combine_scores,
    fuzzy_masks,
    fuzzy_masks_batch,
    label_edges,
    patch_average_entropy,
    patch_edge_ratio,
    quantise,
    soft_threshold,
    to_grayscale,
)

LN2 = math.log(2.0)

# ---------------------------------------------------------------------------------------------
# Hand-worked 4×4 example, 2×2 patches, bins = 4 (min 0, max 3: v ↦ floor(v/3·4) = v, 3 ↦ 3).
#
#   image            patches (grid 2×2)
#   0 0 | 0 1        P00 = {0,0,0,0}  P01 = {0,1,0,1}
#   0 0 | 0 1
#   ----+----        P10 = {0,0,0,3}  P11 = {3,3,3,3}
#   0 0 | 3 3
#   0 3 | 3 3
#
# Eq. 3 as printed: r = -(1/4) Σ_k p_k ln p_k, p_k = share of pixel k's value in its patch.
#   P00: p = 1 everywhere                          r = 0
#   P01: p = 1/2 for all 4 pixels                  r = -(1/4)·4·(1/2)ln(1/2) = ln2/2 = 0.346574
#   P10: p = 3/4 (three pixels), 1/4 (one pixel)   r = (1/4)(3·(3/4)ln(4/3) + (1/4)ln4)
#                                                    = (9/16)ln(4/3) + (1/8)ln2 = 0.248465
#   P11: uniform                                   r = 0
# Shannon of the histograms: 0, ln2, (3/4)ln(4/3) + (1/4)ln4 = 0.562335, 0.
# Eq. 5: r_std = r / (ln2/2) = [0, 1, 0.716917, 0]   (paper form)
#
# label: one foreground pixel at (2, 2).
#   morph edges (a different class in the 3×3 neighbourhood): rows 1–3 × cols 1–3 (9 pixels)
#     e = [1/4, 2/4, 2/4, 4/4], e_std = (e - 1/4)/(3/4) = [0, 1/3, 1/3, 1]
#   Sobel edges: the same ring minus the pixel itself (its left/right and up/down neighbours are
#     equal, so both gradient components vanish there): e = [1/4, 2/4, 2/4, 3/4], e_std = [0, .5, .5, 1]
#
# m = max(r_std, e_std) = [0, 1, 0.716917, 1] (morph).
#   τ = 0.9: M^f = [0, 1, 0.716917, 1], M^n = [1, 0, 1, 0]
#   τ = 0.7: P10 has m > τ: M^f = 1 and M^n = 1 - m = 0.283083 (the paper's τ - m would be -0.016917)
# ---------------------------------------------------------------------------------------------

IMAGE_4x4 = torch.tensor([[[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 3, 3], [0, 3, 3, 3]]], dtype=torch.float32)
LABEL_4x4 = torch.zeros(1, 4, 4)
LABEL_4x4[0, 2, 2] = 1
R_P10 = (9 / 16) * math.log(4 / 3) + LN2 / 8
R_P10_STD = R_P10 / (LN2 / 2)


def expand2x2(values) -> torch.Tensor:
    """2×2 patch grid values → the 4×4 pixel map, (1, 4, 4)."""
    v = torch.as_tensor(values, dtype=torch.float64).view(2, 2)
    return v.repeat_interleave(2, 0).repeat_interleave(2, 1)[None]


def test_eq3_average_entropy_by_hand():
    r = patch_average_entropy(IMAGE_4x4, 2, bins=4)
    assert r.shape == (2, 2)
    torch.testing.assert_close(r, torch.tensor([[0.0, LN2 / 2], [R_P10, 0.0]], dtype=torch.float64))
    assert R_P10 == pytest.approx(0.248465, abs=1e-6)


def test_eq3_shannon_option_by_hand():
    r = patch_average_entropy(IMAGE_4x4, 2, bins=4, form="shannon")
    expected = [[0.0, LN2], [0.75 * math.log(4 / 3) + 0.25 * math.log(4), 0.0]]
    torch.testing.assert_close(r, torch.tensor(expected, dtype=torch.float64))


def test_eq3_as_printed_is_not_a_spread_measure():
    # 16 pixels: two levels 8/8 vs sixteen distinct levels; Eq. 3 as printed gives ln(k)/k for k
    # equally frequent levels, so the spread-out patch scores lower; Shannon gives ln(k), higher
    two = torch.tensor([0.0] * 8 + [15.0] * 8).view(1, 4, 4)
    sixteen = torch.arange(16, dtype=torch.float32).view(1, 4, 4)
    image = torch.cat([two, sixteen], dim=2)  # (1, 4, 8), two 4×4 patches
    paper = patch_average_entropy(image, 4, bins=16)
    shannon = patch_average_entropy(image, 4, bins=16, form="shannon")
    torch.testing.assert_close(paper, torch.tensor([[LN2 / 2, math.log(16) / 16]], dtype=torch.float64))
    torch.testing.assert_close(shannon, torch.tensor([[LN2, math.log(16)]], dtype=torch.float64))


def test_eq3_quantisation_merges_values_into_bins():
    # with 2 bins: 0 → 0, 1/3 → 0, 1 → 1: P01 becomes uniform and P10 keeps its 3:1 split
    r = patch_average_entropy(IMAGE_4x4, 2, bins=2)
    torch.testing.assert_close(r, torch.tensor([[0.0, 0.0], [R_P10, 0.0]], dtype=torch.float64))


def test_eq4_edges_and_edge_ratio_by_hand():
    morph = label_edges(LABEL_4x4, "morph")
    expected_morph = torch.zeros(4, 4, dtype=torch.bool)
    expected_morph[1:, 1:] = True
    assert torch.equal(morph, expected_morph)
    sobel = label_edges(LABEL_4x4, "sobel")
    expected_sobel = expected_morph.clone()
    expected_sobel[2, 2] = False
    assert torch.equal(sobel, expected_sobel)
    expected_e = {"morph": [[0.25, 0.5], [0.5, 1.0]], "sobel": [[0.25, 0.5], [0.5, 0.75]]}
    for edge, e in expected_e.items():
        torch.testing.assert_close(patch_edge_ratio(LABEL_4x4, 2, edge), torch.tensor(e, dtype=torch.float64))


def test_eq5_eq6_masks_by_hand_tau_09():
    mask_n, mask_f = fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=2, tau=0.9, bins=4)
    assert mask_n.shape == mask_f.shape == (1, 4, 4)
    assert mask_n.dtype == mask_f.dtype == torch.float32
    torch.testing.assert_close(mask_f, expand2x2([0, 1, R_P10_STD, 1]).float())
    torch.testing.assert_close(mask_n, expand2x2([1, 0, 1, 0]).float())


def test_eq6_deviation_one_minus_m_instead_of_tau_minus_m():
    tau = 0.7
    mask_n, mask_f = fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=2, tau=tau, bins=4)
    assert tau - R_P10_STD < 0  # what the paper prints would be a negative weight here
    torch.testing.assert_close(mask_f, expand2x2([0, 1, 1, 1]).float())
    torch.testing.assert_close(mask_n, expand2x2([1, 0, 1 - R_P10_STD, 0]).float())
    assert float(mask_n[0, 2, 0]) == pytest.approx(0.283083, abs=1e-6)


def test_eq6_sobel_and_ablations_by_hand():
    # Sobel: e_std = [0, .5, .5, 1]; m = [0, 1, 0.716917, 1]: same masks as morph at τ = 0.9
    _, mask_f = fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=2, tau=0.9, bins=4, edge="sobel")
    torch.testing.assert_close(mask_f, expand2x2([0, 1, R_P10_STD, 1]).float())
    # "AE only": m = r_std = [0, 1, 0.716917, 0]
    mask_n, mask_f = fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=2, tau=0.9, bins=4, use_edges=False)
    torch.testing.assert_close(mask_f, expand2x2([0, 1, R_P10_STD, 0]).float())
    torch.testing.assert_close(mask_n, expand2x2([1, 0, 1, 1]).float())
    # "ER only": m = e_std = [0, 1/3, 1/3, 1]
    mask_n, mask_f = fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=2, tau=0.9, bins=4, use_entropy=False)
    torch.testing.assert_close(mask_f, expand2x2([0, 1 / 3, 1 / 3, 1]).float())
    torch.testing.assert_close(mask_n, expand2x2([1, 1, 1, 0]).float())
    # Sobel, "ER only", τ = 0.4: m = [0, .5, .5, 1] → M^n = [1, .5, .5, 0], M^f = [0, 1, 1, 1]
    mask_n, mask_f = fuzzy_masks(IMAGE_4x4, LABEL_4x4, 2, tau=0.4, bins=4, edge="sobel", use_entropy=False)
    torch.testing.assert_close(mask_n, expand2x2([1, 0.5, 0.5, 0]).float())
    torch.testing.assert_close(mask_f, expand2x2([0, 1, 1, 1]).float())


def test_soft_threshold_at_tau_exactly():
    m = torch.tensor([0.0, 0.5, 0.9, 0.95, 1.0], dtype=torch.float64)
    mask_n, mask_f = soft_threshold(m, 0.9)
    torch.testing.assert_close(mask_f, torch.tensor([0.0, 0.5, 0.9, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(mask_n, torch.tensor([1.0, 1.0, 0.1, 0.05, 0.0], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# partial patches: 3×3 image, 2×2 patches → grid 2×2 with patches of 4, 2, 2 and 1 real pixels
#
#   0 1 | 2        P00 = {0,1,0,1}: r = ln2/2      P01 = {2,2}: r = 0   (zero padding would give {2,2,0,0})
#   0 1 | 2        P10 = {3,0}:     r = -(1/2)·2·(1/2)ln(1/2) = ln2/2   (padding: {3,0,0,0} → 0.248465)
#   ----+--        P11 = {0}:       r = 0
#   3 0 | 0
#
# label: foreground at (2, 2); morph edges (1,1), (1,2), (2,1), (2,2): e = [1/4, 1/2, 1/2, 1/1]
# (padding counted as pixels would give 1/4 everywhere).


def test_partial_patches_use_only_real_pixels():
    image = torch.tensor([[[0, 1, 2], [0, 1, 2], [3, 0, 0]]], dtype=torch.float32)
    label = torch.zeros(1, 3, 3)
    label[0, 2, 2] = 1
    r = patch_average_entropy(image, 2, bins=4)
    torch.testing.assert_close(r, torch.tensor([[LN2 / 2, 0.0], [LN2 / 2, 0.0]], dtype=torch.float64))
    e = patch_edge_ratio(label, 2)
    torch.testing.assert_close(e, torch.tensor([[0.25, 0.5], [0.5, 1.0]], dtype=torch.float64))
    # r_std = [1, 0, 1, 0], e_std = (e - 1/4)/(3/4) = [0, 1/3, 1/3, 1] → m = [1, 1/3, 1, 1]
    mask_n, mask_f = fuzzy_masks(image, label, patch_size=2, tau=0.9, bins=4)
    expected_f = torch.tensor([[1, 1, 1 / 3], [1, 1, 1 / 3], [1, 1, 1]], dtype=torch.float32)[None]
    expected_n = torch.tensor([[0, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.float32)[None]
    torch.testing.assert_close(mask_f, expected_f)
    torch.testing.assert_close(mask_n, expected_n)


def test_anisotropic_patch_and_patch_larger_than_image():
    image = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    label = torch.zeros(1, 3, 4)
    # (1, 4) patches: each row is one patch of 4 distinct values (bins=12 keeps them apart)
    r = patch_average_entropy(image, (1, 4), bins=12)
    torch.testing.assert_close(r, torch.full((3, 1), math.log(4) / 4, dtype=torch.float64))
    # one patch covering everything: min = max → normalised scores and m are 0
    mask_n, mask_f = fuzzy_masks(image, label, patch_size=64)
    assert torch.all(mask_n == 1) and torch.all(mask_f == 0)


# ---------------------------------------------------------------------------------------------
# degenerate inputs


def test_constant_image_gives_entropy_zero_and_masks_from_edges_only():
    image = torch.full((1, 4, 4), 7.0)
    assert torch.equal(quantise(to_grayscale(image[None]), 256), torch.zeros(1, 4, 4, dtype=torch.long))
    assert torch.all(patch_average_entropy(image, 2) == 0)
    with_ae = fuzzy_masks(image, LABEL_4x4, patch_size=2, tau=0.9)
    er_only = fuzzy_masks(image, LABEL_4x4, patch_size=2, tau=0.9, use_entropy=False)
    for a, b in zip(with_ae, er_only):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(with_ae[1], expand2x2([0, 1 / 3, 1 / 3, 1]).float())


def test_empty_label_gives_masks_from_entropy_only():
    empty = torch.zeros(1, 4, 4)
    assert not label_edges(empty).any() and not label_edges(empty, "sobel").any()
    assert torch.all(patch_edge_ratio(empty, 2) == 0)
    mask_n, mask_f = fuzzy_masks(IMAGE_4x4, empty, patch_size=2, tau=0.9, bins=4)
    torch.testing.assert_close(mask_f, expand2x2([0, 1, R_P10_STD, 0]).float())
    torch.testing.assert_close(mask_n, expand2x2([1, 0, 1, 1]).float())


def test_constant_image_and_empty_label_all_nonfuzzy():
    for edge in partition.EDGE_OPERATORS:
        mask_n, mask_f = fuzzy_masks(torch.zeros(1, 5, 7), torch.zeros(1, 5, 7), patch_size=2, edge=edge)
        assert torch.all(mask_n == 1) and torch.all(mask_f == 0)


def test_non_finite_image_rejected():
    image = IMAGE_4x4.clone()
    image[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        fuzzy_masks(image, LABEL_4x4, patch_size=2)


# ---------------------------------------------------------------------------------------------
# channels and classes


def test_rgb_uses_bt601_luminance_and_other_channel_counts_the_mean():
    rng = np.random.default_rng(0)
    rgb = torch.as_tensor(rng.integers(0, 256, (3, 8, 8)).astype(np.float32))
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    torch.testing.assert_close(to_grayscale(rgb[None])[0], luma)
    label = torch.as_tensor(rng.integers(0, 2, (1, 8, 8)))
    for a, b in zip(fuzzy_masks(rgb, label, 4), fuzzy_masks(luma[None], label, 4)):
        torch.testing.assert_close(a, b)
    two = rgb[:2]
    for a, b in zip(fuzzy_masks(two, label, 4), fuzzy_masks(two.mean(0, keepdim=True), label, 4)):
        torch.testing.assert_close(a, b)
    # a pure red and a pure blue image differ in luminance: the grey level is weighted, not averaged
    red, blue = torch.zeros(3, 2, 2), torch.zeros(3, 2, 2)
    red[0], blue[2] = 1.0, 1.0
    assert float(to_grayscale(red[None]).max()) == pytest.approx(0.299)
    assert float(to_grayscale(blue[None]).max()) == pytest.approx(0.114)


def test_multiclass_edges_are_the_union_of_class_boundaries():
    label = torch.zeros(1, 6, 6, dtype=torch.long)
    label[0, :, 3:] = 2  # class 2 on the right half
    label[0, 1:3, 1:3] = 1  # a class-1 square on the left
    for edge in partition.EDGE_OPERATORS:
        union = torch.zeros(6, 6, dtype=torch.bool)
        for c in (0, 1, 2):
            union |= label_edges((label == c).float(), edge)
        assert torch.equal(label_edges(label, edge), union)
        one_hot = torch.cat([(label == c) for c in (0, 1, 2)]).float()
        assert torch.equal(label_edges(one_hot, edge), union)
    # the class-2/class-0 border (columns 2 and 3) is an edge even though no foreground-vs-rest map
    # of class 1 sees it
    assert label_edges(label)[:, 2:4].all()


def test_sobel_misses_the_middle_of_a_one_pixel_line_morph_does_not():
    label = torch.zeros(1, 5, 5)
    label[0, :, 2] = 1
    morph, sobel = label_edges(label, "morph"), label_edges(label, "sobel")
    assert morph[:, 1:4].all() and not morph[:, [0, 4]].any()
    assert sobel[:, [1, 3]].all() and not sobel[:, [0, 2, 4]].any()


def test_label_values_need_not_be_0_1():
    label01 = LABEL_4x4
    for edge in partition.EDGE_OPERATORS:
        assert torch.equal(label_edges(label01 * 255, edge), label_edges(label01, edge))
        assert torch.equal(label_edges(label01.to(torch.uint8), edge), label_edges(label01, edge))


# ---------------------------------------------------------------------------------------------
# 3D


def test_3d_by_hand():
    # 4×4×4 volume, 2×2×2 cubes: one cube holds two values 4:4, the rest is constant
    image = torch.zeros(1, 4, 4, 4)
    image[0, 0, 0:2, 0:2] = 1.0  # cube (0,0,0) is {1,1,1,1,0,0,0,0}
    r = patch_average_entropy(image, 2, bins=2)
    expected = torch.zeros(2, 2, 2, dtype=torch.float64)
    expected[0, 0, 0] = LN2 / 2  # -(1/8)·8·(1/2)ln(1/2)
    torch.testing.assert_close(r, expected)
    # one foreground voxel in the corner (0,0,0): morph edges = the 2×2×2 corner cube, e = 1 there
    label = torch.zeros(1, 4, 4, 4)
    label[0, 0, 0, 0] = 1
    e = patch_edge_ratio(label, 2)
    expected_e = torch.zeros(2, 2, 2, dtype=torch.float64)
    expected_e[0, 0, 0] = 1.0
    torch.testing.assert_close(e, expected_e)
    mask_n, mask_f = fuzzy_masks(image, label, 2)
    assert mask_n.shape == (1, 4, 4, 4)
    assert torch.all(mask_f[0, :2, :2, :2] == 1) and torch.all(mask_n[0, :2, :2, :2] == 0)
    assert torch.all(mask_f[0, 2:] == 0) and torch.all(mask_n[0, 2:] == 1)


def test_3d_sobel_is_subset_of_morph():
    rng = np.random.default_rng(1)
    label = torch.as_tensor(rng.integers(0, 3, (1, 6, 5, 7)))
    morph, sobel = label_edges(label, "morph"), label_edges(label, "sobel")
    assert sobel.shape == (6, 5, 7)
    assert not (sobel & ~morph).any()


# ---------------------------------------------------------------------------------------------
# implementation paths and input types


@pytest.mark.parametrize("form", partition.ENTROPY_FORMS)
@pytest.mark.parametrize("shape,patch", [((1, 9, 7), 2), ((1, 5, 6, 3), (2, 4, 1)), ((3, 12, 10), 5)])
def test_dense_and_sparse_histograms_agree(shape, patch, form):
    image = torch.as_tensor(np.random.default_rng(2).normal(size=shape).astype(np.float32))
    dense = patch_average_entropy(image, patch, bins=16, form=form)
    with mock.patch.object(partition, "_DENSE_HIST_CELLS_PER_PIXEL", 0):
        sparse = patch_average_entropy(image, patch, bins=16, form=form)
    torch.testing.assert_close(dense, sparse)


def test_numpy_and_integer_inputs():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 4096, (1, 10, 11)).astype(np.uint16)
    label = rng.integers(0, 2, (1, 10, 11)).astype(np.uint8)
    from_numpy = fuzzy_masks(image, label, 4)
    from_torch = fuzzy_masks(torch.as_tensor(image.astype(np.float64)), torch.as_tensor(label), 4)
    for a, b in zip(from_numpy, from_torch):
        assert isinstance(a, torch.Tensor)
        torch.testing.assert_close(a, b)
    for edge in partition.EDGE_OPERATORS:
        reference = fuzzy_masks(image.astype(np.float32), label.astype(np.float32), 4, edge=edge)
        for img, lab in (
            (torch.as_tensor(image), torch.as_tensor(label.astype(bool))),  # torch uint16 image, bool label
            (image.astype(np.int32), label.astype(np.int64)),
        ):
            for a, b in zip(fuzzy_masks(img, lab, 4, edge=edge), reference):
                torch.testing.assert_close(a, b)


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="tau"):
        fuzzy_masks(IMAGE_4x4, LABEL_4x4, tau=1.5)
    with pytest.raises(ValueError, match="patch_size"):
        fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=0)
    with pytest.raises(ValueError, match="patch_size"):
        fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=(2, 2, 2))
    with pytest.raises(ValueError, match="edge"):
        fuzzy_masks(IMAGE_4x4, LABEL_4x4, edge="canny")
    with pytest.raises(ValueError, match="entropy"):
        fuzzy_masks(IMAGE_4x4, LABEL_4x4, entropy="renyi")
    with pytest.raises(ValueError, match="bins"):
        fuzzy_masks(IMAGE_4x4, LABEL_4x4, bins=0)
    with pytest.raises(ValueError, match="use_entropy and use_edges"):
        fuzzy_masks(IMAGE_4x4, LABEL_4x4, use_entropy=False, use_edges=False)
    with pytest.raises(ValueError, match=r"\(1, 4, 4\).*\(1, 4, 5\)"):
        fuzzy_masks(IMAGE_4x4, torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="channel-first"):
        fuzzy_masks(IMAGE_4x4[0], LABEL_4x4[0])


# ---------------------------------------------------------------------------------------------
# properties over random shapes, dtypes, value ranges, label sets, 2D and 3D


@st.composite
def cases(draw):
    dims = draw(st.sampled_from([2, 2, 3]))
    hi = 20 if dims == 2 else 7
    spatial = tuple(draw(st.integers(1, hi)) for _ in range(dims))
    if draw(st.booleans()):
        patch = draw(st.integers(1, 6))
    else:
        patch = tuple(draw(st.integers(1, 6)) for _ in range(dims))
    channels = draw(st.sampled_from([1, 1, 2, 3]))
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.float32, np.float64]))
    n_classes = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo = draw(st.integers(int(info.min), int(info.max)))
        hi_v = draw(st.integers(lo, int(info.max)))
        image = rng.integers(lo, hi_v, (channels, *spatial), endpoint=True).astype(dtype)
    else:
        scale = draw(st.sampled_from([1e-3, 1.0, 1e4]))
        image = (rng.normal(size=(channels, *spatial)) * scale + draw(st.floats(-100, 100))).astype(dtype)
    label = rng.integers(0, n_classes, (1, *spatial))
    one_hot = draw(st.booleans()) and n_classes > 1
    if one_hot:
        label = (label == np.arange(n_classes).reshape(-1, *([1] * dims))).astype(np.float32)
    options = dict(
        patch_size=patch,
        tau=draw(st.floats(0.0, 1.0)),
        bins=draw(st.sampled_from([2, 16, 256])),
        edge=draw(st.sampled_from(partition.EDGE_OPERATORS)),
        entropy=draw(st.sampled_from(partition.ENTROPY_FORMS)),
    )
    return image, label, options


@settings(max_examples=30, deadline=None)
@given(cases())
def test_mask_properties(case):
    image, label, options = case
    spatial = image.shape[1:]
    mask_n, mask_f = fuzzy_masks(image, label, **options)
    for mask in (mask_n, mask_f):
        assert mask.shape == (1, *spatial) and mask.dtype == torch.float32
        assert torch.all((mask >= 0) & (mask <= 1))
    # one of the two masks is 1 wherever m ≠ τ; at m = τ they are τ and 1 - τ
    assert torch.all(mask_n + mask_f >= 1 - 1e-6)
    # masks are the soft threshold of the normalised patch scores, constant on each patch
    r = patch_average_entropy(image, options["patch_size"], options["bins"], options["entropy"])
    e = patch_edge_ratio(label, options["patch_size"], options["edge"])
    assert r.shape == e.shape
    assert torch.all(r >= 0) and torch.all((e >= 0) & (e <= 1))

    def norm(x):
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else torch.zeros_like(x)

    exp_n, exp_f = soft_threshold(torch.maximum(norm(r), norm(e)), options["tau"])
    patch = options["patch_size"]
    patch = (patch,) * len(spatial) if isinstance(patch, int) else patch
    for idx in np.ndindex(*r.shape):
        region = (0,) + tuple(slice(i * p, (i + 1) * p) for i, p in zip(idx, patch))
        assert torch.all(mask_n[region] == exp_n[idx].float())
        assert torch.all(mask_f[region] == exp_f[idx].float())


@settings(max_examples=15, deadline=None)
@given(cases())
def test_entropy_bounds_and_batch_form(case):
    image, label, options = case
    paper = patch_average_entropy(image, options["patch_size"], options["bins"], "paper")
    shannon = patch_average_entropy(image, options["patch_size"], options["bins"], "shannon")
    # -Σ q² ln q ≤ -Σ q ln q ≤ ln Q
    assert torch.all(paper <= shannon + 1e-12)
    assert torch.all(shannon <= math.log(options["bins"]) + 1e-9)
    # batched form = per-image form (each image normalised on its own)
    second_image = image[..., ::-1].copy()
    second_label = label[..., ::-1].copy()
    mask_n, mask_f = fuzzy_masks_batch(np.stack([image, second_image]), np.stack([label, second_label]), **options)
    for i, (img, lab) in enumerate(((image, label), (second_image, second_label))):
        single_n, single_f = fuzzy_masks(img, lab, **options)
        torch.testing.assert_close(mask_n[i], single_n)
        torch.testing.assert_close(mask_f[i], single_f)


# ---------------------------------------------------------------------------------------------
# devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("edge", partition.EDGE_OPERATORS)
@pytest.mark.parametrize("shape", [(3, 37, 50), (1, 20, 17, 9)])
def test_cuda_matches_cpu(shape, edge):
    rng = np.random.default_rng(4)
    image = torch.as_tensor(rng.normal(size=shape).astype(np.float32))
    label = torch.as_tensor(rng.integers(0, 3, (1, *shape[1:])))
    cpu = fuzzy_masks(image, label, 8, edge=edge)
    gpu = fuzzy_masks(image.cuda(), label.cuda(), 8, edge=edge)
    for a, b in zip(cpu, gpu):
        assert b.is_cuda
        torch.testing.assert_close(b.cpu(), a)
    # the sparse-histogram path too
    with mock.patch.object(partition, "_DENSE_HIST_CELLS_PER_PIXEL", 0):
        gpu_sparse = fuzzy_masks(image.cuda(), label.cuda(), 8, edge=edge)
    for a, b in zip(cpu, gpu_sparse):
        torch.testing.assert_close(b.cpu(), a)


@pytest.mark.parametrize("shape", [(1, 17, 23), (1, 1, 9), (1, 9, 8, 7), (1, 2, 1, 5)])
def test_edges_match_scipy_reference(shape):
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(5)
    # blocky labels (few classes, some runs) so that both edge and interior pixels occur
    label = rng.integers(0, 3, shape)
    label = np.where(rng.random(shape) < 0.6, np.roll(label, 1, axis=-1), label)
    morph = ndimage.grey_dilation(label[0], size=3, mode="nearest") != ndimage.grey_erosion(
        label[0], size=3, mode="nearest"
    )
    assert np.array_equal(label_edges(label, "morph").numpy(), morph)
    sobel = np.zeros(shape[1:], dtype=bool)
    for c in range(3):
        one_hot = (label[0] == c).astype(np.float64)
        for axis in range(len(shape) - 1):
            sobel |= ndimage.sobel(one_hot, axis=axis, mode="nearest") != 0
    assert np.array_equal(label_edges(label, "sobel").numpy(), sobel)


# ---------------------------------------------------------------------------------------------
# the paper preset and the patch-score variants (combine, mode)

# Golden masks of a fixed, random-free case, computed with the implementation before the partition
# options existed (commit 8c9022c): the default and mode="paper" must keep giving them.
_II, _JJ = torch.meshgrid(torch.arange(12), torch.arange(10), indexing="ij")
GOLDEN_IMAGE = ((_II * 7 + _JJ * _JJ * 3) % 11).float()[None]
GOLDEN_LABEL = (((_II - 5) ** 2 + (_JJ - 4) ** 2 < 14).long() + ((_II > 8) & (_JJ < 3)).long() * 2)[None]
GOLDEN_F_P4 = [0.800000012, 0.800000012, 1.0, 0.699999988, 0.300000012, 1.0, 1.0, 0.600000024, 1.0]
GOLDEN_N_P4 = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
GOLDEN_F_P45_SHANNON_TAU05 = [1.0, 0.428571433, 1.0, 0.285714298, 1.0, 0.0]


def test_paper_preset_keeps_the_masks_of_before_the_options():
    default = fuzzy_masks(GOLDEN_IMAGE, GOLDEN_LABEL, patch_size=4)
    paper = fuzzy_masks(GOLDEN_IMAGE, GOLDEN_LABEL, patch_size=4, mode="paper")
    explicit = fuzzy_masks(GOLDEN_IMAGE, GOLDEN_LABEL, patch_size=4, mode="patch", combine="max", entropy="paper")
    for a, b, c in zip(default, paper, explicit):
        assert torch.equal(a, b) and torch.equal(a, c)
    mask_n, mask_f = paper
    torch.testing.assert_close(mask_f[0, ::4, ::4].flatten(), torch.tensor(GOLDEN_F_P4), rtol=0, atol=1e-6)
    torch.testing.assert_close(mask_n[0, ::4, ::4].flatten(), torch.tensor(GOLDEN_N_P4), rtol=0, atol=1e-6)
    # constant on each patch, partial patches included (12×10 with 4×4 patches)
    torch.testing.assert_close(mask_f, expand_grid(mask_f[0, ::4, ::4], (4, 4), (12, 10)))
    _, mask_f = fuzzy_masks(GOLDEN_IMAGE, GOLDEN_LABEL, patch_size=(4, 5), entropy="shannon", tau=0.5)
    torch.testing.assert_close(
        mask_f[0, ::4, ::5].flatten(), torch.tensor(GOLDEN_F_P45_SHANNON_TAU05), rtol=0, atol=1e-6
    )
    # the hand-worked 4×4 example, through the preset
    _, mask_f = fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=2, tau=0.9, bins=4, mode="paper")
    torch.testing.assert_close(mask_f, expand2x2([0, 1, R_P10_STD, 1]).float())


def expand_grid(values: torch.Tensor, patch, spatial) -> torch.Tensor:
    """Patch-grid values → pixel map ``(1, *spatial)``, cropping partial patches."""
    out = values
    for axis, p in enumerate(patch):
        out = out.repeat_interleave(p, axis)
    return out[tuple(slice(0, s) for s in spatial)][None]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(entropy="shannon"), "mode='paper' fixes entropy='paper'"),
        (dict(combine="er"), "mode='paper' fixes combine='max'"),
        (dict(use_entropy=False), "mode='paper' fixes use_entropy=True"),
        (dict(use_edges=False), "mode='paper' fixes use_edges=True"),
        (dict(band_width=2), "band_width is only used with mode='band'"),
    ],
)
def test_paper_preset_refuses_other_forms(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=2, mode="paper", **kwargs)


def test_combine_by_hand():
    # r_std = [0, 1, 0.716917, 0], e_std (morph) = [0, 1/3, 1/3, 1] on the 4×4 example, bins 4
    r, e = torch.tensor([0.0, 1.0, R_P10_STD, 0.0]), torch.tensor([0.0, 1 / 3, 1 / 3, 1.0])
    expected = {
        ("max", 0.5): [0.0, 1.0, R_P10_STD, 1.0],
        ("er", 0.5): [0.0, 1 / 3, 1 / 3, 1.0],
        ("ae", 0.5): [0.0, 1.0, R_P10_STD, 0.0],
        ("weighted", 0.5): [0.0, 2 / 3, (R_P10_STD + 1 / 3) / 2, 0.5],
        ("weighted", 0.25): [0.0, 0.5, 0.25 * R_P10_STD + 0.25, 0.75],
    }
    for (how, w), m in expected.items():
        torch.testing.assert_close(combine_scores(r.double(), e.double(), how, w), torch.tensor(m, dtype=torch.float64))
        mask_n, mask_f = fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=2, tau=0.7, bins=4, combine=how, ae_weight=w)
        exp_n, exp_f = soft_threshold(torch.tensor(m, dtype=torch.float64), 0.7)
        torch.testing.assert_close(mask_f, expand2x2(exp_f).float())
        torch.testing.assert_close(mask_n, expand2x2(exp_n).float())
    # weighted at 0.25, τ 0.7: only P11 (0.75) passes τ
    _, mask_f = fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=2, tau=0.7, bins=4, combine="weighted", ae_weight=0.25)
    assert torch.all(mask_f[0, 2:, 2:] == 1) and float(mask_f[0, 0, 2]) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "shape,labels,patch", [((3, 23, 17), 2, 4), ((1, 9, 10, 7), 4, (3, 4, 2)), ((2, 30, 30), 3, 8)]
)
def test_combine_pure_forms_and_weight_extremes(shape, labels, patch):
    rng = np.random.default_rng(6)
    image = rng.normal(size=shape).astype(np.float32)
    # blocks of 3 pixels: patches with and without edges, so that e_std is not constant
    label = rng.integers(0, labels, (1, *[-(-s // 3) for s in shape[1:]]))
    for axis in range(1, len(shape)):
        label = label.repeat(3, axis=axis)
    label = label[(slice(None), *[slice(0, s) for s in shape[1:]])]
    for entropy in partition.ENTROPY_FORMS:
        opts = dict(patch_size=patch, tau=0.6, entropy=entropy)
        er = fuzzy_masks(image, label, combine="er", **opts)
        ae = fuzzy_masks(image, label, combine="ae", **opts)
        for a, b in zip(er, fuzzy_masks(image, label, use_entropy=False, **opts)):
            assert torch.equal(a, b)
        for a, b in zip(ae, fuzzy_masks(image, label, use_edges=False, **opts)):
            assert torch.equal(a, b)
        for a, b in zip(er, fuzzy_masks(image, label, combine="weighted", ae_weight=0.0, **opts)):
            assert torch.equal(a, b)
        for a, b in zip(ae, fuzzy_masks(image, label, combine="weighted", ae_weight=1.0, **opts)):
            assert torch.equal(a, b)
        # ER only is the soft threshold of the normalised edge-ratio map of Eq. 4
        e = patch_edge_ratio(label, patch)
        assert e.max() > e.min()
        e_std = (e - e.min()) / (e.max() - e.min())
        exp_n, exp_f = soft_threshold(e_std, 0.6)
        patch_t = (patch,) * (len(shape) - 1) if isinstance(patch, int) else patch
        torch.testing.assert_close(er[1], expand_grid(exp_f.float(), patch_t, shape[1:]))
        torch.testing.assert_close(er[0], expand_grid(exp_n.float(), patch_t, shape[1:]))
        # the weighted mean lies between the two pure forms' scores: M^f of a patch below τ is m itself
        opts1 = dict(tau=1.0, patch_size=patch, entropy=entropy)
        _, mid = fuzzy_masks(image, label, combine="weighted", ae_weight=0.5, **opts1)
        _, lo = fuzzy_masks(image, label, combine="er", **opts1)
        _, hi = fuzzy_masks(image, label, combine="ae", **opts1)
        torch.testing.assert_close(mid, (lo + hi) / 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="pixels"), "mode must be one of"),
        (dict(combine="min"), "combine must be one of"),
        (dict(combine="weighted", ae_weight=1.5), "ae_weight"),
        (dict(ae_weight=True), "ae_weight"),
        (dict(use_entropy=False, combine="weighted"), "use_entropy=False.*combine='weighted'"),
        (dict(use_edges=False, combine="er"), "use_edges=False.*combine='er'"),
        (dict(mode="band"), "band_width is required"),
        (dict(mode="band", band_width=0.5), "band_width must be a finite number >= 1"),
        (dict(mode="band", band_width=float("inf")), "band_width must be a finite number >= 1"),
        (dict(mode="band", band_width="2"), "band_width must be a finite number >= 1"),
        (dict(mode="band", band_width=2, band_profile="gauss"), "band_profile"),
        (dict(band_width=2), "band_width is only used with mode='band'"),
    ],
)
def test_new_options_are_validated_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fuzzy_masks(IMAGE_4x4, LABEL_4x4, patch_size=2, **kwargs)
    with pytest.raises(ValueError, match=match):
        partition.check_options(**kwargs)


# ---------------------------------------------------------------------------------------------
# label-boundary band


def brute_distance(label: np.ndarray) -> np.ndarray:
    """Reference for :func:`boundary_distance` by exhaustive search over all pixel pairs."""
    label = np.asarray(label)
    spatial = label.shape[1:]
    coords = np.indices(spatial).reshape(len(spatial), -1).T.astype(np.float64)
    dist = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    out = np.full(coords.shape[0], np.inf)
    channels = [label[0]] if label.shape[0] == 1 else [c != 0 for c in label]
    for ch in channels:
        v = ch.ravel()
        out = np.minimum(out, np.where(v[:, None] != v[None], dist, np.inf).min(axis=1))
    return out.reshape(spatial)


# 8×8, a 4×4 lesion at rows/cols 2..5. Distances to the other class: 1 on both sides of the border
# (face neighbours), √2 at the four outer corners (2±1 diagonal), 2 at the 2×2 centre of the lesion
# and one step further out, √5 / 2√2 beyond.
SQUARE = torch.zeros(1, 8, 8, dtype=torch.long)
SQUARE[0, 2:6, 2:6] = 1
SQUARE_BAND_1 = torch.tensor(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 0, 0, 1, 1, 0],
        [0, 1, 1, 0, 0, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=torch.float32,
)[None]


def test_band_square_lesion_by_hand():
    d = boundary_distance(SQUARE)
    assert d.dtype == torch.float64 and d.shape == (8, 8)
    assert float(d[2, 2]) == 1 and float(d[3, 3]) == 2 and float(d[1, 1]) == pytest.approx(math.sqrt(2))
    assert float(d[0, 0]) == pytest.approx(math.sqrt(8)) and float(d[0, 1]) == pytest.approx(math.sqrt(5))
    assert float(d[0, 2]) == 2
    mask_n, mask_f = fuzzy_masks(torch.rand(1, 8, 8), SQUARE, mode="band", band_width=1)
    assert torch.equal(mask_f, SQUARE_BAND_1) and torch.equal(mask_n, 1 - SQUARE_BAND_1)
    # width 1.5 adds the outer corners (√2): exactly the morph edge map of Eq. 4
    _, mask_f = fuzzy_masks(torch.rand(1, 8, 8), SQUARE, mode="band", band_width=1.5)
    band = SQUARE_BAND_1.clone()
    band[0, [1, 1, 6, 6], [1, 6, 1, 6]] = 1
    assert torch.equal(mask_f, band) and torch.equal(mask_f[0].bool(), label_edges(SQUARE))
    # width 2: everything within 2 pixels: the whole lesion (its centre is at 2) and the ring at 2,
    # which reaches the image border in the middle of each side but not at √5 or 2√2
    _, mask_f = fuzzy_masks(torch.rand(1, 8, 8), SQUARE, mode="band", band_width=2)
    expected = torch.as_tensor(brute_distance(SQUARE.numpy()) <= 2).float()[None]
    assert torch.equal(mask_f, expected)
    assert torch.all(mask_f[0, 2:6, 2:6] == 1) and torch.all(mask_f[0, 0, 2:6] == 1) and not mask_f[0, 0, :2].any()
    # out of the band: at each image corner the corner pixel (2√2) and its two neighbours (√5)
    assert int(mask_f.sum()) == 64 - 4 * 3


def test_band_linear_profile_by_hand():
    # width 2: 1 up to d = 2, then 2 − d/2, 0 from d = 4
    mask_n, mask_f = fuzzy_masks(torch.zeros(1, 8, 8), SQUARE, mode="band", band_width=2, band_profile="linear")
    d = brute_distance(SQUARE.numpy())
    expected = np.clip(2 - d / 2, 0, 1)
    torch.testing.assert_close(mask_f[0], torch.as_tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(mask_n, 1 - mask_f)
    assert float(mask_f[0, 0, 1]) == pytest.approx(2 - math.sqrt(5) / 2)  # 0.882
    assert float(mask_f[0, 0, 0]) == pytest.approx(2 - math.sqrt(8) / 2)  # 0.586
    # the hard band is where the linear profile is 1
    _, hard = fuzzy_masks(torch.zeros(1, 8, 8), SQUARE, mode="band", band_width=2)
    assert torch.equal(hard, (mask_f == 1).float())
    far = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, math.inf]], dtype=torch.float64)
    expected = torch.tensor([[1.0, 1.0, 0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(band_score(far, 2.0, "linear"), expected)
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(band_score(far, 2.5), expected)


def test_band_without_boundary_is_all_nonfuzzy():
    for label in (torch.zeros(1, 6, 5), torch.ones(1, 6, 5), torch.full((1, 4, 4, 3), 2)):
        assert torch.all(torch.isinf(boundary_distance(label)))
        for profile in partition.BAND_PROFILES:
            mask_n, mask_f = fuzzy_masks(torch.rand(1, *label.shape[1:]), label, mode="band", band_width=3,
                                         band_profile=profile)
            assert torch.all(mask_f == 0) and torch.all(mask_n == 1)
    # a one-hot label with an empty channel: the other channel's boundary counts, the empty one none
    one_hot = torch.zeros(2, 8, 8)
    one_hot[0] = (SQUARE[0] == 0).float()
    one_hot[1] = (SQUARE[0] == 1).float()
    assert torch.equal(boundary_distance(one_hot), boundary_distance(SQUARE))
    three = torch.cat([one_hot, torch.zeros(1, 8, 8)])
    assert torch.equal(boundary_distance(three), boundary_distance(SQUARE))


def test_band_multiclass_and_one_hot_match_brute_force():
    label = torch.zeros(1, 9, 11, dtype=torch.long)
    label[0, :, 6:] = 2
    label[0, 2:5, 1:4] = 1
    label[0, 6:8, 7:9] = 3  # class 3 inside class 2: its boundary is with 2, not with 0
    ref = brute_distance(label.numpy())
    torch.testing.assert_close(boundary_distance(label), torch.as_tensor(ref))
    one_hot = torch.cat([(label == c) for c in range(4)]).float()
    torch.testing.assert_close(boundary_distance(one_hot), torch.as_tensor(ref))
    assert float(boundary_distance(label)[7, 9]) == 1.0  # class 2 next to the class-3 block
    for w in (1, 1.5, 2, 3.2):
        _, mask_f = fuzzy_masks(torch.rand(3, 9, 11), label, mode="band", band_width=w)
        assert torch.equal(mask_f[0], torch.as_tensor(ref <= w).float())


def test_band_overlapping_maps_use_every_boundary():
    # nested regions (e.g. whole tumour ⊃ core): the inner map's boundary lies inside the outer region
    maps = torch.zeros(2, 10, 10)
    maps[0, 1:9, 1:9] = 1
    maps[1, 4:6, 4:6] = 1
    d = boundary_distance(maps)
    torch.testing.assert_close(d, torch.as_tensor(brute_distance(maps.numpy())))
    assert float(d[4, 4]) == 1.0 and float(d[3, 4]) == 1.0  # both sides of the inner boundary
    assert float(d[3, 3]) == pytest.approx(math.sqrt(2))  # 3 from the outer map's boundary, √2 from the inner one
    assert float(d[2, 2]) == 2.0  # 2 from the outer one, √8 from the inner one


def test_band_3d_by_hand_and_brute_force():
    label = torch.zeros(1, 5, 6, 7, dtype=torch.long)
    label[0, 1:4, 2:5, 2:6] = 1
    d = boundary_distance(label)
    torch.testing.assert_close(d, torch.as_tensor(brute_distance(label.numpy())))
    # the lesion is 3×3×4 voxels: only its two central voxels lie 2 from the background
    assert float(d[2, 3, 3]) == 2.0 and float(d[2, 3, 4]) == 2.0 and float(d[1, 3, 3]) == 1.0
    assert float(d[0, 0, 0]) == pytest.approx(math.sqrt(1 + 4 + 4))
    mask_n, mask_f = fuzzy_masks(torch.rand(2, 5, 6, 7), label, mode="band", band_width=1)
    assert mask_f.shape == (1, 5, 6, 7)
    # width 1: the lesion but its two central voxels, and the outside voxels sharing a face with it
    # (two 3×4 faces across each of the first two axes, two 3×3 faces across the third)
    assert torch.all(mask_f[0][label[0] == 1].sum() == 36 - 2) and mask_f[0, 2, 3, 3] == 0
    assert int(mask_f.sum()) == (36 - 2) + 2 * (3 * 4 + 3 * 4 + 3 * 3)
    torch.testing.assert_close(mask_n, 1 - mask_f)


def test_band_depends_on_the_label_only_and_batches():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, (3, 1, 12, 9))
    labels[1] = 0  # one image without a boundary
    images = rng.normal(size=(3, 2, 12, 9)).astype(np.float32)
    mask_n, mask_f = fuzzy_masks_batch(images, labels, mode="band", band_width=2, band_profile="linear")
    assert mask_f.shape == (3, 1, 12, 9) and mask_f.dtype == torch.float32
    for i in range(3):
        single_n, single_f = fuzzy_masks(images[i] * 5 + 1, labels[i], mode="band", band_width=2, band_profile="linear")
        assert torch.equal(single_f, mask_f[i]) and torch.equal(single_n, mask_n[i])
        ref = np.clip(2 - brute_distance(labels[i]) / 2, 0, 1)
        torch.testing.assert_close(mask_f[i, 0], torch.as_tensor(ref, dtype=torch.float32))
    assert torch.all(mask_f[1] == 0)


def test_partition_draws_no_random_numbers():
    rng = np.random.default_rng(8)
    image = rng.normal(size=(3, 20, 18)).astype(np.float32)
    label = rng.integers(0, 3, (1, 20, 18))
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    for kwargs in (dict(), dict(mode="paper"), dict(combine="weighted", ae_weight=0.3, entropy="shannon"),
                   dict(mode="band", band_width=2), dict(mode="band", band_width=2, band_profile="linear")):
        first = fuzzy_masks(image, label, 4, **kwargs)
        second = fuzzy_masks(image, label, 4, **kwargs)
        assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


@settings(max_examples=25, deadline=None)
@given(cases(), st.sampled_from([1, 1.5, 2, 3.7]), st.sampled_from(partition.BAND_PROFILES))
def test_band_properties(case, width, profile):
    image, label, _ = case
    mask_n, mask_f = fuzzy_masks(image, label, mode="band", band_width=width, band_profile=profile)
    assert mask_f.shape == (1, *image.shape[1:]) and mask_f.dtype == torch.float32
    torch.testing.assert_close(mask_n + mask_f, torch.ones_like(mask_f))
    ref = brute_distance(label)
    expected = (ref <= width).astype(np.float64) if profile == "hard" else np.clip(2 - ref / width, 0, 1)
    torch.testing.assert_close(mask_f[0], torch.as_tensor(expected, dtype=torch.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("shape", [(3, 37, 50), (1, 20, 17, 9)])
def test_cuda_matches_cpu_new_modes(shape):
    rng = np.random.default_rng(9)
    image = torch.as_tensor(rng.normal(size=shape).astype(np.float32))
    label = torch.as_tensor(rng.integers(0, 3, (1, *shape[1:])))
    for kwargs in (dict(combine="weighted", ae_weight=0.25, entropy="shannon"), dict(combine="er"),
                   dict(mode="band", band_width=2), dict(mode="band", band_width=3, band_profile="linear")):
        cpu = fuzzy_masks(image, label, 8, **kwargs)
        gpu = fuzzy_masks(image.cuda(), label.cuda(), 8, **kwargs)
        for a, b in zip(cpu, gpu):
            assert b.is_cuda
            torch.testing.assert_close(b.cpu(), a)
