"""StrategyMonitor: strategy discovery (SpRAy-style clusters of predicted-class Grad-CAM maps per class) over training.

An exploratory signal, never a verdict: see :mod:`probelens.metrics.discovery` and ``docs/discovery.md``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from probelens.core.base import MonitorCore, base_options
from probelens.core.checks import check_probe_fits
from probelens.core.options import check_choice, check_float, check_int, check_layer_spec, take_renamed
from probelens.core.probe_source import clamp_to_dataset, first_map_dataset, sample_dataset
from probelens.core.run import Run
from probelens.core.session import PassNeeds, SharedPass
from probelens.core.writer import Box, Picture, colour_scale
from probelens.logformat import tag_segment
from probelens.methods.engine import OutputTransform
from probelens.methods.grad_cam import grad_cam_map
from probelens.methods.layers import LayerSpec, unwrap_compiled
from probelens.methods.layout import Layout
from probelens.metrics.discovery import (
    ClassStrategies,
    DiscoveryReport,
    discover_strategies,
    feature_scale,
    map_features,
)
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
        discovery_size: with ``source="features"``, cluster a larger forward-only *discovery set* of this many
            images (class-balanced, seeded) drawn from the trainer's validation dataset when training starts (or at
            the first firing of ``trainer.validate``/``test`` without a fit), instead of the probe; the pictures then
            show per cluster the mean Grad-CAM map of the probe images nearest it and the cluster's prototype.
            Measured (``docs/discovery.md``): it does not recover a minority group under imbalance either. ``None``
            (default): cluster the probe.
        discovery_set: the discovery set itself (a :class:`ProbeSet`, e.g. for a ``Lens``, which has no loaders to
            draw from); with ``source="features"``, instead of ``discovery_size``.
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
        discovery_size: int | None = None,
        discovery_set: ProbeSet | None = None,
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
        check_int(owner, "discovery_size", discovery_size, minimum=2 * min_images, none_ok=True,
                  fix="None clusters the probe")  # fmt: skip
        if discovery_set is not None and not isinstance(discovery_set, ProbeSet):
            raise TypeError(
                f"{owner}: discovery_set is a {type(discovery_set).__name__}; pass a ProbeSet, e.g. "
                "ProbeSet.from_dataset(val_dataset, num_samples=512), or discovery_size=512 to draw one from the "
                "trainer's validation data"
            )
        if discovery_size is not None and discovery_set is not None:
            raise ValueError(
                f"{owner}: discovery_size={discovery_size} and a discovery_set were both given; pass one: "
                "discovery_size draws the set from the trainer's validation data, discovery_set is the set itself"
            )
        if source != "features" and (discovery_size is not None or discovery_set is not None):
            given = "discovery_set" if discovery_set is not None else f"discovery_size={discovery_size}"
            raise ValueError(
                f"{owner}: {given} clusters a forward-only set, which has no Grad-CAM maps (a map needs a backward "
                f"pass per image), but source={source!r}; pass source='features' (SPARE-style pooled features) with "
                "it, or a larger probe (probe_size=...) for clusters of Grad-CAM maps"
            )
        self.source = source
        self.discovery_size = discovery_size
        self._discovery_given = discovery_set is not None
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
        self.discovery_set: ProbeSet | None = discovery_set
        """The forward-only discovery set (``discovery_set``, or ``discovery_size`` images of the trainer's
        validation data, drawn when training starts or at the first firing of a run without training), or ``None``
        when the probe is clustered."""
        self.reset_history()

    @override
    def reset_history(self) -> None:
        self.last_report: DiscoveryReport | None = None
        """The report of the last firing (for scripts and tests)."""
        self._discovery_checked = False
        self._discovery_pass: SharedPass | None = None  # its images are cached on the last run's device
        if not self._discovery_given:
            self.discovery_set = None  # drawn again from the new run's data

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, layer=repr(self.layer_spec), source=self.source)

    def __getstate__(self) -> dict[str, Any]:
        # like the shared pass, the discovery set's pass (device tensors) is the run's, not the copy's
        state = super().__getstate__()
        state["_discovery_pass"] = None
        return state

    @override
    def at_train_start(self, trainer: Run, pl_module: nn.Module) -> None:
        """Draw the discovery set (``discovery_size``) from the trainer's validation dataset, once per run, and check
        that the model takes its images: a dataset it cannot use is refused before the first training step."""
        self._discovery(trainer, pl_module)

    def _discovery(self, trainer: Run, pl_module: nn.Module) -> ProbeSet | None:
        """The discovery set, drawn (``discovery_size``) or checked (``discovery_set``) at the first call of a run:
        at training start, or at the first firing of ``trainer.validate``/``test`` without a fit."""
        if self._discovery_checked:
            return self.discovery_set
        if self.discovery_set is None and self.discovery_size is not None:
            self.discovery_set = self._draw_discovery(trainer)
        if self.discovery_set is not None:
            check_probe_fits(f"{self.name} (discovery set)", pl_module, self.discovery_set, self.output_transform)
        self._discovery_checked = True
        return self.discovery_set

    def _draw_discovery(self, trainer: Run) -> ProbeSet:
        assert self.probe is not None and self.discovery_size is not None
        dataset, source = first_map_dataset(trainer)
        if dataset is None:
            raise ValueError(
                f"{self.name}: discovery_size={self.discovery_size} draws a discovery set from the trainer's "
                "validation dataset, but the run has no map-style validation or training dataset (one with "
                "__len__ and __getitem__; an IterableDataset cannot be sampled, and a Lens has no loaders); give the "
                "fit a map-style val_dataloaders, or pass the set itself: discovery_set=ProbeSet.from_dataset("
                f"val_dataset, num_samples={self.discovery_size})"
            )
        where = f"the {source} dataset ({type(dataset).__name__}, {len(dataset)} items)"
        if source != "val":
            rank_zero_warn(
                f"{self.name}: the run has no validation dataset that can be sampled by index, so the discovery set "
                f"is drawn from {where}; give the fit a map-style val_dataloaders (or discovery_set=) to discover "
                "strategies on held-out data."
            )
        size = clamp_to_dataset(dataset, source, self.discovery_size, self.name, "discovery_size", "discovery set")
        found = sample_dataset(
            dataset,
            source,
            f"{self.name}: discovery_size={self.discovery_size} draws a discovery set from",
            "Pass probe_input_key=/probe_target_key= for dict items, discovery_set= to give the set yourself, or "
            "discovery_size=None to cluster the probe",
            num_samples=size,
            seed=self.seed,
            mean=self.probe.mean,
            std=self.probe.std,
            class_names=self.probe.class_names,
            input_key=self.probe_input_key,
            target_key=self.probe_target_key,
        )
        rank_zero_info(
            f"{self.name}: clusters the pooled features of a discovery set of {size} images from {where} at each "
            "firing (forward only); the pictures' mean maps are those of the probe images nearest each cluster."
        )
        return found

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
        probe_features: Tensor | None = None
        if self.source == "features":
            probe_features = layout.to_nchw(result.activations[layer]).detach().float().mean((2, 3)).cpu()
        clustered, labels, discovery_predictions = cam, self.probe.targets.cpu(), None
        if self._discovery(trainer, pl_module) is not None:
            assert self.discovery_set is not None
            clustered, discovery_predictions = self._discovery_features(pl_module, step, layer, layout)
            labels = self.discovery_set.targets.cpu()
        elif probe_features is not None:
            clustered = probe_features
        used = (result.logits, cam, clustered, *([probe_features] if probe_features is not None else []))
        if not all(bool(torch.isfinite(t).all()) for t in used):
            self._nonfinite_step(step, labels)
            return
        report = discover_strategies(
            clustered,
            labels,
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
            name = self._class_tag(c)
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
            tag = f"probelens/discovery/{self._class_tag(c)}"
            if self.discovery_set is None:
                members = [found.indices[found.clusters == j] for j in range(found.num_clusters)]
                means = torch.stack([cam_grid[m].mean(0) for m in members]).view(-1, 1, self.grid, self.grid)
                picture = self._picture(tag, step, name, found, means.float(), cam, images, predictions)
            else:
                assert probe_features is not None and discovery_predictions is not None
                picture = self._discovery_picture(
                    tag, step, name, found, clustered, probe_features, cam, cam_grid, discovery_predictions
                )
            self.writer.picture(picture)

    def _discovery_features(self, pl_module: nn.Module, step: int, layer: str, layout: Layout) -> tuple[Tensor, Tensor]:
        """The discovery set's pooled features at ``layer`` ``[M, C]`` and its predictions ``[M]``: one forward-only
        pass through the pass machinery (chunked to the memory budget; the sharded path under FSDP; the images cached
        on the model's device), in a pass of this monitor's own (no other monitor reads these images)."""
        assert self.discovery_set is not None
        if self._discovery_pass is None:
            self._discovery_pass = SharedPass()
        needs = PassNeeds(dict(self._layer), output_transform=self.output_transform)
        found = self._discovery_pass.get(unwrap_compiled(pl_module), self.discovery_set, step, needs)
        features = layout.to_nchw(found.activations[layer]).detach().float().mean((2, 3)).cpu()
        predictions = found.predictions.cpu()
        self._discovery_pass.release()  # keep only its images (cached on the device)
        return features, predictions

    def _class_tag(self, c: int) -> str:
        """Class ``c``'s name as one tag segment, as in the shortcut tags (names that would collide are refused by
        ``ProbeSet``)."""
        assert self.probe is not None
        return tag_segment(self.probe.class_name(c), str(c))

    def _nonfinite_step(self, step: int, labels: Tensor) -> None:
        """Outputs, maps or features with NaN or Inf (diverged weights): every class's numbers are NaN at this step
        and no picture is drawn. Clusters of values with NaN replaced would be numbers computed from NaN; said once."""
        assert self.probe is not None
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            rank_zero_warn(
                f"{self.name}: the model's outputs, maps or features hold NaN or Inf at step {step} (diverged "
                "weights?); this step's discovery numbers are logged as NaN and no picture is drawn. Said once."
            )
        keys = ("clusters", "eigengap", "largest_share", "two_strategies")
        names = [self._class_tag(int(c)) for c in labels.unique()]
        self.writer.scalars({f"discovery/{name}/{key}": math.nan for name in names for key in keys}, step)

    def _discovery_picture(
        self,
        tag: str,
        step: int,
        name: str,
        found: ClassStrategies,
        features: Tensor,
        probe_features: Tensor,
        cam: Tensor,
        cam_grid: Tensor,
        predictions: Tensor,
    ) -> Picture:
        """One class's picture when a discovery set was clustered: per cluster the mean Grad-CAM map of the probe
        images of that class whose nearest discovery image (pooled features, standardised as the clustering did) is
        in the cluster, and the cluster's prototype (a discovery image, no map: its pass is forward only). No cell
        belongs to a probe image, so none is recorded."""
        assert self.probe is not None and self.discovery_set is not None
        size = self.probe.image_size
        mine = features[found.indices].double()
        centre, spread = feature_scale(mine)  # as discover_strategies standardised them
        ours = torch.nonzero(self.probe.targets.cpu() == found.label).flatten()
        nearest = torch.cdist(((probe_features[ours].double() - centre) / spread), ((mine - centre) / spread))
        assigned = found.clusters[nearest.argmin(1)] if len(ours) else torch.zeros(0, dtype=torch.long)
        means, counts = [], []
        for j in range(found.num_clusters):
            members = ours[assigned == j]
            counts.append(len(members))
            blank = torch.zeros(self.grid * self.grid, dtype=cam_grid.dtype)
            means.append(cam_grid[members].mean(0) if len(members) else blank)
        mean_maps = torch.stack(means).view(-1, 1, self.grid, self.grid).float()
        protos = torch.tensor(found.prototypes, dtype=torch.long)
        proto_images = self.discovery_set.display_images()[protos]
        total = sum(found.sizes)
        flag = "two strategies?" if found.two_strategies else "one strategy"
        title = (
            f"{name}: {found.num_clusters} cluster(s) of {total} discovery images, eigengap {found.eigengap:.2f}, "
            f"{flag} (exploratory, not a verdict)"
        )
        captions = []
        for j, (size_j, index) in enumerate(zip(found.sizes, found.prototypes)):
            captions.append(
                f"cluster {j}: {size_j}/{total} ({size_j / max(1, total):.0%})\nmap: {counts[j]} probe imgs"
            )
            captions.append(f"cluster {j}: prototype\npred {self.probe.class_name(int(predictions[index]))}")
        heat = F.interpolate(normalize_maps(mean_maps, vmin=0.0), size=size, mode="nearest")
        tiles = torch.stack([apply_colormap(heat[:, 0]), proto_images], dim=1).flatten(0, 1)  # both uint8
        grid = labelled_grid(tiles, captions, ncol=2, title=title)
        return Picture(tag, step, grid, (), (), scale=colour_scale("jet"))

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
