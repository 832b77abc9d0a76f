"""DALEPseudoLabelTrainer: the teacher's pseudo-labels through the fuzzy partition and DALE's two steps."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.engines.utils import IterationEvents
from monai.networks.nets import UNet

from dale_monai.engines import DALEKeys, DALEPseudoLabelTrainer
from dale_monai.handlers import LastCheckpoint
from dale_monai.losses import DALELoss
from dale_monai.meta import OmegaMetaStep, network_closures, virtual_norm_mode
from dale_monai.partition import fuzzy_masks_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch").to(dtype)


def _batches(dtype=torch.float32, size=16):
    g = torch.Generator().manual_seed(0)
    labeled = [{"image": torch.rand(2, 1, size, size, generator=g).to(dtype),
                "label": (torch.rand(2, 1, size, size, generator=g) > 0.5).to(dtype)}]
    unlabeled = [{"image": torch.rand(3, 1, size, size, generator=g).to(dtype)}]
    return labeled, unlabeled


def _by_hand(net, teacher, x, y, xu, w, lr, patch_size, omega_fn=None, mask_inputs=False):
    """One iteration written out: the reference the trainer must match."""
    loss = DALELoss(dice_weight=1.0)
    with torch.no_grad(), virtual_norm_mode(teacher):
        pseudo = (teacher.train()(xu) > 0).to(xu.dtype)
    mask_n, mask_f = fuzzy_masks_batch(xu, pseudo, patch_size=patch_size)
    x_n, x_f = (xu * mask_n, xu * mask_f) if mask_inputs else (xu, xu)
    opt = torch.optim.SGD(net.parameters(), lr=lr)

    def objective(pred):
        return loss(pred[:2], y) + w * loss(pred[2:], pseudo, weight=mask_n.to(xu.dtype))

    opt.zero_grad()
    objective(net.train()(torch.cat([x, x_n]))).backward()
    opt.step()
    opt.zero_grad()
    with virtual_norm_mode(net):
        pred_f = net(x_f)
    omega = torch.ones_like(mask_f) if omega_fn is None else omega_fn(net, pred_f, x_f, pseudo, torch.cat([x, x_n]),
                                                                         objective, mask_f)
    (w * loss(pred_f, pseudo, weight=(omega * mask_f).to(xu.dtype))).backward()
    opt.step()
    return pseudo, mask_n, mask_f, omega


@pytest.mark.parametrize("mask_inputs", [False, True])
def test_one_iteration_without_omega_matches_the_steps_by_hand(mask_inputs):
    labeled, unlabeled = _batches()
    net = _net()
    ref = copy.deepcopy(net)
    trainer = DALEPseudoLabelTrainer("cpu", 1, labeled, [net], [torch.optim.SGD(net.parameters(), lr=0.05)],
                                     DALELoss(dice_weight=1.0), unlabeled_data_loader=unlabeled, omega_step=None,
                                     patch_size=4, unsup_weight=0.5, rampup_length=0, mask_inputs=mask_inputs)
    seen = []
    for e in IterationEvents:
        trainer.add_event_handler(e, lambda _, e=e: seen.append(e.name))
    trainer.run()
    assert seen == ["FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"]
    teacher = copy.deepcopy(ref)  # the teacher starts as a copy of the student
    _, _, mask_f, _ = _by_hand(ref, teacher, labeled[0]["image"], labeled[0]["label"], unlabeled[0]["image"], 0.5,
                               0.05, 4, mask_inputs=mask_inputs)
    for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    # after the first iteration (α = 0) the teacher is the student
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in trainer.teacher.state_dict().items())
    out = trainer.state.output[0]
    assert out[DALEKeys.FUZZY_FRACTION] == pytest.approx(float(mask_f.mean()))
    assert out[DALEKeys.OMEGA_MEAN] == 1.0 and {"loss_sup", "loss_unsup", DALEKeys.LOSS_N, DALEKeys.LOSS_F} <= set(out)


def test_omega_is_the_meta_step_on_the_fuzzy_pseudo_labels_against_the_nonfuzzy_objective():
    """float64, the exact double-backward meta step by hand against the trainer's jvp one: ω and the weights."""
    dtype = torch.float64
    labeled, unlabeled = _batches(dtype)
    net = _net(dtype=dtype)
    ref = copy.deepcopy(net)
    step = OmegaMetaStep(method="jvp", reduction="sum")
    trainer = DALEPseudoLabelTrainer("cpu", 1, labeled, [net], [torch.optim.SGD(net.parameters(), lr=0.05)],
                                     DALELoss(dice_weight=1.0), unlabeled_data_loader=unlabeled, omega_step=step,
                                     patch_size=4, unsup_weight=0.5, rampup_length=0)
    captured = []
    original = trainer.confidence
    trainer.confidence = lambda *a, **k: (lambda o: (captured.append(o), o)[1])(original(*a, **k))
    trainer.run()
    loss = DALELoss(dice_weight=1.0)

    def omega_fn(model, pred_f, x_f, pseudo, nonfuzzy_inputs, objective, mask_f):
        fuzzy_map, nonfuzzy = network_closures(model, x_f, lambda o: loss.pixel_map(o, pseudo), nonfuzzy_inputs,
                                               objective)
        with virtual_norm_mode(model):
            return OmegaMetaStep(method="double_backward", reduction="sum")(
                loss.pixel_map(pred_f, pseudo), dict(model.named_parameters()), fuzzy_map, nonfuzzy, 0.05,
                fuzzy_mask=mask_f).omega

    _, _, _, omega = _by_hand(ref, copy.deepcopy(ref), labeled[0]["image"], labeled[0]["label"],
                              unlabeled[0]["image"], 0.5, 0.05, 4, omega_fn=omega_fn)
    torch.testing.assert_close(captured[0], omega.detach(), rtol=1e-9, atol=1e-9)
    assert (omega < 1).any() and (omega > 1).any()  # the sum reduction re-weights: a test that can fail
    for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=k)


@pytest.mark.parametrize(("kw", "match"), [
    (dict(tau=1.5), "tau"), (dict(patch_size=0), "patch"), (dict(edge="canny"), "edge"),
    (dict(inner_lr=0.0), "inner_lr"), (dict(mask_inputs="yes"), "mask_inputs"), (dict(ema_decay=-0.1), "ema_decay"),
])
def test_bad_options_are_named(kw, match):
    labeled, unlabeled = _batches()
    net = _net()
    with pytest.raises(ValueError, match=match):
        DALEPseudoLabelTrainer("cpu", 1, labeled, [net], [torch.optim.SGD(net.parameters(), lr=0.1)], DALELoss(),
                               unlabeled_data_loader=unlabeled, **kw)


def test_checkpoint_must_hold_the_teacher_and_resume_is_bit_identical(tmp_path):
    labeled = [{"image": torch.rand(1, 16, 16), "label": (torch.rand(1, 16, 16) > 0.5).float()} for _ in range(4)]
    unlabeled = [{"image": torch.rand(1, 16, 16)} for _ in range(6)]
    loader = torch.utils.data.DataLoader
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match=r"would not save \['teacher'\]"):
        DALEPseudoLabelTrainer("cpu", 1, labeled, [net], [opt], DALELoss(), unlabeled_data_loader=unlabeled,
                               train_handlers=[LastCheckpoint(tmp_path, {"model": net, "optimizer": opt})])

    def make(epochs, resume, folder):
        net = _net()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        trainer = DALEPseudoLabelTrainer("cpu", epochs, loader(labeled, batch_size=2, shuffle=True), [net], [opt],
                                         DALELoss(dice_weight=1.0),
                                         unlabeled_data_loader=loader(unlabeled, batch_size=2, shuffle=True),
                                         omega_step=OmegaMetaStep(reduction="sum"), patch_size=4, epoch_length=3,
                                         rampup_length=5)
        LastCheckpoint(folder, trainer.checkpoint_objects(), resume=resume).attach(trainer)
        torch.manual_seed(3)
        return trainer

    straight = make(2, False, tmp_path / "a")
    straight.run()
    make(1, False, tmp_path / "b").run()
    resumed = make(2, True, tmp_path / "b")
    resumed.run()
    for a, b in ((straight.networks[0], resumed.networks[0]), (straight.teacher, resumed.teacher)):
        assert all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), b.state_dict().values()))
