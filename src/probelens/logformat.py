"""probelens' log format, shared by the writer, the TensorBoard dashboard and ``probelens export``: torch-free.

A monitor's grid PNG says which probe image each of its boxes shows, which probe set it was drawn from and what its
captions say, in ``tEXt`` chunks that probelens writes before the image data (:func:`png_text_chunks`). Readers get
them from the PNG's header alone (:func:`read_png_header`, no pixel decoded, no Pillow): the chunks are walked up to
the first ``IDAT``. Nothing here imports torch, numpy or Pillow, so the readers (:mod:`probelens.logs`, the dashboard
inside the TensorBoard process, the export) stay light; :mod:`probelens.render.image` re-exports these names.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "CELLS_KEY",
    "MAPS_KEY",
    "NO_FACTS",
    "PNG_SIGNATURE",
    "PREDICTIONS_KEY",
    "PROBE_KEY",
    "SCALE_KEY",
    "Box",
    "Cell",
    "GridFacts",
    "PngHeader",
    "PngLayout",
    "Prediction",
    "cells_from_text",
    "cells_to_text",
    "check_tag_segments",
    "layout_from_header",
    "png_chunk",
    "png_layout",
    "png_text_chunks",
    "predictions_from_text",
    "probe_from_text",
    "read_png_header",
    "scale_from_text",
    "tag_segment",
]

CELLS_KEY = "probelens.cells"
"""The PNG ``tEXt`` key under which a monitor's grid records which probe image each of its cells shows."""
PREDICTIONS_KEY = "probelens.predictions"
"""The PNG ``tEXt`` key of what the grid's captions say per probe image: ``[[index, true label, predicted label,
probability], ...]`` as compact JSON, so a viewer (the TensorBoard dashboard) can caption and compare predictions
without reading the pixels."""
PROBE_KEY = "probelens.probe"
"""The PNG ``tEXt`` key of the probe set's fingerprint (:meth:`probelens.ProbeSet.fingerprint`) beside the cells, so
per-image views of grids drawn from different probe sets are never paired by index alone."""

MAPS_KEY = "probelens.maps"
"""The PNG ``tEXt`` key of each probe image's map alone inside its cell (the cell without its caption band), in the
format of :data:`CELLS_KEY`: ``[[index, left, top, right, bottom], ...]``. Optional: a viewer that finds no such chunk
shows the whole cell."""
SCALE_KEY = "probelens.scale"
"""The PNG ``tEXt`` key of the colour scale a grid's maps were drawn with, compact JSON: ``{"colormap": "jet",
"mode": "per_image" | "fixed", "vmin": float, "vmax": float, "stops": ["#rrggbb", ...]}`` (``vmin``/``vmax`` for
``fixed`` only; ``stops``: the colormap sampled evenly from low to high, at most 32, so a viewer draws any colormap).
Optional: a viewer that finds none draws no colour bar rather than a guessed one."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
"""The eight bytes every PNG starts with."""

Box = tuple[int, int, int, int]
"""``(left, top, right, bottom)`` in pixels, right/bottom exclusive."""


class Cell(NamedTuple):
    """One probe image's box in a grid, in pixels, right/bottom exclusive (a tuple: ``k, x0, y0, x1, y1 = cell``)."""

    probe_index: int
    """The probe image's index in its :class:`~probelens.ProbeSet`."""
    left: int
    top: int
    right: int
    bottom: int


Prediction = tuple[int, str, str, float]
"""``(probe_index, true_label, predicted_label, probability_of_the_prediction)``, as a grid's caption shows it."""


@dataclass(frozen=True)
class GridFacts:
    """What a grid picture records about itself beside its pixels, as one value: which probe image each box shows
    (``cells``, :data:`CELLS_KEY`), the probe set's fingerprint (``probe``, :data:`PROBE_KEY`), what the captions say
    (``predictions``, :data:`PREDICTIONS_KEY`), each probe image's map box inside its cell (``maps``,
    :data:`MAPS_KEY`) and the colour scale (``scale``, :data:`SCALE_KEY`). :meth:`text` gives the PNG text chunks.

    Example:
        >>> facts = GridFacts(cells=(Cell(2, 0, 0, 4, 4),), probe="ab12", predictions=((2, "snow", "sand", 0.8),))
        >>> sorted(facts.text())
        ['probelens.cells', 'probelens.predictions', 'probelens.probe']
    """

    cells: tuple[Cell, ...] = ()
    probe: str | None = None
    predictions: tuple[Prediction, ...] = ()
    maps: tuple[Cell, ...] = ()
    scale: Mapping[str, object] | None = None

    def text(self) -> dict[str, str]:
        """The ``text`` argument of :func:`probelens.render.encode_png` that records these facts; empty without cells,
        so that pictures that are not grids of probe images carry no chunk."""
        if not self.cells:
            return {}
        text = cells_to_text(self.cells)
        if self.probe:
            text[PROBE_KEY] = str(self.probe)
        if self.predictions:
            rows = [[int(k), str(true), str(pred), round(float(p), 4)] for k, true, pred, p in self.predictions]
            text[PREDICTIONS_KEY] = json.dumps(rows, separators=(",", ":"), ensure_ascii=True)
        if self.maps:
            text[MAPS_KEY] = json.dumps([[int(v) for v in cell] for cell in self.maps], separators=(",", ":"))
        if self.scale:
            text[SCALE_KEY] = json.dumps(dict(self.scale), separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return text


NO_FACTS = GridFacts()
"""The facts of a picture that is not a grid of probe images: it records nothing."""


# ---------------------------------------------------------------------------------------------------- writing
def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC-32 of type + data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_text_chunks(text: Mapping[str, str] | None) -> bytes:
    """``tEXt`` chunks for ``text`` (key -> Latin-1 value), in the mapping's order; write them before ``IDAT``.

    Raises:
        ValueError: A key that PNG does not allow (1-79 printable ASCII characters, no outer spaces).
    """
    chunks = b""
    for key, value in (text or {}).items():
        if not 1 <= len(key) <= 79 or key != key.strip() or not key.isprintable() or not key.isascii():
            raise ValueError(f"a PNG text key must be 1-79 printable ASCII characters, no outer spaces; got {key!r}")
        chunks += png_chunk(b"tEXt", key.encode("ascii") + b"\0" + value.encode("latin-1"))
    return chunks


def cells_to_text(cells: Sequence[Cell]) -> dict[str, str]:
    """``cells`` as PNG text (compact JSON under :data:`CELLS_KEY`); empty for no cells. :meth:`GridFacts.text`
    records the rest of a grid's facts beside them."""
    if not cells:
        return {}
    return {CELLS_KEY: json.dumps([[int(v) for v in cell] for cell in cells], separators=(",", ":"))}


# ---------------------------------------------------------------------------------------------------- reading
def predictions_from_text(text: Mapping[str, str]) -> dict[int, tuple[str, str, float]]:
    """Probe index -> ``(true label, predicted label, probability)`` recorded by :meth:`GridFacts.text` with
    ``predictions``; ``{}`` for pictures (or logs of earlier versions) without them.

    Malformed entries are ignored, never raised.

    Example:
        >>> predictions_from_text(GridFacts((Cell(2, 0, 0, 4, 4),), "ab12", ((2, "snow", "arabian", 0.8),)).text())
        {2: ('snow', 'arabian', 0.8)}
    """
    raw = text.get(PREDICTIONS_KEY)
    if not raw:
        return {}
    try:
        rows = json.loads(raw)
    except ValueError:
        return {}
    out: dict[int, tuple[str, str, float]] = {}
    for row in rows if isinstance(rows, list) else ():
        if (
            isinstance(row, list)
            and len(row) == 4
            and isinstance(row[0], int)
            and not isinstance(row[0], bool)
            and row[0] >= 0
            and isinstance(row[1], str)
            and isinstance(row[2], str)
            and isinstance(row[3], (int, float))
            and not isinstance(row[3], bool)
        ):
            out[row[0]] = (row[1], row[2], float(row[3]))
    return out


def probe_from_text(text: Mapping[str, str]) -> str | None:
    """The probe fingerprint a grid recorded beside its cells (``None`` for pictures, or logs, without one)."""
    value = text.get(PROBE_KEY)
    return value if isinstance(value, str) and value else None


def scale_from_text(text: Mapping[str, str]) -> dict[str, object] | None:
    """The colour scale recorded under :data:`SCALE_KEY` (``None`` when absent or malformed, never raised).

    Example:
        >>> scale_from_text({SCALE_KEY: '{"colormap":"jet","mode":"fixed","vmin":0,"vmax":2.5}'})
        {'colormap': 'jet', 'mode': 'fixed', 'vmin': 0.0, 'vmax': 2.5}
    """
    raw = text.get(SCALE_KEY)
    if not raw:
        return None
    try:
        value = json.loads(raw, parse_constant=lambda name: None)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("mode") not in ("per_image", "fixed"):
        return None
    colormap = value.get("colormap")
    out: dict[str, object] = {"colormap": colormap if isinstance(colormap, str) else None, "mode": value["mode"]}
    for key in ("vmin", "vmax"):
        v = value.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    stops = value.get("stops")
    if isinstance(stops, list) and 2 <= len(stops) <= 32 and all(_is_hex_colour(c) for c in stops):
        out["stops"] = [str(c) for c in stops]
    return out


def _is_hex_colour(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 7
        and value[0] == "#"
        and all(c in "0123456789abcdefABCDEF" for c in value[1:])
    )


def cells_from_text(text: Mapping[str, str], key: str = CELLS_KEY) -> list[Cell]:
    """The cells recorded by :func:`cells_to_text` in a PNG's text chunks (PIL's ``Image.text``, or
    :attr:`PngHeader.text`); ``[]`` if none.

    Malformed entries (another tool's chunk under the same key, a hand-edited file) are ignored, never raised.
    ``key=MAPS_KEY`` reads the map boxes in the same format.

    Example:
        >>> cells = [(0, 0, 0, 4, 4), (1, 4, 0, 8, 4)]
        >>> [tuple(cell) for cell in cells_from_text(cells_to_text(cells))]
        [(0, 0, 0, 4, 4), (1, 4, 0, 8, 4)]
        >>> cells_from_text(cells_to_text(cells))[1].probe_index
        1
    """
    raw = text.get(key)
    if not raw:
        return []
    try:
        entries = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(entries, list):
        return []
    cells: list[Cell] = []
    for entry in entries:
        if (
            isinstance(entry, list)
            and len(entry) == 5
            and all(isinstance(v, int) and not isinstance(v, bool) for v in entry)
            and entry[0] >= 0
            and 0 <= entry[1] < entry[3]
            and 0 <= entry[2] < entry[4]
        ):
            cells.append(Cell(*entry))
    return cells


class PngHeader(NamedTuple):
    """What a PNG says before its pixels: the size from ``IHDR`` and the ``tEXt`` chunks before the first ``IDAT``."""

    width: int
    height: int
    text: dict[str, str]


_MAX_TEXT_CHUNK = 1 << 24  # a text chunk larger than 16 MiB is not probelens': skipped, never held


def read_png_header(data: bytes) -> PngHeader:
    """The size and the ``tEXt`` chunks of an encoded PNG, read up to its first ``IDAT`` (no pixel decoded).

    ``zTXt``/``iTXt`` are not read (probelens writes ``tEXt``); a chunk whose CRC does not match is skipped.

    Raises:
        ValueError: ``data`` does not start like a PNG (signature, then ``IHDR``), or the header is cut short.

    Example:
        >>> from probelens.logformat import png_chunk
        >>> png = PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 2, 8, 2, 0, 0, 0))
        >>> read_png_header(png + png_text_chunks({"k": "v"}) + png_chunk(b"IEND", b""))
        PngHeader(width=4, height=2, text={'k': 'v'})
    """
    view = memoryview(data)
    if bytes(view[:8]) != PNG_SIGNATURE:
        raise ValueError("not a PNG: the data does not start with the PNG signature")
    if len(view) < 33 or bytes(view[12:16]) != b"IHDR":
        raise ValueError("not a PNG: no IHDR chunk after the signature")
    width, height = struct.unpack(">II", view[16:24])
    text: dict[str, str] = {}
    pos = 33  # signature (8) + IHDR (4 length + 4 type + 13 data + 4 crc)
    while pos + 8 <= len(view):
        length = struct.unpack(">I", view[pos : pos + 4])[0]
        kind = bytes(view[pos + 4 : pos + 8])
        if kind in (b"IDAT", b"IEND"):
            break
        end = pos + 12 + length
        if end > len(view):
            break
        if kind == b"tEXt" and length <= _MAX_TEXT_CHUNK:
            body = bytes(view[pos + 8 : pos + 8 + length])
            crc = struct.unpack(">I", view[end - 4 : end])[0]
            key, sep, value = body.partition(b"\0")
            if sep and crc == zlib.crc32(kind + body):
                text.setdefault(key.decode("latin-1"), value.decode("latin-1"))
        pos = end
    return PngHeader(int(width), int(height), text)


class PngLayout:
    """What a logged PNG says about itself, read from its header and text chunks (no pixel decoded).

    Attributes:
        width: Picture width in pixels.
        height: Picture height in pixels.
        boxes: Probe index -> its box (empty for pictures that are not grids of probe images, and for grids written
            by probelens versions before the layout was recorded).
        probe: The probe set's fingerprint (``None`` where not recorded).
        predictions: Probe index -> ``(true label, predicted label, probability)`` as the captions say (empty where
            not recorded).
        maps: Probe index -> the box of its map alone, without the caption (empty where not recorded).
        scale: The colour scale (:func:`scale_from_text`), ``None`` where not recorded.
    """

    __slots__ = ("boxes", "height", "maps", "predictions", "probe", "scale", "width")

    def __init__(
        self,
        width: int,
        height: int,
        boxes: dict[int, Box],
        probe: str | None,
        predictions: dict[int, tuple[str, str, float]],
        maps: dict[int, Box] | None = None,
        scale: dict[str, object] | None = None,
    ) -> None:
        self.width = width
        self.height = height
        self.boxes = boxes
        self.probe = probe
        self.predictions = predictions
        self.maps = maps or {}
        self.scale = scale

    def __repr__(self) -> str:
        return f"PngLayout({self.width}x{self.height}, {len(self.boxes)} boxes, probe={self.probe!r})"


def layout_from_header(width: int, height: int, text: Mapping[str, str]) -> PngLayout:
    """The :class:`PngLayout` of a picture of ``width`` x ``height`` with the text chunks ``text``.

    A probe image with several cells (the counterfactual panel's four tiles) gets the box around all of them; cells
    reaching past the picture are clipped to it, empty ones dropped.
    """
    boxes = _union_boxes(cells_from_text(text), width, height)
    maps = _union_boxes(cells_from_text(text, MAPS_KEY), width, height)
    return PngLayout(
        width, height, boxes, probe_from_text(text), predictions_from_text(text), maps, scale_from_text(text)
    )


def _union_boxes(cells: Sequence[Cell], width: int, height: int) -> dict[int, Box]:
    boxes: dict[int, Box] = {}
    for k, x0, y0, x1, y1 in cells:
        x1, y1 = min(x1, width), min(y1, height)
        if x0 >= x1 or y0 >= y1:
            continue
        if k in boxes:
            a0, b0, a1, b1 = boxes[k]
            x0, y0, x1, y1 = min(a0, x0), min(b0, y0), max(a1, x1), max(b1, y1)
        boxes[k] = (x0, y0, x1, y1)
    return boxes


def png_layout(data: bytes) -> PngLayout:
    """The :class:`PngLayout` of one encoded PNG (its header and text chunks; pixels are not decoded).

    Raises:
        ValueError: ``data`` is not a PNG.
    """
    header = read_png_header(data)
    return layout_from_header(header.width, header.height, header.text)


_NOT_IN_TAGS = re.compile(r"[^A-Za-z0-9_.-]+")


def tag_segment(name: str, fallback: str) -> str:
    """``name`` (a class, group or concept name) as one tag segment: runs of other characters than letters, digits,
    ``_``, ``.`` and ``-`` become ``_``; ``fallback`` where nothing is left.

    Example:
        >>> tag_segment("snow leopard/arabian", "0"), tag_segment("???", "0")
        ('snow_leopard_arabian', '0')
    """
    return _NOT_IN_TAGS.sub("_", name).strip("_") or fallback


def check_tag_segments(names: Sequence[str], option: str) -> None:
    """Refuse names that become the same tag segment (:func:`tag_segment`, the index as the fallback): their scalars
    and pictures would be written under one tag, one name's values overwriting the other's. A ``ValueError`` names
    both, the segment and the fix."""
    seen: dict[str, tuple[int, str]] = {}
    for i, name in enumerate(names):
        segment = tag_segment(str(name), str(i))
        if segment in seen:
            j, other = seen[segment]
            raise ValueError(
                f"{option}[{j}]={other!r} and {option}[{i}]={name!r} both become the tag segment {segment!r} (only "
                "letters, digits, '_', '.' and '-' are kept in tags), so their numbers and pictures would be written "
                "under one tag; give names that differ in those characters, e.g. "
                f"{option}[{i}]={segment + '_' + str(i)!r}"
            )
        seen[segment] = (i, str(name))
