"""SemiSupervisedTrainer: one labelled and one unlabelled batch per iteration, as a MONAI trainer.

The base of the semi-supervised paradigms (mean teacher, cross pseudo supervision, fixed + dynamic pseudo-labels,
DALE on pseudo-labels). It owns the two loaders, the epoch length, the ramp-up of the unsupervised weight and the
exact resume; a paradigm overrides :meth:`SemiSupervisedTrainer.semi_supervised_losses` (one loss per network,
one optimizer step each, as :class:`~dale_monai.engines.MultiNetworkTrainer`) or, for several steps per
iteration, :meth:`SemiSupervisedTrainer.train_step`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from ignite.engine import Engine, Events, EventEnum
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, DistributedSampler

from ..semisup import sigmoid_rampup
from .multi_network import MultiNetworkKeys, MultiNetworkTrainer, weighted_loss

__all__ = ["SemiSupervisedTrainer", "SemiSupervisedKeys", "PairedBatches", "UNLABELED_SECTION_HINT", "EPOCH_LENGTHS"]

#: what to tell a user whose data have no unlabelled images
UNLABELED_SECTION_HINT = (
    "write an 'unlabeled' section ({\"image\": ...} entries) with the dataset's converter: `python -m data_prep "
    "covid_semiseg ... --unlabeled pseudo` (the 1,600 pseudo-labelled images without their masks), `python -m "
    "data_prep ph2|folder ... --labeled-fraction F` or `python -m data_prep synthetic ... --labeled-fraction F` "
    "(keeps F of the training labels and lists the other training images as unlabelled)"
)

#: named epoch lengths: one pass over the labelled or over the unlabelled loader
EPOCH_LENGTHS = ("labeled", "unlabeled")


class SemiSupervisedKeys:
    """Keys of ``engine.state.output`` written by :class:`SemiSupervisedTrainer` and its subclasses."""

    LOSS_SUP = "loss_sup"  # supervised loss on the labelled batch (mean over the networks)
    LOSS_UNSUP = "loss_unsup"  # unsupervised loss on the unlabelled batch, before its weight (mean over networks)
    UNSUP_WEIGHT = "unsup_weight"  # the ramped-up weight of the unsupervised loss at this iteration


class PairedBatches:
    """``length`` pairs (labelled batch, unlabelled batch) per pass, each loader cycled on its own.

    Every pass (``iter()``, i.e. every epoch of the trainer) starts fresh iterators of both loaders, created at
    its first batch, and a loader exhausted within a pass is restarted (a new shuffle). So the positions of both
    loaders at an epoch boundary are "at the start", and a run resumed from an epoch-end checkpoint (which holds
    the random generators the shuffles are drawn from) draws exactly the batches of an uninterrupted run,
    whatever the epoch length. :class:`~dale_monai.handlers.LastCheckpoint` finds the random transforms of both
    pipelines through :attr:`data_loaders`.

    Args:
        labeled: the labelled loader.
        unlabeled: the unlabelled loader.
        length: pairs per pass (> 0).
    """

    def __init__(self, labeled: Iterable, unlabeled: Iterable, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"PairedBatches: length must be an integer >= 1, got {length!r}")
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.length = length

    @property
    def data_loaders(self) -> tuple[Iterable, Iterable]:
        """The labelled and the unlabelled loader."""
        return self.labeled, self.unlabeled

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._pairs()

    def _pairs(self) -> Iterator[tuple[Any, Any]]:
        # a generator: nothing (no loader iterator, no random number) is created before the first batch
        iterators: list[Iterator | None] = [None, None]
        for _ in range(self.length):
            yield tuple(self._next(i, iterators) for i in range(2))  # type: ignore[misc]

    def _next(self, i: int, iterators: list[Iterator | None]) -> Any:
        loader = self.data_loaders[i]
        if iterators[i] is not None:
            try:
                return next(iterators[i])  # type: ignore[arg-type]
            except StopIteration:
                pass
        iterators[i] = iter(loader)
        try:
            return next(iterators[i])  # type: ignore[arg-type]
        except StopIteration:
            which = ("labelled", "unlabelled")[i]
            raise RuntimeError(f"the {which} data loader yielded no batch") from None


def _loader_length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


class SemiSupervisedTrainer(MultiNetworkTrainer):
    """Semi-supervised training with one labelled and one unlabelled batch per iteration, as a MONAI trainer.

    Each iteration draws a labelled batch (X_l, Y_l) from ``train_data_loader`` and an unlabelled batch X_u from
    ``unlabeled_data_loader`` (both through ``prepare_batch``), lets the paradigm compute one loss per network
    (:meth:`semi_supervised_losses`: typically a supervised loss on X_l plus the unsupervised loss on X_u times
    :meth:`unsup_weight`), then takes one backward pass of their sum and one optimizer step per network, and
    finally :meth:`after_step` (e.g. the EMA update of a teacher). MONAI's iteration events fire once per iteration
    (``FORWARD_COMPLETED`` and ``LOSS_COMPLETED`` after the paradigm's losses, then ``BACKWARD_COMPLETED`` and
    ``MODEL_COMPLETED``), so StatsHandler, TensorBoard, validation, checkpoint and LR-schedule handlers work as
    with ``SupervisedTrainer``. ``engine.state.output`` holds the labelled batch (``image``, ``label``), network 0's
    prediction on it (``pred``), ``loss`` (mean over the networks), ``loss_sup``, ``loss_unsup``,
    ``unsup_weight`` (:class:`SemiSupervisedKeys`) and each network's loss.

    **Epoch length.** ``epoch_length`` iterations make an epoch: ``None`` or ``"labeled"`` (default) one pass over
    the labelled loader, so ``max_epochs``, ``val_interval`` and LR schedules keep their meaning from supervised
    training on the labelled part; ``"unlabeled"`` one pass over the unlabelled loader; or a number. Each loader is
    cycled on its own when shorter than the epoch (:class:`PairedBatches`), and both restart at every epoch.

    **Resume.** Both loaders start afresh at every epoch and their shuffles come from the global torch generator,
    which :class:`~dale_monai.handlers.LastCheckpoint` saves with the random states of both pipelines' transforms;
    a run resumed from the last checkpoint therefore draws the same labelled and unlabelled batches as an
    uninterrupted run (``tests/test_semisup_trainers.py`` checks the weights bit for bit).

    **Unsupervised weight.** w(t) = ``unsup_weight`` · exp(−5·(1 − t/L)²) for t < L (the sigmoid ramp-up of Laine &
    Aila, :func:`dale_monai.semisup.sigmoid_rampup`), t the iterations completed before the current one and
    L = ``rampup_length`` (``None``: the whole run, max_epochs × epoch_length, as SSL4MIS ramps over all 30,000
    iterations; 0: no ramp).

    **Batches.** The labelled and the unlabelled batch are concatenated and go through each network in one
    forward pass (as SSL4MIS does), so normalisation layers see both and ``DistributedDataParallel`` sees one
    forward per backward; their channels and spatial sizes must agree. Networks other than ``networks[0]`` exist
    for training only: ``networks[0]`` is validated and saved (see :class:`MultiNetworkTrainer`).

    Args:
        device, max_epochs, train_data_loader, networks, optimizers, loss_function, clip_grad_norm, non_blocking,
            prepare_batch, iteration_update, inferer, postprocessing, key_train_metric, additional_metrics,
            metric_cmp_fn, train_handlers, amp, event_names, event_to_attr, decollate, optim_set_to_none,
            to_kwargs, amp_kwargs: as in :class:`MultiNetworkTrainer` (``train_data_loader`` is the labelled data).
        unlabeled_data_loader: batches of unlabelled images (``{"image": ...}``; a label, if any, is ignored), e.g.
            a bundle datalist's ``unlabeled`` section.
        epoch_length: see above.
        unsup_weight: the weight of the unsupervised loss after the ramp-up (>= 0).
        rampup_length: L in iterations (see above).

    Raises:
        ValueError: a missing or empty ``unlabeled_data_loader`` (naming the ``data_prep`` options that write an
            ``unlabeled`` section), an unknown or non-positive ``epoch_length`` (or a named one whose loader has no
            length), a negative ``unsup_weight`` or ``rampup_length``, and the errors of
            :class:`MultiNetworkTrainer`.
    """

    #: the default ``unsup_weight`` of the paradigm
    default_unsup_weight: float = 1.0

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        networks: Sequence[nn.Module],
        optimizers: Sequence[Optimizer],
        loss_function: Callable,
        unlabeled_data_loader: Iterable | DataLoader | None = None,
        epoch_length: int | str | None = None,
        unsup_weight: float | None = None,
        rampup_length: int | None = None,
        clip_grad_norm: float | None = None,
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
        if unlabeled_data_loader is None:
            raise ValueError(f"{owner}: unlabeled_data_loader is required (images without labels); "
                             f"{UNLABELED_SECTION_HINT}")
        if _loader_length(unlabeled_data_loader) == 0:
            raise ValueError(f"{owner}: unlabeled_data_loader is empty; {UNLABELED_SECTION_HINT}")
        length = self._epoch_length(owner, epoch_length, train_data_loader, unlabeled_data_loader)
        weight = self.default_unsup_weight if unsup_weight is None else unsup_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise ValueError(f"{owner}: unsup_weight must be a finite number >= 0, got {unsup_weight!r}")
        if rampup_length is not None and (isinstance(rampup_length, bool) or not isinstance(rampup_length, int)
                                          or rampup_length < 0):
            raise ValueError(f"{owner}: rampup_length must be an iteration count >= 0 or None, got {rampup_length!r}")
        self.labeled_data_loader = train_data_loader
        self.unlabeled_data_loader = unlabeled_data_loader
        self.unsup_weight_max = float(weight)
        self.rampup_length = rampup_length
        super().__init__(
            device=device, max_epochs=max_epochs,
            train_data_loader=PairedBatches(train_data_loader, unlabeled_data_loader, length),
            networks=networks, optimizers=optimizers, loss_function=loss_function, clip_grad_norm=clip_grad_norm,
            epoch_length=length, non_blocking=non_blocking, prepare_batch=prepare_batch,
            iteration_update=iteration_update, inferer=inferer, postprocessing=postprocessing,
            key_train_metric=key_train_metric, additional_metrics=additional_metrics, metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers, amp=amp, event_names=event_names, event_to_attr=event_to_attr,
            decollate=decollate, optim_set_to_none=optim_set_to_none, to_kwargs=to_kwargs, amp_kwargs=amp_kwargs,
        )
        # MONAI sets the epoch of a DistributedSampler only for a DataLoader given as the training data
        samplers = [getattr(loader, "sampler", None) for loader in (train_data_loader, unlabeled_data_loader)]
        self._distributed_samplers = [s for s in samplers if isinstance(s, DistributedSampler)]
        if self._distributed_samplers:
            self.add_event_handler(Events.EPOCH_STARTED, self._set_sampler_epoch)

    @staticmethod
    def _epoch_length(owner: str, epoch_length: int | str | None, labeled: Iterable, unlabeled: Iterable) -> int:
        if epoch_length is None or epoch_length in EPOCH_LENGTHS:
            which = "labeled" if epoch_length is None else epoch_length
            n = _loader_length(labeled if which == "labeled" else unlabeled)
            if n is None:
                raise ValueError(f"{owner}: epoch_length={epoch_length!r} needs the {which} loader's length, which "
                                 "it does not have; give epoch_length as a number of iterations")
            if n == 0:
                raise ValueError(f"{owner}: the {which} data loader is empty")
            return n
        if isinstance(epoch_length, bool) or not isinstance(epoch_length, int) or epoch_length < 1:
            raise ValueError(f"{owner}: epoch_length must be one of {EPOCH_LENGTHS}, None or an iteration count >= 1, "
                             f"got {epoch_length!r}")
        return epoch_length

    def _set_sampler_epoch(self, engine: SemiSupervisedTrainer) -> None:
        for sampler in self._distributed_samplers:
            sampler.set_epoch(engine.state.epoch)

    # ----------------------------------------------------------------------------------------- schedule
    def rampup_iterations(self, engine: SemiSupervisedTrainer) -> int:
        """L, the ramp-up length in iterations: ``rampup_length``, or the whole run when it is ``None``."""
        if self.rampup_length is not None:
            return self.rampup_length
        return int(engine.state.max_epochs or 0) * int(engine.state.epoch_length or 0)

    def unsup_weight(self, engine: SemiSupervisedTrainer) -> float:
        """w(t) of the current iteration: ``unsup_weight`` times the sigmoid ramp-up at t = iterations completed."""
        return self.unsup_weight_max * sigmoid_rampup(engine.state.iteration - 1, self.rampup_iterations(engine))

    # ----------------------------------------------------------------------------------------- helpers
    def forward(self, engine: SemiSupervisedTrainer, network: nn.Module, inputs: Tensor) -> Tensor:
        """Logits of ``network`` on ``inputs`` through the trainer's inferer (and autocast with AMP), with grad."""
        return self._forward(engine, network, inputs, (), {})

    def supervised_loss(self, pred: Tensor, targets: Tensor) -> Tensor:
        """The loss function on the labelled batch (e.g. DALELoss: CE + Dice)."""
        return weighted_loss(self.loss_function, pred, targets, None)

    @staticmethod
    def split(pred: Tensor, n_labeled: int) -> tuple[Tensor, Tensor]:
        """The labelled and the unlabelled part of a prediction on ``cat([X_l, X_u])``."""
        return pred[:n_labeled], pred[n_labeled:]

    def _check_pair(self, inputs: Tensor, unlabeled: Tensor) -> None:
        if inputs.shape[1:] != unlabeled.shape[1:]:
            raise ValueError(
                f"{type(self).__name__}: the labelled batch {tuple(inputs.shape)} and the unlabelled batch "
                f"{tuple(unlabeled.shape)} must have the same channels and spatial size (both pass through the "
                "network in one batch): give both pipelines the same spatial_size and channel handling")

    # ----------------------------------------------------------------------------------------- the paradigm
    def semi_supervised_losses(self, engine: SemiSupervisedTrainer, inputs: Tensor, targets: Tensor,
                               unlabeled: Tensor) -> list[Tensor]:
        """One scalar loss per network; the paradigm's rule. This base: the supervised loss only (w ignored).

        Implementations set ``engine.state.output[Keys.PRED]`` (network 0's logits on ``inputs``, detached) and
        may add scalars to ``engine.state.output`` (tensors must have the labelled batch's size or be scalars, as
        the output is decollated).

        Args:
            engine: this trainer.
            inputs: X_l ``(B_l, C, *spatial)``.
            targets: Y_l.
            unlabeled: X_u ``(B_u, C, *spatial)``.
        """
        out = engine.state.output
        losses = []
        for i, net in enumerate(self.networks):
            pred = self.forward(engine, net, inputs)
            if i == 0:
                out[Keys.PRED] = pred.detach()
            losses.append(self.supervised_loss(pred, targets))
        out[SemiSupervisedKeys.LOSS_SUP] = torch.stack([x.detach() for x in losses]).mean()
        return losses

    def after_step(self, engine: SemiSupervisedTrainer) -> None:
        """Called after the optimizer steps of every iteration (e.g. a teacher's EMA update). This base: nothing."""

    def train_step(self, engine: SemiSupervisedTrainer, inputs: Tensor, targets: Tensor, unlabeled: Tensor) -> None:
        """One iteration's updates: :meth:`semi_supervised_losses`, one backward of their sum, one step per network.

        Paradigms with several optimizer steps per iteration (DALE on pseudo-labels) override this and fire
        MONAI's ``FORWARD_COMPLETED``, ``LOSS_COMPLETED`` and ``BACKWARD_COMPLETED`` once each themselves.
        """
        out = engine.state.output
        losses = self.semi_supervised_losses(engine, inputs, targets, unlabeled)
        if len(losses) != len(self.networks):
            raise RuntimeError(f"{type(self).__name__}.semi_supervised_losses returned {len(losses)} losses for "
                               f"{len(self.networks)} networks")
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        for i, loss in enumerate(losses):
            out[MultiNetworkKeys.loss(i)] = loss.detach()
        out[Keys.LOSS] = torch.stack([loss.detach().reshape(()) for loss in losses]).mean()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self._backward_and_step(engine, losses)

    def _iteration(self, engine: SemiSupervisedTrainer, batchdata: Any) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        labeled, unlabeled_batch = batchdata
        batch = engine.prepare_batch(labeled, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        if targets is None:
            raise ValueError(f"{type(self).__name__}: the labelled batch has no label")
        unlabeled = engine.prepare_batch(unlabeled_batch, engine.state.device, engine.non_blocking,
                                         **engine.to_kwargs)[0]
        self._check_pair(inputs, unlabeled)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets,
                               SemiSupervisedKeys.UNSUP_WEIGHT: self.unsup_weight(engine)}
        for net in self.networks:
            net.train()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=engine.optim_set_to_none)
        try:
            self.train_step(engine, inputs, targets, unlabeled)
        except torch.OutOfMemoryError as e:
            raise torch.OutOfMemoryError(
                f"out of memory in iteration {engine.state.iteration} (epoch {engine.state.epoch}) of "
                f"{type(self).__name__}: it holds the activations of the labelled and the unlabelled batch in "
                f"{len(self.networks)} network(s). Reduce the batch sizes (--batch_size, --unlabeled_batch_size), "
                f"the input size (--spatial_size) or the networks' width, or enable AMP (--amp true) on a GPU. "
                f"Original error: {e}"
            ) from e
        self.after_step(engine)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output  # decollated by MODEL_COMPLETED, as in SupervisedTrainer
