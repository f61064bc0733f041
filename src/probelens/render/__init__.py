"""Torch-only rendering of maps, overlays and captioned grids into uint8 RGB images.

Every public function takes torch tensors and returns ``torch.uint8`` images on CPU, ``[3, H, W]`` for one image and
``[N, 3, H, W]`` for a batch (normalisation helpers return floats). Importing this package does not import
matplotlib; colormap tables are sampled from it lazily on first use.
"""

from probelens.render.colormap import apply_colormap, colormap_lut
from probelens.render.grid import (
    activation_grid,
    caption_band,
    filmstrip,
    filter_grid,
    labelled_grid,
    pad_to,
    rows_grid,
    select_channels,
    select_frames,
)
from probelens.render.image import (
    CELLS_KEY,
    PREDICTIONS_KEY,
    PROBE_KEY,
    Cell,
    GridFacts,
    Prediction,
    cells_from_text,
    cells_to_text,
    encode_png,
    normalize_maps,
    overlay_heatmap,
    predictions_from_text,
    probe_from_text,
    saliency_to_heat,
    sanitize,
    save_png,
    to_display_images,
    to_pil_image,
    to_rgb_uint8,
    upscale_nearest,
)

__all__ = [
    "CELLS_KEY",
    "PREDICTIONS_KEY",
    "PROBE_KEY",
    "Cell",
    "GridFacts",
    "Prediction",
    "activation_grid",
    "apply_colormap",
    "caption_band",
    "cells_from_text",
    "cells_to_text",
    "colormap_lut",
    "encode_png",
    "filmstrip",
    "filter_grid",
    "labelled_grid",
    "normalize_maps",
    "overlay_heatmap",
    "pad_to",
    "predictions_from_text",
    "probe_from_text",
    "rows_grid",
    "saliency_to_heat",
    "sanitize",
    "save_png",
    "select_channels",
    "select_frames",
    "to_display_images",
    "to_pil_image",
    "to_rgb_uint8",
    "upscale_nearest",
]
