"""Meta re-weighting: MW-Net's weight-network gradient and L2RW's weights against double-backward references in
float64, and MetaReweightTrainer as a MONAI trainer."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.networks.nets import SegResNet, UNet
from torch.func import functional_call

from dale_monai.engines import MetaReweightKeys, MetaReweightTrainer
from dale_monai.handlers import LastCheckpoint
from dale_monai.losses import DALELoss
from dale_monai.meta import network_closures, virtual_norm_mode
from dale_monai.mwnet import WeightNet, l2rw_weights, log_weight, weight_net_gradient

pytestmark = pytest.mark.usefixtures("one_thread")


def _networks():
    yield "unet-batchnorm-2d", lambda: UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch"), (2, 1, 12, 12)
    yield "unet-instancenorm-3d", lambda: UNet(3, 1, 1, (4, 8), (2,), num_res_units=1, norm="instance"), (2, 1, 6, 6, 6)
    yield "segresnet-groupnorm-2d-multiclass", lambda: SegResNet(2, init_filters=8, in_channels=1, out_channels=3,
                                                                 blocks_down=(1, 1), blocks_up=(1,)), (2, 1, 8, 8)


def _setup(make, shape, seed=0):
    torch.manual_seed(seed)
    net = make().double().train()
    out_channels = net(torch.zeros(shape, dtype=torch.float64)).shape[1]
    x, xm = torch.randn(*shape, dtype=torch.float64), torch.randn(*shape, dtype=torch.float64)
    if out_channels == 1:
        y, ym = ((torch.rand(*shape) > 0.5).double() for _ in range(2))
    else:
        y, ym = (torch.randint(0, out_channels, shape).double() for _ in range(2))
    return net, x, y, xm, ym


def _closures(net, loss, x, y, xm, ym):
    return network_closures(net, x, lambda o: loss.pixel_map(o, y), xm, lambda o: loss(o, ym))


def _reference_mwnet(net, vnet, loss, x, y, xm, ym, eta):
    """MW-Net as its code does it: a differentiable virtual step, then ∂L_meta/∂φ by double backward."""
    params = dict(net.named_parameters())
    names = list(params)
    with virtual_norm_mode(net):
        ell = loss.pixel_map(functional_call(net, params, (x,)), y)
        w = vnet(ell.detach())
        grads = torch.autograd.grad((w * ell).mean(), [params[n] for n in names], create_graph=True)
        virtual = {n: params[n] - eta * g for n, g in zip(names, grads)}
        meta = loss(functional_call(net, virtual, (xm,)), ym)
    return torch.autograd.grad(meta, list(vnet.parameters()))


@pytest.mark.parametrize(("name", "make", "shape"), list(_networks()))
@pytest.mark.parametrize("method", ["jvp", "double_backward"])
def test_weight_net_gradient_matches_double_backward_float64(name, make, shape, method):
    net, x, y, xm, ym = _setup(make, shape)
    torch.manual_seed(1)
    vnet = WeightNet(16).double()
    loss = DALELoss(dice_weight=1.0)
    eta = 0.3
    reference = _reference_mwnet(net, vnet, loss, x, y, xm, ym, eta)
    pixel_fn, meta_fn = _closures(net, loss, x, y, xm, ym)
    with virtual_norm_mode(net):
        ell = loss.pixel_map(net(x), y)
        grads, weight = weight_net_gradient(ell, vnet, dict(net.named_parameters()), pixel_fn, meta_fn, eta, method)
    torch.testing.assert_close(weight, vnet(ell.detach()).detach())
    assert sum(float(g.abs().sum()) for g in reference) > 0
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def test_weight_net_gradient_has_no_side_effects():
    net, x, y, xm, ym = _setup(lambda: UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch"), (2, 1, 12, 12))
    vnet = WeightNet(8).double()
    loss = DALELoss()
    before = copy.deepcopy(net.state_dict()), copy.deepcopy(vnet.state_dict())
    ell = loss.pixel_map(net(x), y)  # the real forward: BatchNorm statistics move once, here
    stats = copy.deepcopy(net.state_dict())
    pixel_fn, meta_fn = _closures(net, loss, x, y, xm, ym)
    with virtual_norm_mode(net):
        weight_net_gradient(ell, vnet, dict(net.named_parameters()), pixel_fn, meta_fn, 0.1)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stats.items())  # virtual passes wrote nothing
    assert any(not torch.equal(v, stats[k]) for k, v in before[0].items())
    assert all(torch.equal(v, vnet.state_dict()[k]) for k, v in before[1].items())
    assert all(p.grad is None for p in list(net.parameters()) + list(vnet.parameters()))
    ell.sum().backward()  # the graph of the real forward is still there for the real step


def test_weight_net_maps_each_loss_to_a_weight_in_0_1():
    torch.manual_seed(0)
    vnet = WeightNet()
    assert vnet.hidden.out_features == 100  # MW-Net's VNet(1, 100, 1)
    loss = torch.rand(2, 1, 5, 7) * 5
    w = vnet(loss)
    assert w.shape == loss.shape and bool(((w > 0) & (w < 1)).all())
    torch.testing.assert_close(vnet(loss[:1]), w[:1])  # per pixel: independent of the other pixels
    torch.testing.assert_close(log_weight(vnet, loss), torch.log(w))
    plain = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Sigmoid())
    torch.testing.assert_close(log_weight(plain, loss.reshape(-1, 1)), torch.log(plain(loss.reshape(-1, 1))))
    with pytest.raises(ValueError, match="hidden_features"):
        WeightNet(0)


def _reference_l2rw(net, loss, x, y, xm, ym, eta=0.1):
    """Ren et al.'s algorithm: ε = 0, virtual step on Σ ε ℓ, ∂L_meta/∂ε by double backward, max(−g, 0) normalised."""
    params = dict(net.named_parameters())
    names = list(params)
    with virtual_norm_mode(net):
        ell = loss.pixel_map(functional_call(net, params, (x,)), y)
        eps = torch.zeros_like(ell, requires_grad=True)
        grads = torch.autograd.grad((eps * ell).sum(), [params[n] for n in names], create_graph=True)
        virtual = {n: params[n] - eta * g for n, g in zip(names, grads)}
        meta = loss(functional_call(net, virtual, (xm,)), ym)
        (g,) = torch.autograd.grad(meta, eps)
    w = (-g).clamp_min(0)
    return w / w.sum()


@pytest.mark.parametrize(("name", "make", "shape"), list(_networks()))
def test_l2rw_weights_match_the_reference_float64(name, make, shape):
    net, x, y, xm, ym = _setup(make, shape)
    loss = DALELoss(dice_weight=1.0)
    reference = _reference_l2rw(net, loss, x, y, xm, ym)
    pixel_fn, meta_fn = _closures(net, loss, x, y, xm, ym)
    with virtual_norm_mode(net):
        w = l2rw_weights(dict(net.named_parameters()), pixel_fn, meta_fn)
    assert 0 < float((w > 0).float().mean()) < 1  # some pixels dropped, some kept
    torch.testing.assert_close(w, reference, rtol=1e-9, atol=1e-14)
    assert float(w.sum()) == pytest.approx(1.0)


def test_l2rw_gives_zero_weights_when_nothing_helps():
    # ℓ_k = (a·x_k)², a > 0: every pixel's gradient is >= 0, while the meta loss −Σ(a·x)² wants a larger: no pixel's
    # step lowers it, so every weight is 0 (not 0/0)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    params = {"a": torch.tensor(0.7, dtype=torch.float64, requires_grad=True)}
    w = l2rw_weights(params, lambda p: (p["a"] * x) ** 2, lambda p: -((p["a"] * x) ** 2).sum())
    assert torch.equal(w, torch.zeros_like(x))
    w = l2rw_weights(params, lambda p: (p["a"] * x) ** 2, lambda p: ((p["a"] * x) ** 2).sum())
    torch.testing.assert_close(w, x**2 / (x**2).sum())  # and proportional to ⟨v, ∇ℓ_k⟩ otherwise


# --------------------------------------------------------------------------------------------- the trainer
def _data(n=3, b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(b, 1, size, size, generator=g),
             "label": (torch.rand(b, 1, size, size, generator=g) > 0.5).float()} for _ in range(n)]


def _trainer(epochs=1, rule="mwnet", data=None, meta=None, handlers=None, **kw):
    torch.manual_seed(0)
    net = UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch")
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    trainer = MetaReweightTrainer("cpu", epochs, data or _data(), net, opt, DALELoss(dice_weight=1.0),
                                  meta_data_loader=meta or _data(n=2, seed=9), rule=rule, train_handlers=handlers,
                                  **kw)
    return trainer, net


def test_is_a_supervised_trainer_firing_monai_events_once_per_iteration():
    trainer, _ = _trainer(data=_data(n=2))
    assert isinstance(trainer, SupervisedTrainer)
    seen = []
    for e in IterationEvents:
        trainer.add_event_handler(e, lambda _, e=e: seen.append(e.name))
    trainer.run()
    assert seen == ["FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"] * 2
    out = trainer.state.output[0]
    assert 0 < out[MetaReweightKeys.WEIGHT_MEAN] < 1 and out[MetaReweightKeys.WEIGHT_ZERO] == 0.0


def test_mwnet_iteration_updates_the_weight_net_then_steps_with_its_new_weights():
    data, meta = _data(n=1), _data(n=1, seed=9)
    trainer, net = _trainer(data=data, meta=meta)
    vnet = trainer.weight_net
    net0, vnet0 = copy.deepcopy(net), copy.deepcopy(vnet)
    seen = {}
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: seen.update(e.state.output))
    trainer.run()
    loss = DALELoss(dice_weight=1.0)
    x, y, xm, ym = data[0]["image"], data[0]["label"], meta[0]["image"], meta[0]["label"]
    # the meta step: Adam(1e-3, wd 1e-4) on the exact meta gradient at the network's learning rate
    grads = _reference_mwnet(net0, vnet0, loss, x, y, xm, ym, 0.05)
    adam = torch.optim.Adam(vnet0.parameters(), lr=1e-3, weight_decay=1e-4)
    for p, g in zip(vnet0.parameters(), grads):
        p.grad = g
    adam.step()
    for p, q in zip(vnet.parameters(), vnet0.parameters()):
        torch.testing.assert_close(p, q)
    # the real step: SGD on mean(V_new(ℓ) ⊙ ℓ) + Dice weighted by V_new(ℓ)
    pred = net0.train()(x)
    ell = loss.pixel_map(pred, y)
    w = vnet0(ell.detach()).detach()
    torch.testing.assert_close(seen[MetaReweightKeys.WEIGHT], w, rtol=1e-5, atol=1e-6)
    step = torch.autograd.grad(loss(pred, y, weight=w), list(net0.parameters()))
    for p, p0, g in zip(net.parameters(), net0.parameters(), step):
        torch.testing.assert_close(p.detach(), p0.detach() - 0.05 * g, rtol=1e-5, atol=1e-6)


def test_l2rw_weights_have_mean_one_and_drop_pixels():
    trainer, _ = _trainer(rule="l2rw")
    assert trainer.weight_net is None and set(trainer.checkpoint_objects()) == {"model", "optimizer"}
    means = []
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED,
                              lambda e: means.append((e.state.output[MetaReweightKeys.WEIGHT_MEAN],
                                                      e.state.output[MetaReweightKeys.WEIGHT_ZERO])))
    trainer.run()
    assert all(m == pytest.approx(1.0) and 0 < z < 1 for m, z in means)


def test_meta_loader_restarts_when_exhausted_and_every_epoch():
    meta = _data(n=2, seed=9)
    trainer, _ = _trainer(epochs=2, meta=meta, data=_data(n=3))
    seen = []
    orig = trainer.next_meta_batch
    trainer.next_meta_batch = lambda e: (lambda b: (seen.append(b[0][0, 0, 0, 0].item()), b)[1])(orig(e))
    trainer.run()
    first = [m["image"][0, 0, 0, 0].item() for m in meta]
    assert seen == [first[0], first[1], first[0]] * 2


def test_resume_is_bit_identical_with_a_shuffled_meta_loader(tmp_path):
    def make(epochs, resume, folder):
        data = torch.utils.data.DataLoader(
            [{"image": d["image"][i], "label": d["label"][i]} for d in _data(n=3) for i in range(2)],
            batch_size=2, shuffle=True)
        meta = torch.utils.data.DataLoader(
            [{"image": d["image"][i], "label": d["label"][i]} for d in _data(n=3, seed=9) for i in range(2)],
            batch_size=2, shuffle=True)
        torch.manual_seed(0)
        trainer, net = _trainer(epochs, data=data, meta=meta)
        LastCheckpoint(folder, trainer.checkpoint_objects(), resume=resume).attach(trainer)
        torch.manual_seed(5)
        return trainer, net

    straight, net_a = make(3, False, tmp_path / "a")
    straight.run()
    first, _ = make(1, False, tmp_path / "b")
    first.run()
    assert {"model", "optimizer", "weight_net", "meta_optimizer"} <= set(
        torch.load(tmp_path / "b" / "checkpoint_last.pt", weights_only=True))
    resumed, net_b = make(3, True, tmp_path / "b")
    resumed.run()
    for (k, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(straight.weight_net.parameters(), resumed.weight_net.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("kw", "match"), [
    (dict(rule="mentor"), "rule"), (dict(meta_method="finite_difference"), "meta_method"),
    (dict(inner_lr=0.0), "inner_lr"), (dict(clip_grad_norm=-1.0), "clip_grad_norm"),
])
def test_bad_options_are_rejected_at_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        _trainer(**kw)


def test_missing_meta_set_names_the_data_prep_options():
    net = UNet(2, 1, 1, (4, 8), (2,), num_res_units=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for meta in (None, []):
        with pytest.raises(ValueError, match=r"(?s)meta_data_loader.*--meta-count.*--n-meta.*--meta-fraction"):
            MetaReweightTrainer("cpu", 1, _data(), net, opt, DALELoss(), meta_data_loader=meta)


def test_meta_optimizer_and_checkpoint_must_cover_the_weight_net(tmp_path):
    vnet, other = WeightNet(4), WeightNet(4)
    with pytest.raises(ValueError, match="meta_optimizer must update"):
        _trainer(weight_net=vnet, meta_optimizer=torch.optim.Adam(other.parameters()))
    net = UNet(2, 1, 1, (4, 8), (2,), num_res_units=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    handler = LastCheckpoint(tmp_path, {"model": net, "optimizer": opt})
    with pytest.raises(ValueError, match=r"would not save \['weight_net', 'meta_optimizer'\]"):
        MetaReweightTrainer("cpu", 1, _data(), net, opt, DALELoss(), meta_data_loader=_data(), train_handlers=[handler])
