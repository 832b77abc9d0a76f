"""Load a bundle's weights safely and completely, or stop with a message naming the file and the bundle.

The bundles' ``CheckpointLoader`` handler loads with ``weights_only=True`` and ``strict=True`` and accepts a plain
``state_dict`` or a dict with a ``model`` entry; this does the same before any case is predicted, so a missing,
foreign or mismatched checkpoint can never leave a randomly initialised network producing masks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["CheckpointError", "load_weights"]


class CheckpointError(RuntimeError):
    """The checkpoint is missing, unsafe to load, or does not fit the bundle's network."""


def _shown(items: list[str], limit: int = 5) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_weights(network: torch.nn.Module, path: str | os.PathLike, bundle: str,
                 map_location: str | torch.device | None = None) -> None:
    """Load the ``state_dict`` at ``path`` into ``network``: every key, every shape.

    Args:
        network: the bundle's network.
        path: a ``torch.save`` file holding a ``state_dict``, or a dict with the ``state_dict`` under ``model``
            (the bundles' ``checkpoint_last.pt``).
        bundle: the bundle's name or folder, quoted in errors.
        map_location: where tensors are loaded.

    Raises:
        CheckpointError: when the file is missing, cannot be loaded with ``weights_only=True``, holds no
            ``state_dict``, or its keys or shapes differ from the network's (listing which).
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(
            f"bundle {bundle}: checkpoint {file} does not exist. Train the bundle first (python -m monai.bundle run "
            f"training --config_file {bundle}/configs/train.json), or give the weights with --checkpoint FILE."
        )
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for pickled objects, RuntimeError for damaged zips, ...
        raise CheckpointError(
            f"bundle {bundle}: checkpoint {file} cannot be loaded with torch.load(weights_only=True): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (expected a state_dict saved with "
            "torch.save; TorchScript files and pickled models are refused)"
        ) from e
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"bundle {bundle}: checkpoint {file} holds no state_dict (got {type(state).__name__})")
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_shown(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_shown(unexpected)}")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatch(es) (checkpoint vs network): {_shown(shapes)}")
        raise CheckpointError(
            f"bundle {bundle}: checkpoint {file} does not fit the bundle's network ({'; '.join(problems)}). Was it "
            "trained with another bundle or other network settings? A bundle trained with overrides of its network "
            "(e.g. --network_def#channels \"[8, 16, 32, 64]\") needs the same ones here."
        )
    network.load_state_dict(state, strict=True)
