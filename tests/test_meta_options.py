"""The ω meta step's approximate method (first_order), head scope, the learning-to-reweight rule and K > 1.

Exact methods are checked against a per-pixel autograd evaluation of their formula in float64, the
approximation against the exact ω on a network trained a little, and every new option for side effects.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from dale_monai.meta import (
    OmegaMetaStep,
    capture_calls,
    head_parameters,
    logits_of,
    network_closures,
    virtual_norm_mode,
)
from dale_monai.feature_layers import default_feature_layer

pytestmark = pytest.mark.usefixtures("one_thread")


def _bce(o, t):
    return torch.nn.functional.binary_cross_entropy_with_logits(o, t, reduction="none")


class _BodyHead(nn.Module):
    """A tiny network with a named segmentation head (two layers, so the head is not linear in its params)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh())
        self.head = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Tanh(), nn.Conv2d(2, 1, 1))

    def forward(self, x):
        return self.head(self.body(x))


def _tiny(seed=1, shape=(2, 1, 4, 4)):
    torch.manual_seed(seed)
    net = _BodyHead().double()
    x = torch.randn(*shape, dtype=torch.float64)
    y = (torch.rand(*shape) > 0.5).double()
    return net, x, y


def _per_pixel_grads(loss_map, params):
    """∇_θ ℓ_k for every pixel k, with plain autograd (the reference)."""
    return [torch.autograd.grad(loss_map.flatten()[k], params, retain_graph=True) for k in range(loss_map.numel())]


def _unet_setup(seed=0, shape=(2, 1, 16, 16), norm="batch"):
    torch.manual_seed(seed)
    net = UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm=norm).double().train()
    x = torch.randn(*shape, dtype=torch.float64)
    y = (torch.rand(*shape) > 0.5).double()
    m_n = torch.rand(*shape, dtype=torch.float64)
    return net, x * (1 - m_n), y * (1 - m_n), x * m_n, y * m_n, 1 - m_n


def _call(net, xf, yf, xn, yn, step, nonfuzzy_grad=None, fuzzy_mask=None, head_fast=True, eta=3e-4):
    """One meta step as the trainer calls it: real fuzzy forward (head recorded), closures, virtual norm mode."""
    head = step.head_module(net) if step.scope == "head" else None
    with capture_calls(head) if head is not None else nullcontext([]) as calls:
        pred = logits_of(net(xf))
    loss_map = _bce(pred, yf)
    params = head_parameters(net, head) if head is not None else dict(net.named_parameters())
    head_call = (head, calls[0]) if head is not None and head_fast else None
    fm, nl = network_closures(net, xf, lambda o: _bce(o, yf), xn, lambda o: _bce(o, yn).mean(), head_call=head_call)
    with virtual_norm_mode(net):
        return step(loss_map, params, fm, nl, inner_lr=eta, nonfuzzy_grad=nonfuzzy_grad, fuzzy_mask=fuzzy_mask)


def _grad_at(net, xn, yn):
    """v = ∇_θ L_n(θ), name → tensor (what DALETrainer hands the first_order step)."""
    net.zero_grad()
    with virtual_norm_mode(net):
        _bce(net(xn), yn).mean().backward()
    v = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
    net.zero_grad()
    return v


# ------------------------------------------------------------------------------------------------ first_order


@pytest.mark.parametrize("reduction,factor", [("mean", 1.0), ("sum", None)])
def test_first_order_matches_its_formula_pixel_by_pixel(reduction, factor):
    """g_k = −(η/N)·⟨v, ∇_θ ℓ_k(θ_n)⟩ with the given v, in float64 (and × N with the sum reduction)."""
    net, x, y = _tiny()
    params = dict(net.named_parameters())
    torch.manual_seed(5)
    v = {n: torch.randn_like(p) for n, p in params.items()}
    eta = 0.05
    loss_map = _bce(net(x), y)
    fm, nl = network_closures(net, x, lambda o: _bce(o, y), x.flip(-1), lambda o: _bce(o, y.flip(-1)).mean())
    res = OmegaMetaStep(method="first_order", reduction=reduction)(loss_map, params, fm, nl, inner_lr=eta,
                                                                   nonfuzzy_grad=v)
    n = loss_map.numel()
    scale = n if factor is None else factor
    for k, gk in enumerate(_per_pixel_grads(loss_map, list(params.values()))):
        expected = -eta / n * sum((v[name] * a).sum() for name, a in zip(params, gk)) * scale
        torch.testing.assert_close(res.grad.flatten()[k], expected, rtol=1e-12, atol=1e-300)
    assert res.grad.abs().min() > 0


def test_first_order_is_the_exact_formula_with_v_at_theta():
    """first_order with v = ∇L_n(θ_p) (what jvp computes) gives exactly jvp's meta gradient."""
    net, xf, yf, xn, yn, _ = _unet_setup()
    eta = 3e-4
    exact = _call(net, xf, yf, xn, yn, OmegaMetaStep(method="jvp"), eta=eta)
    # θ_p by hand: the virtual SGD step on mean(ℓ) at ω = 1, then v there
    params = dict(net.named_parameters())
    with virtual_norm_mode(net):
        grads = torch.autograd.grad(_bce(logits_of(net(xf)), yf).mean(), list(params.values()))
        theta_p = {n: (p - eta * g).detach().requires_grad_(True) for (n, p), g in zip(params.items(), grads)}
        loss = _bce(logits_of(torch.func.functional_call(net, theta_p, (xn,))), yn).mean()
    v = dict(zip(theta_p, torch.autograd.grad(loss, list(theta_p.values()))))
    approx = _call(net, xf, yf, xn, yn, OmegaMetaStep(method="first_order"), nonfuzzy_grad=v, eta=eta)
    torch.testing.assert_close(approx.grad, exact.grad, rtol=1e-10, atol=0)


@pytest.mark.parametrize("method", ["first_order", "jvp", "double_backward"])
def test_head_scope_is_the_formula_restricted_to_head_parameters(method):
    net, x, y = _tiny()
    xn, yn = x.flip(-1), y.flip(-1)
    eta = 0.05
    v = _grad_at(net, xn, yn)
    step = OmegaMetaStep(method=method, scope="head", head_layer="head")
    res = _call(net, x, y, xn, yn, step, nonfuzzy_grad=v, eta=eta)
    head = dict(net.head.named_parameters(prefix="head"))
    assert set(head) == {"head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"}
    loss_map = _bce(net(x), y)
    if method != "first_order":  # v = ∇_head L_n at θ_p, the virtual step taken on the head only
        grads = torch.autograd.grad(loss_map.mean(), list(head.values()), retain_graph=True)
        theta_p = {n: (p - eta * g).detach().requires_grad_(True) for (n, p), g in zip(head.items(), grads)}
        loss = _bce(torch.func.functional_call(net, theta_p, (xn,)), yn).mean()
        v = dict(zip(theta_p, torch.autograd.grad(loss, list(theta_p.values()))))
    n = loss_map.numel()
    for k, gk in enumerate(_per_pixel_grads(loss_map, list(head.values()))):
        expected = -eta / n * sum((v[name] * a).sum() for name, a in zip(head, gk))
        torch.testing.assert_close(res.grad.flatten()[k], expected, rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("method", ["first_order", "jvp", "double_backward"])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_head_alone_on_recorded_features_equals_the_whole_network(method, norm):
    """The fast head path (re-run the head on its recorded input) and the whole-network path agree; the default
    head of MONAI's UNet is its top up layer ``model.2`` (with norm layers inside)."""
    net, xf, yf, xn, yn, _ = _unet_setup(norm=norm)
    assert default_feature_layer(net) is net.model[2]
    v = _grad_at(net, xn, yn)
    fast = _call(net, xf, yf, xn, yn, OmegaMetaStep(method=method, scope="head"), nonfuzzy_grad=v)
    slow = _call(net, xf, yf, xn, yn, OmegaMetaStep(method=method, scope="head"), nonfuzzy_grad=v, head_fast=False)
    assert fast.grad.abs().max() > 0
    torch.testing.assert_close(fast.grad, slow.grad, rtol=1e-9, atol=1e-12 * float(slow.grad.abs().max()))


def test_head_fuzzy_map_refuses_parameters_outside_the_head():
    net, x, y = _tiny()
    with capture_calls(net.head) as calls:
        net(x)
    fm, _ = network_closures(net, x, lambda o: _bce(o, y), x, lambda o: _bce(o, y).mean(),
                             head_call=(net.head, calls[0]))
    with pytest.raises(ValueError, match="body.0.weight"):
        fm(dict(net.named_parameters()))


def test_head_parameters_names_and_errors():
    net, _, _ = _tiny()
    assert list(head_parameters(net, net.head)) == ["head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"]
    for p in net.head.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        head_parameters(net, net.head)
    with pytest.raises(ValueError, match="not a submodule"):
        head_parameters(net, nn.Conv2d(1, 1, 1))


# ------------------------------------------------------------------------------------------------ agreement


def _trained_a_bit(seed=0, size=48, steps=40):
    """A small UNet trained with plain Adam on synthetic lesions with boundary label noise, and a held batch."""
    from data_prep.synthetic import generate_case

    from dale_monai.transforms import FuzzyPartition

    torch.manual_seed(seed)
    net = UNet(2, 1, 1, (8, 16, 32), (2, 2), num_res_units=1, norm="batch")
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    part = FuzzyPartition(patch_size=8)

    def batch(i):
        cases = [generate_case(np.random.default_rng([seed, i, j]), size=size, dims=2, n_lesions=1) for j in range(4)]
        x = torch.stack([torch.from_numpy(c.image)[None].float() for c in cases])
        y = torch.stack([torch.from_numpy(c.label_noisy)[None].float() for c in cases])
        masks = [part(xi, yi) for xi, yi in zip(x, y)]
        return x, y, torch.stack([m[0] for m in masks]), torch.stack([m[1] for m in masks])

    for i in range(steps):
        x, y, _, _ = batch(i)
        opt.zero_grad()
        _bce(net(x), y).mean().backward()
        opt.step()
    return net, opt, batch(10_000)


@pytest.mark.slow
def test_first_order_agrees_in_sign_with_the_exact_omega():
    """On the same weights and batch (the trainer's iteration from identical copies), first_order's meta gradient
    has jvp's sign on nearly every pixel; a random ω would agree on about half."""
    from dale_monai.engines import DALETrainer

    net, opt, (x, y, m_n, m_f) = _trained_a_bit()
    data = [{"image": x, "label": y, "mask_n": m_n, "mask_f": m_f}]
    grads = {}
    for method in ("jvp", "first_order"):
        copy_net = copy.deepcopy(net)
        copy_opt = torch.optim.Adam(copy_net.parameters(), lr=3e-3)
        copy_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        seen = {}
        step = OmegaMetaStep(method=method)
        original = step.__call__

        class Recorder:
            needs_nonfuzzy_grad, scope = step.needs_nonfuzzy_grad, step.scope

            def __call__(self, *a, **k):
                seen["result"] = original(*a, **k)
                return seen["result"]

        DALETrainer("cpu", 1, data, copy_net, copy_opt, _bce, omega_step=Recorder()).run()
        grads[method] = seen["result"].grad.flatten().double()
    ref, approx = grads["jvp"], grads["first_order"]
    selected = ref.abs() > 1e-3 * ref.abs().max()
    agreement = float((approx.sign() == ref.sign())[selected].double().mean())
    assert selected.double().mean() > 0.5
    from scipy.stats import spearmanr

    rho = spearmanr(approx.numpy(), ref.numpy())[0]
    assert agreement > 0.95, agreement  # measured 0.9993 (rank correlation 0.9986) at commit time
    assert rho > 0.9, rho


# ------------------------------------------------------------------------------------------------ l2rw


class _Const(nn.Module):
    """logits = b everywhere: ∇_b ℓ_k = σ(b) − y_k, so the sign of every g_k is known in closed form."""

    def __init__(self, b=0.3):
        super().__init__()
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, x):
        return self.b * torch.ones_like(x)


@pytest.mark.parametrize("method", ["jvp", "first_order", "double_backward"])
def test_l2rw_weights_agreeing_pixels_only_and_normalises_under_the_mask(method):
    # non-fuzzy targets all 1: v ∝ σ(b) − 1 < 0; g_k ∝ −v·(σ(b) − y_k) < 0 exactly where y_k = 1
    net = _Const()
    torch.manual_seed(0)
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    y = (torch.rand(2, 1, 6, 6) > 0.5).double()
    mask = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    ones = torch.ones_like(y)
    v = _grad_at(net, x, ones)
    res = _call(net, x, y, x, ones, OmegaMetaStep(method=method, rule="l2rw"), nonfuzzy_grad=v, fuzzy_mask=mask)
    w = res.omega
    assert (w >= 0).all()
    assert torch.equal(w > 0, y > 0.5)  # w = max(−g, 0)
    torch.testing.assert_close((mask * w).sum(), mask.sum())  # mean 1 under M^f
    # all agreeing pixels share one g here, so one weight: Σ M^f / Σ_{y=1} M^f
    torch.testing.assert_close(w[y > 0.5], (mask.sum() / mask[y > 0.5].sum()).expand(int((y > 0.5).sum())))
    # without a mask: mean 1 over all pixels
    plain = _call(net, x, y, x, ones, OmegaMetaStep(method=method, rule="l2rw"), nonfuzzy_grad=v)
    torch.testing.assert_close(plain.omega.mean(), torch.tensor(1.0, dtype=torch.float64))


def test_l2rw_falls_back_to_uniform_when_no_pixel_agrees():
    net = _Const()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    y = torch.zeros(2, 1, 6, 6, dtype=torch.float64)  # every g_k > 0: no pixel helps the non-fuzzy loss
    ones = torch.ones_like(y)
    v = _grad_at(net, x, ones)
    res = _call(net, x, y, x, ones, OmegaMetaStep(method="first_order", rule="l2rw"), nonfuzzy_grad=v)
    assert (res.grad > 0).all()
    assert torch.equal(res.omega, torch.ones_like(res.omega))
    # agreeing pixels only where the mask is zero: they cannot carry the normalisation either
    y[0, 0, 0, 0] = 1
    mask = torch.ones_like(y)
    mask[0, 0, 0, 0] = 0
    res = _call(net, x, y, x, ones, OmegaMetaStep(method="first_order", rule="l2rw"), nonfuzzy_grad=v, fuzzy_mask=mask)
    assert torch.equal(res.omega, torch.ones_like(res.omega))


# ------------------------------------------------------------------------------------------------ K


def test_first_order_k_steps_equal_one_step_with_k_times_the_lr():
    """g does not depend on ω without a virtual step: K Adam steps of the same g = one step of K·lr."""
    net, xf, yf, xn, yn, _ = _unet_setup()
    v = _grad_at(net, xn, yn)
    k3 = _call(net, xf, yf, xn, yn, OmegaMetaStep(method="first_order", steps=3, lr=0.1, reduction="sum"),
               nonfuzzy_grad=v)
    one = _call(net, xf, yf, xn, yn, OmegaMetaStep(method="first_order", steps=1, lr=0.3, reduction="sum"),
                nonfuzzy_grad=v)
    torch.testing.assert_close(k3.omega, one.omega, rtol=0, atol=1e-12)
    assert (k3.omega - 1).abs().max() > 0.29  # and it does move ω by up to K·lr


@pytest.mark.parametrize("method", ["first_order", "jvp"])
def test_strong_adam_updates_are_clamped_at_zero(method):
    """K·lr > 1 could push ω below 0 (the fuzzy step would ascend those pixels' loss): it stops at 0."""
    net, xf, yf, xn, yn, _ = _unet_setup()
    v = _grad_at(net, xn, yn)
    res = _call(net, xf, yf, xn, yn, OmegaMetaStep(method=method, steps=3, lr=1.0, reduction="sum"), nonfuzzy_grad=v)
    unclamped = 1 - 3 * res.grad / (res.grad.abs() + 1e-8)  # first_order's constant-g path, without the clamp
    assert res.omega.min() == 0 and (unclamped < -1).any()
    assert res.omega.max() > 3.5  # the other side is not limited
    if method == "first_order":
        torch.testing.assert_close(res.omega, unclamped.clamp_min(0), rtol=0, atol=1e-9)


@pytest.mark.parametrize("method,calls", [("jvp", 3), ("double_backward", 3), ("first_order", 1)])
def test_k_steps_recompute_g_only_where_it_depends_on_omega(method, calls, monkeypatch):
    net, xf, yf, xn, yn, _ = _unet_setup()
    step = OmegaMetaStep(method=method, steps=3, reduction="sum")
    name = {"jvp": "_grad_jvp", "double_backward": "_grad_double_backward", "first_order": "_grad_first_order"}[method]
    counted = []
    inner = getattr(step, name)
    monkeypatch.setattr(step, name, lambda *a, **k: counted.append(1) or inner(*a, **k))
    res = _call(net, xf, yf, xn, yn, step, nonfuzzy_grad=_grad_at(net, xn, yn))
    assert len(counted) == calls
    dev = (res.omega - 1).abs()
    assert dev.max() <= 0.3 + 1e-9 and dev.median() > 0.15  # K = 3 steps of lr 0.1 each


# ------------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize("kwargs,option", [
    (dict(method="second_order"), "method"), (dict(scope="decoder"), "scope"), (dict(rule="softmax"), "rule"),
    (dict(steps=0), "steps"), (dict(steps=1.5), "steps"), (dict(steps=True), "steps"),
    (dict(rule="l2rw", steps=2), "steps"), (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(lr=float("inf")), "lr"), (dict(eps=-1e-8), "eps"), (dict(betas=(0.9, 1.0)), "betas"),
    (dict(betas=(0.9,)), "betas"), (dict(head_layer="model.2"), "head_layer"),
    (dict(scope="head", head_layer=""), "head_layer"), (dict(scope="head", head_layer=3), "head_layer"),
])
def test_invalid_options_name_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        OmegaMetaStep(**kwargs)


def test_first_order_without_or_with_a_bad_nonfuzzy_grad_is_refused():
    net, x, y = _tiny()
    step = OmegaMetaStep(method="first_order")
    params = dict(net.named_parameters())
    fm, nl = network_closures(net, x, lambda o: _bce(o, y), x, lambda o: _bce(o, y).mean())
    loss_map = _bce(net(x), y)
    with pytest.raises(ValueError, match="nonfuzzy_grad"):
        step(loss_map, params, fm, nl, inner_lr=0.1)
    with pytest.raises(ValueError, match="head.2.bias"):
        step(loss_map, params, fm, nl, inner_lr=0.1,
             nonfuzzy_grad={n: torch.zeros_like(p) for n, p in params.items() if n != "head.2.bias"})
    with pytest.raises(ValueError, match="shape"):
        step(loss_map, params, fm, nl, inner_lr=0.1, nonfuzzy_grad={n: torch.zeros(3) for n in params})


def test_head_module_resolution():
    net = UNet(2, 1, 1, (4, 8), (2,), num_res_units=1)
    assert OmegaMetaStep(scope="head").head_module(net) is net.model[2]
    assert OmegaMetaStep(scope="head", head_layer="model.1").head_module(net) is net.model[1]
    assert OmegaMetaStep(scope="head", head_layer=net.model[0]).head_module(net) is net.model[0]
    with pytest.raises(ValueError, match="not a module"):
        OmegaMetaStep(scope="head", head_layer=nn.Conv2d(1, 1, 1)).head_module(net)
    with pytest.raises(ValueError, match="head_layer"):
        OmegaMetaStep(scope="head").head_module(_BodyHead())  # no default head for an unknown network
    assert "first_order" in repr(OmegaMetaStep(method="first_order", scope="head", rule="l2rw"))


@pytest.mark.parametrize("kwargs", [
    dict(method="first_order"), dict(method="first_order", scope="head"), dict(method="jvp", scope="head"),
    dict(method="double_backward", scope="head"), dict(method="jvp", rule="l2rw"),
    dict(method="first_order", rule="l2rw", scope="head"),
])
def test_new_options_leave_parameters_buffers_and_optimizer_untouched(kwargs):
    torch.manual_seed(0)
    net = UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch").train()
    x, y = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    m = torch.rand(2, 1, 16, 16)
    xf, yf, xn, yn = x * m, y * m, x * (1 - m), y * (1 - m)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    _bce(net(xn), yn).mean().backward()
    opt.step()
    v = {n: p.grad.clone() for n, p in net.named_parameters()}
    state_before = copy.deepcopy(net.state_dict())
    opt_before = copy.deepcopy(opt.state_dict())
    grads_before = [p.grad.clone() for p in net.parameters()]
    res = _call(net, xf, yf, xn, yn, OmegaMetaStep(**kwargs), nonfuzzy_grad=v, fuzzy_mask=m, eta=1e-3)
    assert torch.isfinite(res.omega).all() and not torch.equal(res.omega, torch.ones_like(res.omega))
    after = net.state_dict()
    changed = [k for k in after if not torch.equal(after[k], state_before[k])]
    # only the real fuzzy forward inside _call may touch the BatchNorm statistics, once
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    tracked = [k for k in changed if k.endswith("num_batches_tracked")]
    assert all(int(after[k]) == int(state_before[k]) + 1 for k in tracked)
    for k, state in opt.state_dict()["state"].items():
        for name, t in state.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(opt_before["state"][k][name]))
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads_before))
    assert all(torch.equal(v[n], p.grad) for n, p in net.named_parameters())  # the given v is not modified
