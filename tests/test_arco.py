"""ARCO: the stratified sampler, the memory banks, the contrastive loss by hand, the trainer's iteration and resume."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.networks.nets import UNet
from torch.utils.data import DataLoader

from dale_monai.arco import (
    ClassMemoryBank,
    arco_contrastive_loss,
    class_probabilities,
    class_targets,
    entropy_masks,
    pixel_contrastive_loss,
    strata_of,
    stratified_indices,
)
from dale_monai.engines import ARCOKeys, ARCOTrainer
from dale_monai.handlers import LastCheckpoint
from dale_monai.losses import DALELoss
from dale_monai.semisup import ema_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------- sampler
def test_strata_are_grid_blocks_of_the_index_list():
    # 16 indices on a 4 x 4 grid cut 2 x 2: blocks of 2 rows and 2 columns
    assert strata_of(16, cuts=2).view(4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    # 10 indices: side 4, the last row holds 2 indices; every index has a stratum
    assert strata_of(10, cuts=2).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(("n", "count"), [(1000, 256), (1000, 20), (37, 100), (5, 3), (1, 4), (900, 0)])
def test_stratified_sampler_covers_every_stratum_and_draws_the_count(n, count):
    torch.manual_seed(0)
    idx = stratified_indices(n, count, cuts=4)
    assert idx.shape == (count,) and idx.dtype == torch.long
    assert count == 0 or (0 <= int(idx.min()) and int(idx.max()) < n)
    strata = strata_of(n, 4)
    present = torch.unique(strata)
    per = torch.bincount(strata[idx], minlength=16)[present]
    # the draws are spread over the non-empty strata as evenly as possible
    assert int(per.sum()) == count
    assert int(per.min()) == count // len(present) and int(per.max()) <= count // len(present) + 1
    if count >= len(present):
        assert bool((per > 0).all())


def test_stratified_sampler_is_seeded_and_draws_within_strata_uniformly():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(stratified_indices(500, 64, generator=g1), stratified_indices(500, 64, generator=g2))
    # 100 indices, 4 strata of 25 (cuts 2, side 10, blocks of 5 x 5): many draws reach every index of every stratum
    torch.manual_seed(1)
    idx = stratified_indices(100, 40000, cuts=2)
    counts = torch.bincount(idx, minlength=100).float()
    assert bool((counts > 0).all()) and float(counts.std() / counts.mean()) < 0.1
    with pytest.raises(ValueError, match="n and cuts"):
        stratified_indices(0, 4)
    with pytest.raises(ValueError, match="count"):
        stratified_indices(4, -1)


# --------------------------------------------------------------------------------------------- memory bank
def test_memory_bank_is_bounded_first_in_first_out_and_restores():
    bank = ClassMemoryBank(capacity=100, background_capacity=150)
    pushed = torch.arange(3 * 60 * 2, dtype=torch.float32).view(180, 2)
    for part in pushed.split(60):
        bank.push(1, part)
        bank.push(0, part)
    assert bank.get(1).shape == (100, 2) and torch.equal(bank.get(1), pushed[-100:])  # the newest, oldest first
    assert bank.get(0).shape == (150, 2) and torch.equal(bank.get(0), pushed[-150:])
    assert len(bank) == 250 and bank.get(2) is None
    bank.push(1, torch.zeros(500, 2))  # one push larger than the capacity keeps its last entries
    assert bank.get(1).shape == (100, 2)
    other = ClassMemoryBank(capacity=100, background_capacity=150)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.get(0), bank.get(0)) and torch.equal(other.get(1), bank.get(1))
    with pytest.raises(ValueError, match="capacities"):
        ClassMemoryBank(capacity=10).load_state_dict(bank.state_dict())
    with pytest.raises(ValueError, match="2-wide"):
        bank.push(1, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="capacity"):
        ClassMemoryBank(capacity=0)


# --------------------------------------------------------------------------------------------- loss
def test_pixel_contrastive_loss_by_hand():
    anchors = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([1.0, 0.0])
    negatives = torch.tensor([[[0.0, 3.0], [-1.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]])
    # cosines: anchor 1: +1, (0, -1); anchor 2: 0, (1, 1/sqrt 2); tau 0.5 doubles them
    l1 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-2)))
    l2 = -math.log(1 / (1 + math.exp(2) + math.exp(2 / math.sqrt(2))))
    got = pixel_contrastive_loss(anchors, positive, negatives, temperature=0.5)
    assert float(got) == pytest.approx((l1 + l2) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        pixel_contrastive_loss(anchors, positive, negatives, temperature=0.0)
    with pytest.raises(ValueError, match="expected anchors"):
        pixel_contrastive_loss(anchors, positive, negatives[:1])


def test_class_probabilities_targets_and_entropy_masks():
    logits = torch.tensor([[[[0.0, 2.0]]]])  # one channel: foreground probabilities 0.5 and σ(2)
    p = class_probabilities(logits)
    assert p.shape == (1, 2, 1, 2) and torch.allclose(p.sum(1), torch.ones(1, 1, 2))
    assert class_targets(torch.tensor([[[[0.0, 1.0]]]])).tolist() == [[[0, 1]]]
    assert class_targets(torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])).tolist() == [[[0, 1]]]
    low, high = entropy_masks(p, 0.0)
    assert low.tolist() == [[[False, True]]] and high.tolist() == [[[True, False]]]  # p = 0.5 is the most uncertain
    with pytest.raises(ValueError, match="percent"):
        entropy_masks(p, 120)


def test_arco_loss_on_a_tiny_example_by_hand():
    """One image of two pixels, one per class. Student features [1, 0] (class 0) and [0, 1] (class 1); teacher
    features [1, 1] and [-1, 1]. With α = 100 % every pixel is in both entropy masks, so class 0's anchor is [1, 0],
    its prototype [1, 1] (cos 1/√2) and both its M = 2 negatives the teacher feature of the class-1 pixel [-1, 1]
    (cos -1/√2): ℓ_0 = log(1 + 2·exp(-√2/τ)); class 1: anchor [0, 1], prototype [-1, 1] and twice the negative
    [1, 1], all at cos 1/√2: ℓ_1 = log 3. Every draw of the sampler is the one candidate, so the value is exact."""
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2).requires_grad_(True)
    teacher = torch.tensor([[1.0, 1.0], [-1.0, 1.0]]).T.reshape(1, 2, 1, 2)
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9]]).T.reshape(1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    bank = ClassMemoryBank(capacity=10, background_capacity=10)
    loss, classes = arco_contrastive_loss(student, teacher, probs, labels, bank, percent=100.0, temperature=0.5,
                                          anchors_per_class=3, negatives_per_anchor=2)
    expected = (math.log(1 + 2 * math.exp(-math.sqrt(2) / 0.5)) + math.log(3)) / 2
    assert classes == 2 and float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert torch.equal(bank.get(0), torch.tensor([[-1.0, 1.0]])) and torch.equal(bank.get(1), torch.tensor([[1.0, 1.0]]))
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


def test_arco_loss_without_negatives_is_a_connected_zero_and_resamples_to_the_features():
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    probs = torch.zeros(2, 2, 8, 8)
    probs[:, 0] = 1.0  # one class everywhere: no negative for it, no anchor for the other
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    loss, classes = arco_contrastive_loss(student, student.detach(), probs, labels, ClassMemoryBank())
    assert classes == 0
    loss.backward()
    assert student.grad is not None and float(loss.detach()) == 0.0
    with pytest.raises(ValueError, match="inconsistent shapes"):
        arco_contrastive_loss(student, student.detach(), probs, labels[:1], ClassMemoryBank())


# --------------------------------------------------------------------------------------------- trainer
def _net(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(2, 1, 1, channels=(4, 8), strides=(2,), num_res_units=0, norm="batch")


def _data(n: int, labelled: bool) -> list[dict]:
    g = torch.Generator().manual_seed(7 if labelled else 8)
    items = []
    for _ in range(n):
        image = torch.rand(1, 16, 16, generator=g)
        item = {"image": image}
        if labelled:
            item["label"] = (image > 0.5).float()
        items.append(item)
    return items


def _trainer(epochs: int, **kw) -> ARCOTrainer:
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    return ARCOTrainer("cpu", epochs, DataLoader(_data(4, True), batch_size=2, shuffle=True), [net], [opt],
                       DALELoss(dice_weight=1.0), unlabeled_data_loader=DataLoader(_data(6, False), batch_size=2,
                                                                                   shuffle=True),
                       teacher=ema_teacher(net), **{"anchors_per_class": 8, "negatives_per_anchor": 4, **kw})


def test_arco_iteration_adds_the_weighted_contrastive_loss_and_fills_the_banks():
    torch.manual_seed(0)
    trainer = _trainer(1, contrast_weight=0.5)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output[0])))
    trainer.run()
    assert len(seen) == 2
    for out in seen:
        assert out[ARCOKeys.CONTRAST_CLASSES] == 2 and float(out[ARCOKeys.LOSS_CONTRAST]) > 0
        # the student's loss: supervised + w·consistency + k1·L_contra
        total = out["loss_sup"] + out["unsup_weight"] * out["loss_unsup"] + 0.5 * out[ARCOKeys.LOSS_CONTRAST]
        assert float(out["loss"]) == pytest.approx(float(total), rel=1e-5)
    assert seen[0][ARCOKeys.ENTROPY_PERCENT] == 20.0 and seen[1][ARCOKeys.ENTROPY_PERCENT] == 10.0
    # the pre-head features of this two-level UNet are channels[0] + channels[1] = 12 wide
    assert trainer.memory_bank.get(0).shape[1] == 12 and trainer.memory_bank.get(1) is not None
    assert "memory_bank" in trainer.checkpoint_objects()


@pytest.mark.parametrize(("kw", "match"), [
    (dict(temperature=0.0), "temperature"), (dict(anchors_per_class=0), "anchors_per_class"),
    (dict(entropy_percent=101), "entropy_percent"), (dict(entropy_length=0), "entropy_length"), (dict(memory_bank={}), "ClassMemoryBank"),
    (dict(feature_layer="nothing.here"), "not a submodule"),
])
def test_arco_bad_options_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        _trainer(1, **kw)


def test_arco_checkpoint_must_hold_the_memory_bank(tmp_path):
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    teacher = ema_teacher(net)
    ckpt = LastCheckpoint(tmp_path, {"model": net, "optimizer": opt, "teacher": teacher})
    with pytest.raises(ValueError, match="memory_bank"):
        ARCOTrainer("cpu", 1, DataLoader(_data(2, True), batch_size=2), [net], [opt], DALELoss(),
                    unlabeled_data_loader=DataLoader(_data(2, False), batch_size=2), teacher=teacher,
                    train_handlers=[ckpt])


def test_arco_resume_is_bit_identical_banks_included(tmp_path):
    def make(epochs, resume, folder):
        torch.manual_seed(0)
        trainer = _trainer(epochs, epoch_length=3, rampup_length=6, entropy_length=6)
        LastCheckpoint(folder, trainer.checkpoint_objects(), resume=resume).attach(trainer)
        torch.manual_seed(5)
        return trainer

    straight = make(3, False, tmp_path / "a")
    straight.run()
    make(1, False, tmp_path / "b").run()
    resumed = make(3, True, tmp_path / "b")
    resumed.run()
    assert resumed.state.iteration == straight.state.iteration == 9
    for a, b in ((straight.networks[0], resumed.networks[0]), (straight.teacher, resumed.teacher)):
        assert all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), b.state_dict().values()))
    for c in (0, 1):
        assert torch.equal(straight.memory_bank.get(c), resumed.memory_bank.get(c))
