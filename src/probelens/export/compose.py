"""Composing the export's pictures from logged ones: step-stamped frames, animated GIFs, filmstrips, scalar plots.

Frames are uint8 ``[3, H, W]`` tensors, put together with :mod:`probelens.render` (the same filmstrip, padding and
text stamping as the monitors' own pictures); Pillow writes the GIFs and PNGs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from torch import Tensor

from probelens.render import caption_band, filmstrip, pad_to, to_pil_image

__all__ = ["STRIP_GAP", "plot_scalar", "stamped", "write_filmstrip", "write_gif"]

STRIP_GAP = 4
"""Pixels of white between the frames of a filmstrip."""


def stamped(picture: Tensor, size: tuple[int, int], text: str) -> Tensor:
    """``picture`` in the top-left corner of a white ``size = (width, height)`` canvas, a dark band with ``text``
    (e.g. ``"step 120"``) underneath. The band also keeps consecutive frames distinct, so the GIF writer never merges
    two steps into one frame."""
    return caption_band(pad_to(picture, size[1], size[0]), text)


def write_gif(frames: Iterable[Tensor], path: Path, fps: float) -> None:
    """Write ``frames`` (uint8 ``[3, H, W]``, one size; any iterable, consumed one frame at a time) as a looping GIF.

    Args:
        frames: The frames.
        path: Where to write.
        fps: Frames per second.
    """
    images = (to_pil_image(frame) for frame in frames)
    first = next(images)
    first.save(path, format="GIF", save_all=True, append_images=images, duration=max(20, round(1000 / fps)), loop=0)


def write_filmstrip(frames: Sequence[Tensor], path: Path) -> None:
    """Write ``frames`` (uint8 ``[3, H, W]``, one size) side by side, :data:`STRIP_GAP` apart, as one PNG
    (:func:`probelens.render.filmstrip`, no border, no scaling)."""
    strip = filmstrip(frames, None, max_frames=len(frames), pad=STRIP_GAP, min_tile=1, margin=0)
    to_pil_image(strip).save(path, format="PNG", optimize=True)


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
