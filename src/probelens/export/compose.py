"""Composing the export's pictures from logged ones: step-stamped frames, animated GIFs, filmstrips, scalar plots.

Frames are uint8 ``[H, W, 3]`` numpy arrays (decoded by :mod:`probelens.export.reading`), put together with numpy
and drawn on with Pillow: the export reads and composes logs without torch or probelens' render code (the log
readers' import contract). Pillow writes the GIFs and PNGs; matplotlib draws the scalar plots.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["STRIP_GAP", "plot_scalar", "select_frames", "stamped", "write_filmstrip", "write_gif"]

STRIP_GAP = 4
"""Pixels of white between the frames of a filmstrip."""

_BAND_GRAY = 32  # the step band under a frame: white text on dark gray
_TEXT_MARGIN = 2


def select_frames(n: int, max_frames: int = 16) -> list[int]:
    """Indices of the frames a filmstrip keeps: all when ``n <= max_frames``, else ``max_frames`` evenly spaced ones
    that start with 0 and end with ``n - 1`` (with ``max_frames == 1`` only the last).

    Example:
        >>> select_frames(10, 4)
        [0, 3, 6, 9]
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if n <= max_frames:
        return list(range(n))
    if max_frames == 1:
        return [n - 1]
    step = (n - 1) / (max_frames - 1)
    return [round(k * step) for k in range(max_frames)]


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text``, cut with "..." where it is wider than ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def stamped(picture: np.ndarray, size: tuple[int, int], text: str) -> np.ndarray:
    """``picture`` (uint8 ``[h, w, 3]``) in the top-left corner of a white ``size = (width, height)`` canvas, a dark
    band with ``text`` (e.g. ``"step 120"``) underneath, centred. The band also keeps consecutive frames distinct, so
    the GIF writer never merges two steps into one frame."""
    width, height = size
    h, w = picture.shape[:2]
    if h > height or w > width:
        raise ValueError(f"cannot place a {w}x{h} picture on a {width}x{height} canvas")
    font = _font(max(10, min(14, width // 12)))
    band = int(font.getbbox("Step 0123456789")[3]) + 2 * _TEXT_MARGIN
    canvas = np.full((height + band, width, 3), 255, dtype=np.uint8)
    canvas[:h, :w] = picture[..., :3]
    canvas[height:] = _BAND_GRAY
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    line = _fit(draw, text, font, width - 2 * _TEXT_MARGIN)
    x = max(_TEXT_MARGIN, (width - draw.textlength(line, font=font)) / 2)
    draw.text((x, height + _TEXT_MARGIN), line, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def write_gif(frames: Iterable[np.ndarray], path: Path, fps: float) -> None:
    """Write ``frames`` (uint8 ``[H, W, 3]``, one size; any iterable, consumed one frame at a time) as a looping GIF.

    Args:
        frames: The frames.
        path: Where to write.
        fps: Frames per second.
    """
    images = (Image.fromarray(np.ascontiguousarray(frame)) for frame in frames)
    first = next(images)
    first.save(path, format="GIF", save_all=True, append_images=images, duration=max(20, round(1000 / fps)), loop=0)


def write_filmstrip(frames: Sequence[np.ndarray], path: Path) -> None:
    """Write ``frames`` (uint8 ``[H, W, 3]``, one size) side by side, :data:`STRIP_GAP` white pixels apart, as one PNG
    (no border, no scaling)."""
    height, width = frames[0].shape[:2]
    strip = np.full((height, len(frames) * width + (len(frames) - 1) * STRIP_GAP, 3), 255, dtype=np.uint8)
    for k, frame in enumerate(frames):
        x = k * (width + STRIP_GAP)
        strip[:, x : x + width] = frame[..., :3]
    Image.fromarray(strip).save(path, format="PNG", optimize=True)


def plot_scalar(points: Sequence[tuple[int, float]], tag: str, path: Path) -> None:
    """Draw one scalar curve (value over step) as a small PNG with matplotlib's Agg backend.

    Args:
        points: ``(step, value)`` pairs.
        tag: The tag, used as the title.
        path: Where to write.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 2.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    ax.plot(steps, values, color="#d2552d", linewidth=1.5, marker="o" if len(points) <= 30 else None, markersize=3)
    ax.set_title(tag, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
