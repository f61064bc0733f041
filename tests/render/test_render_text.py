"""Tests for probelens.render.text: the one font, line breaker and text stamper of every picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from probelens.render.text import line_height, load_font, stamp_lines, text_width


@pytest.mark.parametrize("background", [255, 40])
def test_stamped_lines_match_pil_drawing(background: int) -> None:
    """Lines stamped from cached coverage masks equal ``ImageDraw.text`` on the same canvas (to rounding)."""
    font = load_font(14)
    lines = ["true: snow | pred: snow 0.93", "#12 pred: arabian (0.51)"]
    ink = (0, 0, 0) if background >= 128 else (255, 255, 255)
    canvas = torch.full((3, 60, 260), background, dtype=torch.uint8)
    canvas[:, 40:, :50] = 128  # text over a picture, not only over the background
    reference = Image.fromarray(canvas.permute(1, 2, 0).numpy().copy())
    stamp_lines(canvas, [(5, 3, 250, lines), (0, 44, 260, ["left"])], font, ink, center=True)
    draw = ImageDraw.Draw(reference)
    for i, line in enumerate(lines):
        x = 5 + max(0, int((250 - draw.textlength(line, font=font)) // 2))
        draw.text((x, 3 + i * line_height(font)), line, fill=ink, font=font)
    draw.text((int((260 - text_width("left", font)) // 2), 44), "left", fill=ink, font=font)
    expected = torch.from_numpy(np.array(reference)).permute(2, 0, 1)
    assert (expected != background).sum() > 200  # the reference really has text
    assert (canvas.int() - expected.int()).abs().max() <= 1


def test_stamping_clips_at_the_canvas_edges() -> None:
    canvas = torch.full((3, 10, 20), 255, dtype=torch.uint8)
    stamp_lines(canvas, [(15, 0, 100, ["HHHH long line that runs off"])], load_font(14), (0, 0, 0), center=False)
    assert (canvas < 255).any()
