"""Tests for probelens.render.grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import ImageFont

from probelens.render import (
    activation_grid,
    colormap_lut,
    filmstrip,
    filter_grid,
    labelled_grid,
    rows_grid,
    select_channels,
    select_frames,
)
from probelens.render import text as text_module
from probelens.render.text import CARD_TEXT_PX, CARD_WIDTH, MIN_FONT, card_font_size

DARK = 100  # a pixel is "text" when all channels are below this on a white background


def _white(n: int, h: int, w: int) -> torch.Tensor:
    return torch.full((n, 3, h, w), 255, dtype=torch.uint8)


def _dark_mask(image: torch.Tensor) -> torch.Tensor:
    return (image < DARK).all(dim=0)  # [H,W]


@pytest.mark.parametrize(
    ("n", "h", "w", "ncol", "pad", "min_tile", "tile_h", "cell_w", "nrow", "cols"),
    [
        (5, 32, 32, 3, 2, 128, 128, 128, 2, 3),  # x4
        (5, 32, 32, None, 2, 128, 128, 128, 2, 3),  # default ncol = ceil(sqrt(5)) = 3
        (4, 32, 48, 4, 3, 128, 96, 144, 1, 4),  # non-square: x3 (longer side 48 -> 144)
        (3, 64, 64, 1, 0, 128, 128, 128, 3, 1),
        (2, 200, 100, 2, 2, 128, 200, 100, 1, 2),  # no upscaling; without captions a cell is as wide as its tile
        (3, 8, 8, 10, 1, 64, 64, 64, 1, 3),  # ncol clipped to N
    ],
)
def test_labelled_grid_size_without_captions(
    n: int,
    h: int,
    w: int,
    ncol: int | None,
    pad: int,
    min_tile: int,
    tile_h: int,
    cell_w: int,
    nrow: int,
    cols: int,
) -> None:
    out = labelled_grid(_white(n, h, w), ncol=ncol, pad=pad, min_tile=min_tile, background=0)
    assert out.dtype == torch.uint8
    assert out.shape == (3, nrow * tile_h + (nrow + 1) * pad, cols * cell_w + (cols + 1) * pad)
    # Tiles (white) land exactly at the computed positions on the black background.
    assert (out[:, pad : pad + tile_h, pad + (cell_w - w * tile_h // h) // 2] == 255).all()
    assert (out[:, :pad, :] == 0).all()


def test_labelled_grid_upscales_nearest() -> None:
    tiles = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    tiles[0, :, 0, 0] = 255
    out = labelled_grid(tiles, pad=0, min_tile=8)
    assert out.shape == (3, 8, 8)
    assert (out[:, :4, :4] == 255).all()
    assert (out[:, 4:, :] == 0).all()
    assert (out[:, :, 4:] == 0).all()


def test_labelled_grid_captions_draw_dark_pixels_in_caption_bands() -> None:
    n, pad, tile, cell = 4, 2, 64, 128  # 64 px tiles drawn as they are, centred in 128 px wide captioned cells
    tiles = _white(n, 64, 64)
    plain = labelled_grid(tiles, ncol=2, pad=pad)
    assert not _dark_mask(plain).any()
    captions = ["true: snow | pred: arabian 0.87", "cat", "", "line one\nline two"]
    out = labelled_grid(tiles, captions, ncol=2, pad=pad)
    assert plain.shape[2] == 2 * tile + 3 * pad  # without captions a cell is as wide as its tile
    assert out.shape[2] == 2 * cell + 3 * pad
    extra = out.shape[1] - plain.shape[1]
    assert extra > 0
    assert extra % 2 == 0
    band = extra // 2
    dark = _dark_mask(out)
    for i, caption in enumerate(captions):
        r, c = divmod(i, 2)
        y0 = pad + r * (tile + band + pad)
        x0 = pad + c * (cell + pad)
        assert not dark[y0 : y0 + tile, x0 : x0 + cell].any(), "text drawn over a tile"
        in_band = dark[y0 + tile : y0 + tile + band, x0 : x0 + cell]
        assert bool(in_band.any()) == bool(caption), caption
    # Everything dark lies inside some caption band.
    band_rows = torch.zeros(out.shape[1], dtype=torch.bool)
    for r in range(2):
        y0 = pad + r * (tile + band + pad) + tile
        band_rows[y0 : y0 + band] = True
    assert not dark[~band_rows].any()


def test_labelled_grid_two_line_caption_band_is_taller() -> None:
    tiles = _white(2, 64, 64)
    one = labelled_grid(tiles, ["a", "b"])
    two = labelled_grid(tiles, ["a\nb", "c"])
    assert two.shape[1] > one.shape[1]
    assert two.shape[2] == one.shape[2]


def test_labelled_grid_title_on_top() -> None:
    tiles = _white(2, 64, 64)
    plain = labelled_grid(tiles, ncol=2)
    titled = labelled_grid(tiles, ncol=2, title="Grad-CAM step 100")
    top = titled.shape[1] - plain.shape[1]
    assert top > 0
    dark = _dark_mask(titled)
    assert dark[:top].any()
    assert not dark[top:].any()
    assert torch.equal(titled[:, top:], plain)


def test_labelled_grid_dark_background_uses_light_text() -> None:
    tiles = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    out = labelled_grid(tiles, ["hello"], background=0, pad=0)
    assert (out[:, 64:] > 200).all(dim=0).any()


def test_labelled_grid_validates_inputs() -> None:
    with pytest.raises(ValueError):
        labelled_grid(_white(2, 8, 8), ["only one"])
    with pytest.raises(ValueError):
        labelled_grid(_white(0, 8, 8))


def test_labelled_grid_with_legacy_bitmap_font(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(ImageFont, "load_default_imagefont"):
        pytest.skip("this Pillow only has the bitmap default font; the normal tests cover it")
    legacy = ImageFont.load_default_imagefont()

    def load_default() -> ImageFont.ImageFont:  # the pre-10.1 signature: no size argument
        return legacy

    caches = (text_module.load_font, text_module.line_height, text_module.text_width, text_module._cap_height)
    monkeypatch.setattr(text_module.ImageFont, "load_default", load_default)
    for cache in caches:
        cache.cache_clear()
    try:
        out = labelled_grid(_white(2, 64, 64), ["true: snow → pred: arabian 0.87", "ok"], ncol=2)
        assert _dark_mask(out)[64:].any()
    finally:
        for cache in caches:
            cache.cache_clear()


def test_rows_grid_layout_and_captions() -> None:
    rows = [_white(2, 64, 64), _white(3, 16, 16)]  # second row upscaled x4 to 64
    out = rows_grid(rows, pad=2, min_tile=64)
    assert out.shape == (3, 2 * 64 + 3 * 2, max(2 * 64 + 3 * 2, 3 * 64 + 4 * 2))
    assert not _dark_mask(out).any()
    captioned = rows_grid(rows, ["probe 0: true snow | pred arabian 0.87", "probe 1"], pad=2, min_tile=64)
    band = (captioned.shape[1] - out.shape[1]) // 2
    assert band > 0
    dark = _dark_mask(captioned)
    assert dark[2 : 2 + band].any()
    assert dark[2 + band + 64 + 2 : 2 + band + 64 + 2 + band].any()
    assert not dark[2 + band : 2 + band + 64].any()


def test_filter_grid_rgb_pure_red_filter_is_red() -> None:
    weight = torch.randn(4, 3, 3, 3)
    weight[0] = 0.0
    weight[0, 0] = 1.0  # only the red input channel, all positive
    out = filter_grid(weight)
    # 4 filters -> 2 columns; a 3x3 kernel becomes 24x24; pad 2.
    assert out.shape == (3, 2 * 24 + 3 * 2, 2 * 24 + 3 * 2)
    patch = out[:, 2:26, 2:26]
    assert (patch[0] == 255).all()
    assert (patch[1:] == 0).all()


def test_filter_grid_rgb_keeps_relative_colour() -> None:
    weight = torch.zeros(1, 3, 1, 1)
    weight[0, :, 0, 0] = torch.tensor([2.0, 1.0, 0.0])
    out = filter_grid(weight, scale=4, pad=0)
    assert out.shape == (3, 4, 4)
    assert out[:, 0, 0].tolist() == [255, 128, 0]


def test_filter_grid_deep_layer_shows_sign() -> None:
    weight = torch.zeros(2, 5, 3, 3)
    weight[0, :, 1, 1] = 1.0  # positive centre taps
    weight[1, :, 1, 1] = -1.0  # negative centre taps
    out = filter_grid(weight)
    # one row per filter, one column per input channel, 24 px tiles, pad 2
    assert out.shape == (3, 2 * 24 + 3 * 2, 5 * 24 + 6 * 2)
    pos = out[:, 2 + 12, 2 + 12].int()
    neg = out[:, 2 + 26 + 12, 2 + 12].int()
    zero = out[:, 2 + 2, 2 + 2].int()  # a zero tap
    assert pos[0] > pos[2] + 50  # red
    assert neg[2] > neg[0] + 50  # blue
    assert not torch.equal(pos, neg)
    assert (zero > 200).all()  # white-ish: zero in a diverging map
    assert torch.equal(out[:, 14, 14 + 26], out[:, 14, 14])  # same sign in all input channels of filter 0


def test_filter_grid_limits_filters_and_inputs() -> None:
    out = filter_grid(torch.randn(100, 16, 3, 3), max_filters=10)
    assert out.shape == (3, 10 * 24 + 11 * 2, 8 * 24 + 9 * 2)
    single = filter_grid(torch.randn(9, 1, 5, 5), scale=2, pad=1)
    assert single.shape == (3, 3 * 10 + 4, 3 * 10 + 4)  # I == 1: square grid of O tiles
    assert filter_grid(torch.randn(4, 2, 3, 3) * float("nan")).dtype == torch.uint8


def test_select_channels_orders() -> None:
    fmaps = torch.zeros(4, 2, 2)
    fmaps[0] = 1.0
    fmaps[1] = 3.0
    fmaps[2] = 2.0
    fmaps[3, 0, 0] = 10.0  # mean 2.5, max 10
    assert select_channels(fmaps, 4, "mean").tolist() == [1, 3, 2, 0]
    assert select_channels(fmaps, 2, "mean").tolist() == [1, 3]
    assert select_channels(fmaps, 3, "index").tolist() == [0, 1, 2]
    assert select_channels(fmaps, 1, "max").tolist() == [3]
    with pytest.raises(ValueError):
        select_channels(fmaps, 2, "random")


@pytest.mark.parametrize(("order", "first_channel"), [("mean", 1), ("index", 0)])
def test_activation_grid_ordering(order: str, first_channel: int) -> None:
    fmaps = torch.zeros(3, 16, 16)
    for c, value in enumerate([1.0, 3.0, 2.0]):
        fmaps[c, 4 * c] = value  # channel c: one bright row at y = 4c; means ordered 1 > 2 > 0
    out = activation_grid(fmaps, max_channels=3, order=order)
    lut = colormap_lut("viridis")
    # 3 tiles -> 2 columns, tiles 16 -> 64 (x4) in cells as wide as the tiles, pad 2; first tile at (2, 2).
    assert out.shape[2] == 2 * 64 + 3 * 2
    for c in range(3):
        y = 2 + 4 * c * 4 + 2
        expected = lut[255] if c == first_channel else lut[0]
        assert torch.equal(out[:, y, 2 + 32], expected), c


def test_activation_grid_captions_and_limits() -> None:
    fmaps = torch.rand(1, 32, 8, 8)
    out = activation_grid(fmaps, max_channels=4, min_tile=64)
    plain_h = 2 * 64 + 3 * 2
    assert out.shape[2] == 2 * 64 + 3 * 2
    assert out.shape[1] > plain_h  # caption bands
    assert _dark_mask(out).any()


def test_select_frames_keeps_first_and_last() -> None:
    assert select_frames(5, 16) == [0, 1, 2, 3, 4]
    for n, m in [(40, 6), (17, 16), (100, 2), (1000, 16)]:
        idx = select_frames(n, m)
        assert len(idx) == m
        assert idx[0] == 0
        assert idx[-1] == n - 1
        assert all(b > a for a, b in itertools.pairwise(idx))
    assert select_frames(10, 1) == [9]


def test_filmstrip_selection_and_layout() -> None:
    frames = [torch.full((3, 128, 128), k, dtype=torch.uint8) for k in range(40)]
    out = filmstrip(frames, max_frames=6, pad=2)
    assert out.shape == (3, 128 + 2 * 2, 6 * 128 + 7 * 2)
    shown = [int(out[0, 64, 2 + j * 130 + 64]) for j in range(6)]
    assert shown == select_frames(40, 6)
    assert shown[0] == 0
    assert shown[-1] == 39


def test_filmstrip_captions_and_mismatched_sizes() -> None:
    frames = [_white(1, 64, 64)[0], _white(1, 32, 32)[0], _white(1, 64, 64)[0]]
    out = filmstrip(frames, ["step 0", "step 100", "step 200"])
    assert out.shape[2] == 3 * 64 + 4 * 2  # 64 px frames drawn as they are, cells as wide as the frames
    assert out.shape[1] > 64 + 4
    assert _dark_mask(out)[66:].any()
    with pytest.raises(ValueError):
        filmstrip(frames, ["too few"])


def _ink_height(image: torch.Tensor, top: int, bottom: int) -> int:
    """Rows ``[top, bottom)`` of ``image`` from the first to the last one holding dark (text) pixels."""
    rows = torch.nonzero(_dark_mask(image[:, top:bottom]).any(dim=1)).flatten()
    return int(rows[-1] - rows[0] + 1) if rows.numel() else 0


def _shown_at_card(height: int, image: torch.Tensor) -> float:
    """``height`` pixels of ``image`` as TensorBoard's card shows them (the picture scaled to the card's width)."""
    return height * CARD_WIDTH / image.shape[2]


@pytest.mark.parametrize("channels", [8, 16, 32])
def test_activation_grid_headers_are_readable_at_card_size(channels: int) -> None:
    """ActivationMonitor's grid: a row per probe image (the image and its channel maps), a header above each row."""
    rows = [_white(channels + 1, 64, 64) for _ in range(3)]
    headers = ["#0 channels 1, 5, 9", "#1 H0", "#2 H0"]
    for card_width, readable in ((CARD_WIDTH, True), (None, False)):  # None: the sizes before legibility mattered
        grid = rows_grid(rows, headers, card_width=card_width)
        plain = rows_grid(rows)
        band = (grid.shape[1] - plain.shape[1]) // 3
        shown = _shown_at_card(_ink_height(grid, 2 + band + 64, 2 + band + 64 + 2 + band), grid)  # row 1's header
        assert (shown >= CARD_TEXT_PX) == readable, (card_width, shown)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_counterfactual_captions_are_readable_at_card_size(size: int) -> None:
    """ShortcutMonitor's panel: four tiles per probe image (original, object only, background only, swapped)."""
    tiles = _white(8, size, size)
    captions = [
        c
        for i in range(2)
        for c in (
            f"#{i} original (snow)\npred: snow",
            "object only\npred: H0",
            "background only\npred: H0",
            "bg swapped\npred: H0",
        )
    ]
    for card_width, readable in ((CARD_WIDTH, True), (None, False)):
        grid = labelled_grid(tiles, captions, ncol=4, card_width=card_width)
        boxes: list[tuple[int, int, int, int]] = []
        labelled_grid(tiles, None, ncol=4, cell_boxes=boxes)
        tile_h = boxes[0][3] - boxes[0][1]
        # the band of the first cell: its last line is "pred: H0"-like; measure each line's capitals
        x0, y0, x1, _ = (boxes[0][0], 2 + tile_h, boxes[0][2], 0)
        dark_rows = _dark_mask(grid[:, y0 : y0 + (grid.shape[1] - 2) // 2, x0:x1]).any(dim=1)
        runs, start = [], None
        for y, on in enumerate([*dark_rows.tolist(), False]):
            if on and start is None:
                start = y
            elif not on and start is not None:
                runs.append(y - start)
                start = None
        assert runs, "no caption text"
        shown = _shown_at_card(max(runs), grid)
        assert (shown >= CARD_TEXT_PX) == readable, (card_width, runs, shown)


def test_card_font_size_grows_with_the_picture_width() -> None:
    assert card_font_size(300) == MIN_FONT
    sizes = [card_font_size(w) for w in (600, 900, 1800, 3600)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert card_font_size(1800, card_width=None) == MIN_FONT


def test_filmstrip_rows_pad_and_list_the_steps() -> None:
    """Frames of K probe images become K rows; a smaller frame is padded with the background, not scaled."""
    frames = [torch.full((2, 3, 32, 32), 10 * k, dtype=torch.uint8) for k in range(5)]
    frames[2] = torch.full((2, 3, 16, 32), 20, dtype=torch.uint8)  # shorter: padded at the bottom
    out = filmstrip(
        frames,
        [str(10 * k) for k in range(5)],
        max_frames=3,
        row_captions=["#0 snow | steps", "#1"],
        min_tile=32,
        background=255,
    )
    plain = filmstrip(frames, None, max_frames=3, row_captions=["", ""], min_tile=32)
    assert out.shape[2] == plain.shape[2] == 3 * 32 + 4 * 2
    band = (out.shape[1] - plain.shape[1]) // 2
    assert band > 0 and _dark_mask(out[:, 2 : 2 + band]).any()
    # kept frames 0, 2, 4; frame 2 (column 1) is 16 rows of gray 20, then padding
    column = plain[0, 2:34, 2 + 34 + 5]
    assert column[:16].eq(20).all() and column[16:].eq(255).all()
    assert int(plain[0, 2 + 5, 2 + 5]) == 0 and int(plain[0, 2 + 5, 2 + 68 + 5]) == 40
    with pytest.raises(ValueError):
        filmstrip([torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(3, 3, 8, 8, dtype=torch.uint8)])


def test_wrap_breaks_at_separators_then_words_and_ellipsises() -> None:
    font = text_module.load_font(12)
    width = text_module.text_width("true: arabian", font) + 1
    assert text_module.wrap("true: snow | pred: arabian 0.87", font, width, 4)[0] == "true: snow"
    lines = text_module.wrap("one two three four five six seven eight nine ten", font, width, 2)
    assert len(lines) == 2 and lines[-1].endswith("...")
    assert all(text_module.text_width(line, font) <= width for line in lines)
    for narrow in (1, 5, 20):  # narrower than the ellipsis or a single letter: shortened, never raised
        lines = text_module.wrap("supercalifragilistic word | pred: snow 0.93", font, narrow, 2)
        assert len(lines) == 2 and all(len(line) <= 3 for line in lines)


def _solid_tiles(n: int, h: int, w: int) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Tiles each filled with its own saturated colour (none of them white, gray or black like captions)."""
    colours = [(230, 20 + 30 * i, 40) if i % 2 else (20, 40 + 30 * i, 230) for i in range(n)]
    tiles = torch.stack([torch.tensor(c, dtype=torch.uint8)[:, None, None].expand(3, h, w) for c in colours])
    return tiles, colours


def _colour_mask(canvas: torch.Tensor, colour: tuple[int, int, int]) -> np.ndarray:
    pixels = canvas.permute(1, 2, 0).numpy()
    return (pixels == np.array(colour, dtype=np.uint8)).all(axis=-1)


@pytest.mark.parametrize("ncol", [None, 1, 2, 4])
def test_labelled_grid_cell_boxes_hold_exactly_their_own_tile(ncol):
    tiles, colours = _solid_tiles(5, 20, 30)
    boxes: list[tuple[int, int, int, int]] = []
    canvas = labelled_grid(tiles, [f"#{i}\nsecond line" for i in range(5)], ncol=ncol, title="title", cell_boxes=boxes)
    assert len(boxes) == 5
    _, height, width = canvas.shape
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        inside = np.zeros((height, width), dtype=bool)
        inside[y0:y1, x0:x1] = True
        own = _colour_mask(canvas, colours[i])
        assert own.any() and not (own & ~inside).any(), f"tile {i} leaks out of its box"
        for j, other in enumerate(colours):
            if j != i:
                assert not (_colour_mask(canvas, other) & inside).any(), f"box {i} holds tile {j}"
        # the caption band belongs to the cell: dark text pixels below the tile, inside the box
        below = canvas[:, y0:y1, x0:x1].permute(1, 2, 0).numpy()
        assert ((below < DARK).all(axis=-1)).any(), f"box {i} has no caption text"
    # boxes do not overlap
    for a, b in itertools.combinations(boxes, 2):
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_rows_grid_cell_boxes_hold_each_row_with_its_caption():
    tiles, colours = _solid_tiles(3, 10, 14)
    rows = [tiles[i : i + 1].expand(4, -1, -1, -1) for i in range(3)]
    boxes: list[tuple[int, int, int, int]] = []
    canvas = rows_grid(rows, [f"row {i}" for i in range(3)], cell_boxes=boxes)
    assert len(boxes) == 3
    _, height, width = canvas.shape
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        inside = np.zeros((height, width), dtype=bool)
        inside[y0:y1, x0:x1] = True
        own = _colour_mask(canvas, colours[i])
        scale = -(-64 // 14)  # min_tile 64 over the longer side 14, rounded up
        assert own.sum() == 4 * (10 * scale) * (14 * scale) and not (own & ~inside).any()
        assert all(not (_colour_mask(canvas, c) & inside).any() for j, c in enumerate(colours) if j != i)
        assert ((canvas[:, y0:y1, x0:x1].permute(1, 2, 0).numpy() < DARK).all(axis=-1)).any()  # its caption
    assert [b[3] <= n[1] for b, n in itertools.pairwise(boxes)] == [True, True]


def test_filmstrip_of_probe_rows_is_the_rows_grid_of_the_kept_frames() -> None:
    """GradCAMMonitor's strip (one row per probe image, the steps listed after the first row's caption) is
    ``filmstrip(history, steps, max_frames, row_captions=...)``: the same picture as its hand-made rows_grid."""
    g = torch.Generator().manual_seed(3)
    history = [(10 * s, torch.randint(0, 256, (3, 3, 24, 32), dtype=torch.uint8, generator=g)) for s in range(9)]
    names = ["#4 snow | steps", "#1 arabian", "#7 snow"]
    strip = filmstrip([f for _, f in history], [str(s) for s, _ in history], 4, row_captions=names, min_tile=64)
    chosen = [history[i] for i in select_frames(len(history), 4)]
    rows = [torch.stack([f[i] for _, f in chosen]) for i in range(3)]
    captions = [names[0] + " " + ", ".join(str(s) for s, _ in chosen), *names[1:]]
    assert captions[0] == "#4 snow | steps 0, 30, 50, 80"
    assert torch.equal(strip, rows_grid(rows, captions))
