"""``python -m data_prep <dataset> --src DIR --out DIR [...]``: one command line for every converter,
the synthetic dataset and label-noise injection."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .converters import COMMAND_MODULES
from .io import DataPrepError

__all__ = ["MODULES", "build_parser", "main"]

#: every command module; each exposes ``add_parser(subparsers) -> None``
MODULES = (*COMMAND_MODULES, "data_prep.synthetic", "data_prep.noise", "data_prep.check", "data_prep.corrections")


def build_parser() -> argparse.ArgumentParser:
    """The ``data_prep`` parser with one subcommand per dataset (and ``synthetic``/``noise``)."""
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Convert a segmentation dataset, as distributed, into images/labels and a MONAI datalist.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<dataset>", required=True)
    for name in MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (1 with a one-line message on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished pairs are kept, a re-run goes on from there", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
