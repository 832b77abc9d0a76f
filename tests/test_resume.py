"""A training run killed with SIGKILL and resumed from LastCheckpoint ends with the uninterrupted run's weights."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.transforms import Compose, RandAffined, RandFlipd, RandRotate90d

from dale_monai.handlers import LastCheckpoint
from dale_monai.handlers import checkpoint as checkpoint_module
from dale_monai.handlers.checkpoint import capture_rng_state, find_random_states, restore_rng_state

REPO = Path(__file__).resolve().parents[1]

# A tiny DALE run: 6 random 16x16 images, batch 2 (3 iterations per epoch), shuffled DataLoader, MONAI random
# flips/rot90 plus a transform drawing from Python's and numpy's global generators, FuzzyPartitiond, a UNet with
# dropout, Adam, an epoch-level StepLR and the Wasserstein alignment on the global torch generator.
SCRIPT = textwrap.dedent(
    """
    import random, sys, time
    from pathlib import Path

    import numpy as np
    import torch
    from ignite.engine import Events
    from monai.data import CacheDataset, DataLoader
    from monai.handlers import LrScheduleHandler
    from monai.networks.nets import UNet
    from monai.transforms import Compose, Lambdad, RandFlipd, RandRotate90d
    from monai.utils import set_determinism

    from dale_monai.engines import DALETrainer
    from dale_monai.handlers import LastCheckpoint, WassersteinAlignment
    from dale_monai.handlers import checkpoint as checkpoint_module
    from dale_monai.losses import DALELoss
    from dale_monai.meta import OmegaMetaStep
    from dale_monai.transforms import FuzzyPartitiond

    out, epochs, mode, at = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    set_determinism(seed=0)

    def hang(reason):
        (out / "ready").write_text(reason)  # the parent kills this process once the file appears
        time.sleep(600)

    g = torch.Generator().manual_seed(1)
    data = [{"image": torch.rand(1, 16, 16, generator=g),
             "label": (torch.rand(1, 16, 16, generator=g) > 0.6).float()} for _ in range(6)]
    jitter = lambda x: x * (1 + 0.01 * random.random()) + 0.01 * float(np.random.rand())
    transform = Compose([
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
        RandRotate90d(["image", "label"], prob=0.5),
        Lambdad("image", jitter),
        FuzzyPartitiond(["image", "label"], patch_size=4, bins=32),
    ])
    loader = DataLoader(CacheDataset(data, transform, progress=False), batch_size=2, shuffle=True)
    net = UNet(2, 1, 1, (4, 8), (2,), num_res_units=1, norm="batch", dropout=0.2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    handlers = [
        LastCheckpoint(out / "ckpt", {"model": net, "optimizer": opt, "scheduler": sched}, resume=True),
        LrScheduleHandler(sched, print_lr=False),  # attached after the checkpoint, steps at EPOCH_COMPLETED
        WassersteinAlignment(alpha=0.1),
    ]
    trainer = DALETrainer("cpu", epochs, loader, net, opt, DALELoss(), omega_step=OmegaMetaStep(),
                          train_handlers=handlers)
    if mode == "kill_in_epoch":
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=at), lambda e: hang("iteration"))
    elif mode == "kill_in_save":
        save = checkpoint_module.torch.save

        def partial_save(obj, f):
            if trainer.state.epoch == at:
                Path(f).write_bytes(b"PK half a checkpoint")
                hang("save")
            save(obj, f)

        checkpoint_module.torch.save = partial_save
    trainer.run()
    torch.save(net.state_dict(), out / "weights.pt")
    """
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(out: Path, mode: str = "plain", at: int = 0, epochs: int = 3) -> None:
    """Run the tiny training in a subprocess; with a kill ``mode``, SIGKILL it once it reaches ``at``."""
    out.mkdir(parents=True, exist_ok=True)
    script = out.parent / "train_tiny.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(epochs), mode, str(at)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if mode == "plain":
        log, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, log
        return
    ready = out / "ready"
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ready.unlink()


def _weights(out: Path) -> dict:
    return torch.load(out / "weights.pt", weights_only=True)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ from the uninterrupted run: {different}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    _run(out)
    return _weights(out)


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    _run(out, "kill_in_epoch", at=5)  # iteration 5 of 9: the middle of epoch 2
    assert not (out / "weights.pt").exists()
    ckpt = torch.load(out / "ckpt" / "checkpoint_last.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 3  # end of epoch 1
    assert ckpt["scheduler"]["last_epoch"] == 1, "the checkpoint must be written after the epoch's LR step"
    _run(out)
    _assert_same(uninterrupted, _weights(out))


def test_sigkill_during_the_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, uninterrupted):
    out = tmp_path / "killed_in_save"
    _run(out, "kill_in_save", at=2)  # killed while writing the checkpoint of epoch 2
    ckpt_dir = out / "ckpt"
    assert [p.name for p in ckpt_dir.glob(".checkpoint_last.pt.*")], "the half-written temporary file is there"
    ckpt = torch.load(ckpt_dir / "checkpoint_last.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 3, "the checkpoint of epoch 1 must be intact"
    _run(out)  # resumes from epoch 1, repeats epoch 2
    assert not list(ckpt_dir.glob(".checkpoint_last.pt.*")), "resuming removes the leftover temporary file"
    _assert_same(uninterrupted, _weights(out))


def test_failed_write_leaves_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)
    ckpt = LastCheckpoint(tmp_path, {"model": model})
    ckpt.attach(engine)
    engine.run([0], max_epochs=1)
    before = (tmp_path / "checkpoint_last.pt").read_bytes()

    def broken_save(obj, f):
        Path(f).write_bytes(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(OSError, match="disk full"):
        ckpt(engine)
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == before
    assert not list(tmp_path.glob(".checkpoint_last.pt.*"))


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    affine = RandAffined(["image"], prob=0.5, rotate_range=0.1)
    pipeline = Compose([RandFlipd(["image"], prob=0.5), affine, RandRotate90d(["image"], prob=0.5)])
    pipeline.set_random_state(seed=3)
    states = find_random_states([pipeline])
    # the dictionary transform's own state and that of the array transform inside it, each once
    assert any(s is affine.R for s in states) and any(s is affine.rand_affine.R for s in states)
    assert len(states) == len({id(s) for s in states}) >= 4

    def draw():
        return (random.random(), float(np.random.rand()), torch.rand(3), [float(s.rand()) for s in states])

    path = tmp_path / "rng.pt"
    torch.save(capture_rng_state(states), path)
    first = draw()
    second = draw()
    assert first[0] != second[0] and first[1] != second[1] and not torch.equal(first[2], second[2])
    restore_rng_state(torch.load(path, weights_only=True), states, source=str(path))
    again = draw()
    assert again[0] == first[0] and again[1] == first[1] and torch.equal(again[2], first[2]) and again[3] == first[3]
    with pytest.raises(RuntimeError, match="random transforms"):
        restore_rng_state(torch.load(path, weights_only=True), states[:1], source=str(path))


def test_shuffled_dataloader_order_follows_the_restored_torch_generator():
    loader = torch.utils.data.DataLoader(list(range(10)), batch_size=10, shuffle=True)
    state = capture_rng_state()
    order = next(iter(loader))
    assert not torch.equal(next(iter(loader)), order)
    restore_rng_state(state)
    assert torch.equal(next(iter(loader)), order)
