"""Noise-robust losses: hand-computed values, limits, weights, gradients, options, and both trainers."""

from __future__ import annotations

import math

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.networks.nets import UNet
from monai.networks.utils import one_hot

from dale_monai.engines import DALEEvents, DALEKeys, DALETrainer
from dale_monai.losses import PixelwiseCELoss, WeightedDiceLoss
from dale_monai.meta import OmegaMetaStep
from dale_monai.robust_losses import (
    RCE_LABEL_FLOOR,
    GeneralizedCELoss,
    MAELoss,
    NoiseRobustDiceLoss,
    SymmetricCELoss,
    generalized_ce_map,
    mae_map,
    noise_robust_dice,
    noise_robust_dice_map,
    reverse_ce_map,
    symmetric_ce_map,
)

A = math.log(RCE_LABEL_FLOOR)  # the paper's A ≈ −9.21
SPATIAL = [(6, 5), (4, 3, 5)]
PIXEL_LOSSES = [GeneralizedCELoss, SymmetricCELoss, MAELoss]
ALL_LOSSES = PIXEL_LOSSES + [NoiseRobustDiceLoss]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pixels(values, dims: int) -> torch.Tensor:
    """A (B=1, C, n pixels) table laid out as a 2D (1, C, n, 1) or 3D (1, C, 1, n, 1) image."""
    t = torch.as_tensor(values, dtype=torch.float64)
    return t.view(1, t.shape[0], t.shape[1], 1) if dims == 2 else t.view(1, t.shape[0], 1, t.shape[1], 1)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def _random(c, spatial, seed, b=2, dtype=torch.float64):
    g = _gen(seed)
    x = torch.randn(b, c, *spatial, generator=g, dtype=dtype) * 3
    if c == 1:
        y = (torch.rand(b, 1, *spatial, generator=g) > 0.5).to(dtype)
    else:
        y = torch.randint(0, c, (b, 1, *spatial), generator=g)
    return x, y


# ------------------------------------------------------------------------------------- hand-computed values
@pytest.mark.parametrize("dims", [2, 3])
def test_binary_values_by_hand(dims):
    # logits log 3, log 3, 0 → p = 0.75, 0.75, 0.5; labels 1, 0, 1 → p_y = 0.75, 0.25, 0.5
    x = _pixels([[math.log(3), math.log(3), 0.0]], dims)
    y = _pixels([[1.0, 0.0, 1.0]], dims)
    gce = [2 * (1 - math.sqrt(0.75)), 1.0, 2 * (1 - math.sqrt(0.5))]
    ce = [-math.log(0.75), -math.log(0.25), -math.log(0.5)]
    rce = [-A * 0.25, -A * 0.75, -A * 0.5]
    mae = [0.5, 1.5, 1.0]
    expected = {
        "gce": gce, "rce": rce, "mae": mae, "sce": [0.5 * a + 0.5 * b for a, b in zip(ce, rce)],
    }
    got = {
        "gce": generalized_ce_map(x, y), "rce": reverse_ce_map(x, y), "mae": mae_map(x, y),
        "sce": symmetric_ce_map(x, y),
    }
    for name, value in got.items():
        assert value.shape == x.shape, name
        torch.testing.assert_close(_flat(value), torch.tensor(expected[name], dtype=torch.float64), msg=name)
    torch.testing.assert_close(GeneralizedCELoss()(x, y), torch.tensor(sum(gce) / 3, dtype=torch.float64))
    torch.testing.assert_close(MAELoss(reduction="sum")(x, y), torch.tensor(3.0, dtype=torch.float64))


@pytest.mark.parametrize("dims", [2, 3])
def test_binary_soft_target_by_hand(dims):
    # p = 0.75 against t = 0.5 (a label times a soft DALE mask): both classes carry target mass 0.5
    x, t = _pixels([[math.log(3)]], dims), _pixels([[0.5]], dims)
    torch.testing.assert_close(_flat(generalized_ce_map(x, t)),
                               torch.tensor([(1 - math.sqrt(0.75)) + (1 - math.sqrt(0.25))], dtype=torch.float64))
    torch.testing.assert_close(_flat(mae_map(x, t)), torch.tensor([0.5], dtype=torch.float64))  # 2·|0.75 − 0.5|
    # −[0.75·log 0.5 + 0.25·log 0.5]
    torch.testing.assert_close(_flat(reverse_ce_map(x, t)), torch.tensor([math.log(2)], dtype=torch.float64))


@pytest.mark.parametrize("dims", [2, 3])
def test_multiclass_values_by_hand(dims):
    # two pixels with softmax (0.5, 0.25, 0.25) labelled 1 and (0.1, 0.2, 0.7) labelled 2
    probs = [[0.5, 0.1], [0.25, 0.2], [0.25, 0.7]]
    x = _pixels([[math.log(v) for v in row] for row in probs], dims)
    y = _pixels([[1, 2]], dims).long()
    expected = {
        "gce": [1.0, 2 * (1 - math.sqrt(0.7))],
        "rce": [-A * 0.75, -A * 0.3],
        "mae": [1.5, 0.6],
        "sce": [0.5 * math.log(4) - 0.5 * A * 0.75, -0.5 * math.log(0.7) - 0.5 * A * 0.3],
    }
    got = {
        "gce": generalized_ce_map(x, y), "rce": reverse_ce_map(x, y), "mae": mae_map(x, y),
        "sce": symmetric_ce_map(x, y),
    }
    for name, value in got.items():
        assert value.shape == (1, 1, *x.shape[2:]), name
        torch.testing.assert_close(_flat(value), torch.tensor(expected[name], dtype=torch.float64), msg=name)
    # GCE with q = 0.25 at p_y = 0.25: (1 − 0.25^0.25)/0.25
    torch.testing.assert_close(_flat(generalized_ce_map(x, y, q=0.25))[0],
                               torch.tensor(4 * (1 - 0.25**0.25), dtype=torch.float64))


@pytest.mark.parametrize("dims", [2, 3])
def test_noise_robust_dice_by_hand(dims):
    # binary, one sigmoid channel: p = 0.75, 0.25 against y = 1, 0; |p − y|^1.5 = 0.125 each
    x = _pixels([[math.log(3), -math.log(3)]], dims)
    y = _pixels([[1.0, 0.0]], dims)
    den = 0.75**2 + 0.25**2 + 1.0
    torch.testing.assert_close(noise_robust_dice(x, y, smooth_dr=0.0),
                               torch.tensor([[0.25 / den]], dtype=torch.float64))
    # each pixel's share: K = 2 pixels · 0.125 / den
    torch.testing.assert_close(_flat(noise_robust_dice_map(x, y, smooth_dr=0.0)),
                               torch.tensor([0.25 / den] * 2, dtype=torch.float64))
    # weights 2 and 0 enter both sums: 2·0.125 / (2·(0.5625 + 1))
    w = _pixels([[2.0, 0.0]], dims)
    torch.testing.assert_close(NoiseRobustDiceLoss(smooth_dr=0.0)(x, y, weight=w),
                               torch.tensor(0.25 / 3.125, dtype=torch.float64))
    # linear denominator (PyMIC's): Σ(p + y) = 1 + 1
    torch.testing.assert_close(noise_robust_dice(x, y, squared_pred=False, smooth_dr=0.0),
                               torch.tensor([[0.25 / 2.0]], dtype=torch.float64))

    # three classes, two pixels (the multi-class table above)
    probs = [[0.5, 0.1], [0.25, 0.2], [0.25, 0.7]]
    xm = _pixels([[math.log(v) for v in row] for row in probs], dims)
    ym = _pixels([[1, 2]], dims).long()
    per_class = [
        (0.5**1.5 + 0.1**1.5) / (0.25 + 0.01),
        (0.75**1.5 + 0.2**1.5) / (0.0625 + 0.04 + 1.0),
        (0.25**1.5 + 0.3**1.5) / (0.0625 + 0.49 + 1.0),
    ]
    torch.testing.assert_close(noise_robust_dice(xm, ym, smooth_dr=0.0),
                               torch.tensor([per_class], dtype=torch.float64))
    torch.testing.assert_close(NoiseRobustDiceLoss(smooth_dr=0.0)(xm, ym),
                               torch.tensor(sum(per_class) / 3, dtype=torch.float64))
    torch.testing.assert_close(NoiseRobustDiceLoss(smooth_dr=0.0, include_background=False)(xm, ym),
                               torch.tensor(sum(per_class[1:]) / 2, dtype=torch.float64))


# ------------------------------------------------------------------------------------- limits and identities
@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("c", [1, 4])
def test_gce_tends_to_ce_as_q_goes_to_zero(spatial, c):
    x, y = _random(c, spatial, seed=1)
    ce = PixelwiseCELoss()(x, y)
    log_py = -ce  # for hard labels CE = −log p_y
    for q in (0.1, 1e-3, 1e-6):
        gap = ce - generalized_ce_map(x, y, q=q)
        # 1 − e^(−u) ≤ u and ≥ u − u²/2 for u = −q·log p_y ≥ 0
        assert torch.all(gap >= -1e-12)
        assert torch.all(gap <= q * log_py**2 / 2 + 1e-12)
    torch.testing.assert_close(generalized_ce_map(x, y, q=1e-6), ce, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("c", [1, 4])
def test_hard_label_identities_gce_q1_rce_and_mae(spatial, c):
    x, y = _random(c, spatial, seed=2)
    mae = mae_map(x, y)
    torch.testing.assert_close(generalized_ce_map(x, y, q=1.0), mae / 2)
    torch.testing.assert_close(reverse_ce_map(x, y), -A / 2 * mae)
    torch.testing.assert_close(symmetric_ce_map(x, y, alpha=1.0, beta=0.0), PixelwiseCELoss()(x, y))
    torch.testing.assert_close(symmetric_ce_map(x, y, alpha=0.0, beta=2.0), 2 * reverse_ce_map(x, y))


@pytest.mark.parametrize("spatial", SPATIAL)
def test_sce_ce_part_is_the_project_cross_entropy_for_soft_targets(spatial):
    g = _gen(3)
    xb = torch.randn(2, 1, *spatial, generator=g, dtype=torch.float64)
    tb = torch.rand(2, 1, *spatial, generator=g, dtype=torch.float64)
    torch.testing.assert_close(symmetric_ce_map(xb, tb, 1.0, 0.0), PixelwiseCELoss()(xb, tb))
    xm = torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64)
    tm = torch.softmax(torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64), 1)
    torch.testing.assert_close(symmetric_ce_map(xm, tm, 1.0, 0.0), PixelwiseCELoss()(xm, tm))


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("fn", [generalized_ce_map, reverse_ce_map, symmetric_ce_map, mae_map])
def test_one_sigmoid_logit_equals_two_softmax_logits(spatial, fn):
    x, y = _random(1, spatial, seed=4)
    two = torch.cat([torch.zeros_like(x), x], 1)  # softmax(0, x)_1 = sigmoid(x)
    torch.testing.assert_close(fn(x, y), fn(two, y.long()))


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("fn", [generalized_ce_map, reverse_ce_map, symmetric_ce_map, mae_map, noise_robust_dice_map])
def test_index_float_index_and_one_hot_targets_agree(spatial, fn):
    x, y = _random(3, spatial, seed=5)
    torch.testing.assert_close(fn(x, y.double()), fn(x, y))
    torch.testing.assert_close(fn(x, one_hot(y, 3).double()), fn(x, y))


def test_sigmoid_multilabel_map_is_the_channel_mean():
    g = _gen(6)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    t = (torch.rand(2, 3, 4, 5, generator=g) > 0.5).double()
    for fn in (generalized_ce_map, reverse_ce_map, symmetric_ce_map, mae_map):
        per_channel = torch.cat([fn(x[:, k : k + 1], t[:, k : k + 1]) for k in range(3)], 1)
        torch.testing.assert_close(fn(x, t, sigmoid=True), per_channel.mean(1, keepdim=True))


# ------------------------------------------------------------------------------------- noise-robust Dice
NRD_CASES = [
    dict(include_background=ib, batch=b, act=act)
    for ib in (True, False) for b in (False, True) for act in ("sigmoid", "softmax")
]


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("case", NRD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_noise_robust_dice_at_gamma_2_is_the_weighted_squared_dice(spatial, case):
    """Σw(p − y)² = Σwp² + Σwy² − 2Σwpy, so γ = 2 is WeightedDiceLoss(squared_pred) with smooth_nr = smooth_dr."""
    g = _gen(7)
    x = torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 1, *spatial), generator=g)
    sig = case["act"] == "sigmoid"
    target = one_hot(y, 3).double()
    w = torch.rand(2, 1, *spatial, generator=g, dtype=torch.float64) * 2
    eps = 1e-3
    ours = NoiseRobustDiceLoss(gamma=2.0, smooth_dr=eps, include_background=case["include_background"],
                               batch=case["batch"], sigmoid=sig)
    theirs = WeightedDiceLoss(sigmoid=sig, softmax=not sig, squared_pred=True, smooth_nr=eps, smooth_dr=eps,
                              include_background=case["include_background"], batch=case["batch"])
    torch.testing.assert_close(ours(x, target, weight=w), theirs(x, target, w))
    torch.testing.assert_close(ours(x, target), theirs(x, target))
    # γ = 1 with the linear denominator is the plain soft Dice for hard labels
    ours1 = NoiseRobustDiceLoss(gamma=1.0, squared_pred=False, smooth_dr=eps, batch=case["batch"], sigmoid=sig,
                                include_background=case["include_background"])
    theirs1 = WeightedDiceLoss(sigmoid=sig, softmax=not sig, smooth_nr=eps, smooth_dr=eps, batch=case["batch"],
                               include_background=case["include_background"])
    torch.testing.assert_close(ours1(x, target, weight=w), theirs1(x, target, w))


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("c", [1, 3])
def test_noise_robust_dice_map_mean_and_gradient_are_the_loss(spatial, batch, c):
    x, y = _random(c, spatial, seed=8)
    x.requires_grad_(True)
    loss = NoiseRobustDiceLoss(batch=batch)
    loss_map = loss.pixel_map(x, y)
    assert loss_map.shape == (x.shape[0], 1, *spatial)
    value = loss(x, y)
    torch.testing.assert_close(loss_map.mean(), value)
    (g_map,) = torch.autograd.grad(loss_map.mean(), x, retain_graph=True)
    (g_loss,) = torch.autograd.grad(value, x)
    torch.testing.assert_close(g_map, g_loss)
    # a region loss: a pixel's share depends on the other pixels through the shared denominator
    (g_one,) = torch.autograd.grad(_flat(loss_map)[0], x)
    assert (g_one.reshape(-1) != 0).sum() > c


def test_noise_robust_dice_integer_weight_repeats_pixels_and_none_reduction():
    g = _gen(9)
    x = torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (1, 1, 4, 3), generator=g)
    w = torch.ones(1, 1, 4, 3, dtype=torch.float64)
    w[..., 0] = 3.0
    rep_x = torch.cat([x, x[..., :1], x[..., :1]], -1)
    rep_y = torch.cat([y, y[..., :1], y[..., :1]], -1)
    torch.testing.assert_close(NoiseRobustDiceLoss()(x, y, weight=w), NoiseRobustDiceLoss()(rep_x, rep_y))
    none = NoiseRobustDiceLoss(reduction="none")
    assert none(x, y).shape == (1, 2, 1, 1)
    assert NoiseRobustDiceLoss(reduction="none", batch=True)(x, y).shape == (2, 1, 1)
    torch.testing.assert_close(NoiseRobustDiceLoss(reduction="sum")(x, y), none(x, y).sum())


# ------------------------------------------------------------------------------------- weights and reductions
@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("cls", PIXEL_LOSSES)
@pytest.mark.parametrize("c", [1, 3])
def test_pixel_losses_weight_extra_and_reductions(spatial, cls, c):
    x, y = _random(c, spatial, seed=10)
    g = _gen(11)
    w = torch.rand(x.shape[0], 1, *spatial, generator=g, dtype=torch.float64)
    extra = torch.rand(x.shape[0], 1, *spatial, generator=g, dtype=torch.float64)
    loss_map = cls().pixel_map(x, y)
    assert loss_map.shape == (x.shape[0], 1, *spatial)
    torch.testing.assert_close(cls()(x, y), loss_map.mean())
    torch.testing.assert_close(cls()(x, y, weight=w), (w * loss_map).mean())
    torch.testing.assert_close(cls()(x, y, weight=w, extra=extra), (w * (loss_map + extra)).mean())
    torch.testing.assert_close(cls()(x, y, weight=w, extra=0.25), (w * (loss_map + 0.25)).mean())
    torch.testing.assert_close(cls(reduction="sum")(x, y, weight=w), (w * loss_map).sum())
    torch.testing.assert_close(cls(reduction="none")(x, y, weight=w), w * loss_map)
    # the ∂/∂ω the double-backward meta step relies on: ℓ_k / N
    omega = torch.ones_like(w, requires_grad=True)
    cls()(x, y, weight=omega).backward()
    torch.testing.assert_close(omega.grad, loss_map / loss_map.numel())


def test_noise_robust_dice_extra_term():
    x, y = _random(3, (5, 4), seed=12)
    w = torch.rand(2, 1, 5, 4, generator=_gen(13), dtype=torch.float64)
    loss = NoiseRobustDiceLoss()
    torch.testing.assert_close(loss(x, y, weight=w, extra=0.5), loss(x, y, weight=w) + (0.5 * w).mean())
    torch.testing.assert_close(NoiseRobustDiceLoss(reduction="sum")(x, y, extra=0.5),
                               NoiseRobustDiceLoss(reduction="sum")(x, y) + 0.5 * w.numel())
    with pytest.raises(ValueError, match="extra needs reduction"):
        NoiseRobustDiceLoss(reduction="none")(x, y, extra=0.5)


@pytest.mark.parametrize("cls", ALL_LOSSES)
@pytest.mark.parametrize("c", [1, 3])
def test_zero_weight_blocks_the_gradient(cls, c):
    x, y = _random(c, (6, 6), seed=14)
    x.requires_grad_(True)
    w = torch.zeros(2, 1, 6, 6, dtype=torch.float64)
    w[..., :3] = 1.0
    cls()(x, y, weight=w).backward()
    assert torch.all(x.grad[..., 3:] == 0)
    assert torch.any(x.grad[..., :3] != 0)


@pytest.mark.parametrize("cls", ALL_LOSSES)
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("spatial", SPATIAL)
def test_gradients_finite_at_saturated_logits(cls, c, spatial):
    g = _gen(15)
    # ±100 saturates sigmoid/softmax in float32: p is exactly 0 or 1 on many pixels
    x = (torch.randint(0, 2, (2, c, *spatial), generator=g).float() * 2 - 1) * 100
    x[..., 0] = 0.0
    x.requires_grad_(True)
    y = (torch.rand(2, 1, *spatial, generator=g) > 0.5).float() if c == 1 else torch.randint(
        0, c, (2, 1, *spatial), generator=g)
    loss = cls()
    value = loss(x, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    assert torch.isfinite(loss.pixel_map(x.detach(), y)).all()


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_autocast_scores_in_float32(cls):
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    x = torch.randn(2, 1, 8, 8, generator=_gen(16))
    y = torch.randint(0, 3, (2, 1, 8, 8), generator=_gen(17))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
        assert logits.dtype == torch.bfloat16
        assert cls().pixel_map(logits, y).dtype == torch.float32
        value = cls()(logits, y, weight=torch.rand(2, 1, 8, 8))
    assert value.dtype == torch.float32
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


# ------------------------------------------------------------------------------------- bad options and inputs
@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: GeneralizedCELoss(q=0.0), r"q must lie in \(0, 1\]"),
        (lambda: GeneralizedCELoss(q=1.5), r"q must lie in \(0, 1\]"),
        (lambda: GeneralizedCELoss(q=float("nan")), "q must lie in"),
        (lambda: generalized_ce_map(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), q=-0.5), "q must lie in"),
        (lambda: SymmetricCELoss(alpha=-1.0), r"alpha must lie in \[0, inf\)"),
        (lambda: SymmetricCELoss(beta=float("inf")), "beta must lie in"),
        (lambda: SymmetricCELoss(alpha=0.0, beta=0.0), "alpha and beta are both 0"),
        (lambda: SymmetricCELoss(label_floor=0.0), r"label_floor must lie in \(0, 1\)"),
        (lambda: SymmetricCELoss(label_floor=1.0), "label_floor must lie in"),
        (lambda: reverse_ce_map(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), label_floor=2.0), "label_floor"),
        (lambda: NoiseRobustDiceLoss(gamma=0.5), r"gamma must lie in \[1, 2\]"),
        (lambda: NoiseRobustDiceLoss(gamma=2.5), "gamma must lie in"),
        (lambda: NoiseRobustDiceLoss(smooth_dr=-1e-5), "smooth_dr must lie in"),
        (lambda: MAELoss(reduction="avg"), "reduction must be 'none', 'mean' or 'sum'"),
        (lambda: NoiseRobustDiceLoss(reduction="batch"), "reduction must be"),
    ],
)
def test_out_of_range_options_are_rejected_naming_the_option(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: GeneralizedCELoss(q="0.5"), "q must be a number"),
        (lambda: SymmetricCELoss(alpha=True), "alpha must be a number"),
        (lambda: MAELoss(sigmoid="yes"), "sigmoid must be True, False or None"),
        (lambda: NoiseRobustDiceLoss(batch=1), "batch must be True or False"),
    ],
)
def test_wrong_option_types_are_rejected(factory, match):
    with pytest.raises(TypeError, match=match):
        factory()


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_bad_inputs_name_the_loss_and_the_problem(cls):
    name = cls.__name__
    x3 = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match=rf"{name}.*non-integer"):
        cls()(x3, torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        cls()(x3, torch.full((1, 1, 4, 4), 3))
    with pytest.raises(ValueError, match="1 \\(class indices\\) or 3"):
        cls()(x3, torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="spatial size"):
        cls()(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="input's shape"):
        cls()(torch.randn(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="at least 2 logit channels"):
        cls(sigmoid=False)(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="logits of shape"):
        cls()(torch.randn(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="weight must have shape"):
        cls()(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), weight=torch.ones(1, 1, 4, 5))


# ------------------------------------------------------------------------------------- trainers
def _batches(c: int, n: int = 2, b: int = 2, size: int = 16):
    g = _gen(20)
    out = []
    for _ in range(n):
        label = ((torch.rand(b, 1, size, size, generator=g) > 0.5).float() if c == 1
                 else torch.randint(0, c, (b, 1, size, size), generator=g).float())
        m = torch.rand(b, 1, size, size, generator=g)
        out.append({"image": torch.randn(b, 1, size, size, generator=g), "label": label, "mask_n": m,
                    "mask_f": 1 - m})
    return out


@pytest.mark.parametrize("cls", ALL_LOSSES)
@pytest.mark.parametrize("c, mask_mode", [(1, "paper"), (3, "weight")])
def test_dale_trainer_step_with_each_robust_loss(one_thread, cls, c, mask_mode):
    """ω comes from the loss's pixel map and weights the loss's fuzzy step (ω ⊙ M^f)."""
    torch.manual_seed(0)
    net = UNet(2, 1, c, (4, 8), (2,), num_res_units=1)
    before = [p.detach().clone() for p in net.parameters()]
    loss = cls()
    maps, calls = [], []
    pixel_map, forward = loss.pixel_map, loss.forward

    def record_map(*a, **k):
        maps.append(pixel_map(*a, **k))
        return maps[-1]

    def record_forward(*a, **k):
        calls.append((k.get("weight"), forward(*a, **k)))
        return calls[-1][1]

    loss.pixel_map, loss.forward = record_map, record_forward
    data = _batches(c, n=1)
    trainer = DALETrainer("cpu", 1, data, net, torch.optim.SGD(net.parameters(), lr=0.1), loss,
                          omega_step=OmegaMetaStep(reduction="sum"), mask_mode=mask_mode, decollate=False)
    seen = {}
    trainer.add_event_handler(DALEEvents.FUZZY_COMPLETED, lambda e: seen.update(e.state.output))
    trainer.run()
    out = trainer.state.output
    assert maps and maps[0].shape == (2, 1, 16, 16)
    assert len(calls) >= 2  # the non-fuzzy step, (the meta step's L_n), the fuzzy step
    omega, mask_f = seen[DALEKeys.OMEGA], seen[DALEKeys.MASK_F]
    assert torch.any(omega != 1)  # the meta step differentiated the robust map
    weight_f, loss_f = calls[-1]
    torch.testing.assert_close(weight_f, omega * mask_f)
    torch.testing.assert_close(out[DALEKeys.LOSS_F], loss_f.detach())
    assert torch.isfinite(out["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize("cls", ALL_LOSSES)
@pytest.mark.parametrize("c", [1, 3])
def test_monai_supervised_trainer_step_with_each_robust_loss(one_thread, cls, c):
    torch.manual_seed(0)
    net = UNet(2, 1, c, (4, 8), (2,), num_res_units=1)
    before = [p.detach().clone() for p in net.parameters()]
    trainer = SupervisedTrainer("cpu", 1, _batches(c, n=1), net, torch.optim.SGD(net.parameters(), lr=0.1), cls(),
                                decollate=False)
    trainer.run()
    assert torch.isfinite(trainer.state.output["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_a_bundle_loss_override_instantiates_each_robust_loss(cls):
    """The README's bundle override (``--loss "{'_target_': ...}"``) replaces the whole ``loss`` entry."""
    from pathlib import Path

    from fire import parser as fire_parser
    from monai.bundle import ConfigParser

    config = Path(__file__).resolve().parents[1] / "bundles" / "synthetic2d_unet" / "configs" / "train.json"
    override = fire_parser.DefaultParseValue(f"{{'_target_': 'dale_monai.robust_losses.{cls.__name__}'}}")
    bundle = ConfigParser()
    bundle.read_config(config)
    bundle.update({"loss": override})
    assert type(bundle.get_parsed_content("loss")) is cls
    assert bundle["train#trainer#loss_function"] == "@loss"
