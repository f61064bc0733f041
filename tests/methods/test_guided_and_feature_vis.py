"""Guided backprop / deconvnet rules, deconvnet projections and activation maximisation."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution, GuidedBackprop, Saliency
from torch import nn

from models import FunctionalReluNet, assert_same, resnet18, small_cnn, snapshot
from probelens.methods.feature_vis import COLOR_CORRELATION_SQRT, feature_visualization
from probelens.methods.guided import deconv_projections, forward_to_layer, guided_saliency, relu_backward_rule
from probelens.methods.hooks import count_hooks

CAPTUM = {"guided_backprop": GuidedBackprop, "deconvnet": Deconvolution}
RULES = list(CAPTUM)


def captum_rule(model, rule, x, target):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets hooks and requires_grad
        return CAPTUM[rule](model).attribute(x.clone(), target=target)


def vanilla_gradient(model, x, target):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Saliency(model).attribute(x.clone(), target=target, abs=False)


def out_of_place_copy(model):
    """The same weights with every ``nn.ReLU(inplace=True)`` made out of place."""
    import copy

    clone = copy.deepcopy(model)
    for m in clone.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return clone


def function_mode_depth():
    length = getattr(torch._C, "_len_torch_function_stack", None)
    return length() if length is not None else 0


# ---------------------------------------------------------------------------------------------------------------------
# guided backprop / deconvnet vs Captum


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    ("model_fn", "shape"),
    [
        (lambda: small_cnn(), (3, 3, 16, 16)),
        (lambda: small_cnn(inplace=True), (3, 3, 16, 16)),
        (lambda: resnet18(), (2, 3, 32, 32)),  # in-place ReLUs, one ReLU module used twice per block
    ],
    ids=["cnn", "cnn-inplace", "resnet18"],
)
def test_rules_match_captum_on_module_relu_models(model_fn, shape, rule):
    model = model_fn().eval()
    x = torch.randn(*shape)
    target = torch.arange(shape[0]) % 2
    ours = guided_saliency(model, x, target, rule=rule)
    assert ours.shape == x.shape
    # Captum 0.9 handles in-place ReLUs itself; the out-of-place copy is the reference either way
    ref_copy = captum_rule(out_of_place_copy(model), rule, x, target)
    ref_orig = captum_rule(model, rule, x, target)
    assert ref_copy.abs().max() > 0
    torch.testing.assert_close(ours, ref_copy, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(ours, ref_orig, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(ours, vanilla_gradient(model, x, target)), "rule had no effect"


class ModuleReluNet(FunctionalReluNet):
    """FunctionalReluNet with the same parameters, its ReLUs as modules (what Captum can see)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 3) -> None:
        super().__init__(in_channels, num_classes)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = F.max_pool2d(x, 2)
        x = self.relu2(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("rule", RULES)
def test_functional_relu_model_is_right_where_captum_silently_returns_the_gradient(rule):
    functional = FunctionalReluNet().eval()
    modules = ModuleReluNet().eval()
    modules.load_state_dict(functional.state_dict())
    x = torch.randn(3, 3, 16, 20)
    target = torch.tensor([0, 1, 2])
    ours = guided_saliency(functional, x, target, rule=rule)
    torch.testing.assert_close(ours, captum_rule(modules, rule, x, target), rtol=1e-5, atol=1e-8)
    # Captum on the functional model: hooks find no nn.ReLU, the result is the plain gradient
    captum_functional = captum_rule(functional, rule, x, target)
    vanilla = vanilla_gradient(functional, x, target)
    torch.testing.assert_close(captum_functional, vanilla)
    assert not torch.allclose(ours, vanilla)


SPELLINGS = [
    "module",
    "module_inplace",
    "F.relu",
    "F.relu(inplace=True)",
    "F.relu_",
    "torch.relu",
    "torch.relu_",
    "Tensor.relu",
    "Tensor.relu_",
    "relu_ on views",
]


class SpelledReluNet(nn.Module):
    """conv-relu-pool-conv-relu-head with the ReLU written one of many ways."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.spelling = spelling
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)
        self.act = nn.ReLU(inplace=spelling == "module_inplace")

    def rect(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spelling
        if s.startswith("module"):
            return self.act(x)
        if s == "F.relu":
            return F.relu(x)
        if s == "F.relu(inplace=True)":
            return F.relu(x, inplace=True)
        if s == "F.relu_":
            return F.relu_(x)
        if s == "torch.relu":
            return torch.relu(x)
        if s == "torch.relu_":
            return torch.relu_(x)
        if s == "Tensor.relu":
            return x.relu()
        if s == "Tensor.relu_":
            x.relu_()
            return x
        half = x.shape[1] // 2
        x[:, :half].relu_()
        x[:, half:].relu_()
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.rect(self.conv1(x)), 2)
        x = self.rect(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_relu_spelling_gets_the_rule(spelling, rule):
    x = torch.randn(2, 3, 12, 12)
    target = torch.tensor([1, 2])
    reference = captum_rule(SpelledReluNet("module").eval(), rule, x, target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pure ReLU model must not warn
        ours = guided_saliency(SpelledReluNet(spelling).eval(), x, target, rule=rule)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-8)


def test_chained_relus_deconvnet_by_hand():
    """deconvnet ignores the forward sign, so ReLU(ReLU(.)) backward is max(g, 0) once (Captum's tensor hooks get this
    case wrong: the second hook reads the first one's unmodified gradient)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.ReLU(inplace=True), nn.Linear(6, 2)).eval()
    x = torch.randn(3, 1, 2, 2)
    target = torch.tensor([0, 1, 0])
    w1, w2 = model[1].weight, model[4].weight
    pre = model[1](model[0](x))
    expected_deconv = (torch.relu(w2[target]) @ w1).view_as(x)
    expected_guided = ((w2[target] * (pre > 0)).clamp_min(0) @ w1).view_as(x)
    torch.testing.assert_close(guided_saliency(model, x, target, rule="deconvnet"), expected_deconv.detach())
    torch.testing.assert_close(guided_saliency(model, x, target, rule="guided_backprop"), expected_guided.detach())


@pytest.mark.parametrize(
    ("activation", "name"),
    [(nn.LeakyReLU(0.1), "leaky_relu"), (nn.ReLU6(), "hardtanh"), (nn.GELU(), "gelu"), (nn.SiLU(), "silu")],
)
def test_other_activations_keep_their_gradient_and_are_reported(activation, name):
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3), activation, nn.Flatten(), nn.LazyLinear(2)
    )
    x = torch.randn(2, 3, 8, 8)
    model(x)
    model.eval()
    target = torch.tensor([0, 1])
    with pytest.warns(UserWarning, match=name):
        ours = guided_saliency(model, x, target)
    # as in Captum: only ReLU backward passes are modified
    torch.testing.assert_close(ours, captum_rule(model, "guided_backprop", x, target), rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match=name):
        guided_saliency(model, x, target, unsupported="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(guided_saliency(model, x, target, unsupported="ignore"), ours)


def test_model_without_relu_is_reported():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="no ReLU ran"):
        ours = guided_saliency(model, x, rule="deconvnet")
    torch.testing.assert_close(ours, vanilla_gradient(model, x, model(x).argmax(1)))
    with pytest.raises(ValueError, match="no ReLU ran"):
        guided_saliency(model, x, unsupported="raise")


def test_unknown_rule_and_policy():
    model = small_cnn().eval()
    with pytest.raises(ValueError, match="'guided_backprop', 'deconvnet'"):
        guided_saliency(model, torch.randn(1, 3, 8, 8), rule="guided")
    with pytest.raises(ValueError, match="unsupported"):
        guided_saliency(model, torch.randn(1, 3, 8, 8), unsupported="maybe")


# ---------------------------------------------------------------------------------------------------------------------
# nothing survives a call


def plain_gradient(model, x, target):
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xx).gather(1, target[:, None]).sum(), xx)
    return g


@pytest.mark.parametrize("fn", ["guided", "deconvnet", "projections"])
def test_model_left_as_found_and_relu_normal_afterwards(fn):
    model = small_cnn(inplace=True).train()
    model[1].eval()
    model[0].weight.requires_grad_(False)
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    functional = FunctionalReluNet().eval()
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 1, 1])
    before = snapshot(model)
    expected = plain_gradient(functional, x, target)
    rng = torch.get_rng_state()
    depth = function_mode_depth()
    if fn == "projections":
        deconv_projections(model, x, "4", top_k=3)
    else:
        guided_saliency(model, x, target, rule="guided_backprop" if fn == "guided" else "deconvnet")
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same(before, snapshot(model))
    assert function_mode_depth() == depth
    torch.testing.assert_close(plain_gradient(functional, x, target), expected, rtol=0, atol=0)


def test_nothing_survives_an_exception():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.relu = nn.ReLU(inplace=True)
            self.after = nn.Identity()

        def forward(self, x):
            F.relu(self.relu(self.conv(x)))
            raise RuntimeError("boom")

    model = Boom()
    functional = FunctionalReluNet().eval()
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([0, 2])
    expected = plain_gradient(functional, x, target)
    hooks, flags, depth = count_hooks(model), [m.training for m in model.modules()], function_mode_depth()
    with pytest.raises(RuntimeError, match="boom"):
        guided_saliency(model, x)
    with pytest.raises(RuntimeError, match="boom"):
        deconv_projections(model, x, "after", top_k=1)
    with pytest.raises(RuntimeError, match="boom"), relu_backward_rule("deconvnet"):
        model(x)
    assert count_hooks(model) == hooks
    assert [m.training for m in model.modules()] == flags
    assert function_mode_depth() == depth
    torch.testing.assert_close(plain_gradient(functional, x, target), expected, rtol=0, atol=0)


def test_works_under_inference_mode_and_no_grad():
    model = small_cnn(inplace=True).eval()
    with torch.inference_mode():
        x = torch.randn(2, 3, 16, 16)
        sal = guided_saliency(model, x)
        proj, _ = deconv_projections(model, x, "4", top_k=2)
        img = feature_visualization(model, "4", [0, 1], image_shape=(3, 12, 12), steps=2)
    assert sal.abs().sum() > 0 and proj.abs().sum() > 0 and img.shape == (2, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(guided_saliency(model, x.clone()), sal)


# ---------------------------------------------------------------------------------------------------------------------
# deconvnet projections


def two_layer_model(seed=6):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(inplace=True)
    ).eval()


def manual_projection(model, x, channel, keep, rule):
    """Zeiler & Fergus by hand for conv1-relu-conv2-relu: keep one channel at layer '3', then rectify, transposed conv2,
    rectify (guided: also the forward mask of relu1), transposed conv1."""
    conv1, conv2 = model[0], model[2]
    pre1 = conv1(x)
    act = torch.relu(conv2(torch.relu(pre1)))[0, channel]
    seed = torch.zeros(1, conv2.out_channels, *act.shape)
    if keep == "max":
        pos = act.flatten().argmax()
        seed[0, channel].view(-1)[pos] = act.flatten()[pos]
    else:
        seed[0, channel] = act
    g = seed.clamp_min(0)  # relu2 (the kept values are >= 0 and nonzero only where relu2 is open)
    g = F.conv_transpose2d(g, conv2.weight, padding=1)
    g = g.clamp_min(0) if rule == "deconvnet" else (g * (pre1 > 0)).clamp_min(0)
    return F.conv_transpose2d(g, conv1.weight, padding=1)[0].detach()


@pytest.mark.parametrize("keep", ["max", "channel"])
@pytest.mark.parametrize("rule", RULES)
def test_projections_match_hand_computation(keep, rule):
    model = two_layer_model()
    x = torch.randn(3, 2, 10, 9)
    proj, channels = deconv_projections(model, x, "3", top_k=3, rule=rule, keep=keep)
    assert proj.shape == (3, 3, 2, 10, 9) and channels.shape == (3, 3) and channels.dtype == torch.long
    with torch.no_grad():
        peaks = model(x).amax(dim=(2, 3))
    torch.testing.assert_close(channels, peaks.topk(3, dim=1).indices)
    for i in range(3):
        for j in range(3):
            expected = manual_projection(model, x[i : i + 1], int(channels[i, j]), keep, rule)
            torch.testing.assert_close(proj[i, j], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("keep", ["max", "channel"])
def test_projections_match_one_at_a_time_loop_with_pooling(keep):
    model = small_cnn(inplace=True).eval()
    x = torch.randn(2, 3, 16, 16)
    module = model[4]  # conv after a max-pool: the backward goes through the pool's switches
    proj, channels = deconv_projections(model, x, "4", top_k=4, keep=keep)
    for i in range(2):
        for j in range(4):
            c = int(channels[i, j])
            xi = x[i : i + 1].clone().requires_grad_(True)
            with relu_backward_rule("deconvnet"):
                act = forward_to_layer(model, xi, module, "4")
            seed = torch.zeros_like(act)
            if keep == "max":
                pos = act[0, c].flatten().argmax()
                seed[0, c].view(-1)[pos] = act[0, c].flatten()[pos].detach()
            else:
                seed[0, c] = act[0, c].detach()
            (g,) = torch.autograd.grad(act, xi, grad_outputs=seed)
            torch.testing.assert_close(proj[i, j], g[0], rtol=1e-5, atol=1e-7)


def test_projection_is_zero_outside_the_receptive_field():
    model = two_layer_model(7)
    x = torch.randn(2, 2, 14, 14)
    proj, channels = deconv_projections(model, x, "3", top_k=5)
    with torch.no_grad():
        act = model(x)
    checked = 0
    for i in range(2):
        for j in range(5):
            amap = act[i, channels[i, j]]
            if amap.max() <= 0:
                continue
            r, c = divmod(int(amap.flatten().argmax()), amap.shape[1])
            inside = torch.zeros(14, 14, dtype=torch.bool)
            inside[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3] = True  # two 3x3 convs: a 5x5 field
            p = proj[i, j].abs().sum(0)
            assert p[inside].sum() > 0
            assert torch.all(p[~inside] == 0)
            checked += 1
    assert checked >= 6


def test_projections_on_resnet18_batch_at_once():
    model = resnet18().eval()
    x = torch.randn(2, 3, 32, 32)
    calls = []
    handle = model.conv1.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    try:
        proj, channels = deconv_projections(model, x, "layer2", top_k=3)
    finally:
        handle.remove()
    assert calls == [6, 2]  # one forward of the image batch repeated top_k times, then the layout trace
    assert proj.shape == (2, 3, 3, 32, 32) and channels.shape == (2, 3)
    assert bool((proj.flatten(2).abs().sum(-1) > 0).all())


def test_projection_validation():
    model = two_layer_model()
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="only 5 channels"):
        deconv_projections(model, x, "3", top_k=6)
    with pytest.raises(ValueError, match="top_k"):
        deconv_projections(model, x, "3", top_k=0)
    with pytest.raises(ValueError, match="did you mean"):
        deconv_projections(resnet18(), torch.randn(1, 3, 16, 16), "layr2")
    with pytest.raises(ValueError, match="keep"):
        deconv_projections(model, x, "3", keep="all")
    with pytest.raises(ValueError, match="rule"):
        deconv_projections(model, x, "3", rule="vanilla")


# ---------------------------------------------------------------------------------------------------------------------
# feature visualisation


def channel_objective(model, layer, images, mean=0.5, std=0.25):
    """Mean activation ``[B, C_l]`` of every channel of ``layer`` (or the logits ``[B, K]``) for display images."""
    x = (images - mean) / std
    with torch.no_grad():
        if layer is None:
            return model(x)
        act = forward_to_layer(model, x, dict(model.named_modules())[layer], layer)
        return act.flatten(2).mean(-1)


def gains(model, layer, shape, steps, parameterization):
    """Per channel: the objective before and after ``steps`` and the spread (std) of the objective over 256 random
    uniform images, the yardstick for "a lot"; plus the best random image."""
    channels = list(range(6))
    kwargs = dict(image_shape=shape, mean=0.5, std=0.25, parameterization=parameterization)
    images = feature_visualization(model, layer, channels, steps=steps, **kwargs)
    assert images.shape == (6, *shape) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    initial = feature_visualization(model, layer, channels, steps=0, **kwargs)
    final = channel_objective(model, layer, images).diagonal()
    before = channel_objective(model, layer, initial).diagonal()
    noise = channel_objective(model, layer, torch.rand(256, *shape))
    return before, final, noise.std(0)[channels], noise.max(0).values[channels]


@pytest.mark.parametrize("parameterization", ["fourier", "pixel"])
@pytest.mark.parametrize(
    ("model_fn", "layer", "shape"),
    [
        (lambda: small_cnn(), "0", (3, 16, 16)),
        (lambda: small_cnn(in_channels=1), "0", (1, 12, 20)),
        (lambda: FunctionalReluNet(), "conv1", (3, 16, 24)),
    ],
    ids=["cnn", "gray-non-square", "functional"],
)
def test_activation_maximisation_drives_every_first_layer_channel_up(model_fn, layer, shape, parameterization):
    """A first conv is linear in the image, so each channel's exact optimum is known (pixels at 1 where the gradient is
    positive, 0 elsewhere): after 32 steps every channel must have covered a good part of the way there."""
    model = model_fn().eval()
    before, final, spread, best_random = gains(model, layer, shape, 32, parameterization)
    x = torch.rand(len(before), *shape, requires_grad=True)
    objective = forward_to_layer(model, (x - 0.5) / 0.25, dict(model.named_modules())[layer], layer)
    (slope,) = torch.autograd.grad(objective.flatten(2).mean(-1).diagonal().sum(), x)
    optimum = channel_objective(model, layer, (slope > 0).float()).diagonal()
    progress = (final - before) / (optimum - before)
    assert torch.all(progress > (0.25 if parameterization == "fourier" else 0.12)), progress
    assert torch.all(final - before > 3 * spread), (before, final, spread)
    assert torch.all(final > best_random), (final, best_random)


@pytest.mark.parametrize("parameterization", ["fourier", "pixel"])
@pytest.mark.parametrize(
    ("model_fn", "layer", "shape"),
    [
        (lambda: small_cnn(), "4", (3, 16, 16)),
        (lambda: small_cnn(inplace=True), "8", (3, 16, 16)),
        (lambda: small_cnn(in_channels=1), "4", (1, 12, 20)),
        (lambda: FunctionalReluNet(), "conv2", (3, 16, 24)),
    ],
    ids=["cnn-conv2", "cnn-conv3-inplace", "gray-non-square", "functional"],
)
def test_activation_maximisation_drives_deeper_channels_up(model_fn, layer, shape, parameterization):
    """Deeper channels of a random network: none gets worse, most rise a lot. (Some channels of an untrained network
    barely move from the grey start: their objective is nearly flat or already near its optimum on a grey image.)"""
    before, final, spread, _ = gains(model_fn().eval(), layer, shape, 64, parameterization)
    gain = (final - before) / spread
    assert torch.all(gain > -0.5), gain
    assert int((gain > 3).sum()) >= 4, gain
    assert gain.mean() > 5, gain


def test_neuron_objective_and_class_logits():
    model = small_cnn(num_classes=3).eval()
    neuron = feature_visualization(model, "4", [2, 5], image_shape=(3, 16, 16), steps=32, objective="neuron")
    start = feature_visualization(model, "4", [2, 5], image_shape=(3, 16, 16), steps=0, objective="neuron")
    with torch.no_grad():
        act = forward_to_layer(model, torch.cat([neuron, start, torch.rand(256, 3, 16, 16)]), model[4], "4")
    centre = act[:, [2, 5], 4, 4]  # layer '4' is 8x8 for a 16x16 input
    final, before, noise = centre[:2].diagonal(), centre[2:4].diagonal(), centre[4:]
    assert torch.all(final - before > 5 * noise.std(0)), (final, before, noise.std(0))
    assert torch.all(final > noise.max(0).values)
    logits = feature_visualization(model, None, [0, 1, 2], image_shape=(3, 16, 16), steps=64)
    initial = feature_visualization(model, None, [0, 1, 2], image_shape=(3, 16, 16), steps=0)
    with torch.no_grad():
        scores = model(torch.cat([logits, initial, torch.rand(256, 3, 16, 16)]))
    gain = scores[:3].diagonal() - scores[3:6].diagonal()
    assert torch.all(gain > 3 * scores[6:].std(0)), (gain, scores[6:].std(0))


def test_same_seed_same_images_different_seed_different():
    model = small_cnn().eval()
    kwargs = dict(image_shape=(3, 16, 16), steps=8, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    a = feature_visualization(model, "4", [0, 3], seed=1, **kwargs)
    torch.rand(100)  # the global RNG must not matter
    b = feature_visualization(model, "4", [0, 3], seed=1, **kwargs)
    c = feature_visualization(model, "4", [0, 3], seed=2, **kwargs)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the channels are optimised independently: a channel's image does not depend on its batch mates
    d = feature_visualization(model, "4", [0, 7], seed=1, **kwargs)
    assert not torch.equal(a[1], d[1])


def test_grayscale_ignores_decorrelation_and_handles_non_square():
    model = small_cnn(in_channels=1).eval()
    a = feature_visualization(model, "8", [1, 2, 3], image_shape=(1, 20, 12), steps=4, decorrelate=True)
    b = feature_visualization(model, "8", [1, 2, 3], image_shape=(1, 20, 12), steps=4, decorrelate=False)
    assert a.shape == (3, 1, 20, 12)
    assert torch.equal(a, b)
    plain = feature_visualization(model, "8", [1], image_shape=(1, 20, 12), steps=4, transforms=())
    assert plain.shape == (1, 1, 20, 12)


def test_color_correlation_matrix_is_a_covariance_square_root():
    m = COLOR_CORRELATION_SQRT
    cov = m @ m.T
    assert torch.allclose(cov, cov.T)
    assert torch.linalg.eigvalsh(cov).min() > 0
    # RGB channels of natural images are strongly positively correlated
    corr = cov / cov.diagonal().sqrt().outer(cov.diagonal().sqrt())
    assert corr[0, 1] > 0.7 and corr[1, 2] > 0.7 and corr[0, 2] > 0.7
    assert m.norm(dim=0).max() == pytest.approx(1.0)


def test_feature_visualization_leaves_model_and_rng_alone():
    model = small_cnn(inplace=True).train()
    model[1].eval()
    model[4].weight.requires_grad_(False)
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    before = snapshot(model)
    rng = torch.get_rng_state()
    a = feature_visualization(model, "8", [0, 1], image_shape=(3, 16, 16), steps=4)
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same(before, snapshot(model))
    # dropout and batch norm ran in eval mode: the train-mode model gives the same images as the eval-mode one
    fresh = small_cnn(inplace=True)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(a, feature_visualization(fresh.eval(), "8", [0, 1], image_shape=(3, 16, 16), steps=4))
    grads_none = small_cnn()
    feature_visualization(grads_none, None, [0], image_shape=(3, 16, 16), steps=2)
    assert all(p.grad is None for p in grads_none.parameters())


def test_feature_visualization_validation():
    model = small_cnn().eval()
    shape = (3, 16, 16)
    with pytest.raises(ValueError, match=r"layer '4' has 16 channels"):
        feature_visualization(model, "4", [0, 16], image_shape=shape, steps=1)
    with pytest.raises(ValueError, match="has 2 channels"):
        feature_visualization(model, None, [2], image_shape=shape, steps=1)
    with pytest.raises(ValueError, match="did you mean"):
        feature_visualization(model, "44", [0], image_shape=shape)
    with pytest.raises(ValueError, match="transforms"):
        feature_visualization(model, "4", [0], image_shape=shape, transforms=("flip",))
    with pytest.raises(ValueError, match="mean has 2 values"):
        feature_visualization(model, "4", [0], image_shape=shape, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="channels is empty"):
        feature_visualization(model, "4", [], image_shape=shape)
    with pytest.raises(ValueError, match="image_shape"):
        feature_visualization(model, "4", [0], image_shape=(16, 16))
    with pytest.raises(ValueError, match="parameterization"):
        feature_visualization(model, "4", [0], image_shape=shape, parameterization="cppn")
    assert count_hooks(model) == 0
