import torch
from torch import nn

from models import resnet18
from probelens.methods.hooks import count_hooks
from probelens.methods.summary import layer_summary, summary_markdown


def test_receptive_field_of_a_linear_conv_chain_matches_the_formula():
    # rf = 1 + sum (k_i - 1) * prod(strides before i): 3x3 s1 -> 3; 3x3 s2 -> 5; 3x3 s1 after stride 2 -> 9
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1)
    )
    rows = {r.name: r for r in layer_summary(net, torch.randn(1, 1, 32, 32))}
    assert rows["0"].receptive_field == (3, 3)
    assert rows["1"].receptive_field == (5, 5)
    assert rows["2"].receptive_field == (9, 9)
    assert rows["1"].output_shape == (4, 16, 16)
    assert rows["0"].parameters == 4 * 9 + 4


def test_resnet_summary_lists_stages_and_leaves_the_model_alone():
    model = resnet18().train()
    before = count_hooks(model)
    rows = layer_summary(model, torch.randn(2, 3, 64, 64))
    names = [r.name for r in rows]
    assert {"conv1", "layer1", "layer4", "layer4.1.conv2"} <= set(names)
    assert "fc" not in names and "avgpool" not in names  # no spatial map: [N,C,1,1] and [N,K]
    assert rows[names.index("layer4")].receptive_field == (64, 64)  # sees the whole image
    assert rows[names.index("conv1")].receptive_field == (7, 7)
    assert model.training and count_hooks(model) == before
    table = summary_markdown(rows, (64, 64))
    assert "| **layer4.1.conv2** | Conv2d | (512, 2, 2) |" in table
