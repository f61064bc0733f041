"""Every method on a model with non-reentrant gradient checkpointing equals the same model without it.

``torch.utils.checkpoint(..., use_reentrant=False)`` recomputes the checkpointed forward in the backward pass and
hands the recomputed saved tensors to the original autograd nodes by position, dtype and shape; a custom backward
rule that saves other tensors than the plain op (the guided/deconvnet ReLU) broke every firing before 0.3.0.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from probelens.methods import deconv_projections, feature_visualization, grad_cam, saliency, smoothgrad


class Net(nn.Module):
    def __init__(self, checkpointed: bool) -> None:
        super().__init__()
        self.checkpointed = checkpointed
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.b = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed:
            return self.head(checkpoint(self.features, x, use_reentrant=False))
        return self.head(self.features(x))


@pytest.fixture
def pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    plain = Net(checkpointed=False)
    ckpt = Net(checkpointed=True)
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


X = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
T = torch.tensor([0, 1, 2])


@pytest.mark.parametrize("method", ["vanilla", "gradient_x_input", "guided_backprop", "deconvnet"])
def test_saliency_is_the_same_under_checkpointing(pair, method):
    plain, ckpt = pair
    torch.testing.assert_close(saliency(ckpt, X, T, method=method), saliency(plain, X, T, method=method))


@pytest.mark.parametrize("layer", ["a.0", "b.0", "b.3"])
@pytest.mark.parametrize("rule", ["deconvnet", "guided_backprop"])
def test_deconv_projections_are_the_same_under_checkpointing(pair, layer, rule):
    plain, ckpt = pair
    got, got_channels = deconv_projections(ckpt, X, layer, 2, rule, unsupported="ignore")
    want, want_channels = deconv_projections(plain, X, layer, 2, rule, unsupported="ignore")
    assert torch.equal(got_channels, want_channels)
    assert want.abs().sum() > 0  # a projection that is all zero would agree with anything
    torch.testing.assert_close(got, want)


def test_grad_cam_smoothgrad_and_feature_vis_are_the_same_under_checkpointing(pair):
    plain, ckpt = pair
    for layer in ("a.0", "b.2"):
        torch.testing.assert_close(grad_cam(ckpt, X, T, [layer])[layer], grad_cam(plain, X, T, [layer])[layer])
    torch.testing.assert_close(smoothgrad(ckpt, X, T, samples=4, seed=0), smoothgrad(plain, X, T, samples=4, seed=0))
    kw = dict(channels=[0, 1], steps=3, seed=0, image_shape=(3, 12, 12))
    torch.testing.assert_close(feature_visualization(ckpt, "b.2", **kw), feature_visualization(plain, "b.2", **kw))
