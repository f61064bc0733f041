import pytest
import torch
from captum.attr import InputXGradient, LayerActivation, Saliency

from models import resnet18, small_cnn
from probelens.methods import conv_filters, feature_maps, saliency


@pytest.mark.parametrize(
    ("model_fn", "shape"),
    [
        (lambda: resnet18(), (3, 3, 48, 64)),
        (lambda: resnet18(in_channels=1), (2, 1, 36, 52)),
        (small_cnn, (4, 3, 16, 16)),
    ],
)
def test_vanilla_and_gradient_x_input_match_captum(model_fn, shape):
    model = model_fn().eval()
    x = torch.randn(*shape)
    target = torch.arange(shape[0]) % 2
    ours = saliency(model, x, target, method="vanilla")
    ref = Saliency(model).attribute(x.clone().requires_grad_(), target=target, abs=False)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref)
    ours_gxi = saliency(model, x, target, method="gradient_x_input")
    ref_gxi = InputXGradient(model).attribute(x.clone().requires_grad_(), target=target)
    torch.testing.assert_close(ours_gxi, ref_gxi)


def test_unknown_saliency_method_lists_valid():
    with pytest.raises(ValueError, match="vanilla"):
        saliency(small_cnn().eval(), torch.randn(1, 3, 8, 8), method="vanila")


def test_feature_maps_match_captum_layer_activation():
    model = resnet18().eval()
    x = torch.randn(2, 3, 40, 40)
    ours = feature_maps(model, x, layers=["layer1.0.conv1", "layer3", "layer1.0.bn1"])
    modules = dict(model.named_modules())
    for name, value in ours.items():
        torch.testing.assert_close(value, LayerActivation(model, modules[name]).attribute(x))


def test_feature_maps_pre_relu_with_in_place_relu():
    model = small_cnn(inplace=True).eval()
    x = torch.randn(2, 3, 16, 16)
    ours = feature_maps(model, x, layers=["1"])["1"]  # BatchNorm output, followed by ReLU(inplace=True)
    expected = model[1](model[0](x))
    torch.testing.assert_close(ours, expected.detach())
    assert (ours < 0).any()


def test_conv_filters_are_detached_copies():
    model = small_cnn()
    filters = conv_filters(model)
    assert list(filters) == ["0", "4", "8"]
    torch.testing.assert_close(filters["0"], model[0].weight.detach())
    filters["0"].zero_()
    assert model[0].weight.abs().sum() > 0
    with pytest.raises(ValueError, match="not a 2-D convolution"):
        conv_filters(model, ["1"])
