"""GapMatch's pieces as plain torch functions: confidence-filtered pseudo-labels, the strong view, the model
perturbation.

GapMatch (Huang, Zhang, Wang, Wang, "GapMatch: bridging instance and model perturbations for enhanced
semi-supervised medical image segmentation", AAAI 2025) has no public code, and only its abstract was read (the
seed document carries ARCO's abstract under GapMatch's title, ``../shared/PARADIGMS.md``). What two unnamed
public re-implementations agree on, and what :class:`~dale_monai.engines.GapMatchTrainer` does:

- **instance perturbation** (FixMatch-style): hard pseudo-labels from the weakly perturbed unlabelled image,
  kept where the prediction's confidence reaches ``p_cutoff`` (:func:`confidence_mask`; the USB-style
  re-implementation: 0.95), trained on a strongly perturbed view (:func:`strong_view`);
- **model perturbation** (SAM-style): g₁ = ∇L_u(θ), θ* = θ + ε·g₁/‖g₁‖ (:func:`perturbation`; ε = 0.01), g₂ =
  ∇L_u(θ*), and the unsupervised gradient g_u = g₁ + α·g₂ (α = 1); the step uses g_l + w·g_u.

**Ours:** the strong view, a per-image intensity jitter (contrast × U(1 − s, 1 + s), brightness + U(−s/2, s/2),
s = 0.25) followed by a CutMix of the batch with the pseudo-labels and their confidence mixed alike (the
re-implementations use image augmentations of their own: RandAugment-style operations, or an adversarial
I-FGSM view); and the global L2 norm of g₁ over all trainable parameters. Both re-implementations are buggy
(one back-propagates a freed graph, the other never applies its confidence mask), so none is a numeric reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .fixed_dynamic import cutmix
from .semisup import probabilities

__all__ = ["confidence_mask", "intensity_jitter", "strong_view", "perturbation"]


def confidence_mask(logits: Tensor, threshold: float) -> Tensor:
    """1 where the predicted class's probability reaches ``threshold``: ``(B, 1, *spatial)`` float, detached.

    For one channel the predicted class's probability is max(p, 1 − p), p the sigmoid; else the largest softmax.

    Raises:
        ValueError: ``threshold`` outside [0, 1].
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"confidence_mask: threshold must lie in [0, 1], got {threshold!r}")
    p = probabilities(logits.detach())
    confidence = torch.maximum(p, 1 - p) if p.shape[1] == 1 else p.max(dim=1, keepdim=True).values
    return (confidence >= threshold).to(torch.float32)


def intensity_jitter(x: Tensor, strength: float = 0.25, generator: torch.Generator | None = None) -> Tensor:
    """Per image b: x_b · a_b + c_b with a_b ~ U(1 − s, 1 + s) and c_b ~ U(−s/2, s/2), s = ``strength``
    (intensities scaled to [0, 1], as in the bundles), drawn from ``generator`` (default: the global one).

    Raises:
        ValueError: ``strength`` outside [0, 1].
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"intensity_jitter: strength must lie in [0, 1], got {strength!r}")
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    a = 1 + strength * (2 * torch.rand(shape, generator=generator) - 1)
    c = strength * (torch.rand(shape, generator=generator) - 0.5)
    return x * a.to(x.device, x.dtype) + c.to(x.device, x.dtype)


def strong_view(x: Tensor, masks: Tensor, strength: float = 0.25) -> Tensor:
    """The strong view: :func:`intensity_jitter` then :func:`dale_monai.fixed_dynamic.cutmix` with ``masks``."""
    return cutmix(intensity_jitter(x, strength), masks)


def perturbation(grads: list[Tensor | None], eps: float) -> list[Tensor | None] | None:
    """ε·g/‖g‖ per parameter, ‖g‖ the L2 norm over all of them; ``None`` when ‖g‖ = 0 or ε = 0 (no perturbation).

    Raises:
        ValueError: a negative ``eps``.
    """
    if eps < 0:
        raise ValueError(f"perturbation: eps must be >= 0, got {eps!r}")
    present = [g for g in grads if g is not None]
    if eps == 0 or not present:
        return None
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in present))
    if not norm > 0:
        return None
    return [None if g is None else (g * (eps / norm)).to(g.dtype) for g in grads]
