"""Grid layouts with captions: labelled tile grids, per-row grids, conv filters, activations and filmstrips.

All functions take uint8 (or float, for weights/feature maps) torch tensors and return one uint8 ``[3, H, W]`` image
on CPU. Images are composed with torch; only the text is drawn, with Pillow (:mod:`probelens.render.text`).

Tiles are drawn at the size that carries their information: upscaled by an integer factor (nearest neighbour) only
until their longer side reaches ``min_tile`` pixels (64 by default: a 32 px probe image is doubled, a 64 px one is
drawn as it is), never beyond. A captioned grid's cells are at least ``min_cell`` pixels wide (128 by default), so a
caption has room next to a small tile, which is centred in its cell. Captions are sized to
stay readable at the width the picture is shown at (``card_width``: TensorBoard's card by default for
:func:`labelled_grid`, opted into for :func:`rows_grid`); captions that do not fit the cell width are first drawn
with a slightly smaller font (never below that), then word-wrapped (at most ``max_caption_lines`` lines, the last one
ellipsised).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from probelens.render.colormap import apply_colormap
from probelens.render.image import normalize_maps, sanitize, to_rgb_uint8, upscale_nearest
from probelens.render.text import CARD_WIDTH, MIN_FONT, Font, card_font_size, fit_text, stamp_lines

__all__ = [
    "activation_grid",
    "caption_band",
    "filmstrip",
    "filter_grid",
    "labelled_grid",
    "pad_to",
    "rows_grid",
    "select_channels",
    "select_frames",
]

Box = tuple[int, int, int, int]

_TEXT_MARGIN = 2  # pixels of background around text inside a caption band
_MAX_FONT = 18  # largest caption size a cell asks for (legibility at card size may ask for more)
_FILTER_MIN_PX = 24  # kernels are upscaled so that their longer side is at least this many pixels
_ORDERS = ("mean", "max", "std", "index")


# ----------------------------------------------------------------------------------------------------------------------
# Text and tiles


def _base_font_size(cell: int) -> int:
    """Preferred caption size for a cell (tile) of ``cell`` pixels: about a tenth of it, within [11, 18]."""
    return max(MIN_FONT + 1, min(_MAX_FONT, round(cell / 10)))


def _caption_size(cell: int, width: int, card_width: int | None) -> tuple[int, int]:
    """``(size, smallest size)`` of the captions of a ``width``-pixel picture with ``cell``-pixel cells: the cell's
    preferred size, never below what stays readable at TensorBoard's card width (:func:`card_font_size`)."""
    readable = card_font_size(width, card_width)
    return max(_base_font_size(cell), readable), max(MIN_FONT, readable)


def _band_height(n_lines: int, line_h: int) -> int:
    """Height of a text band holding ``n_lines`` lines (0 for no lines)."""
    return n_lines * line_h + 2 * _TEXT_MARGIN if n_lines > 0 else 0


def _text_color(background: int) -> tuple[int, int, int]:
    """Black text on light backgrounds, white text on dark ones."""
    c = 0 if background >= 128 else 255
    return (c, c, c)


def _place(canvas: Tensor, tiles: Tensor, ncol: int, x0: int, y0: int, cell: tuple[int, int], pad: int) -> list[Box]:
    """Pastes ``tiles`` (``[N, 3, h, w]``) onto ``canvas`` in place, row-major in ``ncol`` columns of cells
    ``cell = (width, height)`` from ``(x0, y0)``, ``pad`` apart, each tile centred horizontally at the top of its cell.

    Returns:
        Each cell as ``(left, top, right, bottom)``, right/bottom exclusive.
    """
    th, tw = tiles.shape[-2:]
    cell_w, cell_h = cell
    boxes: list[Box] = []
    # numpy views of both: a tile's copy is one small array op, ~10x cheaper than a torch indexing op's dispatch
    on_host = canvas.device.type == "cpu" and tiles.device.type == "cpu"
    target, source = (canvas.numpy(), tiles.numpy()) if on_host else (canvas, tiles)
    for i in range(tiles.shape[0]):
        r, c = divmod(i, ncol)
        x, y = x0 + c * (cell_w + pad), y0 + r * (cell_h + pad)
        xo = x + (cell_w - tw) // 2
        target[:, y : y + th, xo : xo + tw] = source[i]
        boxes.append((x, y, x + cell_w, y + cell_h))
    return boxes


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
    min_tile: int = 64,
    background: int = 255,
    title: str | None = None,
    *,
    min_cell: int = 128,
    max_caption_lines: int = 4,
    cell_boxes: list[tuple[int, int, int, int]] | None = None,
    card_width: int | None = CARD_WIDTH,
    margin: int | None = None,
    map_boxes: list[tuple[int, int, int, int]] | None = None,
) -> Tensor:
    """Lays tiles out in a grid with a caption under each tile and an optional title on top.

    Layout (all sizes in pixels): every tile is upscaled (nearest) by ``s = max(1, ceil(min_tile / max(h, w)))``;
    each cell is ``cell_w = max(s * w, min_cell)`` wide when the grid has captions (``s * w`` when it has none; the
    tile is centred in its cell) and ``s * h + band`` high, where ``band`` is the caption band height (0 when there
    are no captions or all are empty). The tile's own box in cell ``(x, y)`` is therefore
    ``(x + (cell_w - s * w) // 2, y, x + (cell_w - s * w) // 2 + s * w, y + s * h)``. Cells are separated from
    each other by ``pad`` and from the border by ``margin`` (default ``pad``). Hence
    ``W = ncol * cell_w + (ncol - 1) * pad + 2 * margin`` and
    ``H = title_band + nrow * (s * h + band) + (nrow - 1) * pad + 2 * margin`` with ``nrow = ceil(N / ncol)``.
    Captions may contain ``"\\n"``; lines that do not fit are word-wrapped.

    Args:
        tiles: uint8 ``[N, 3, h, w]`` (non-square allowed; ``[N, 1, h, w]`` gray and float ``[0, 1]`` tiles are
            converted).
        captions: ``N`` strings (``""`` for none) or None.
        ncol: Number of columns; default ``ceil(sqrt(N))``; clipped to ``[1, N]``.
        pad: Gap between cells and around the border.
        min_tile: The size a tile's longer side is brought up to by an integer nearest-neighbour factor (a tile
            already this large is drawn as it is, never scaled down).
        background: Gray level of the background; text is black on light and white on dark backgrounds.
        title: Optional title drawn centred above the grid.
        min_cell: Minimum cell width of a captioned grid: the room a caption needs next to a small tile.
        max_caption_lines: Maximum number of lines per caption after wrapping.
        cell_boxes: If given, a list that receives each tile's cell (tile and caption) as
            ``(left, top, right, bottom)``, right/bottom exclusive, in tile order.
        card_width: The width the picture is shown at (TensorBoard's card, :data:`probelens.render.text.CARD_WIDTH`):
            captions and title are drawn large enough to stay readable there (:func:`card_font_size`), wrapping if
            they must. None sizes the text by the cell alone.
        margin: Gap between the cells and the border; None for ``pad``.
        map_boxes: If given, a list that receives each tile's own box (the tile alone, without its caption band or
            the cell's side margins) as ``(left, top, right, bottom)``, in tile order.

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
    margin = pad if margin is None else max(0, int(margin))
    ncol = math.ceil(math.sqrt(n)) if ncol is None else max(1, min(int(ncol), n))
    nrow = math.ceil(n / ncol)
    s = _tile_scale(h, w, min_tile)
    t = upscale_nearest(t, s)
    th, tw = h * s, w * s
    captioned = captions is not None and any(captions)
    cell_w = max(tw, int(min_cell)) if captioned else tw
    width = ncol * cell_w + (ncol - 1) * pad + 2 * margin

    size, smallest = _caption_size(cell_w, width, card_width)
    cap_lines: list[list[str]] = []
    band_h = 0
    cap_font: Font | None = None
    if captioned:
        assert captions is not None
        cap_font, cap_lines, cap_lh = fit_text(
            list(captions), cell_w - 2 * _TEXT_MARGIN, size, max_caption_lines, smallest
        )
        band_h = _band_height(max(len(lines) for lines in cap_lines), cap_lh)

    title_lines: list[str] = []
    title_h = 0
    title_font: Font | None = None
    if title:
        title_font, (title_lines,), title_lh = fit_text(
            [title], width - 2 * _TEXT_MARGIN, max(size, min(_MAX_FONT, size + 2)), max_caption_lines, smallest
        )
        title_h = _band_height(len(title_lines), title_lh)

    height = title_h + nrow * (th + band_h) + (nrow - 1) * pad + 2 * margin
    canvas = torch.full((3, height, width), background, dtype=torch.uint8)
    boxes = _place(canvas, t, ncol, margin, title_h + margin, (cell_w, th + band_h), pad)
    if cell_boxes is not None:
        cell_boxes.extend(boxes)
    if map_boxes is not None:
        map_boxes.extend((x + (cell_w - tw) // 2, y, x + (cell_w - tw) // 2 + tw, y + th) for x, y, _, _ in boxes)
    if title_font is not None:
        stamp_lines(canvas, [(0, _TEXT_MARGIN, width, title_lines)], title_font, _text_color(background), center=True)
    if cap_font is not None:
        blocks = [
            (x, y + th + _TEXT_MARGIN, cell_w, lines) for (x, y, _, _), lines in zip(boxes, cap_lines, strict=True)
        ]
        stamp_lines(canvas, blocks, cap_font, _text_color(background), center=True)
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
    card_width: int | None = None,
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
        card_width: The width the picture is shown at, e.g. :data:`probelens.render.text.CARD_WIDTH` for a
            TensorBoard card: row captions stay readable there (see :func:`labelled_grid`). None (the default) sizes
            them by the tiles alone, as for strips of many frames that are read enlarged, where card-size text would
            double the picture's height.

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
    cap_font: Font | None = None
    if row_captions is not None and any(row_captions):
        cell = max(max(r.shape[2], r.shape[3]) for r in prepared)
        size, smallest = _caption_size(max(cell, 96), width, card_width)
        cap_font, cap_lines, cap_lh = fit_text(
            list(row_captions), width - 2 * pad - 2 * _TEXT_MARGIN, size, max_caption_lines, smallest
        )
        band_h = _band_height(max(len(lines) for lines in cap_lines), cap_lh)

    height = sum(band_h + r.shape[2] for r in prepared) + (len(prepared) + 1) * pad
    canvas = torch.full((3, height, width), background, dtype=torch.uint8)
    blocks: list[tuple[int, int, int, Sequence[str]]] = []
    y = pad
    for r, lines in zip(prepared, cap_lines, strict=True):
        blocks.append((pad + _TEXT_MARGIN, y + _TEXT_MARGIN, width, lines))
        _place(canvas, r, r.shape[0], pad, y + band_h, (r.shape[3], r.shape[2]), pad)
        if cell_boxes is not None:
            # the full width: the row caption may run past the tiles
            cell_boxes.append((pad, y, width - pad, y + band_h + r.shape[2]))
        y += band_h + r.shape[2] + pad
    if cap_font is None:
        return canvas
    stamp_lines(canvas, blocks, cap_font, _text_color(background), center=False)
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
    max_side: int | None = None,
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
    24x24 px), or the largest factor at which the grid's longer side stays within ``max_side`` (at least 1), so a
    deep layer's grid is drawn at the size it is written rather than drawn larger and downscaled. Tiles are ``pad``
    apart. Conv1d weights ``[O, I, k]`` are drawn as ``1 x k`` kernels.

    Args:
        weight: Float conv weight ``[O, I, kh, kw]`` (or ``[O, I, k]``), any device. NaN/Inf are treated as 0.
        max_filters: Maximum number of output filters shown (the first ones).
        scale: Integer upscaling factor for each kernel; None for automatic.
        max_inputs: Maximum number of input channels shown per filter in the per-row layout.
        pad: Gap between tiles and around the border.
        cmap: Diverging colormap for the non-RGB layouts (``"seismic"``, ``"RdBu_r"``, ``"coolwarm"``...).
        background: Gray level of the background; None picks 255 for RGB and 128 for the diverging layouts.
        max_side: With ``scale`` None, the longest side the grid may have (None: no limit).

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
    n_in = min(i, max(1, max_inputs))
    if scale is None and max_side is not None:  # the layout of labelled_grid without captions, solved for s
        count, columns = (o, math.ceil(math.sqrt(o))) if i in (1, 3) else (o * n_in, n_in)
        rows = math.ceil(count / columns)
        room = [(max_side - pad) // cells - pad for cells in (rows, columns)]  # per cell, as kernel pixels
        s = max(1, min(s, room[0] // kh, room[1] // kw))
    if i == 3:
        tiles = (normalize_maps(w) * 255.0).round().to(torch.uint8)
        bg = 255 if background is None else background
        return labelled_grid(upscale_nearest(tiles, s), None, pad=pad, min_tile=1, background=bg)
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
    min_tile: int = 64,
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
        min_tile: The size a tile's longer side is upscaled to (see :func:`labelled_grid`); cells are as wide as the
            tiles (the ``"ch <index>"`` captions are short).
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
    captions = [f"ch {i}" for i in idx.tolist()]
    return labelled_grid(tiles, captions, ncol=ncol, pad=pad, min_tile=min_tile, min_cell=min_tile)


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


def pad_to(image: Tensor, height: int, width: int, background: int = 255) -> Tensor:
    """``image`` (uint8 ``[..., 3, h, w]``) at its own scale in the top-left corner of a ``height x width`` canvas of
    gray level ``background`` (at least as large): pictures of different sizes are aligned, never scaled."""
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return image
    if h > height or w > width:
        raise ValueError(f"cannot pad a {h}x{w} image to {height}x{width}")
    out = torch.full((*image.shape[:-2], height, width), _check_background(background), dtype=torch.uint8)
    out[..., :h, :w] = image
    return out


def caption_band(image: Tensor, text: str, *, background: int = 32, size: int | None = None) -> Tensor:
    """``image`` with a band underneath carrying ``text``, centred (the picture itself is not covered): a step stamp
    ("step 120") under a frame of an animation.

    Args:
        image: uint8 ``[3, h, w]``.
        text: One line (cut with ``"..."`` where it is wider than the image).
        background: Gray level of the band; the text is white on dark bands, black on light ones.
        size: Font size; default ``w / 12`` within ``[10, 14]``.

    Returns:
        uint8 ``[3, h + band, w]`` on CPU.
    """
    picture = _as_rgb_tiles(image.reshape(-1, *image.shape[-3:]))[0]
    _, h, w = picture.shape
    font, (lines,), line_h = fit_text([text], w - 2 * _TEXT_MARGIN, size or max(MIN_FONT, min(14, w // 12)), 1)
    out = torch.full((3, h + _band_height(1, line_h), w), _check_background(background), dtype=torch.uint8)
    out[:, :h] = picture
    stamp_lines(out, [(0, h + _TEXT_MARGIN, w, lines)], font, _text_color(background), center=True)
    return out


def filmstrip(
    frames: Sequence[Tensor],
    captions: Sequence[str] | None = None,
    max_frames: int = 16,
    pad: int = 2,
    *,
    row_captions: Sequence[str] | None = None,
    min_tile: int = 64,
    background: int = 255,
    card_width: int | None = None,
    margin: int | None = None,
) -> Tensor:
    """Lays out frames over time (e.g. probe images' Grad-CAM overlays at successive log steps), oldest on the left.

    Frames are chosen with :func:`select_frames` (first, evenly spaced, last); frames smaller than the largest kept
    one are padded at the bottom and right with ``background`` (:func:`pad_to`), never scaled.

    - One image per frame (``[3, h, w]``) and no ``row_captions``: one row, a :func:`labelled_grid` with each
      frame's caption under it.
    - ``K`` images per frame (``[K, 3, h, w]``, e.g. ``K`` probe images), or ``row_captions``: one row per image, a
      :func:`rows_grid` with ``row_captions`` above the rows; the kept frames' captions are listed, comma-separated,
      after the first row's caption (``"#3 snow | steps"`` + ``" 0, 40, 80"``).

    Args:
        frames: Sequence of uint8 ``[3, h, w]`` or ``[K, 3, h, w]`` frames (the same ``K`` in each), oldest first.
        captions: One caption per frame (e.g. ``"step 1200"``) or None.
        max_frames: Maximum number of frames shown.
        pad: Gap between frames and around the border.
        row_captions: ``K`` captions, one per row (per image of a frame), or None.
        min_tile: The size a frame's longer side is upscaled to (see :func:`labelled_grid`); in the one-row strip
            each cell is at least this wide (the step captions are short).
        background: Gray level of the background and of the padding.
        card_width: See :func:`labelled_grid`; None (the default) sizes the text by the frames, as a strip of many
            frames is read enlarged rather than at card size.
        margin: Gap around the one-row strip (see :func:`labelled_grid`); None for ``pad``.

    Returns:
        uint8 ``[3, H, W]`` on CPU.
    """
    n = len(frames)
    if n == 0:
        raise ValueError("filmstrip needs at least one frame")
    if captions is not None and len(captions) != n:
        raise ValueError(f"got {len(captions)} captions for {n} frames")
    keep = select_frames(n, max_frames)
    kept = [_as_rgb_tiles(frames[k].detach().cpu().reshape(-1, *frames[k].shape[-3:])) for k in keep]
    if any(f.shape[0] != kept[0].shape[0] for f in kept):
        raise ValueError(f"every frame must hold the same number of images, got {[f.shape[0] for f in kept]}")
    height = max(f.shape[-2] for f in kept)
    width = max(f.shape[-1] for f in kept)
    stack = torch.stack([pad_to(f, height, width, background) for f in kept], dim=1)  # [K, T, 3, H, W]
    caps = [captions[k] for k in keep] if captions is not None else None
    if stack.shape[0] == 1 and row_captions is None:
        return labelled_grid(
            stack[0],
            caps,
            ncol=len(keep),
            pad=pad,
            min_tile=min_tile,
            min_cell=min_tile,
            background=background,
            card_width=card_width,
            margin=margin,
        )
    if row_captions is not None and len(row_captions) != stack.shape[0]:
        raise ValueError(f"got {len(row_captions)} row captions for {stack.shape[0]} rows")
    rows_text = list(row_captions) if row_captions is not None else [""] * stack.shape[0]
    if caps:
        rows_text[0] = f"{rows_text[0]} {', '.join(caps)}".strip()
    return rows_grid(list(stack), rows_text, pad=pad, min_tile=min_tile, background=background, card_width=card_width)
