"""The counterfactual panel of ShortcutMonitor records each probe image's picture box (without its caption) inside
its cell, read back from the event file with the torch-free reader the dashboard uses (issue 25 item 5)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from lit import LitClassifier, decode, loaders, read_events, trainer
from probelens import ProbeSet, ShortcutMonitor
from probelens.logformat import png_layout


def test_the_counterfactual_panel_records_exact_map_boxes(tmp_path):
    _, val = loaders(32)
    x, y = next(iter(val))
    masks = torch.zeros(8, 1, *x.shape[-2:], dtype=torch.bool)
    masks[..., 4:12, 4:12] = True
    probe = ProbeSet(x[:8], y[:8], masks=masks)
    t = trainer(tmp_path, [ShortcutMonitor(probe, max_images=6)], max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(LitClassifier(), *loaders(32))
    acc = read_events(t.log_dir)
    event = acc.Images("shortcut/counterfactuals")[-1]
    layout = png_layout(event.encoded_image_string)
    pixels = decode(event)
    shown = probe.interleaved()[:6].tolist()
    assert sorted(layout.maps) == sorted(layout.boxes) == sorted(shown)
    for k, (x0, y0, x1, y1) in layout.maps.items():
        c0, d0, c1, d1 = layout.boxes[k]
        assert c0 <= x0 < x1 <= c1 and d0 <= y0 < y1 <= d1, k
        assert y1 < d1  # the captions lie below the pictures, outside the map box
        below = pixels[y1 : min(d1, y1 + 3), x0:x1]
        assert below.size == 0 or np.all(below >= 200), k  # right below the pictures: the caption band's white
        # the four pictures of a row (original | object only | background only | swapped) span the map box
        assert (x1 - x0) >= 4 * x.shape[-1] * (y1 - y0) // x.shape[-2] - 4 * 8
