"""The last checkpoint of a training run, written atomically, and resuming from it."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Mapping

import torch
from ignite.engine import Engine, Events

__all__ = ["LastCheckpoint"]

logger = logging.getLogger(__name__)


class LastCheckpoint:
    """Save the training state after every epoch to one file, and optionally resume from it.

    The engine itself is added to ``save_dict`` at ``attach`` time (a bundle config cannot reference the
    trainer from inside the trainer's own handler list), so epoch and iteration are restored too. The file
    is written to a temporary name and renamed, so an interrupted write never leaves a corrupt checkpoint.

    Args:
        save_dir: directory of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict`` (model, optimizer, LR scheduler, ...).
        filename: file name inside ``save_dir``.
        resume: at ``Events.STARTED``, load the checkpoint if it exists (weights only, no pickled code).
    """

    def __init__(self, save_dir: str | os.PathLike, save_dict: Mapping, filename: str = "checkpoint_last.pt",
                 resume: bool = False) -> None:
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.resume = bool(resume)
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        """Save at every ``EPOCH_COMPLETED``; load at ``STARTED`` when resuming."""
        self._engine = engine
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _objects(self) -> dict:
        return {**self.save_dict, "trainer": self._engine}

    def __call__(self, engine: Engine) -> None:
        state = {k: v.state_dict() for k, v in self._objects().items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def load(self, engine: Engine) -> None:
        """Restore every object from the checkpoint, if resuming and the file exists."""
        if not self.resume:
            return
        if not self.path.is_file():
            logger.info(f"no checkpoint at {self.path}: starting from scratch")
            return
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt or foreign file must not start a silent fresh run
            raise RuntimeError(f"cannot resume from {self.path}: {e}") from e
        missing = [k for k in self._objects() if k not in state]
        if missing:
            raise RuntimeError(f"cannot resume from {self.path}: it holds no {missing} (has {sorted(state)})")
        max_epochs = engine.state.max_epochs
        for key, obj in self._objects().items():
            obj.load_state_dict(state[key])
        # the checkpoint carries the old run's max_epochs; this run's setting decides how far to go
        if engine.state.epoch > max_epochs:
            raise ValueError(f"{self.path} is at epoch {engine.state.epoch}, beyond max_epochs={max_epochs} of this run")
        engine.state.max_epochs = max_epochs
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")
