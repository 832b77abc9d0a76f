"""What each label of a bundle is: name, display colour and coded meaning, from its ``metadata.json``.

The bundles of this project list them under ``segments`` (generated from ``bundles/matrix.yaml``). For a
bundle without that list the names come from ``network_data_format.outputs.pred.channel_def`` and the colours
from a fixed palette, coded as generic tissue (SNOMED CT 85756007, the default of dcmqi) so that a DICOM SEG can
still be written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Segment", "bundle_segments", "PALETTE"]

#: colours of labels that metadata gives none (distinct on grey images)
PALETTE = ((255, 48, 48), (60, 200, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (255, 140, 0), (170, 110, 40), (128, 128, 0))
_TISSUE = ("SCT", "85756007", "Tissue")


@dataclass(frozen=True)
class Segment:
    """One foreground label.

    Attributes:
        value: the label's value in the mask (1 .. num_classes - 1).
        name: its name (the DICOM SEG segment label).
        color: display colour, RGB 0..255.
        category: ``(scheme, code, meaning)`` of the segmented property category.
        type: ``(scheme, code, meaning)`` of the segmented property type.
    """

    value: int
    name: str
    color: tuple[int, int, int]
    category: tuple[str, str, str] = _TISSUE
    type: tuple[str, str, str] = _TISSUE


def _code(entry: Mapping, where: str) -> tuple[str, str, str]:
    try:
        return str(entry["scheme"]), str(entry["value"]), str(entry["meaning"])
    except (KeyError, TypeError):
        raise ValueError(f"{where}: expected {{scheme, value, meaning}}, got {entry!r}") from None


def bundle_segments(metadata: Mapping, num_classes: int, source: str = "metadata.json") -> list[Segment]:
    """The segments ``1 .. num_classes - 1`` of a bundle.

    Args:
        metadata: the bundle's parsed ``metadata.json``.
        num_classes: classes the bundle predicts, background included (the config's ``num_classes``).
        source: the metadata file, named in errors.

    Raises:
        ValueError: when the listed segments are not exactly the values ``1 .. num_classes - 1``, or an entry
            lacks its name, colour or codes.
    """
    wanted = list(range(1, int(num_classes)))
    listed = metadata.get("segments")
    if listed is None:
        channel_def = (metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {})
                       .get("channel_def", {}))
        names = {int(k): str(v) for k, v in channel_def.items() if str(k).isdigit()}
        return [Segment(v, names.get(v, f"class {v}"), PALETTE[(v - 1) % len(PALETTE)]) for v in wanted]
    out = []
    for i, entry in enumerate(listed):
        where = f"{source}: segments[{i}]"
        try:
            color = tuple(int(c) for c in entry["color"])
            seg = Segment(int(entry["value"]), str(entry["name"]), color,  # type: ignore[arg-type]
                          _code(entry["category"], f"{where}.category"), _code(entry["type"], f"{where}.type"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: needs value, name, color [r, g, b], category and type ({e})") from None
        if len(seg.color) != 3 or not all(0 <= c <= 255 for c in seg.color):
            raise ValueError(f"{where}: color must be three integers 0..255, got {entry['color']!r}")
        out.append(seg)
    values = sorted(s.value for s in out)
    if values != wanted:
        raise ValueError(f"{source}: segments have values {values}, but the bundle predicts {int(num_classes)} "
                         f"classes (values {wanted} besides background 0)")
    return sorted(out, key=lambda s: s.value)
