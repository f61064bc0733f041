import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from models import FunctionalReluNet, resnet18, small_cnn
from probelens.methods import forward_backward, grad_cam, grad_cam_map, resolve_layers


def captum_grad_cam(model, layer, x, target):
    attr = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear")


@pytest.mark.parametrize(
    ("model_fn", "shape", "layers"),
    [
        (lambda: resnet18(), (3, 3, 64, 48), ["conv1", "layer1.0.conv1", "layer2.1.conv2", "layer3", "layer4"]),
        (lambda: resnet18(in_channels=1), (2, 1, 40, 72), ["layer1", "layer4.1.conv2"]),
        (lambda: small_cnn(inplace=True), (4, 3, 32, 32), ["0", "4", "8"]),
        (lambda: FunctionalReluNet(), (3, 3, 20, 28), ["conv1", "conv2"]),
    ],
)
def test_grad_cam_matches_captum_at_every_layer(model_fn, shape, layers):
    model = model_fn().eval()
    x = torch.randn(*shape)
    num_classes = model(x).shape[1]
    target = torch.arange(shape[0]) % num_classes
    ours = grad_cam(model, x, target, layers=layers)
    assert list(ours) == layers
    modules = dict(model.named_modules())
    for name in layers:
        ref = captum_grad_cam(model, modules[name], x, target)
        assert ours[name].shape == (shape[0], 1, shape[2], shape[3])
        assert ref.abs().max() > 0
        torch.testing.assert_close(ours[name], ref, rtol=1e-5, atol=1e-7)


def test_in_place_relu_after_hooked_conv_keeps_pre_relu_values():
    """Hooking a conv followed by ReLU(inplace=True) must see the conv output, not the post-ReLU values."""
    torch.manual_seed(1)
    inplace = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    plain.load_state_dict(inplace.state_dict())
    x = torch.randn(2, 3, 12, 12)
    t = torch.tensor([0, 2])
    res = forward_backward(inplace, x, t, {"0": inplace[0]})
    # hand derivation on the out-of-place copy: A = conv(x), dY/dA by autograd
    a = plain[0](x)
    y = plain[4](plain[3](plain[2](plain[1](a))))
    (g,) = torch.autograd.grad(y.gather(1, t[:, None]).sum(), a)
    assert (res.activations["0"] < 0).any(), "activation lost its negative (pre-ReLU) values"
    torch.testing.assert_close(res.activations["0"], a.detach())
    torch.testing.assert_close(res.gradients["target"]["0"], g)
    expected = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
    expected = nn.functional.interpolate(expected, size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(grad_cam(inplace, x, t, layers="0")["0"], expected)


def test_default_target_is_predicted_class():
    model = small_cnn().eval()
    x = torch.randn(5, 3, 16, 16)
    pred = model(x).argmax(1)
    a = grad_cam(model, x, None, layers="all")
    b = grad_cam(model, x, pred, layers="all")
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_all_layers_from_one_forward():
    model = resnet18().eval()
    calls = []
    # one forward with autograd; the layout trace is a no-grad forward of two image copies
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1) if torch.is_grad_enabled() else None)
    try:
        maps = grad_cam(model, torch.randn(2, 3, 32, 32), layers="all")
    finally:
        handle.remove()
    assert len(maps) == 20
    assert len(calls) == 1


def test_grad_cam_map_needs_spatial_map():
    with pytest.raises(ValueError, match="spatial feature map"):
        grad_cam_map(torch.randn(2, 4), torch.randn(2, 4))


def test_target_out_of_range_is_rejected():
    model = small_cnn(num_classes=2).eval()
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 5]), layers="all")


def test_output_transform_for_dict_outputs():
    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_cnn(num_classes=3)

        def forward(self, x):
            return {"logits": self.net(x), "aux": x.mean()}

    model = DictOut().eval()
    x = torch.randn(2, 3, 16, 16)
    ours = grad_cam(model, x, torch.tensor([1, 2]), layers=["net.4"])
    ref = grad_cam(model.net, x, torch.tensor([1, 2]), layers=["4"])
    torch.testing.assert_close(ours["net.4"], ref["4"])


def test_resolve_layers_on_compiled_model_strips_prefix():
    model = small_cnn()
    compiled = torch.compile(model, backend="eager")
    names = list(resolve_layers(compiled, "all"))
    assert names == ["0", "4", "8"]
    assert list(resolve_layers(compiled, ["_orig_mod.4"])) == ["4"]
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(grad_cam(compiled, x, layers="all")["4"], grad_cam(model, x, layers="all")["4"])
