"""Semi-supervised trainers: the maths of dale_monai.semisup, the two-loader base, mean teacher, cross pseudo
supervision; exact resume with two shuffled loaders; the missing unlabelled set."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.networks.nets import UNet
from torch.utils.data import DataLoader

from dale_monai.engines import (
    CrossPseudoSupervisionTrainer,
    MeanTeacherTrainer,
    PairedBatches,
    SemiSupervisedKeys,
    SemiSupervisedTrainer,
)
from dale_monai.handlers import LastCheckpoint
from dale_monai.losses import DALELoss
from dale_monai.semisup import (
    consistency_mse,
    ema_decay,
    ema_teacher,
    ema_update_,
    hard_labels,
    input_noise,
    probabilities,
    sigmoid_rampup,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------- maths
def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(250, 100) == 1.0
    assert sigmoid_rampup(-3, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(7, 0) == 1.0
    with pytest.raises(ValueError, match="length"):
        sigmoid_rampup(1, -1)


def test_probabilities_and_hard_labels_binary_and_multiclass():
    binary = torch.tensor([[[[-2.0, 0.5], [0.0, 3.0]]]])
    torch.testing.assert_close(probabilities(binary), torch.sigmoid(binary))
    assert torch.equal(hard_labels(binary), torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]]))
    assert torch.equal(hard_labels(torch.sigmoid(binary), from_probabilities=True), hard_labels(binary))
    multi = torch.zeros(1, 3, 1, 3)
    multi[0, 0, 0, 0], multi[0, 2, 0, 1], multi[0, 1, 0, 2] = 5.0, 2.0, 1.0
    assert torch.equal(hard_labels(multi), torch.tensor([[[[0.0, 2.0, 1.0]]]]))
    torch.testing.assert_close(probabilities(multi).sum(1), torch.ones(1, 1, 3))


def test_consistency_mse_is_the_mean_squared_probability_gap():
    s = torch.tensor([[[[0.0, 2.0]]]], requires_grad=True)
    t = torch.tensor([[[[1.0, -1.0]]]], requires_grad=True)
    expected = ((torch.sigmoid(s.detach()) - torch.sigmoid(t.detach())) ** 2).mean()
    value = consistency_mse(s, t)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert t.grad is None and s.grad is not None  # the teacher side is a target
    with pytest.raises(ValueError, match="one shape"):
        consistency_mse(s.detach(), t.detach()[..., :1])


def test_input_noise_is_clamped_and_seeded():
    x = torch.zeros(1000)
    torch.manual_seed(3)
    a = input_noise(x, 0.1, 0.2)
    torch.manual_seed(3)
    assert torch.equal(a, input_noise(x, 0.1, 0.2))
    assert a.abs().max() <= 0.2 and 0.07 < a.std() < 0.11
    assert torch.equal(input_noise(x, 0.0, 0.2), x)


def _bn_net(seed=0):
    torch.manual_seed(seed)
    return UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch")


def test_ema_update_follows_the_formula_for_parameters_and_buffers():
    student, teacher = _bn_net(0), ema_teacher(_bn_net(1))
    assert all(not p.requires_grad for p in teacher.parameters())
    student.train()(torch.randn(2, 1, 8, 8))  # moves the student's BatchNorm statistics
    t0, s0 = copy.deepcopy(teacher.state_dict()), copy.deepcopy(student.state_dict())
    # at step 9 the decay is min(1 − 1/10, 0.99) = 0.9
    assert ema_decay(0.99, 9) == pytest.approx(0.9) and ema_decay(0.99, 1000) == 0.99 and ema_decay(0.5, 9) == 0.5
    alpha = ema_update_(teacher, student, 0.99, 9)
    assert alpha == pytest.approx(0.9)
    for k, v in teacher.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * t0[k] + 0.1 * s0[k], rtol=0, atol=1e-6)
        else:  # num_batches_tracked is copied
            assert torch.equal(v, s0[k]), k
    # step 0: the teacher becomes the student
    ema_update_(teacher, student, 0.99, 0)
    assert all(torch.equal(v, s0[k]) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="decay"):
        ema_update_(teacher, student, 1.5, 0)
    with pytest.raises(ValueError, match="same architecture"):
        ema_update_(teacher, UNet(2, 1, 1, (4, 8, 16), (2, 2)), 0.9, 3)


# --------------------------------------------------------------------------------------------- two loaders
def test_paired_batches_cycle_each_loader_and_restart_every_pass():
    pairs = PairedBatches([0, 1], ["a", "b", "c"], 5)
    assert len(pairs) == 5 and pairs.data_loaders == ([0, 1], ["a", "b", "c"])
    expected = [(0, "a"), (1, "b"), (0, "c"), (1, "a"), (0, "b")]
    assert list(pairs) == expected and list(pairs) == expected  # every pass starts afresh
    with pytest.raises(RuntimeError, match="unlabelled data loader yielded no batch"):
        list(PairedBatches([0], [], 1))
    with pytest.raises(ValueError, match="length"):
        PairedBatches([0], [1], 0)


def _labeled(n=2, b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(b, 1, size, size, generator=g),
             "label": (torch.rand(b, 1, size, size, generator=g) > 0.5).float()} for _ in range(n)]


def _unlabeled(n=3, b=3, size=16, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(b, 1, size, size, generator=g)} for _ in range(n)]


def _opt(net, lr=0.05):
    return torch.optim.SGD(net.parameters(), lr=lr)


@pytest.mark.parametrize(("epoch_length", "iterations"), [(None, 2), ("labeled", 2), ("unlabeled", 3), (5, 5)])
def test_epoch_length_options(epoch_length, iterations):
    net = _bn_net()
    trainer = SemiSupervisedTrainer("cpu", 1, _labeled(), [net], [_opt(net)], DALELoss(),
                                    unlabeled_data_loader=_unlabeled(), epoch_length=epoch_length)
    trainer.run()
    assert trainer.state.iteration == iterations and trainer.state.epoch_length == iterations


@pytest.mark.parametrize(("kw", "match"), [
    (dict(epoch_length="both"), "epoch_length"), (dict(epoch_length=0), "epoch_length"),
    (dict(unsup_weight=-1.0), "unsup_weight"), (dict(rampup_length=-5), "rampup_length"),
    (dict(ema_decay=1.2), "ema_decay"), (dict(noise_std=-0.1), "noise_std"),
])
def test_bad_options_are_named(kw, match):
    net = _bn_net()
    with pytest.raises(ValueError, match=match):
        MeanTeacherTrainer("cpu", 1, _labeled(), [net], [_opt(net)], DALELoss(), unlabeled_data_loader=_unlabeled(),
                           **kw)


@pytest.mark.parametrize("unlabeled", [None, []])
def test_a_missing_or_empty_unlabeled_set_names_the_data_prep_options(unlabeled):
    net = _bn_net()
    with pytest.raises(ValueError, match="unlabeled_data_loader is (required|empty)") as err:
        MeanTeacherTrainer("cpu", 1, _labeled(), [net], [_opt(net)], DALELoss(), unlabeled_data_loader=unlabeled)
    assert "--unlabeled pseudo" in str(err.value) and "--labeled-fraction" in str(err.value)


def test_unmatched_batches_are_refused_naming_both_shapes():
    nets = [_bn_net(0), _bn_net(1)]
    trainer = CrossPseudoSupervisionTrainer("cpu", 1, _labeled(), nets, [_opt(n) for n in nets], DALELoss(),
                                            unlabeled_data_loader=_unlabeled(size=8))
    with pytest.raises(ValueError, match=r"labelled batch \(2, 1, 16, 16\) and the unlabelled batch \(3, 1, 8, 8\)"):
        trainer.run()


def test_unsupervised_weight_ramps_over_the_whole_run_by_default():
    net = _bn_net()
    trainer = MeanTeacherTrainer("cpu", 2, _labeled(), [net], [_opt(net)], DALELoss(),
                                 unlabeled_data_loader=_unlabeled())
    weights = []
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED,
                              lambda e: weights.append(e.state.output[SemiSupervisedKeys.UNSUP_WEIGHT]))
    trainer.run()
    assert weights == pytest.approx([0.1 * sigmoid_rampup(t, 4) for t in range(4)])
    net = _bn_net()
    trainer = MeanTeacherTrainer("cpu", 1, _labeled(), [net], [_opt(net)], DALELoss(),
                                 unlabeled_data_loader=_unlabeled(), unsup_weight=2.0, rampup_length=0)
    assert trainer.unsup_weight_max == 2.0 and trainer.rampup_iterations(trainer) == 0


# --------------------------------------------------------------------------------------------- mean teacher
def test_mean_teacher_iteration_is_the_student_step_then_the_ema_update():
    labeled, unlabeled = _labeled(n=1), _unlabeled(n=1)
    net = _bn_net(0)
    trainer = MeanTeacherTrainer("cpu", 1, labeled, [net], [_opt(net)], DALELoss(dice_weight=1.0),
                                 unlabeled_data_loader=unlabeled, ema_decay=0.99, rampup_length=0)
    student0, teacher0 = copy.deepcopy(net), copy.deepcopy(trainer.teacher)
    seen = {}
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: seen.update(e.state.output))
    torch.manual_seed(11)
    trainer.run()
    # by hand: student forward on the concatenated batch, noise drawn after it, teacher forward with batch stats
    loss = DALELoss(dice_weight=1.0)
    x, y, xu = labeled[0]["image"], labeled[0]["label"], unlabeled[0]["image"]
    torch.manual_seed(11)
    pred = student0.train()(torch.cat([x, xu]))
    noisy = xu + torch.clamp(torch.randn_like(xu) * 0.1, -0.2, 0.2)
    with torch.no_grad():
        reference = copy.deepcopy(teacher0)
        for m in reference.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False
        t_logits = reference.train()(noisy)
    total = loss(pred[:2], y) + 0.1 * ((torch.sigmoid(pred[2:]) - torch.sigmoid(t_logits)) ** 2).mean()
    torch.testing.assert_close(seen["loss"], total.detach())
    grads = torch.autograd.grad(total, list(student0.parameters()))
    for p, p0, g in zip(net.parameters(), student0.parameters(), grads):
        torch.testing.assert_close(p.detach(), p0.detach() - 0.05 * g, rtol=1e-5, atol=1e-6)
    # step 0: α = 0, the teacher is now the student (parameters and statistics)
    for k, v in trainer.teacher.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k
    assert seen[SemiSupervisedKeys.UNSUP_WEIGHT] == 0.1 and trainer.state.output[0]["ema_alpha"] == 0.0


def test_mean_teacher_teacher_forward_writes_no_statistics():
    net = _bn_net()
    trainer = MeanTeacherTrainer("cpu", 1, _labeled(n=1), [net], [_opt(net)], DALELoss(),
                                 unlabeled_data_loader=_unlabeled(n=1))
    before = copy.deepcopy(trainer.teacher.state_dict())
    logits = trainer.teacher_logits(trainer, torch.randn(2, 1, 16, 16))
    assert not logits.requires_grad
    assert all(torch.equal(before[k], v) for k, v in trainer.teacher.state_dict().items())


def test_mean_teacher_checkpoint_must_hold_the_teacher(tmp_path):
    net = _bn_net()
    opt = _opt(net)
    teacher = ema_teacher(net)
    handler = LastCheckpoint(tmp_path, {"model": net, "optimizer": opt})
    with pytest.raises(ValueError, match=r"would not save \['teacher'\]"):
        MeanTeacherTrainer("cpu", 1, _labeled(), [net], [opt], DALELoss(), unlabeled_data_loader=_unlabeled(),
                           teacher=teacher, train_handlers=[handler])
    with pytest.raises(ValueError, match="own copy"):
        MeanTeacherTrainer("cpu", 1, _labeled(), [net], [opt], DALELoss(), unlabeled_data_loader=_unlabeled(),
                           teacher=net)
    with pytest.raises(ValueError, match="must not require gradients"):
        MeanTeacherTrainer("cpu", 1, _labeled(), [net], [opt], DALELoss(), unlabeled_data_loader=_unlabeled(),
                           teacher=_bn_net(2))


# --------------------------------------------------------------------------------------------- CPS
def test_cps_iteration_trains_each_network_on_the_other_s_hard_labels():
    labeled, unlabeled = _labeled(n=1), _unlabeled(n=1)
    nets = [_bn_net(0), _bn_net(1)]
    refs = [copy.deepcopy(n) for n in nets]
    trainer = CrossPseudoSupervisionTrainer("cpu", 1, labeled, nets, [_opt(n) for n in nets],
                                            DALELoss(dice_weight=1.0), unlabeled_data_loader=unlabeled,
                                            unsup_weight=0.7, rampup_length=0)
    assert isinstance(trainer, SupervisedTrainer)
    trainer.run()
    loss = DALELoss(dice_weight=1.0)
    x, y, xu = labeled[0]["image"], labeled[0]["label"], unlabeled[0]["image"]
    preds = [r.train()(torch.cat([x, xu])) for r in refs]
    pseudo = [(p[2:].detach() > 0).float() for p in preds]
    for i, (net, ref) in enumerate(zip(nets, refs)):
        bce = torch.nn.functional.binary_cross_entropy_with_logits(preds[i][2:], pseudo[1 - i])
        total = loss(preds[i][:2], y) + 0.7 * bce
        grads = torch.autograd.grad(total, list(ref.parameters()), retain_graph=True)
        for p, p0, g in zip(net.parameters(), ref.parameters(), grads):
            torch.testing.assert_close(p.detach(), p0.detach() - 0.05 * g, rtol=1e-5, atol=1e-6)


def test_cps_multiclass_runs_and_events_fire_once_per_iteration():
    torch.manual_seed(0)
    nets = [UNet(2, 1, 3, (4, 8), (2,), num_res_units=1) for _ in range(2)]
    g = torch.Generator().manual_seed(0)
    labeled = [{"image": torch.randn(2, 1, 16, 16, generator=g),
                "label": torch.randint(0, 3, (2, 1, 16, 16), generator=g).float()} for _ in range(2)]
    trainer = CrossPseudoSupervisionTrainer("cpu", 1, labeled, nets, [_opt(n) for n in nets], DALELoss(),
                                            unlabeled_data_loader=_unlabeled())
    seen = []
    for e in IterationEvents:
        trainer.add_event_handler(e, lambda _, e=e: seen.append(e.name))
    trainer.run()
    assert seen == ["FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"] * 2
    out = trainer.state.output[0]  # decollated with the labelled batch
    assert out["pred"].shape == (3, 16, 16) and {"loss_0", "loss_1", "loss_sup", "loss_unsup"} <= set(out)


# --------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("cls", [MeanTeacherTrainer, CrossPseudoSupervisionTrainer])
def test_resume_is_bit_identical_with_two_shuffled_loaders(tmp_path, cls):
    """Epochs of 3 iterations over a labelled loader of 2 batches and an unlabelled one of 5: both loaders cycle
    inside an epoch and restart at every epoch; a run stopped after epoch 1 and resumed ends where the
    uninterrupted one does, every network (and the teacher) bit for bit."""
    labeled = [{"image": d["image"][i], "label": d["label"][i]} for d in _labeled(n=2) for i in range(2)]
    unlabeled = [{"image": d["image"][i]} for d in _unlabeled(n=5, b=2) for i in range(2)]

    def make(epochs, resume, folder, save_rng=True):
        torch.manual_seed(0)
        nets = [_bn_net(i) for i in range(cls.num_networks)]
        opts = [torch.optim.Adam(n.parameters(), lr=1e-2) for n in nets]
        kw = dict(teacher=ema_teacher(nets[0])) if cls is MeanTeacherTrainer else {}
        trainer = cls("cpu", epochs, DataLoader(labeled, batch_size=2, shuffle=True), nets, opts,
                      DALELoss(dice_weight=1.0), unlabeled_data_loader=DataLoader(unlabeled, batch_size=2,
                                                                                  shuffle=True),
                      epoch_length=3, rampup_length=6, **kw)
        LastCheckpoint(folder, trainer.checkpoint_objects(), resume=resume, save_rng=save_rng).attach(trainer)
        torch.manual_seed(5)
        return trainer

    def same(a, b):
        return all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), b.state_dict().values()))

    straight = make(3, False, tmp_path / "a")
    straight.run()
    first = make(1, False, tmp_path / "b")
    first.run()
    resumed = make(3, True, tmp_path / "b")
    resumed.run()
    assert resumed.state.iteration == straight.state.iteration == 9
    for (name, a), b in zip(straight.checkpoint_objects().items(), resumed.checkpoint_objects().values()):
        if isinstance(a, torch.nn.Module):
            assert same(a, b), name
    # the control: resumed without restoring the random generators, the loaders shuffle differently
    first_again = make(1, False, tmp_path / "c")
    first_again.run()
    careless = make(3, True, tmp_path / "c", save_rng=False)
    careless.run()
    assert not same(careless.networks[0], straight.networks[0])
