"""Every picture shows every class: grids pick probe images interleaved by class (stable across steps), and each cell
records which probe image it shows, so a per-image view is keyed by probe identity."""

from __future__ import annotations

import torch

from lit import LitClassifier, loaders, probe_cells, read_events, trainer
from probelens import (
    ActivationMonitor,
    DeconvMonitor,
    GradCAMMonitor,
    OcclusionMonitor,
    ProbeSet,
    SaliencyMonitor,
    ShortcutMonitor,
)


def class_sorted_probe() -> ProbeSet:
    """16 images sorted by class (8 cats, then 8 dogs), as ProbeSet.from_dataset(per_class=True) lays them out."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 16, 16, generator=g)
    targets = torch.tensor([0] * 8 + [1] * 8)
    masks = torch.zeros(16, 1, 16, 16, dtype=torch.bool)
    masks[..., 3:10, 4:11] = True
    return ProbeSet(images, targets, masks=masks, class_names=["cat", "dog"])


def test_interleaving_covers_every_class_first():
    probe = class_sorted_probe()
    assert probe.interleaved().tolist()[:6] == [0, 8, 1, 9, 2, 10]
    uneven = ProbeSet(torch.zeros(6, 1, 4, 4), torch.tensor([2, 2, 0, 1, 2, 0]))
    assert uneven.interleaved().tolist() == [2, 3, 0, 5, 1, 4]  # a round of each class, classes by index


def test_every_grid_shows_every_class_keyed_by_probe_index(tmp_path):
    probe = class_sorted_probe()
    four = [0, 8, 1, 9]
    monitors = [
        GradCAMMonitor(probe, layers="last", max_images=4, target="both"),
        SaliencyMonitor(probe, methods="vanilla", max_images=4),
        OcclusionMonitor(probe, window=8, max_images=4, every_n_epochs=1),
        ActivationMonitor(probe, layers=["model.4"], max_images=4),
        DeconvMonitor(probe, layers="model.8", top_k=2, max_images=4, every_n_epochs=1),
        ShortcutMonitor(probe, max_images=4),
    ]
    train, val = loaders(n=32)
    tr = trainer(tmp_path, monitors, max_epochs=1)
    tr.fit(LitClassifier(), train, val)
    acc = read_events(tr.logger.log_dir)
    expected = {
        "probelens/gradcam/model.8": [i for i in four for _ in range(2)],  # pred and label tiles side by side
        "probelens/saliency/vanilla": four,
        "probelens/occlusion/8x8": four,
        "probelens/activations/model.4": four,
        "probelens/deconv/model.8": four,
        "shortcut/counterfactuals": [i for i in four for _ in range(4)],  # original | object | background | swap
    }
    for tag, cells in expected.items():
        assert probe_cells(acc.Images(tag)[-1]) == cells, tag
        assert {int(probe.targets[i]) for i in cells} == {0, 1}, tag
    gradcam = monitors[0]
    assert [f.shape[0] for _, f in gradcam._frames] == [4]  # the filmstrip's rows: the same interleaved images
