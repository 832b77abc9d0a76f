"""The last checkpoint of a training run, written atomically, and resuming from it."""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["LastCheckpoint", "capture_rng_state", "check_checkpoint_covers", "find_random_states", "restore_rng_state"]

logger = logging.getLogger(__name__)

_RNG_KEY = "rng"


def find_random_states(objects: Sequence[Any]) -> list[np.random.RandomState]:
    """The numpy ``RandomState`` of every random transform reachable from ``objects``, each once, in a fixed order.

    From each object the walk follows a DataLoader's ``dataset``, a dataset's ``transform``, the
    ``data_loaders`` of an object that draws from several (:class:`~dale_monai.engines.PairedBatches`), a Compose's
    ``transforms`` and the attributes of a transform that are transforms themselves (e.g. the inner ``Flip`` of
    ``RandFlipd``), and collects every ``R`` attribute that is a ``RandomState`` (MONAI ``Randomizable``). A
    ``RandomState`` given directly is taken as is. Shared states (MONAI's class-level default ``R``) appear once.

    Args:
        objects: DataLoaders, datasets, Compose or single transforms, or ``RandomState`` objects.
    """
    states: list[np.random.RandomState] = []
    seen: set[int] = set()

    def children(obj: Any) -> Iterator[Any]:
        for name in ("dataset", "transform"):
            child = getattr(obj, name, None)
            if child is not None:
                yield child
        loaders = getattr(obj, "data_loaders", None)  # several loaders behind one (the semi-supervised trainers)
        if isinstance(loaders, (list, tuple)):
            yield from loaders
        transforms = getattr(obj, "transforms", None)
        if isinstance(transforms, (list, tuple)):
            yield from transforms
        if isinstance(getattr(obj, "R", None), np.random.RandomState):
            # a transform's own sub-transforms (RandFlipd.flipper, RandAffined.rand_affine, ...)
            for value in vars(obj).values():
                if isinstance(getattr(value, "R", None), np.random.RandomState) or hasattr(value, "transforms"):
                    yield value

    def walk(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        state = obj if isinstance(obj, np.random.RandomState) else getattr(obj, "R", None)
        if isinstance(state, np.random.RandomState) and id(state) not in seen:
            seen.add(id(state))
            states.append(state)
        if not isinstance(obj, np.random.RandomState):
            for child in children(obj):
                walk(child)

    for obj in objects:
        walk(obj)
    return states


def _numpy_state(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached = state
    # tensors and plain numbers only, so that the checkpoint loads with weights_only=True
    return {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_tuple(state: Mapping) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
            state["cached_gaussian"])


def capture_rng_state(random_states: Sequence[np.random.RandomState] = ()) -> dict:
    """Python ``random``, numpy's global, torch CPU (and CUDA) generators and ``random_states``, as tensors.

    Args:
        random_states: further numpy ``RandomState`` objects (see :func:`find_random_states`).
    """
    version, internal, gauss_next = random.getstate()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": _numpy_state(np.random.get_state(legacy=True)),
        "torch": torch.get_rng_state(),
        "transforms": [_numpy_state(rs.get_state(legacy=True)) for rs in random_states],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping, random_states: Sequence[np.random.RandomState] = (), source: str = "") -> None:
    """Inverse of :func:`capture_rng_state`.

    Args:
        state: what :func:`capture_rng_state` returned.
        random_states: the same ``RandomState`` objects, in the same order, as at capture.
        source: the checkpoint's name, for error messages.
    """
    saved = state["transforms"]
    if len(saved) != len(random_states):
        raise RuntimeError(
            f"cannot resume from {source}: it holds the states of {len(saved)} random transforms, but the training "
            f"pipeline now has {len(random_states)}; resume with the same transforms, or pass rng_objects=[] "
            "to restore only the global generators."
        )
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["internal"].tolist()), python["gauss_next"]))
    np.random.set_state(_numpy_tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    for rs, s in zip(random_states, saved):
        rs.set_state(_numpy_tuple(s))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            logger.warning(f"{source} holds {len(state['cuda'])} CUDA generator states for "
                           f"{torch.cuda.device_count()} devices: CUDA generators not restored")


class LastCheckpoint:
    """Save the training state after every epoch to one file, and optionally resume from it.

    The engine itself is added to ``save_dict`` at ``attach`` time (a bundle config cannot reference the
    trainer from inside the trainer's own handler list), so epoch and iteration are restored too. The file
    is written to a temporary name and renamed, so an interrupted write never leaves a corrupt checkpoint.

    With ``save_rng=True`` the checkpoint also holds the random generators (Python, numpy, torch CPU and CUDA,
    and the ``R`` of every random transform of ``rng_objects``), so a run killed at any point and resumed
    continues exactly as the uninterrupted run with the same seed: the shuffled order of the next epoch is
    drawn from the restored torch generator when its DataLoader iterator is created. For that the state is
    saved after every other ``EPOCH_COMPLETED`` handler (validation, epoch-level LR schedulers, ...): the save
    is registered when the run starts, behind the handlers attached before. Random numbers drawn by
    ``STARTED`` handlers attached after this one are not covered.

    Args:
        save_dir: directory of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict`` (model, optimizer, LR scheduler, ...).
        filename: file name inside ``save_dir``.
        resume: at ``Events.STARTED``, load the checkpoint if it exists (weights only, no pickled code).
        save_rng: save and restore the random generators.
        rng_objects: where to find the random transforms (DataLoaders, datasets, Compose, transforms; see
            :func:`find_random_states`); ``None`` walks the engine's ``data_loader`` (a MONAI trainer's training
            data), ``[]`` restores the global generators only.
    """

    def __init__(self, save_dir: str | os.PathLike, save_dict: Mapping, filename: str = "checkpoint_last.pt",
                 resume: bool = False, save_rng: bool = True, rng_objects: Sequence[Any] | None = None) -> None:
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.resume = bool(resume)
        self.save_rng = bool(save_rng)
        self.rng_objects = None if rng_objects is None else list(rng_objects)
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        """Load at ``STARTED`` when resuming, then save at every ``EPOCH_COMPLETED`` after the other handlers."""
        self._engine = engine
        engine.add_event_handler(Events.STARTED, self._started)

    def _started(self, engine: Engine) -> None:
        self.load(engine)
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _objects(self) -> dict:
        return {**self.save_dict, "trainer": self._engine}

    def _random_states(self) -> list[np.random.RandomState]:
        if self.rng_objects is not None:
            return find_random_states(self.rng_objects)
        loader = getattr(self._engine, "data_loader", None)
        return find_random_states([loader]) if loader is not None else []

    def __call__(self, engine: Engine) -> None:
        state = {k: v.state_dict() for k, v in self._objects().items()}
        if self.save_rng:
            state[_RNG_KEY] = capture_rng_state(self._random_states())
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
        """Restore every object (and the random generators) from the checkpoint, if resuming and it exists."""
        if not self.resume:
            return
        # temporary files of a write killed midway (SIGKILL skips the cleanup in __call__)
        for stale in self.path.parent.glob(f".{self.path.name}.*"):
            logger.info(f"removing {stale}, left by an interrupted checkpoint write")
            stale.unlink(missing_ok=True)
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
            raise ValueError(
                f"{self.path} is at epoch {engine.state.epoch}, beyond max_epochs={max_epochs} of this run"
            )
        engine.state.max_epochs = max_epochs
        if self.save_rng:
            if _RNG_KEY in state:
                restore_rng_state(state[_RNG_KEY], self._random_states(), source=str(self.path))
            else:
                logger.warning(f"{self.path} holds no random generator states: the resumed run will not repeat "
                               "the uninterrupted one exactly")
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")


def check_checkpoint_covers(handlers: Sequence[Any] | None, objects: Mapping[str, Any], owner: str) -> None:
    """Refuse a :class:`LastCheckpoint` among ``handlers`` that would not save every one of ``objects``.

    A trainer with several networks and optimizers (or a weight network) resumes exactly only if the checkpoint
    holds all of them; a ``save_dict`` naming just the first network would silently restart the others from
    scratch. Objects are matched by identity, whatever their names in ``save_dict``. A ``LastCheckpoint`` wrapped
    by :class:`~dale_monai.distributed.ResumeOnly` (ranks other than 0) is checked as well.

    Args:
        handlers: a trainer's ``train_handlers`` (``None``: nothing to check).
        objects: name → object the trainer needs saved (e.g. its ``checkpoint_objects()``).
        owner: the trainer, named in the error.

    Raises:
        ValueError: naming the objects missing from a ``LastCheckpoint``'s ``save_dict``.
    """
    for handler in handlers or ():
        ckpt = handler if isinstance(handler, LastCheckpoint) else getattr(handler, "checkpoint", None)
        if not isinstance(ckpt, LastCheckpoint):
            continue
        saved = {id(v) for v in ckpt.save_dict.values()}
        missing = [name for name, obj in objects.items() if id(obj) not in saved]
        if missing:
            raise ValueError(
                f"{owner}: the LastCheckpoint writing {ckpt.path} would not save {missing}: a resumed run would start "
                f"them from scratch. Add them to its save_dict (it has {sorted(ckpt.save_dict)}), e.g. "
                + ", ".join(f"'{name}'" for name in missing) + "."
            )
