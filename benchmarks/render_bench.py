"""PNG encoding and caption drawing of the pictures probelens writes: probelens' encoder against Pillow's.

Run ``python benchmarks/render_bench.py`` (about half a minute on 2 CPU cores); it prints Markdown tables for
``benchmarks/RESULTS.md``. The pictures are built the way the monitors build them, from a seeded tiny CNN on the
snow-vs-desert data:

- Grad-CAM overlay grids of 16 probe images at 64 px and at 224 px (captioned, as ``GradCAMMonitor`` logs them);
- a sparse saliency grid (vanilla gradients colour-mapped without the image, as ``SaliencyMonitor(overlay=False)``);
- a filter grid of a 64 x 32 x 3 x 3 conv weight (as ``FilterMonitor``).

Each encoder's time is the best of ``--repeats`` runs per picture (the pictures are small enough that the best run is
the steady state). Pillow is called as probelens would call it: ``Image.save(format="PNG", compress_level=k,
optimize=False, pnginfo=...)`` with the grid's text chunks.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

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


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 2),
    ).eval()


def pictures() -> dict[str, tuple[Tensor, dict[str, str]]]:
    """The benchmark's pictures: name -> (uint8 ``[3, H, W]``, the text chunks the monitor would attach)."""
    model = _model()
    out: dict[str, tuple[Tensor, dict[str, str]]] = {}
    for size in (64, 224):
        data = generate_snow_desert(16, size=size, seed=0)
        targets = data.labels
        cams = grad_cam(model, data.images, targets, layers=["3"])["3"]
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
    args = parser.parse_args()
    torch.set_num_threads(2)
    pics = pictures()
    encoders: dict[str, Callable[[Tensor, dict[str, str]], bytes]] = {
        "probelens encode_png (level 1)": probelens_png,
        "Pillow, compress_level=1": pillow_png(1),
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
            ms = best_of(lambda encode=encode: encode(image, text), args.repeats) * 1e3
            cells.append(f"{ms:.1f} / {len(data) / 1024:.0f}")
        print(f"| {name} | {image.shape[2]}x{image.shape[1]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
