from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.losses import DiceLoss
from monai.networks.utils import one_hot

from dale_monai.losses import DALELoss, PixelwiseCELoss, WeightedDiceLoss

SPATIAL = [(6, 5), (4, 3, 5)]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("spatial", SPATIAL)
def test_binary_map_matches_bce_with_soft_targets(spatial):
    g = _gen()
    x = torch.randn(3, 1, *spatial, generator=g, dtype=torch.float64)
    y = (torch.rand(3, 1, *spatial, generator=g) > 0.5).double() * torch.rand(3, 1, *spatial, generator=g).double()
    m = PixelwiseCELoss()(x, y)
    assert m.shape == (3, 1, *spatial)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
    torch.testing.assert_close(m, expected)
    torch.testing.assert_close(m.mean(), torch.nn.BCEWithLogitsLoss()(x, y))


@pytest.mark.parametrize("spatial", SPATIAL)
def test_softmax_map_index_onehot_and_soft_targets(spatial):
    g = _gen(1)
    x = torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 4, (2, 1, *spatial), generator=g)
    loss = PixelwiseCELoss()
    m_idx = loss(x, idx)
    assert m_idx.shape == (2, 1, *spatial)
    torch.testing.assert_close(m_idx[:, 0], torch.nn.functional.cross_entropy(x, idx[:, 0], reduction="none"))
    torch.testing.assert_close(m_idx.mean(), torch.nn.CrossEntropyLoss()(x, idx[:, 0]))
    # the same indices stored as floats, and as one-hot, give the same map
    torch.testing.assert_close(loss(x, idx.double()), m_idx)
    torch.testing.assert_close(loss(x, one_hot(idx, 4).double()), m_idx)
    # soft class probabilities: -Σ_c t_c log softmax_c, written out
    probs = torch.softmax(torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64), 1)
    expected = -(probs * torch.log_softmax(x, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(loss(x, probs), expected)


def test_sigmoid_multilabel_map_is_channel_mean():
    g = _gen(2)
    x = torch.randn(2, 3, 5, 5, generator=g)
    y = (torch.rand(2, 3, 5, 5, generator=g) > 0.5).float()
    m = PixelwiseCELoss(sigmoid=True)(x, y)
    assert m.shape == (2, 1, 5, 5)
    torch.testing.assert_close(m.mean(), torch.nn.BCEWithLogitsLoss()(x, y))


def test_pixelwise_ce_errors():
    x2 = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="non-integer"):
        PixelwiseCELoss()(x2, torch.full((1, 1, 4, 4), 0.5))  # a soft binary target on 2 softmax channels
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PixelwiseCELoss()(x2, torch.full((1, 1, 4, 4), 2))
    with pytest.raises(ValueError, match="1 \\(class indices\\) or 2"):
        PixelwiseCELoss()(x2, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="at least 2 logit channels"):
        PixelwiseCELoss(sigmoid=False)(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="spatial size"):
        PixelwiseCELoss()(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="input's shape"):
        PixelwiseCELoss()(torch.randn(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="logits of shape"):
        PixelwiseCELoss()(torch.randn(4, 4), torch.zeros(4, 4))
    with pytest.raises(TypeError, match="sigmoid"):
        PixelwiseCELoss(sigmoid="yes")  # type: ignore[arg-type]


# every combination of the settings WeightedDiceLoss shares with MONAI's DiceLoss
DICE_SETTINGS = [
    dict(zip(("include_background", "act", "squared_pred", "jaccard", "batch", "reduction"), combo))
    for combo in itertools.product(
        (True, False), ("sigmoid", "softmax"), (False, True), (False, True), (False, True), ("mean", "sum", "none")
    )
]


@pytest.mark.parametrize("cfg", DICE_SETTINGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_weighted_dice_without_weight_equals_monai(cfg):
    g = _gen(3)
    kwargs = dict(
        include_background=cfg["include_background"],
        sigmoid=cfg["act"] == "sigmoid",
        softmax=cfg["act"] == "softmax",
        squared_pred=cfg["squared_pred"],
        jaccard=cfg["jaccard"],
        batch=cfg["batch"],
        reduction=cfg["reduction"],
        smooth_nr=1e-4,
        smooth_dr=1e-3,
    )
    for spatial in SPATIAL:
        x = torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64)
        y = one_hot(torch.randint(0, 3, (2, 1, *spatial), generator=g), 3).double()
        theirs = DiceLoss(**kwargs)(x, y)
        torch.testing.assert_close(WeightedDiceLoss(**kwargs)(x, y), theirs)
        ones = torch.ones(2, 1, *spatial, dtype=torch.float64)
        torch.testing.assert_close(WeightedDiceLoss(**kwargs)(x, y, ones), theirs)


@pytest.mark.parametrize("spatial", SPATIAL)
def test_weighted_dice_to_onehot_and_binary_equal_monai(spatial):
    g = _gen(4)
    x = torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 3, (2, 1, *spatial), generator=g)
    kw = dict(softmax=True, to_onehot_y=True, include_background=False)
    torch.testing.assert_close(WeightedDiceLoss(**kw)(x, idx), DiceLoss(**kw)(x, idx))
    xb = torch.randn(2, 1, *spatial, generator=g, dtype=torch.float64)
    yb = (torch.rand(2, 1, *spatial, generator=g) > 0.5).double()
    torch.testing.assert_close(WeightedDiceLoss(sigmoid=True)(xb, yb), DiceLoss(sigmoid=True)(xb, yb))


def test_weighted_dice_hand_computed():
    p = torch.tensor([0.5, 1.0, 0.25]).view(1, 1, 3, 1)
    t = torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 3, 1)
    w = torch.tensor([2.0, 1.0, 0.0]).view(1, 1, 3, 1)
    # I = 2·0.5·1 = 1, P = 2·0.5 + 1 = 2, T = 2 → Dice loss = 1 − 2/4; the third pixel has weight 0
    loss = WeightedDiceLoss(smooth_nr=0.0, smooth_dr=0.0)(p, t, w)
    torch.testing.assert_close(loss, torch.tensor(0.5))
    jac = WeightedDiceLoss(smooth_nr=0.0, smooth_dr=0.0, jaccard=True)(p, t, w)
    torch.testing.assert_close(jac, torch.tensor(1 - 2 / (2 * (2 + 2 - 1))))


@pytest.mark.parametrize("spatial", SPATIAL)
def test_zero_weight_equals_dice_on_the_kept_pixels_and_blocks_gradient(spatial):
    g = _gen(5)
    x = torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64, requires_grad=True)
    y = one_hot(torch.randint(0, 3, (2, 1, *spatial), generator=g), 3).double()
    w = torch.zeros(2, 1, *spatial, dtype=torch.float64)
    keep = spatial[-1] // 2 + 1
    w[..., :keep] = 1.0
    loss = WeightedDiceLoss(softmax=True)(x, y, w)
    # softmax acts over channels only, so cropping before or after it is the same
    expected = DiceLoss(softmax=True)(x[..., :keep], y[..., :keep])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.all(x.grad[..., keep:] == 0)
    assert torch.any(x.grad[..., :keep] != 0)


def test_integer_weight_equals_repeating_pixels():
    g = _gen(6)
    x = torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64)
    y = one_hot(torch.randint(0, 2, (1, 1, 4, 3), generator=g), 2).double()
    w = torch.ones(1, 1, 4, 3, dtype=torch.float64)
    w[..., 0] = 3.0  # column 0 counts three times
    repeated_x = torch.cat([x, x[..., :1], x[..., :1]], dim=-1)
    repeated_y = torch.cat([y, y[..., :1], y[..., :1]], dim=-1)
    torch.testing.assert_close(
        WeightedDiceLoss(softmax=True)(x, y, w), DiceLoss(softmax=True)(repeated_x, repeated_y)
    )


def test_weighted_dice_errors():
    x = torch.randn(2, 2, 4, 4)
    y = torch.zeros(2, 2, 4, 4)
    with pytest.raises(ValueError, match="weight must have shape"):
        WeightedDiceLoss()(x, y, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="differs from input shape"):
        WeightedDiceLoss()(x, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="at most one"):
        WeightedDiceLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError, match="smooth"):
        WeightedDiceLoss(smooth_dr=-1.0)


@pytest.mark.parametrize("spatial", SPATIAL)
def test_dale_loss_unit_weight_equals_torch_mean(spatial):
    g = _gen(7)
    xb = torch.randn(2, 1, *spatial, generator=g)
    yb = (torch.rand(2, 1, *spatial, generator=g) > 0.5).float() * torch.rand(2, 1, *spatial, generator=g)
    loss = DALELoss()
    torch.testing.assert_close(loss(xb, yb), torch.nn.BCEWithLogitsLoss()(xb, yb))
    torch.testing.assert_close(loss(xb, yb, weight=torch.ones(2, 1, *spatial)), torch.nn.BCEWithLogitsLoss()(xb, yb))
    xm = torch.randn(2, 3, *spatial, generator=g)
    ym = torch.randint(0, 3, (2, 1, *spatial), generator=g)
    torch.testing.assert_close(loss(xm, ym), torch.nn.CrossEntropyLoss()(xm, ym[:, 0]))
    torch.testing.assert_close(loss(xm, one_hot(ym, 3)), torch.nn.CrossEntropyLoss()(xm, ym[:, 0]))


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    c=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 5), min_size=2, max_size=3),
    ce_weight=st.floats(0.1, 3.0),
    dice_weight=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**16),
)
def test_dale_loss_is_weighted_mean_plus_weighted_dice(b, c, spatial, ce_weight, dice_weight, seed):
    g = _gen(seed)
    x = torch.randn(b, c, *spatial, generator=g, dtype=torch.float64)
    if c == 1:
        y = torch.rand(b, 1, *spatial, generator=g, dtype=torch.float64)
        probs, y_oh = torch.sigmoid(x), y
    else:
        y = torch.randint(0, c, (b, 1, *spatial), generator=g)
        probs, y_oh = torch.softmax(x, 1), one_hot(y, c).double()
    w = torch.rand(b, 1, *spatial, generator=g, dtype=torch.float64) * 1.1
    extra = torch.rand(b, 1, *spatial, generator=g, dtype=torch.float64)
    loss = DALELoss(ce_weight=ce_weight, dice_weight=dice_weight)
    ce_map = PixelwiseCELoss()(x, y)
    torch.testing.assert_close(loss.pixel_map(x, y), ce_weight * ce_map)
    expected = (w * (ce_weight * ce_map + extra)).mean() + dice_weight * WeightedDiceLoss()(probs, y_oh, w)
    torch.testing.assert_close(loss(x, y, weight=w, extra=extra), expected)
    expected_scalar = (w * (ce_weight * ce_map + 0.25)).mean() + dice_weight * WeightedDiceLoss()(probs, y_oh, w)
    torch.testing.assert_close(loss(x, y, weight=w, extra=torch.tensor(0.25, dtype=torch.float64)), expected_scalar)
    torch.testing.assert_close(loss(x, y, weight=w, extra=0.25), expected_scalar)


def test_dale_loss_gradient_wrt_pixel_weight_is_the_map_over_n():
    """The double-backward ω reference differentiates mean(ω ⊙ ℓ) w.r.t. ω: ∂/∂ω_k = ℓ_k / N."""
    g = _gen(8)
    x = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    y = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).double()
    omega = torch.ones(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    loss = DALELoss()
    loss(x, y, weight=omega).backward()
    torch.testing.assert_close(omega.grad, loss.pixel_map(x, y) / omega.numel())


def test_dale_loss_dice_multiclass_matches_monai_without_weight():
    g = _gen(9)
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 1, 5, 5), generator=g)
    loss = DALELoss(dice_weight=0.5, include_background=False)
    expected = torch.nn.CrossEntropyLoss()(x, y[:, 0]) + 0.5 * DiceLoss(
        softmax=True, to_onehot_y=True, include_background=False
    )(x, y)
    torch.testing.assert_close(loss(x, y), expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ce_weight": -1.0}, "ce_weight must be >= 0"),
        ({"dice_weight": -0.5}, "dice_weight must be >= 0"),
        ({"ce_weight": 0.0, "dice_weight": 1.0}, "ce_weight must be > 0"),
        ({"dice_weight": float("nan")}, "dice_weight must be finite"),
    ],
)
def test_dale_loss_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DALELoss(**kwargs)


def test_dale_loss_rejects_bad_shapes():
    x, y = torch.randn(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    with pytest.raises(TypeError, match="ce_weight"):
        DALELoss(ce_weight="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight must have shape"):
        DALELoss()(x, y, weight=torch.ones(2, 1, 4, 5))
    with pytest.raises(ValueError, match="extra"):
        DALELoss()(x, y, extra=torch.ones(2, 1, 4, 5))
    with pytest.raises(ValueError, match="enlarge"):
        DALELoss()(x, y, extra=torch.ones(2, 3, 4, 4))


def test_dale_loss_trains_a_conv_under_weights():
    """End to end: gradients reach the network and the weighted loss decreases."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(4, 1, 8, 8)
    y = (x > 0).long()
    w = torch.rand(4, 1, 8, 8)
    loss = DALELoss(dice_weight=1.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    first = None
    for _ in range(10):
        opt.zero_grad()
        value = loss(net(x), y, weight=w)
        value.backward()
        opt.step()
        first = value.item() if first is None else first
    assert value.item() < 0.7 * first


@pytest.mark.parametrize("channels", [1, 3])
def test_autocast_keeps_the_loss_in_float32(channels):
    """Under AMP the logits are half precision; the map and the Dice sums must not be."""
    g = _gen(10)
    net = torch.nn.Conv2d(1, channels, 3, padding=1)
    x = torch.randn(2, 1, 8, 8, generator=g)
    y = (x > 0).float() if channels == 1 else torch.randint(0, channels, (2, 1, 8, 8), generator=g)
    loss = DALELoss(dice_weight=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
        assert logits.dtype == torch.bfloat16
        assert loss.pixel_map(logits, y).dtype == torch.float32
        value = loss(logits, y, weight=torch.rand(2, 1, 8, 8, generator=g))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
