"""Peak memory of a stretch of code in this process: the kernel's peak-RSS mark on the CPU, the allocator's on CUDA.

On Linux (>= 4.0) writing ``5`` to ``/proc/self/clear_refs`` resets the process's peak resident set size
(``VmHWM`` in ``/proc/self/status``) to its current one (proc(5)), so the peak of a stretch of code is ``VmHWM``
read after it, and its increment is that peak minus ``VmRSS`` at the reset: the stretch's working memory
(tensors, allocator slack, code pages first touched), whatever allocated it. Where the reset is unavailable (no
``/proc``, older kernels, some containers) the fall-back is ``getrusage``'s ``ru_maxrss``, the peak since the
process started, and the method says so: set-up memory can then hide the stretch's peak (the increment is a lower
bound). On CUDA the peak is ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``
(tensors only; the caching allocator's reserve and the CUDA context are not counted).

``benchmarks/bench_speed.py`` and ``benchmarks/memory_3d.py`` measure the same way with their own copies of the
two ``/proc`` helpers.
"""

from __future__ import annotations

import gc
import resource
import sys
from pathlib import Path

__all__ = ["PeakMemory", "MIB"]

MIB = 2 ** 20

#: the method names written into the results
RESET = "VmHWM after /proc/self/clear_refs reset"
FALLBACK = "ru_maxrss: peak since process start (clear_refs unavailable; the increment is a lower bound)"
CUDA = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes, or None where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _maxrss_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS (getrusage(2) of each)
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


class PeakMemory:
    """Peak memory from :meth:`reset` to :meth:`read`, in this process.

    Args:
        device: ``"cpu"`` (resident set size) or a CUDA device (``torch.cuda`` allocator statistics).

    Example::

        probe = PeakMemory("cpu")
        probe.reset()            # after set-up
        ...                      # the code measured
        probe.read()             # {"method": ..., "before_mib": ..., "peak_mib": ..., "increment_mib": ...}
    """

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = str(device).startswith("cuda")
        self.device = device
        self.method: str | None = None
        self.before = 0

    def reset(self) -> None:
        """Start a measurement: collect garbage, then set the peak mark to the current use."""
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before, self.method = torch.cuda.memory_allocated(self.device), CUDA
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            rss = _status_bytes("VmRSS")
            ok = rss is not None and _status_bytes("VmHWM") is not None
        except OSError:
            ok = False
        if ok:
            self.before, self.method = rss, RESET
        else:
            # without the reset only the growth of the all-time peak can be seen
            self.before, self.method = _maxrss_bytes(), FALLBACK

    def read(self) -> dict:
        """The peak since :meth:`reset`: ``method``, ``before_mib`` (use at the reset), ``peak_mib`` and
        ``increment_mib`` (peak minus use at the reset), in MiB.

        Raises:
            RuntimeError: :meth:`reset` was not called first.
        """
        if self.method is None:
            raise RuntimeError("PeakMemory.read() before reset()")
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == RESET:
            peak = _status_bytes("VmHWM") or 0
        else:
            peak = _maxrss_bytes()
        return {"method": self.method, "before_mib": self.before / MIB, "peak_mib": peak / MIB,
                "increment_mib": max(0, peak - self.before) / MIB}
