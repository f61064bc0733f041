"""The size a grid draws its tiles at: upscaled only as far as ``min_tile``, captioned cells at least ``min_cell`` wide,
every tile at the box the grid reports for it, and the monitors' captions whole and readable at TensorBoard's card."""

from __future__ import annotations

import math

import pytest
import torch

from probelens.render import filmstrip, labelled_grid, rows_grid, upscale_nearest
from probelens.render.text import CARD_TEXT_PX, CARD_WIDTH, card_font_size, fit_text

DARK = 100
Box = tuple[int, int, int, int]


def _tiles(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def _monitor_captions(n: int) -> list[str]:
    """Captions as the monitors write them (``MonitorWriter.captions``), with the demo's class names."""
    names = ("snow", "arabian")
    return [f"#{i} true: {names[i % 2]}\npred: {names[(i + 1) % 2]} 0.{50 + i % 50:02d}" for i in range(n)]


def _layout(
    tiles: torch.Tensor, captions: list[str] | None, **kwargs: object
) -> tuple[torch.Tensor, list[Box], list[Box]]:
    cells: list[Box] = []
    maps: list[Box] = []
    grid = labelled_grid(tiles, captions, cell_boxes=cells, map_boxes=maps, **kwargs)  # type: ignore[arg-type]
    return grid, cells, maps


@pytest.mark.parametrize(
    ("h", "w"), [(8, 8), (16, 16), (20, 33), (32, 32), (48, 64), (63, 63), (64, 64), (60, 100), (224, 224)]
)
@pytest.mark.parametrize("captioned", [True, False])
def test_tiles_are_upscaled_only_to_min_tile(h: int, w: int, captioned: bool) -> None:
    """The smallest integer factor that brings the longer side to 64 px (none for a tile already that large)."""
    tiles = _tiles(3, h, w)
    grid, _cells, maps = _layout(tiles, _monitor_captions(3) if captioned else None)
    factor = max(1, math.ceil(64 / max(h, w)))
    assert max(h, w) * factor >= 64
    assert factor == 1 or max(h, w) * (factor - 1) < 64  # one step less would not reach 64 px
    for tile, (x0, y0, x1, y1) in zip(tiles, maps, strict=True):
        assert (y1 - y0, x1 - x0) == (h * factor, w * factor)
        assert torch.equal(grid[:, y0:y1, x0:x1], upscale_nearest(tile, factor))


def test_a_64_px_probe_image_is_drawn_as_it_is() -> None:
    tiles = _tiles(16, 64, 64)
    grid, _cells, maps = _layout(tiles, _monitor_captions(16))
    assert {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in maps} == {(64, 64)}
    assert all(torch.equal(grid[:, y0:y1, x0:x1], t) for t, (x0, y0, x1, y1) in zip(tiles, maps, strict=True))


@pytest.mark.parametrize("seed", range(24))
def test_cell_and_map_boxes_are_exact(seed: int) -> None:
    """Random grids: every map box holds its tile pixel for pixel, centred at the top of its cell; cells are at least
    ``min_cell`` wide when captioned, as wide as the tile when not, disjoint, and all ink lies inside them."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 18, (1,), generator=g))
    h, w = (int(v) for v in torch.randint(6, 150, (2,), generator=g))
    ncol = None if seed % 3 == 0 else int(torch.randint(1, 7, (1,), generator=g))
    pad = int(torch.randint(0, 5, (1,), generator=g))
    min_tile, min_cell = (64, 128) if seed % 2 == 0 else (int(torch.randint(1, 130, (1,), generator=g)), 96)
    captioned = seed % 4 != 1
    title = "Grad-CAM at net.0.12" if seed % 5 == 0 else None
    tiles = _tiles(n, h, w, seed)
    grid, cells, maps = _layout(
        tiles,
        _monitor_captions(n) if captioned else None,
        ncol=ncol,
        pad=pad,
        min_tile=min_tile,
        min_cell=min_cell,
        title=title,
    )
    factor = max(1, math.ceil(min_tile / max(h, w)))
    assert len(cells) == len(maps) == n
    cell_w = max(w * factor, min_cell) if captioned else w * factor
    for tile, cell, box in zip(tiles, cells, maps, strict=True):
        cx0, cy0, cx1, cy1 = cell
        x0, y0, x1, y1 = box
        assert cx1 - cx0 == cell_w
        assert (x0 - cx0) == (cx1 - cx0 - (x1 - x0)) // 2 and y0 == cy0  # centred at the top of its cell
        assert cx0 <= x0 < x1 <= cx1 and cy0 <= y0 < y1 <= cy1
        assert min(cx0, cy0) >= 0 and cx1 <= grid.shape[2] and cy1 <= grid.shape[1]
        assert torch.equal(grid[:, y0:y1, x0:x1], upscale_nearest(tile, factor))
    for a in range(n):
        for b in range(a + 1, n):
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = cells[a], cells[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (cells[a], cells[b])
    if captioned:  # caption ink only in the bands under the tiles, inside their cells (the title band above them)
        ink = (grid < DARK).all(dim=0)
        inside = torch.zeros_like(ink)
        top = min(c[1] for c in cells)
        inside[:top] = True
        for (cx0, _cy0, cx1, cy1), (_x0, _y0, _x1, y1) in zip(cells, maps, strict=True):
            inside[y1:cy1, cx0:cx1] = True
        lone = ink & ~inside
        for x0, y0, x1, y1 in maps:  # dark tile pixels are not ink
            lone[y0:y1, x0:x1] = False
        assert not lone.any()


@pytest.mark.parametrize("size", [32, 64, 100])
def test_monitor_captions_are_whole_and_readable_at_card_size(size: int) -> None:
    """The Grad-CAM / saliency grid of 16 probe images: each caption drawn in full (no line cut short with "..."),
    inside its own cell, with capitals at least CARD_TEXT_PX tall when TensorBoard shows the picture at its card."""
    captions = _monitor_captions(16)
    tiles = torch.full((16, 3, size, size), 255, dtype=torch.uint8)
    grid, cells, maps = _layout(tiles, captions)
    cell_w = cells[0][2] - cells[0][0]
    readable = card_font_size(grid.shape[2], CARD_WIDTH)
    _font, lines, _ = fit_text(captions, cell_w - 4, max(readable, 11), 4, readable)
    for caption, wrapped in zip(captions, lines, strict=True):
        assert " ".join(" ".join(wrapped).split()) == " ".join(caption.split()), wrapped  # every word, no "..."
    ink = (grid < DARK).all(dim=0)
    for i, ((cx0, _cy0, cx1, cy1), (_x0, _y0, _x1, y1)) in enumerate(zip(cells, maps, strict=True)):
        band = ink[y1:cy1]
        columns = torch.nonzero(band.any(dim=0)).flatten()
        assert columns.numel() > 0, f"caption {i} not drawn"
        assert cx0 <= int(columns[columns >= cx0 - 1].min()) and int(columns[columns < cx1 + 1].max()) < cx1
        rows = torch.nonzero(band[:, cx0:cx1].any(dim=1)).flatten().tolist()
        runs, start, last = [], rows[0], rows[0]
        for y in rows[1:]:
            if y != last + 1:
                runs.append(last - start + 1)
                start = y
            last = y
        runs.append(last - start + 1)
        assert len(runs) == len(lines[i])  # one run of ink per line: none lost below the band
        shown = max(runs) * CARD_WIDTH / grid.shape[2] if grid.shape[2] > CARD_WIDTH else max(runs)
        assert shown >= CARD_TEXT_PX, (i, runs, shown)


def test_the_new_layout_draws_fewer_pixels_than_upscaling_to_128() -> None:
    """The monitors' 16-image grid of 64 px probe images: tiles drawn at 64 px instead of 128 (a quarter of the tile
    pixels) and a shorter picture, at the same width (the captions' size is unchanged)."""
    tiles, captions = _tiles(16, 64, 64), _monitor_captions(16)
    now = labelled_grid(tiles, captions)
    before = labelled_grid(tiles, captions, min_tile=128, min_cell=128)
    assert now.shape[2] == before.shape[2]
    assert now.shape[1] <= before.shape[1] - 4 * 64


def test_filmstrip_and_rows_grid_keep_small_frames_small() -> None:
    """A strip of 64 px thumbnails is drawn at 64 px (cells as wide as the frames); a row of 32 px tiles doubles."""
    frames = [_tiles(1, 64, 64, k)[0] for k in range(4)]
    strip = filmstrip(frames, [f"step {k}" for k in range(4)])
    assert strip.shape[2] == 4 * 64 + 5 * 2
    assert torch.equal(strip[:, 2:66, 2:66], frames[0])
    rows = rows_grid([_tiles(3, 32, 32)], pad=2)
    assert rows.shape[1:] == (64 + 2 * 2, 3 * 64 + 4 * 2)
