"""Bundle config overrides given on the command line of ``predict``, read as ``python -m monai.bundle`` reads them.

A bundle trained with, e.g., ``--network_def#channels "[8, 16, 32, 64]"`` builds that network only under the same
override; ``predict`` takes such overrides in two spellings, which may be mixed and repeated::

    --network_def#channels "[8, 16, 32, 64]"      (as monai.bundle's own command line)
    --override network_def#channels=[8,16,32,64]

Values are parsed by Python Fire's ``DefaultParseValue``, the parser behind ``python -m monai.bundle``: Python
literals become numbers, lists, dicts, ``True``/``False``/``None``; anything else (``cpu``,
``$torch.device('cpu')``, ``@network_def``) stays a string. As there, an unquoted ``#`` in a value starts a comment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["parse_value", "parse_override_args"]


def parse_value(text: str) -> Any:
    """A command-line value as ``python -m monai.bundle`` reads it (Python Fire's ``DefaultParseValue``).

    Args:
        text: the value as typed, e.g. ``"[8, 16]"``, ``"0.5"``, ``"cpu"``.
    """
    from fire.parser import DefaultParseValue

    return DefaultParseValue(text)


def parse_override_args(args: Sequence[str], pairs: Sequence[str] = ()) -> dict[str, Any]:
    """Overrides from the words ``predict`` did not recognise and from its ``--override KEY=VALUE`` options.

    Args:
        args: left-over words, each ``--KEY VALUE`` or ``--KEY=VALUE`` (KEY a config id, ``#`` between levels).
        pairs: ``KEY=VALUE`` strings (``--override``); applied after ``args``.

    Returns:
        config id → parsed value, in the order given (a later value for one id replaces an earlier one).

    Raises:
        ValueError: for a word that is not ``--KEY``, a ``--KEY`` without a value, or a pair without ``=``, naming it.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        word = args[i]
        if not word.startswith("--") or len(word) == 2:
            raise ValueError(f"unexpected argument {word!r}: bundle overrides are written --KEY VALUE "
                             "(e.g. --network_def#channels \"[8, 16, 32, 64]\")")
        key, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
                raise ValueError(f"override --{key} needs a value (--{key} VALUE)")
            value, i = args[i + 1], i + 1
        out[key] = parse_value(value)
        i += 1
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"--override {pair!r}: expected KEY=VALUE (e.g. network_def#channels=[8,16,32,64])")
        out[key] = parse_value(value)
    return out
