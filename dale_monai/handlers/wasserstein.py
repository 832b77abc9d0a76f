"""Ignite handler adding DALE's distribution alignment term α·L_W (paper Eqs. 12–15) to the fuzzy loss."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys
from torch import nn

from ..engines.dale_events import DALEEvents, DALEKeys
from ..feature_layers import default_feature_layer, is_submodule, resolve_layer, unwrap_model
from ..wasserstein import class_conditional_w2, class_indices, resample_labels

__all__ = ["WassersteinAlignment"]


class WassersteinAlignment:
    """Unstable representation calibration: align the clean fuzzy features with the non-fuzzy ones.

    Attached to a DALE trainer, it hooks the INPUT of the network's segmentation head
    (:func:`dale_monai.feature_layers.default_feature_layer`, or ``feature_layer``) and, per iteration:

    - keeps the features of the real non-fuzzy forward, detached, as F_n (the stable target), with
      the label and the masks M^n, M^f the trainer put in ``engine.state.output``;
    - keeps the features of the real fuzzy forward, with gradient, as F_f;
    - once ω* is known (``DALEEvents.OMEGA_COMPLETED``), computes
      L_W = :func:`dale_monai.wasserstein.class_conditional_w2` between the class-conditional
      Gaussians of F_n (pixels with ``M^n > nonfuzzy_threshold``) and of the clean fuzzy features
      (pixels with ``ω* > 1`` and ``M^f > fuzzy_threshold``: Eq. 12's ``∇ω > 0`` read as "ω rose",
      see METHOD.md), all masks and the label resampled (nearest) to the feature resolution;
      writes ``output[DALEKeys.LOSS_W] = L_W.detach()`` and appends ``alpha * L_W`` to
      ``output[DALEKeys.FUZZY_TERMS]``, which the trainer adds to the per-pixel fuzzy loss.

    Only forwards inside two armed windows are captured: from ``ITERATION_STARTED`` to
    ``NONFUZZY_FORWARD_COMPLETED`` and from ``NONFUZZY_COMPLETED`` to ``FUZZY_FORWARD_COMPLETED``,
    so the trainer's virtual passes of the ω meta step, activation-checkpoint recomputations in
    backward and validation runs between iterations are ignored. A head that runs more than once in
    a window (a sliding-window inferer) is an error: the label would not match the features.

    Which pixels count: on the non-fuzzy side those with ``M^n > nonfuzzy_threshold`` (0.5: the
    non-fuzzy patches, where ``M^n = 1``, and not the fuzzy ones, where ``M^n = 1 − m ≤ 0.1``),
    unweighted; on the fuzzy side the clean ones above, unweighted.

    The trainer adds the scalar term to every pixel's loss before the ω weighting
    (``L_f = mean(ω_final ⊙ (ℓ + α·L_W))``, Eq. 15), so L_W enters the fuzzy loss scaled by
    ``mean(ω_final)``.

    Labels: a one-channel label holds class indices (a binary net's {0, 1}; soft values round at
    0.5); a multi-channel one is one-hot and reduced with argmax.

    Args:
        alpha: weight α of L_W in the fuzzy loss (paper default 0.05).
        feature_layer: the head whose input is hooked: None (the network's default), a dotted module
            path of the unwrapped network, or the module itself.
        eps_max: upper bound of the random covariance perturbation ε (Eq. 13), squared feature units.
        jitter: δ of the ``δ·I`` added to the non-fuzzy covariances.
        min_pixels: classes with fewer pixels on either side are skipped (at least 2).
        nonfuzzy_threshold: a pixel is non-fuzzy for the statistics where ``M^n`` exceeds it.
        fuzzy_threshold: a pixel is fuzzy for the statistics where ``M^f`` exceeds it.
        num_classes: classes 0..num_classes-1; default: those present in the label.
        seed: seed of the generator drawing ε; None uses the global torch generator.
        label_key: key of the label in ``engine.state.output``.
        normalize: ``"channels"`` (default) divides L_W by the number of feature channels C (the mean W2 per
            feature dimension), ``"none"`` keeps the plain sum of Eq. 14. Un-normalised, L_W grows with the
            width and scale of the hooked features: measured 5–45 on UNet features here, so α·L_W (0.8–2.2)
            outweighed the per-pixel cross-entropy and val Dice on the synthetic bundle fell from 0.77 (α = 0)
            to 0.33 (see BENCHMARKS.md). The paper does not state a normalisation; this is a documented
            deviation, and ``"none"`` reproduces the formula as printed.
    """

    def __init__(
        self,
        alpha: float = 0.05,
        feature_layer: str | nn.Module | None = None,
        eps_max: float = 0.01,
        jitter: float = 1e-5,
        min_pixels: int = 2,
        nonfuzzy_threshold: float = 0.5,
        fuzzy_threshold: float = 0.0,
        num_classes: int | None = None,
        seed: int | None = None,
        label_key: str = Keys.LABEL,
        normalize: str = "channels",
    ) -> None:
        if normalize not in ("channels", "none"):
            raise ValueError(f"WassersteinAlignment: normalize must be 'channels' or 'none', got {normalize!r}.")
        if alpha < 0:
            raise ValueError(f"WassersteinAlignment: alpha must be non-negative, got {alpha}.")
        if min_pixels < 2:
            raise ValueError(f"WassersteinAlignment: min_pixels must be at least 2, got {min_pixels}.")
        if feature_layer is not None and not isinstance(feature_layer, (str, nn.Module)):
            raise TypeError(
                f"WassersteinAlignment: feature_layer must be None, a dotted module path or an nn.Module, "
                f"got {type(feature_layer).__name__}."
            )
        self.alpha = alpha
        self.feature_layer = feature_layer
        self.eps_max = eps_max
        self.jitter = jitter
        self.min_pixels = min_pixels
        self.nonfuzzy_threshold = nonfuzzy_threshold
        self.fuzzy_threshold = fuzzy_threshold
        self.num_classes = num_classes
        self.seed = seed
        self.label_key = label_key
        self.normalize = normalize
        self.layer: nn.Module | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._generator: torch.Generator | None = None
        self._armed = False
        self._count = 0
        self._clear()

    def attach(self, engine: Engine) -> None:
        """Register the handler's event callbacks on a DALE trainer.

        Args:
            engine: a trainer firing :class:`dale_monai.engines.dale_events.DALEEvents`, with a ``network``.
        """
        handlers = (
            (Events.STARTED, self._install),
            (Events.ITERATION_STARTED, self._arm),
            (DALEEvents.NONFUZZY_FORWARD_COMPLETED, self._take_nonfuzzy),
            (DALEEvents.NONFUZZY_COMPLETED, self._arm),
            (DALEEvents.FUZZY_FORWARD_COMPLETED, self._take_fuzzy),
            (DALEEvents.OMEGA_COMPLETED, self),
            (Events.ITERATION_COMPLETED, self._end_iteration),
            (Events.COMPLETED, self.remove_hook),
        )
        added = []
        for event, handler in handlers:
            try:
                added.append(engine.add_event_handler(event, handler))
            except ValueError as e:
                for handle in added:
                    handle.remove()
                raise ValueError(
                    f"WassersteinAlignment must be attached to an engine that fires DALEEvents (a DALETrainer); "
                    f"{type(engine).__name__} does not know {event}."
                ) from e

    def __call__(self, engine: Engine) -> None:
        """Compute L_W and append ``alpha * L_W`` to the fuzzy loss terms (at ``OMEGA_COMPLETED``)."""
        output = engine.state.output
        terms = output.get(DALEKeys.FUZZY_TERMS) if isinstance(output, dict) else None
        if not isinstance(terms, list):
            raise RuntimeError(
                f"WassersteinAlignment: engine.state.output has no list under {DALEKeys.FUZZY_TERMS!r}; "
                "the DALE trainer creates it before OMEGA_COMPLETED."
            )
        if self.feat_n is None or self.feat_f is None:
            raise RuntimeError(
                f"WassersteinAlignment: no features were captured at the input of {type(self.layer).__name__} "
                "during the non-fuzzy and fuzzy forwards; the hooked layer is not on the network's forward path "
                "(set feature_layer= to the segmentation head)."
            )
        omega = self._get(output, DALEKeys.OMEGA)
        batch = {self.feat_n.shape[0], self.feat_f.shape[0], self.label.shape[0], omega.shape[0]}
        if len(batch) != 1:
            raise RuntimeError(
                f"WassersteinAlignment: batch sizes differ between the features (non-fuzzy "
                f"{self.feat_n.shape[0]}, fuzzy {self.feat_f.shape[0]}), the label ({self.label.shape[0]}) and "
                f"ω ({omega.shape[0]})."
            )
        size = self.feat_f.shape[2:]
        keep_f = (resample_labels(omega.detach(), size) > 1) & (
            resample_labels(self.mask_f.detach(), size) > self.fuzzy_threshold
        )
        weight_n = resample_labels(self.mask_n.detach(), size) > self.nonfuzzy_threshold
        label = class_indices(resample_labels(self.label.detach(), size))
        loss_w = class_conditional_w2(
            self.feat_n,
            self.feat_f,
            label,
            label,
            weight_n=weight_n,
            keep_f=keep_f,
            num_classes=self.num_classes,
            eps_max=self.eps_max,
            jitter=self.jitter,
            generator=self._generator,
            min_pixels=self.min_pixels,
        )
        if self.normalize == "channels":
            loss_w = loss_w / self.feat_f.shape[1]
        output[DALEKeys.LOSS_W] = loss_w.detach()
        terms.append(self.alpha * loss_w)

    def remove_hook(self, engine: Engine | None = None) -> None:
        """Remove the forward hook and drop the stored tensors (at ``COMPLETED``)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._armed = False
        self._clear()

    def _install(self, engine: Engine) -> None:
        network = getattr(engine, "network", None)
        if not isinstance(network, nn.Module):
            raise RuntimeError("WassersteinAlignment: the engine has no `network` (nn.Module) to hook.")
        if self.feature_layer is None:
            layer = default_feature_layer(network)
        elif isinstance(self.feature_layer, str):
            layer = resolve_layer(network, self.feature_layer)
        else:
            layer = self.feature_layer
            if not is_submodule(network, layer):
                raise ValueError(
                    f"WassersteinAlignment: feature_layer {type(layer).__name__} is not a module of "
                    f"{type(unwrap_model(network)).__name__}."
                )
        self.remove_hook()
        self.layer = layer
        self._hook = layer.register_forward_pre_hook(self._capture)
        if self.seed is not None and self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)

    def _capture(self, module: nn.Module, args: tuple) -> None:
        if self._armed and args and isinstance(args[0], torch.Tensor):
            self._last = args[0]
            self._count += 1

    def _arm(self, engine: Engine) -> None:
        self._last = None
        self._count = 0
        self._armed = True

    def _take(self, which: str) -> torch.Tensor | None:
        self._armed = False
        if self._count > 1:
            raise RuntimeError(
                f"WassersteinAlignment: the hooked {type(self.layer).__name__} ran {self._count} times in the "
                f"{which} forward; the alignment needs the features of the whole batch from one forward "
                "(a sliding-window or patch-wise inferer does not give that)."
            )
        last, self._last = self._last, None
        return last

    def _take_nonfuzzy(self, engine: Engine) -> None:
        last = self._take("non-fuzzy")
        self.feat_n = None if last is None else last.detach()
        output = engine.state.output
        self.label = self._get(output, self.label_key)
        self.mask_n = self._get(output, DALEKeys.MASK_N)
        self.mask_f = self._get(output, DALEKeys.MASK_F)

    def _take_fuzzy(self, engine: Engine) -> None:
        self.feat_f = self._take("fuzzy")

    def _end_iteration(self, engine: Engine) -> None:
        self._armed = False
        self._clear()

    def _clear(self) -> None:
        self._last: torch.Tensor | None = None
        self.feat_n: torch.Tensor | None = None
        self.feat_f: torch.Tensor | None = None
        self.label: torch.Tensor | None = None
        self.mask_n: torch.Tensor | None = None
        self.mask_f: torch.Tensor | None = None

    @staticmethod
    def _get(output: object, key: str) -> torch.Tensor:
        if not isinstance(output, dict) or not isinstance(output.get(key), torch.Tensor):
            raise RuntimeError(
                f"WassersteinAlignment: engine.state.output has no tensor under {key!r}; the DALE trainer "
                "writes the label, the masks and ω there before firing its events."
            )
        return output[key]
