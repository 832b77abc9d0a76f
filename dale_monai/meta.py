"""The ω meta step of DALE (paper Eqs. 8–11): per-pixel label confidence from loss consistency.

Plain torch, no Ignite: the step is expressed over closures that map a parameter dictionary to a
loss, so it can be tested and reused alone. :func:`network_closures` builds those closures for an
``nn.Module`` with :func:`torch.func.functional_call`.

Notation (METHOD.md): θ are the parameters before the iteration, θ_n after the non-fuzzy step, ℓ the
per-pixel fuzzy loss map at θ_n, η the segmentation learning rate, θ_p = θ_n − η·∇_θ R(ω ⊙ ℓ) the
virtual SGD step with the reduction R (mean over the N pixels in the released code), L_n the mean
non-fuzzy loss of the same batch. The meta gradient is

    g_k = ∂L_n(θ_p)/∂ω_k = −(η/N)·⟨∇_θ L_n(θ_p), ∇_θ ℓ_k(θ_n)⟩,

and ω is updated from ones by a fresh Adam (lr 0.1, eps 1e-8 in the released code), K times. The
``first_order`` method replaces ∇_θ L_n(θ_p) by the non-fuzzy step's own gradient ∇_θ L_n(θ); the
``l2rw`` rule turns g into ω as learning to reweight does (Ren et al., ICML 2018) instead of Adam.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from .feature_layers import default_feature_layer, is_submodule, resolve_layer, unwrap_model

__all__ = [
    "OmegaResult",
    "OmegaMetaStep",
    "HeadCall",
    "virtual_norm_mode",
    "network_closures",
    "head_parameters",
    "capture_calls",
    "logits_of",
    "METHODS",
    "REDUCTIONS",
    "SCOPES",
    "RULES",
]

METHODS = ("jvp", "double_backward", "first_order")
REDUCTIONS = ("mean", "sum", "normalized")
SCOPES = ("full", "head")
RULES = ("adam", "l2rw")

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


@dataclass
class HeadCall:
    """One call of a module recorded by :func:`capture_calls`: its inputs and its output.

    Attributes:
        args: positional inputs, as passed (not detached).
        kwargs: keyword inputs.
        output: what the module returned.
    """

    args: tuple
    kwargs: dict
    output: Any


@contextmanager
def capture_calls(module: nn.Module) -> Iterator[list[HeadCall]]:
    """Record every forward call of ``module`` while the context is open (a forward hook, removed on exit).

    The DALE trainer wraps its real fuzzy forward in it when the meta step works on the segmentation
    head only (``OmegaMetaStep(scope="head")``): the head's recorded input is the pre-head feature map at
    θ_n, so the head can be re-run alone instead of the whole network.
    """
    calls: list[HeadCall] = []

    def hook(_: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        calls.append(HeadCall(args, kwargs, output))

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _module_prefix(network: nn.Module, module: nn.Module) -> str:
    for name, m in network.named_modules():
        if m is module:
            return f"{name}." if name else ""
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(network).__name__}")


def head_parameters(network: nn.Module, head: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters of ``head``, named as in ``network.named_parameters()``.

    Args:
        network: the (unwrapped) segmentation network.
        head: one of its modules, e.g. :func:`dale_monai.feature_layers.default_feature_layer`.

    Raises:
        ValueError: ``head`` is not a submodule of ``network`` or has no trainable parameter.
    """
    prefix = _module_prefix(network, head)
    params = {prefix + n: p for n, p in head.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"the head {prefix.rstrip('.') or type(head).__name__!r} has no trainable parameters: "
                         "scope='head' needs some (choose another head_layer or scope='full')")
    return params


def _detached_like(value: Any, dtype: torch.dtype) -> Any:
    # the virtual passes run without autocast: half-precision features recorded under AMP are cast back
    if isinstance(value, Tensor):
        value = value.detach()
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    return value


def network_closures(
    network: nn.Module,
    fuzzy_inputs: Tensor,
    fuzzy_map_fn: Callable[[Tensor], Tensor],
    nonfuzzy_inputs: Tensor,
    nonfuzzy_loss_fn: Callable[[Tensor], Tensor],
    head_call: tuple[nn.Module, HeadCall] | None = None,
) -> tuple[Callable[[ParamDict], Tensor], Callable[[ParamDict], Tensor]]:
    """Closures θ ↦ ℓ(θ) (per-pixel fuzzy loss map) and θ ↦ L_n(θ) (scalar) for :class:`OmegaMetaStep`.

    θ may hold only some of the parameters (named as in ``network.named_parameters()``); the others keep
    their live values.

    Args:
        network: the segmentation network (unwrapped from DDP); its forward returns one logits tensor.
        fuzzy_inputs: X^f.
        fuzzy_map_fn: logits ↦ per-pixel fuzzy loss map.
        nonfuzzy_inputs: X^n.
        nonfuzzy_loss_fn: logits ↦ scalar non-fuzzy loss.
        head_call: ``(head, call)``, the head module and its call recorded (:func:`capture_calls`) in the
            real fuzzy forward at θ_n, whose output IS the network's logits. θ ↦ ℓ(θ) then re-runs only the
            head on the recorded (detached) pre-head features and takes only head parameters: exact for
            θ restricted to the head, at a fraction of a network forward.

    Raises:
        ValueError: (when called) θ ↦ ℓ(θ) with ``head_call`` given a parameter outside the head.
    """
    if head_call is not None:
        head, call = head_call
        prefix = _module_prefix(network, head)
        dtype = next((p.dtype for p in head.parameters() if p.is_floating_point()), torch.get_default_dtype())
        args = tuple(_detached_like(a, dtype) for a in call.args)
        kwargs = {k: _detached_like(v, dtype) for k, v in call.kwargs.items()}

        def fuzzy_map(params: ParamDict) -> Tensor:
            outside = [n for n in params if not n.startswith(prefix)]
            if outside:
                raise ValueError(f"the head-only fuzzy map takes head parameters ({prefix}*) only, got {outside[:3]}")
            local = {n[len(prefix):]: p for n, p in params.items()}
            return fuzzy_map_fn(logits_of(torch.func.functional_call(head, local, args, kwargs)))

    else:

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
        grad: the meta gradient g of the first of the K steps, as the rule saw it (after the reduction scaling).
        frac_small_grad: fraction of pixels with ``|g| < eps`` in the first step, where Adam's eps
            dominates and ω barely moves (METHOD.md: the released mean reduction saturates here).
    """

    omega: Tensor
    grad: Tensor
    frac_small_grad: float


class OmegaMetaStep:
    """The ω meta step: a per-pixel meta gradient g (``method``, over parameters ``scope``) turned into ω (``rule``).

    **Methods** (how g is computed):

    - ``"jvp"`` (default, exact; METHOD.md): one forward+backward of L_n at θ_p with
      :func:`torch.func.functional_call` gives v = ∇_θ L_n(θ_p); one forward-mode Jacobian-vector
      product of the fuzzy loss map at θ_n along v gives all g_k = −(η/N)·⟨v, ∇ℓ_k(θ_n)⟩ at once. The
      virtual step's gradient is taken from the graph of the real fuzzy forward, which the trainer keeps
      for its fuzzy step, so no fuzzy forward is repeated; nothing is differentiated twice.
    - ``"double_backward"`` (exact, the reference): differentiates L_n(θ_p(ω)) through the virtual SGD step
      with ``create_graph=True``, as the released code does with ``higher``.
    - ``"first_order"`` (approximate, fast): g_k = −(η/N)·⟨v, ∇_θ ℓ_k(θ_n)⟩ with v = ∇_θ L_n(θ), the
      gradient the real non-fuzzy step already computed (passed in as ``nonfuzzy_grad``; the DALE trainer
      keeps a copy before its optimizer step). No virtual step, no v pass: one Jacobian-vector product.
      v is taken at θ instead of θ_p: the two differ by the real non-fuzzy optimizer step (θ → θ_n) and the
      virtual SGD step (θ_n → θ_p, size η·∇L_f), so this is the exact g to first order in both steps (the
      η → 0 limit of the virtual step, as in first-order MAML). What the default ``adam`` rule uses from g
      is mostly its sign (one fresh Adam step is a soft sign, see ``rule``), and the sign is what survives
      the approximation: ``benchmarks/bench_speed.py`` measures the agreement with ``"jvp"`` on the same
      batches and weights. Under DDP the non-fuzzy gradient is already all-reduced by DDP's backward.

    **Scope** (which parameters θ the meta gradient is taken over):

    - ``"full"`` (default, the paper): every trainable parameter.
    - ``"head"``: only the parameters of the segmentation head (``head_layer``, by default
      :func:`dale_monai.feature_layers.default_feature_layer`, the module whose input the Wasserstein term hooks).
      The virtual step, v and the inner products are restricted to the head; the DALE trainer records the
      head's input in its real fuzzy forward, so the Jacobian-vector product runs through the head alone
      (see :func:`network_closures`). Far cheaper, and a coarser signal: a pixel's agreement is judged
      only through the last layer(s).

    **Rules** (how g becomes ω):

    - ``"adam"`` (default, released code): ω from ones by K steps of a fresh Adam (``lr``, ``eps``,
      ``betas``). One step is ω* = 1 − lr·g/(|g| + eps): a soft sign in [1 − lr, 1 + lr]. With the released
      ``lr`` 0.1 and ``"mean"`` reduction |g| is far below eps and ω moves by about ±0.01; ``"sum"`` or
      ``"normalized"`` give ±lr; a larger ``lr`` (e.g. 1.0, ω ∈ [0, 2]) or K > 1 re-weight more strongly.
      After every step ω is clamped at 0 (projected Adam): a negative weight would make the fuzzy step ascend
      that pixel's loss. The clamp never binds while K·lr ≤ 1, so the released update is unchanged.
    - ``"l2rw"``: learning to reweight (Ren et al., "Learning to Reweight Examples for Robust Deep
      Learning", ICML 2018, Algorithm 1): w = max(−g, 0), normalised. Ren et al. normalise w to sum to 1 over
      the mini-batch (their loss is Σ w_i·ℓ_i); DALE's fuzzy loss is a mean over pixels, so here
      ω = w · Σ_k M^f_k / Σ_k M^f_k·w_k: its mean under the fuzzy mask M^f (``fuzzy_mask``; uniform when not
      given) is 1, the fuzzy loss keeps the scale it has with ω ≡ 1, and a binary mask makes ω sum to the
      number of fuzzy pixels. Pixels whose up-weighting would not lower L_n (g ≥ 0) get ω = 0. If no pixel
      has g < 0 under the mask (Ren et al. then give all-zero weights), ω falls back to uniform ones. Ren et
      al. evaluate g at ε = 0 (θ_p = θ_n); here g is the method's, at ω = 1, so that the rules act on the same
      g. ``lr``, ``eps`` (except for ``frac_small_grad``) and ``betas`` are unused, the normalisation makes
      ``reduction`` irrelevant, and K must be 1 (the rule is one-shot).
      :class:`~dale_monai.handlers.WassersteinAlignment` takes the pixels with ω* > 1 as clean: under this rule,
      those weighted above the mean.

    **K** (``steps``) > 1: for ``"jvp"`` and ``"double_backward"`` every step re-computes g at the current ω
    (θ_p moves with ω), K times the meta step's cost. For ``"first_order"`` g does not depend on ω (no
    virtual step), so it is computed once and Adam takes K steps with it: ω = 1 − K·lr·g/(|g| + eps), the
    same as K = 1 with K·lr.

    Args:
        method: ``"jvp"``, ``"double_backward"`` or ``"first_order"`` (above).
        lr: learning rate of the fresh Adam that updates ω (the paper's "ω = 0.1").
        eps: Adam's eps (1e-8 in the released code).
        steps: K, the number of ω updates per iteration (1 in the paper and the released code).
        reduction: how the per-pixel meta gradient is scaled before the rule:
            ``"mean"`` reproduces the released code (the virtual loss is a mean over the N pixels, so g
            carries η/N and is often far below eps: ω stays within about ±0.01 of 1);
            ``"sum"`` multiplies g by N (the gradient of a summed virtual loss: ω ≈ 1 ± lr);
            ``"normalized"`` divides g by its mean absolute value over the batch (scale-free, ω ≈ 1 ± lr
            wherever |g| is not far below average). The virtual step θ_p is the same in all three.
        betas: Adam's betas (PyTorch's defaults, as in the released code).
        scope: ``"full"`` or ``"head"`` (above).
        rule: ``"adam"`` or ``"l2rw"`` (above).
        head_layer: with ``scope="head"``: the head, as a dotted module path of the unwrapped network or the
            module itself; ``None`` uses :func:`dale_monai.feature_layers.default_feature_layer`.

    Raises:
        ValueError: naming the option, for an unknown method/reduction/scope/rule, ``steps`` not an integer
            ≥ 1 (or ≠ 1 with ``rule="l2rw"``), ``lr <= 0``, ``eps < 0``, betas outside [0, 1), or a
            ``head_layer`` with ``scope="full"``.
    """

    def __init__(
        self,
        method: str = "jvp",
        lr: float = 0.1,
        eps: float = 1e-8,
        steps: int = 1,
        reduction: str = "mean",
        betas: tuple[float, float] = (0.9, 0.999),
        scope: str = "full",
        rule: str = "adam",
        head_layer: str | nn.Module | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"omega method must be one of {METHODS}, got {method!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"omega reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if scope not in SCOPES:
            raise ValueError(f"omega scope must be one of {SCOPES}, got {scope!r}")
        if rule not in RULES:
            raise ValueError(f"omega rule must be one of {RULES}, got {rule!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"omega steps (K) must be an integer >= 1, got {steps!r}")
        if rule == "l2rw" and steps != 1:
            raise ValueError(f"omega steps (K) must be 1 with rule='l2rw' (a one-shot rule), got {steps!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"omega lr must be a finite number > 0, got {lr!r}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"omega eps must be a finite number >= 0, got {eps!r}")
        if len(tuple(betas)) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"omega betas must be two numbers in [0, 1), got {betas!r}")
        if head_layer is not None:
            if scope != "head":
                raise ValueError(f"omega head_layer is only used with scope='head', got scope={scope!r}")
            if not (isinstance(head_layer, nn.Module) or (isinstance(head_layer, str) and head_layer)):
                raise ValueError(f"omega head_layer must be a dotted module path or a module, got {head_layer!r}")
        self.method = method
        self.lr = float(lr)
        self.eps = float(eps)
        self.steps = steps
        self.reduction = reduction
        self.betas = (float(betas[0]), float(betas[1]))
        self.scope = scope
        self.rule = rule
        self.head_layer = head_layer

    def __repr__(self) -> str:
        head = "" if self.head_layer is None else f", head_layer={self.head_layer!r}"
        return (f"OmegaMetaStep(method={self.method!r}, lr={self.lr:g}, eps={self.eps:g}, steps={self.steps}, "
                f"reduction={self.reduction!r}, betas={self.betas}, scope={self.scope!r}, rule={self.rule!r}{head})")

    @property
    def needs_nonfuzzy_grad(self) -> bool:
        """Whether ``__call__`` needs ``nonfuzzy_grad``, the real non-fuzzy step's gradient (``first_order``)."""
        return self.method == "first_order"

    def head_module(self, network: nn.Module) -> nn.Module:
        """The head whose parameters ``scope="head"`` restricts θ to (``head_layer``, or the network's default).

        Args:
            network: the segmentation network, possibly wrapped (DDP, ``torch.compile``).

        Raises:
            ValueError: ``head_layer`` is not a module of ``network``, or no default head is known for it.
        """
        if isinstance(self.head_layer, nn.Module):
            if not is_submodule(network, self.head_layer):
                raise ValueError(f"omega head_layer {type(self.head_layer).__name__} is not a module of "
                                 f"{type(unwrap_model(network)).__name__}")
            return self.head_layer
        if isinstance(self.head_layer, str):
            return resolve_layer(network, self.head_layer)
        try:
            return default_feature_layer(network)
        except ValueError as e:
            raise ValueError(f"OmegaMetaStep(scope='head') needs head_layer= for this network: {e}") from e

    def __call__(
        self,
        fuzzy_loss_map: Tensor,
        params: ParamDict,
        fuzzy_map: Callable[[ParamDict], Tensor],
        nonfuzzy_loss: Callable[[ParamDict], Tensor],
        inner_lr: float,
        grad_reducer: Callable[[list[Tensor]], None] | None = None,
        world_size: int = 1,
        nonfuzzy_grad: Mapping[str, Tensor | None] | None = None,
        fuzzy_mask: Tensor | None = None,
    ) -> OmegaResult:
        """Compute ω*.

        Args:
            fuzzy_loss_map: ℓ at θ_n with its graph to ``params`` (kept: the caller backpropagates
                through it afterwards for the real fuzzy step), (B, 1, *spatial).
            params: the live parameters the meta gradient is taken over (name → tensor requiring grad): all
                of them for ``scope="full"``, the head's (:func:`head_parameters`) for ``"head"``; never
                modified. ``scope`` is applied by the caller (the DALE trainer): this method uses what it gets.
            fuzzy_map: θ ↦ ℓ(θ), a pure function of the parameters (see :func:`network_closures`);
                called under :func:`virtual_norm_mode` by the caller's choice. Used by ``"jvp"`` and
                ``"first_order"``.
            nonfuzzy_loss: θ ↦ L_n(θ), scalar. Used by ``"jvp"`` and ``"double_backward"``.
            inner_lr: η, the step size of the virtual SGD step (the segmentation learning rate).
            grad_reducer: in-place all-reduce (average) of a list of tensors across processes. Under DDP
                the virtual step and v = ∇L_n then use the gradients of the global batch, and ω equals the ω
                of one process holding the whole batch.
            world_size: number of processes sharing the batch (equal shards), for the global pixel count.
            nonfuzzy_grad: ``"first_order"`` only: v = ∇_θ L_n(θ), name → gradient (``None`` for a parameter
                the loss does not reach) for at least the names in ``params``; under DDP the all-reduced
                gradient.
            fuzzy_mask: ``rule="l2rw"`` only: M^f, broadcastable to ``fuzzy_loss_map``, the per-pixel weight of
                the normalisation; ``None`` is uniform.

        Raises:
            ValueError: ``params`` has no trainable tensor, or ``"first_order"`` without (or with an
                incomplete or mis-shaped) ``nonfuzzy_grad``.
        """
        names = [n for n, p in params.items() if p.requires_grad]
        if not names:
            raise ValueError("the ω meta step got no parameter that requires grad")
        theta = [params[n] for n in names]
        v_given = self._given_grad(nonfuzzy_grad, names, theta) if self.method == "first_order" else None
        omega = torch.ones_like(fuzzy_loss_map, dtype=fuzzy_loss_map.dtype).detach().requires_grad_(True)
        n_local = fuzzy_loss_map.numel()
        n_pixels = n_local * world_size
        self._reducer, self._world = grad_reducer, world_size
        adam = None if self.rule == "l2rw" else torch.optim.Adam([omega], lr=self.lr, eps=self.eps, betas=self.betas)
        first_grad = g = None
        for _ in range(self.steps):
            if self.method == "jvp":
                g = self._scale(self._grad_jvp(fuzzy_loss_map, omega.detach(), names, theta, fuzzy_map,
                                               nonfuzzy_loss, inner_lr, n_pixels), n_pixels)
            elif self.method == "double_backward":
                g = self._scale(self._grad_double_backward(fuzzy_loss_map, omega, names, theta, nonfuzzy_loss,
                                                           inner_lr, n_pixels), n_pixels)
            elif g is None:  # first_order: g does not depend on ω; computed once for all K steps
                g = self._scale(self._grad_first_order(names, theta, v_given, fuzzy_map, inner_lr, n_pixels),
                                n_pixels)
            if first_grad is None:
                first_grad = g
            if adam is None:
                omega = self._l2rw(g, fuzzy_mask)
                break
            omega.grad = g
            adam.step()
            with torch.no_grad():
                omega.clamp_(min=0.0)  # projected: a negative weight would make the fuzzy step ascend that loss
        frac_small = float((first_grad.abs() < self.eps).float().mean())
        return OmegaResult(omega=omega.detach(), grad=first_grad, frac_small_grad=frac_small)

    @staticmethod
    def _given_grad(nonfuzzy_grad, names: list[str], theta: list[Tensor]) -> list[Tensor]:
        if nonfuzzy_grad is None:
            raise ValueError("OmegaMetaStep(method='first_order') needs nonfuzzy_grad, the gradient of the non-fuzzy "
                             "loss at θ (DALETrainer passes it)")
        missing = [n for n in names if n not in nonfuzzy_grad]
        if missing:
            raise ValueError(f"nonfuzzy_grad lacks the parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        v = []
        for n, p in zip(names, theta):
            gv = nonfuzzy_grad[n]
            if gv is None:
                gv = torch.zeros_like(p)
            elif gv.shape != p.shape:
                raise ValueError(f"nonfuzzy_grad[{n!r}] has shape {tuple(gv.shape)}, the parameter {tuple(p.shape)}")
            v.append(gv.detach().to(p.dtype))
        return v

    def _scale(self, g: Tensor, n_pixels: int) -> Tensor:
        if self.reduction == "sum":
            return g * n_pixels
        if self.reduction == "normalized":
            scale = g.abs().mean().reshape(1)
            if self._reducer is not None:
                self._reducer([scale])
            return g / scale.clamp_min(torch.finfo(g.dtype).tiny)
        return g

    def _l2rw(self, g: Tensor, fuzzy_mask: Tensor | None) -> Tensor:
        w = (-g).clamp_min(0)
        mask = torch.ones_like(w) if fuzzy_mask is None else fuzzy_mask.detach().to(w.dtype).expand_as(w)
        sums = torch.stack([(mask * w).sum(), mask.sum()])
        if self._reducer is not None:
            self._reducer([sums])  # global sums: every rank normalises (and falls back) alike
        weighted, total = sums[0], sums[1]
        if not (weighted > 0 and total > 0):
            return torch.ones_like(w)
        return w * (total / weighted)

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

    @staticmethod
    def _jvp(names: list[str], theta: list[Tensor], tangents: list[Tensor], fuzzy_map) -> Tensor:
        """⟨t, ∇_θ ℓ_k(θ)⟩ for every pixel k: one forward of the fuzzy map with tangents."""
        # forward-mode dual tensors directly: the same product as torch.func.jvp without functorch's
        # functionalisation overhead (measured 20–30 % faster for this step with benchmarks/bench_speed.py)
        with fwAD.dual_level():
            duals = {n: fwAD.make_dual(p.detach(), t.detach()) for n, p, t in zip(names, theta, tangents)}
            primal, tangent = fwAD.unpack_dual(fuzzy_map(duals))
            jv = torch.zeros_like(primal) if tangent is None else tangent
        return jv.detach()

    def _grad_jvp(self, fuzzy_loss_map, omega, names, theta, fuzzy_map, nonfuzzy_loss, inner_lr, n_pixels) -> Tensor:
        theta_p = self._virtual_params(fuzzy_loss_map, omega, theta, inner_lr, create_graph=False)
        theta_p = [p.detach().requires_grad_(True) for p in theta_p]
        v = self._nonfuzzy_grad(nonfuzzy_loss, names, theta_p, retain_graph=False)
        return (-inner_lr / n_pixels) * self._jvp(names, theta, v, fuzzy_map)

    def _grad_first_order(self, names, theta, v, fuzzy_map, inner_lr, n_pixels) -> Tensor:
        return (-inner_lr / n_pixels) * self._jvp(names, theta, v, fuzzy_map)

    def _grad_double_backward(self, fuzzy_loss_map, omega, names, theta, nonfuzzy_loss, inner_lr, n_pixels) -> Tensor:
        theta_p = self._virtual_params(fuzzy_loss_map, omega, theta, inner_lr, create_graph=True)
        v = self._nonfuzzy_grad(nonfuzzy_loss, names, theta_p, retain_graph=True)
        # g = (∂θ_p/∂ω)ᵀ v: the chain rule through the virtual step, with v possibly all-reduced
        (g,) = torch.autograd.grad(theta_p, omega, grad_outputs=v, retain_graph=True)
        return g.detach()
