"""The ω meta step: exactness of the fast JVP form against the double-backward reference, and no side effects."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import AttentionUnet, BasicUNetPlusPlus, SegResNet, SwinUNETR, UNet

from dale_monai.meta import OmegaMetaStep, logits_of, network_closures, virtual_norm_mode


def _bce(o, t):
    return torch.nn.functional.binary_cross_entropy_with_logits(o, t, reduction="none")


def _networks():
    yield "unet-batchnorm-2d", lambda: UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch"), (2, 1, 16, 16)
    yield "unet-instancenorm-tracked-3d", lambda: UNet(
        3, 1, 1, (4, 8), (2,), num_res_units=1, norm=("instance", {"affine": True, "track_running_stats": True})
    ), (2, 1, 8, 8, 8)
    yield "segresnet-groupnorm-3d", lambda: SegResNet(3, init_filters=8, in_channels=1, out_channels=1,
                                                      blocks_down=(1, 1), blocks_up=(1,)), (1, 1, 8, 8, 8)
    yield "attentionunet-2d", lambda: AttentionUnet(2, 1, 1, (4, 8), (2,)), (2, 1, 16, 16)
    yield "unet++-2d", lambda: BasicUNetPlusPlus(2, 1, 1, features=(4, 4, 4, 4, 4, 4)), (2, 1, 32, 32)
    yield "swinunetr-2d", lambda: SwinUNETR(in_channels=1, out_channels=1, feature_size=12, spatial_dims=2,
                                             depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)), (2, 1, 64, 64)


def _setup(make, shape, seed=0):
    torch.manual_seed(seed)
    net = make().double().train()
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = torch.randn(*shape, dtype=torch.float64)
    y = (torch.rand(*shape) > 0.5).double()
    m_n = torch.rand(*shape, dtype=torch.float64)
    m_f = 1 - m_n
    return net, x * m_f, y * m_f, x * m_n, y * m_n


def _omega(net, xf, yf, xn, yn, **kw):
    params = dict(net.named_parameters())
    loss_map = _bce(logits_of(net(xf)), yf)
    fuzzy_map, nonfuzzy = network_closures(net, xf, lambda o: _bce(o, yf), xn, lambda o: _bce(o, yn).mean())
    with virtual_norm_mode(net):
        return OmegaMetaStep(**kw)(loss_map, params, fuzzy_map, nonfuzzy, inner_lr=3e-4)


@pytest.mark.parametrize("name,make,shape", list(_networks()), ids=[n[0] for n in _networks()])
@pytest.mark.parametrize("steps", [1, 2])
def test_jvp_matches_double_backward_float64(name, make, shape, steps):
    net, xf, yf, xn, yn = _setup(make, shape)
    fast = _omega(net, xf, yf, xn, yn, method="jvp", steps=steps)
    ref = _omega(net, xf, yf, xn, yn, method="double_backward", steps=steps)
    rel = (fast.grad - ref.grad).norm() / ref.grad.norm()
    assert ref.grad.abs().max() > 0
    assert rel < 1e-12, f"{name}: relative difference {rel.item():.3e}"
    torch.testing.assert_close(fast.omega, ref.omega, rtol=0, atol=1e-12)


def test_meta_gradient_matches_definition():
    """g_k = -(η/N)·<∇L_n(θ_p), ∇ℓ_k(θ_n)>, checked pixel by pixel with plain autograd on a tiny net."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(3, 1, 1)).double()
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    y = (torch.rand(1, 1, 4, 4) > 0.5).double()
    eta = 0.05
    params = dict(net.named_parameters())
    loss_map = _bce(net(x), y)
    fm, nl = network_closures(net, x, lambda o: _bce(o, y), x.flip(-1), lambda o: _bce(o, y.flip(-1)).mean())
    res = OmegaMetaStep(method="jvp")(loss_map, params, fm, nl, inner_lr=eta)
    n = loss_map.numel()
    grads = torch.autograd.grad(loss_map.mean(), list(params.values()), retain_graph=True)
    theta_p = {k: p - eta * g for (k, p), g in zip(params.items(), grads)}
    v = torch.autograd.grad(nl(theta_p), list(theta_p.values()))
    for k in range(n):
        gk = torch.autograd.grad(loss_map.flatten()[k], list(params.values()), retain_graph=True)
        expected = -eta / n * sum((a * b).sum() for a, b in zip(v, gk))
        torch.testing.assert_close(res.grad.flatten()[k], expected)
    # one Adam step from fresh state: ω = 1 - lr·g/(|g| + eps)
    torch.testing.assert_close(res.omega, 1 - 0.1 * res.grad / (res.grad.abs() + 1e-8))


@pytest.mark.parametrize("method", ["jvp", "double_backward"])
def test_no_side_effects_on_parameters_buffers_optimizer(method):
    net, xf, yf, xn, yn = _setup(lambda: UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch"), (2, 1, 16, 16))
    net = net.float()
    xf, yf, xn, yn = xf.float(), yf.float(), xn.float(), yn.float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    _bce(net(xn), yn).mean().backward()
    opt.step()
    state_before = copy.deepcopy(net.state_dict())
    opt_before = copy.deepcopy(opt.state_dict())
    grads_before = [p.grad.clone() for p in net.parameters()]
    _omega(net, xf, yf, xn, yn, method=method)
    after = net.state_dict()
    changed = [k for k in after if not torch.equal(after[k], state_before[k])]
    # the real fuzzy forward inside _omega is the only one allowed to touch BatchNorm statistics
    assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    tracked = [k for k in changed if k.endswith("num_batches_tracked")]
    assert all(int(after[k]) == int(state_before[k]) + 1 for k in tracked) and tracked
    for k, v in opt.state_dict()["state"].items():
        for name, t in v.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(opt_before["state"][k][name]))
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads_before))


def test_virtual_norm_mode_restores_and_writes_nothing():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2),
                              torch.nn.InstanceNorm2d(2, affine=True, track_running_stats=True)).train()
    before = copy.deepcopy(net.state_dict())
    with virtual_norm_mode(net):
        torch.func.functional_call(net, dict(net.named_parameters()), (torch.randn(2, 1, 8, 8),))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net[1].track_running_stats and net[2].track_running_stats and net[2].running_mean is not None
    net(torch.randn(2, 1, 8, 8))  # a real forward still updates the statistics
    assert int(net[1].num_batches_tracked) == 1


@pytest.mark.parametrize("reduction", ["mean", "sum", "normalized"])
def test_reductions_and_range(reduction):
    net, xf, yf, xn, yn = _setup(lambda: UNet(2, 1, 1, (4, 8), (2,), num_res_units=1), (2, 1, 16, 16))
    res = _omega(net, xf, yf, xn, yn, method="jvp", reduction=reduction, lr=0.1)
    assert torch.isfinite(res.omega).all()
    assert res.omega.min() >= 0.9 - 1e-12 and res.omega.max() <= 1.1 + 1e-12
    if reduction != "mean":
        # scaled gradients dominate eps: a soft sign, nearly every pixel moved by ~lr
        assert res.frac_small_grad == 0.0
        assert (res.omega - 1).abs().median() > 0.09


def test_mean_reduction_reports_eps_saturation():
    net, xf, yf, xn, yn = _setup(lambda: UNet(2, 1, 1, (4, 8), (2,), num_res_units=1), (2, 1, 32, 32))
    res = _omega(net, xf, yf, xn, yn, method="jvp", reduction="mean", eps=1.0)
    assert res.frac_small_grad == 1.0
    assert (res.omega - 1).abs().max() < 1e-3


@pytest.mark.parametrize("kwargs", [dict(method="higher"), dict(steps=0), dict(lr=0.0), dict(reduction="max"),
                                    dict(eps=-1.0)])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        OmegaMetaStep(**kwargs)


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3), lr=st.floats(1e-3, 0.5),
       reduction=st.sampled_from(["mean", "sum", "normalized"]), method=st.sampled_from(["jvp", "double_backward"]))
def test_omega_is_finite_and_within_one_adam_step(seed, scale, lr, reduction, method):
    """For any finite input, one step (K = 1) of a fresh Adam keeps every ω in [1 − lr, 1 + lr]."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(2, 1, 1))
    x = torch.randn(2, 1, 6, 6) * scale
    y = (torch.rand(2, 1, 6, 6) > 0.5).float()
    params = dict(net.named_parameters())
    fm, nl = network_closures(net, x, lambda o: _bce(o, y), x.flip(-1), lambda o: _bce(o, y.flip(-1)).mean())
    res = OmegaMetaStep(method=method, lr=lr, reduction=reduction)(_bce(net(x), y), params, fm, nl, inner_lr=1e-3)
    assert torch.isfinite(res.omega).all()
    assert res.omega.min() >= 1 - lr - 1e-6 and res.omega.max() <= 1 + lr + 1e-6
