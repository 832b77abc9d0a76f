"""Converters from public datasets, each from its layout as distributed, to the uniform output of
:mod:`data_prep.convert`.

Every module here is a CLI command module: ``add_parser(subparsers) -> None`` registers its
subcommand(s), each with ``set_defaults(func=callable(args) -> int)``.
"""

from __future__ import annotations

__all__ = ["COMMAND_MODULES"]

#: command modules of the converters, in the order their subcommands are listed by ``--help``
COMMAND_MODULES = (
    "data_prep.converters.covid_semiseg",
    "data_prep.converters.skin",
    "data_prep.converters.polyp",
    "data_prep.converters.mosmed",
    "data_prep.converters.synapse",
    "data_prep.converters.folder",
    "data_prep.converters.volumes",
    "data_prep.converters.decathlon",
)
