"""DALETrainer: MONAI's SupervisedTrainer with DALE's alternating iteration (paper Algorithm 1)."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, EventEnum
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..meta import (
    HeadCall,
    OmegaMetaStep,
    capture_calls,
    head_parameters,
    logits_of,
    network_closures,
    virtual_norm_mode,
)
from ..feature_layers import unwrap_model
from .dale_events import DALEEvents, DALEKeys
from ..distributed import all_reduce_mean, is_distributed

__all__ = ["DALETrainer", "MASK_MODES", "NONFINITE_POLICIES", "NORM_STATS", "NonFiniteError"]

MASK_MODES = ("paper", "weight")
NONFINITE_POLICIES = ("raise", "skip")
NORM_STATS = ("nonfuzzy", "both")


class NonFiniteError(FloatingPointError):
    """A loss term, the meta step or a gradient became NaN/Inf; raised before any optimizer step uses it."""


class _SkipBatch(Exception):
    def __init__(self, term: str) -> None:
        self.term = term


class DALETrainer(SupervisedTrainer):
    """Data-driven alternating learning (DALE, CVPR 2025) as a MONAI trainer.

    Each iteration takes two optimizer steps on one batch (Algorithm 1):

    1. **non-fuzzy step** on X^n = M^n ⊙ X at θ → θ_n;
    2. **fuzzy forward** on X^f = M^f ⊙ X at θ_n, its graph kept;
    3. **ω meta step** (``omega_step``): per-pixel confidence ω* from the agreement of each fuzzy pixel's
       loss gradient with the non-fuzzy gradient, computed without touching parameters, buffers or the
       optimizer;
    4. **fuzzy step**: L_f = mean(ω* ⊙ M^f ⊙ (ℓ + Σ terms)) with the terms handlers add (e.g. α·L_W from
       :class:`dale_monai.handlers.WassersteinAlignment`), backward, optimizer step → θ_f.

    The soft masks M^n / M^f come with the batch under ``mask_n_key`` / ``mask_f_key``, computed per sample
    by :class:`dale_monai.transforms.FuzzyPartitiond` after the random augmentations: the partition depends
    on image and label only, never on the model.

    Each step is a method (:meth:`nonfuzzy_step`, :meth:`confidence_step`, :meth:`fuzzy_step`) so that a
    related training paradigm is a subclass overriding one of them. Besides MONAI's ``IterationEvents``
    (fired once per iteration, for the fuzzy step, so StatsHandler, TensorBoard, CheckpointSaver,
    ValidationHandler and LR schedulers work unchanged), :class:`DALEEvents` are fired inside the
    iteration. ``engine.state.output`` carries both losses, the ω statistics, the fuzzy fraction and L_W
    (see :class:`DALEKeys`); ``Keys.LOSS`` is L_n + L_f.

    Args:
        device, max_epochs, train_data_loader, network, optimizer, epoch_length, non_blocking, prepare_batch,
            iteration_update, inferer, postprocessing, key_train_metric, additional_metrics, metric_cmp_fn,
            train_handlers, amp, event_names, event_to_attr, decollate, optim_set_to_none, to_kwargs,
            amp_kwargs, compile, compile_kwargs: as in :class:`monai.engines.SupervisedTrainer`.
        loss_function: per-pixel loss. Either an object with ``pixel_map(pred, target)`` (the map used by the
            meta step) and ``forward(pred, target, weight=None, extra=None)`` (the scalar of a real step, e.g.
            :class:`dale_monai.losses.DALELoss`), or a callable returning a per-pixel map (B, 1, *spatial) that
            is then reduced as mean(weight ⊙ (map + extra)).
        omega_step: the ω meta step (:class:`dale_monai.meta.OmegaMetaStep`); ``None`` keeps ω = 1 (the "without ω"
            ablation). For ``method="first_order"`` the trainer keeps a copy of the non-fuzzy step's gradient (one
            parameter-sized copy) and hands it to the step; for ``scope="head"`` it records the head's input in the
            real fuzzy forward so that the step re-runs the head alone.
        inner_lr: η of the virtual SGD step; ``None`` reads the optimizer's current learning rate
            (first parameter group) every iteration, so LR schedules apply.
        mask_mode: ``"paper"``: Y^n = M^n ⊙ Y and Y^f = M^f ⊙ Y for binary (one-channel) networks, as in
            Eq. 7, with a loss weight by the mask for multi-class labels; ``"weight"``: targets stay Y and
            the loss is weighted by the mask for every network.
        mask_inputs: ``True`` (the paper, Eq. 7): the steps see X^n = M^n ⊙ X and X^f = M^f ⊙ X. ``False``: both
            steps (and the meta step's passes) see the unmasked image X and the masks act only through the
            targets/loss weights of ``mask_mode``, so the network is trained on the inputs it is evaluated on.
        mask_n_key: batch key of M^n.
        mask_f_key: batch key of M^f.
        clip_grad_norm: if set, clip the gradient norm of both real steps to this value (after AMP unscaling).
        nonfinite: what a NaN/Inf in a loss term, ω or a gradient does: ``"raise"`` stops training with
            :class:`NonFiniteError` naming the term, before the optimizer step, so weights (and the
            checkpoints written from them) stay finite; ``"skip"`` drops the rest of that batch (no further
            optimizer step), logs a warning and counts it in ``engine.state.skipped_batches``. With AMP,
            non-finite gradients are left to the GradScaler, which skips such steps by design.
        norm_stats: which real forwards update the running statistics of normalisation layers:
            ``"nonfuzzy"`` (default) only the non-fuzzy step's, whose input M^n ⊙ X is the raw image outside the
            fuzziest patches; the fuzzy forward then normalises with batch statistics and writes nothing, exactly
            as the meta step's virtual passes do. ``"both"`` lets both real forwards update them (twice per
            iteration), which mixes in the statistics of the darkened fuzzy input.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        omega_step: OmegaMetaStep | None = None,
        inner_lr: float | None = None,
        mask_mode: str = "paper",
        mask_inputs: bool = True,
        mask_n_key: str = DALEKeys.MASK_N,
        mask_f_key: str = DALEKeys.MASK_F,
        clip_grad_norm: float | None = None,
        nonfinite: str = "raise",
        norm_stats: str = "nonfuzzy",
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
        compile: bool = False,
        compile_kwargs: dict | None = None,
    ) -> None:
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        if not isinstance(mask_inputs, bool):
            raise ValueError(f"mask_inputs must be True or False, got {mask_inputs!r}")
        if inner_lr is not None and not inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0 or None, got {inner_lr!r}")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 or None, got {clip_grad_norm!r}")
        if norm_stats not in NORM_STATS:
            raise ValueError(f"norm_stats must be one of {NORM_STATS}, got {norm_stats!r}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        event_names = list(event_names or []) + [DALEEvents]
        extra = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
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
            compile=compile,
            compile_kwargs=compile_kwargs,
            **extra,
        )
        self.omega_step = omega_step
        self.inner_lr = inner_lr
        self.mask_mode = mask_mode
        self.mask_inputs = bool(mask_inputs)
        self.mask_n_key = mask_n_key
        self.mask_f_key = mask_f_key
        self.clip_grad_norm = clip_grad_norm
        self.nonfinite = nonfinite
        self.norm_stats = norm_stats
        self._nonfuzzy_grad: dict[str, Tensor | None] | None = None
        self._warned_head = False

    # ----------------------------------------------------------------------------------------- losses
    @staticmethod
    def _full_precision(pred: Tensor) -> Tensor:
        # losses of half-precision (AMP) logits are computed in float32; float64 stays float64
        return pred if pred.dtype in (torch.float32, torch.float64) else pred.float()

    def pixel_loss_map(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-pixel loss map ℓ(pred, target), (B, 1, *spatial)."""
        fn = getattr(self.loss_function, "pixel_map", self.loss_function)
        return fn(self._full_precision(pred), target)

    def reduced_loss(self, pred: Tensor, target: Tensor, weight: Tensor | None, extra: Tensor | None = None) -> Tensor:
        """Scalar loss of a real step: mean(weight ⊙ (ℓ + extra)) (plus the loss function's region term)."""
        if hasattr(self.loss_function, "pixel_map"):
            return self.loss_function(self._full_precision(pred), target, weight=weight, extra=extra)
        loss_map = self.pixel_loss_map(pred, target)
        if extra is not None:
            loss_map = loss_map + extra
        return (loss_map if weight is None else loss_map * weight).mean()

    # ----------------------------------------------------------------------------------------- partition
    def region_target(self, targets: Tensor, mask: Tensor, pred_channels: int) -> tuple[Tensor, Tensor | None]:
        """Target and loss weight of a region with soft mask M (see ``mask_mode``)."""
        if self.mask_mode == "paper" and pred_channels == 1:
            return targets * mask, None
        return targets, mask

    def _batch_masks(self, batchdata: Any, like: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(batchdata, dict) or self.mask_n_key not in batchdata or self.mask_f_key not in batchdata:
            raise KeyError(
                f"DALETrainer needs the fuzzy-partition masks '{self.mask_n_key}' and '{self.mask_f_key}' in every batch; "
                "add dale_monai.transforms.FuzzyPartitiond to the training transforms (after the random augmentations)."
            )
        masks = []
        for key in (self.mask_n_key, self.mask_f_key):
            m = torch.as_tensor(batchdata[key]).to(like.device, dtype=torch.float32, non_blocking=self.non_blocking)
            if m.shape[0] != like.shape[0] or m.shape[2:] != like.shape[2:]:
                raise ValueError(f"mask '{key}' has shape {tuple(m.shape)}, not matching the image batch {tuple(like.shape)}")
            masks.append(m[:, :1])
        return masks[0], masks[1]

    # ----------------------------------------------------------------------------------------- steps
    def _forward(self, engine: DALETrainer, inputs: Tensor) -> Tensor:
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                return logits_of(engine.inferer(inputs, engine.network))
        return logits_of(engine.inferer(inputs, engine.network))

    def check_finite(self, engine: DALETrainer, value: Tensor, term: str) -> None:
        """Apply the ``nonfinite`` policy if ``value`` holds a NaN or Inf."""
        if bool(torch.isfinite(value).all()):
            return
        if self.nonfinite == "skip":
            raise _SkipBatch(term)
        raise NonFiniteError(
            f"{term} became non-finite at epoch {engine.state.epoch}, iteration {engine.state.iteration}; training "
            "stopped before the optimizer step, so the weights and the last checkpoint are still finite. "
            "Check the inputs of this batch (NaN/Inf intensities), lower the learning rate, or pass "
            "nonfinite='skip' to drop such batches."
        )

    def _optimizer_step(self, engine: DALETrainer, loss: Tensor, term: str, keep_grad: bool = False
                        ) -> dict[str, Tensor] | None:
        """Backward and optimizer step; with ``keep_grad`` return a copy of the (unscaled, unclipped) gradient."""
        self.check_finite(engine, loss.detach(), term)
        kept = None
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            if self.clip_grad_norm is not None or keep_grad:
                engine.scaler.unscale_(engine.optimizer)
            if keep_grad:
                kept = self._copy_grads(engine)
            if self.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(engine.network.parameters(), self.clip_grad_norm)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            grads = [p.grad.detach().norm() for p in engine.network.parameters() if p.grad is not None]
            if grads:
                self.check_finite(engine, torch.stack(grads), f"gradient of the {term}")
            if keep_grad:
                kept = self._copy_grads(engine)
            if self.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(engine.network.parameters(), self.clip_grad_norm)
            engine.optimizer.step()
        return kept

    @staticmethod
    def _copy_grads(engine: DALETrainer) -> dict[str, Tensor | None]:
        # a copy: the optimizer step, clipping or zero_grad may change .grad in place
        return {n: None if p.grad is None else p.grad.detach().clone()
                for n, p in unwrap_model(engine.network).named_parameters() if p.requires_grad}

    def nonfuzzy_step(self, engine: DALETrainer, x_n: Tensor, targets: Tensor, mask_n: Tensor) -> tuple:
        """Eq. 1: one optimizer step on the non-fuzzy region (θ → θ_n).

        When the meta step needs it (``OmegaMetaStep.needs_nonfuzzy_grad``), a copy of this step's gradient
        (after AMP unscaling, before clipping and the optimizer step) is kept for :meth:`confidence_step`.

        Returns:
            L_n (detached), and the non-fuzzy target and loss weight (reused by the meta step).
        """
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        pred_n = self._forward(engine, x_n)
        engine.state.output[DALEKeys.PRED_N] = pred_n.detach()
        engine.fire_event(DALEEvents.NONFUZZY_FORWARD_COMPLETED)
        y_n, w_n = self.region_target(targets, mask_n, pred_n.shape[1])
        loss_n = self.reduced_loss(pred_n, y_n, w_n)
        keep = self.omega_step is not None and getattr(self.omega_step, "needs_nonfuzzy_grad", False)
        # the first_order meta step uses this gradient (at θ) instead of a pass at θ_p
        self._nonfuzzy_grad = self._optimizer_step(engine, loss_n, "non-fuzzy loss", keep_grad=keep)
        engine.fire_event(DALEEvents.NONFUZZY_COMPLETED)
        return loss_n.detach(), y_n, w_n

    def confidence_step(
        self, engine: DALETrainer, loss_map_f: Tensor, x_f: Tensor, y_f: Tensor, x_n: Tensor, y_n: Tensor,
        w_n: Tensor | None, mask_f: Tensor | None = None, nonfuzzy_grad: Mapping[str, Tensor | None] | None = None,
        head_call: HeadCall | None = None,
    ) -> Tensor:
        """Eqs. 8–11: ω* per pixel, from the fuzzy loss map at θ_n (graph kept) and the non-fuzzy batch.

        Args:
            engine: this trainer.
            loss_map_f: ℓ at θ_n, (B, 1, *spatial), with its graph.
            x_f, y_f: the fuzzy step's input and target.
            x_n, y_n, w_n: the non-fuzzy step's input, target and loss weight.
            mask_f: M^f, the normalisation weight of ``rule="l2rw"``.
            nonfuzzy_grad: the non-fuzzy step's gradient at θ, name → tensor (``method="first_order"``).
            head_call: for ``scope="head"``: the head's call in the real fuzzy forward when its output is the
                logits; the meta step then re-runs the head alone on its recorded input. ``None`` re-runs the
                whole network (same result, slower).
        """
        step = self.omega_step
        if step is None:
            engine.state.output[DALEKeys.OMEGA_SMALL_GRAD] = float("nan")
            return torch.ones_like(loss_map_f).detach()
        if getattr(step, "needs_nonfuzzy_grad", False):
            if nonfuzzy_grad is None:
                raise ValueError(f"{step!r} needs the non-fuzzy step's gradient (nonfuzzy_grad)")
            if engine.amp and not all(bool(torch.isfinite(g).all()) for g in nonfuzzy_grad.values() if g is not None):
                # the GradScaler skips this non-fuzzy step and lowers its scale; ω = 1 for this batch
                engine.state.output[DALEKeys.OMEGA_SMALL_GRAD] = float("nan")
                return torch.ones_like(loss_map_f).detach()
        net = unwrap_model(engine.network)
        if getattr(step, "scope", "full") == "head":
            head = step.head_module(net)
            params = head_parameters(net, head)
        else:
            head, params = None, dict(net.named_parameters())
        fuzzy_map, nonfuzzy_loss = network_closures(
            net, x_f, lambda out: self.pixel_loss_map(out, y_f), x_n, lambda out: self.reduced_loss(out, y_n, w_n),
            head_call=None if head is None or head_call is None else (head, head_call),
        )
        eta = self.inner_lr if self.inner_lr is not None else float(engine.optimizer.param_groups[0]["lr"])
        distributed = is_distributed()
        with virtual_norm_mode(net):
            result = step(
                loss_map_f, params, fuzzy_map, nonfuzzy_loss, eta,
                grad_reducer=all_reduce_mean if distributed else None,
                world_size=dist.get_world_size() if distributed else 1,
                nonfuzzy_grad=nonfuzzy_grad, fuzzy_mask=mask_f,
            )
        engine.state.output[DALEKeys.OMEGA_SMALL_GRAD] = result.frac_small_grad
        self.check_finite(engine, result.omega, "ω (meta step)")
        return result.omega

    def _fuzzy_head(self, engine: DALETrainer) -> nn.Module | None:
        """The head whose input the fuzzy forward records for a head-scope meta step, else None."""
        step = self.omega_step
        if step is None or getattr(step, "scope", "full") != "head":
            return None
        return step.head_module(unwrap_model(engine.network))

    def fuzzy_step(
        self, engine: DALETrainer, pred_f: Tensor, y_f: Tensor, weight_f: Tensor, terms: list
    ) -> Tensor:
        """Eqs. 2 and 15: one optimizer step on the fuzzy region (θ_n → θ_f) with the ω-weighted loss."""
        extra = None
        for i, term in enumerate(terms):
            self.check_finite(engine, torch.as_tensor(term).detach(), f"fuzzy loss term {i} (e.g. α·L_W)")
            extra = term if extra is None else extra + term
        loss_f = self.reduced_loss(pred_f, y_f, weight_f, extra)
        engine.state.output[Keys.PRED] = pred_f.detach()
        engine.state.output[DALEKeys.LOSS_F] = loss_f.detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self._optimizer_step(engine, loss_f, "fuzzy loss")
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.fire_event(DALEEvents.FUZZY_COMPLETED)
        return loss_f.detach()

    # ----------------------------------------------------------------------------------------- iteration
    def _iteration(self, engine: DALETrainer, batchdata: dict[str, Tensor]) -> dict:  # type: ignore[override]
        try:
            return self._dale_iteration(engine, batchdata)
        except torch.OutOfMemoryError as e:
            raise torch.OutOfMemoryError(
                f"out of memory in DALE iteration {engine.state.iteration} (epoch {engine.state.epoch}): a DALE "
                "iteration holds about 2x the activations of a standard one (the fuzzy forward's graph is kept for the "
                "meta step). Reduce the batch size (--batch_size), the input/patch size (--spatial_size) or the "
                f"network's width, or enable AMP (--amp true) on a GPU. Original error: {e}"
            ) from e
        except _SkipBatch as skip:
            engine.optimizer.zero_grad(set_to_none=True)
            engine.state.skipped_batches = getattr(engine.state, "skipped_batches", 0) + 1
            engine.logger.warning(
                f"{skip.term} became non-finite at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                f"batch skipped ({engine.state.skipped_batches} so far)"
            )
            engine.state.output = {Keys.LOSS: torch.tensor(float("nan")), "skipped": skip.term}
            return engine.state.output

    def _dale_iteration(self, engine: DALETrainer, batchdata: dict[str, Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        self._nonfuzzy_grad = None
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        mask_n, mask_f = self._batch_masks(batchdata, inputs)
        engine.state.output = {
            Keys.IMAGE: inputs,
            Keys.LABEL: targets,
            DALEKeys.MASK_N: mask_n,
            DALEKeys.MASK_F: mask_f,
            DALEKeys.FUZZY_TERMS: [],
            DALEKeys.FUZZY_FRACTION: float(mask_f.mean()),
        }
        engine.network.train()
        x_n, x_f = (inputs * mask_n, inputs * mask_f) if self.mask_inputs else (inputs, inputs)

        loss_n, y_n, w_n = self.nonfuzzy_step(engine, x_n, targets, mask_n)

        nonfuzzy_grad, self._nonfuzzy_grad = self._nonfuzzy_grad, None
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        head = self._fuzzy_head(engine)
        # the fuzzy input M^f ⊙ X is darkened almost everywhere: with norm_stats="nonfuzzy" its feature
        # statistics do not enter the running BatchNorm estimates that evaluation on raw images relies on
        norm_mode = virtual_norm_mode(unwrap_model(engine.network)) if self.norm_stats == "nonfuzzy" else nullcontext()
        with norm_mode, capture_calls(head) if head is not None else nullcontext([]) as head_calls:
            pred_f = self._forward(engine, x_f)
        head_call = head_calls[0] if len(head_calls) == 1 and head_calls[0].output is pred_f else None
        if head is not None and head_call is None and not self._warned_head:
            self._warned_head = True
            warnings.warn(
                f"the ω meta step's head ({type(head).__name__}) ran {len(head_calls)} time(s) in the fuzzy forward "
                "and its output is not the network's logits (a post-processing network or inferer, deep "
                "supervision): scope='head' re-runs the whole network instead of the head alone (same ω, slower)",
                stacklevel=2,
            )
        engine.fire_event(DALEEvents.FUZZY_FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        y_f, w_f = self.region_target(targets, mask_f, pred_f.shape[1])
        loss_map_f = self.pixel_loss_map(pred_f, y_f)

        omega = self.confidence_step(engine, loss_map_f, x_f, y_f, x_n, y_n, w_n, mask_f=mask_f,
                                     nonfuzzy_grad=nonfuzzy_grad, head_call=head_call)
        fuzzy = mask_f > 0
        out = engine.state.output
        out[DALEKeys.OMEGA] = omega
        out[DALEKeys.OMEGA_MEAN] = float(omega[fuzzy].mean()) if fuzzy.any() else 1.0
        out[DALEKeys.OMEGA_BELOW_ONE] = float((omega[fuzzy] < 1).float().mean()) if fuzzy.any() else 0.0
        engine.fire_event(DALEEvents.OMEGA_COMPLETED)

        weight_f = omega * mask_f if w_f is None else omega * w_f
        loss_f = self.fuzzy_step(engine, pred_f, y_f, weight_f, out[DALEKeys.FUZZY_TERMS])
        out[DALEKeys.LOSS_N] = loss_n
        out[Keys.LOSS] = loss_n + loss_f
        out.pop(DALEKeys.FUZZY_TERMS)  # drops the graphs of handler terms (and decollates cleanly)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output  # decollated by MODEL_COMPLETED, as in SupervisedTrainer
