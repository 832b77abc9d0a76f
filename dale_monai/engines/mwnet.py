"""MetaReweightTrainer: per-pixel loss weights learned on a small clean set (MW-Net; learning to re-weight)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events, EventEnum
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..handlers.checkpoint import check_checkpoint_covers
from ..meta import METHODS, logits_of, network_closures, virtual_norm_mode
from ..mwnet import WeightNet, l2rw_weights, weight_net_gradient
from ..feature_layers import unwrap_model
from .multi_network import pixel_loss_map, weighted_loss
from .dale import NonFiniteError
from ..distributed import all_reduce_mean, all_reduce_sum, is_distributed

__all__ = ["MetaReweightTrainer", "MetaReweightKeys", "RULES", "META_SECTION_HINT"]

RULES = ("mwnet", "l2rw")

#: what to tell a user whose data have no clean meta set
META_SECTION_HINT = (
    "write one with the dataset's converter: `python -m data_prep covid_semiseg ... --meta-count N` (radiologist-"
    "labelled slices), `python -m data_prep synthetic ... --n-meta N`, or `python -m data_prep noise ... "
    "--meta-fraction F` (clean labels of part of the training set, kept out of the noise)"
)


class MetaReweightKeys:
    """Keys of ``engine.state.output`` written by :class:`MetaReweightTrainer`."""

    WEIGHT_MEAN = "weight_mean"  # mean per-pixel weight of the real step (L2RW: 1 by construction)
    WEIGHT_ZERO = "weight_frac_zero"  # share of pixels with weight 0 (L2RW drops pixels; MW-Net's sigmoid never)
    WEIGHT = "weight"  # the per-pixel weights (B, 1, *spatial)


class MetaReweightTrainer(SupervisedTrainer):
    """Meta re-weighting with a small clean set as a MONAI trainer: MW-Net (default) or learning to re-weight.

    Each iteration takes one batch of the (noisy) training data and one of the clean ``meta_data_loader``:

    1. the network forwards the training batch (MONAI's ``FORWARD_COMPLETED``), giving the per-pixel loss ℓ
       (the loss function's ``pixel_map``);
    2. ``rule="mwnet"`` (Shu et al., NeurIPS 2019): the weight network V (:class:`dale_monai.mwnet.WeightNet`)
       maps ℓ (detached) to weights; the meta loss of the clean batch after a differentiable virtual SGD step
       on mean(V(ℓ) ⊙ ℓ) updates V through ``meta_optimizer`` (:func:`dale_monai.mwnet.weight_net_gradient`,
       exact, reusing the ω meta step's machinery); the weights of the real step are those of the updated V.
       ``rule="l2rw"`` (Ren et al., ICML 2018): w = max(−g, 0) normalised over the batch, g the meta gradient at
       ε = 0 (:func:`dale_monai.mwnet.l2rw_weights`); the weights are scaled to mean 1 (so the step minimises
       Σ_k w_k·ℓ_k as in the paper);
    3. the real step minimises the loss function with these per-pixel weights (``LOSS_COMPLETED``,
       ``BACKWARD_COMPLETED``, then ``MODEL_COMPLETED``, as in ``SupervisedTrainer``).

    The virtual passes are functional calls that write nothing into the network (BatchNorm running statistics
    included, :func:`dale_monai.meta.virtual_norm_mode`). The meta batches come from a fresh iterator of
    ``meta_data_loader`` at every epoch (restarted when exhausted within one), so a run resumed from an
    epoch-end checkpoint draws the same meta batches as an uninterrupted one; the meta pipeline's own random
    transforms, if any, are not in the checkpoint's random states (keep it deterministic, as the bundles do).

    Cost per iteration, measured against MONAI's standard trainer on the default bundle's network (CPU,
    ``benchmarks/results/paradigms_speed.md``): MW-Net 4.6× (the virtual step, the meta batch's forward and
    backward at the virtual parameters, a forward-mode product of the training loss map, the weight network on
    every pixel: O(pixels × ``hidden_features``) memory), L2RW 3.1× (no virtual step, no weight network).

    **Checkpoints.** :meth:`checkpoint_objects` names what to save: ``model``, ``optimizer`` and, for MW-Net,
    ``weight_net`` and ``meta_optimizer``; a ``LastCheckpoint`` among ``train_handlers`` that misses one is
    refused. **Several processes:** the network is DDP-wrapped as usual; the virtual step and the meta
    gradient use the gradients of the global batch (averaged), the weight network's gradient is summed over the
    processes and its parameters are broadcast from rank 0 when the run starts, so every process keeps the same V.

    Example::

        trainer = MetaReweightTrainer(device, max_epochs, loader, net, opt, DALELoss(), meta_data_loader=clean)

    Args:
        device, max_epochs, train_data_loader, network, optimizer, epoch_length, non_blocking, prepare_batch,
            iteration_update, inferer, postprocessing, key_train_metric, additional_metrics, metric_cmp_fn,
            train_handlers, amp, event_names, event_to_attr, decollate, optim_set_to_none, to_kwargs,
            amp_kwargs: as in :class:`monai.engines.SupervisedTrainer`.
        loss_function: per-pixel loss, as for :class:`~dale_monai.engines.DALETrainer`: ``pixel_map`` gives ℓ
            (and the meta loss is the full loss of the clean batch).
        meta_data_loader: the clean meta set's loader (e.g. a bundle datalist's ``meta`` section), batches in the
            format of the training batches.
        rule: ``"mwnet"`` or ``"l2rw"``.
        weight_net: V for MW-Net; default ``WeightNet(100)``. Moved to ``device``. Unused by L2RW.
        meta_optimizer: the optimizer of V; default Adam(lr 1e-3, weight decay 1e-4), as in MW-Net's code.
        meta_method: how MW-Net's meta gradient is differentiated through the virtual step: one of
            :data:`dale_monai.meta.METHODS` (``"jvp"``, exact and fast, default; ``"double_backward"``, the
            reference).
        inner_lr: η of the virtual step; ``None`` reads the optimizer's current learning rate (first parameter
            group) every iteration, as MW-Net does.
        clip_grad_norm: if set, clip the network's gradient norm to this value before its step.

    Raises:
        ValueError: an unknown ``rule`` or ``meta_method``, ``inner_lr`` or ``clip_grad_norm`` <= 0, a missing or
            empty ``meta_data_loader`` (naming the ``data_prep`` options that write a meta set), a
            ``meta_optimizer`` that does not update ``weight_net``, or a ``LastCheckpoint`` that would not save
            every object of :meth:`checkpoint_objects`.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        meta_data_loader: Iterable | DataLoader | None = None,
        rule: str = "mwnet",
        weight_net: nn.Module | None = None,
        meta_optimizer: Optimizer | None = None,
        meta_method: str = "jvp",
        inner_lr: float | None = None,
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
        if rule not in RULES:
            raise ValueError(f"{owner}: rule must be one of {RULES}, got {rule!r}")
        if meta_method not in METHODS:
            raise ValueError(f"{owner}: meta_method must be one of {METHODS}, got {meta_method!r}")
        if inner_lr is not None and not inner_lr > 0:
            raise ValueError(f"{owner}: inner_lr must be > 0 or None, got {inner_lr!r}")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"{owner}: clip_grad_norm must be > 0 or None, got {clip_grad_norm!r}")
        if meta_data_loader is None:
            raise ValueError(f"{owner}: meta_data_loader is required (a small set with clean labels); "
                             f"{META_SECTION_HINT}")
        if hasattr(meta_data_loader, "__len__") and len(meta_data_loader) == 0:
            raise ValueError(f"{owner}: meta_data_loader is empty; {META_SECTION_HINT}")
        if rule == "mwnet":
            weight_net = WeightNet() if weight_net is None else weight_net
            if meta_optimizer is None:
                meta_optimizer = torch.optim.Adam(weight_net.parameters(), lr=1e-3, weight_decay=1e-4)
            own = {id(p) for p in weight_net.parameters()}
            params = [p for g in meta_optimizer.param_groups for p in g["params"]]
            if not params or any(id(p) not in own for p in params):
                raise ValueError(f"{owner}: meta_optimizer must update the parameters of weight_net")
        extra = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
            optimizer=optimizer, loss_function=loss_function, epoch_length=epoch_length, non_blocking=non_blocking,
            prepare_batch=prepare_batch, iteration_update=iteration_update, inferer=inferer,
            postprocessing=postprocessing, key_train_metric=key_train_metric, additional_metrics=additional_metrics,
            train_handlers=train_handlers, amp=amp, event_names=event_names, event_to_attr=event_to_attr,
            decollate=decollate, optim_set_to_none=optim_set_to_none, to_kwargs=to_kwargs, amp_kwargs=amp_kwargs,
            **extra,
        )
        self.meta_data_loader = meta_data_loader
        self.rule = rule
        self.weight_net = None if weight_net is None else weight_net.to(self.state.device)
        self.meta_optimizer = meta_optimizer
        self.meta_method = meta_method
        self.inner_lr = inner_lr
        self.clip_grad_norm = clip_grad_norm
        self._meta_iter = None
        check_checkpoint_covers(train_handlers, self.checkpoint_objects(), owner)
        self.add_event_handler(Events.STARTED, self._sync_weight_net)
        self.add_event_handler(Events.EPOCH_STARTED, self._restart_meta)

    def checkpoint_objects(self) -> dict[str, Any]:
        """``model`` (unwrapped from DDP), ``optimizer`` and, for MW-Net, ``weight_net`` and ``meta_optimizer``."""
        out: dict[str, Any] = {"model": unwrap_model(self.network), "optimizer": self.optimizer}
        if self.rule == "mwnet":
            out.update(weight_net=self.weight_net, meta_optimizer=self.meta_optimizer)
        return out

    # ----------------------------------------------------------------------------------------- meta data
    def _sync_weight_net(self, engine: MetaReweightTrainer) -> None:
        if self.weight_net is not None and is_distributed():
            for p in self.weight_net.parameters():
                dist.broadcast(p.data, src=0)

    def _restart_meta(self, engine: MetaReweightTrainer) -> None:
        self._meta_iter = None  # created at the first meta batch of the epoch

    def next_meta_batch(self, engine: MetaReweightTrainer) -> tuple[Tensor, Tensor]:
        """The next clean (inputs, targets), on the device; the loader restarts when exhausted."""
        if self._meta_iter is None:
            self._meta_iter = iter(self.meta_data_loader)
        try:
            batch = next(self._meta_iter)
        except StopIteration:
            self._meta_iter = iter(self.meta_data_loader)
            batch = next(self._meta_iter)
        prepared = engine.prepare_batch(batch, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        return prepared[0], prepared[1]

    # ----------------------------------------------------------------------------------------- the meta step
    def sample_weights(self, engine: MetaReweightTrainer, loss_map: Tensor, inputs: Tensor, targets: Tensor,
                       meta_inputs: Tensor, meta_targets: Tensor) -> Tensor:
        """Per-pixel weights of the real step, ``loss_map``'s shape (MW-Net also updates the weight network).

        Args:
            loss_map: ℓ at the current parameters, with its graph (kept for the real step).
            inputs, targets: the training batch.
            meta_inputs, meta_targets: the clean meta batch.
        """
        net = unwrap_model(engine.network)
        pixel_fn, meta_fn = network_closures(
            net, inputs, lambda out: pixel_loss_map(self.loss_function, out, targets),
            meta_inputs, lambda out: weighted_loss(self.loss_function, out, meta_targets, None),
        )
        distributed = is_distributed()
        world = dist.get_world_size() if distributed else 1
        params = dict(net.named_parameters())
        with virtual_norm_mode(net):
            if self.rule == "l2rw":
                w = l2rw_weights(params, pixel_fn, meta_fn, grad_reducer=all_reduce_mean if distributed else None,
                                 sum_reducer=all_reduce_sum if distributed else None)
                return w * (w.numel() * world)  # Σ_global w·ℓ = mean over the global batch of (N·w)·ℓ
            eta = self.inner_lr if self.inner_lr is not None else float(engine.optimizer.param_groups[0]["lr"])
            grads, _ = weight_net_gradient(loss_map, self.weight_net, params, pixel_fn, meta_fn, eta,
                                           self.meta_method, grad_reducer=all_reduce_mean if distributed else None,
                                           world_size=world)
        self.meta_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.weight_net.parameters(), grads):
            p.grad = g
        self.meta_optimizer.step()
        with torch.no_grad():
            return self.weight_net(loss_map.detach()).to(loss_map.dtype)

    # ----------------------------------------------------------------------------------------- iteration
    def _check_finite(self, engine: MetaReweightTrainer, value: Tensor, term: str) -> None:
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteError(
                f"{term} became non-finite at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
                "training stopped before the optimizer step, so the weights and the last checkpoint are still "
                "finite. Check the inputs of this batch (NaN/Inf intensities) or lower the learning rate."
            )

    def _forward(self, engine: MetaReweightTrainer, inputs: Tensor) -> Tensor:
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                return logits_of(engine.inferer(inputs, engine.network))
        return logits_of(engine.inferer(inputs, engine.network))

    def _iteration(self, engine: MetaReweightTrainer, batchdata: dict[str, Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        meta_inputs, meta_targets = self.next_meta_batch(engine)
        engine.state.output = out = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        try:
            pred = self._forward(engine, inputs)
            out[Keys.PRED] = pred.detach()
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss_map = pixel_loss_map(self.loss_function, pred, targets)
            self._check_finite(engine, loss_map.detach(), "the training loss map")
            weight = self.sample_weights(engine, loss_map, inputs, targets, meta_inputs, meta_targets)
        except torch.OutOfMemoryError as e:
            raise torch.OutOfMemoryError(
                f"out of memory in iteration {engine.state.iteration} (epoch {engine.state.epoch}) of the meta "
                "re-weighting step: it holds the training batch's graph, the meta batch's and the weight network's "
                "activations on every pixel. Reduce the batch size (--batch_size), the input size (--spatial_size) "
                f"or the networks' width, or enable AMP (--amp true) on a GPU. Original error: {e}"
            ) from e
        self._check_finite(engine, weight, "the per-pixel weights (meta step)")
        out[MetaReweightKeys.WEIGHT] = weight
        out[MetaReweightKeys.WEIGHT_MEAN] = float(weight.mean())
        out[MetaReweightKeys.WEIGHT_ZERO] = float((weight == 0).float().mean())
        loss = weighted_loss(self.loss_function, pred, targets, weight)
        out[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self._check_finite(engine, loss.detach(), "the weighted training loss")
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if self.clip_grad_norm is not None:
                engine.scaler.unscale_(engine.optimizer)
                nn.utils.clip_grad_norm_(engine.network.parameters(), self.clip_grad_norm)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            grads = [p.grad.detach().norm() for p in engine.network.parameters() if p.grad is not None]
            if grads:
                self._check_finite(engine, torch.stack(grads), "the gradient of the weighted loss")
            if self.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(engine.network.parameters(), self.clip_grad_norm)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output  # decollated by MODEL_COMPLETED, as in SupervisedTrainer
