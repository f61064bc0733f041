"""Layer tags sort by depth in TensorBoard: names that already do are kept, others get their depth first."""

import re

import torch
from torch import nn

from lit import LitClassifier, loaders, read_events, trainer
from probelens import ActivationMonitor, GradCAMMonitor, ProbeSet
from probelens.core.writer import layer_labels


def natural(tag: str) -> list:
    """TensorBoard's tag comparison: digit runs as numbers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", tag) if p]


def test_names_that_sort_by_depth_are_kept():
    assert layer_labels(["model.0", "model.4", "model.10"]) == {n: n for n in ("model.0", "model.4", "model.10")}


def test_names_that_do_not_sort_by_depth_get_their_depth_first():
    labels = layer_labels(["net.0.2", "net.0.10", "net.0"])  # net.0, the block around the others, is the deepest
    assert list(labels.values()) == ["00_net.0.2", "01_net.0.10", "02_net.0"]
    assert sorted(labels.values(), key=natural) == list(labels.values())
    many = layer_labels([f"b.{i}" for i in range(120)][::-1])
    assert next(iter(many.values())) == "000_b.119" and sorted(many.values()) == list(many.values())


class Nested(LitClassifier):
    """``net.0`` (a block) outputs the deepest map of the three monitored layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(
            nn.Sequential(*[m for _ in range(6) for m in (nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())]),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(3, 2),
        )


def test_a_trainer_run_writes_layer_tags_in_depth_order(tmp_path):
    train, val = loaders(32)
    probe = ProbeSet(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1]))
    given = ["model.0", "model.0.10", "model.0.2"]  # any order: the monitors order them by the forward pass
    monitors = [ActivationMonitor(probe, layers=given), GradCAMMonitor(probe, layers=given)]
    tr = trainer(tmp_path, monitors, max_epochs=1)
    tr.fit(Nested(), train, val)
    images = read_events(tr.logger.log_dir).Tags()["images"]
    for method in ("activations", "gradcam"):
        tags = sorted((t for t in images if t.startswith(f"probelens/{method}/")), key=natural)
        assert tags == [f"probelens/{method}/{d}" for d in ("00_model.0.2", "01_model.0.10", "02_model.0")], tags
    assert "probelens/gradcam_filmstrip/02_model.0" in images  # the strip follows the deepest layer
