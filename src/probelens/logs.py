"""Reading probelens' TensorBoard logs back: runs, images by step, and the probe-image layout inside each PNG.

Shared by ``probelens export`` (:mod:`probelens.export`) and the TensorBoard dashboard (:mod:`probelens.dashboard`).
Only TensorBoard's own event reader is used (no TensorFlow), and nothing here decodes pixels: a PNG's probe-image
layout (:data:`probelens.render.CELLS_KEY`), probe fingerprint and captions are text chunks that probelens writes
before the image data, so Pillow reads them with the header.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from probelens.render.image import cells_from_text, predictions_from_text, probe_from_text

__all__ = [
    "Box",
    "PngLayout",
    "describe_dir",
    "encoded_by_step",
    "find_runs",
    "is_event_file",
    "load_run",
    "png_layout",
    "probe_boxes",
    "run_name",
]

Box = tuple[int, int, int, int]
"""``(left, top, right, bottom)`` in pixels, right/bottom exclusive."""


def _text_chunks(image: Any) -> dict[str, str]:
    """The PNG text chunks PIL read with the header (``image.info``; probelens writes them before the pixels, so
    ``image.text``, which decodes every pixel to look for later ones, is not needed)."""
    return {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}


def is_event_file(name: str) -> bool:
    """Whether a file name is a TensorBoard event file (``events.out.tfevents.*``)."""
    return "tfevents" in name


def find_runs(logdir: Path, exclude: Path | None = None) -> list[Path]:
    """Directories under ``logdir`` (itself included) that hold TensorBoard event files, sorted.

    Args:
        logdir: The log directory.
        exclude: A folder not to descend into (the export's own output).

    Returns:
        The run directories.
    """
    excluded = exclude.resolve() if exclude is not None else None
    runs = []
    for root, dirs, files in os.walk(logdir):
        dirs[:] = sorted(d for d in dirs if excluded is None or Path(root, d).resolve() != excluded)
        if any(is_event_file(f) for f in files):
            runs.append(Path(root))
    return sorted(runs)


def run_name(logdir: Path, run_dir: Path) -> str:
    """The run's name as TensorBoard shows it: its path relative to ``logdir``, ``.`` for ``logdir`` itself."""
    rel = run_dir.relative_to(logdir).as_posix()
    return rel if rel else "."


def load_run(run_dir: Path) -> Any:
    """An ``EventAccumulator`` over ``run_dir`` holding every image, scalar and tensor (text) event: no sampling.

    ``Reload()`` on the returned object later reads only what was appended since.
    """
    from tensorboard.backend.event_processing.event_accumulator import (
        IMAGES,
        SCALARS,
        TENSORS,
        EventAccumulator,
    )

    acc = EventAccumulator(str(run_dir), size_guidance={IMAGES: 0, SCALARS: 0, TENSORS: 0})
    acc.Reload()
    return acc


def encoded_by_step(events: Iterable[Any]) -> list[tuple[int, bytes]]:
    """The encoded images by step; a step logged twice (a resumed run) keeps the image written last."""
    by_step = {int(event.step): event.encoded_image_string for event in events}
    return sorted(by_step.items())


def describe_dir(logdir: Path, limit: int = 8) -> str:
    """What a directory holds, for error messages (``"it contains 2 entries: a, b"``)."""
    entries = sorted(os.listdir(logdir))
    if not entries:
        return "the directory is empty"
    shown = ", ".join(entries[:limit]) + (f", ... ({len(entries) - limit} more)" if len(entries) > limit else "")
    return f"it contains {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {shown}"


def probe_boxes(image: Image.Image) -> dict[int, Box]:
    """Probe index -> the box around all of its cells in ``image`` (a monitor's grid), from the PNG's layout chunk.

    A probe image with several cells (the counterfactual panel's four tiles) gets the box around all of them; cells
    reaching past the picture are clipped to it, empty ones dropped.
    """
    boxes: dict[int, Box] = {}
    # ``info`` holds the text chunks read with the header (probelens writes them before the pixels); ``image.text``
    # would decode every pixel to look for later ones
    for k, x0, y0, x1, y1 in cells_from_text(_text_chunks(image)):
        x1, y1 = min(x1, image.width), min(y1, image.height)
        if x0 >= x1 or y0 >= y1:
            continue
        if k in boxes:
            a0, b0, a1, b1 = boxes[k]
            x0, y0, x1, y1 = min(a0, x0), min(b0, y0), max(a1, x1), max(b1, y1)
        boxes[k] = (x0, y0, x1, y1)
    return boxes


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
    """

    __slots__ = ("boxes", "height", "predictions", "probe", "width")

    def __init__(
        self,
        width: int,
        height: int,
        boxes: dict[int, Box],
        probe: str | None,
        predictions: dict[int, tuple[str, str, float]],
    ) -> None:
        self.width = width
        self.height = height
        self.boxes = boxes
        self.probe = probe
        self.predictions = predictions


def png_layout(data: bytes) -> PngLayout:
    """The :class:`PngLayout` of one encoded PNG (a header read; pixels are not decoded).

    Raises:
        PIL.UnidentifiedImageError: ``data`` is not an image Pillow can open.
    """
    with Image.open(io.BytesIO(data)) as image:
        return PngLayout(
            image.width,
            image.height,
            probe_boxes(image),
            probe_from_text(_text_chunks(image)),
            predictions_from_text(_text_chunks(image)),
        )
