"""Small handlers: progress bar values and the atomic, resumable last checkpoint."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from dale_monai.handlers import LastCheckpoint, ProgressBarHandler


def test_progress_bar_reads_dict_and_decollated_outputs():
    bar = ProgressBarHandler(output_keys=("loss", "omega_mean", "absent"))
    assert bar._values({"loss": torch.tensor(0.5), "omega_mean": 1.0}) == {"loss": 0.5, "omega_mean": 1.0}
    assert bar._values([{"loss": torch.tensor(0.25)}, {"loss": torch.tensor(0.25)}]) == {"loss": 0.25}
    assert bar._values(None) == {}
    engine = Engine(lambda e, b: {"loss": torch.tensor(1.0)})
    bar.attach(engine)
    engine.run([0, 1], max_epochs=1)


def _engine(model, opt):
    def step(engine, batch):
        opt.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        opt.step()

    return Engine(step)


def test_last_checkpoint_saves_every_epoch_and_resumes(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = _engine(model, opt)
    LastCheckpoint(tmp_path, {"model": model, "optimizer": opt}).attach(engine)
    engine.run([0, 1, 2], max_epochs=2)
    path = tmp_path / "checkpoint_last.pt"
    state = torch.load(path, weights_only=True)
    assert state["trainer"]["iteration"] == 6 and state["trainer"]["epoch_length"] == 3
    assert not list(tmp_path.glob(".checkpoint_last.pt.*")), "no temporary file may remain"

    model2 = torch.nn.Linear(2, 1)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    engine2 = _engine(model2, opt2)
    LastCheckpoint(tmp_path, {"model": model2, "optimizer": opt2}, resume=True).attach(engine2)
    seen = []
    engine2.add_event_handler(Events.STARTED, lambda e: seen.append((e.state.epoch, e.state.iteration)))
    engine2.run([0, 1, 2], max_epochs=3)
    # resumed at epoch 2: only the third epoch ran
    assert engine2.state.iteration == 9
    torch.testing.assert_close(model2.weight, model.weight - 0.1 * 3 * torch.ones_like(model.weight))


def test_resume_without_checkpoint_starts_fresh_and_corrupt_file_fails_loudly(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = _engine(model, opt)
    LastCheckpoint(tmp_path, {"model": model}, resume=True).attach(engine)
    engine.run([0], max_epochs=1)
    (tmp_path / "checkpoint_last.pt").write_bytes(b"not a checkpoint")
    engine = _engine(model, opt)
    LastCheckpoint(tmp_path, {"model": model}, resume=True).attach(engine)
    try:
        engine.run([0], max_epochs=1)
    except RuntimeError as e:
        assert "checkpoint_last.pt" in str(e)
    else:
        raise AssertionError("a corrupt checkpoint must not start a silent fresh run")
