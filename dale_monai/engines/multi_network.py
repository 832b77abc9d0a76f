"""MultiNetworkTrainer: MONAI's SupervisedTrainer for paradigms that train several networks on each batch.

Co-teaching, TriNet (and later co-training paradigms) train N networks together: every network sees the same
batch, a paradigm-specific rule turns their per-pixel losses into one loss per network, and every network takes
one optimizer step. This base holds what they share (several networks and optimizers, MONAI's iteration
events, AMP, gradient clipping, non-finite checks, checkpoint coverage); a paradigm overrides
:meth:`MultiNetworkTrainer.network_losses` and nothing else.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Sequence

import torch
from ignite.engine import Engine, EventEnum
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..handlers.checkpoint import check_checkpoint_covers
from ..meta import logits_of
from ..feature_layers import unwrap_model
from .dale import NonFiniteError

__all__ = ["MultiNetworkTrainer", "MultiNetworkKeys", "optimizer_like", "pixel_loss_map", "weighted_loss"]


class MultiNetworkKeys:
    """Keys of ``engine.state.output`` written by :class:`MultiNetworkTrainer` and its subclasses.

    ``Keys.LOSS`` is the mean of the networks' losses, ``Keys.PRED`` the prediction of network 0.
    """

    KEEP_RATIO = "keep_ratio"  # r(t) of small-loss selection (Co-teaching, TriNet)

    @staticmethod
    def loss(index: int) -> str:
        """Key of network ``index``'s loss (the scalar its optimizer minimised)."""
        return f"loss_{index}"

    @staticmethod
    def selected(index: int) -> str:
        """Key of the share of the batch's pixels network ``index`` was trained on."""
        return f"selected_{index}"


def pixel_loss_map(loss_function: Callable, pred: Tensor, target: Tensor) -> Tensor:
    """Per-pixel loss map ``(B, 1, *spatial)``: ``loss_function.pixel_map`` if it has one, else the callable itself.

    Half-precision (AMP) logits are scored in float32.
    """
    pred = pred if pred.dtype in (torch.float32, torch.float64) else pred.float()
    return getattr(loss_function, "pixel_map", loss_function)(pred, target)


def weighted_loss(loss_function: Callable, pred: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Scalar loss with per-pixel weights, in :class:`dale_monai.losses.DALELoss`'s convention.

    A loss with ``pixel_map`` (DALELoss, the robust losses) is called as ``loss(pred, target, weight=weight)``:
    mean(weight ⊙ map) plus its weighted region term. Any other callable must return a per-pixel map, reduced
    as mean(weight ⊙ map).
    """
    pred = pred if pred.dtype in (torch.float32, torch.float64) else pred.float()
    if hasattr(loss_function, "pixel_map"):
        return loss_function(pred, target, weight=weight)
    loss_map = loss_function(pred, target)
    return (loss_map if weight is None else loss_map * weight).mean()


def optimizer_like(optimizer: Optimizer, network: nn.Module) -> Optimizer:
    """A new optimizer of ``optimizer``'s class and settings over ``network``'s parameters.

    For bundle configs that add networks: ``{"_target_": "dale_monai.engines.optimizer_like", "optimizer":
    "@optimizer", "network": "@network_1"}`` follows whatever optimizer the bundle (or its overrides) chose.

    Args:
        optimizer: the template; its constructor settings (``optimizer.defaults``) are reused.
        network: the network whose parameters the new optimizer updates.

    Raises:
        ValueError: when ``optimizer`` has several parameter groups (their settings cannot be mapped onto
            another network's parameters: build those optimizers yourself).
    """
    if len(optimizer.param_groups) != 1:
        raise ValueError(f"optimizer_like: {type(optimizer).__name__} has {len(optimizer.param_groups)} parameter "
                         "groups; build the optimizer of each network yourself")
    cls = type(optimizer)
    accepted = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        settings = dict(optimizer.defaults)
    else:  # some record more than their constructor takes (AdamW: decoupled_weight_decay)
        settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return cls(network.parameters(), **settings)


class MultiNetworkTrainer(SupervisedTrainer):
    """Several networks and optimizers trained together on each batch, as one MONAI ``SupervisedTrainer``.

    Each iteration: every network forwards the batch (MONAI's ``FORWARD_COMPLETED``), :meth:`network_losses`
    turns their predictions into one loss per network (``LOSS_COMPLETED``), one backward pass of their sum
    (``BACKWARD_COMPLETED``), then every optimizer steps and ``MODEL_COMPLETED`` decollates the output, so
    StatsHandler, TensorBoard, ValidationHandler, CheckpointSaver and LR-schedule handlers work as with
    ``SupervisedTrainer``. This base trains every network on its own full loss (independent networks);
    paradigms override :meth:`network_losses` only.

    **Which network is the model.** ``networks[0]`` is ``self.network``: the one a bundle validates, saves as
    ``models/model.pt`` (best validation Dice) and runs in ``inference.json``, so MONAI Label, ``python -m
    dale_monai predict`` and ``ckpt_export`` use it unchanged. The other networks exist for training only.

    **Checkpoints.** Every network and optimizer must be saved for a resumed run to continue exactly: give them
    all to :class:`~dale_monai.handlers.LastCheckpoint`'s ``save_dict`` (e.g. ``model``, ``optimizer``,
    ``model_1``, ``optimizer_1``; :meth:`checkpoint_objects` builds that dictionary), as MONAI's multi-network
    ``GanTrainer`` does with ``CheckpointSaver``. A ``LastCheckpoint`` among ``train_handlers`` that misses one
    is refused at construction.

    **Several processes.** Wrap each network in ``DistributedDataParallel`` (in a bundle, the network
    definitions follow ``@network`` through :func:`dale_monai.distributed.network_like`); gradients of every
    network are then averaged, and each process computes its losses (and selections) on its shard of the batch.

    ``engine.state.output`` carries ``Keys.LOSS`` (mean of the networks' losses), ``Keys.PRED`` (network 0),
    each network's loss (:meth:`MultiNetworkKeys.loss`) and whatever the paradigm adds.

    Args:
        device, max_epochs, train_data_loader, epoch_length, non_blocking, prepare_batch, iteration_update,
            inferer, postprocessing, key_train_metric, additional_metrics, metric_cmp_fn, train_handlers, amp,
            event_names, event_to_attr, decollate, optim_set_to_none, to_kwargs, amp_kwargs: as in
            :class:`monai.engines.SupervisedTrainer`.
        networks: the networks, ``networks[0]`` being the model (see above); distinct objects.
        optimizers: one optimizer per network, ``optimizers[i]`` updating ``networks[i]`` only.
        loss_function: per-pixel loss: an object with ``pixel_map(pred, target)`` and ``forward(pred, target,
            weight=None)`` (:class:`dale_monai.losses.DALELoss`, :mod:`dale_monai.robust_losses`), or a callable
            returning a map ``(B, 1, *spatial)``.
        clip_grad_norm: if set, clip each network's gradient norm to this value before its step.

    Raises:
        ValueError: for a network count the paradigm does not support, a missing or misassigned optimizer,
            the same network given twice, ``clip_grad_norm <= 0``, or a ``LastCheckpoint`` that would not save
            every network and optimizer.
    """

    #: the number of networks the paradigm trains (``None``: any number >= 1)
    num_networks: int | None = None

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        networks: Sequence[nn.Module],
        optimizers: Sequence[Optimizer],
        loss_function: Callable,
        clip_grad_norm: float | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        inferer=None,
        postprocessing=None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        owner = type(self).__name__
        networks, optimizers = list(networks), list(optimizers)
        self._check_networks(owner, networks, optimizers)
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"{owner}: clip_grad_norm must be > 0 or None, got {clip_grad_norm!r}")
        extra = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=networks[0],
            optimizer=optimizers[0],
            loss_function=loss_function,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            inferer=inferer,
            postprocessing=postprocessing,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            train_handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
            **extra,
        )
        self.networks = networks
        self.optimizers = optimizers
        self.clip_grad_norm = clip_grad_norm
        check_checkpoint_covers(train_handlers, self.checkpoint_objects(), owner)

    # ----------------------------------------------------------------------------------------- construction
    def _check_networks(self, owner: str, networks: list, optimizers: list) -> None:
        n = self.num_networks
        if not networks or (n is not None and len(networks) != n):
            raise ValueError(f"{owner}: networks must hold {n if n is not None else 'at least 1'} network(s), "
                             f"got {len(networks)}")
        if len(optimizers) != len(networks):
            raise ValueError(f"{owner}: optimizers must hold one optimizer per network ({len(networks)}), "
                             f"got {len(optimizers)}")
        inner = [unwrap_model(net) for net in networks]
        for i, net in enumerate(inner):
            for j in range(i):
                if net is inner[j]:
                    raise ValueError(
                        f"{owner}: networks {j} and {i} are the same object; each needs its own instance (in a "
                        "bundle config, copy the definition with '%network_def')")
        for i, (net, opt) in enumerate(zip(inner, optimizers)):
            own = {id(p) for p in net.parameters()}
            params = [p for group in opt.param_groups for p in group["params"]]
            foreign = [p for p in params if id(p) not in own]
            if not params or foreign:
                other = next((j for j, o in enumerate(inner) if any(id(p) in {id(q) for q in o.parameters()}
                                                                    for p in foreign)), None)
                where = f" (they belong to networks[{other}])" if other is not None else ""
                raise ValueError(f"{owner}: optimizers[{i}] must update the parameters of networks[{i}], but "
                                 f"{len(foreign) if params else 'none'} of its parameters are not "
                                 f"networks[{i}]'s{where}; build it with dale_monai.engines.optimizer_like(optimizer, "
                                 f"network)")

    def checkpoint_objects(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume this trainer: ``model``/``optimizer`` (network 0, unwrapped from
        DDP, and its optimizer, the names the bundles use) and ``model_i``/``optimizer_i`` for the others."""
        out: dict[str, Any] = {}
        for i, (net, opt) in enumerate(zip(self.networks, self.optimizers)):
            suffix = "" if i == 0 else f"_{i}"
            out[f"model{suffix}"] = unwrap_model(net)
            out[f"optimizer{suffix}"] = opt
        return out

    # ----------------------------------------------------------------------------------------- the paradigm
    def network_losses(self, engine: MultiNetworkTrainer, preds: list[Tensor], targets: Tensor) -> list[Tensor]:
        """One scalar loss per network; the paradigm's rule. This base: each network's own full loss.

        Args:
            engine: this trainer (``engine.state.output`` may receive statistics).
            preds: the networks' logits ``(B, C, *spatial)``, in the order of ``networks``, with their graphs.
            targets: the batch's labels.

        Returns:
            a list of scalars, entry i depending on ``networks[i]`` only.
        """
        return [weighted_loss(self.loss_function, pred, targets, None) for pred in preds]

    # ----------------------------------------------------------------------------------------- iteration
    def _forward(self, engine: MultiNetworkTrainer, network: nn.Module, inputs: Tensor, args: tuple,
                 kwargs: dict) -> Tensor:
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                return logits_of(engine.inferer(inputs, network, *args, **kwargs))
        return logits_of(engine.inferer(inputs, network, *args, **kwargs))

    def _check_finite(self, engine: MultiNetworkTrainer, value: Tensor, term: str) -> None:
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteError(
                f"{term} became non-finite at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
                "training stopped before the optimizer step, so the weights and the last checkpoint are still "
                "finite. Check the inputs of this batch (NaN/Inf intensities) or lower the learning rate."
            )

    def _backward_and_step(self, engine: MultiNetworkTrainer, losses: list[Tensor]) -> None:
        for i, loss in enumerate(losses):
            self._check_finite(engine, loss.detach(), f"the loss of network {i}")
        # one backward of the sum: each loss depends on its own network only (selections are detached)
        total = torch.stack([loss.reshape(()) for loss in losses]).sum()
        scaler = engine.scaler if engine.amp else None
        if scaler is not None:
            scaler.scale(total).backward()
        else:
            total.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        for i, (net, opt) in enumerate(zip(self.networks, self.optimizers)):
            if scaler is not None:
                if self.clip_grad_norm is not None:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(net.parameters(), self.clip_grad_norm)
                scaler.step(opt)  # skips the step itself when AMP found Inf/NaN gradients
                continue
            grads = [p.grad.detach().norm() for p in net.parameters() if p.grad is not None]
            if grads:
                self._check_finite(engine, torch.stack(grads), f"the gradient of network {i}")
            if self.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(net.parameters(), self.clip_grad_norm)
            opt.step()
        if scaler is not None:
            scaler.update()

    def _iteration(self, engine: MultiNetworkTrainer, batchdata: dict[str, Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        for net in self.networks:
            net.train()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=engine.optim_set_to_none)
        try:
            preds = [self._forward(engine, net, inputs, args, kwargs) for net in self.networks]
        except torch.OutOfMemoryError as e:
            raise torch.OutOfMemoryError(
                f"out of memory in iteration {engine.state.iteration} (epoch {engine.state.epoch}) of "
                f"{type(self).__name__}: it holds the activations of {len(self.networks)} networks at once. Reduce "
                f"the batch size (--batch_size), the input size (--spatial_size) or the networks' width, or enable "
                f"AMP (--amp true) on a GPU. Original error: {e}"
            ) from e
        out = engine.state.output
        out[Keys.PRED] = preds[0].detach()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        losses = self.network_losses(engine, preds, targets)
        if len(losses) != len(self.networks):
            raise RuntimeError(f"{type(self).__name__}.network_losses returned {len(losses)} losses for "
                               f"{len(self.networks)} networks")
        for i, loss in enumerate(losses):
            out[MultiNetworkKeys.loss(i)] = loss.detach()
        out[Keys.LOSS] = torch.stack([loss.detach().reshape(()) for loss in losses]).mean()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self._backward_and_step(engine, losses)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output  # decollated by MODEL_COMPLETED, as in SupervisedTrainer
