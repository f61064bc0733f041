"""Reading probelens' TensorBoard logs back: runs, images by step, and the probe-image layout inside each PNG.

Shared by ``probelens export`` (:mod:`probelens.export`) and the TensorBoard dashboard (:mod:`probelens.dashboard`).
Only TensorBoard's own event reader is used (no TensorFlow), and nothing here decodes pixels: a PNG's probe-image
layout (:data:`probelens.logformat.CELLS_KEY`), probe fingerprint and captions are text chunks that probelens writes
before the image data, read with the header by :mod:`probelens.logformat`. Nothing here imports torch or the render
code (a test in a subprocess checks ``sys.modules``), so the readers inside TensorBoard's process stay light.

Run folders reached through symbolic links are followed, as TensorBoard follows them; a link back into a folder
already walked (a loop) is not entered twice.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from probelens.logformat import Box, PngLayout, layout_from_header, read_png_header

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


def is_event_file(name: str) -> bool:
    """Whether a file name is a TensorBoard event file (``events.out.tfevents.*``)."""
    return "tfevents" in name


def find_runs(logdir: Path, exclude: Path | None = None) -> list[Path]:
    """Directories under ``logdir`` (itself included) that hold TensorBoard event files, sorted.

    Symbolic links to folders are followed, as TensorBoard follows them: a run reached through a link is listed
    under the link's path (a folder reached by two paths is listed twice, as TensorBoard lists it). A link that
    leads back into a folder on its own path (a loop) is not entered, where TensorBoard would walk it until the
    path grows too long.

    Args:
        logdir: The log directory.
        exclude: A folder not to descend into (the export's own output).

    Returns:
        The run directories, as paths under ``logdir`` (links not resolved, so run names stay as TensorBoard shows
        them).
    """
    excluded = exclude.resolve() if exclude is not None else None
    runs = []
    chains: dict[str, frozenset[str]] = {}  # walked path -> the real folders on the way to it, itself included
    for root, dirs, files in os.walk(logdir, followlinks=True):
        real = os.path.realpath(root)
        chain = chains.pop(root, frozenset()) | {real}
        keep = []
        for d in sorted(dirs):
            target = os.path.realpath(os.path.join(root, d))
            if target in chain or (excluded is not None and Path(target) == excluded):
                continue  # a loop back up its own path, or the export's output
            chains[os.path.join(root, d)] = chain
            keep.append(d)
        dirs[:] = keep
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


def probe_boxes(image: Any) -> dict[int, Box]:
    """Probe index -> the box around all of its cells in ``image`` (a PIL image of a monitor's grid), from the PNG's
    layout chunk (``image.info``: the text chunks read with the header; probelens writes them before the pixels).

    A probe image with several cells (the counterfactual panel's four tiles) gets the box around all of them; cells
    reaching past the picture are clipped to it, empty ones dropped.
    """
    text = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    return layout_from_header(image.width, image.height, text).boxes


def png_layout(data: bytes) -> PngLayout:
    """The :class:`PngLayout` of one encoded picture (a header read; pixels are not decoded).

    PNGs are read by :func:`probelens.logformat.read_png_header`; another format (a GIF or JPEG from another tool)
    by Pillow's header reader, for its size only.

    Raises:
        PIL.UnidentifiedImageError: ``data`` is neither a PNG nor an image Pillow can open.
    """
    try:
        header = read_png_header(data)
    except ValueError:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return PngLayout(image.width, image.height, {}, None, {})
    return layout_from_header(header.width, header.height, header.text)
