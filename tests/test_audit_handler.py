"""``CaseStatsHandler``: per-case loss (and DALE's ω) recorded during training by any MONAI trainer."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from audit_fixtures import TINY, bundle_copy, make_dataset
from monai.engines import SupervisedTrainer

from dale_monai.audit import BundleTraining, training_cases
from dale_monai.handlers import CaseStatsHandler
from dale_monai.handlers.case_stats import pixel_loss, read_case_stats, summarise_case_stats

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pixel_loss_binary_and_multiclass():
    logits = torch.tensor([[[[4.0, -4.0]]]])  # (1, 1, 1, 2)
    label = torch.tensor([[[[1.0, 1.0]]]])
    loss = pixel_loss(logits, label)
    assert loss.shape == (1, 1, 2) and loss[0, 0, 1] > loss[0, 0, 0]
    logits3 = torch.zeros(1, 3, 1, 2)
    logits3[0, 2] = 5.0
    idx = torch.tensor([[[[2.0, 0.0]]]])
    out = pixel_loss(logits3, idx)
    assert out[0, 0, 0] < out[0, 0, 1]
    onehot = torch.nn.functional.one_hot(idx[:, 0].long(), 3).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(pixel_loss(logits3, onehot), out)


def test_supervised_trainer_records_every_case_every_epoch(tmp_path):
    """On its own, attached to a plain ``SupervisedTrainer``: a mislabelled sample keeps the highest loss."""
    torch.manual_seed(0)
    x = torch.zeros(6, 1, 8, 8)
    x[:, :, 2:6, 2:6] = 1.0
    y = (x > 0.5).float()
    y[4] = 1 - y[4]  # the wrong label
    data = [{"image": x[i], "label": y[i], "case": f"s{i}"} for i in range(6)]
    loader = torch.utils.data.DataLoader(data, batch_size=3, shuffle=True)
    net = torch.nn.Conv2d(1, 1, 1)
    trainer = SupervisedTrainer(device="cpu", max_epochs=20, train_data_loader=loader, network=net,
                                optimizer=torch.optim.Adam(net.parameters(), 0.1),
                                loss_function=torch.nn.BCEWithLogitsLoss())
    stats = CaseStatsHandler(output_file=tmp_path / "stats.csv")
    stats.attach(trainer)
    trainer.run()
    assert len(stats.records) == 6 * 20
    summary = stats.summary()
    assert set(summary) == {f"s{i}" for i in range(6)} and all(s["n"] == 20 for s in summary.values())
    assert max(summary, key=lambda c: summary[c]["loss"]) == "s4"
    assert all(math.isnan(s["omega_mean"]) for s in summary.values())
    rows = list(csv.DictReader(open(tmp_path / "stats.csv")))
    assert len(rows) == 120 and {r["epoch"] for r in rows} == {str(e) for e in range(1, 21)}
    assert summarise_case_stats(read_case_stats([tmp_path / "stats.csv"]))["s4"]["loss"] == pytest.approx(
        summary["s4"]["loss"], rel=1e-6)


def test_dale_trainer_records_omega_through_the_bundle(tmp_path):
    """Through a bundle's own DALE training config: cases named by their image files, ω over fuzzy pixels."""
    datalist = make_dataset(tmp_path / "data", n=4)
    bundle = bundle_copy(tmp_path)
    cases, _ = training_cases(datalist)
    # the Wasserstein handler needs a feature layer, which a 1x1 convolution has none of
    training = BundleTraining(bundle, overrides={**TINY, "num_epochs": 2, "train#dale_handlers": []})
    parser = training.parser([{"image": c["image"], "label": c["label"]} for c in cases], cases[:1],
                             tmp_path / "work", seed=0)
    stats = training.train(parser, tmp_path / "stats.csv")
    summary = stats.summary()
    assert set(summary) == {c["image"] for c in cases}  # no case key: the image's filename_or_obj names it
    assert all(s["n"] == 2 for s in summary.values())
    assert all(0.0 <= s["omega_below_1"] <= 1.0 and math.isfinite(s["omega_mean"]) for s in summary.values())
    assert (tmp_path / "stats.csv").is_file()


def test_unnamed_cases_are_an_error():
    net = torch.nn.Conv2d(1, 1, 1)
    data = [{"image": torch.zeros(1, 4, 4), "label": torch.zeros(1, 4, 4)}]
    trainer = SupervisedTrainer(device="cpu", max_epochs=1, network=net, loss_function=torch.nn.BCEWithLogitsLoss(),
                                train_data_loader=torch.utils.data.DataLoader(data, batch_size=1),
                                optimizer=torch.optim.SGD(net.parameters(), 0.1))
    CaseStatsHandler().attach(trainer)
    with pytest.raises(KeyError, match="cannot name the cases"):
        trainer.run()
