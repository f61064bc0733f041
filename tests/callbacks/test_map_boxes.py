"""Grids record each map's own box and the colour scale (probelens.maps, probelens.scale), read back from real
event files with the torch-free reader the dashboard uses."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lit import LitClassifier, decode, loaders, read_events, trainer
from probelens import GradCAMMonitor, OcclusionMonitor, ProbeSet, SaliencyMonitor
from probelens.logformat import png_layout
from probelens.render import colormap_lut

pytestmark = pytest.mark.integration


def test_grids_record_map_boxes_inside_their_cells_and_the_colour_scale(tmp_path):
    _, val = loaders(32)
    x, y = next(iter(val))
    probe = ProbeSet(x[:6], y[:6])
    monitors = [
        GradCAMMonitor(probe, fixed_scale=True, target="both", filmstrip=False, every_n_epochs=1),
        SaliencyMonitor(probe, every_n_epochs=1),
        OcclusionMonitor(probe, window=4, every_n_epochs=1),
    ]
    t = trainer(tmp_path, monitors, max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(LitClassifier(), *loaders(32))
    acc = read_events(t.log_dir)
    seen = {}
    for tag in acc.Tags()["images"]:
        kind = tag.split("/")[1]
        if kind not in ("gradcam", "saliency", "occlusion"):
            continue
        event = acc.Images(tag)[-1]
        layout = png_layout(event.encoded_image_string)
        pixels = decode(event)
        assert sorted(layout.maps) == sorted(layout.boxes) == list(range(6)), tag
        for k, (x0, y0, x1, y1) in layout.maps.items():
            c0, d0, c1, d1 = layout.boxes[k]
            assert c0 <= x0 < x1 <= c1 and d0 <= y0 < y1 <= d1, (tag, k)
            assert y1 < d1  # the caption band lies below the map, outside its box
            tile = pixels[y0:y1, x0:x1].astype(int)
            assert (tile.max(axis=2) - tile.min(axis=2)).mean() > 5  # coloured map pixels, not the white background
            below = pixels[y1 : min(d1, y1 + 3), x0:x1]
            assert below.size == 0 or np.all(below >= 200), tag  # right below the map: the caption band's white
        seen[kind] = layout.scale
    lut = colormap_lut("jet")
    assert seen["gradcam"]["mode"] == "fixed" and seen["gradcam"]["vmax"] > 0  # fixed_scale=True
    assert seen["gradcam"]["stops"][0] == "#{:02x}{:02x}{:02x}".format(*lut[0].tolist())
    assert seen["saliency"]["mode"] == "per_image" and seen["saliency"]["colormap"] == "inferno"
    assert seen["occlusion"]["mode"] == "per_image" and seen["occlusion"]["colormap"] == "seismic"
