"""Strategy discovery from the data alone: spectral clustering of attribution maps per class (torch only).

SpRAy (Lapuschkin et al., 2019, "Unmasking Clever Hans predictors and assessing what machines really learn"): per
class, the attribution maps of that class's images are downsampled to a small fixed grid and normalised, a symmetric
k-nearest-neighbour graph joins similar maps, the graph is embedded with the eigenvectors of its normalised Laplacian
``L = I - D^-1/2 W D^-1/2`` (Ng, Jordan & Weiss, 2001), the eigengap of ``L`` chooses the number of clusters, and
k-means (seeded, k-means++ starts) clusters the embedding. Two or more well-separated clusters of substantial size
mean the class may be *decided in two distinct ways* (one of which may be a shortcut). SPARE-style discovery (Yang et
al., 2024, "Identifying spurious biases early in training") clusters early-training features instead of maps: pass
``[N, D]`` features (e.g. pooled activations) to :func:`discover_strategies`, which clusters them the same way.

This is an exploratory signal, not a verdict: which cluster (if any) is the shortcut, and whether two clusters mean two
strategies, is for a person to judge from the mean maps and prototypes. ``docs/discovery.md`` measures how well the
clusters recover the true spurious groups on the project's generator families, and where they do not.

Also here: :func:`adjusted_rand_index` (Hubert & Arabie, 1985) to score a clustering against ground-truth groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _fail(option: str, value: object, fix: str) -> ValueError:
    return ValueError(f"{option}={value!r} is not allowed; {fix}")


def _check_count(option: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(option, value, f"pass an int >= {minimum}")
    return value


def _check_share(option: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
        raise _fail(option, value, f"pass a number in [{low}, {high}]")
    return float(value)


def map_features(maps: Tensor, grid: int = 8) -> Tensor:
    """Attribution maps as SpRAy's feature vectors: downsampled to ``grid x grid`` (area average) and normalised to
    sum 1 (a distribution of relevance over the grid cells, so the overall magnitude does not matter).

    A map with no positive relevance (all zero, e.g. a dead Grad-CAM) stays all zero: "no evidence" is a pattern of
    its own. Negative values are clipped to 0 (Grad-CAM is already non-negative).

    Args:
        maps: ``[N,1,H,W]``, ``[N,H,W]`` or ``[N,C,H,W]`` (channels summed) finite maps.
        grid: side of the downsampled grid (SpRAy used small thumbnails; 8 keeps a 64 px image's layout).

    Returns:
        float64 ``[N, grid * grid]``.

    Example:
        >>> m = torch.zeros(1, 1, 4, 4); m[0, 0, :2, :2] = 1.0
        >>> map_features(m, grid=2).tolist()
        [[1.0, 0.0, 0.0, 0.0]]
    """
    _check_count("grid", grid, 1)
    if not isinstance(maps, Tensor) or maps.dim() not in (3, 4) or maps.shape[0] == 0:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise _fail("maps", shape, "pass a non-empty tensor of maps [N,1,H,W] or [N,H,W]")
    x = maps.detach().double()
    if x.dim() == 3:
        x = x[:, None]
    elif x.shape[1] != 1:
        x = x.sum(1, keepdim=True)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("maps hold NaN or Inf values; clean them first (e.g. torch.nan_to_num) or skip this step")
    x = F.adaptive_avg_pool2d(x.clamp_min(0.0), (grid, grid)).flatten(1)
    total = x.sum(1, keepdim=True)
    return torch.where(total > 0, x / total.clamp_min(1e-300), torch.zeros_like(x))


def feature_scale(features: Tensor) -> tuple[Tensor, Tensor]:
    """The centre and spread with which :func:`discover_strategies` standardises ``[n, D]`` features within a class:
    per dimension the mean and the population standard deviation (at least ``1e-12``, so a constant dimension stays
    0). Apply as ``(x - centre) / spread``, also to other points placed among them."""
    return features.mean(0), features.std(0, unbiased=False).clamp_min(1e-12)


def knn_affinity(features: Tensor, neighbours: int) -> Tensor:
    """Symmetric binary k-nearest-neighbour graph: ``W[i,j] = 1`` when ``j`` is among the ``neighbours`` nearest
    points of ``i`` (Euclidean distance, itself excluded; ties broken by index) or ``i`` among those of ``j``.

    Args:
        features: ``[n, d]``.
        neighbours: ``k``, in ``[1, n - 1]``.

    Returns:
        float64 ``[n, n]``, symmetric, zero diagonal.
    """
    if features.dim() != 2:
        raise _fail("features", tuple(features.shape), "pass a 2-d tensor [n, d]")
    n = features.shape[0]
    _check_count("neighbours", neighbours, 1)
    if neighbours > n - 1:
        raise _fail("neighbours", neighbours, f"pass at most n - 1 = {n - 1} for {n} points")
    x = features.double()
    distances = torch.cdist(x, x)
    distances.fill_diagonal_(math.inf)
    order = torch.argsort(distances, dim=1, stable=True)[:, :neighbours]
    w = torch.zeros(n, n, dtype=torch.float64, device=features.device)
    w.scatter_(1, order, 1.0)
    return torch.maximum(w, w.T)


def laplacian_spectrum(affinity: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` smallest eigenvalues (ascending) of the symmetric normalised Laplacian
    ``L = I - D^-1/2 W D^-1/2`` of ``affinity`` and their eigenvectors ``[n, count]``.

    The multiplicity of the eigenvalue 0 is the number of connected components of the graph (von Luxburg, 2007,
    Prop. 4); a large gap after the ``k``-th eigenvalue says the graph has ``k`` well-separated clusters. Nodes of
    degree 0 keep a zero row (they are their own component).
    """
    n = affinity.shape[0]
    if affinity.dim() != 2 or affinity.shape[1] != n:
        raise _fail("affinity", tuple(affinity.shape), "pass a square matrix [n, n]")
    w = affinity.double()
    degree = w.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-300).rsqrt(), torch.zeros_like(degree))
    laplacian = torch.eye(n, dtype=torch.float64, device=w.device) - inv_sqrt[:, None] * w * inv_sqrt[None, :]
    laplacian = (laplacian + laplacian.T) / 2
    values, vectors = torch.linalg.eigh(laplacian)
    count = min(count, n)
    return values[:count].clamp_min(0.0), vectors[:, :count]


def choose_clusters(eigenvalues: Tensor, max_clusters: int) -> tuple[int, float]:
    """The eigengap heuristic: ``k = argmax_{1 <= k <= max_clusters} (lambda_k - lambda_{k-1})`` over the ascending
    eigenvalues ``lambda_0 <= lambda_1 <= ...`` (0-indexed), and that gap. ``k = 1`` when the largest gap is the
    first one (a single group); ties go to the smaller ``k``."""
    usable = min(max_clusters, eigenvalues.numel() - 1)
    if usable < 1:
        return 1, 0.0
    gaps = eigenvalues[1 : usable + 1] - eigenvalues[:usable]
    k = int(torch.argmax(gaps)) + 1  # argmax returns the first of equal maxima
    return k, float(gaps[k - 1])


def kmeans(points: Tensor, clusters: int, *, seed: int = 0, restarts: int = 10, iterations: int = 100) -> Tensor:
    """Lloyd's k-means with k-means++ starts (Arthur & Vassilvitskii, 2007) from a private generator seeded with
    ``seed``; the best of ``restarts`` runs (lowest within-cluster sum of squares) wins.

    Labels are renumbered in order of first appearance (the first point is in cluster 0), so equal partitions give
    equal labels. Deterministic given ``seed``; the global RNG is untouched.

    Returns:
        int64 ``[n]`` labels in ``[0, clusters)``.
    """
    n = points.shape[0]
    _check_count("clusters", clusters, 1)
    if clusters > n:
        raise _fail("clusters", clusters, f"pass at most the number of points ({n})")
    x = points.double().cpu()
    g = torch.Generator().manual_seed(int(seed))
    best_labels, best_inertia = torch.zeros(n, dtype=torch.long), math.inf
    for _ in range(max(1, restarts)):
        centres = x[torch.randint(n, (1,), generator=g)]
        for _ in range(1, clusters):
            d2 = torch.cdist(x, centres).min(1).values ** 2
            if float(d2.sum()) <= 0:
                pick = torch.randint(n, (1,), generator=g)
            else:
                pick = torch.multinomial(d2 / d2.sum(), 1, generator=g)
            centres = torch.cat([centres, x[pick]])
        labels = torch.cdist(x, centres).argmin(1)
        for _ in range(iterations):
            for c in range(clusters):
                members = labels == c
                if bool(members.any()):
                    centres[c] = x[members].mean(0)
            new = torch.cdist(x, centres).argmin(1)
            if torch.equal(new, labels):
                break
            labels = new
        inertia = float(((x - centres[labels]) ** 2).sum())
        if inertia < best_inertia - 1e-12:
            best_inertia, best_labels = inertia, labels.clone()
    return _renumber(best_labels)


def _renumber(labels: Tensor) -> Tensor:
    mapping: dict[int, int] = {}
    for v in labels.tolist():
        mapping.setdefault(int(v), len(mapping))
    return torch.tensor([mapping[int(v)] for v in labels.tolist()], dtype=torch.long)


def spectral_clusters(
    features: Tensor,
    *,
    neighbours: int,
    max_clusters: int,
    seed: int = 0,
    clusters: int | None = None,
) -> tuple[Tensor, Tensor, float]:
    """Spectral clustering (Ng, Jordan & Weiss, 2001) of ``features [n, d]`` on a :func:`knn_affinity` graph: the
    first ``k`` eigenvectors of :func:`laplacian_spectrum`, rows scaled to unit length, clustered by :func:`kmeans`.
    ``k`` is ``clusters`` when given, else chosen by :func:`choose_clusters` (the eigengap).

    Returns:
        ``(labels [n], eigenvalues [min(n, max_clusters + 1)], gap at the chosen k)``.
    """
    affinity = knn_affinity(features, neighbours)
    values, vectors = laplacian_spectrum(affinity, max(max_clusters, clusters or 1) + 1)
    if clusters is None:
        k, gap = choose_clusters(values, max_clusters)
    else:
        k = clusters
        gap = float(values[k] - values[k - 1]) if 0 < k < values.numel() else 0.0
    if k == 1:
        return torch.zeros(features.shape[0], dtype=torch.long), values.cpu(), gap
    embedding = vectors[:, :k].cpu()
    embedding = embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return kmeans(embedding, k, seed=seed), values.cpu(), gap


@dataclass(frozen=True)
class ClassStrategies:
    """What :func:`discover_strategies` found in one class.

    Attributes:
        label: the class index.
        indices: int64 ``[n]``, the positions (in the input) of this class's images.
        clusters: int64 ``[n]``, the cluster of each of them (``0 .. num_clusters - 1``).
        sizes: images per cluster.
        eigenvalues: the smallest eigenvalues of the graph Laplacian, ascending (the eigengap spectrum); empty when
            the class had too few images to cluster.
        eigengap: the gap ``lambda_k - lambda_{k-1}`` at the chosen number of clusters ``k`` (0 for one cluster by
            default).
        mean_maps: float64 ``[num_clusters, grid, grid]``, each cluster's mean normalised map (``[k, D]`` features
            when features, not maps, were clustered).
        prototypes: per cluster, the position (in the input) of its medoid: the member with the smallest summed
            distance to the other members.
        two_strategies: the class is decided in two distinct ways: at least 2 clusters by the eigengap, the gap at
            least ``min_eigengap``, and at least two clusters each holding ``min_share`` of the class.
    """

    label: int
    indices: Tensor
    clusters: Tensor
    sizes: list[int]
    eigenvalues: Tensor
    eigengap: float
    mean_maps: Tensor
    prototypes: list[int]
    two_strategies: bool

    @property
    def num_clusters(self) -> int:
        return len(self.sizes)

    @property
    def largest_share(self) -> float:
        """The share of the class's images in its largest cluster (1.0 for one cluster)."""
        return max(self.sizes) / max(1, sum(self.sizes))


@dataclass(frozen=True)
class DiscoveryReport:
    """Per class, the strategies :func:`discover_strategies` found (``classes[c]``), and the clustering options."""

    classes: dict[int, ClassStrategies]
    grid: int
    min_share: float
    min_eigengap: float

    def labels(self, n: int) -> Tensor:
        """Every input image's cluster ``[n]`` (clusters are numbered within each class)."""
        out = torch.full((n,), -1, dtype=torch.long)
        for found in self.classes.values():
            out[found.indices] = found.clusters
        return out

    @property
    def flagged(self) -> list[int]:
        """The classes decided in two distinct ways."""
        return [c for c, found in self.classes.items() if found.two_strategies]


def _medoid(features: Tensor) -> int:
    return int(torch.cdist(features, features).sum(1).argmin())


def discover_strategies(
    maps: Tensor,
    classes: Tensor,
    *,
    grid: int = 8,
    neighbours: int | None = None,
    max_clusters: int = 4,
    min_share: float = 0.15,
    min_eigengap: float = 0.1,
    min_images: int = 6,
    seed: int = 0,
) -> DiscoveryReport:
    """SpRAy per class: cluster the attribution maps (or features) of each class's images and report the strategies.

    Per class ``c`` with ``n_c >= min_images`` images: maps -> :func:`map_features` (``grid x grid``, sum 1); features
    ``[N, D]`` are standardised per dimension instead (SPARE-style). Then :func:`spectral_clusters` with
    ``neighbours`` (default ``max(2, round(sqrt(n_c)))``, at most ``n_c - 1``) and the eigengap over at most
    ``max_clusters`` clusters. Classes with fewer images get one cluster and an empty spectrum.

    Args:
        maps: ``[N,1,H,W]``/``[N,H,W]`` non-negative attribution maps (e.g. predicted-class Grad-CAM), or ``[N, D]``
            features.
        classes: int64 ``[N]``, the class each image is grouped by (its label).
        grid: side of the downsampled map grid.
        neighbours: ``k`` of the k-nearest-neighbour graph (``None``: ``max(2, round(sqrt(n_c)))``).
        max_clusters: the most clusters the eigengap may choose (``>= 2``).
        min_share: the share of its class a cluster must hold to count as a strategy, in ``(0, 0.5]``.
        min_eigengap: the gap the eigengap must show for the clusters to count as well separated, in ``[0, 1]``.
        min_images: classes with fewer images are not clustered.
        seed: the seed of k-means.

    Returns:
        A :class:`DiscoveryReport`.

    Example:
        >>> maps = torch.zeros(12, 1, 8, 8); maps[:6, :, :4] = 1.0; maps[6:, :, 4:] = 1.0  # top half vs bottom half
        >>> found = discover_strategies(maps, torch.zeros(12, dtype=torch.long), grid=4).classes[0]
        >>> found.sizes, found.two_strategies
        ([6, 6], True)
    """
    _check_count("grid", grid, 1)
    _check_count("max_clusters", max_clusters, 2)
    _check_count("min_images", min_images, 3)
    if neighbours is not None:
        _check_count("neighbours", neighbours, 1)
    min_share = _check_share("min_share", min_share, 1e-9, 0.5)
    min_eigengap = _check_share("min_eigengap", min_eigengap, 0.0, 1.0)
    if not isinstance(classes, Tensor) or classes.dim() != 1 or classes.dtype not in (torch.int32, torch.int64):
        what = (tuple(classes.shape), classes.dtype) if isinstance(classes, Tensor) else type(classes).__name__
        raise _fail("classes", what, "pass an int64 tensor [N] of class indices (e.g. probe.targets)")
    if not isinstance(maps, Tensor) or maps.dim() not in (2, 3, 4) or maps.shape[0] != classes.shape[0]:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise _fail(
            "maps", shape, f"pass [N,1,H,W] maps or [N,D] features with N = {classes.shape[0]} (one per class entry)"
        )
    if maps.dim() == 2:
        if not bool(torch.isfinite(maps).all()):
            raise ValueError("features hold NaN or Inf values; clean them first or skip this step")
        features = maps.detach().double().cpu()
    else:
        features = map_features(maps, grid).cpu()
    labels = classes.detach().cpu().long()
    found: dict[int, ClassStrategies] = {}
    for c in labels.unique().tolist():
        index = torch.nonzero(labels == c).flatten()
        x = features[index]
        if maps.dim() == 2:  # SPARE-style features: standardised within the class
            centre, spread = feature_scale(x)
            x = (x - centre) / spread
        n = len(index)
        if n < min_images:
            assignment, values, gap, k = torch.zeros(n, dtype=torch.long), torch.zeros(0), 0.0, 1
        else:
            knn = min(n - 1, neighbours if neighbours is not None else max(2, round(math.sqrt(n))))
            assignment, values, gap = spectral_clusters(x, neighbours=knn, max_clusters=max_clusters, seed=seed)
            k = int(assignment.max()) + 1
        sizes = [int((assignment == j).sum()) for j in range(k)]
        means = torch.stack([x[assignment == j].mean(0) for j in range(k)])
        if maps.dim() != 2:
            means = means.view(k, grid, grid)
        prototypes = [int(index[assignment == j][_medoid(x[assignment == j])]) for j in range(k)]
        big = sum(size >= min_share * n for size in sizes)
        found[int(c)] = ClassStrategies(
            label=int(c),
            indices=index,
            clusters=assignment,
            sizes=sizes,
            eigenvalues=values,
            eigengap=gap,
            mean_maps=means,
            prototypes=prototypes,
            two_strategies=k >= 2 and gap >= min_eigengap and big >= 2,
        )
    return DiscoveryReport(found, grid, min_share, min_eigengap)


def adjusted_rand_index(labels_true: Tensor, labels_pred: Tensor) -> float:
    """The adjusted Rand index (Hubert & Arabie, 1985) of two partitions of the same ``n`` items.

    From the pair counts (``tp``: pairs together in both, ``fp``/``fn``: together in one only, ``tn``: apart in both):
    ``ARI = 2 (tp tn - fn fp) / ((tp + fn)(fn + tn) + (tp + fp)(fp + tn))``; 1 for identical partitions (up to
    renaming), about 0 for independent ones, negative below chance. Two identical trivial partitions score 1.
    Exact integer arithmetic.

    Example:
        >>> adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 5, 2, 2]))
        1.0
    """
    a = torch.as_tensor(labels_true).flatten().cpu()
    b = torch.as_tensor(labels_pred).flatten().cpu()
    if a.shape != b.shape:
        raise _fail("labels_pred", tuple(b.shape), f"pass as many labels as labels_true ({a.numel()})")
    n = a.numel()
    if n == 0:
        raise _fail("labels_true", (), "pass at least one label")
    _, ai = torch.unique(a, return_inverse=True)
    _, bi = torch.unique(b, return_inverse=True)
    table = torch.zeros(int(ai.max()) + 1, int(bi.max()) + 1, dtype=torch.long)
    table.index_put_((ai, bi), torch.ones(n, dtype=torch.long), accumulate=True)
    together = int((table * table).sum()) - n  # ordered pairs together in both
    rows, cols = table.sum(1), table.sum(0)
    tp = together
    fp = int((cols * cols).sum()) - n - tp
    fn = int((rows * rows).sum()) - n - tp
    tn = n * n - fp - fn - tp - n
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
