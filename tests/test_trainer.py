"""DALETrainer: Algorithm 1 as a MONAI SupervisedTrainer."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.handlers import StatsHandler, from_engine
from monai.networks.nets import BasicUNetPlusPlus, UNet

from dale_monai.engines import DALEEvents, DALEKeys, DALETrainer
from dale_monai.meta import OmegaMetaStep


def _bce(o, t):
    return torch.nn.functional.binary_cross_entropy_with_logits(o, t, reduction="none")


def _data(n=3, b=2, size=16, seed=0, with_masks=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        d = {"image": torch.randn(b, 1, size, size, generator=g),
             "label": (torch.rand(b, 1, size, size, generator=g) > 0.5).float()}
        if with_masks:
            m = torch.rand(b, 1, size, size, generator=g)
            d["mask_n"], d["mask_f"] = m, 1 - m
        out.append(d)
    return out


def _last(trainer):
    """The first sample of the decollated output of the last iteration."""
    out = trainer.state.output
    assert isinstance(out, list), "the trainer's output must be decollated like SupervisedTrainer's"
    return out[0]


def _trainer(net=None, data=None, epochs=1, **kw):
    torch.manual_seed(0)
    net = net or UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    kw.setdefault("omega_step", OmegaMetaStep())
    return DALETrainer("cpu", epochs, data or _data(), net, opt, _bce, **kw), net, opt


def test_is_a_supervised_trainer_with_two_optimizer_steps_per_iteration():
    trainer, net, opt = _trainer()
    assert isinstance(trainer, SupervisedTrainer)
    calls = []
    step = opt.step
    opt.step = lambda *a, **k: (calls.append(trainer.state.iteration), step(*a, **k))[1]
    trainer.run()
    assert trainer.state.iteration == 3
    assert calls == [1, 1, 2, 2, 3, 3]


def test_events_in_algorithm_order_and_monai_events_once():
    trainer, _, _ = _trainer(data=_data(n=1))
    seen = []
    for e in DALEEvents:
        trainer.add_event_handler(e, lambda _, e=e: seen.append(e.name))
    from monai.engines.utils import IterationEvents

    for e in IterationEvents:
        trainer.add_event_handler(e, lambda _, e=e: seen.append(e.name))
    trainer.run()
    assert seen == ["NONFUZZY_FORWARD_COMPLETED", "NONFUZZY_COMPLETED", "FUZZY_FORWARD_COMPLETED", "FORWARD_COMPLETED",
                    "OMEGA_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "FUZZY_COMPLETED", "MODEL_COMPLETED"]


def test_output_carries_losses_and_omega_statistics():
    trainer, _, _ = _trainer(omega_step=OmegaMetaStep(reduction="sum"))
    trainer.run()
    out = _last(trainer)
    for key in (DALEKeys.LOSS_N, DALEKeys.LOSS_F, DALEKeys.OMEGA_MEAN, DALEKeys.OMEGA_BELOW_ONE,
                DALEKeys.OMEGA_SMALL_GRAD, DALEKeys.FUZZY_FRACTION, "loss", "pred"):
        assert key in out, key
    torch.testing.assert_close(out["loss"], out[DALEKeys.LOSS_N] + out[DALEKeys.LOSS_F])
    assert out[DALEKeys.OMEGA].shape == (1, 16, 16)
    assert 0 < out[DALEKeys.OMEGA_BELOW_ONE] < 1
    assert 0.4 < out[DALEKeys.FUZZY_FRACTION] < 0.6


@pytest.mark.parametrize("norm_stats,per_iteration", [("nonfuzzy", 1), ("both", 2)])
def test_norm_statistics_advance_only_on_chosen_real_forwards(norm_stats, per_iteration):
    trainer, net, _ = _trainer(norm_stats=norm_stats)
    trainer.run()
    tracked = [int(m.num_batches_tracked) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert tracked and all(t == per_iteration * 3 for t in tracked)  # virtual passes never count


def test_handler_terms_enter_the_fuzzy_loss():
    trainer, _, _ = _trainer(data=_data(n=1))
    trainer.add_event_handler(DALEEvents.OMEGA_COMPLETED,
                              lambda e: e.state.output[DALEKeys.FUZZY_TERMS].append(torch.tensor(100.0)))
    seen = {}
    trainer.add_event_handler(DALEEvents.FUZZY_COMPLETED, lambda e: seen.update(e.state.output))
    trainer.run()
    expected = (seen[DALEKeys.OMEGA] * seen[DALEKeys.MASK_F]).mean() * 100
    assert expected > 10 and seen[DALEKeys.LOSS_F] > expected


def test_without_omega_is_plain_alternating_training():
    trainer, _, _ = _trainer(omega_step=None)
    trainer.run()
    assert _last(trainer)[DALEKeys.OMEGA_MEAN] == 1.0


def test_same_seed_gives_identical_weights():
    weights = []
    for _ in range(2):
        trainer, net, _ = _trainer(epochs=2)
        trainer.run()
        weights.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_list_output_networks_and_gradient_clipping():
    net = BasicUNetPlusPlus(2, 1, 1, features=(4, 4, 4, 4, 4, 4))
    trainer, net, _ = _trainer(net=net, data=_data(n=1, size=32), clip_grad_norm=1e-3)
    norms = []
    trainer.add_event_handler(DALEEvents.NONFUZZY_COMPLETED, lambda e: norms.append(
        torch.norm(torch.stack([p.grad.norm() for p in net.parameters() if p.grad is not None]))))
    trainer.run()
    assert norms and norms[0] <= 1e-3 * (1 + 1e-4)


def test_stats_handler_and_standard_handlers_work(caplog):
    trainer, _, _ = _trainer()
    StatsHandler(name="dale", output_transform=from_engine(["loss"], first=True), iteration_log=True).attach(trainer)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs.append(e.state.epoch))
    trainer.run()
    assert epochs == [1]


def test_missing_masks_say_which_transform_to_add():
    trainer, _, _ = _trainer(data=_data(with_masks=False))
    with pytest.raises(KeyError, match="FuzzyPartitiond"):
        trainer.run()


@pytest.mark.parametrize("kw,match", [(dict(mask_mode="soft"), "mask_mode"), (dict(inner_lr=-1.0), "inner_lr"),
                                      (dict(clip_grad_norm=0.0), "clip_grad_norm"),
                                      (dict(nonfinite="ignore"), "nonfinite"), (dict(norm_stats="x"), "norm_stats"),
                                      (dict(mask_inputs="no"), "mask_inputs")])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        _trainer(**kw)


@pytest.mark.parametrize("mask_mode", ["paper", "weight"])
def test_multiclass_network_uses_loss_weights(mask_mode):
    def ce(o, t):
        return torch.nn.functional.cross_entropy(o, t[:, 0].long(), reduction="none")[:, None]

    torch.manual_seed(0)
    net = UNet(2, 1, 3, (4, 8), (2,), num_res_units=1)
    data = _data(n=1)
    for d in data:
        d["label"] = torch.randint(0, 3, d["label"].shape).float()
    trainer = DALETrainer("cpu", 1, data, net, torch.optim.SGD(net.parameters(), lr=0.1), ce,
                          omega_step=OmegaMetaStep(), mask_mode=mask_mode)
    y_seen = []
    orig = trainer.region_target
    trainer.region_target = lambda t, m, c: y_seen.append(orig(t, m, c)) or y_seen[-1]
    trainer.run()
    # labels are class indices: never multiplied by a soft mask
    assert all(torch.equal(y, data[0]["label"]) and w is not None for y, w in y_seen)


@pytest.mark.parametrize("mask_inputs", [True, False])
def test_mask_inputs_decides_what_the_network_sees(mask_inputs):
    data = _data(n=1)
    trainer, net, _ = _trainer(data=data, mask_inputs=mask_inputs)
    seen = []
    net.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    trainer.run()
    x, m_n, m_f = data[0]["image"], data[0]["mask_n"], data[0]["mask_f"]
    # the two real forwards (non-fuzzy, then fuzzy) come first; the meta step's virtual passes follow
    want = (x * m_n, x * m_f) if mask_inputs else (x, x)
    assert torch.equal(seen[0], want[0]) and torch.equal(seen[1], want[1]) and len(seen) > 2
    assert all(torch.equal(s, want[0]) or torch.equal(s, want[1]) for s in seen)


def test_nonfinite_input_stops_before_any_step_and_names_the_term():
    from dale_monai.engines import NonFiniteError

    data = _data(n=2)
    data[1]["image"][0, 0, 3, 3] = float("nan")
    trainer, net, _ = _trainer(data=data)
    after_first = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1),
                              lambda e: after_first.extend(p.detach().clone() for p in net.parameters()))
    with pytest.raises(NonFiniteError, match="non-fuzzy loss"):
        trainer.run()
    assert all(torch.equal(a, p) for a, p in zip(after_first, net.parameters()))


def test_nonfinite_handler_term_is_named():
    from dale_monai.engines import NonFiniteError

    trainer, _, _ = _trainer(data=_data(n=1))
    trainer.add_event_handler(DALEEvents.OMEGA_COMPLETED,
                              lambda e: e.state.output[DALEKeys.FUZZY_TERMS].append(torch.tensor(float("inf"))))
    with pytest.raises(NonFiniteError, match="fuzzy loss term 0"):
        trainer.run()


def test_nonfinite_skip_policy_drops_the_batch_and_keeps_weights_finite():
    data = _data(n=3)
    data[1]["image"][:] = float("inf")
    trainer, net, _ = _trainer(data=data, nonfinite="skip")
    trainer.run()
    assert trainer.state.skipped_batches == 1
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_out_of_memory_gives_an_actionable_message():
    trainer, net, _ = _trainer(data=_data(n=1))

    def oom(*_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    net.register_forward_hook(oom)
    with pytest.raises(torch.OutOfMemoryError, match=r"(?s)batch size.*spatial_size.*Tried to allocate"):
        trainer.run()


# the ω options of issue 14: the approximate first_order method, the head scope, the l2rw rule, K > 1
OMEGA_OPTIONS = [
    dict(method="first_order"),
    dict(method="first_order", scope="head"),
    dict(method="jvp", scope="head"),
    dict(method="double_backward", scope="head"),
    dict(method="jvp", rule="l2rw"),
    dict(method="first_order", rule="l2rw", scope="head"),
    dict(method="first_order", steps=3, reduction="sum"),
    dict(method="jvp", steps=2, lr=1.0, reduction="normalized"),
]


@pytest.mark.parametrize("kwargs", OMEGA_OPTIONS, ids=lambda k: "-".join(f"{v}" for v in k.values()))
def test_every_omega_option_trains_deterministically(kwargs):
    weights, omegas = [], []
    for _ in range(2):
        trainer, net, _ = _trainer(epochs=2, omega_step=OmegaMetaStep(**kwargs))
        seen = []
        trainer.add_event_handler(DALEEvents.OMEGA_COMPLETED, lambda e: seen.append(e.state.output[DALEKeys.OMEGA]))
        trainer.run()
        weights.append([p.detach().clone() for p in net.parameters()])
        omegas.append(seen)
        tracked = [int(m.num_batches_tracked) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert tracked and all(t == 6 for t in tracked)  # the non-fuzzy forwards only: virtual passes write nothing
    assert all(torch.equal(a, b) for a, b in zip(*weights))
    assert len(omegas[0]) == 6 and all(torch.equal(a, b) for a, b in zip(*omegas))
    assert all(torch.isfinite(w).all() and not torch.equal(w, torch.ones_like(w)) for w in omegas[0])
    out = _last(trainer)
    assert 0 <= out[DALEKeys.OMEGA_SMALL_GRAD] <= 1


class _KeepArgs:
    """An ω step that records what the trainer hands it."""

    def __init__(self, step):
        self.step, self.calls = step, []

    def __getattr__(self, name):
        return getattr(self.step, name)

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.step(*args, **kwargs)


def test_first_order_gets_the_unclipped_nonfuzzy_gradient_at_theta():
    data = _data(n=1)
    torch.manual_seed(0)
    net = UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch")
    reference = copy.deepcopy(net)
    d = data[0]
    _bce(reference(d["image"] * d["mask_n"]), d["label"] * d["mask_n"]).mean().backward()
    step = _KeepArgs(OmegaMetaStep(method="first_order"))
    trainer, net, _ = _trainer(net=net, data=data, omega_step=step, clip_grad_norm=1e-6)
    trainer.run()
    (kwargs,) = step.calls
    v = kwargs["nonfuzzy_grad"]
    assert set(v) == {n for n, _ in net.named_parameters()}
    for n, p in reference.named_parameters():
        torch.testing.assert_close(v[n], p.grad)  # before clipping (1e-6) and before the optimizer step
    assert torch.equal(kwargs["fuzzy_mask"], d["mask_f"])
    # an exact method gets no gradient copy
    exact = _KeepArgs(OmegaMetaStep(method="jvp"))
    _trainer(data=data, omega_step=exact)[0].run()
    assert exact.calls[0]["nonfuzzy_grad"] is None


class _PostProcessed(torch.nn.Module):
    """The head's output is not the network's output: the trainer cannot re-run the head alone."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) * 1.0


@pytest.mark.parametrize("method", ["first_order", "jvp"])
def test_head_scope_falls_back_to_the_whole_network_with_the_same_result(method):
    data = _data(n=2)
    runs = []
    for wrap in (False, True):
        torch.manual_seed(0)
        net = UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch")
        model = _PostProcessed(net) if wrap else net
        step = OmegaMetaStep(method=method, scope="head", reduction="sum", head_layer="net.model.2" if wrap else None)
        trainer = DALETrainer("cpu", 1, data, model, torch.optim.Adam(model.parameters(), lr=1e-3), _bce,
                              omega_step=step)
        seen = []
        trainer.add_event_handler(DALEEvents.OMEGA_COMPLETED, lambda e: seen.append(e.state.output[DALEKeys.OMEGA]))
        if wrap:
            with pytest.warns(UserWarning, match="re-runs the whole network"):
                trainer.run()
        else:
            trainer.run()
        runs.append((seen, [p.detach().clone() for p in net.parameters()]))
    (fast_w, fast_p), (slow_w, slow_p) = runs
    for a, b in zip(fast_w, slow_w):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    for a, b in zip(fast_p, slow_p):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
