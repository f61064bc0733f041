"""StrategyMonitor: strategy discovery (SpRAy-style clusters of predicted-class Grad-CAM maps per class) over training.

An exploratory signal, never a verdict: see :mod:`probelens.metrics.discovery` and ``docs/discovery.md``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning_utilities.core.rank_zero import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from probelens.core.base import MonitorCore, base_options
from probelens.core.options import check_choice, check_float, check_int, check_layer_spec, take_renamed
from probelens.core.run import Run
from probelens.core.writer import Box, Picture, colour_scale
from probelens.methods.engine import OutputTransform
from probelens.methods.grad_cam import grad_cam_map
from probelens.methods.layers import LayerSpec
from probelens.methods.layout import Layout
from probelens.metrics.discovery import ClassStrategies, DiscoveryReport, discover_strategies, map_features
from probelens.probe import ProbeSet
from probelens.render import Cell, apply_colormap, labelled_grid, normalize_maps, overlay_heatmap

EXPLORATORY_NOTE = (
    "strategy discovery is an exploratory signal, not a verdict: it clusters each class's predicted-class Grad-CAM "
    "maps (SpRAy) or features (SPARE-style) and shows the clusters' mean maps and prototypes; two clusters may be two "
    "strategies, one of them a shortcut, or two harmless poses of the object, and the two_strategies flag is not "
    "calibrated (on the project's families it was raised on clean models too). Judge from the pictures, on a probe "
    "balanced over what you suspect; docs/discovery.md gives the measured recovery of true spurious groups (none on "
    "imbalanced probes). Masks or group labels (ShortcutMonitor) or concept pictures (ConceptMonitor) give a verdict."
)


class StrategyCore(MonitorCore):
    """Strategy discovery over training: per class, clusters of the probe's attribution maps (SpRAy; Lapuschkin et
    al., 2019), with a flag when a class looks *decided in two distinct ways*.

    At each firing: predicted-class Grad-CAM at ``layer`` from the shared pass; per class (the probe's labels),
    :func:`probelens.metrics.discover_strategies` (maps downsampled to ``grid x grid`` and normalised, a
    k-nearest-neighbour graph, the spectral embedding of its normalised Laplacian, the eigengap choosing the number of
    clusters, seeded k-means). Logs, per class name ``<class>``:

    - ``discovery/<class>/clusters``: the number of clusters the eigengap chose;
    - ``discovery/<class>/eigengap``: the gap of the Laplacian's spectrum at that number;
    - ``discovery/<class>/largest_share``: the share of the class in its largest cluster;
    - ``discovery/<class>/two_strategies``: 1 when at least two well-separated clusters (gap >= ``min_eigengap``) each
      hold at least ``min_share`` of the class, else 0;
    - ``probelens/discovery/<class>``: one picture, a row per cluster: its mean map and its prototype (the medoid
      image, its own map overlaid), captioned with the cluster's size.

    **This claims no verdict.** It is an exploratory signal: which cluster, if any, is a shortcut is for a person to
    judge from the pictures. Measured on the project's generator families (``docs/discovery.md``): on a probe
    balanced over the background, the clusters of a pure background model partly recover the background groups
    (adjusted Rand index 0.37-0.59) and those of clean and object models do not; on an imbalanced probe (4 conflicting
    images of 40) they recover nothing (as Delzer & Bender, 2026, found for SpRAy); and the ``two_strategies`` flag,
    the cluster count and the eigengap did not separate shortcut from clean runs (the flag was raised on all of them).
    For a verdict use masks or group labels (``ShortcutMonitor``) or concept pictures (``ConceptMonitor``). The
    monitor says so once when it starts.

    Args:
        probe: the probe set (at least ``min_images`` images of a class for that class to be clustered; more is
            better: 32 or more per class).
        layers: the layer of the Grad-CAM maps: ``"auto"`` (the deepest conv stage) or one layer name.
        grid: side of the downsampled map grid.
        max_clusters: the most clusters the eigengap may choose per class.
        neighbours: ``k`` of the k-nearest-neighbour graph (``None``: ``max(2, round(sqrt(n_c)))``).
        min_share: the share of its class a cluster must hold to count as a strategy.
        min_eigengap: the eigengap needed for the clusters to count as well separated.
        min_images: classes with fewer probe images are not clustered (one cluster, flag 0).
        seed: the seed of k-means (the clustering is deterministic given it).
        source: what is clustered: ``"gradcam"`` (SpRAy: the maps) or ``"features"`` (SPARE-style, Yang et al.,
            2024: the layer's activations averaged over space, standardised within the class; most telling in early
            epochs). The picture shows each cluster's mean Grad-CAM map either way.
        every_n_epochs, every_n_steps, log_at_start, probe_size, probe_seed, probe_input_key, probe_target_key,
            max_image_side, max_bytes_per_firing, output_transform, name: as for :class:`ProbeMonitor`.
    """

    def __init__(
        self,
        probe: ProbeSet | None = None,
        layers: LayerSpec = "auto",
        *,
        grid: int = 8,
        max_clusters: int = 4,
        neighbours: int | None = None,
        min_share: float = 0.15,
        min_eigengap: float = 0.1,
        min_images: int = 6,
        seed: int = 0,
        source: Literal["gradcam", "features"] = "gradcam",
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        log_at_start: bool = False,
        probe_size: int = 64,
        probe_seed: int = 0,
        probe_input_key: str | None = None,
        probe_target_key: str | None = None,
        max_image_side: int | None = 1024,
        max_bytes_per_firing: int | None = None,
        output_transform: OutputTransform | None = None,
        name: str | None = None,
        **deprecated: Any,
    ) -> None:
        (layers,) = take_renamed(type(self).__name__, deprecated, {"layer": ("layers", layers, "auto")})
        super().__init__(probe, **base_options(locals()))
        owner = type(self).__name__
        check_layer_spec(owner, "layers", layers)
        check_int(owner, "grid", grid, minimum=2)
        check_int(owner, "max_clusters", max_clusters, minimum=2)
        check_int(owner, "neighbours", neighbours, none_ok=True, fix="None picks sqrt(images per class)")
        check_float(owner, "min_share", min_share, 0.0, 0.5)
        if min_share <= 0:
            raise ValueError(f"{owner}: min_share={min_share!r} is not allowed; pass a share in (0, 0.5], e.g. 0.15")
        check_float(owner, "min_eigengap", min_eigengap, 0.0, 1.0)
        check_int(owner, "min_images", min_images, minimum=3)
        check_int(owner, "seed", seed, minimum=0)
        check_choice(owner, "source", source, ("gradcam", "features"))
        self.source = source
        self.layer_spec = layers
        self.grid = grid
        self.max_clusters = max_clusters
        self.neighbours = neighbours
        self.min_share = float(min_share)
        self.min_eigengap = float(min_eigengap)
        self.min_images = min_images
        self.seed = seed
        self._layer: dict[str, nn.Module] = {}
        self._layouts: dict[str, Layout] = {}
        self._told = False
        self.reset_history()

    @override
    def reset_history(self) -> None:
        self.last_report: DiscoveryReport | None = None
        """The report of the last firing (for scripts and tests)."""

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, layer=repr(self.layer_spec), source=self.source)

    @override
    def configure(self, pl_module: nn.Module) -> None:
        assert self.probe is not None
        layers = self._resolve_layers(pl_module, self.layer_spec)
        if isinstance(self.layer_spec, str) and self.layer_spec == "auto":
            deepest = list(layers)[-1]
            layers = {deepest: layers[deepest]}
        if len(layers) != 1:
            raise ValueError(
                f"{self.name}: pass one layer for the discovery maps (layer='auto' takes the deepest conv stage), "
                f"got {list(layers)}"
            )
        self._layer, self._layouts = self._map_layers(pl_module, list(layers), needs_grad=True)
        self._require(self._layer, gradients=True, input_gradient=False, target_sets={"pred"})
        counts = torch.bincount(self.probe.targets.cpu())
        small = [self.probe.class_name(c) for c in range(len(counts)) if 0 < int(counts[c]) < self.min_images]
        if not self._told:
            self._told = True
            extra = (
                f" Classes {small} have fewer than min_images={self.min_images} probe images and are not clustered; "
                "use a larger probe (ProbeSet.from_dataset(..., num_samples=64, per_class=True))."
                if small
                else ""
            )
            rank_zero_info(f"{self.name}: {EXPLORATORY_NOTE}{extra}")

    @override
    def explain(self, step: int, pl_module: nn.Module, trainer: Run) -> None:
        assert self.probe is not None
        result = self._pass(pl_module, step)
        layer = next(iter(self._layer))
        layout = self._layouts[layer]
        # upsampled to the image as probelens.methods.grad_cam returns it, so the clusters are those of the
        # functional API's maps (docs/discovery.md measures those)
        cam = grad_cam_map(
            layout.to_nchw(result.activations[layer]),
            layout.to_nchw(result.gradients["pred"][layer]),
            self.probe.image_size,
        ).cpu()
        cam = self._finite(cam, f"Grad-CAM maps of {layer}", step)
        if self.source == "features":
            clustered = layout.to_nchw(result.activations[layer]).detach().float().mean((2, 3)).cpu()
            clustered = self._finite(clustered, f"features of {layer}", step)
        else:
            clustered = cam
        report = discover_strategies(
            clustered,
            self.probe.targets.cpu(),
            grid=self.grid,
            neighbours=self.neighbours,
            max_clusters=self.max_clusters,
            min_share=self.min_share,
            min_eigengap=self.min_eigengap,
            min_images=self.min_images,
            seed=self.seed,
        )
        self.last_report = report
        metrics: dict[str, float] = {}
        for c, found in report.classes.items():
            name = self.probe.class_name(c)
            metrics[f"discovery/{name}/clusters"] = float(found.num_clusters)
            metrics[f"discovery/{name}/eigengap"] = found.eigengap if found.eigenvalues.numel() else math.nan
            metrics[f"discovery/{name}/largest_share"] = found.largest_share
            metrics[f"discovery/{name}/two_strategies"] = float(found.two_strategies)
        self.writer.scalars(metrics, step)
        images = self.probe.display_images()
        predictions = result.predictions.cpu()
        cam_grid = map_features(cam, self.grid)  # the pictures' mean maps, whatever was clustered
        for c, found in report.classes.items():
            name = self.probe.class_name(c)
            members = [found.indices[found.clusters == j] for j in range(found.num_clusters)]
            means = torch.stack([cam_grid[m].mean(0) for m in members]).view(-1, 1, self.grid, self.grid).float()
            tag = f"probelens/discovery/{name}"
            self.writer.picture(self._picture(tag, step, name, found, means, cam, images, predictions))

    def _picture(
        self,
        tag: str,
        step: int,
        name: str,
        found: ClassStrategies,
        means: Tensor,
        cam: Tensor,
        images: Tensor,
        predictions: Tensor,
    ) -> Picture:
        """One class's picture: per cluster its mean map ``means [k,1,g,g]`` and its prototype with its map. The
        prototypes' cells are recorded (probe index, cell and map box); the mean maps belong to no probe image."""
        assert self.probe is not None
        size = self.probe.image_size
        protos = torch.tensor(found.prototypes, dtype=torch.long)
        proto_images, proto_maps = images[protos].clone(), cam[protos].clone()
        proto_preds = [self.probe.class_name(int(predictions[i])) for i in found.prototypes]
        total = sum(found.sizes)
        flag = "two strategies?" if found.two_strategies else "one strategy"
        title = (
            f"{name}: {found.num_clusters} cluster(s), eigengap {found.eigengap:.2f}, {flag} "
            "(exploratory, not a verdict)"
        )
        captions = []
        for j, (size_j, index) in enumerate(zip(found.sizes, found.prototypes)):
            captions.append(f"cluster {j}: mean map\n{size_j}/{total} images ({size_j / max(1, total):.0%})")
            captions.append(f"cluster {j}: prototype #{index}\npred {proto_preds[j]}")

        mean_heat = F.interpolate(normalize_maps(means.cpu(), vmin=0.0), size=size, mode="nearest")
        mean_tiles = apply_colormap(mean_heat[:, 0])
        overlays = overlay_heatmap(proto_images, normalize_maps(proto_maps.cpu(), vmin=0.0))
        tiles = torch.stack([mean_tiles, overlays], dim=1).flatten(0, 1)
        boxes: list[Box] = []
        map_boxes: list[Box] = []
        grid = labelled_grid(tiles, captions, ncol=2, title=title, cell_boxes=boxes, map_boxes=map_boxes)
        cells = tuple(Cell(int(k), *boxes[2 * j + 1]) for j, k in enumerate(found.prototypes))
        maps = tuple(Cell(int(k), *map_boxes[2 * j + 1]) for j, k in enumerate(found.prototypes))
        return Picture(tag, step, grid, cells, maps, scale=colour_scale("jet"))
