"""MultiNetworkTrainer, CoTeachingTrainer and TriNetTrainer as MONAI SupervisedTrainers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import StatsHandler, from_engine
from monai.networks.nets import UNet

from dale_monai.coteaching import coteaching_weights, keep_ratio, trinet_weights
from dale_monai.engines import (
    CoTeachingTrainer,
    MultiNetworkKeys,
    MultiNetworkTrainer,
    NonFiniteError,
    TriNetTrainer,
    optimizer_like,
)
from dale_monai.handlers import LastCheckpoint
from dale_monai.losses import DALELoss

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=3, b=2, size=16, seed=0, classes=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        image = torch.randn(b, 1, size, size, generator=g)
        label = (torch.rand(b, 1, size, size, generator=g) > 0.5).float() if classes == 2 else \
            torch.randint(0, classes, (b, 1, size, size), generator=g).float()
        out.append({"image": image, "label": label})
    return out


def _nets(n, seed=0, out_channels=1):
    torch.manual_seed(seed)
    return [UNet(2, 1, out_channels, (4, 8), (2,), num_res_units=1, norm="batch") for _ in range(n)]


def _opts(nets, cls=torch.optim.Adam, **kw):
    kw.setdefault("lr", 1e-2)
    return [cls(n.parameters(), **kw) for n in nets]


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------- the base
def test_base_equals_independent_supervised_trainers_bit_for_bit():
    nets = _nets(2)
    copies = [copy.deepcopy(n) for n in nets]
    loss = DALELoss(dice_weight=1.0)
    trainer = MultiNetworkTrainer("cpu", 2, _data(), nets, _opts(nets), loss)
    assert isinstance(trainer, SupervisedTrainer) and trainer.network is nets[0]
    trainer.run()
    for net, ref in zip(nets, copies):
        SupervisedTrainer("cpu", 2, _data(), ref, _opts([ref])[0], loss).run()
        assert _same(_state(net), _state(ref))


def test_monai_iteration_events_once_per_iteration_and_one_step_per_optimizer():
    nets = _nets(2)
    opts = _opts(nets)
    trainer = CoTeachingTrainer("cpu", 1, _data(n=2), nets, opts, DALELoss())
    seen, steps = [], []
    for e in IterationEvents:
        trainer.add_event_handler(e, lambda _, e=e: seen.append(e.name))
    for i, opt in enumerate(opts):
        step = opt.step
        opt.step = lambda *a, i=i, step=step, **k: (steps.append((trainer.state.iteration, i)), step(*a, **k))[1]
    trainer.run()
    assert seen == ["FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"] * 2
    assert steps == [(1, 0), (1, 1), (2, 0), (2, 1)]


def test_output_is_decollated_and_standard_handlers_work():
    nets = _nets(3)
    trainer = TriNetTrainer("cpu", 1, _data(), nets, _opts(nets), DALELoss())
    StatsHandler(name="trinet", output_transform=from_engine(["loss"], first=True), iteration_log=True).attach(trainer)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs.append(e.state.epoch))
    trainer.run()
    assert epochs == [1]
    out = trainer.state.output
    assert isinstance(out, list) and len(out) == 2  # decollated like SupervisedTrainer's
    first = out[0]
    for key in ("loss", "pred", MultiNetworkKeys.KEEP_RATIO, *(MultiNetworkKeys.loss(i) for i in range(3)),
                *(MultiNetworkKeys.selected(i) for i in range(3))):
        assert key in first, key
    torch.testing.assert_close(first["loss"], sum(first[MultiNetworkKeys.loss(i)] for i in range(3)) / 3)


# --------------------------------------------------------------------------------------------- the rules
@pytest.mark.parametrize(("cls", "n", "rule"), [(CoTeachingTrainer, 2, coteaching_weights),
                                                (TriNetTrainer, 3, trinet_weights)])
def test_one_iteration_steps_each_network_on_the_selected_pixels(cls, n, rule):
    """One SGD step of each network equals the step on its weighted loss computed by hand from the rule."""
    nets = _nets(n, seed=3)
    before = [copy.deepcopy(net) for net in nets]
    data = _data(n=1, seed=4)
    lr = 0.1
    loss = DALELoss(dice_weight=1.0)
    trainer = cls("cpu", 1, data, nets, _opts(nets, torch.optim.SGD, lr=lr), loss, select_ratio=0.6, ramp_start=0,
                  ramp_end=0)
    trainer.run()
    assert trainer.state.output[0][MultiNetworkKeys.KEEP_RATIO] == pytest.approx(0.6)
    x, y = data[0]["image"], data[0]["label"]
    preds = [net.train()(x) for net in before]
    weights = rule([loss.pixel_map(p, y).detach() for p in preds], 0.6)
    for i, (net, ref, pred, w) in enumerate(zip(nets, before, preds, weights)):
        assert 0 < float((w > 0).float().mean()) <= 0.6
        grads = torch.autograd.grad(loss(pred, y, weight=w), list(ref.parameters()))
        for (name, p), p0, g in zip(net.named_parameters(), ref.parameters(), grads):
            torch.testing.assert_close(p.detach(), p0.detach() - lr * g, rtol=1e-5, atol=1e-6, msg=f"{i} {name}")


def test_keep_ratio_follows_the_schedule_per_iteration():
    nets = _nets(2)
    trainer = CoTeachingTrainer("cpu", 3, _data(n=4), nets, _opts(nets), DALELoss(), select_ratio=0.7,
                                ramp_start=2, ramp_end=9)
    ratios = []
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED,
                              lambda e: ratios.append(e.state.output[MultiNetworkKeys.KEEP_RATIO]))
    trainer.run()
    assert ratios == pytest.approx([keep_ratio(t, 0.7, 2, 9, "sigmoid") for t in range(12)])


def test_default_ramp_is_ten_to_eighty_percent_of_the_run():
    nets = _nets(3)
    trainer = TriNetTrainer("cpu", 5, _data(n=4), nets, _opts(nets), DALELoss())  # 20 iterations
    ratios = []
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED,
                              lambda e: ratios.append(e.state.output[MultiNetworkKeys.KEEP_RATIO]))
    trainer.run()
    assert trainer.ramp_window(trainer) == (2, 16)
    assert ratios == pytest.approx([keep_ratio(t, 0.9, 2, 16, "linear") for t in range(20)])
    assert ratios[0] == 1.0 and ratios[-1] == pytest.approx(0.9)


def test_multiclass_networks():
    nets = _nets(2, out_channels=3)
    trainer = CoTeachingTrainer("cpu", 1, _data(classes=3), nets, _opts(nets), DALELoss(dice_weight=1.0))
    trainer.run()
    assert math.isfinite(float(trainer.state.output[0]["loss"]))


# --------------------------------------------------------------------------------------------- checkpoints
def test_resume_restores_every_network_and_optimizer_bit_identically(tmp_path):
    def make(epochs, resume, folder):
        torch.manual_seed(0)
        nets = _nets(2)
        opts = _opts(nets)
        trainer = CoTeachingTrainer("cpu", epochs, _data(), nets, opts, DALELoss(dice_weight=1.0), ramp_start=0,
                                    ramp_end=5)
        LastCheckpoint(folder, trainer.checkpoint_objects(), resume=resume).attach(trainer)
        return trainer, nets

    straight, straight_nets = make(3, False, tmp_path / "straight")
    straight.run()
    first, _ = make(1, False, tmp_path / "resumed")
    first.run()
    saved = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", weights_only=True)
    assert {"model", "optimizer", "model_1", "optimizer_1", "trainer"} <= set(saved)
    resumed, resumed_nets = make(3, True, tmp_path / "resumed")
    resumed.run()
    assert resumed.state.iteration == straight.state.iteration == 9
    for a, b in zip(straight_nets, resumed_nets):
        assert _same(_state(a), _state(b))
    for a, b in zip(straight.optimizers, resumed.optimizers):
        assert all(torch.equal(a.state_dict()["state"][k]["exp_avg"], b.state_dict()["state"][k]["exp_avg"])
                   for k in a.state_dict()["state"])


def test_a_checkpoint_missing_a_network_is_refused(tmp_path):
    nets = _nets(2)
    opts = _opts(nets)
    handler = LastCheckpoint(tmp_path, {"model": nets[0], "optimizer": opts[0]})
    with pytest.raises(ValueError, match=r"would not save \['model_1', 'optimizer_1'\]"):
        CoTeachingTrainer("cpu", 1, _data(), nets, opts, DALELoss(), train_handlers=[handler])
    # names do not matter, identity does
    ok = LastCheckpoint(tmp_path, {"a": nets[0], "b": opts[0], "c": nets[1], "d": opts[1]})
    CoTeachingTrainer("cpu", 1, _data(), nets, opts, DALELoss(), train_handlers=[ok])


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("kw", "match"), [
    (dict(select_ratio=1.5), "select_ratio"), (dict(select_ratio=-0.1), "select_ratio"),
    (dict(ramp_start=10, ramp_end=5), "ramp_end"), (dict(ramp_start=-1), "ramp_start"),
    (dict(ramp="cosine"), "ramp"), (dict(per_sample="yes"), "per_sample"), (dict(clip_grad_norm=0.0), "clip_grad_norm"),
])
def test_out_of_range_options_are_rejected_at_construction(kw, match):
    nets = _nets(2)
    with pytest.raises(ValueError, match=match):
        CoTeachingTrainer("cpu", 1, _data(), nets, _opts(nets), DALELoss(), **kw)


def test_wrong_networks_and_optimizers_are_named():
    nets = _nets(3)
    opts = _opts(nets)
    with pytest.raises(ValueError, match="networks must hold 2"):
        CoTeachingTrainer("cpu", 1, _data(), nets, opts, DALELoss())
    with pytest.raises(ValueError, match="one optimizer per network"):
        TriNetTrainer("cpu", 1, _data(), nets, opts[:2], DALELoss())
    with pytest.raises(ValueError, match="same object"):
        CoTeachingTrainer("cpu", 1, _data(), [nets[0], nets[0]], opts[:2], DALELoss())
    with pytest.raises(ValueError, match=r"optimizers\[1\] must update .* networks\[0\]"):
        CoTeachingTrainer("cpu", 1, _data(), nets[:2], [opts[0], opts[0]], DALELoss())


def test_optimizer_like_copies_class_and_settings():
    nets = _nets(2)
    for cls, kw in ((torch.optim.Adam, dict(lr=3e-3, weight_decay=1e-5)), (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
                    (torch.optim.AdamW, dict(lr=1e-3))):
        template = cls(nets[0].parameters(), **kw)
        twin = optimizer_like(template, nets[1])
        assert type(twin) is cls and twin.defaults == template.defaults
        assert {id(p) for p in twin.param_groups[0]["params"]} == {id(p) for p in nets[1].parameters()}
    groups = torch.optim.SGD([{"params": nets[0].model[0].parameters()},
                              {"params": nets[0].model[1].parameters(), "lr": 1.0}], lr=0.1)
    with pytest.raises(ValueError, match="parameter groups"):
        optimizer_like(groups, nets[1])


def test_nonfinite_input_stops_before_any_step_and_names_the_network():
    data = _data(n=2)
    data[1]["image"][0, 0, 3, 3] = float("nan")
    nets = _nets(2)
    trainer = CoTeachingTrainer("cpu", 1, data, nets, _opts(nets), DALELoss())
    after_first = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1),
                              lambda e: after_first.extend([p.detach().clone() for p in n.parameters()] for n in nets))
    with pytest.raises(NonFiniteError, match="network 0"):
        trainer.run()
    assert all(torch.equal(a, p) for ps, n in zip(after_first, nets) for a, p in zip(ps, n.parameters()))


def test_default_ramp_needs_a_known_run_length():
    def stream():  # an iterable without __len__: the run's iterations are unknown when it starts
        yield from _data(n=2)

    nets = _nets(2)
    with pytest.raises(ValueError, match="give both in iterations"):
        CoTeachingTrainer("cpu", 1, stream(), nets, _opts(nets), DALELoss()).run()
    nets = _nets(2)
    trainer = CoTeachingTrainer("cpu", 1, stream(), nets, _opts(nets), DALELoss(), ramp_start=0, ramp_end=1)
    trainer.run()
    assert trainer.state.iteration == 2
