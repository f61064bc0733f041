"""Tiny seeded test models (no downloads)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def small_cnn(in_channels: int = 3, num_classes: int = 2, inplace: bool = False, seed: int = 0) -> nn.Module:
    """conv-bn-relu x3 with pooling, dropout and a linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=inplace),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=inplace),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(16, num_classes),
    )


class FunctionalReluNet(nn.Module):
    """Uses torch.nn.functional.relu instead of ReLU modules."""

    def __init__(self, in_channels: int = 3, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def resnet18(num_classes: int = 10, in_channels: int = 3, seed: int = 0) -> nn.Module:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


def snapshot(model: nn.Module) -> dict:
    """Everything an explanation must leave as it found: train flags, requires_grad, .grad, state, hooks, in-place
    ReLU flags."""
    from probelens.methods.hooks import count_hooks

    return {
        "flags": [m.training for m in model.modules()],
        "req": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": count_hooks(model),
        "inplace": [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)],
    }


def assert_same(a: dict, b: dict) -> None:
    """Two :func:`snapshot` results are identical."""
    for key in ("flags", "req", "hooks", "inplace"):
        assert a[key] == b[key], key
    for x, y in zip(a["grads"], b["grads"]):
        assert (x is None and y is None) or torch.equal(x, y)
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
