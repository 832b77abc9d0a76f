"""What a bundle's ``multi_gpu_train.json`` calls under ``torchrun``: device, process group, DDP, rank handlers.

``torchrun --nproc_per_node=N`` starts N processes with ``LOCAL_RANK``/``RANK``/``WORLD_SIZE`` set. Each one
trains on its shard of every batch (``DistributedSampler``); ``DistributedDataParallel`` averages the real
gradients and :class:`~dale_monai.engines.DALETrainer` averages the ω meta step's non-fuzzy gradient itself.
Only rank 0 writes logs, progress bars and checkpoints (:func:`handlers_for_rank`); every rank still runs the
handlers that compute something (validation, the Wasserstein term, checkpoint loading, LR schedules, metric
gathering).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

if TYPE_CHECKING:  # imported where used: the handlers import the engines, which import this module
    from .handlers.checkpoint import LastCheckpoint

__all__ = ["is_distributed", "all_reduce_mean", "all_reduce_sum", "local_device", "init_distributed", "distributed_network", "network_like", "handlers_for_rank",
           "ResumeOnly", "OUTPUT_ONLY_HANDLERS", "shard_sampler"]

#: class names of handlers that only write output (logs, bars, files); dropped on ranks other than 0
OUTPUT_ONLY_HANDLERS = (
    "StatsHandler",
    "TensorBoardStatsHandler",
    "TensorBoardImageHandler",
    "ProgressBarHandler",
    "CheckpointSaver",
)


def is_distributed() -> bool:
    """True inside a process group of more than one process (``torchrun`` with ``--nproc_per_node`` > 1)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(tensors: Sequence[torch.Tensor | None]) -> None:
    """Average each tensor in place over the process group (``None`` entries, e.g. unused parameters' gradients,
    are skipped). The paradigms' meta and virtual steps use it for the gradients that DDP does not average
    because they are taken with ``torch.autograd.grad`` rather than ``backward``."""
    world = dist.get_world_size()
    for t in tensors:
        if t is not None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(world)


def all_reduce_sum(t: torch.Tensor) -> None:
    """Sum a tensor in place over the process group (normalisers such as learning-to-reweight's weight sum)."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM)


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU (``LOCAL_RANK`` defaults to 0)."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(device: torch.device | str, timeout_s: float | None = None) -> int:
    """Initialise the default process group from torchrun's environment: NCCL on GPUs, gloo on the CPU.

    Args:
        device: this process's device (:func:`local_device`); CUDA devices also become the current device.
        timeout_s: collective timeout in seconds (None: PyTorch's default).

    Returns:
        this process's rank.

    Raises:
        RuntimeError: when not started by torchrun (no ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` environment).
    """
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"multi_gpu_train.json must be started by torchrun (environment lacks {missing}), e.g. "
                "torchrun --nproc_per_node=2 -m monai.bundle run training --config_file "
                "\"['configs/train.json','configs/multi_gpu_train.json']\""
            )
        device = torch.device(device)
        kwargs = {}
        if timeout_s is not None:
            from datetime import timedelta

            kwargs["timeout"] = timedelta(seconds=timeout_s)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", **kwargs)
    return dist.get_rank()


def distributed_network(
    network: nn.Module, device: torch.device | str, find_unused_parameters: bool = False
) -> nn.parallel.DistributedDataParallel:
    """Move ``network`` to ``device`` and wrap it in ``DistributedDataParallel``.

    Args:
        network: the bundle's ``network_def``.
        device: this process's device.
        find_unused_parameters: needed by networks with parameters outside the forward path (U-Net++ without deep
            supervision keeps three unused heads).
    """
    device = torch.device(device)
    network = network.to(device)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(network, device_ids=ids, find_unused_parameters=find_unused_parameters)


def network_like(network: nn.Module, reference: nn.Module, device: torch.device | str) -> nn.Module:
    """Place ``network`` as ``reference`` is placed: on ``device``, and in ``DistributedDataParallel`` (with the same
    ``find_unused_parameters``) when ``reference`` is.

    The further networks of a multi-network paradigm (Co-teaching, TriNet) follow the bundle's ``@network``
    with it, so their overlay works alone and under ``multi_gpu_train.json`` alike.

    Args:
        network: a further network definition (e.g. ``%network_def``, a copy of the bundle's).
        reference: the bundle's ``@network``, possibly DDP-wrapped.
        device: this process's device.
    """
    if isinstance(reference, nn.parallel.DistributedDataParallel):
        return distributed_network(network, device, bool(reference.find_unused_parameters))
    return network.to(device)


class ResumeOnly:
    """The loading half of a :class:`~dale_monai.handlers.checkpoint.LastCheckpoint`: resumes, never writes.

    Ranks other than 0 must resume from the same checkpoint as rank 0 (DDP broadcasts the weights only when it
    wraps the network) but must not write it concurrently.

    Args:
        checkpoint: the rank-0 handler whose file and objects to load.
    """

    def __init__(self, checkpoint: LastCheckpoint) -> None:
        self.checkpoint = checkpoint

    def attach(self, engine: Engine) -> None:
        """Load at ``STARTED`` when the checkpoint resumes."""
        self.checkpoint._engine = engine
        engine.add_event_handler(Events.STARTED, self.checkpoint.load)


def shard_sampler(dataset, shuffle: bool = True):
    """A ``DistributedSampler`` giving each process its shard of ``dataset`` when a process group of more than one
    process is running, else ``None`` (the DataLoader's own ``shuffle`` then applies).

    For loaders that a bundle's ``multi_gpu_train.json`` does not know about (the unlabelled loader of the
    semi-supervised overlays): ``"sampler": {"_target_": "dale_monai.distributed.shard_sampler", "dataset":
    "@unlabeled#dataset"}`` with ``"shuffle": "$@unlabeled#sampler is None"``. Every shard has the same length
    (``even_divisible``), so the processes run the same number of iterations; the semi-supervised trainers set the
    sampler's epoch.

    Args:
        dataset: the dataset to shard.
        shuffle: shuffle within the sampler (a fresh permutation at every epoch).
    """
    if not is_distributed():
        return None
    from monai.data import DistributedSampler

    return DistributedSampler(dataset, even_divisible=True, shuffle=shuffle)


def handlers_for_rank(handlers: Sequence | None, rank: int | None = None) -> list:
    """The handlers one process attaches: all of them on rank 0; elsewhere, those that compute, not write.

    Dropped on other ranks: :data:`OUTPUT_ONLY_HANDLERS`; a ``LastCheckpoint`` becomes :class:`ResumeOnly`.
    Kept: everything else (``ValidationHandler``, ``WassersteinAlignment``, ``CheckpointLoader``, LR schedulers,
    ``MetricsSaver``, which gathers across ranks and writes on rank 0 itself).

    Args:
        handlers: a bundle's handler list (None: no handlers).
        rank: this process's rank; default: the process group's, or 0 without one.
    """
    handlers = list(handlers or [])
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank == 0:
        return handlers
    from .handlers.checkpoint import LastCheckpoint

    out = []
    for h in handlers:
        if isinstance(h, LastCheckpoint):
            out.append(ResumeOnly(h))
        elif type(h).__name__ not in OUTPUT_ONLY_HANDLERS:
            out.append(h)
    return out

