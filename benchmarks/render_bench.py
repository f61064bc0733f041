"""PNG encoding and caption drawing of the pictures probelens writes.

Run ``python benchmarks/render_bench.py`` (about half a minute on 2 CPU cores); it prints Markdown tables for
``benchmarks/RESULTS.md``: ``encode_png`` (Pillow at level 1) against Pillow at its other levels, and the text
stamper (lines rasterised once by ``ImageDraw``, cached, stamped onto the tensor grid) against drawing every caption
with ``ImageDraw`` onto a PIL copy of the grid. Pass ``--against REV`` to add the ``encode_png`` of another revision
(e.g. the hand-written encoder of ``af73a73``) as a column. The pictures are built the way the monitors build them,
from a seeded tiny CNN on the snow-vs-desert data:

- Grad-CAM overlay grids of 16 probe images at 64 px and at 224 px (captioned, as ``GradCAMMonitor`` logs them);
- a sparse saliency grid (vanilla gradients colour-mapped without the image, as ``SaliencyMonitor(overlay=False)``);
- a filter grid of a 64 x 32 x 3 x 3 conv weight (as ``FilterMonitor``).

Each encoder's time is the best of ``--repeats`` runs per picture (the pictures are small enough that the best run is
the steady state). Pillow is called as probelens would call it: ``Image.save(format="PNG", compress_level=k,
optimize=False, pnginfo=...)`` with the grid's text chunks.
"""

from __future__ import annotations

import argparse
import functools
import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import Tensor, nn

from probelens.data import generate_snow_desert
from probelens.methods import grad_cam, saliency
from probelens.render import (
    apply_colormap,
    cells_to_text,
    filter_grid,
    labelled_grid,
    normalize_maps,
    overlay_heatmap,
    saliency_to_heat,
    to_display_images,
)
from probelens.render.image import encode_png
from probelens.render.text import card_font_size, fit_text, line_height, stamp_lines


def _model() -> nn.Module:
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1)
    )
    return nn.Sequential(features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2)).eval()


def pictures() -> dict[str, tuple[Tensor, dict[str, str]]]:
    """The benchmark's pictures: name -> (uint8 ``[3, H, W]``, the text chunks the monitor would attach)."""
    model = _model()
    out: dict[str, tuple[Tensor, dict[str, str]]] = {}
    for size in (64, 224):
        data = generate_snow_desert(16, size=size, seed=0)
        targets = data.labels
        cams = grad_cam(model, data.images, targets, layers=["0.3"])["0.3"]
        tiles = overlay_heatmap(to_display_images(data.images), normalize_maps(cams), 0.5, "jet")
        captions = [f"#{i} true: {'snow' if t else 'arabian'} | pred: snow 0.{50 + i}" for i, t in enumerate(targets)]
        boxes: list[tuple[int, int, int, int]] = []
        grid = labelled_grid(tiles, captions, cell_boxes=boxes)
        cells = [(i, *box) for i, box in enumerate(boxes)]
        out[f"Grad-CAM overlay grid, 16 x {size} px"] = (grid, cells_to_text(cells))
        if size == 224:
            sal = saliency(model, data.images, targets, method="vanilla")
            heat = apply_colormap(normalize_maps(saliency_to_heat(sal)), "gray")
            boxes = []
            grid = labelled_grid(heat, captions, cell_boxes=boxes)
            out["sparse saliency grid, 16 x 224 px"] = (grid, cells_to_text([(i, *b) for i, b in enumerate(boxes)]))
    weight = nn.Conv2d(32, 64, 3).weight.detach()
    out["filter grid, 64 x 32 x 3 x 3"] = (filter_grid(weight), {})
    return out


def pillow_png(level: int) -> Callable[[Tensor, dict[str, str]], bytes]:
    def encode(image: Tensor, text: dict[str, str]) -> bytes:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(
            buf, format="PNG", compress_level=level, optimize=False, pnginfo=info
        )
        return buf.getvalue()

    return encode


def probelens_png(image: Tensor, text: dict[str, str]) -> bytes:
    return encode_png(image, compress_level=1, text=text)


def encoder_at(rev: str) -> Callable[[Tensor, dict[str, str]], bytes]:
    """``probelens.render.image.encode_png`` as it was at git revision ``rev`` (loaded beside the current one)."""
    import importlib.util
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    source = subprocess.run(
        ["git", "show", f"{rev}:src/probelens/render/image.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "image_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("probelens.render._image_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return lambda image, text: module.encode_png(image, compress_level=1, text=text)


def _stamp_copy(canvas: Tensor, blocks: list, font: Any) -> None:
    stamp_lines(canvas.clone(), blocks, font, (0, 0, 0))


def _draw_copy(canvas: Tensor, blocks: list, font: Any) -> None:
    from PIL import ImageDraw

    image = Image.fromarray(np.ascontiguousarray(canvas.permute(1, 2, 0).numpy()))
    draw = ImageDraw.Draw(image)
    for x, y, _, lines in blocks:
        for k, line in enumerate(lines):
            draw.text((x, y + k * line_height(font)), line, fill=(0, 0, 0), font=font)
    torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())


def caption_drawing(repeats: int) -> None:
    """The text of captioned grids: the stamper against ``ImageDraw.text`` of every line on a PIL copy of the grid
    (the same lines, fonts and places; the caches warm, as at the second and later log steps)."""
    g = torch.Generator().manual_seed(0)
    cases: dict[str, tuple[Tensor, list[str], int]] = {}
    for size in (64, 224):
        tiles = torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8, generator=g)
        cases[f"Grad-CAM grid, 16 x {size} px"] = (
            tiles,
            [f"#{i} true: snow | pred: arabian 0.{50 + i}" for i in range(16)],
            4,
        )
    print("\n| captioned grid | whole grid (ms) | its captions: stamped / ImageDraw (ms) |")
    print("| --- | --- | --- |")
    for name, (tiles, captions, ncol) in cases.items():
        build = functools.partial(labelled_grid, tiles, captions, ncol=ncol)
        canvas = build()
        boxes: list[tuple[int, int, int, int]] = []
        labelled_grid(tiles, None, ncol=ncol, cell_boxes=boxes)
        width = canvas.shape[2]
        font, lines, _ = fit_text(captions, boxes[0][2] - boxes[0][0] - 4, card_font_size(width), 4)
        blocks = [(x0, y1, x1 - x0, ls) for (x0, _, x1, y1), ls in zip(boxes, lines)]
        stamp, draw = (functools.partial(f, canvas, blocks, font) for f in (_stamp_copy, _draw_copy))
        stamp()
        row = [best_of(f, repeats) * 1e3 for f in (build, stamp, draw)]
        print(f"| {name} | {row[0]:.1f} | {row[1]:.1f} / {row[2]:.1f} |")


def best_of(fn: Callable[[], object], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--against", default=None, help="git revision whose encode_png is measured too")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pics = pictures()
    encoders: dict[str, Callable[[Tensor, dict[str, str]], bytes]] = {}
    if args.against:
        encoders[f"encode_png at {args.against} (level 1)"] = encoder_at(args.against)
    encoders |= {
        "probelens encode_png (level 1)": probelens_png,
        "Pillow, compress_level=3": pillow_png(3),
        "Pillow, compress_level=6 (default)": pillow_png(6),
    }
    print("| picture | size | " + " | ".join(f"{name}: ms / KiB" for name in encoders) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in encoders) + " |")
    for name, (image, text) in pics.items():
        cells = []
        for encode in encoders.values():
            data = encode(image, text)
            with Image.open(io.BytesIO(data)) as decoded:  # every encoder must round-trip the pixels and the chunks
                assert np.array_equal(np.asarray(decoded.convert("RGB")), image.permute(1, 2, 0).numpy())
                assert all(decoded.info.get(k) == v for k, v in text.items())
            ms = best_of(functools.partial(encode, image, text), args.repeats) * 1e3
            cells.append(f"{ms:.1f} / {len(data) / 1024:.0f}")
        print(f"| {name} | {image.shape[2]}x{image.shape[1]} | " + " | ".join(cells) + " |")
    caption_drawing(args.repeats)


if __name__ == "__main__":
    main()
