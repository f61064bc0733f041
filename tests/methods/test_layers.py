import pytest
import torch
from torch import nn

from models import FunctionalReluNet, resnet18, small_cnn
from probelens.methods import auto_layers, conv_layers, resolve_layers


def test_unknown_layer_lists_close_matches_and_valid_names():
    model = nn.Sequential()
    model.add_module("features", small_cnn())
    with pytest.raises(ValueError) as info:
        resolve_layers(model, ["featurs.4"])
    msg = str(info.value)
    assert "unknown layer 'featurs.4'" in msg
    assert "did you mean 'features.4'" in msg
    assert "'features.0'" in msg  # valid names listed


def test_all_and_last_and_types():
    model = resnet18()
    convs = resolve_layers(model, "all")
    assert len(convs) == 20 and all(isinstance(m, nn.Conv2d) for m in convs.values())
    assert list(resolve_layers(model, "last")) == ["layer4.1.conv2"]
    bns = resolve_layers(model, nn.BatchNorm2d)
    assert len(bns) == 20
    mixed = resolve_layers(model, ["layer4", nn.Linear])
    assert list(mixed) == ["layer4", "fc"]


def test_auto_picks_one_layer_per_resolution_stage():
    x = torch.randn(1, 3, 64, 64)
    assert list(auto_layers(resnet18(), x)) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    # plain Sequential CNN: the last module at each resolution before pooling
    assert list(auto_layers(small_cnn(), torch.randn(1, 3, 32, 32))) == ["2", "6", "9"]
    assert list(auto_layers(FunctionalReluNet(), torch.randn(1, 3, 16, 16))) == ["conv1", "conv2"]


def test_auto_leaves_model_mode_alone():
    model = small_cnn().train()
    model[1].eval()
    before = [m.training for m in model.modules()]
    auto_layers(model, torch.randn(1, 3, 16, 16))
    assert [m.training for m in model.modules()] == before


def test_model_without_conv_raises_clearly():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ValueError, match="no 2-D convolution"):
        resolve_layers(mlp, "all")
    assert conv_layers(mlp) == {}


def test_bad_spec_types():
    with pytest.raises(TypeError, match="name"):
        resolve_layers(small_cnn(), [3])
    with pytest.raises(ValueError, match="empty"):
        resolve_layers(small_cnn(), [])
