"""Events and output keys of the DALE trainer, shared by the trainer and its handlers."""

from __future__ import annotations

from ignite.engine import EventEnum

__all__ = ["DALEEvents", "DALEKeys"]


class DALEEvents(EventEnum):
    """Events fired by :class:`dale_monai.engines.DALETrainer` inside one iteration, in this order.

    MONAI's own ``IterationEvents`` are still fired (``FORWARD_COMPLETED``, ``LOSS_COMPLETED``,
    ``BACKWARD_COMPLETED``, ``MODEL_COMPLETED``) once per iteration, for the fuzzy step, so that
    existing handlers keep working.

    - ``NONFUZZY_FORWARD_COMPLETED``: the non-fuzzy forward at θ ran; the forward hooks of handlers
      hold its features (``DALEKeys.MASK_N`` etc. are in ``engine.state.output``).
    - ``NONFUZZY_COMPLETED``: the non-fuzzy optimizer step was taken (θ → θ_n).
    - ``FUZZY_FORWARD_COMPLETED``: the fuzzy forward at θ_n ran (its graph is kept for the fuzzy
      step); hooks hold the fuzzy features, with gradient.
    - ``OMEGA_COMPLETED``: ω* is in ``engine.state.output[DALEKeys.OMEGA]``. Handlers that add a
      term to the fuzzy loss append it to ``engine.state.output[DALEKeys.FUZZY_TERMS]`` here.
    - ``FUZZY_COMPLETED``: the fuzzy optimizer step was taken (θ_n → θ_f).
    """

    NONFUZZY_FORWARD_COMPLETED = "nonfuzzy_forward_completed"
    NONFUZZY_COMPLETED = "nonfuzzy_completed"
    FUZZY_FORWARD_COMPLETED = "fuzzy_forward_completed"
    OMEGA_COMPLETED = "omega_completed"
    FUZZY_COMPLETED = "fuzzy_completed"


class DALEKeys:
    """Keys of ``engine.state.output`` written by the DALE trainer and its handlers."""

    MASK_N = "mask_n"  # soft non-fuzzy mask M^n, (B, 1, *spatial); also the dictionary-transform key
    MASK_F = "mask_f"  # soft fuzzy mask M^f
    LOSS_N = "loss_nonfuzzy"
    LOSS_F = "loss_fuzzy"
    LOSS_W = "loss_w"  # Wasserstein alignment term L_W (before α)
    OMEGA = "omega"  # ω*, per pixel, (B, 1, *spatial)
    OMEGA_MEAN = "omega_mean"
    OMEGA_BELOW_ONE = "omega_frac_below_1"
    OMEGA_SMALL_GRAD = "omega_frac_small_grad"  # fraction of pixels with |g| < eps in the first ω step
    FUZZY_FRACTION = "fuzzy_fraction"  # mean of M^f
    PRED_N = "pred_nonfuzzy"
    FUZZY_TERMS = "fuzzy_terms"  # list of additive loss terms (scalars or per-pixel maps) for L_f
