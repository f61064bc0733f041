"""Grid layouts with captions: labelled tile grids, per-row grids, conv filters, activations and filmstrips.

All functions take uint8 (or float, for weights/feature maps) torch tensors and return one uint8 ``[3, H, W]`` image
on CPU. Images are composed with torch; only the text is drawn with PIL ``ImageDraw`` using PIL's built-in default
font (``ImageFont.load_default(size=...)`` on Pillow >= 10.1, the fixed-size bitmap font on older Pillow).

To keep captions readable on small inputs, tiles are upscaled by an integer factor (nearest neighbour) until their
longer side reaches ``min_tile`` pixels, and each grid cell is at least ``min_tile`` pixels wide. Captions that do not
fit the cell width are first drawn with a slightly smaller font, then word-wrapped (at most ``max_caption_lines``
lines, the last one ellipsised).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from probelens.render.colormap import apply_colormap
from probelens.render.image import normalize_maps, sanitize, to_rgb_uint8, upscale_nearest

__all__ = [
    "activation_grid",
    "filmstrip",
    "filter_grid",
    "labelled_grid",
    "rows_grid",
    "select_channels",
    "select_frames",
]

_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont

_TEXT_MARGIN = 2  # pixels of background around text inside a caption band
_MIN_FONT = 10  # smallest font size used before falling back to word wrapping
_MAX_FONT = 18
_FILTER_MIN_PX = 24  # kernels are upscaled so that their longer side is at least this many pixels
_ORDERS = ("mean", "max", "std", "index")


# ----------------------------------------------------------------------------------------------------------------------
# Text helpers
# ----------------------------------------------------------------------------------------------------------------------


@functools.cache
def _load_font(size: int) -> _Font:
    """Loads PIL's built-in default font at ``size`` px (size ignored on Pillow < 10.1, which has no sized default)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: load_default() takes no size and returns the fixed bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=1)
def _measure_draw() -> ImageDraw.ImageDraw:
    """A throw-away ImageDraw used only to measure text."""
    return ImageDraw.Draw(Image.new("L", (1, 1)))


def _safe_text(text: str, font: _Font) -> str:
    """Makes ``text`` drawable: the legacy bitmap font only covers Latin-1."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


@functools.lru_cache(maxsize=4096)
def _text_width(text: str, font: _Font) -> float:
    """Advance width of one line of text in pixels (cached: the same captions are measured at every log step)."""
    if not text:
        return 0.0
    return float(_measure_draw().textlength(_safe_text(text, font), font=font))


@functools.cache
def _line_height(font: _Font) -> int:
    """Vertical distance between consecutive text lines in pixels."""
    bottom = _measure_draw().textbbox((0, 0), "Agjy|(", font=font)[3]
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        bottom = max(bottom, ascent + descent)
    return int(bottom) + 1


def _base_font_size(cell: int) -> int:
    """Preferred font size for a cell (tile) of ``cell`` pixels: about a tenth of it, within [11, 18]."""
    return max(_MIN_FONT + 1, min(_MAX_FONT, round(cell / 10)))


def _ellipsize(text: str, font: _Font, width: float) -> str:
    """Shortens ``text`` and appends ``...`` so that it fits ``width``."""
    for k in range(len(text), -1, -1):
        candidate = text[:k].rstrip() + "..."
        if _text_width(candidate, font) <= width:
            return candidate
    return "..." if _text_width("...", font) <= width else ""


def _wrap(text: str, font: _Font, width: float, max_lines: int) -> list[str]:
    """Breaks ``text`` into at most ``max_lines`` lines that fit ``width``.

    Splits on newlines, then (where needed) at ``" | "`` separators, then word-wraps; an over-long word is broken
    hard and the last kept line is ellipsised when lines are dropped.
    """
    if not text:
        return []
    paras: list[str] = []
    for para in text.split("\n"):
        # Prefer breaking at " | " separators ("true: x | pred: y"): greedily re-join the segments that fit.
        current = ""
        for seg in para.split(" | "):
            candidate = f"{current} | {seg}" if current else seg
            if current and _text_width(candidate, font) > width:
                paras.append(current)
                current = seg
            else:
                current = candidate
        paras.append(current)
    lines: list[str] = []
    for para in paras:
        current = ""
        for word in para.split(" "):
            candidate = f"{current} {word}" if current else word
            if _text_width(candidate, font) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            while len(word) > 1 and _text_width(word, font) > width:  # a single over-long word: hard break
                k = len(word) - 1
                while k > 1 and _text_width(word[:k], font) > width:
                    k -= 1
                lines.append(word[:k])
                word = word[k:]
            current = word
        lines.append(current)
    if len(lines) > max_lines:
        rest = " ".join(lines[max_lines - 1 :])
        lines = [*lines[: max_lines - 1], _ellipsize(rest, font, width)]
    return lines


def _layout_text(
    texts: Sequence[str], width: float, base_size: int, max_lines: int
) -> tuple[_Font, list[list[str]], int]:
    """Chooses one font for all ``texts`` and breaks them into lines that fit ``width``.

    The largest size in ``[_MIN_FONT, base_size]`` for which every (newline-separated) line fits unwrapped is used;
    if none fits, ``base_size`` is used with word wrapping.

    Returns:
        ``(font, lines_per_text, line_height)``.
    """
    for size in range(base_size, _MIN_FONT - 1, -1):
        font = _load_font(size)
        split = [t.split("\n") if t else [] for t in texts]
        if all(len(s) <= max_lines for s in split) and all(_text_width(ln, font) <= width for s in split for ln in s):
            return font, split, _line_height(font)
    font = _load_font(base_size)
    return font, [_wrap(t, font, width, max_lines) for t in texts], _line_height(font)


def _band_height(n_lines: int, line_h: int) -> int:
    """Height of a text band holding ``n_lines`` lines (0 for no lines)."""
    return n_lines * line_h + 2 * _TEXT_MARGIN if n_lines > 0 else 0


def _text_color(background: int) -> tuple[int, int, int]:
    """Black text on light backgrounds, white text on dark ones."""
    c = 0 if background >= 128 else 255
    return (c, c, c)


@functools.lru_cache(maxsize=512)
def _text_mask(text: str, font: _Font) -> np.ndarray:
    """Coverage of one line of text drawn at ``(0, 0)``: uint8 ``[h, w]`` (255 = ink), cached (as numpy, so that the
    cache holds no tensors; bounded, as captions with step numbers change at every log step).

    Captions repeat from one log step to the next ("true: snow | pred: snow 0.93"), so the glyphs are rasterised once
    and stamped onto the tensor canvas by :func:`_stamp_lines`, instead of converting every whole grid to a PIL image
    and back to draw on it.
    """
    safe = _safe_text(text, font)
    right, bottom = (max(1, math.ceil(v)) for v in _measure_draw().textbbox((0, 0), safe, font=font)[2:])
    mask = Image.new("L", (right, bottom), 0)
    ImageDraw.Draw(mask).text((0, 0), safe, fill=255, font=font)
    coverage = np.array(mask, dtype=np.uint8)
    coverage.setflags(write=False)
    return coverage


def _stamp_lines(
    canvas: Tensor,
    lines: Sequence[str],
    font: _Font,
    line_h: int,
    x0: int,
    y0: int,
    width: int,
    fill: tuple[int, int, int],
    center: bool,
) -> None:
    """Draws ``lines`` onto the uint8 ``[3, H, W]`` ``canvas`` in place, top-down from ``y0``, centred in
    ``[x0, x0 + width)`` or left-aligned at ``x0``: each pixel becomes ``(p * (255 - a) + fill * a) / 255`` for the
    text coverage ``a``, as PIL's ``ImageDraw.text`` blends ink over what is there."""
    _, height, canvas_w = canvas.shape
    ink = torch.tensor(fill, dtype=torch.int32).view(3, 1, 1)
    for i, line in enumerate(lines):
        if not line:
            continue
        mask = torch.from_numpy(np.array(_text_mask(line, font)))  # a fresh, writable copy (a few KB)
        x = x0 + max(0, int((width - _text_width(line, font)) // 2)) if center else x0
        y = y0 + i * line_h
        h = min(mask.shape[0], height - y)
        w = min(mask.shape[1], canvas_w - x)
        if h <= 0 or w <= 0 or x < 0 or y < 0:
            continue
        a = mask[:h, :w].to(torch.int32)
        region = canvas[:, y : y + h, x : x + w]
        blended = (region.to(torch.int32) * (255 - a) + ink * a + 127) // 255
        region.copy_(blended.to(torch.uint8))


# ----------------------------------------------------------------------------------------------------------------------
# Tile helpers
# ----------------------------------------------------------------------------------------------------------------------


def _as_rgb_tiles(tiles: Tensor) -> Tensor:
    """Validates tiles and returns uint8 ``[N, 3, h, w]`` on CPU (floats are taken as [0, 1])."""
    if tiles.ndim != 4:
        raise ValueError(f"expected tiles [N,3,h,w], got {tuple(tiles.shape)}")
    t = tiles.detach().cpu()
    if t.dtype != torch.uint8:
        t, _ = sanitize(t.float())
        t = (t.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return to_rgb_uint8(t)


def _tile_scale(h: int, w: int, min_tile: int) -> int:
    """Integer nearest-neighbour factor that brings the longer side of an ``h x w`` tile to at least ``min_tile``."""
    longest = max(h, w, 1)
    return max(1, math.ceil(min_tile / longest))


def _check_background(background: int) -> int:
    if not 0 <= int(background) <= 255:
        raise ValueError(f"background must be a gray level in [0, 255], got {background}")
    return int(background)


# ----------------------------------------------------------------------------------------------------------------------
# Public grids
# ----------------------------------------------------------------------------------------------------------------------


def labelled_grid(
    tiles: Tensor,
    captions: Sequence[str] | None = None,
    ncol: int | None = None,
    pad: int = 2,
    min_tile: int = 128,
    background: int = 255,
    title: str | None = None,
    *,
    max_caption_lines: int = 4,
    cell_boxes: list[tuple[int, int, int, int]] | None = None,
) -> Tensor:
    """Lays tiles out in a grid with a caption under each tile and an optional title on top.

    Layout (all sizes in pixels): every tile is upscaled (nearest) by ``s = max(1, ceil(min_tile / max(h, w)))``;
    each cell is ``cell_w = max(s * w, min_tile)`` wide (the tile is centred in it) and ``s * h + band`` high, where
    ``band`` is the caption band height (0 when there are no captions or all are empty). Cells are separated from
    each other and from the border by ``pad``. Hence
    ``W = ncol * cell_w + (ncol + 1) * pad`` and ``H = title_band + nrow * (s * h + band) + (nrow + 1) * pad``
    with ``nrow = ceil(N / ncol)``. Captions may contain ``"\\n"``; lines that do not fit are word-wrapped.

    Args:
        tiles: uint8 ``[N, 3, h, w]`` (non-square allowed; ``[N, 1, h, w]`` gray and float ``[0, 1]`` tiles are
            converted).
        captions: ``N`` strings (``""`` for none) or None.
        ncol: Number of columns; default ``ceil(sqrt(N))``; clipped to ``[1, N]``.
        pad: Gap between cells and around the border.
        min_tile: Minimum displayed size of a tile's longer side and minimum cell width.
        background: Gray level of the background; text is black on light and white on dark backgrounds.
        title: Optional title drawn centred above the grid.
        max_caption_lines: Maximum number of lines per caption after wrapping.
        cell_boxes: If given, a list that receives each tile's cell (tile and caption) as
            ``(left, top, right, bottom)``, right/bottom exclusive, in tile order.

    Returns:
        uint8 ``[3, H, W]`` on CPU.
    """
    t = _as_rgb_tiles(tiles)
    n, _, h, w = t.shape
    if n == 0:
        raise ValueError("labelled_grid needs at least one tile")
    if captions is not None and len(captions) != n:
        raise ValueError(f"got {len(captions)} captions for {n} tiles")
    background = _check_background(background)
    pad = max(0, int(pad))
    ncol = math.ceil(math.sqrt(n)) if ncol is None else max(1, min(int(ncol), n))
    nrow = math.ceil(n / ncol)
    s = _tile_scale(h, w, min_tile)
    t = upscale_nearest(t, s)
    th, tw = h * s, w * s
    cell_w = max(tw, min_tile)
    width = ncol * cell_w + (ncol + 1) * pad

    cap_lines: list[list[str]] = []
    band_h = 0
    cap_font: _Font | None = None
    cap_lh = 0
    if captions is not None and any(captions):
        cap_font, cap_lines, cap_lh = _layout_text(
            list(captions), cell_w - 2 * _TEXT_MARGIN, _base_font_size(cell_w), max_caption_lines
        )
        band_h = _band_height(max(len(lines) for lines in cap_lines), cap_lh)

    title_lines: list[str] = []
    title_h = 0
    title_font: _Font | None = None
    title_lh = 0
    if title:
        title_font, (title_lines,), title_lh = _layout_text(
            [title], width - 2 * _TEXT_MARGIN, min(_MAX_FONT, _base_font_size(cell_w) + 2), max_caption_lines
        )
        title_h = _band_height(len(title_lines), title_lh)

    height = title_h + nrow * (th + band_h) + (nrow + 1) * pad
    canvas = torch.full((3, height, width), background, dtype=torch.uint8)
    origins: list[tuple[int, int]] = []
    for i in range(n):
        r, c = divmod(i, ncol)
        x = pad + c * (cell_w + pad)
        y = title_h + pad + r * (th + band_h + pad)
        xo = x + (cell_w - tw) // 2
        canvas[:, y : y + th, xo : xo + tw] = t[i]
        origins.append((x, y))
        if cell_boxes is not None:
            cell_boxes.append((x, y, x + cell_w, y + th + band_h))

    fill = _text_color(background)
    if title_font is not None and title_lines:
        _stamp_lines(canvas, title_lines, title_font, title_lh, 0, _TEXT_MARGIN, width, fill, center=True)
    if cap_font is not None:
        for (x, y), lines in zip(origins, cap_lines, strict=True):
            _stamp_lines(canvas, lines, cap_font, cap_lh, x, y + th + _TEXT_MARGIN, cell_w, fill, center=True)
    return canvas


def rows_grid(
    rows: Sequence[Tensor],
    row_captions: Sequence[str] | None = None,
    pad: int = 2,
    min_tile: int = 64,
    background: int = 255,
    *,
    max_caption_lines: int = 2,
    cell_boxes: list[tuple[int, int, int, int]] | None = None,
) -> Tensor:
    """Stacks rows of tiles, one grid row per entry (e.g. a probe image followed by its channel maps).

    Layout: each row's tiles are upscaled (nearest) by ``max(1, ceil(min_tile / max(h_i, w_i)))`` and placed
    left-aligned, ``pad`` apart and ``pad`` from the border. With ``row_captions`` a text band (left-aligned, same
    height for every row) is drawn above each row. ``W`` is the widest row; rows may have different tile sizes.

    Args:
        rows: Sequence of uint8 ``[K_i, 3, h_i, w_i]`` tensors (a single ``[3, h, w]`` tile is also accepted).
        row_captions: One string per row (``""`` for none) or None.
        pad: Gap between tiles, rows and the border.
        min_tile: Minimum displayed size of a tile's longer side.
        background: Gray level of the background.
        max_caption_lines: Maximum number of lines per row caption after wrapping.
        cell_boxes: If given, a list that receives each row (caption band and tiles) as
            ``(left, top, right, bottom)``, right/bottom exclusive, in row order.

    Returns:
        uint8 ``[3, H, W]`` on CPU.
    """
    if len(rows) == 0:
        raise ValueError("rows_grid needs at least one row")
    if row_captions is not None and len(row_captions) != len(rows):
        raise ValueError(f"got {len(row_captions)} row captions for {len(rows)} rows")
    background = _check_background(background)
    pad = max(0, int(pad))
    prepared: list[Tensor] = []
    for row in rows:
        r = _as_rgb_tiles(row.unsqueeze(0) if row.ndim == 3 else row)
        prepared.append(upscale_nearest(r, _tile_scale(r.shape[2], r.shape[3], min_tile)))
    row_widths = [r.shape[0] * r.shape[3] + (r.shape[0] + 1) * pad for r in prepared]
    width = max(max(row_widths), min_tile + 2 * pad)

    cap_lines: list[list[str]] = [[] for _ in rows]
    band_h = 0
    cap_font: _Font | None = None
    cap_lh = 0
    if row_captions is not None and any(row_captions):
        cell = max(max(r.shape[2], r.shape[3]) for r in prepared)
        cap_font, cap_lines, cap_lh = _layout_text(
            list(row_captions), width - 2 * pad - 2 * _TEXT_MARGIN, _base_font_size(max(cell, 96)), max_caption_lines
        )
        band_h = _band_height(max(len(lines) for lines in cap_lines), cap_lh)

    height = sum(band_h + r.shape[2] for r in prepared) + (len(prepared) + 1) * pad
    canvas = torch.full((3, height, width), background, dtype=torch.uint8)
    band_tops: list[int] = []
    y = pad
    for r in prepared:
        band_tops.append(y)
        y += band_h
        th, tw = r.shape[2], r.shape[3]
        for k in range(r.shape[0]):
            x = pad + k * (tw + pad)
            canvas[:, y : y + th, x : x + tw] = r[k]
        if cell_boxes is not None:
            # the full width: the row caption may run past the tiles
            cell_boxes.append((pad, y - band_h, width - pad, y + th))
        y += th + pad

    if cap_font is None:
        return canvas
    fill = _text_color(background)
    for top, lines in zip(band_tops, cap_lines, strict=True):
        _stamp_lines(canvas, lines, cap_font, cap_lh, pad + _TEXT_MARGIN, top + _TEXT_MARGIN, width, fill, center=False)
    return canvas


def filter_grid(
    weight: Tensor,
    max_filters: int = 64,
    scale: int | None = None,
    *,
    max_inputs: int = 8,
    pad: int = 2,
    cmap: str = "seismic",
    background: int | None = None,
) -> Tensor:
    """Renders convolution kernels.

    Layout:

    * ``I == 3`` (e.g. a first layer on RGB input): one RGB colour patch per output filter (the first
      ``max_filters``), in a ``ceil(sqrt(O))``-column grid. Each filter is min-max normalised over its three input
      channels together, so relative colour is kept (a filter with only positive red weights is pure red).
      Background white.
    * ``I == 1``: one tile per output filter in a ``ceil(sqrt(O))``-column grid, diverging colormap as below.
    * otherwise: one grid row per output filter (up to ``max_filters`` rows) and one column per input channel (the
      first ``max_inputs``). Each tile is normalised symmetrically around 0 on its own (``normalize_maps(...,
      symmetric=True)``) and coloured with the diverging ``cmap``, so the sign is visible: with ``"seismic"``
      negative weights are blue, zero is white, positive weights are red. Background mid-gray.

    Kernels are upscaled (nearest) by ``scale``, default ``max(1, ceil(24 / max(kh, kw)))`` (a 3x3 kernel becomes
    24x24 px). Tiles are ``pad`` apart. Conv1d weights ``[O, I, k]`` are drawn as ``1 x k`` kernels.

    Args:
        weight: Float conv weight ``[O, I, kh, kw]`` (or ``[O, I, k]``), any device. NaN/Inf are treated as 0.
        max_filters: Maximum number of output filters shown (the first ones).
        scale: Integer upscaling factor for each kernel; None for automatic.
        max_inputs: Maximum number of input channels shown per filter in the per-row layout.
        pad: Gap between tiles and around the border.
        cmap: Diverging colormap for the non-RGB layouts (``"seismic"``, ``"RdBu_r"``, ``"coolwarm"``...).
        background: Gray level of the background; None picks 255 for RGB and 128 for the diverging layouts.

    Returns:
        uint8 ``[3, H, W]`` on CPU.
    """
    w, _ = sanitize(weight.detach().float().cpu())
    if w.ndim == 3:
        w = w.unsqueeze(2)
    if w.ndim != 4 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"filter_grid expects a conv weight [O,I,kh,kw], got {tuple(weight.shape)}")
    w = w[: max(1, max_filters)]
    o, i, kh, kw = w.shape
    s = int(scale) if scale is not None else max(1, math.ceil(_FILTER_MIN_PX / max(kh, kw)))
    if i == 3:
        tiles = (normalize_maps(w) * 255.0).round().to(torch.uint8)
        bg = 255 if background is None else background
        return labelled_grid(upscale_nearest(tiles, s), None, pad=pad, min_tile=1, background=bg)
    n_in = min(i, max(1, max_inputs))
    kernels = w[:, :n_in].reshape(o * n_in, 1, kh, kw)  # row-major: filter o, input channel j
    tiles = apply_colormap(normalize_maps(kernels, symmetric=True), cmap)
    ncol = None if i == 1 else n_in
    bg = 128 if background is None else background
    return labelled_grid(upscale_nearest(tiles, s), None, ncol=ncol, pad=pad, min_tile=1, background=bg)


def select_channels(fmaps: Tensor, max_channels: int = 16, order: str = "mean") -> Tensor:
    """Picks which feature-map channels to show.

    Args:
        fmaps: Float ``[C, h, w]`` feature maps of one image.
        max_channels: Maximum number of channels returned.
        order: ``"mean"`` (highest mean activation first), ``"max"`` (highest peak first), ``"std"`` (highest
            spatial standard deviation first) or ``"index"`` (the first channels in order). Ties keep index order.

    Returns:
        int64 ``[K]`` channel indices, ``K = min(max_channels, C)``.
    """
    if fmaps.ndim != 3:
        raise ValueError(f"expected [C,h,w] feature maps, got {tuple(fmaps.shape)}")
    c = fmaps.shape[0]
    k = max(0, min(int(max_channels), c))
    if order == "index":
        return torch.arange(k)
    f, _ = sanitize(fmaps.detach().float().cpu())
    flat = f.reshape(c, -1)
    if order == "mean":
        score = flat.mean(dim=1)
    elif order == "max":
        score = flat.amax(dim=1)
    elif order == "std":
        score = flat.std(dim=1, correction=0)
    else:
        raise ValueError(f"unknown order {order!r}; expected one of {', '.join(_ORDERS)}")
    return torch.argsort(score, descending=True, stable=True)[:k]


def activation_grid(
    fmaps: Tensor,
    max_channels: int = 16,
    order: str = "mean",
    *,
    cmap: str = "viridis",
    ncol: int | None = None,
    min_tile: int = 128,
    pad: int = 2,
) -> Tensor:
    """Renders the top feature-map channels of one image as a captioned grid.

    Channels are chosen with :func:`select_channels` and laid out in that order (row-major, see
    :func:`labelled_grid`); each is min-max normalised on its own, coloured with ``cmap`` and captioned
    ``"ch <index>"``. Constant channels render as the colormap's low end.

    Args:
        fmaps: Float ``[C, h, w]`` feature maps (``[1, C, h, w]`` and a single ``[h, w]`` map are accepted), any
            device. NaN/Inf are treated as 0.
        max_channels: Maximum number of channels shown.
        order: ``"mean"``, ``"max"``, ``"std"`` or ``"index"`` (see :func:`select_channels`).
        cmap: Colormap name.
        ncol: Grid columns; default ``ceil(sqrt(K))``.
        min_tile: Minimum displayed tile size (see :func:`labelled_grid`).
        pad: Gap between tiles.

    Returns:
        uint8 ``[3, H, W]`` on CPU.
    """
    f, _ = sanitize(fmaps.detach().float().cpu())
    if f.ndim == 4 and f.shape[0] == 1:
        f = f[0]
    elif f.ndim == 2:
        f = f.unsqueeze(0)
    if f.ndim != 3 or f.shape[0] == 0:
        raise ValueError(f"activation_grid expects [C,h,w] feature maps, got {tuple(fmaps.shape)}")
    idx = select_channels(f, max_channels, order)
    tiles = apply_colormap(normalize_maps(f[idx].unsqueeze(1)), cmap)
    return labelled_grid(tiles, [f"ch {i}" for i in idx.tolist()], ncol=ncol, pad=pad, min_tile=min_tile)


def select_frames(n: int, max_frames: int = 16) -> list[int]:
    """Indices of the frames kept by :func:`filmstrip`.

    All frames when ``n <= max_frames``; otherwise ``max_frames`` evenly spaced indices that start with 0 and end
    with ``n - 1`` (with ``max_frames == 1`` only the last frame).

    Args:
        n: Number of available frames.
        max_frames: Maximum number of frames to keep (>= 1).

    Returns:
        Strictly increasing list of indices.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if n <= max_frames:
        return list(range(n))
    if max_frames == 1:
        return [n - 1]
    step = (n - 1) / (max_frames - 1)
    return [round(k * step) for k in range(max_frames)]


def filmstrip(
    frames: Sequence[Tensor],
    captions: Sequence[str] | None = None,
    max_frames: int = 16,
    pad: int = 2,
    *,
    min_tile: int = 128,
    background: int = 255,
) -> Tensor:
    """Lays frames (e.g. one probe image's Grad-CAM overlay at successive log steps) out in one horizontal strip.

    Frames are chosen with :func:`select_frames` (first, evenly spaced, last). Frames whose size differs from the
    first kept frame are resized to it (nearest). The strip is a one-row :func:`labelled_grid`.

    Args:
        frames: Sequence of uint8 ``[3, h, w]`` frames (``[1, 3, h, w]`` accepted), oldest first.
        captions: One caption per frame (e.g. ``"step 1200"``) or None.
        max_frames: Maximum number of frames shown.
        pad: Gap between frames and around the border.
        min_tile: Minimum displayed frame size (see :func:`labelled_grid`).
        background: Gray level of the background.

    Returns:
        uint8 ``[3, H, W]`` on CPU.
    """
    n = len(frames)
    if n == 0:
        raise ValueError("filmstrip needs at least one frame")
    if captions is not None and len(captions) != n:
        raise ValueError(f"got {len(captions)} captions for {n} frames")
    keep = select_frames(n, max_frames)
    selected: list[Tensor] = []
    for k in keep:
        f = frames[k].detach().cpu()
        if f.ndim == 4 and f.shape[0] == 1:
            f = f[0]
        if f.ndim != 3:
            raise ValueError(f"filmstrip frames must be [3,h,w], got {tuple(frames[k].shape)}")
        f = _as_rgb_tiles(f.unsqueeze(0))[0]
        if selected and f.shape != selected[0].shape:
            size = (selected[0].shape[1], selected[0].shape[2])
            f = F.interpolate(f.unsqueeze(0).float(), size=size, mode="nearest")[0].round().to(torch.uint8)
        selected.append(f)
    caps = [captions[k] for k in keep] if captions is not None else None
    return labelled_grid(
        torch.stack(selected), caps, ncol=len(selected), pad=pad, min_tile=min_tile, background=background
    )
