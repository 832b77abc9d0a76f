"""The ω meta step of DALE (paper Eqs. 8–11): per-pixel label confidence from loss consistency.

Plain torch, no Ignite: the step is expressed over closures that map a parameter dictionary to a
loss, so it can be tested and reused alone. :func:`network_closures` builds those closures for an
``nn.Module`` with :func:`torch.func.functional_call`.

Notation (METHOD.md): θ_n are the parameters after the non-fuzzy step, ℓ the per-pixel fuzzy loss
map at θ_n, η the segmentation learning rate, θ_p = θ_n − η·∇_θ R(ω ⊙ ℓ) the virtual SGD step with
the reduction R (mean over the N pixels in the released code), L_n the mean non-fuzzy loss of the
same batch. The meta gradient is

    g_k = ∂L_n(θ_p)/∂ω_k = −(η/N)·⟨∇_θ L_n(θ_p), ∇_θ ℓ_k(θ_n)⟩,

and ω is updated from ones by a fresh Adam (lr 0.1, eps 1e-8 in the released code), K times.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = [
    "OmegaResult",
    "OmegaMetaStep",
    "virtual_norm_mode",
    "network_closures",
    "logits_of",
    "METHODS",
    "REDUCTIONS",
]

METHODS = ("jvp", "double_backward")
REDUCTIONS = ("mean", "sum", "normalized")

ParamDict = Mapping[str, Tensor]


@contextmanager
def virtual_norm_mode(network: nn.Module) -> Iterator[None]:
    """Let the network run virtual forwards that write nothing into its normalisation buffers.

    ``functional_call`` in train mode would silently update the live BatchNorm running statistics,
    and ``torch.func.jvp`` fails on their in-place update; ``eval()`` would compute a different
    function. Turning ``track_running_stats`` off makes every norm layer normalise with batch (or
    instance) statistics, exactly as the real train-mode forward does, and write nothing.
    InstanceNorm passes its running buffers to ``F.instance_norm`` regardless of the flag, so they are
    detached for the duration as well. Everything is restored on exit.
    """
    saved = []
    for module in network.modules():
        if isinstance(module, _NormBase) and module.track_running_stats:
            saved.append((module, module.running_mean, module.running_var))
            module.track_running_stats = False
            if isinstance(module, nn.modules.instancenorm._InstanceNorm):
                module.running_mean, module.running_var = None, None
    try:
        yield
    finally:
        for module, mean, var in saved:
            module.track_running_stats = True
            module.running_mean, module.running_var = mean, var


def logits_of(output: Tensor | Sequence[Tensor]) -> Tensor:
    """The logits tensor of a network's output; networks such as MONAI's ``BasicUNetPlusPlus`` return a
    list whose first element is the full-resolution prediction (the rest are deep-supervision heads)."""
    if isinstance(output, (list, tuple)):
        return output[0]
    return output


def network_closures(
    network: nn.Module,
    fuzzy_inputs: Tensor,
    fuzzy_map_fn: Callable[[Tensor], Tensor],
    nonfuzzy_inputs: Tensor,
    nonfuzzy_loss_fn: Callable[[Tensor], Tensor],
) -> tuple[Callable[[ParamDict], Tensor], Callable[[ParamDict], Tensor]]:
    """Closures θ ↦ ℓ(θ) (per-pixel fuzzy loss map) and θ ↦ L_n(θ) (scalar) for :class:`OmegaMetaStep`.

    Args:
        network: the segmentation network (unwrapped from DDP); its forward returns one logits tensor.
        fuzzy_inputs: X^f.
        fuzzy_map_fn: logits ↦ per-pixel fuzzy loss map.
        nonfuzzy_inputs: X^n.
        nonfuzzy_loss_fn: logits ↦ scalar non-fuzzy loss.
    """

    def fuzzy_map(params: ParamDict) -> Tensor:
        return fuzzy_map_fn(logits_of(torch.func.functional_call(network, dict(params), (fuzzy_inputs,))))

    def nonfuzzy_loss(params: ParamDict) -> Tensor:
        return nonfuzzy_loss_fn(logits_of(torch.func.functional_call(network, dict(params), (nonfuzzy_inputs,))))

    return fuzzy_map, nonfuzzy_loss


@dataclass
class OmegaResult:
    """Result of the ω meta step.

    Attributes:
        omega: ω*, same shape as the fuzzy loss map, detached.
        grad: the meta gradient g of the first of the K steps, as Adam saw it (after the reduction scaling).
        frac_small_grad: fraction of pixels with ``|g| < eps`` in the first step, where Adam's eps
            dominates and ω barely moves (METHOD.md: the released mean reduction saturates here).
    """

    omega: Tensor
    grad: Tensor
    frac_small_grad: float


class OmegaMetaStep:
    """The ω meta step, exact, in one of two ways that compute the same ω.

    - ``"jvp"`` (default, fast): one forward+backward of L_n at θ_p with
      :func:`torch.func.functional_call` gives v = ∇_θ L_n(θ_p); one forward-mode Jacobian-vector
      product of the fuzzy loss map at θ_n along v gives all ⟨v, ∇ℓ_k⟩ at once. The virtual step's
      gradient is taken from the graph of the real fuzzy forward, which the trainer keeps for its
      fuzzy step, so no fuzzy forward is repeated; nothing is differentiated twice.
    - ``"double_backward"`` (reference): differentiates L_n(θ_p(ω)) through the virtual SGD step with
      ``create_graph=True``, as the released code does with ``higher``.

    Args:
        method: ``"jvp"`` or ``"double_backward"``.
        lr: learning rate of the fresh Adam that updates ω (the paper's "ω = 0.1").
        eps: Adam's eps (1e-8 in the released code).
        steps: K, the number of ω updates per iteration (1 in the paper).
        reduction: how the per-pixel meta gradient is scaled before Adam:
            ``"mean"`` reproduces the released code (the virtual loss is a mean over the N pixels, so g
            carries η/N and is often far below eps: ω stays within about ±0.01 of 1);
            ``"sum"`` multiplies g by N (the gradient of a summed virtual loss: ω ≈ 1 ± lr);
            ``"normalized"`` divides g by its mean absolute value over the batch (scale-free, ω ≈ 1 ± lr
            wherever |g| is not far below average). The virtual step θ_p is the same in all three.
        betas: Adam's betas.

    Raises:
        ValueError: for an unknown method/reduction, ``steps < 1``, ``lr <= 0`` or ``eps < 0``.
    """

    def __init__(
        self,
        method: str = "jvp",
        lr: float = 0.1,
        eps: float = 1e-8,
        steps: int = 1,
        reduction: str = "mean",
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"omega method must be one of {METHODS}, got {method!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"omega reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"omega steps (K) must be an integer >= 1, got {steps!r}")
        if not lr > 0:
            raise ValueError(f"omega lr must be > 0, got {lr!r}")
        if not eps >= 0:
            raise ValueError(f"omega eps must be >= 0, got {eps!r}")
        self.method = method
        self.lr = float(lr)
        self.eps = float(eps)
        self.steps = steps
        self.reduction = reduction
        self.betas = betas

    def __call__(
        self,
        fuzzy_loss_map: Tensor,
        params: ParamDict,
        fuzzy_map: Callable[[ParamDict], Tensor],
        nonfuzzy_loss: Callable[[ParamDict], Tensor],
        inner_lr: float,
        grad_reducer: Callable[[list[Tensor]], None] | None = None,
        world_size: int = 1,
    ) -> OmegaResult:
        """Compute ω*.

        Args:
            fuzzy_loss_map: ℓ at θ_n with its graph to ``params`` (kept: the caller backpropagates
                through it afterwards for the real fuzzy step).
            params: the live parameters θ_n (name → tensor requiring grad); never modified.
            fuzzy_map: θ ↦ ℓ(θ), a pure function of the parameters (see :func:`network_closures`);
                called under :func:`virtual_norm_mode` by the caller's choice. Used by ``"jvp"`` only.
            nonfuzzy_loss: θ ↦ L_n(θ), scalar.
            inner_lr: η, the step size of the virtual SGD step (the segmentation learning rate).
            grad_reducer: in-place all-reduce (average) of a list of tensors across processes. Under DDP
                the virtual step and v = ∇L_n then use the gradients of the global batch, and ω equals the ω
                of one process holding the whole batch.
            world_size: number of processes sharing the batch (equal shards), for the global pixel count.
        """
        names = [n for n, p in params.items() if p.requires_grad]
        theta = [params[n] for n in names]
        omega = torch.ones_like(fuzzy_loss_map, dtype=fuzzy_loss_map.dtype).detach().requires_grad_(True)
        adam = torch.optim.Adam([omega], lr=self.lr, eps=self.eps, betas=self.betas)
        n_local = fuzzy_loss_map.numel()
        n_pixels = n_local * world_size
        self._reducer, self._world = grad_reducer, world_size
        first_grad = None
        for _ in range(self.steps):
            if self.method == "jvp":
                g = self._grad_jvp(fuzzy_loss_map, omega.detach(), names, theta, fuzzy_map, nonfuzzy_loss,
                                   inner_lr, n_pixels)
            else:
                g = self._grad_double_backward(fuzzy_loss_map, omega, names, theta, nonfuzzy_loss, inner_lr,
                                               n_pixels)
            g = self._scale(g, n_pixels)
            if first_grad is None:
                first_grad = g
            omega.grad = g
            adam.step()
        frac_small = float((first_grad.abs() < self.eps).float().mean()) if first_grad is not None else 0.0
        return OmegaResult(omega=omega.detach(), grad=first_grad, frac_small_grad=frac_small)

    def _scale(self, g: Tensor, n_pixels: int) -> Tensor:
        if self.reduction == "sum":
            return g * n_pixels
        if self.reduction == "normalized":
            scale = g.abs().mean().reshape(1)
            if self._reducer is not None:
                self._reducer([scale])
            return g / scale.clamp_min(torch.finfo(g.dtype).tiny)
        return g

    def _virtual_params(
        self, fuzzy_loss_map: Tensor, omega: Tensor, theta: list[Tensor], inner_lr: float, create_graph: bool
    ) -> list[Tensor]:
        # the local mean; under DDP the global virtual gradient is the average of the ranks' local ones
        virtual_loss = (omega * fuzzy_loss_map).sum() / fuzzy_loss_map.numel()
        grads = torch.autograd.grad(virtual_loss, theta, retain_graph=True, create_graph=create_graph,
                                    allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(theta, grads)]
        if self._reducer is not None:
            reduced = [g.detach().clone() for g in grads]
            self._reducer(reduced)
            # value: the global gradient; derivative w.r.t. the local ω: the local one over world_size
            grads = [g / self._world + (r - g / self._world).detach() for g, r in zip(grads, reduced)]
        return [p - inner_lr * g for p, g in zip(theta, grads)]

    def _nonfuzzy_grad(self, nonfuzzy_loss, names, theta_p, retain_graph: bool) -> list[Tensor]:
        loss = nonfuzzy_loss(dict(zip(names, theta_p)))
        v = torch.autograd.grad(loss, theta_p, retain_graph=retain_graph, allow_unused=True)
        v = [torch.zeros_like(p) if gv is None else gv for p, gv in zip(theta_p, v)]
        if self._reducer is not None:
            self._reducer(v)
        return v

    def _grad_jvp(self, fuzzy_loss_map, omega, names, theta, fuzzy_map, nonfuzzy_loss, inner_lr, n_pixels) -> Tensor:
        theta_p = self._virtual_params(fuzzy_loss_map, omega, theta, inner_lr, create_graph=False)
        theta_p = [p.detach().requires_grad_(True) for p in theta_p]
        v = self._nonfuzzy_grad(nonfuzzy_loss, names, theta_p, retain_graph=False)
        # forward-mode dual tensors directly: the same product as torch.func.jvp without functorch's
        # functionalisation overhead (measured 20–30 % faster for this step with benchmarks/bench_speed.py)
        with fwAD.dual_level():
            duals = {n: fwAD.make_dual(p.detach(), t.detach()) for n, p, t in zip(names, theta, v)}
            jv = fwAD.unpack_dual(fuzzy_map(duals)).tangent
        return (-inner_lr / n_pixels) * jv.detach()

    def _grad_double_backward(self, fuzzy_loss_map, omega, names, theta, nonfuzzy_loss, inner_lr, n_pixels) -> Tensor:
        theta_p = self._virtual_params(fuzzy_loss_map, omega, theta, inner_lr, create_graph=True)
        v = self._nonfuzzy_grad(nonfuzzy_loss, names, theta_p, retain_graph=True)
        # g = (∂θ_p/∂ω)ᵀ v: the chain rule through the virtual step, with v possibly all-reduced
        (g,) = torch.autograd.grad(theta_p, omega, grad_outputs=v, retain_graph=True)
        return g.detach()
