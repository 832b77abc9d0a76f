"""A tqdm progress bar for MONAI workflows, attachable from a bundle's handler list."""

from __future__ import annotations

from typing import Sequence

from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["ProgressBarHandler"]


class ProgressBarHandler:
    """Show a progress bar per epoch with the latest values of some scalar outputs.

    Ignite's ``ProgressBar`` takes its options in ``attach``, which a bundle's handler list cannot pass;
    this wrapper takes them in the constructor.

    Args:
        output_keys: keys of ``engine.state.output`` shown beside the bar (missing keys are skipped).
        persist: keep the bar of each finished epoch on screen.
        desc: prefix of the bar.
    """

    def __init__(self, output_keys: Sequence[str] = ("loss",), persist: bool = True, desc: str = "") -> None:
        self.output_keys = tuple(output_keys)
        self.persist = persist
        self.desc = desc

    def _values(self, output) -> dict:
        if isinstance(output, list) and output and isinstance(output[0], dict):
            output = output[0]  # decollated: per-iteration scalars are repeated in every item
        if not isinstance(output, dict):
            return {}
        values = {}
        for key in self.output_keys:
            v = output.get(key)
            if v is not None:
                values[key] = float(v)
        return values

    def attach(self, engine: Engine) -> None:
        """Attach a bar to ``engine``."""
        ProgressBar(persist=self.persist, desc=self.desc).attach(engine, output_transform=self._values)
