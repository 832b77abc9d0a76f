"""CLCSTrainer: the CLCS iteration on MultiNetworkTrainer, its per-epoch thresholds, warm-up, options and resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from ignite.engine import Events
from monai.handlers import StatsHandler
from monai.networks.nets import UNet

from dale_monai.clcs import ClassCurriculum, class_probabilities, class_thresholds, learning_status, status_counts
from dale_monai.engines import CLCSKeys, CLCSTrainer, MultiNetworkKeys
from dale_monai.handlers import LastCheckpoint
from dale_monai.losses import DALELoss

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=3, b=2, size=16, seed=0, classes=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        image = torch.randn(b, 1, size, size, generator=g)
        # an imbalanced label: a small square of class 1 (and of class 2 for 3 classes) on background
        label = torch.zeros(b, 1, size, size)
        label[:, :, 2:8, 2:8] = 1
        if classes == 3:
            label[:, :, 10:13, 10:13] = 2
        out.append({"image": image + 2 * label, "label": label})
    return out


def _unets(seed=0, out_channels=1):
    torch.manual_seed(seed)
    return [UNet(2, 1, out_channels, (4, 8), (2,), num_res_units=1, norm="batch") for _ in range(2)]


def _convs(seed=0, out_channels=1):
    """Networks without normalisation layers: their train-mode output is their eval-mode output."""
    torch.manual_seed(seed)
    return [torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(6, out_channels, 1)) for _ in range(2)]


def _opts(nets, cls=torch.optim.Adam, **kw):
    kw.setdefault("lr", 1e-2)
    return [cls(n.parameters(), **kw) for n in nets]


def _state(obj):
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in obj.state_dict().items()}


def _outputs(trainer) -> list[dict]:
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: seen.append({**e.state.output[0], "epoch": e.state.epoch}))
    return seen


# --------------------------------------------------------------------------------------------- the loss
def test_all_clean_batch_gives_the_cross_entropy_and_selection_is_skipped_in_warmup():
    nets = _convs()
    data = _data(n=1)
    trainer = CLCSTrainer("cpu", 1, data, nets, _opts(nets, torch.optim.SGD, lr=0.0), DALELoss(),
                          discrepancy="none", warmup_epochs=1, curriculum=ClassCurriculum(tau=0.5))
    seen = _outputs(trainer)
    trainer.run()
    x, y = data[0]["image"], data[0]["label"]
    for i, net in enumerate(nets):  # lr 0: the weights are those the loss was computed with
        expected = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        assert seen[0][MultiNetworkKeys.loss(i)] == pytest.approx(expected.item(), rel=1e-6)
    assert seen[0][CLCSKeys.WARMUP] == 1.0 and seen[0][CLCSKeys.SELECTED] == 1.0


def test_selected_pixels_get_ce_and_rejected_ones_the_robust_mix():
    """After warm-up the loss of each branch is mean(m·CE + (1 − m)·(w·CE + (1 − w)·RCE)) with the vote's mask."""
    from dale_monai.clcs import noise_balance_loss_map, selection_mask
    from dale_monai.robust_losses import reverse_ce_map

    nets = _convs()
    data = _data(n=1)
    cur = ClassCurriculum(num_classes=2, tau=0.6)
    cur.load_state_dict({"counts": torch.zeros(3, 2, dtype=torch.float64),
                         "status": torch.tensor([1.0, 0.5], dtype=torch.float64),
                         "thresholds": torch.tensor([0.6, 0.2], dtype=torch.float64)})
    trainer = CLCSTrainer("cpu", 1, data, nets, _opts(nets, torch.optim.SGD, lr=0.0), DALELoss(),
                          discrepancy="none", warmup_epochs=0, curriculum=cur, min_keep=0.0)
    seen = _outputs(trainer)
    trainer.run()
    x, y = data[0]["image"], data[0]["label"]
    logits = [net(x) for net in nets]
    vote = (class_probabilities(logits[0]) + class_probabilities(logits[1])) / 2
    labels = y[:, 0].long()
    mask = selection_mask(vote, labels, torch.tensor([0.6, 0.2]), "label", 0.0)
    assert 0 < mask.float().mean() < 1  # some pixels are rejected
    assert seen[0][CLCSKeys.SELECTED] == pytest.approx(float(mask.float().mean()))
    conf = vote.gather(1, labels.unsqueeze(1))
    for i, z in enumerate(logits):
        ce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
        expected = noise_balance_loss_map(ce, reverse_ce_map(z, y), mask, conf).mean()
        assert seen[0][MultiNetworkKeys.loss(i)] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("discrepancy", ["features", "predictions"])
def test_discrepancy_gradient_reaches_both_branches(discrepancy):
    """Same batch, same weights, λ_d = 0 and λ_d = 1: the gradients of both networks differ (lr 0 keeps the
    weights, the gradients stay in .grad after the step)."""
    grads = {}
    for weight in (0.0, 1.0):
        nets = _unets()
        trainer = CLCSTrainer("cpu", 1, _data(n=1), nets, _opts(nets, torch.optim.SGD, lr=0.0), DALELoss(),
                              discrepancy=discrepancy, discrepancy_weight=weight, warmup_epochs=1)
        seen = _outputs(trainer)
        trainer.run()
        grads[weight] = [[p.grad.clone() for p in net.parameters()] for net in nets]
        if weight:
            assert 0 < seen[0][CLCSKeys.DISCREPANCY] <= 1
    for i in range(2):
        diff = sum(float((a - b).abs().sum()) for a, b in zip(grads[0.0][i], grads[1.0][i]))
        assert diff > 0, f"the discrepancy term did not reach network {i}"


def test_feature_capture_skips_validation_forwards_and_bad_layers_are_named():
    nets = _unets()
    trainer = CLCSTrainer("cpu", 1, _data(n=1), nets, _opts(nets), DALELoss())
    with torch.no_grad():
        nets[0](torch.zeros(1, 1, 16, 16))  # an evaluator's forward
    assert trainer._features == [None, None]
    convs = _convs()
    with pytest.raises(ValueError, match="discrepancy='features'.*feature_layer"):
        CLCSTrainer("cpu", 1, _data(n=1), convs, _opts(convs), DALELoss())
    with pytest.raises(ValueError, match="feature_layer 'nope'"):
        CLCSTrainer("cpu", 1, _data(n=1), convs, _opts(convs), DALELoss(), feature_layer="nope")
    # a layer given by path works for any network
    trainer = CLCSTrainer("cpu", 1, _data(n=1), convs, _opts(convs), DALELoss(), feature_layer="2", warmup_epochs=0)
    seen = _outputs(trainer)
    trainer.run()
    assert seen[0][CLCSKeys.DISCREPANCY] > 0


# --------------------------------------------------------------------------------------------- the curriculum
def test_thresholds_are_logged_every_epoch_and_follow_the_previous_epochs_counts(capsys):
    nets = _unets()
    data = _data(n=2)
    trainer = CLCSTrainer("cpu", 3, data, nets, _opts(nets), DALELoss(), warmup_epochs=1,
                          curriculum=ClassCurriculum(num_classes=2, tau=0.6))
    StatsHandler(name="clcs_test", iteration_log=False).attach(trainer)
    epochs = {}
    counts = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED,
                              lambda e: epochs.__setitem__(e.state.epoch, dict(e.state.metrics)))
    trainer.add_event_handler(Events.EPOCH_COMPLETED,
                              lambda e: counts.__setitem__(e.state.epoch, trainer.curriculum.counts.clone()))
    seen = _outputs(trainer)
    trainer.run()
    assert sorted(epochs) == [1, 2, 3]
    for e in (1, 2, 3):
        assert {CLCSKeys.threshold(0), CLCSKeys.threshold(1), CLCSKeys.status(0), CLCSKeys.status(1)} <= set(epochs[e])
    assert epochs[1][CLCSKeys.threshold(0)] == 0.0  # no statistics before the first epoch
    # the thresholds of epoch e come from the counts of epoch e - 1, as learning_status / class_thresholds say
    for e in (2, 3):
        beta = learning_status(counts[e - 1], "recall", True, torch.tensor([epochs[e - 1][CLCSKeys.status(c)]
                                                                            for c in range(2)], dtype=torch.float64))
        tau = class_thresholds(beta, 0.6)
        assert [epochs[e][CLCSKeys.threshold(c)] for c in range(2)] == pytest.approx(tau.tolist())
        assert all(o[CLCSKeys.threshold(1)] == pytest.approx(tau[1].item()) for o in seen if o["epoch"] == e)
    # the counts of an epoch are those of its batches' votes
    assert float(counts[1][0].sum()) == 2 * 2 * 16 * 16
    # MONAI's StatsHandler prints them with the epoch's metrics
    printed = [line for line in capsys.readouterr().out.splitlines() if "Metrics --" in line]
    assert len(printed) == 3 and all("clcs_threshold_1" in line and "clcs_status_0" in line for line in printed)
    assert [o[CLCSKeys.WARMUP] for o in seen] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_default_warmup_is_five_percent_of_the_run():
    nets = _convs()
    for epochs, expected in ((1, 1), (10, 1), (40, 2), (100, 5)):
        trainer = CLCSTrainer("cpu", epochs, _data(n=1), nets, _opts(nets), DALELoss(), discrepancy="none")
        trainer.state.max_epochs = epochs
        assert trainer.warmup(trainer) == expected
    trainer = CLCSTrainer("cpu", 5, _data(n=1), nets, _opts(nets), DALELoss(), discrepancy="none", warmup_epochs=0)
    assert trainer.warmup(trainer) == 0


def test_multiclass_softmax_and_one_hot_targets():
    nets = _unets(out_channels=3)
    data = _data(n=2, classes=3)
    onehot = [{"image": d["image"], "label": torch.nn.functional.one_hot(d["label"][:, 0].long(), 3)
               .permute(0, 3, 1, 2).float()} for d in data]
    for batches in (data, onehot):
        trainer = CLCSTrainer("cpu", 2, batches, nets, _opts(nets), DALELoss(), warmup_epochs=1,
                              curriculum=ClassCurriculum(tau=0.4))
        seen = _outputs(trainer)
        trainer.run()
        assert trainer.curriculum.num_classes == 3
        assert {CLCSKeys.threshold(2), CLCSKeys.class_selected(2)} <= set(seen[-1])
        assert all(math.isfinite(o["loss"]) for o in seen)
        # min_keep: every class with labelled pixels keeps some
        assert all(o[CLCSKeys.class_selected(c)] > 0 for o in seen for c in range(3))


# --------------------------------------------------------------------------------------------- checkpoints
def test_resume_is_bit_identical_with_both_branches_optimizers_and_curriculum(tmp_path):
    def make(epochs, resume, folder):
        torch.manual_seed(0)
        nets = _unets()
        opts = _opts(nets)
        # without FlexMatch's warm-up denominator the better learned class gets τ at once, so some labels fail
        trainer = CLCSTrainer("cpu", epochs, _data(), nets, opts, DALELoss(dice_weight=1.0), warmup_epochs=1,
                              curriculum=ClassCurriculum(num_classes=2, tau=0.6, threshold_warmup=False))
        LastCheckpoint(folder, trainer.checkpoint_objects(), resume=resume).attach(trainer)
        return trainer

    straight = make(3, False, tmp_path / "straight")
    seen = _outputs(straight)
    straight.run()
    assert any(o[CLCSKeys.SELECTED] < 1 for o in seen)  # the selection acted after the warm-up
    first = make(2, False, tmp_path / "resumed")
    first.run()
    saved = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", weights_only=True)
    assert {"model", "optimizer", "model_1", "optimizer_1", "clcs_curriculum", "trainer"} <= set(saved)
    assert float(saved["clcs_curriculum"]["counts"][0].sum()) > 0  # epoch 2's counts, turned at epoch 3's start
    resumed = make(3, True, tmp_path / "resumed")
    resumed.run()
    assert resumed.state.iteration == straight.state.iteration == 9
    for a, b in zip(straight.networks, resumed.networks):
        sa, sb = _state(a), _state(b)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for a, b in zip(straight.optimizers, resumed.optimizers):
        for k, s in a.state_dict()["state"].items():
            assert all(torch.equal(v, b.state_dict()["state"][k][n]) for n, v in s.items() if torch.is_tensor(v))
    for k, v in straight.curriculum.state_dict().items():
        assert torch.equal(v, resumed.curriculum.state_dict()[k]), k


def test_a_checkpoint_missing_the_curriculum_is_refused(tmp_path):
    nets = _convs()
    opts = _opts(nets)
    handler = LastCheckpoint(tmp_path, {"model": nets[0], "optimizer": opts[0], "model_1": nets[1],
                                        "optimizer_1": opts[1]})
    with pytest.raises(ValueError, match=r"would not save \['clcs_curriculum'\]"):
        CLCSTrainer("cpu", 1, _data(), nets, opts, DALELoss(), discrepancy="none", train_handlers=[handler])


# --------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(("kw", "match"), [
    (dict(criterion="vote"), "criterion"), (dict(min_keep=1.5), "min_keep"), (dict(min_keep=-0.1), "min_keep"),
    (dict(noisy_weight=-1.0), "noisy_weight"), (dict(noisy_weight=float("nan")), "noisy_weight"),
    (dict(discrepancy="kl"), "discrepancy must"), (dict(discrepancy_weight=-0.5), "discrepancy_weight"),
    (dict(warmup_epochs=-1), "warmup_epochs"), (dict(warmup_epochs=1.5), "warmup_epochs"),
    (dict(label_floor=0.0), "label_floor"), (dict(curriculum={"tau": 0.9}), "curriculum"),
    (dict(feature_layer=""), "feature_layer"),
])
def test_out_of_range_options_are_named_at_construction(kw, match):
    nets = _convs()
    with pytest.raises(ValueError, match=match):
        CLCSTrainer("cpu", 1, _data(), nets, _opts(nets), DALELoss(), **{"discrepancy": "none", **kw})


def test_three_networks_are_refused():
    nets = _convs() + _convs(seed=1)[:1]
    with pytest.raises(ValueError, match="2 network"):
        CLCSTrainer("cpu", 1, _data(), nets, _opts(nets), DALELoss(), discrepancy="none")


def test_status_counts_in_the_trainer_match_the_vote():
    nets = _convs()
    data = _data(n=1)
    trainer = CLCSTrainer("cpu", 1, data, nets, _opts(nets, torch.optim.SGD, lr=0.0), DALELoss(),
                          discrepancy="none", curriculum=ClassCurriculum(num_classes=2, tau=0.6))
    trainer.run()
    x, y = data[0]["image"], data[0]["label"]
    vote = sum(class_probabilities(copy.deepcopy(net)(x)) for net in nets) / 2
    assert torch.equal(trainer.curriculum.counts, status_counts(vote, y[:, 0].long(), 0.6))
