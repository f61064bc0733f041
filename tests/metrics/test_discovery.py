"""Strategy discovery (SpRAy-style): the pure functions, against hand derivations and scikit-learn."""

from __future__ import annotations

import math

import pytest
import torch

from probelens.metrics.discovery import (
    adjusted_rand_index,
    choose_clusters,
    discover_strategies,
    kmeans,
    knn_affinity,
    laplacian_spectrum,
    map_features,
    spectral_clusters,
)


def blobs(sizes, dim=4, spread=0.05, seed=0):
    """Points around well-separated centres, shuffled; returns (points, true labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[: len(sizes)] * 3.0
    x = torch.cat([centres[i] + spread * torch.randn(n, dim, generator=g) for i, n in enumerate(sizes)])
    y = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    order = torch.randperm(len(y), generator=g)
    return x[order].double(), y[order]


def block_maps(groups, size=16, seed=0, noise=0.05):
    """Grad-CAM-like maps: group j is relevance in one quadrant (plus noise); returns (maps, groups)."""
    g = torch.Generator().manual_seed(seed)
    maps = noise * torch.rand(len(groups), 1, size, size, generator=g)
    h = size // 2
    quadrants = [(slice(0, h), slice(0, h)), (slice(h, None), slice(h, None)), (slice(0, h), slice(h, None))]
    for i, j in enumerate(groups.tolist()):
        ys, xs = quadrants[j]
        maps[i, 0, ys, xs] += 1.0
    return maps, groups


# ---------------------------------------------------------------- the graph and its spectrum: hand derivations
def test_disconnected_components_give_zero_eigenvalues_of_their_multiplicity():
    """von Luxburg (2007), Prop. 4: the multiplicity of eigenvalue 0 of L_sym is the number of components. Three
    cliques (sizes 3, 4, 5): three zeros; the next eigenvalue of a clique K_m's L_sym is m / (m - 1)."""
    sizes = [3, 4, 5]
    n = sum(sizes)
    w = torch.zeros(n, n, dtype=torch.float64)
    start = 0
    for m in sizes:
        w[start : start + m, start : start + m] = 1.0
        start += m
    w.fill_diagonal_(0.0)
    values, vectors = laplacian_spectrum(w, 5)
    assert torch.allclose(values[:3], torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert float(values[3]) == pytest.approx(5 / 4)  # the smallest nonzero: K_5's 5/4 (< K_4's 4/3 < K_3's 3/2)
    assert choose_clusters(values, 4) == (3, pytest.approx(5 / 4))
    # the null space is spanned by D^1/2 1_component: rows of one component are parallel in the embedding
    labels = kmeans(vectors[:, :3] / vectors[:, :3].norm(dim=1, keepdim=True), 3, seed=0)
    assert labels.tolist() == [0] * 3 + [1] * 4 + [2] * 5


def test_path_graph_spectrum_matches_its_closed_form():
    """A path graph P_n's normalised Laplacian has eigenvalues 1 - cos(pi k / (n - 1)), k = 0..n-1 (Chung, 1997)."""
    n = 7
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n - 1):
        w[i, i + 1] = w[i + 1, i] = 1.0
    values, _ = laplacian_spectrum(w, n)
    expected = torch.tensor([1 - math.cos(math.pi * k / (n - 1)) for k in range(n)], dtype=torch.float64)
    assert torch.allclose(values, expected, atol=1e-10)


def test_knn_graph_is_symmetric_and_joins_each_point_to_its_nearest():
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    w = knn_affinity(x, 1)
    # nearest: 0->1, 1->0, 2->1, 3->2; symmetrised
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for i, j in [(0, 1), (2, 1), (3, 2)]:
        expected[i, j] = expected[j, i] = 1.0
    assert torch.equal(w, expected)


def test_toy_graph_with_known_components_is_recovered_exactly():
    x, y = blobs([10, 14, 8])
    labels, values, gap = spectral_clusters(x, neighbours=3, max_clusters=5, seed=0)
    assert adjusted_rand_index(y, labels) == 1.0
    assert int(labels.max()) + 1 == 3
    # three components: three zero eigenvalues, then the gap up to the smallest nonzero one
    assert float(values[:3].max()) < 1e-9 and gap == pytest.approx(float(values[3])) and gap > 0.1


def test_map_features_pool_and_normalise():
    maps = torch.zeros(2, 1, 8, 8)
    maps[0, 0, :4, :4] = 2.0  # top-left quadrant
    f = map_features(maps, grid=2)
    assert f[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert f[1].tolist() == [0.0] * 4  # no relevance: stays zero
    assert torch.allclose(map_features(maps * 7.0, grid=2), f)  # scale does not matter


# ---------------------------------------------------------------- independent reference: scikit-learn
def test_adjusted_rand_index_equals_scikit_learn_on_random_partitions():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        n = int(torch.randint(1, 60, (1,), generator=g))
        a = torch.randint(0, int(torch.randint(1, 6, (1,), generator=g)), (n,), generator=g)
        b = torch.randint(0, int(torch.randint(1, 6, (1,), generator=g)), (n,), generator=g)
        assert adjusted_rand_index(a, b) == pytest.approx(metrics.adjusted_rand_score(a.numpy(), b.numpy()), abs=1e-12)


def test_adjusted_rand_index_known_values():
    assert adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 0, 0])) == 1.0
    # Hubert & Arabie's formula by hand: n=4, one pair together in both of 2+2 vs 2+1+1
    # index=1, expected = (2 * 1) / 6 = 1/3, max = (2 + 1) / 2 = 3/2 -> (1 - 1/3) / (3/2 - 1/3) = 4/7
    assert adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 2])) == pytest.approx(4 / 7)


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # separated blobs: by design
def test_spectral_clusters_agree_with_scikit_learn_spectral_clustering():
    cluster = pytest.importorskip("sklearn.cluster")
    metrics = pytest.importorskip("sklearn.metrics")
    for seed, sizes in [(0, [12, 20]), (1, [15, 15, 10]), (2, [8, 25, 12, 9])]:
        x, y = blobs(sizes, spread=0.3, seed=seed)
        k = len(sizes)
        ours, _, _ = spectral_clusters(x, neighbours=5, max_clusters=k, seed=0, clusters=k)
        theirs = cluster.SpectralClustering(
            n_clusters=k, affinity="nearest_neighbors", n_neighbors=6, random_state=0, assign_labels="kmeans"
        ).fit_predict(x.numpy())
        assert metrics.adjusted_rand_score(theirs, ours.numpy()) == pytest.approx(1.0)
        assert adjusted_rand_index(y, ours) == pytest.approx(metrics.adjusted_rand_score(y.numpy(), theirs))


def test_kmeans_matches_scikit_learn_on_separated_blobs():
    cluster = pytest.importorskip("sklearn.cluster")
    x, y = blobs([30, 20, 25], spread=0.4, seed=3)
    ours = kmeans(x, 3, seed=0)
    theirs = cluster.KMeans(3, n_init=10, random_state=0).fit_predict(x.numpy())
    assert adjusted_rand_index(torch.from_numpy(theirs), ours) == 1.0
    assert adjusted_rand_index(y, ours) == 1.0


# ---------------------------------------------------------------- the report
def test_two_strategies_in_one_class_are_found_and_flagged_the_other_class_is_not():
    groups = torch.tensor([0] * 14 + [1] * 10 + [0] * 24)
    classes = torch.tensor([0] * 24 + [1] * 24)
    maps, _ = block_maps(groups)
    report = discover_strategies(maps, classes, grid=4, seed=0)
    two, one = report.classes[0], report.classes[1]
    assert two.two_strategies and sorted(two.sizes) == [10, 14]
    assert adjusted_rand_index(groups[:24], two.clusters) == 1.0
    assert two.eigengap > 0.1 and two.largest_share == pytest.approx(14 / 24)
    # each cluster's mean map has its relevance in its own quadrant; each prototype is one of its members
    for j, proto in enumerate(two.prototypes):
        assert int(two.clusters[two.indices.tolist().index(proto)]) == j
    tops = {int(m.argmax()) for m in two.mean_maps.flatten(1)}
    assert len(tops) == 2
    assert report.flagged == [0]
    assert not one.two_strategies and report.labels(48).shape == (48,)


def test_a_small_minority_is_not_a_strategy():
    """A cluster below min_share does not count: the flag needs two substantial clusters."""
    groups = torch.tensor([0] * 20 + [1] * 3)
    maps, _ = block_maps(groups, noise=0.0)  # identical maps per group: the 2-NN graph has exactly 2 components
    classes = torch.zeros(23, dtype=torch.long)
    strict = discover_strategies(maps, classes, grid=4, neighbours=2, min_share=0.15).classes[0]
    assert adjusted_rand_index(groups, strict.clusters) == 1.0  # found: a cluster of 3 ...
    assert not strict.two_strategies  # ... but 3/23 < 0.15 of the class
    assert discover_strategies(maps, classes, grid=4, neighbours=2, min_share=0.1).classes[0].two_strategies


def test_features_are_clustered_spare_style():
    x, y = blobs([12, 12], dim=6, spread=0.2, seed=4)
    found = discover_strategies(x.float(), torch.zeros(24, dtype=torch.long), seed=0).classes[0]
    assert adjusted_rand_index(y, found.clusters) == 1.0 and found.mean_maps.shape == (2, 6)


def test_deterministic_given_the_seed_and_the_global_rng_untouched():
    groups = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(5))
    maps, _ = block_maps(groups, seed=5)
    maps = maps + 0.6 * torch.rand(maps.shape, generator=torch.Generator().manual_seed(6))  # overlapping clusters
    classes = torch.zeros(40, dtype=torch.long)
    state = torch.random.get_rng_state()
    a = discover_strategies(maps, classes, seed=3).classes[0]
    b = discover_strategies(maps, classes, seed=3).classes[0]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.clusters, b.clusters) and a.prototypes == b.prototypes
    assert torch.equal(a.eigenvalues, b.eigenvalues)


def test_a_class_too_small_to_cluster_gets_one_cluster():
    maps, _ = block_maps(torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]))
    report = discover_strategies(maps, torch.tensor([0, 0, 0, 0, 0, 1, 1, 1]), grid=4, min_images=4)
    small = report.classes[1]
    assert small.sizes == [3] and small.eigenvalues.numel() == 0 and not small.two_strategies


# ---------------------------------------------------------------- bad inputs: refused, naming the value and the fix
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grid": 0}, r"grid=0 .*int >= 1"),
        ({"max_clusters": 1}, r"max_clusters=1 .*int >= 2"),
        ({"min_share": 0.7}, r"min_share=0.7 .*\[1e-09, 0.5\]"),
        ({"min_eigengap": -0.1}, r"min_eigengap=-0.1 .*\[0.0, 1.0\]"),
        ({"neighbours": 0}, r"neighbours=0 .*int >= 1"),
        ({"min_images": 2}, r"min_images=2 .*int >= 3"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    maps, _ = block_maps(torch.tensor([0, 1] * 5))
    with pytest.raises(ValueError, match=match):
        discover_strategies(maps, torch.zeros(10, dtype=torch.long), **kwargs)


def test_bad_inputs_are_refused_with_the_value_and_the_fix():
    maps, _ = block_maps(torch.tensor([0, 1] * 5))
    with pytest.raises(ValueError, match=r"classes=\(\(10,\), torch.float32\).*int64 tensor \[N\]"):
        discover_strategies(maps, torch.zeros(10))
    with pytest.raises(ValueError, match=r"maps=\(9, 1, 16, 16\).*N = 10"):
        discover_strategies(maps[:9], torch.zeros(10, dtype=torch.long))
    bad = maps.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"NaN or Inf.*nan_to_num"):
        discover_strategies(bad, torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"neighbours=10 .*at most n - 1 = 9"):
        knn_affinity(torch.rand(10, 3), 10)
    with pytest.raises(ValueError, match=r"clusters=5 .*number of points \(4\)"):
        kmeans(torch.rand(4, 2), 5)
    with pytest.raises(ValueError, match=r"labels_pred=\(3,\).*as many labels as labels_true \(4\)"):
        adjusted_rand_index(torch.zeros(4), torch.zeros(3))


def test_dead_maps_are_one_cluster_not_a_crash():
    """An untrained or dead model gives all-zero Grad-CAM maps: identical points, one cluster, no flag."""
    found = discover_strategies(torch.zeros(10, 1, 8, 8), torch.zeros(10, dtype=torch.long)).classes[0]
    assert found.sizes == [10] and not found.two_strategies and found.largest_share == 1.0
    assert found.mean_maps.abs().sum() == 0
