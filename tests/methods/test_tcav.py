"""TCAV against independent references: Captum's TCAV (CAVs and directional derivatives), scikit-learn's logistic
regression (the CAV classifier) and scipy's t-test (the significance). Fast tier: tiny seeded models, no Trainer."""

from __future__ import annotations

import random

import pytest
import torch

from models import small_cnn
from probelens.methods import forward_backward
from probelens.methods.tcav import (
    concept_activation_vector,
    cosine_alignment,
    directional_derivatives,
    fit_linear_classifier,
    tcav,
    tcav_score,
    ttest_pvalue,
)

LAYERS = ("4", "9", "10")  # a conv output, the last conv's output and the ReLU right before global pooling


def _model(seed: int = 0) -> torch.nn.Module:
    model = small_cnn(seed=seed).eval()
    with torch.no_grad():  # random BatchNorm statistics and head, so no layer is trivially the identity
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


def _pictures(seed: int, n: int = 12):
    g = torch.Generator().manual_seed(seed)
    concept = torch.randn(n, 3, 16, 16, generator=g) * 0.5
    concept[:, 0, :8] += 1.5  # a "concept": a bright red top half
    negatives = torch.randn(n, 3, 16, 16, generator=g)
    inputs = torch.randn(8, 3, 16, 16, generator=g)
    return concept, negatives, inputs


class _ProbelensClassifier:
    """A Captum ``Classifier`` whose CAV is probelens' :func:`concept_activation_vector` on the activations Captum
    hands it (concept id 0 against id 1); it keeps what it saw for the test."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def train_and_eval(self, dataloader, **kwargs):
        xs, ys = zip(*dataloader)
        x, y = torch.cat(xs), torch.cat(ys)
        self.seen.append((x, y))
        cav = concept_activation_vector(x[y == 0], x[y == 1])
        self._weights = torch.stack([cav.weights, -cav.weights])  # rows in the order of classes()
        return {"accs": torch.tensor(cav.accuracy)}

    def weights(self):
        return self._weights

    def classes(self):
        return [0, 1]


def _captum_tcav(model, layers, classifier, tmp_path, concept, negatives):
    from captum.concept import TCAV, Classifier, Concept

    Classifier.register(_ProbelensClassifier)  # an abstract base class: register rather than inherit
    tcav_ = TCAV(model, list(layers), classifier=classifier, save_path=str(tmp_path / "cav"))
    experiment = [[Concept(0, "concept", iter([concept])), Concept(1, "negatives", iter([negatives]))]]
    return tcav_, experiment


@pytest.mark.parametrize("seed", [0, 1])
def test_cavs_and_directional_derivatives_equal_captums(tmp_path, seed):
    """Given the same activations and classifier, Captum's CAVs equal ours, and Captum's per-input TCAV
    ("magnitude" of one input = its directional derivative; "sign_count" = its sign) equals ours for every input,
    target class and layer, including the saturating layer before global pooling."""
    model = _model(seed)
    concept, negatives, inputs = _pictures(seed)
    classifier = _ProbelensClassifier()
    captum_tcav, experiment = _captum_tcav(model, LAYERS, classifier, tmp_path, concept, negatives)
    captum_cavs = captum_tcav.compute_cavs(experiment)
    modules = dict(model.named_modules())
    layers = {name: modules[name] for name in LAYERS}
    ours_c = forward_backward(model, concept, None, layers, gradients=False, input_gradient=False).activations
    ours_n = forward_backward(model, negatives, None, layers, gradients=False, input_gradient=False).activations
    key = next(iter(captum_cavs))
    for layer, (x, y) in zip(LAYERS, classifier.seen):
        # Captum fed the classifier the same activations we capture (flattened, concept first)
        torch.testing.assert_close(x[y == 0], ours_c[layer].flatten(1))
        torch.testing.assert_close(x[y == 1], ours_n[layer].flatten(1))
        ours = concept_activation_vector(ours_c[layer], ours_n[layer]).weights
        captum_cav = captum_cavs[key][layer].stats["weights"][0]
        torch.testing.assert_close(captum_cav.float(), ours, rtol=1e-5, atol=1e-6)
    for target in (0, 1):
        grads = forward_backward(model, inputs, torch.full((8,), target), layers, input_gradient=False).gradients
        ours = {
            layer: directional_derivatives(grads["target"][layer], captum_cavs[key][layer].stats["weights"][0])
            for layer in LAYERS
        }
        assert all(d.abs().max() > 0 for d in ours.values())  # a test that can fail: the derivatives are not all 0
        for i in range(len(inputs)):  # one input per call: Captum's "magnitude" is then that input's derivative
            got = captum_tcav.interpret(inputs[i : i + 1], experiment, target=target)[key]
            for layer in LAYERS:
                torch.testing.assert_close(got[layer]["magnitude"][0], ours[layer][i], rtol=1e-4, atol=1e-6)
                assert float(got[layer]["sign_count"][0]) == float(ours[layer][i] > 0)
        whole = captum_tcav.interpret(inputs, experiment, target=target)[key]
        for layer in LAYERS:
            assert float(whole[layer]["sign_count"][0]) == pytest.approx(tcav_score(ours[layer]))
            torch.testing.assert_close(whole[layer]["magnitude"][0], ours[layer].mean(), rtol=1e-4, atol=1e-6)


def test_captums_default_classifier_plugged_into_our_derivatives(tmp_path):
    """Captum's own default CAV classifier (scikit-learn's SGD on a random split): its weights, given to our
    directional derivatives, reproduce Captum's TCAV scores."""
    pytest.importorskip("sklearn")
    from captum.concept import TCAV, Concept

    model = _model(3)
    concept, negatives, inputs = _pictures(3)
    random.seed(0)  # Captum's split uses Python's global RNG
    with pytest.warns(UserWarning, match="default classifier"):
        captum_tcav = TCAV(model, list(LAYERS), save_path=str(tmp_path / "cav"))
    experiment = [[Concept(0, "concept", iter([concept])), Concept(1, "negatives", iter([negatives]))]]
    scores = captum_tcav.interpret(inputs, experiment, target=1)
    key = next(iter(scores))
    modules = dict(model.named_modules())
    layers = {name: modules[name] for name in LAYERS}
    grads = forward_backward(model, inputs, torch.ones(8, dtype=torch.long), layers, input_gradient=False).gradients
    for layer in LAYERS:
        cav = captum_tcav.cavs[key][layer].stats["weights"][0].float()
        derivatives = directional_derivatives(grads["target"][layer], cav)
        assert float(scores[key][layer]["sign_count"][0]) == pytest.approx(tcav_score(derivatives))
        torch.testing.assert_close(scores[key][layer]["magnitude"][0], derivatives.mean(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("m", "f", "shift"), [(40, 300, 0.3), (60, 5000, 0.1), (10, 50, 0.0), (200, 20, 0.5)])
def test_the_cav_classifier_is_scikit_learns_logistic_regression(m, f, shift):
    """Our exact dual-Newton fit = scikit-learn's L2 logistic regression (C = 1 / (M l2) on features divided by
    their RMS), high- and low-dimensional, separable or not."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(m + f)
    x = torch.randn(m, f, generator=g)
    y = torch.arange(m) < m // 2
    x[y] += shift
    w, b = fit_linear_classifier(x, y, l2=0.01)
    scale = float(x.pow(2).mean().sqrt())
    ref = sklearn.LogisticRegression(C=1 / (m * 0.01), tol=1e-12, max_iter=100000)
    ref.fit((x / scale).double().numpy(), y.numpy())
    torch.testing.assert_close(w, torch.tensor(ref.coef_[0] / scale, dtype=torch.float32), rtol=1e-4, atol=1e-6)
    assert b == pytest.approx(float(ref.intercept_[0]), rel=1e-4, abs=1e-6)


def test_the_t_test_is_scipys():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    for n_a, n_b, shift in [(10, 10, 0.0), (10, 10, 1.0), (5, 12, 0.4), (30, 30, 2.0), (2, 2, 0.1), (10, 10, 5.0)]:
        a, b = torch.randn(n_a, generator=g), torch.randn(n_b, generator=g) + shift
        expected = stats.ttest_ind(a.double().numpy(), b.double().numpy()).pvalue
        assert ttest_pvalue(a, b) == pytest.approx(float(expected), rel=1e-9)
    assert ttest_pvalue(torch.ones(5), torch.ones(5)) == 1.0  # no variance, equal means
    assert ttest_pvalue(torch.ones(5), torch.zeros(5)) == 0.0  # no variance, different means
    with pytest.raises(ValueError, match="at least 2"):
        ttest_pvalue(torch.ones(1), torch.ones(5))


def test_cosine_alignment_is_the_normalised_derivative():
    g = torch.Generator().manual_seed(0)
    grads, v = torch.randn(6, 4, 3, 3, generator=g), torch.randn(36, generator=g)
    expected = torch.nn.functional.cosine_similarity(grads.flatten(1), v[None], dim=1)
    torch.testing.assert_close(cosine_alignment(grads, v), expected)
    torch.testing.assert_close(directional_derivatives(grads, v), grads.flatten(1) @ v)
    assert float(cosine_alignment(torch.zeros(1, 36), v)[0]) == 0.0


def test_tcav_separates_an_aligned_gradient_from_an_unrelated_one():
    """Gradients that point along the concept's direction (class 0) score 1, a high cosine and a tiny p-value;
    gradients unrelated to it (class 1) keep the cosine near 0. Seeded: the same call gives the same result, and the
    global RNG is left alone."""
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(64, generator=g)
    concept = torch.randn(30, 64, generator=g) + direction
    negatives = torch.randn(30, 64, generator=g)
    labels = torch.tensor([0] * 10 + [1] * 10)
    grads = torch.cat([direction + 0.5 * torch.randn(10, 64, generator=g), torch.randn(10, 64, generator=g)])
    state = torch.random.get_rng_state()
    result = tcav(concept, negatives, grads, labels, 3, runs=8, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert result.score(0) == 1.0 and result.cosine(0) > 0.5 and result.cosine_p_values[0] < 1e-6
    assert abs(result.cosine(1)) < 0.15
    assert 2 not in result.p_values and torch.isnan(result.scores[:, 2]).all()  # a class without inputs
    assert result.scores.shape == result.random_scores.shape == (8, 3) and result.cavs.shape == (8, 64)
    again = tcav(concept, negatives, grads, labels, 3, runs=8, seed=1)
    assert torch.equal(again.cavs, result.cavs) and again.cosine_p_values == result.cosine_p_values


def test_tcav_works_inside_inference_mode():
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        concept, negatives = torch.randn(8, 10, generator=g) + 1, torch.randn(8, 10, generator=g)
        result = tcav(concept, negatives, torch.randn(4, 10, generator=g), torch.tensor([0, 0, 1, 1]), 2, runs=3)
        w, _ = fit_linear_classifier(torch.cat([concept, negatives]), torch.arange(16) < 8)
    assert result.scores.shape == (3, 2) and torch.isfinite(w).all()


def test_bad_inputs_name_the_problem():
    x = torch.randn(6, 10)
    with pytest.raises(ValueError, match="both labels"):
        fit_linear_classifier(x, torch.ones(6))
    with pytest.raises(ValueError, match="per-example shape"):
        concept_activation_vector(torch.randn(4, 10), torch.randn(4, 11))
    with pytest.raises(ValueError, match="features per example"):
        directional_derivatives(torch.randn(2, 9), torch.randn(10))
    with pytest.raises(ValueError, match="runs=1"):
        tcav(x, x, x, torch.zeros(6), 2, runs=1)
    with pytest.raises(ValueError, match="at least 2 concept"):
        tcav(x[:1], x, x, torch.zeros(6), 2)
