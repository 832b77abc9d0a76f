"""GapMatch (reconstructed): confidence masks, the strong view, the perturbation, and one iteration by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from dale_monai.engines import GapMatchKeys, GapMatchTrainer
from dale_monai.fixed_dynamic import cutmix, cutmix_masks
from dale_monai.gapmatch import confidence_mask, intensity_jitter, perturbation, strong_view
from dale_monai.losses import DALELoss
from dale_monai.meta import virtual_norm_mode

pytestmark = pytest.mark.usefixtures("one_thread")


def test_confidence_mask_binary_and_multiclass():
    binary = torch.logit(torch.tensor([[[[0.97, 0.5, 0.02, 0.94]]]]))
    assert torch.equal(confidence_mask(binary, 0.95), torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]]))
    multi = torch.log(torch.tensor([[[[0.96, 0.4]], [[0.02, 0.35]], [[0.02, 0.25]]]]))
    assert torch.equal(confidence_mask(multi, 0.95), torch.tensor([[[[1.0, 0.0]]]]))
    assert confidence_mask(multi, 0.0).all()
    with pytest.raises(ValueError, match="threshold"):
        confidence_mask(binary, 1.5)


def test_intensity_jitter_is_one_affine_map_per_image():
    x = torch.rand(4, 1, 8, 8)
    torch.manual_seed(0)
    y = intensity_jitter(x, 0.25)
    for b in range(4):  # y = a·x + c with one (a, c) per image, a ∈ [0.75, 1.25], c ∈ [−0.125, 0.125]
        a = (y[b, 0, 0, 1] - y[b, 0, 0, 0]) / (x[b, 0, 0, 1] - x[b, 0, 0, 0])
        c = y[b, 0, 0, 0] - a * x[b, 0, 0, 0]
        torch.testing.assert_close(y[b], a * x[b] + c, rtol=1e-4, atol=1e-5)
        assert 0.75 <= a <= 1.25 and -0.125 <= c <= 0.125
    assert torch.equal(intensity_jitter(x, 0.0), x)


def test_perturbation_has_norm_eps_and_is_none_without_gradient():
    grads = [torch.tensor([3.0, 0.0]), None, torch.tensor([[4.0]])]
    deltas = perturbation(grads, 0.5)
    assert deltas[1] is None
    torch.testing.assert_close(deltas[0], torch.tensor([0.3, 0.0]))
    torch.testing.assert_close(deltas[2], torch.tensor([[0.4]]))
    assert perturbation([torch.zeros(3)], 0.5) is None and perturbation(grads, 0.0) is None
    with pytest.raises(ValueError, match="eps"):
        perturbation(grads, -1.0)


def _net(seed=0):
    torch.manual_seed(seed)
    return UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch")


def _batches():
    g = torch.Generator().manual_seed(0)
    labeled = [{"image": torch.rand(2, 1, 16, 16, generator=g),
                "label": (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()}]
    unlabeled = [{"image": torch.rand(3, 1, 16, 16, generator=g)}]
    return labeled, unlabeled


@pytest.mark.parametrize("eps", [0.05, 0.0])
def test_one_iteration_matches_the_rule_by_hand(eps):
    labeled, unlabeled = _batches()
    net = _net()
    ref = copy.deepcopy(net)
    # p_cutoff 0.5: every pixel is confident for a binary network, so the loss is not trivially zero
    trainer = GapMatchTrainer("cpu", 1, labeled, [net], [torch.optim.SGD(net.parameters(), lr=0.1)],
                              DALELoss(dice_weight=1.0), unlabeled_data_loader=unlabeled, p_cutoff=0.5, eps=eps,
                              alpha=0.7, unsup_weight=2.0, rampup_length=0)
    torch.manual_seed(4)
    trainer.run()
    x, y, xu = labeled[0]["image"], labeled[0]["label"], unlabeled[0]["image"]
    torch.manual_seed(4)
    masks = cutmix_masks(3, (16, 16))
    strong = strong_view(xu, masks, 0.25)
    both = torch.cat([x, xu, strong])
    out = ref.train()(both)
    pseudo = cutmix((out[2:5].detach() > 0).float(), masks)
    loss = DALELoss(dice_weight=1.0)
    params = list(ref.parameters())
    g_l = torch.autograd.grad(loss(out[:2], y), params, retain_graph=True)
    lu = F.binary_cross_entropy_with_logits(out[5:], pseudo)
    g_1 = torch.autograd.grad(lu, params)
    if eps > 0:
        norm = torch.sqrt(sum((g ** 2).sum() for g in g_1))
        star = copy.deepcopy(ref)
        with torch.no_grad():
            for p, g in zip(star.parameters(), g_1):
                p.add_(eps * g / norm)
        with virtual_norm_mode(star):
            out_p = star(both)
        g_2 = torch.autograd.grad(F.binary_cross_entropy_with_logits(out_p[5:], pseudo), list(star.parameters()))
    else:
        g_2 = g_1
    for p, p0, gl, g1, g2 in zip(net.parameters(), params, g_l, g_1, g_2):
        torch.testing.assert_close(p.detach(), p0.detach() - 0.1 * (gl + 2.0 * (g1 + 0.7 * g2)), rtol=1e-5,
                                   atol=1e-6)
    # the perturbation was undone: the running statistics moved once, as one forward in train mode moves them
    ref_bn = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    net_bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for a, b in zip(ref_bn, net_bn):
        torch.testing.assert_close(a.running_mean, b.running_mean)
    assert trainer.state.output[0][GapMatchKeys.CONFIDENT] == 1.0


def test_no_confident_pixel_trains_on_the_labels_only():
    labeled, unlabeled = _batches()
    net = _net()
    ref = copy.deepcopy(net)
    trainer = GapMatchTrainer("cpu", 1, labeled, [net], [torch.optim.SGD(net.parameters(), lr=0.1)],
                              DALELoss(dice_weight=1.0), unlabeled_data_loader=unlabeled, p_cutoff=1.0)
    torch.manual_seed(4)
    trainer.run()
    assert trainer.state.output[0][GapMatchKeys.CONFIDENT] == 0.0
    x, y, xu = labeled[0]["image"], labeled[0]["label"], unlabeled[0]["image"]
    torch.manual_seed(4)
    strong = strong_view(xu, cutmix_masks(3, (16, 16)), 0.25)
    out = ref.train()(torch.cat([x, xu, strong]))  # the batch statistics of the trainer's forward
    g_l = torch.autograd.grad(DALELoss(dice_weight=1.0)(out[:2], y), list(ref.parameters()))
    for p, p0, g in zip(net.parameters(), ref.parameters(), g_l):
        torch.testing.assert_close(p.detach(), p0.detach() - 0.1 * g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kw", "match"), [
    (dict(p_cutoff=1.5), "p_cutoff"), (dict(eps=-0.1), "eps"), (dict(alpha=float("nan")), "alpha"),
    (dict(jitter=2.0), "jitter"), (dict(amp=True), "amp=True is not supported"),
])
def test_bad_options_are_named(kw, match):
    labeled, unlabeled = _batches()
    net = _net()
    with pytest.raises(ValueError, match=match):
        GapMatchTrainer("cpu", 1, labeled, [net], [torch.optim.SGD(net.parameters(), lr=0.1)], DALELoss(),
                        unlabeled_data_loader=unlabeled, **kw)
