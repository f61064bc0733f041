"""Testing with Concept Activation Vectors (TCAV; Kim et al., 2018, arXiv:1711.11279), in torch.

A concept activation vector (CAV) for a concept at a layer is the normal of a linear classifier that separates the
layer's activations of concept pictures from those of negative (random) pictures, pointing towards the concept. The
directional derivative of class ``k``'s score along the CAV for an input ``x`` is ``S_k(x) = grad h_k(f_l(x)) . v``;
the TCAV score of (class ``k``, concept) is the share of class ``k``'s inputs with ``S_k(x) > 0``. Its significance
is the paper's test: ``R`` CAVs of the concept (each on a subsample of the concept and negative pictures) against
``R`` CAVs of random splits of the same pictures, a two-sided Student t-test of the two sets of scores.

Layer outputs of any shape are flattened per example (``[N, ...] -> [N, F]``), as Captum's ``TCAV`` does, so a CAV
and a gradient always share one layout and no axis is guessed. The directional derivatives equal Captum's
(``captum.concept.TCAV`` with the same activations and classifier weights; ``tests/methods/test_tcav.py``).

Sign-count saturation: at a layer where the class-score gradient is the same for every input (a layer right before
global pooling and a linear head), ``S_k(x)`` has one sign for all inputs, so the score is 0 or 1 for *any* direction
and random-split CAVs are as "significant" as a concept's. :func:`tcav` therefore also returns the cosine between
each gradient and the CAV, a magnitude-aware statistic that a direction unrelated to the decision keeps near 0, with
its own t-test against the random splits (``docs/concepts.md`` has the measurement).

All functions take and return torch tensors (no Lightning; the small solves run in numpy), leave the global RNG
untouched (a private generator draws the subsamples) and work inside ``torch.inference_mode`` too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ConceptVector",
    "TCAVResult",
    "concept_activation_vector",
    "cosine_alignment",
    "directional_derivatives",
    "fit_linear_classifier",
    "tcav",
    "tcav_score",
    "ttest_pvalue",
]


@dataclass
class ConceptVector:
    """A CAV: the weights of a linear classifier of concept (label 1) vs negative (label 0) activations.

    Attributes:
        weights: ``[F]`` the classifier's weight vector in the (flattened) activation space; it points towards the
            concept. Not normalised (Captum's convention); :func:`cosine_alignment` normalises.
        bias: the classifier's intercept.
        accuracy: the classifier's accuracy on the pictures it was fitted on.
    """

    weights: Tensor
    bias: float
    accuracy: float


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def fit_linear_classifier(
    features: Tensor, labels: Tensor, *, l2: float = 0.01, max_iter: int = 50
) -> tuple[Tensor, float]:
    """L2-regularised logistic regression, ``min_w,b mean_i log(1 + exp(-s_i (x_i . w + b))) + l2/2 |w|^2`` with
    ``s_i = +1`` for label 1 and ``-1`` for label 0, solved exactly (deterministic: no random init, no data order).

    The features are divided by one scalar (their root mean square) before the fit and the weights rescaled after,
    so ``l2`` does not depend on the activations' scale and the returned normal is that of the boundary in the raw
    space (one scalar changes no direction). With ``M`` examples of ``F >> M`` features the minimiser lies in the
    span of the examples (representer theorem), ``w = X^T a``, so Newton's method runs on the ``M + 1`` unknowns
    ``(a, b)`` over the Gram matrix ``X X^T``: milliseconds for a few dozen pictures, whatever the layer's size.

    Args:
        features: ``[M, ...]`` examples (flattened to ``[M, F]``).
        labels: ``[M]`` 0/1 (or bool) labels; both classes must occur.
        l2: the ridge strength (on the rescaled features).
        max_iter: Newton iterations (it converges in about 10).

    Returns:
        ``(weights [F], bias)`` on the features' device, in float32.
    """
    x = _flat(features).detach()
    y = labels.detach().reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features have {x.shape[0]} examples but labels {y.shape[0]}")
    y = y.to(torch.bool)
    if bool(y.all()) or not bool(y.any()):
        raise ValueError("a linear classifier needs examples of both labels (concept and negative)")
    with torch.inference_mode(False):
        x64 = x.to(torch.float64).clone()
        scale = float(x64.pow(2).mean().sqrt()) or 1.0
        x64 = x64 / scale
        alpha, bias = _fit_gram(x64 @ x64.T, y.to(x64.device), l2, max_iter)
        weights = (x64.T @ alpha) / scale
    return weights.to(torch.float32), bias


def _fit_gram(gram: Tensor, labels: Tensor, l2: float, max_iter: int) -> tuple[Tensor, float]:
    """Newton's method with backtracking for :func:`fit_linear_classifier` in its dual form: ``z = K a + b``,
    objective ``mean softplus(-s z) + l2/2 a^T K a`` over ``(a, b)``; returns ``(a [M], b)`` (float64, on the Gram
    matrix's device).

    The ``M + 1`` unknowns are solved in numpy (float64): on matrices this small torch's per-operation overhead
    dominates (a 49x49 solve took 18-27 ms in torch against 0.03 ms in numpy on a loaded 2-core machine). The Newton
    step solves the gradient equations premultiplied by ``K^-1`` on the ``a`` block, ``(D K + l2 I) da + D 1 db =
    -(r + l2 a)``, which stays well posed where ``K`` is singular (duplicate pictures, ``M > F``).
    """
    a, b = _fit_gram_np(gram.detach().cpu().double().numpy(), labels.detach().cpu().reshape(-1).numpy(), l2, max_iter)
    return torch.from_numpy(a).to(gram.device), b


def _fit_gram_np(k: np.ndarray, labels: np.ndarray, l2: float, max_iter: int) -> tuple[np.ndarray, float]:
    """:func:`_fit_gram` on numpy arrays."""
    m = k.shape[0]
    s = np.where(labels.astype(bool), 1.0, -1.0)
    a = np.zeros(m)
    b = 0.0

    def softplus(z: np.ndarray) -> np.ndarray:
        return np.logaddexp(0.0, z)

    def objective(a: np.ndarray, b: float) -> float:
        return float(softplus(-s * (k @ a + b)).mean() + 0.5 * l2 * (a @ (k @ a)))

    value = objective(a, b)
    for _ in range(max_iter):
        margin = s * (k @ a + b)
        p = 0.5 * (1.0 - np.tanh(0.5 * margin))  # sigmoid(-margin), without overflow
        r = -s * p / m
        grad = np.concatenate([k @ (r + l2 * a), [r.sum()]])
        if float(np.abs(grad).max()) < 1e-12:
            break
        d = p * (1.0 - p) / m
        system = np.zeros((m + 1, m + 1))
        system[:m, :m] = d[:, None] * k + l2 * np.eye(m)
        system[:m, m] = d
        system[m, :m] = d @ k
        system[m, m] = d.sum()
        rhs = -np.concatenate([r + l2 * a, [r.sum()]])
        try:
            step = np.linalg.solve(system, rhs)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(system, rhs, rcond=None)[0]
        slope = float(grad @ step)
        if slope >= 0.0:  # not a descent direction (numerically converged)
            break
        t = 1.0
        while True:  # backtracking (Armijo): the full step can overshoot on separable data
            a_new, b_new = a + t * step[:m], b + t * float(step[m])
            new_value = objective(a_new, b_new)
            if new_value <= value + 1e-4 * t * slope or t < 1e-8:
                break
            t *= 0.5
        converged = value - new_value < 1e-14 * max(1.0, value)
        a, b, value = a_new, b_new, new_value
        if converged:
            break
    return a, float(b)


def concept_activation_vector(
    concept: Tensor, negatives: Tensor, *, l2: float = 0.01, max_iter: int = 100
) -> ConceptVector:
    """The CAV of ``concept`` activations ``[M, ...]`` against ``negatives`` ``[K, ...]`` (same trailing shape): the
    weights of :func:`fit_linear_classifier` with the concept as label 1, so the vector points towards the concept.

    Example:
        >>> import torch
        >>> concept = torch.tensor([[2.0, 0.0], [3.0, 0.1], [2.5, -0.1]])
        >>> negatives = torch.tensor([[-2.0, 0.0], [-3.0, 0.2], [-2.5, -0.2]])
        >>> cav = concept_activation_vector(concept, negatives)
        >>> bool(cav.weights[0] > 0), cav.accuracy
        (True, 1.0)
        >>> directional_derivatives(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), cav) > 0
        tensor([ True, False])
    """
    if concept.shape[1:] != negatives.shape[1:]:
        raise ValueError(
            f"concept activations {tuple(concept.shape)} and negative activations {tuple(negatives.shape)} differ in "
            "their per-example shape; take both at the same layer from pictures of the same size"
        )
    x = torch.cat([_flat(concept), _flat(negatives)]).float()
    y = torch.cat([torch.ones(concept.shape[0]), torch.zeros(negatives.shape[0])]).to(x.device)
    weights, bias = fit_linear_classifier(x, y, l2=l2, max_iter=max_iter)
    accuracy = float((((x @ weights + bias) > 0).float() == y).float().mean())
    return ConceptVector(weights, bias, accuracy)


def directional_derivatives(gradients: Tensor, cav: Tensor | ConceptVector) -> Tensor:
    """``S(x_i) = grad_i . v``: the directional derivative of the class score along the CAV ``v`` ``[F]``, for each
    gradient ``[N, ...]`` of that score with respect to the layer output (flattened). Returns ``[N]`` (float32)."""
    v = cav.weights if isinstance(cav, ConceptVector) else cav
    g = _flat(gradients).float()
    if g.shape[1] != v.numel():
        raise ValueError(f"gradients have {g.shape[1]} features per example but the CAV {v.numel()}")
    return g @ v.reshape(-1).float().to(g.device)


def cosine_alignment(gradients: Tensor, cav: Tensor | ConceptVector) -> Tensor:
    """``cos(grad_i, v)`` per example ``[N]``: the directional derivative normalised by both lengths, in ``[-1, 1]``
    (0 for a zero gradient). Unlike the sign, it stays near 0 for a direction the decision does not use."""
    v = (cav.weights if isinstance(cav, ConceptVector) else cav).reshape(-1).float()
    g = _flat(gradients).float()
    v = v.to(g.device)
    norms = g.norm(dim=1) * v.norm()
    return torch.where(norms > 0, (g @ v) / norms.clamp_min(1e-30), torch.zeros_like(norms))


def tcav_score(derivatives: Tensor) -> float:
    """The TCAV score: the share of directional derivatives ``> 0`` (NaN for none)."""
    return float((derivatives > 0).float().mean()) if derivatives.numel() else math.nan


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (continued fraction, Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast only below this point
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


def ttest_pvalue(a: Tensor, b: Tensor) -> float:
    """Two-sided p-value of Student's t-test (pooled variance) that samples ``a`` and ``b`` have equal means, as
    ``scipy.stats.ttest_ind`` (the TCAV paper's test). Where both samples have zero variance: 1.0 if their means are
    equal and 0.0 if not (scipy gives NaN and +-inf t there)."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    na, nb = a.numel(), b.numel()
    if na < 2 or nb < 2:
        raise ValueError(f"a t-test needs at least 2 values per sample, got {na} and {nb}")
    diff = float(a.mean() - b.mean())
    dof = na + nb - 2
    pooled = (float(((a - a.mean()) ** 2).sum()) + float(((b - b.mean()) ** 2).sum())) / dof
    se = math.sqrt(pooled * (1.0 / na + 1.0 / nb))
    if se == 0.0 or not math.isfinite(se):
        return 1.0 if diff == 0.0 else 0.0
    t = diff / se
    return _betainc(dof / 2.0, 0.5, dof / (dof + t * t))


@dataclass
class TCAVResult:
    """What :func:`tcav` found for one concept at one layer; per-class entries are keyed by class index.

    Attributes:
        scores: ``[R, K]`` TCAV score of each concept run (``R`` runs) for each class ``k`` (NaN where the class has
            no input); ``random_scores`` the same for the random-split runs.
        cosines: ``[R, K]`` mean cosine between the class's gradients and each run's CAV; ``random_cosines`` likewise.
        p_values: per class, the paper's t-test of ``scores`` against ``random_scores``.
        cosine_p_values: per class, the same test on the cosines.
        accuracy: mean training accuracy of the concept runs' classifiers.
        cavs: ``[R, F]`` the concept runs' CAVs.
    """

    scores: Tensor
    random_scores: Tensor
    cosines: Tensor
    random_cosines: Tensor
    p_values: dict[int, float]
    cosine_p_values: dict[int, float]
    accuracy: float
    cavs: Tensor

    def score(self, k: int) -> float:
        """Mean TCAV score of class ``k`` over the concept runs."""
        return float(self.scores[:, k].mean())

    def cosine(self, k: int) -> float:
        """Mean cosine of class ``k`` over the concept runs."""
        return float(self.cosines[:, k].mean())


def tcav(
    concept: Tensor,
    negatives: Tensor,
    gradients: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    runs: int = 10,
    fraction: float = 0.8,
    seed: int = 0,
    l2: float = 0.01,
) -> TCAVResult:
    """TCAV of one concept at one layer, with the paper's significance test over ``runs`` runs.

    Run ``r`` fits a CAV on a random subsample (``fraction`` of each, at least 2) of the concept and negative
    activations, and a random-split CAV on a random split of the pooled pictures into groups of those two sizes.
    For every class ``k`` and run, the TCAV score (share of class ``k``'s inputs whose gradient has a positive
    directional derivative) and the mean cosine between gradient and CAV; then per class a two-sided t-test of the
    concept runs against the random runs, for each statistic.

    Args:
        concept: ``[M, ...]`` layer activations of the concept pictures.
        negatives: ``[K, ...]`` layer activations of the negative pictures.
        gradients: ``[N, ...]`` gradient of input ``i``'s class-``labels[i]`` score with respect to the layer output.
        labels: ``[N]`` the class of each input.
        num_classes: number of classes ``K`` of the result's columns.
        runs: ``R``, at least 2.
        fraction: the share of each picture set a run draws.
        seed: seed of the private generator of the subsamples and splits.
        l2: ridge strength of the classifier (see :func:`fit_linear_classifier`).

    Returns:
        A :class:`TCAVResult`.
    """
    if runs < 2:
        raise ValueError(f"runs={runs}: the t-test needs at least 2 runs")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    c, n = _flat(concept).float(), _flat(negatives).float()
    g = _flat(gradients).float()
    if g.shape[1] != c.shape[1]:
        raise ValueError(f"gradients have {g.shape[1]} features per example, activations {c.shape[1]}")
    m_take = max(2, round(fraction * c.shape[0]))
    k_take = max(2, round(fraction * n.shape[0]))
    if m_take > c.shape[0] or k_take > n.shape[0]:
        raise ValueError(f"need at least 2 concept and 2 negative pictures, got {c.shape[0]} and {n.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    # the runs work on small matrices and vectors, where numpy's per-operation cost is a fraction of torch's (see
    # _fit_gram); the tensors come in and go out as torch
    pool = torch.cat([c, n]).detach().cpu().double().numpy()
    scale = float(np.sqrt((pool**2).mean())) or 1.0
    pool = pool / scale
    gram = pool @ pool.T  # one Gram matrix: every run's classifier is fitted on a block of it
    grads = g.detach().cpu().double().numpy()
    grad_unit = grads / np.maximum(np.linalg.norm(grads, axis=1, keepdims=True), 1e-30)
    labels = labels.reshape(-1).cpu()
    masks = [(labels == k).numpy() for k in range(num_classes)]
    truth = np.concatenate([np.ones(m_take, dtype=bool), np.zeros(k_take, dtype=bool)])

    def fit(rows: np.ndarray) -> tuple[np.ndarray, float]:
        block = gram[np.ix_(rows, rows)]
        alpha, bias = _fit_gram_np(block, truth, l2, 50)
        weights = (pool[rows].T @ alpha) / scale
        accuracy = float((((block @ alpha + bias) > 0) == truth).mean())
        return weights, accuracy

    def stats(v: np.ndarray) -> tuple[Tensor, Tensor]:
        derivative = grads @ v
        cosine = grad_unit @ (v / max(float(np.linalg.norm(v)), 1e-30))
        score = [float((derivative[mk] > 0).mean()) if mk.any() else math.nan for mk in masks]
        mean_cos = [float(cosine[mk].mean()) if mk.any() else math.nan for mk in masks]
        return torch.tensor(score), torch.tensor(mean_cos)

    m_all = c.shape[0]
    scores, cosines, random_scores, random_cosines, cavs, accuracy = [], [], [], [], [], []
    for _ in range(runs):
        pick_c = torch.randperm(m_all, generator=gen)[:m_take]
        pick_n = m_all + torch.randperm(n.shape[0], generator=gen)[:k_take]
        weights, acc = fit(torch.cat([pick_c, pick_n]).numpy())
        s, cs = stats(weights)
        scores.append(s)
        cosines.append(cs)
        cavs.append(torch.from_numpy(weights).float())
        accuracy.append(acc)
        split = torch.randperm(pool.shape[0], generator=gen)[: m_take + k_take].numpy()
        s, cs = stats(fit(split)[0])
        random_scores.append(s)
        random_cosines.append(cs)
    scores_t, random_t = torch.stack(scores), torch.stack(random_scores)
    cos_t, random_cos_t = torch.stack(cosines), torch.stack(random_cosines)
    present = [k for k in range(num_classes) if masks[k].any()]
    return TCAVResult(
        scores=scores_t,
        random_scores=random_t,
        cosines=cos_t,
        random_cosines=random_cos_t,
        p_values={k: ttest_pvalue(scores_t[:, k], random_t[:, k]) for k in present},
        cosine_p_values={k: ttest_pvalue(cos_t[:, k], random_cos_t[:, k]) for k in present},
        accuracy=sum(accuracy) / len(accuracy),
        cavs=torch.stack(cavs),
    )
