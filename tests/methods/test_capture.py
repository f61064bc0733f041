"""ActivationCapture clones a layer's output only where an in-place op after it needs that, learned per module and
verified on every pass."""

import torch
from torch import nn

from probelens.methods import forward_backward, hooks


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)  # followed by an in-place ReLU
        self.relu_a = nn.ReLU(inplace=True)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)  # followed by a BatchNorm: no clone needed
        self.after_b: nn.Module = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.relu_a(self.conv_a(x))
        x = torch.relu(self.after_b(self.conv_b(x)))
        return self.head(x.mean(dim=(2, 3)))


def reference(net: Net, x: torch.Tensor):
    """Pre-activation outputs and gradients computed by hand, without any hooks."""
    x = x.clone().requires_grad_(True)
    a = net.conv_a(x)
    b = net.conv_b(net.relu_a(a.clone()))  # the clones keep a and b as the convolutions wrote them
    scores = net.head(torch.relu(net.after_b(b.clone())).mean(dim=(2, 3)))
    target = scores.argmax(1)
    ga, gb = torch.autograd.grad(scores.gather(1, target[:, None]).sum(), [a, b])
    return {"conv_a": a.detach(), "conv_b": b.detach()}, {"conv_a": ga, "conv_b": gb}


def run(net: Net, x: torch.Tensor):
    layers = {"conv_a": net.conv_a, "conv_b": net.conv_b}
    result = forward_backward(net, x, None, layers)
    return result.activations, result.gradients["target"]


def assert_matches(got, want):
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)


def test_clones_are_kept_only_where_an_in_place_op_follows():
    net = Net().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    acts, grads = reference(net, x)
    assert (acts["conv_a"] < 0).any()  # an overwritten output would have lost these
    for _ in range(3):  # first pass learns, later passes trust what was learned
        got_acts, got_grads = run(net, x)
        assert_matches(got_acts, acts)
        assert_matches(got_grads, grads)
    assert hooks._CLONE_NEEDED[net.conv_a] is True
    assert hooks._CLONE_NEEDED[net.conv_b] is False


def test_an_in_place_op_added_after_a_trusted_layer_is_caught_and_the_pass_rerun():
    net = Net().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    run(net, x)
    assert hooks._CLONE_NEEDED[net.conv_b] is False
    net.after_b = nn.ReLU(inplace=True)  # the graph changes: conv_b's output is now overwritten in place
    acts, grads = reference(net, x)
    assert (acts["conv_b"] < 0).any()
    got_acts, got_grads = run(net, x)
    assert_matches(got_acts, acts)
    assert_matches(got_grads, grads)
    assert hooks._CLONE_NEEDED[net.conv_b] is True


def test_a_module_that_runs_twice_is_always_cloned():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    net = nn.Sequential(conv, conv, nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.randn(1, 3, 4, 4)
    net(x)
    for _ in range(2):
        capture = hooks.ActivationCapture({"conv": conv})
        with capture:
            net(x)
        assert capture.calls["conv"] == 2 and capture.settle() == []
        assert hooks._CLONE_NEEDED[conv] is True
