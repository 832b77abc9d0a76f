"""Validation during training that also covers the last epoch."""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.engines import Evaluator
from monai.handlers import ValidationHandler

__all__ = ["EpochValidationHandler"]


class EpochValidationHandler(ValidationHandler):
    """MONAI's epoch-level ``ValidationHandler`` that also validates after the last epoch.

    MONAI's handler runs the validator every ``interval`` epochs only, so a run whose ``max_epochs`` is not a
    multiple of ``interval`` ends unvalidated after its last validation, and a run shorter than ``interval``
    never validates: no best model is saved and no validation metric is written. Here the validator runs after
    epoch ``e`` when ``e % interval == 0`` or ``e == engine.state.max_epochs`` (read when the epoch ends, so a
    ``max_epochs`` changed by an override or a resumed run is honoured), at most once per epoch.

    Args:
        validator: the evaluator to run (e.g. ``SupervisedEvaluator``); may be set later with ``set_validator``.
        interval: validate every ``interval`` epochs (>= 1).
        exec_at_start: also validate before the first epoch (as MONAI's ``ValidationHandler``).
        exec_at_end: also validate after the last epoch when it is not a multiple of ``interval``.

    Raises:
        ValueError: for an ``interval`` below 1.
    """

    def __init__(self, validator: Evaluator | None = None, interval: int = 1, exec_at_start: bool = False,
                 exec_at_end: bool = True) -> None:
        if int(interval) < 1:
            raise ValueError(f"interval must be at least 1, got {interval}")
        super().__init__(interval=int(interval), validator=validator, epoch_level=True, exec_at_start=exec_at_start)
        self.exec_at_end = exec_at_end

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or (self.exec_at_end and epoch == engine.state.max_epochs)

    def attach(self, engine: Engine) -> None:
        """Run the validator when an epoch ends and :meth:`_due` says so (and at the start if asked).

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)
