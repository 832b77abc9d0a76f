from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.networks.nets import (
    UNETR,
    AttentionUnet,
    BasicUNet,
    BasicUNetPlusPlus,
    DynUNet,
    SegResNet,
    SwinUNETR,
    UNet,
)
from monai.utils import CommonKeys as Keys
from torch import nn

from dale_monai.engines.dale_events import DALEEvents, DALEKeys
from dale_monai.handlers.wasserstein import WassersteinAlignment
from dale_monai.feature_layers import default_feature_layer, resolve_layer, unwrap_model
from dale_monai.wasserstein import class_conditional_w2, class_indices, resample_labels

# ---------------------------------------------------------------- networks

FEAT = 4
NETWORKS = {
    # name: (constructor, expected feature shape for a (2, 1, 32, 32) input, (2, 1, 64, 64) for SwinUNETR)
    "UNet": (lambda: UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=0), (2, 8, 16, 16)),
    "UNet-res": (lambda: UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=2), (2, 8, 16, 16)),
    "UNet-2level": (lambda: UNet(2, 1, 2, channels=(4, 8), strides=(2,)), (2, 12, 16, 16)),
    "UNet-stride1": (lambda: UNet(2, 1, 2, channels=(4, 8, 16), strides=(1, 2)), (2, 8, 32, 32)),
    "AttentionUnet": (lambda: AttentionUnet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2)), (2, 4, 32, 32)),
    "BasicUNet": (lambda: BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, FEAT)), (2, FEAT, 32, 32)),
    "BasicUNetPlusPlus": (lambda: BasicUNetPlusPlus(2, 1, 2, features=(4, 4, 8, 8, 16, FEAT)), (2, FEAT, 32, 32)),
    "BasicUNetPlusPlus-ds": (
        lambda: BasicUNetPlusPlus(2, 1, 2, features=(4, 4, 8, 8, 16, FEAT), deep_supervision=True),
        (2, FEAT, 32, 32),
    ),
    # SwinUNETR downsamples 32×: 64² is its smallest 2D input
    "SwinUNETR": (lambda: SwinUNETR(in_channels=1, out_channels=2, spatial_dims=2, feature_size=12), (2, 12, 64, 64)),
    "UNETR": (
        lambda: UNETR(1, 2, img_size=32, spatial_dims=2, feature_size=FEAT, hidden_size=24, mlp_dim=24, num_heads=2),
        (2, FEAT, 32, 32),
    ),
    "SegResNet": (lambda: SegResNet(2, init_filters=8, in_channels=1, out_channels=2), (2, 8, 32, 32)),
    "DynUNet": (
        lambda: DynUNet(
            2, 1, 2, kernel_size=[3] * 3, strides=[1, 2, 2], upsample_kernel_size=[2] * 2, filters=[4, 8, 8]
        ),
        (2, 4, 32, 32),
    ),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_default_feature_layer_captures_pre_head_features(name):
    torch.manual_seed(0)
    ctor, shape = NETWORKS[name]
    net = ctor().eval()
    head = default_feature_layer(net)
    captured = []
    handle = head.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        out = net(torch.randn(2, 1, *shape[2:]) if name == "SwinUNETR" else torch.randn(2, 1, 32, 32))
    handle.remove()
    out = out[-1] if isinstance(out, (list, tuple)) else out  # BasicUNetPlusPlus returns a list
    assert len(captured) == 1 and tuple(captured[0].shape) == shape
    # the hooked module is the head: applied to the captured features it gives the logits
    with torch.no_grad():
        torch.testing.assert_close(head(captured[0]), out)


def test_default_feature_layer_errors():
    with pytest.raises(ValueError, match="feature_layer="):
        default_feature_layer(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 1)))
    with pytest.raises(ValueError, match="use_conv_final=False"):
        default_feature_layer(SegResNet(2, init_filters=8, in_channels=1, out_channels=2, use_conv_final=False))


def test_resolve_layer():
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,))
    assert resolve_layer(net, "model.2") is net.model[2]
    assert resolve_layer(nn.DataParallel(net), "module.model.2") is net.model[2]
    with pytest.raises(ValueError, match="close matches.*model.2"):
        resolve_layer(net, "model.3")
    with pytest.raises(ValueError, match="non-empty"):
        resolve_layer(net, "")


def test_unwrap_model_wrappers(tmp_path):
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,))
    assert unwrap_model(net) is net
    assert unwrap_model(nn.DataParallel(net)) is net  # no GPU: DataParallel just holds the module
    assert unwrap_model(torch.compile(nn.DataParallel(net))) is net  # compiles lazily, nothing runs
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(net)
        assert unwrap_model(ddp) is net
        assert default_feature_layer(ddp) is net.model[2]
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- handler

ALPHA = 0.05
SEED = 7


def make_batch(n_classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 1, 32, 32, generator=gen)
    idx = (x * n_classes).long().clamp_max(n_classes - 1)
    y = idx.float() if n_classes == 2 else F.one_hot(idx[:, 0], n_classes).movedim(-1, 1).float()
    m = torch.rand(2, 1, 32, 32, generator=gen)
    mask_n = torch.where(m < 0.6, torch.ones_like(m), 1 - m)
    mask_f = torch.where(m > 0.6, torch.ones_like(m), m)
    omega = 1 + 0.05 * torch.randn(2, 1, 32, 32, generator=gen)
    return x, y, mask_n, mask_f, omega


def seg_loss(logits, y):
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return F.cross_entropy(logits, y.argmax(1), reduction="none").unsqueeze(1)


def make_engine(net, handler, probes, omega_override=None, virtual=True, fuzzy_terms=True):
    """A stand-in for the DALE trainer: real forwards, DALEEvents fired in the documented order."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    log = []

    def step(engine, batch):
        x, y, mask_n, mask_f, omega = batch
        out = {Keys.LABEL: y, DALEKeys.MASK_N: mask_n, DALEKeys.MASK_F: mask_f}
        if fuzzy_terms:
            out[DALEKeys.FUZZY_TERMS] = []
        engine.state.output = out
        opt.zero_grad()
        loss_n = (mask_n * seg_loss(net(x * mask_n), y)).mean()
        engine.fire_event(DALEEvents.NONFUZZY_FORWARD_COMPLETED)
        loss_n.backward()
        opt.step()
        engine.fire_event(DALEEvents.NONFUZZY_COMPLETED)
        opt.zero_grad()
        ell = seg_loss(net(x * mask_f), y)
        engine.fire_event(DALEEvents.FUZZY_FORWARD_COMPLETED)
        if virtual:  # the ω meta step's virtual passes must not be captured
            net(torch.rand_like(x))
            with torch.no_grad():
                net(torch.rand_like(x))
        out[DALEKeys.OMEGA] = omega if omega_override is None else omega_override
        engine.fire_event(DALEEvents.OMEGA_COMPLETED)
        terms = out[DALEKeys.FUZZY_TERMS]
        record = {"terms": list(terms), "loss_w": out.get(DALEKeys.LOSS_W)}
        record["hooks"] = len(handler.layer._forward_pre_hooks)
        for name, p in probes.items():
            grads = torch.autograd.grad(terms[0], p, retain_graph=True, allow_unused=True) if terms else (None,)
            record[name] = grads[0]
        loss_f = (out[DALEKeys.OMEGA] * mask_f * (ell + sum(terms))).mean()
        loss_f.backward()
        opt.step()
        engine.fire_event(DALEEvents.FUZZY_COMPLETED)
        log.append(record)
        return out

    engine = Engine(step)
    engine.register_events(*DALEEvents)
    engine.network = net
    handler.attach(engine)
    return engine, log


@pytest.mark.parametrize("normalize", ["channels", "none"])
def test_handler_multiclass_value_gradient_and_virtual_passes_ignored(normalize):
    torch.manual_seed(0)
    net = UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    head = net.model[2]
    first, head_weight = net.model[0].conv.unit0.conv.weight, head[1].conv.unit0.conv.weight
    captures = []
    head.register_forward_pre_hook(lambda m, args: captures.append(args[0]))
    handler = WassersteinAlignment(alpha=ALPHA, eps_max=0.05, seed=SEED, normalize=normalize)
    engine, log = make_engine(net, handler, {"first": first, "head": head_weight})
    batch = make_batch(3)
    engine.run([batch], max_epochs=1)

    rec = log[0]
    assert len(rec["terms"]) == 1 and rec["hooks"] >= 1
    loss_w = rec["loss_w"]
    assert torch.isfinite(loss_w) and loss_w.item() > 0 and not loss_w.requires_grad
    torch.testing.assert_close(rec["terms"][0].detach(), ALPHA * loss_w)
    # the term trains the layers before the head, not the head
    assert rec["first"] is not None and rec["first"].abs().sum() > 0
    assert rec["head"] is None or (rec["head"] == 0).all()

    # reproduce it from the real forwards only (captures 0 and 1; 2 and 3 are the virtual passes)
    assert len(captures) == 4
    x, y, mask_n, mask_f, omega = batch
    size = captures[1].shape[2:]
    label = class_indices(resample_labels(y, size))
    expected = class_conditional_w2(
        captures[0].detach(),
        captures[1].detach(),
        label,
        label,
        weight_n=resample_labels(mask_n, size) > 0.5,
        keep_f=(resample_labels(omega, size) > 1) & (resample_labels(mask_f, size) > 0),
        eps_max=0.05,
        generator=torch.Generator().manual_seed(SEED),
    )
    if normalize == "channels":
        expected = expected / captures[1].shape[1]
    assert loss_w.item() == pytest.approx(expected.item(), rel=1e-5)
    # memory and hook released
    assert handler.feat_n is None and handler.feat_f is None
    assert len(head._forward_pre_hooks) == 1  # only the test's own hook is left


def test_handler_binary_dataparallel_string_layer():
    torch.manual_seed(1)
    net = UNet(2, 1, 1, channels=(4, 8), strides=(2,), num_res_units=0)
    handler = WassersteinAlignment(alpha=ALPHA, feature_layer="module.model.2")
    engine, log = make_engine(nn.DataParallel(net), handler, {"first": net.model[0].conv.weight})
    engine.run([make_batch(2, seed=1), make_batch(2, seed=2)], max_epochs=2)
    assert handler.layer is net.model[2] and len(log) == 4
    for rec in log:
        assert torch.isfinite(rec["loss_w"]) and rec["loss_w"].item() > 0
        assert rec["first"].abs().sum() > 0
    assert len(net.model[2]._forward_pre_hooks) == 0


def test_handler_zero_when_no_clean_fuzzy_pixel():
    torch.manual_seed(2)
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,))
    handler = WassersteinAlignment(alpha=ALPHA)
    probes = {"first": net.model[0].conv.weight}
    engine, log = make_engine(net, handler, probes, omega_override=torch.ones(2, 1, 32, 32))
    engine.run([make_batch(2)], max_epochs=1)
    rec = log[0]
    assert rec["loss_w"].item() == 0.0 and rec["terms"][0].item() == 0.0
    assert rec["first"] is None or (rec["first"] == 0).all()


def test_handler_attach_and_runtime_errors():
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,))
    plain = Engine(lambda e, b: None)
    plain.network = net
    handler = WassersteinAlignment()
    with pytest.raises(ValueError, match="DALEEvents"):
        handler.attach(plain)
    assert not plain.has_event_handler(handler._install)  # nothing left half-attached

    with pytest.raises(RuntimeError, match=DALEKeys.FUZZY_TERMS):
        make_engine(net, WassersteinAlignment(), {}, fuzzy_terms=False)[0].run([make_batch(2)], max_epochs=1)

    with pytest.raises(ValueError, match="not a module of UNet"):
        make_engine(net, WassersteinAlignment(feature_layer=nn.Conv2d(2, 2, 1)), {})[0].run([make_batch(2)])

    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = UNet(2, 1, 2, channels=(4, 8), strides=(2,))
            self.unused = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.net(x)

    with pytest.raises(RuntimeError, match="no features were captured"):
        make_engine(WithUnused(), WassersteinAlignment(feature_layer="unused"), {})[0].run([make_batch(2)])

    class PatchWise(nn.Module):  # a sliding-window-like forward: the head runs once per patch
        def __init__(self):
            super().__init__()
            self.net = UNet(2, 1, 2, channels=(4, 8), strides=(2,))

        def forward(self, x):
            return torch.cat([self.net(x[..., :16]), self.net(x[..., 16:])], dim=-1)

    with pytest.raises(RuntimeError, match="ran 2 times in the non-fuzzy forward"):
        make_engine(PatchWise(), WassersteinAlignment(feature_layer="net.model.2"), {})[0].run([make_batch(2)])

    with pytest.raises(ValueError, match="alpha"):
        WassersteinAlignment(alpha=-1)
    with pytest.raises(ValueError, match="normalize"):
        WassersteinAlignment(normalize="batch")
    with pytest.raises(TypeError, match="feature_layer"):
        WassersteinAlignment(feature_layer=3)
