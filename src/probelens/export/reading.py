"""Reading what the export needs from logged pictures: decoded pixels, sizes and the probe images' boxes over steps.

Event files are read by :mod:`probelens.logs` (shared with the TensorBoard dashboard); here the encoded PNGs of one
tag become uint8 ``[H, W, 3]`` numpy arrays (Pillow decodes them; no torch), and the probe-image layout each grid
records (:data:`probelens.logformat.CELLS_KEY`) is read from the PNG headers alone.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from probelens.logs import Box, png_layout

__all__ = [
    "CROP_BUDGET_BYTES",
    "budget_groups",
    "crops",
    "decode",
    "largest_boxes",
    "picture_size",
    "undecodable",
]

CROP_BUDGET_BYTES = 256 * 2**20
"""Decoded per-probe crops held at once; more probe images -> more decoding passes."""

Encoded = Sequence[tuple[int, bytes]]
"""``(step, PNG bytes)`` of one tag, by step (:func:`probelens.logs.encoded_by_step`)."""


def decode(data: bytes) -> np.ndarray:
    """One logged PNG as uint8 ``[H, W, 3]`` RGB."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def picture_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of one logged PNG (its header only)."""
    layout = png_layout(data)
    return layout.width, layout.height


def undecodable(data: bytes) -> str | None:
    """Why a logged picture must not be decoded (``None`` when it may): more pixels than Pillow's decompression-bomb
    limit (``PIL.Image.MAX_IMAGE_PIXELS``; a header may claim 100000 x 100000 in a few bytes), or a header that is
    not an image's. Only the header is read."""
    try:
        width, height = picture_size(data)
    except Exception as err:
        return f"not an image ({type(err).__name__}: {err})"
    limit = Image.MAX_IMAGE_PIXELS
    if width <= 0 or height <= 0:
        return f"the header claims {width}x{height} pixels"
    if limit is not None and width * height > limit:
        return (
            f"{width}x{height} pixels, above the {limit} that Pillow decodes safely "
            "(PIL.Image.MAX_IMAGE_PIXELS; a decompression bomb, or a picture too large to animate)"
        )
    return None


def largest_boxes(encoded: Encoded) -> dict[int, tuple[int, int]]:
    """Probe index -> the largest ``(width, height)`` of its box over the steps (headers and text chunks only)."""
    largest: dict[int, tuple[int, int]] = {}
    for _, data in encoded:
        for k, (x0, y0, x1, y1) in png_layout(data).boxes.items():
            w, h = largest.get(k, (0, 0))
            largest[k] = (max(w, x1 - x0), max(h, y1 - y0))
    return largest


def budget_groups(sizes: dict[int, tuple[int, int]], n_steps: int, budget: int = CROP_BUDGET_BYTES) -> list[list[int]]:
    """Probe indices in groups whose crops over all steps fit ``budget`` bytes (one decoding pass each)."""
    groups: list[list[int]] = [[]]
    used = 0
    for k in sorted(sizes):
        cost = 3 * sizes[k][0] * sizes[k][1] * n_steps
        if groups[-1] and used + cost > budget:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += cost
    return groups


def crops(encoded: Encoded, group: Sequence[int]) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """Per step, the crops (uint8 ``[h, w, 3]``) of the probe images in ``group`` that the step's picture has, each
    cut with that step's own layout; a step that has none of them is not decoded."""
    for step, data in encoded:
        boxes: dict[int, Box] = {k: box for k, box in png_layout(data).boxes.items() if k in group}
        if not boxes:
            continue
        picture = decode(data)
        yield step, {k: picture[y0:y1, x0:x1] for k, (x0, y0, x1, y1) in boxes.items()}
