#!/usr/bin/env python
"""The paradigm table (issue 11, the analogue of the DALE paper's Table 3) from an ``accuracy.py`` result folder.

One row per arm, one column per dataset: test Dice (mean ± std over seeds) with the paired difference to
``standard`` and its two-sided paired t-test p (uncorrected; the caption says how many comparisons the table
holds), the best mean per column in bold, and the mean training CPU seconds with their ratio to ``standard``.
Once for the final weights and once for the best-validation weights (``X@best``). Reads ``summary.csv`` and
``comparisons.csv``; trains nothing.

Usage::

    python benchmarks/paradigm_table.py benchmarks/results/accuracy/injected_noise_short
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

__all__ = ["table", "main"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table(folder: str | Path) -> str:
    """The Markdown tables of a result folder (see the module docstring).

    Raises:
        FileNotFoundError: the folder lacks ``summary.csv`` or ``comparisons.csv`` (run ``accuracy.py`` first).
    """
    folder = Path(folder)
    summ = _rows(folder / "summary.csv")
    comp = {(r["dataset"], r["arm"]): r for r in _rows(folder / "comparisons.csv") if r["metric"] == "dice"}
    s = {(r["dataset"], r["arm"]): r for r in summ}
    datasets = list(dict.fromkeys(r["dataset"] for r in summ))
    arms = list(dict.fromkeys(r["arm"] for r in summ if not r["arm"].endswith("@best")))
    n_comp = sum(1 for ds in datasets for a in arms if a != "standard" and (ds, a) in comp)
    seeds = max(int(s[(ds, a)]["n_seeds"]) for ds in datasets for a in arms if (ds, a) in s)
    out = []
    for suffix, title in (("", "final weights"), ("@best", "best-validation weights")):
        best = {ds: max((float(s[(ds, a + suffix)]["dice_mean"]), a) for a in arms if (ds, a + suffix) in s)[1]
                for ds in datasets}
        out.append(f"\nTest Dice, {title} (mean ± std over {seeds} seeds; in brackets the paired difference to "
                   f"`standard` and its p, uncorrected for the {n_comp} comparisons of the table):\n")
        out.append("| arm | " + " | ".join(datasets) + " | train CPU s (× standard) |")
        out.append("|---|" + "---|" * (len(datasets) + 1))
        for a in arms:
            cells = []
            for ds in datasets:
                r = s.get((ds, a + suffix))
                if r is None:
                    cells.append("—")
                    continue
                txt = f"{float(r['dice_mean']):.3f}" + (f" ± {float(r['dice_std']):.3f}" if r["dice_std"] else "")
                c = comp.get((ds, a + suffix))
                if c is not None and a != "standard":
                    p_txt = f", p {float(c['p']):.3f}" if c["p"] not in ("", "nan") else ""  # one seed: no test
                    txt += f" ({float(c['diff_mean']):+.3f}{p_txt})"
                cells.append(f"**{txt}**" if best[ds] == a else txt)
            cpu = [float(s[(ds, a)]["train_cpu_s_mean"]) for ds in datasets if (ds, a) in s]
            cpu0 = [float(s[(ds, "standard")]["train_cpu_s_mean"]) for ds in datasets if (ds, a) in s]
            out.append(f"| {a} | " + " | ".join(cells) + f" | {sum(cpu) / len(cpu):.0f} ({sum(cpu) / sum(cpu0):.1f}×) |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(table(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
