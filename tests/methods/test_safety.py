"""The methods leave the model exactly as found: hooks, train flags, requires_grad, .grad, RNG, BN statistics."""

import pytest
import torch
from torch import nn

from models import assert_same, resnet18, small_cnn, snapshot
from probelens.methods import feature_maps, forward_backward, grad_cam, saliency
from probelens.methods.hooks import count_hooks


@pytest.mark.parametrize("fn", ["grad_cam", "saliency", "feature_maps"])
def test_model_left_as_found(fn):
    model = small_cnn().train()
    model[1].eval()  # a frozen BatchNorm must stay frozen, the others must stay in train mode
    model[0].weight.requires_grad_(False)
    model(torch.randn(4, 3, 16, 16)).sum().backward()  # existing .grad must survive untouched
    before = snapshot(model)
    rng = torch.get_rng_state()
    x = torch.randn(3, 3, 16, 16)
    rng = torch.get_rng_state()
    if fn == "grad_cam":
        grad_cam(model, x, layers="all")
    elif fn == "saliency":
        saliency(model, x)
    else:
        feature_maps(model, x, layers="all")
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same(before, snapshot(model))


def test_frozen_backbone_still_gets_grad_cam():
    model = resnet18().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    maps = grad_cam(model, torch.randn(2, 3, 32, 32), layers=["layer3"])
    assert maps["layer3"].abs().sum() > 0
    assert all(not p.requires_grad for p in model.parameters())


def test_no_hook_survives_an_exception():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Boom())
    before = count_hooks(model)
    flags = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        forward_backward(model, torch.randn(1, 3, 8, 8), None, {"0": model[0]})
    assert count_hooks(model) == before
    assert [m.training for m in model.modules()] == flags


def test_works_inside_inference_mode_and_no_grad():
    model = small_cnn().eval()
    with torch.inference_mode():
        x = torch.randn(2, 3, 16, 16)
        maps = grad_cam(model, x, layers="all")
    assert all(m.abs().sum() > 0 for m in maps.values())
    with torch.no_grad():
        sal = saliency(model, torch.randn(2, 3, 16, 16))
    assert sal.abs().sum() > 0


def test_several_target_sets_share_one_forward():
    model = small_cnn().eval()
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 0, 1])
    try:
        res = forward_backward(model, x, {"pred": None, "label": labels}, {"4": model[4]})
    finally:
        handle.remove()
    assert len(calls) == 1
    torch.testing.assert_close(
        res.gradients["label"]["4"], forward_backward(model, x, labels, {"4": model[4]}).gradients["target"]["4"]
    )
    assert torch.equal(res.targets["pred"], model(x).argmax(1))
