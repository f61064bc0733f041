"""Multi-pass attribution methods: SmoothGrad, integrated gradients, expected gradients (GradientSHAP), occlusion.

Each is checked against Captum on the same model with the very same perturbations (noise, path points, baselines,
path coefficients, windows), and for chunking to a memory budget, the safety contract and a model-randomisation
sanity check (Adebayo et al., 2018).
"""

import copy

import numpy as np
import pytest
import torch
from captum.attr import (
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    LayerGradientShap,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn

from models import FunctionalReluNet, assert_same, resnet18, small_cnn, snapshot
from probelens.methods import batching, cam, grad_cam, saliency
from probelens.methods.cam import CAM_METHODS
from probelens.methods.expected_gradients import (
    _expected_gradients_given,
    expected_gradients,
    expected_gradients_samples,
)
from probelens.methods.hooks import count_hooks
from probelens.methods.integrated_gradients import integrated_gradients, path_points
from probelens.methods.occlusion import gaussian_blur, occlusion, occlusion_baseline
from probelens.methods.smoothgrad import _smoothgrad_given_noise, smoothgrad, smoothgrad_noise

CLOSE = {"rtol": 1e-5, "atol": 1e-7}


def smooth_net(seed: int = 0) -> nn.Module:
    """Softplus/tanh CNN: a smooth integrand, so quadrature errors are small and completeness is testable."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Softplus(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    with torch.no_grad():
        model[-1].weight.mul_(20)  # score differences of order 1, so relative tolerances mean something
    return model.eval()


def target_scores(model, x, t):
    with torch.no_grad():
        return model(x).gather(1, t[:, None]).squeeze(1)


# ------------------------------------------------------------------------------------------------------------- batching


def test_activation_bytes_counts_every_leaf_output_once_per_example():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    total, largest = batching.activation_bytes(net, torch.zeros(5, 3, 8, 8))
    assert (total, largest) == (3 * 64 * 4 + 2 * 4 * 64 * 4, 4 * 64 * 4)


def test_chunk_size_targets_8_mib_on_cpu_and_respects_the_budget():
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1))  # 1 MiB output per 64x64 copy
    x = torch.zeros(4, 3, 64, 64)
    assert batching.chunk_size(net, x, copies_per_image=16) == 8
    per_copy, _ = batching.activation_bytes(net, x)
    assert batching.chunk_size(net, x, 16, budget_bytes=3 * 2 * per_copy) == 3
    assert batching.chunk_size(net, x, 16, budget_bytes=3 * per_copy, backward=False) == 3
    assert batching.chunk_size(net, x, 16, budget_bytes=1) == 1
    assert batching.chunk_size(nn.Sequential(nn.Conv2d(3, 2, 1)), x[:1], 5) == 5  # never more than all copies


def test_chunk_size_measures_once_per_model_and_shape_and_leaves_no_hook():
    model = small_cnn().eval()
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        hooks = count_hooks(model)
        for _ in range(3):
            batching.chunk_size(model, torch.zeros(2, 3, 16, 16), 8)
        assert len(calls) == 1
        batching.chunk_size(model, torch.zeros(2, 3, 24, 20), 8)
        assert len(calls) == 2
        assert count_hooks(model) == hooks
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"copies_per_image": 0}, "copies_per_image"), ({"copies_per_image": 2, "budget_bytes": 0}, "budget_bytes")],
)
def test_chunk_size_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        batching.chunk_size(small_cnn(), torch.zeros(1, 3, 8, 8), **kwargs)


def test_chunk_helpers_do_not_depend_on_the_chunk():
    values = torch.randn(12, 3)
    for chunk in (1, 5, 12, 100):
        torch.testing.assert_close(batching.map_chunks(lambda a, b: values[a:b] * 2, 12, chunk), values * 2)
        sums = batching.sum_over_copies(lambda a, b: values[a:b], 3, 4, chunk)
        torch.testing.assert_close(sums, values.view(3, 4, 3).sum(1))


def test_noise_is_private_and_independent_of_chunking():
    x = torch.zeros(3, 2, 4, 4)
    state = torch.get_rng_state()
    whole = batching.GaussianNoise(x, 5, torch.tensor([1.0, 2.0, 0.0]), seed=7)(0, 15)
    pieces = batching.GaussianNoise(x, 5, torch.tensor([1.0, 2.0, 0.0]), seed=7)
    torch.testing.assert_close(torch.cat([pieces(0, 1), pieces(1, 8), pieces(8, 15)]), whole, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert whole[10:].abs().sum() == 0  # third image: sigma 0
    with pytest.raises(RuntimeError, match="in order"):
        pieces(3, 4)


# ----------------------------------------------------------------------------------------------------------- SmoothGrad


MODELS = {
    "small_cnn": (lambda: small_cnn().eval(), (3, 3, 16, 16)),
    "functional_relu": (lambda: FunctionalReluNet().eval(), (2, 3, 12, 20)),
    "resnet18": (lambda: resnet18(num_classes=4).eval(), (2, 3, 24, 20)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_smoothgrad_equals_captum_on_the_same_noise(name):
    model_fn, shape = MODELS[name]
    model = model_fn()
    x = torch.randn(*shape)
    t = torch.arange(shape[0]) % 2
    samples = 4
    ours = smoothgrad(model, x, t, samples=samples, noise=0.2, seed=3, chunk_size=5)
    eps = smoothgrad_noise(x, samples, noise=0.2, seed=3)  # the noise smoothgrad used, [N,S,C,H,W]
    per_sample = [
        Saliency(model).attribute((x + eps[:, s]).requires_grad_(), target=t, abs=False) for s in range(samples)
    ]
    torch.testing.assert_close(ours, torch.stack(per_sample).mean(0), **CLOSE)
    squared = smoothgrad(model, x, t, samples=samples, noise=0.2, seed=3, squared=True)
    torch.testing.assert_close(squared, torch.stack(per_sample).pow(2).mean(0), **CLOSE)
    # gradient x input multiplies the gradient by the NOISY input, as Captum's NoiseTunnel(InputXGradient)
    gxi = smoothgrad(model, x, t, method="gradient_x_input", samples=samples, noise=0.2, seed=3)
    per_sample_gxi = [InputXGradient(model).attribute((x + eps[:, s]).requires_grad_(), target=t) for s in range(4)]
    torch.testing.assert_close(gxi, torch.stack(per_sample_gxi).mean(0), **CLOSE)
    clean_input_convention = x * torch.stack(per_sample).mean(0)
    assert not torch.allclose(gxi, clean_input_convention, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(("captum_method", "method"), [(Saliency, "vanilla"), (InputXGradient, "gradient_x_input")])
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq"])
def test_smoothgrad_equals_captum_noise_tunnel_given_its_noise(captum_method, method, nt_type):
    """NoiseTunnel draws ``torch.normal(0, stdev)`` for all ``N*S`` copies from the global RNG, image-major:
    re-drawing it with the same seed feeds our implementation the identical noise."""
    model = small_cnn().eval()
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([1, 0, 1])
    samples, stdev = 5, 0.3
    kwargs = {"abs": False} if captum_method is Saliency else {}
    torch.manual_seed(11)
    ref = NoiseTunnel(captum_method(model)).attribute(
        x, nt_type=nt_type, nt_samples=samples, stdevs=stdev, target=t, **kwargs
    )
    torch.manual_seed(11)
    noise = torch.normal(0, torch.tensor(stdev).repeat((3 * samples, 3, 16, 16)))
    ours = _smoothgrad_given_noise(
        model, x, t, noise, samples, method=method, squared=nt_type == "smoothgrad_sq", chunk_size=4
    )
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, **CLOSE)


def test_smoothgrad_noise_is_a_fraction_of_each_images_range():
    x = torch.rand(3, 3, 32, 32)
    x[1] = x[1] * 10 - 4  # range ~10
    x[2] = 0.5  # constant image: range 0, no noise
    eps = smoothgrad_noise(x, samples=8, noise=0.15, seed=0)
    assert eps.shape == (3, 8, 3, 32, 32)
    value_range = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    torch.testing.assert_close(eps[:2].flatten(1).std(1), 0.15 * value_range[:2], rtol=0.03, atol=0)
    assert eps[2].abs().sum() == 0


def test_smoothgrad_without_noise_is_the_plain_method():
    model = small_cnn().eval()
    x = torch.randn(2, 3, 16, 16)
    for method in ("vanilla", "gradient_x_input"):
        torch.testing.assert_close(
            smoothgrad(model, x, method=method, samples=3, noise=0.0), saliency(model, x, None, method)
        )


def test_smoothgrad_is_seeded_privately_and_explains_the_clean_prediction():
    model = small_cnn().eval()
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(1)
    a = smoothgrad(model, x, samples=4, seed=5)
    torch.manual_seed(2)
    b = smoothgrad(model, x, samples=4, seed=5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, smoothgrad(model, x, samples=4, seed=6))
    pred = model(x).argmax(1)
    torch.testing.assert_close(a, smoothgrad(model, x, pred, samples=4, seed=5))


# ------------------------------------------------------------------------------------------------- integrated gradients


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle", "riemann_left", "riemann_right"])
@pytest.mark.parametrize("baseline", ["zero", "channel", "per_image"])
def test_integrated_gradients_equals_captum(method, baseline):
    model = small_cnn().eval()
    x = torch.randn(3, 3, 16, 12)
    t = torch.tensor([0, 1, 1])
    base = {
        "zero": None,
        "channel": torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1),
        "per_image": torch.randn(3, 3, 16, 12),
    }[baseline]
    ours = integrated_gradients(model, x, t, baseline=base, steps=10, method=method, chunk_size=7)
    ref = IntegratedGradients(model).attribute(x, baselines=base, target=t, n_steps=10, method=method)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, **CLOSE)


def test_integrated_gradients_equals_captum_on_resnet_and_functional_relu():
    for model, shape in ((resnet18(num_classes=3).eval(), (2, 3, 24, 20)), (FunctionalReluNet().eval(), (2, 3, 12, 8))):
        x = torch.randn(*shape)
        t = torch.tensor([2, 1])
        ours = integrated_gradients(model, x, t, steps=8)  # default rule: Gauss-Legendre, as Captum's default
        ref = IntegratedGradients(model).attribute(x, target=t, n_steps=8)
        torch.testing.assert_close(ours, ref, **CLOSE)


def test_trapezoid_rule_is_captums_with_weights_that_sum_to_one():
    """Captum's "riemann_trapezoid" uses the points k/(n-1) with weights 1/n (halved at the ends), which sum to
    (n-1)/n; ours uses 1/(n-1), so ours = Captum * n/(n-1) exactly, and completeness holds."""
    model = smooth_net()
    x = torch.rand(3, 3, 16, 16) * 2
    t = torch.tensor([0, 1, 2])
    steps = 64
    ours, delta = integrated_gradients(
        model, x, t, steps=steps, method="riemann_trapezoid", return_convergence_delta=True
    )
    ref, ref_delta = IntegratedGradients(model).attribute(
        x, target=t, n_steps=steps, method="riemann_trapezoid", return_convergence_delta=True
    )
    torch.testing.assert_close(ours * (steps - 1) / steps, ref, **CLOSE)
    gap = target_scores(model, x, t) - target_scores(model, torch.zeros_like(x), t)
    assert (delta.abs() <= 1e-2 * gap.abs()).all()
    assert (ref_delta.abs() > 1e-2 * gap.abs()).all()  # Captum's rule misses completeness by ~1/n


def test_convergence_delta_equals_captum():
    model = small_cnn().eval()
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([1, 0, 1])
    base = torch.randn(1, 3, 16, 16)
    ours, delta = integrated_gradients(model, x, t, baseline=base, steps=12, return_convergence_delta=True)
    ref, ref_delta = IntegratedGradients(model).attribute(
        x, baselines=base, target=t, n_steps=12, return_convergence_delta=True
    )
    torch.testing.assert_close(ours, ref, **CLOSE)
    torch.testing.assert_close(delta, ref_delta.to(delta.dtype), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_integrated_gradients_completeness(method):
    """sum_j IG_j = F_t(x) - F_t(b) (Sundararajan et al., 2017, Proposition 1)."""
    model = smooth_net()
    x = torch.rand(4, 3, 16, 16) * 2
    t = torch.tensor([0, 1, 2, 0])
    base = torch.full((1, 3, 1, 1), 0.25)
    attr = integrated_gradients(model, x, t, baseline=base, steps=64, method=method)
    gap = target_scores(model, x, t) - target_scores(model, base.expand_as(x), t)
    assert gap.abs().min() > 0.05
    torch.testing.assert_close(attr.flatten(1).sum(1), gap, rtol=1e-2, atol=0)


def test_path_points():
    for method in ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right"):
        alphas, weights = path_points(method, 7)
        assert alphas.min() >= 0 and alphas.max() <= 1
        assert abs(float(weights.sum()) - 1) < 1e-12
    # Gauss-Legendre with n nodes on [0, 1] integrates x^d exactly up to d = 2n - 1 (and not d = 2n)
    alphas, ours = path_points("gausslegendre", 7)
    for d in range(14):
        assert abs(float((ours * alphas**d).sum()) - 1 / (d + 1)) < 1e-12, d
    assert abs(float((ours * alphas**14).sum()) - 1 / 15) > 1e-9
    alphas, _ = path_points("gausslegendre", 1)
    assert alphas.tolist() == [0.5]


# --------------------------------------------------------------------------------------------------- expected gradients


def captum_draws(seed, n, samples, background, stdev):
    """Replay the random numbers Captum's GradientShap draws after ``np.random.seed(seed); torch.manual_seed(seed)``:
    NoiseTunnel picks ``np.random.choice(B, S*N)`` baselines and adds ``torch.normal(0, stdev)`` noise to the
    ``repeat_interleave``d inputs; InputBaselineXGradient then draws ``np.random.uniform(0, 1, S*N)`` alphas."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    indices = torch.tensor(np.random.choice(background.shape[0], samples * n)).view(n, samples)
    noise = torch.normal(0, torch.tensor(stdev).repeat((n * samples, *background.shape[1:])))
    alphas = torch.tensor(np.random.uniform(0.0, 1.0, n * samples), dtype=torch.float32).view(n, samples)
    return indices, alphas, noise


@pytest.mark.parametrize("stdev", [0.0, 0.3])
@pytest.mark.parametrize("name", ["small_cnn", "functional_relu"])
def test_expected_gradients_equals_captum_gradient_shap_on_its_draws(stdev, name):
    model_fn, shape = MODELS[name]
    model = model_fn()
    x = torch.randn(*shape)
    t = torch.arange(shape[0]) % 2
    background = torch.randn(4, *shape[1:])
    samples = 5
    np.random.seed(21)
    torch.manual_seed(21)
    ref = GradientShap(model).attribute(x, background, n_samples=samples, stdevs=stdev, target=t)
    indices, alphas, noise = captum_draws(21, shape[0], samples, background, stdev)
    ours = _expected_gradients_given(model, x, t, background, indices, alphas, noise, chunk_size=3)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, **CLOSE)


@pytest.mark.parametrize("stdev", [0.0, 0.3])
def test_layer_expected_gradients_equals_captum_layer_gradient_shap(stdev):
    model = small_cnn().eval()
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0, 1, 1])
    background = torch.randn(6, 3, 16, 16)
    for layer in ("4", "6"):
        np.random.seed(5)
        torch.manual_seed(5)
        ref = LayerGradientShap(model, model[int(layer)]).attribute(x, background, n_samples=4, stdevs=stdev, target=t)
        indices, alphas, noise = captum_draws(5, 3, 4, background, stdev)
        ours = _expected_gradients_given(model, x, t, background, indices, alphas, noise, layer=layer, chunk_size=5)
        assert ours.shape == ref.shape == (3, 16, 8, 8)
        assert ref.abs().max() > 0
        torch.testing.assert_close(ours, ref, **CLOSE)


def test_expected_gradients_uses_its_private_draws():
    model = small_cnn().eval()
    x = torch.randn(3, 3, 16, 16)
    background = torch.randn(5, 3, 16, 16)
    torch.manual_seed(1)
    ours = expected_gradients(model, x, None, background, samples=6, seed=4)
    torch.manual_seed(2)
    torch.testing.assert_close(expected_gradients(model, x, None, background, samples=6, seed=4), ours, rtol=0, atol=0)
    indices, alphas, _ = expected_gradients_samples(x, 5, 6, seed=4)
    torch.testing.assert_close(ours, _expected_gradients_given(model, x, None, background, indices, alphas), **CLOSE)
    assert not torch.allclose(ours, expected_gradients(model, x, None, background, samples=6, seed=5))
    # default background: the batch itself
    own = expected_gradients(model, x, samples=6, seed=4)
    indices, alphas, _ = expected_gradients_samples(x, 3, 6, seed=4)
    torch.testing.assert_close(own, _expected_gradients_given(model, x, None, x, indices, alphas), **CLOSE)


def test_expected_gradients_completeness_in_expectation():
    """E[sum_j EG_j] = F_t(x) - E_b F_t(b): with many samples the Monte-Carlo sum lands close to it."""
    model = smooth_net()
    x = torch.rand(3, 3, 16, 16) * 2
    t = torch.tensor([0, 1, 2])
    background = torch.rand(4, 3, 16, 16) * 0.5
    attr = expected_gradients(model, x, t, background, samples=512, seed=0)
    at_background = torch.stack([target_scores(model, b.expand_as(x), t) for b in background])
    expected_gap = target_scores(model, x, t) - at_background.mean(0)
    assert expected_gap.abs().min() > 0.1
    torch.testing.assert_close(attr.flatten(1).sum(1), expected_gap, rtol=0.1, atol=0)


# ------------------------------------------------------------------------------------------------------------ occlusion


@pytest.mark.parametrize(
    ("shape", "window", "stride", "baseline"),
    [
        ((2, 3, 16, 16), 4, None, 0.0),  # non-overlapping, constant baseline
        ((2, 3, 16, 20), 4, 2, 0.5),  # non-square input, stride < window
        ((2, 3, 16, 16), 5, 3, 0.0),  # window does not divide the size: windows hang over the border
        ((1, 3, 13, 17), (5, 3), (2, 3), -1.0),  # rectangular window, per-axis stride
        ((2, 3, 16, 12), (16, 4), (5, 4), 0.0),  # window spanning the whole height (any stride there)
        ((2, 3, 12, 16), 6, 4, "tensor"),  # per-image tensor baseline
        ((2, 3, 12, 16), 3, 2, "channel"),  # broadcast [1,C,1,1] baseline
    ],
)
def test_occlusion_equals_captum(shape, window, stride, baseline):
    model = small_cnn().eval()
    x = torch.randn(*shape)
    t = torch.arange(shape[0]) % 2
    if baseline == "tensor":
        baseline = torch.randn(*shape)
    elif baseline == "channel":
        baseline = torch.tensor([0.3, -0.1, 0.2]).view(1, 3, 1, 1)
    ours = occlusion(model, x, t, window=window, stride=stride, baseline=baseline, chunk_size=7)
    win = window if isinstance(window, tuple) else (window, window)
    step = win if stride is None else stride if isinstance(stride, tuple) else (stride, stride)
    ref_baseline = baseline.expand(shape) if isinstance(baseline, torch.Tensor) else baseline
    ref = Occlusion(model).attribute(
        x, sliding_window_shapes=(shape[1], *win), strides=(shape[1], *step), baselines=ref_baseline, target=t
    )
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, **CLOSE)


@pytest.mark.parametrize("baseline", ["mean", "blur"])
def test_occlusion_mean_and_blur_baselines_equal_captum_given_that_baseline(baseline):
    model = FunctionalReluNet().eval()
    x = torch.rand(2, 3, 16, 20)
    t = torch.tensor([2, 0])
    fill = occlusion_baseline(baseline, x, (4, 4))
    ours = occlusion(model, x, t, window=4, stride=2, baseline=baseline)
    ref = Occlusion(model).attribute(
        x, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=fill.contiguous(), target=t
    )
    torch.testing.assert_close(ours, ref, **CLOSE)
    if baseline == "mean":
        torch.testing.assert_close(fill[:, :, 0, 0], x.mean(dim=(2, 3)))


def test_gaussian_blur():
    constant = torch.full((1, 2, 9, 7), 0.7)
    torch.testing.assert_close(gaussian_blur(constant, (2.0, 2.0)), constant)
    x = torch.rand(2, 3, 16, 16)
    blurred = gaussian_blur(x, (2.0, 1.0))
    assert blurred.shape == x.shape
    assert blurred.var() < 0.5 * x.var()
    torch.testing.assert_close(blurred.mean(), x.mean(), rtol=0.05, atol=0)


def test_occlusion_is_the_same_in_every_channel_and_drops_where_the_evidence_is():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[0].view(3, 8, 8)[:, :4, :4] = 1.0  # class 0 counts the top-left quadrant
    x = torch.ones(1, 3, 8, 8)
    attr = occlusion(model, x, torch.tensor([0]), window=4)
    assert torch.equal(attr[:, 0], attr[:, 1])
    torch.testing.assert_close(attr[0, 0, :4, :4], torch.full((4, 4), 48.0))  # every occluded pixel gets the whole drop
    assert attr[0, 0, 4:].abs().sum() == 0 and attr[0, 0, :, 4:].abs().sum() == 0


# ----------------------------------------------------------------------------------------------------------- validation


def _x(*shape):
    return torch.randn(*shape) if shape else torch.randn(2, 3, 16, 16)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: smoothgrad(m, _x(), samples=0), "samples must be an integer >= 1, got 0"),
        (lambda m: smoothgrad(m, _x(), noise=-0.1), "noise must be .* >= 0.*-0.1"),
        (lambda m: smoothgrad(m, _x(3, 16, 16)), r"4-D tensor \[N,C,H,W\], got \(3, 16, 16\)"),
        (lambda m: smoothgrad(m, _x(), chunk_size=0), "chunk_size must be an integer >= 1, got 0"),
        (lambda m: smoothgrad(m, _x(), method="vanila"), "vanila"),
        (lambda m: smoothgrad(m, _x(), torch.tensor([0, 7])), "out of range"),
        (lambda m: integrated_gradients(m, _x(), steps=0), "steps must be an integer >= 1, got 0"),
        (lambda m: integrated_gradients(m, _x(), steps=1, method="riemann_trapezoid"), "steps .* >= 2, got 1"),
        (lambda m: integrated_gradients(m, _x(), method="simpson"), "unknown integration method 'simpson'"),
        (lambda m: integrated_gradients(m, _x(), baseline=torch.zeros(2, 3, 5, 5)), r"\(2, 3, 5, 5\) is not broadcast"),
        (lambda m: integrated_gradients(m, _x(), baseline="zero"), "baseline must be"),
        (lambda m: expected_gradients(m, _x(), samples=0), "samples must be an integer >= 1, got 0"),
        (lambda m: expected_gradients(m, _x(), background=torch.zeros(3, 16, 16)), r"4-D .*got \(3, 16, 16\)"),
        (lambda m: expected_gradients(m, _x(), background=torch.zeros(4, 1, 16, 16)), r"\(4, 1, 16, 16\) does not"),
        (lambda m: expected_gradients(m, _x(), stdevs=-1.0), "stdevs must be .* >= 0, got -1.0"),
        (lambda m: expected_gradients(m, _x(), layer="featurs.4"), "unknown layer 'featurs.4'"),
        (lambda m: occlusion(m, _x(), window=17), "window 17 is larger than the images"),
        (lambda m: occlusion(m, _x(), window=(4, 0)), r"window must be .*got \(4, 0\)"),
        (lambda m: occlusion(m, _x(), window=4, stride=5), "stride 5 is larger than the window 4"),
        (lambda m: occlusion(m, _x(), baseline="median"), "unknown baseline 'median'"),
        (lambda m: occlusion(m, _x(), baseline=torch.zeros(3, 16)), r"\(3, 16\) is not broadcastable"),
    ],
)
def test_arguments_are_validated_with_the_bad_value_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(small_cnn().eval())


# ------------------------------------------------------------------------------------------------------ safety contract

METHODS = {
    "smoothgrad": lambda m, x, **kw: smoothgrad(m, x, samples=3, **kw),
    "smoothgrad_gxi_squared": lambda m, x, **kw: smoothgrad(
        m, x, method="gradient_x_input", samples=3, squared=True, **kw
    ),
    "integrated_gradients": lambda m, x, **kw: integrated_gradients(m, x, steps=5, **kw),
    "expected_gradients": lambda m, x, **kw: expected_gradients(m, x, samples=4, stdevs=0.1, **kw),
    "layer_expected_gradients": lambda m, x, **kw: expected_gradients(m, x, samples=4, layer="4", **kw),
    "occlusion": lambda m, x, **kw: occlusion(m, x, window=6, stride=4, **kw),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_model_left_as_found(name):
    model = small_cnn().train()
    model[1].eval()  # a frozen BatchNorm must stay frozen, the others must stay in train mode
    model[0].weight.requires_grad_(False)
    model(torch.randn(4, 3, 16, 16)).sum().backward()  # existing .grad must survive untouched
    before = snapshot(model)
    x = torch.randn(3, 3, 16, 16)
    x_before = x.clone()
    rng = torch.get_rng_state()
    attr = METHODS[name](model, x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same(before, snapshot(model))
    assert torch.equal(x, x_before) and not x.requires_grad
    assert attr.abs().sum() > 0 and not attr.requires_grad and attr.device == x.device


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("fail_at_call", [1, 2, 3])
def test_no_hook_survives_an_exception(name, fail_at_call):
    """Call 1 is the memory measurement (hooks on every leaf), 2 the clean forward, 3 the first chunk."""
    calls = []

    class Boom(nn.Module):
        def forward(self, x):
            calls.append(1)
            if len(calls) >= fail_at_call:
                raise RuntimeError("boom")
            return x

    model = small_cnn()
    model.insert(5, Boom())  # after the second conv block, so layer "4" still runs first
    model.train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        METHODS[name](model, torch.randn(2, 3, 16, 16))
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("name", list(METHODS))
def test_works_inside_inference_mode_and_no_grad(name):
    model = small_cnn().eval()
    x = torch.randn(2, 3, 16, 16)
    expected = METHODS[name](model, x)
    with torch.inference_mode():
        x_inf = x.clone()
        torch.testing.assert_close(METHODS[name](model, x_inf), expected)
    with torch.no_grad():
        torch.testing.assert_close(METHODS[name](model, x), expected)


@pytest.mark.parametrize("name", list(METHODS))
def test_chunking_does_not_change_the_result(name):
    model = small_cnn().eval()
    x = torch.randn(3, 3, 16, 16)
    one = METHODS[name](model, x, chunk_size=1)
    big = METHODS[name](model, x, chunk_size=10_000)
    auto = METHODS[name](model, x)
    torch.testing.assert_close(one, big, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(auto, big, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(METHODS))
def test_compiled_model_is_explained_through_the_original(name):
    model = small_cnn().eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="eager")
    torch.testing.assert_close(METHODS[name](compiled, x), METHODS[name](model, x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------- sanity check


def _left_right_batch(n, generator):
    """Noise images with a bright 4x4 square; class 0 if it lies in the left half, 1 if in the right half."""
    x = torch.randn(n, 3, 16, 16, generator=generator) * 0.3
    labels = torch.randint(0, 2, (n,), generator=generator)
    top = torch.randint(0, 13, (n,), generator=generator)
    left = torch.randint(0, 5, (n,), generator=generator) + 8 * labels
    rows = torch.arange(16)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < top[:, None] + 4)
    inside_cols = (rows >= left[:, None]) & (rows < left[:, None] + 4)
    square = (inside_rows[:, :, None] & inside_cols[:, None, :]).float()
    return x + 2.0 * square[:, None], labels


def _spearman(a, b):
    """Spearman rank correlation per map: Pearson correlation of the ranks. ``[N, ...]`` -> ``[N]``."""
    ranks_a = a.flatten(1).argsort(1).argsort(1).float()
    ranks_b = b.flatten(1).argsort(1).argsort(1).float()
    ranks_a = ranks_a - ranks_a.mean(1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(1, keepdim=True)
    return (ranks_a * ranks_b).sum(1) / (ranks_a.norm(dim=1) * ranks_b.norm(dim=1))


@pytest.fixture(scope="module")
def trained_and_randomised():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = small_cnn(seed=0)
        generator = torch.Generator().manual_seed(0)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(100):
            x, y = _left_right_batch(32, generator)
            loss = nn.functional.cross_entropy(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        x, y = _left_right_batch(64, generator)
        with torch.no_grad():
            accuracy = (model(x).argmax(1) == y).float().mean().item()
        randomised = copy.deepcopy(model)
        torch.manual_seed(123)
        for module in randomised.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()  # every layer re-initialised ("cascading" randomisation, all the way)
        perturbed = copy.deepcopy(model)
        with torch.no_grad():
            for p in perturbed.parameters():
                p.mul_(1 + 1e-3 * torch.randn_like(p))
    return model, randomised, perturbed, x[:8], y[:8], accuracy


@pytest.mark.parametrize(
    "method",
    [
        lambda m, x, t: saliency(m, x, t),
        lambda m, x, t: integrated_gradients(m, x, t, steps=16),
        lambda m, x, t: smoothgrad(m, x, t, samples=8),
        lambda m, x, t: grad_cam(m, x, t, layers=["8"])["8"],
        lambda m, x, t: grad_cam(m, x, t, layers=["4"])["4"],
        *[lambda m, x, t, v=v: cam(m, x, t, layers=["8"], method=v)["8"] for v in CAM_METHODS],
        *[lambda m, x, t, v=v: cam(m, x, t, layers=["4"], method=v)["4"] for v in CAM_METHODS],
    ],
    ids=[
        "vanilla",
        "integrated_gradients",
        "smoothgrad",
        "grad_cam_last",
        "grad_cam_middle",
        *[f"{v}_last" for v in CAM_METHODS],
        *[f"{v}_middle" for v in CAM_METHODS],
    ],
)
def test_maps_depend_on_the_learned_weights(trained_and_randomised, method):
    """Adebayo et al. (2018), "Sanity Checks for Saliency Maps": re-initialising the weights of a trained model must
    change the maps. Signed maps (summed over channels) of the trained and the randomised model are nearly
    uncorrelated in rank, while a 0.1% weight perturbation leaves them almost unchanged."""
    trained, randomised, perturbed, x, t, accuracy = trained_and_randomised
    assert accuracy > 0.9
    maps = method(trained, x, t).sum(1)
    assert _spearman(maps, method(randomised, x, t).sum(1)).mean() < 0.5
    assert _spearman(maps, method(perturbed, x, t).sum(1)).mean() > 0.9


def test_what_guided_backprop_does_under_model_randomisation(trained_and_randomised):
    """Adebayo et al. (2018) found guided backprop nearly invariant to re-initialising a deep ImageNet CNN: its maps
    mostly reconstruct image edges. This documents what it does here, on a 3-conv network: its maps change about as
    much as the magnitude of the plain gradient (rank correlation ~0.3 for both), so the check passes for it on small
    models and cannot be taken as evidence that guided backprop is faithful on deep ones."""
    trained, randomised, perturbed, x, t, _ = trained_and_randomised
    guided = saliency(trained, x, t, method="guided_backprop").abs().sum(1)
    guided_random = saliency(randomised, x, t, method="guided_backprop").abs().sum(1)
    vanilla = saliency(trained, x, t).abs().sum(1)
    vanilla_random = saliency(randomised, x, t).abs().sum(1)
    rho_guided = _spearman(guided, guided_random).mean()
    rho_vanilla = _spearman(vanilla, vanilla_random).mean()
    assert rho_guided < 0.5
    assert abs(rho_guided - rho_vanilla) < 0.15
    assert _spearman(guided, saliency(perturbed, x, t, method="guided_backprop").abs().sum(1)).mean() > 0.9


class _Costly:
    """A consumer of chunk ranges whose time per chunk follows a cost model (seconds = fixed + per_copy(size))."""

    def __init__(self, fixed: float, per_copy) -> None:
        self.fixed, self.per_copy, self.seen = fixed, per_copy, []

    def run(self, ranges):
        import time

        for start, stop in ranges:
            self.seen.append((start, stop))
            time.sleep(self.fixed + self.per_copy(stop - start) * (stop - start))
        return self.seen


@pytest.mark.parametrize(
    ("fixed", "per_copy", "best"),
    [
        (0.04, lambda size: 0.0, 16),  # a fixed cost per pass: the largest chunk wins
        (0.0, lambda size: 0.0005 * size, 4),  # a cost per copy that grows with the chunk: the smallest wins
        (0.0, lambda size: 0.004 if size != 8 else 0.0005, 8),  # the estimate itself
    ],
)
def test_tuned_chunks_try_half_once_and_twice_the_estimate_and_keep_the_fastest(fixed, per_copy, best):
    model = small_cnn()
    tuned = batching.TunedChunks(model, ("test",), base=8, limit=100)
    seen = _Costly(fixed, per_copy).run(tuned.ranges(100))
    assert [b - a for a, b in seen[:6]] == [4, 4, 8, 8, 16, 16]  # each candidate: a warm-up, then a timed chunk
    assert [a for a, _ in seen] == [0, *(b for _, b in seen[:-1])] and seen[-1][1] == 100  # in order, no gap
    assert tuned.chosen == best
    assert all(b - a == best for a, b in seen[6:-1])
    # a later call on the same model and key goes straight to the choice
    again = batching.TunedChunks(model, ("test",), base=8, limit=100)
    assert again.chosen == best
    assert list(again.ranges(40)) == list(batching.chunk_ranges(40, best))
    # another model, or another key, starts afresh
    assert batching.TunedChunks(small_cnn(), ("test",), base=8, limit=100).chosen is None
    assert batching.TunedChunks(model, ("other",), base=8, limit=100).chosen is None


def test_tuned_chunks_respect_the_budget_limit_and_skip_tuning_small_work():
    model = small_cnn()
    capped = batching.TunedChunks(model, ("capped",), base=8, limit=10)
    # a fixed cost per pass large enough that a loaded machine's sleep overshoot cannot reorder 8 and 10 per copy
    sizes = [b - a for a, b in _Costly(0.04, lambda size: 0.0).run(capped.ranges(200))]
    assert max(sizes) == 10 and capped.chosen == 10  # twice the estimate would exceed the memory budget
    small = batching.TunedChunks(model, ("small",), base=8, limit=100)
    assert list(small.ranges(20)) == list(batching.chunk_ranges(20, 8))  # 2 x (4 + 8) > 20: no trial
    assert small.chosen is None
    some = batching.TunedChunks(model, ("some",), base=8, limit=100)
    sizes = [b - a for a, b in _Costly(0.01, lambda size: 0.0).run(some.ranges(40))]
    assert sizes[:4] == [4, 4, 8, 8] and some.chosen == 8  # 2 x (4 + 8 + 16) > 40: the largest size is dropped


def test_methods_tune_on_cpu_and_give_the_same_result_as_a_fixed_chunk():
    model, x = small_cnn(), torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 0, 1])
    chunking = batching.auto_chunks(model, x, 64, "smoothgrad/vanilla/False")
    assert isinstance(chunking, batching.TunedChunks) and chunking.chosen is None
    assert 2 * (chunking.base // 2 + chunking.base + 2 * chunking.base) <= 4 * 64  # room for the whole trial
    tuned = smoothgrad(model, x, t, samples=64, noise=0.2, seed=3)
    assert chunking.chosen in {max(1, chunking.base // 2), chunking.base, min(2 * chunking.base, chunking.limit)}
    fixed = smoothgrad(model, x, t, samples=64, noise=0.2, seed=3, chunk_size=chunking.chosen)
    torch.testing.assert_close(tuned, fixed)
