"""Meta re-weighting with a small clean set as plain torch functions: MW-Net and learning to re-weight.

Both methods give every training pixel a weight chosen so that one SGD step on the weighted training loss
lowers the loss of a clean *meta* batch. With θ the network's parameters, ℓ_k the loss of pixel k (N pixels),
η the learning rate and L_meta the clean batch's loss:

- **MW-Net** (Shu et al., "Meta-Weight-Net: learning an explicit mapping for sample weighting", NeurIPS 2019,
  ``xjtushujun/meta-weight-net``): a weight network V(ℓ; φ) (:class:`WeightNet`, 1 → 100 → 1, ReLU, sigmoid)
  maps each pixel's loss (detached) to its weight w_k. A differentiable virtual step
  θ'(φ) = θ − η·∇_θ (1/N) Σ_k w_k(φ)·ℓ_k(θ) is taken, L_meta(θ'(φ)) updates φ (Adam, lr 1e-3, weight decay
  1e-4 in the reference code), and the real step minimises (1/N) Σ_k w_k·ℓ_k with the updated φ.
- **Learning to re-weight** (L2RW; Ren et al., "Learning to reweight examples for robust deep learning",
  ICML 2018): no weight network; ε_k = 0 perturbs each pixel's loss, g_k = ∂L_meta(θ − η∇_θ Σ ε_k ℓ_k)/∂ε_k at
  ε = 0, and w = max(−g, 0) normalised to sum 1 over the batch (all zeros if every g ≥ 0).

The MW-Net meta gradient reuses DALE's ω meta step (:class:`dale_monai.meta.OmegaMetaStep`), which computes
g_k = ∂L_meta(θ_p)/∂ω_k at ω = 1 for θ_p = θ − η·∇(1/N) Σ ω_k·m_k, exactly (fast ``jvp`` form or the
``double_backward`` reference). With m = w ⊙ ℓ (w detached) that is w_k·∂L_meta/∂w_k, so by the chain rule
∇_φ L_meta = Σ_k g_k·∂ log w_k/∂φ: one backward of log V through the small weight network
(:func:`weight_net_gradient`). L2RW's g is a forward-mode product of the pixel losses' Jacobian with
∇_θ L_meta(θ) (:func:`l2rw_weights`). Both build their θ ↦ loss closures with
:func:`dale_monai.meta.network_closures`.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

from .meta import METHODS, OmegaMetaStep

__all__ = ["WeightNet", "weight_net_gradient", "l2rw_weights", "log_weight"]

ParamDict = Mapping[str, Tensor]


class WeightNet(nn.Module):
    """MW-Net's weighting function V(ℓ; φ): an MLP 1 → ``hidden_features`` → 1 with ReLU and a sigmoid output,
    applied to every pixel's loss independently (``VNet(1, 100, 1)`` in ``MW-Net.py`` of the reference code).

    Args:
        hidden_features: width of the hidden layer (100 in MW-Net).

    Shapes:
        input: any shape (e.g. a loss map ``(B, 1, *spatial)``); output: the same shape, weights in (0, 1).
    """

    def __init__(self, hidden_features: int = 100) -> None:
        super().__init__()
        if isinstance(hidden_features, bool) or not isinstance(hidden_features, int) or hidden_features < 1:
            raise ValueError(f"WeightNet: hidden_features must be an integer >= 1, got {hidden_features!r}")
        self.hidden = nn.Linear(1, hidden_features)
        self.output = nn.Linear(hidden_features, 1)

    def logits(self, loss: Tensor) -> Tensor:
        """The pre-sigmoid value of every element of ``loss``."""
        x = loss.reshape(-1, 1)
        return self.output(F.relu(self.hidden(x))).reshape(loss.shape)

    def forward(self, loss: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(loss))

    def log_weight(self, loss: Tensor) -> Tensor:
        """log V(ℓ), computed stably as logsigmoid of the logits."""
        return F.logsigmoid(self.logits(loss))


def log_weight(weight_net: nn.Module, loss: Tensor) -> Tensor:
    """log V(ℓ; φ) with its graph to φ: the network's ``log_weight`` if it has one, else log of its output."""
    if hasattr(weight_net, "log_weight"):
        return weight_net.log_weight(loss)
    w = weight_net(loss)
    return torch.log(w.clamp_min(torch.finfo(w.dtype).tiny))


def weight_net_gradient(
    loss_map: Tensor,
    weight_net: nn.Module,
    params: ParamDict,
    pixel_map: Callable[[ParamDict], Tensor],
    meta_loss: Callable[[ParamDict], Tensor],
    inner_lr: float,
    method: str = "jvp",
    grad_reducer: Callable[[list[Tensor]], None] | None = None,
    world_size: int = 1,
) -> tuple[list[Tensor | None], Tensor]:
    """∇_φ L_meta(θ − η·∇_θ mean(V(ℓ; φ) ⊙ ℓ(θ))), MW-Net's meta gradient of the weight network, exactly.

    Args:
        loss_map: ℓ(θ), the per-pixel training loss ``(B, 1, *spatial)`` with its graph to ``params`` (kept: the
            caller backpropagates through it for the real step).
        weight_net: V; its input is ℓ detached, as in MW-Net.
        params: the network's live parameters θ (name → tensor); never modified.
        pixel_map: θ ↦ ℓ(θ), a pure function of the parameters (:func:`dale_monai.meta.network_closures`).
        meta_loss: θ ↦ L_meta(θ), the clean meta batch's scalar loss.
        inner_lr: η of the virtual SGD step (MW-Net uses the network's current learning rate).
        method: how :class:`~dale_monai.meta.OmegaMetaStep` differentiates through the virtual step (``"jvp"``,
            exact and fast, or ``"double_backward"``, the reference).
        grad_reducer: in-place average of a list of tensors over processes (DDP); then θ', ∇L_meta and the
            result are those of one process holding the global batch.
        world_size: number of processes sharing the batch.

    Returns:
        the gradients of ``weight_net.parameters()`` (``None`` for unused ones), and the weights V(ℓ) used,
        detached.

    Raises:
        ValueError: for an unknown ``method``.
    """
    if method not in METHODS:
        raise ValueError(f"weight_net_gradient: method must be one of {METHODS}, got {method!r}")
    loss_in = loss_map.detach()
    weight = weight_net(loss_in).detach().to(loss_map.dtype)
    # the ω meta step at ω = 1 on the map w ⊙ ℓ: its g_k = ∂L_meta/∂ω_k = w_k·∂L_meta/∂w_k
    step = OmegaMetaStep(method=method, lr=1.0, eps=0.0, steps=1, reduction="mean")
    result = step(weight * loss_map, params, lambda p: weight * pixel_map(p), meta_loss, inner_lr,
                  grad_reducer=grad_reducer, world_size=world_size)
    phi = [p for p in weight_net.parameters()]
    log_w = log_weight(weight_net, loss_in.to(next(iter(phi)).dtype) if phi else loss_in)
    grads = list(torch.autograd.grad(log_w, phi, grad_outputs=result.grad.to(log_w.dtype), allow_unused=True))
    if grad_reducer is not None and world_size > 1:
        # each process holds its own pixels' terms of the sum over the global batch: sum = mean × processes
        present = [g for g in grads if g is not None]
        grad_reducer(present)
        for g in present:
            g.mul_(world_size)
    return grads, weight


def l2rw_weights(
    params: ParamDict,
    pixel_map: Callable[[ParamDict], Tensor],
    meta_loss: Callable[[ParamDict], Tensor],
    grad_reducer: Callable[[list[Tensor]], None] | None = None,
    sum_reducer: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """Learning to re-weight: w = max(−g, 0) / Σ max(−g, 0) with g_k = ∂L_meta(θ − η∇_θ Σ ε ℓ)/∂ε_k at ε = 0.

    At ε = 0 the virtual step is θ itself, so g_k = −η·⟨∇_θ L_meta(θ), ∇_θ ℓ_k(θ)⟩; the positive factor η
    cancels in the normalisation and is left out. One backward of L_meta gives v = ∇_θ L_meta(θ); one
    forward-mode product of the pixel losses along v gives every ⟨v, ∇ℓ_k⟩.

    Args:
        params: the network's parameters θ (name → tensor); never modified.
        pixel_map: θ ↦ ℓ(θ), per-pixel training losses (:func:`dale_monai.meta.network_closures`).
        meta_loss: θ ↦ L_meta(θ).
        grad_reducer: in-place average of a list of tensors over processes (DDP): v of the global meta batch.
        sum_reducer: in-place sum of a scalar tensor over processes: the normaliser of the global batch.

    Returns:
        the weights, ``pixel_map``'s shape, non-negative, summing to 1 over the (global) batch, or all zeros
        when no pixel's loss gradient agrees with the meta gradient.
    """
    names = [n for n, p in params.items() if p.requires_grad]
    theta = [params[n].detach().requires_grad_(True) for n in names]
    loss = meta_loss(dict(zip(names, theta)))
    v = torch.autograd.grad(loss, theta, allow_unused=True)
    v = [torch.zeros_like(p) if g is None else g for p, g in zip(theta, v)]
    if grad_reducer is not None:
        grad_reducer(v)
    with fwAD.dual_level():
        duals = {n: fwAD.make_dual(p.detach(), t.detach()) for n, p, t in zip(names, theta, v)}
        out = fwAD.unpack_dual(pixel_map(duals))
        jv = out.tangent if out.tangent is not None else torch.zeros_like(out.primal)
    w = jv.detach().clamp_min(0)  # max(−g, 0) up to the factor η
    total = w.sum()
    if sum_reducer is not None:
        sum_reducer(total)
    return w / total if bool(total > 0) else torch.zeros_like(w)
