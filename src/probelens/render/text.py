"""Text in probelens' pictures: one font, one line breaker, one way of drawing lines onto an image.

The font is Pillow's built-in default (``ImageFont.load_default(size=...)``, a scalable FreeType font on
Pillow >= 10.1; the fixed bitmap font on older Pillow or without FreeType). Lines are broken with :mod:`textwrap`
to a pixel width; each line is rasterised once by ``ImageDraw.text`` and stamped onto tensor canvases
(:func:`stamp_lines`).

TensorBoard shows an image card scaled to the card's width (about 450 CSS px by default), so text that is legible
in the file can be unreadable on the card: :func:`card_font_size` gives the font size whose capitals stay
:data:`CARD_TEXT_PX` tall when a picture ``width`` pixels wide is shown :data:`CARD_WIDTH` pixels wide.
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    "CARD_TEXT_PX",
    "CARD_WIDTH",
    "Font",
    "card_font_size",
    "fit_text",
    "line_height",
    "load_font",
    "stamp_lines",
    "text_width",
    "wrap",
]

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont

CARD_WIDTH = 450
"""Width in CSS pixels at which TensorBoard's image dashboard shows a card (its default card size)."""
CARD_TEXT_PX = 11
"""Height of capital letters, in pixels at :data:`CARD_WIDTH`, below which captions are hard to read on a card."""

MIN_FONT = 10
"""The smallest font size any caption is drawn at."""

_CAP_SAMPLE = "H0"  # glyphs whose ink is the cap height
_ELLIPSIS = "..."


@functools.cache
def load_font(size: int) -> Font:
    """Pillow's built-in default font at ``size`` px (the size is ignored where Pillow has only the bitmap font)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: the fixed-size bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=1)
def _measure() -> ImageDraw.ImageDraw:
    return ImageDraw.Draw(Image.new("L", (1, 1)))


def _drawable(text: str, font: Font) -> str:
    """``text`` as the font can draw it: the legacy bitmap font covers Latin-1 only."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


@functools.lru_cache(maxsize=4096)
def text_width(text: str, font: Font) -> float:
    """Advance width of one line in pixels (cached: the same captions come back at every log step)."""
    return float(_measure().textlength(_drawable(text, font), font=font)) if text else 0.0


@functools.cache
def line_height(font: Font) -> int:
    """Distance between consecutive lines in pixels: the font's ascent + descent (or its tallest glyphs' ink)."""
    bottom = _measure().textbbox((0, 0), "Agjy|(", font=font)[3]
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        bottom = max(bottom, ascent + descent)
    return int(bottom) + 1


@functools.cache
def _cap_height(size: int) -> int:
    box = _measure().textbbox((0, 0), _CAP_SAMPLE, font=load_font(size))
    return int(box[3] - box[1])


def card_font_size(width: int, card_width: int | None = CARD_WIDTH, minimum: int = MIN_FONT) -> int:
    """The smallest font size whose capitals are at least :data:`CARD_TEXT_PX` tall when a picture ``width`` pixels
    wide is shown ``card_width`` pixels wide (``minimum`` when ``card_width`` is None or the picture is narrower).

    Example:
        >>> card_font_size(450) <= 16 < card_font_size(1800)
        True
    """
    if card_width is None or width <= card_width:
        return minimum
    needed = CARD_TEXT_PX * width / card_width + 2  # + 2: the antialiased top and bottom rows are not solid ink
    size = max(minimum, math.floor(needed))
    while _cap_height(size) < needed and size < 4 * needed:  # the bitmap font never grows: stop somewhere
        size += 1
    return size


def wrap(text: str, font: Font, width: float, max_lines: int) -> list[str]:
    """Breaks ``text`` into at most ``max_lines`` lines no wider than ``width`` pixels.

    Newlines are kept; a line that is too wide is broken at ``" | "`` separators first ("true: x | pred: y"), then by
    :func:`textwrap.wrap` at the longest character count that fits (words longer than a line are split). When lines
    are dropped, the last kept one ends in ``"..."``. Cached: the same captions come back at every log step, and
    finding the widest wrap that fits tries several.
    """
    return list(_wrap(text, font, width, max_lines))


@functools.lru_cache(maxsize=4096)
def _wrap(text: str, font: Font, width: float, max_lines: int) -> tuple[str, ...]:
    return tuple(_wrap_lines(text, font, width, max_lines))


def _wrap_lines(text: str, font: Font, width: float, max_lines: int) -> list[str]:
    if not text:
        return []
    paragraphs: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for segment in paragraph.split(" | "):
            candidate = f"{current} | {segment}" if current else segment
            if current and text_width(candidate, font) > width:
                paragraphs.append(current)
                current = segment
            else:
                current = candidate
        paragraphs.append(current)
    lines: list[str] = []
    for paragraph in paragraphs:
        lines += _wrap_to_width(paragraph, font, width)
    if len(lines) > max_lines:
        rest = " ".join(lines[max_lines - 1 :])
        lines = [*lines[: max_lines - 1], *_wrap_to_width(rest, font, width, max_lines=1)]
    return lines


def _wrap_to_width(text: str, font: Font, width: float, max_lines: int | None = None) -> list[str]:
    """:func:`textwrap.wrap` at the largest character count whose lines all fit ``width`` pixels (with ``max_lines``,
    the last line ends in ``"..."`` where text was cut; ``["..."]`` or ``[""]`` when not even that fits)."""
    if text_width(text, font) <= width:
        return [text]
    per_char = text_width(text, font) / max(1, len(text))
    smallest = 1 if max_lines is None else len(_ELLIPSIS) + 1  # textwrap needs room for the placeholder
    for chars in range(max(smallest, int(width / per_char) + 2), smallest - 1, -1):
        lines = textwrap.wrap(text, chars, max_lines=max_lines, placeholder=_ELLIPSIS) or [""]
        if all(text_width(line, font) <= width for line in lines):
            return lines
    if max_lines is None:
        return lines  # one character per line, the best there is
    return [_ELLIPSIS if text_width(_ELLIPSIS, font) <= width else ""]


def fit_text(
    texts: Sequence[str], width: float, size: int, max_lines: int, minimum: int = MIN_FONT
) -> tuple[Font, list[list[str]], int]:
    """One font for all ``texts`` and their lines: the largest size in ``[minimum, size]`` at which every line fits
    ``width`` unbroken, else ``size`` with the lines wrapped (:func:`wrap`).

    Returns:
        ``(font, lines of each text, line height)``.
    """
    split = [t.split("\n") if t else [] for t in texts]
    for candidate in range(size, min(minimum, size) - 1, -1):
        font = load_font(candidate)
        if all(len(s) <= max_lines for s in split) and all(text_width(ln, font) <= width for s in split for ln in s):
            return font, split, line_height(font)
    font = load_font(size)
    return font, [wrap(t, font, width, max_lines) for t in texts], line_height(font)


@functools.lru_cache(maxsize=512)
def _text_mask(text: str, font: Font) -> np.ndarray:
    """Coverage of one line drawn by ``ImageDraw.text`` at ``(0, 0)``: uint8 ``[h, w]`` (255 = ink), cached (as numpy,
    so the cache holds no tensors; bounded, as captions with step numbers change at every log step)."""
    drawable = _drawable(text, font)
    right, bottom = (max(1, math.ceil(v)) for v in _measure().textbbox((0, 0), drawable, font=font)[2:])
    mask = Image.new("L", (right, bottom), 0)
    ImageDraw.Draw(mask).text((0, 0), drawable, fill=255, font=font)
    coverage = np.array(mask, dtype=np.uint8)
    coverage.setflags(write=False)
    return coverage


def stamp_lines(
    canvas: Tensor,
    blocks: Sequence[tuple[int, int, int, Sequence[str]]],
    font: Font,
    fill: tuple[int, int, int],
    center: bool = True,
) -> None:
    """Draws blocks of lines onto the uint8 ``[3, H, W]`` ``canvas`` in place, each block top-down from its
    ``(x, y)``, one :func:`line_height` apart, centred in ``[x, x + width)`` or left-aligned at ``x``.

    Each pixel becomes ``(p * (255 - a) + fill * a) / 255`` for the coverage ``a`` of the line as ``ImageDraw.text``
    draws it, as PIL blends ink over what is there. The coverage of each line is rasterised once and cached: captions
    repeat from one log step to the next, and stamping cached lines onto the tensor is faster than drawing every
    caption with ``ImageDraw`` on a PIL copy of the grid (figures in ``benchmarks/RESULTS.md``).

    Args:
        canvas: uint8 ``[3, H, W]``; text running past its edges is clipped.
        blocks: ``(x, y, width, lines)`` per block.
        font: The font (one for every block).
        fill: Ink colour.
        center: Centre each line in its block's width.
    """
    _, height, canvas_w = canvas.shape
    # numpy on the canvas' memory: a line is a few small array ops, each ~10x cheaper than a torch op's dispatch
    on_host = canvas.device.type == "cpu"
    target = canvas.numpy() if on_host else canvas.cpu().numpy()
    ink = np.asarray(fill, dtype=np.int32).reshape(3, 1, 1)
    step = line_height(font)
    for x0, y0, width, lines in blocks:
        for i, line in enumerate(lines):
            if not line:
                continue
            mask = _text_mask(line, font)
            x = x0 + max(0, int((width - text_width(line, font)) // 2)) if center else x0
            y = y0 + i * step
            h, w = min(mask.shape[0], height - y), min(mask.shape[1], canvas_w - x)
            if h <= 0 or w <= 0 or x < 0 or y < 0:
                continue
            a = mask[:h, :w].astype(np.int32)
            region = target[:, y : y + h, x : x + w]
            region[...] = (region * (255 - a) + ink * a + 127) // 255
    if not on_host:
        canvas.copy_(torch.from_numpy(target))
