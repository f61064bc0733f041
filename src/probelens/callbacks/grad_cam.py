"""GradCAMMonitor: Grad-CAM overlays at every requested layer, from the shared one-pass engine."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from probelens.callbacks.base import ProbeMonitor, target_sets_for
from probelens.methods.grad_cam import grad_cam_map
from probelens.methods.layers import LayerSpec
from probelens.probe import ProbeSet
from probelens.render import colormap_lut, labelled_grid, normalize_maps, overlay_heatmap


class GradCAMMonitor(ProbeMonitor):
    """Logs Grad-CAM (Selvaraju et al., 2017) over the probe images at each requested layer.

    Tags: ``probelens/gradcam/<layer>``, one labelled grid per layer and step; each tile is the probe image with its
    heatmap overlaid and a caption with the true label, the prediction and its probability. With ``target="both"``
    each probe image gets two tiles side by side: the map for the predicted class and the map for the true class.

    Args:
        probe: the probe set.
        layers: ``"auto"`` (one layer per resolution stage), ``"all"`` (every conv), names or module types.
        target: explain the ``"pred"``-icted class (default: what the model actually uses), the ``"label"`` class, or
            ``"both"``.
        fixed_scale: keep one colour scale per layer, set by the maximum of the first logged step, so magnitudes can be
            compared over training (values above it saturate). Otherwise each map is scaled to its own maximum.
        alpha: heatmap opacity in the overlay.
        cmap: colormap name.
        max_images: log at most this many probe images.
        **schedule: ``every_n_epochs``, ``every_n_steps``, ``log_at_start``, ``name`` (see :class:`ProbeMonitor`).
    """

    def __init__(
        self,
        probe: ProbeSet,
        layers: LayerSpec = "auto",
        *,
        target: str = "pred",
        fixed_scale: bool = False,
        alpha: float = 0.5,
        cmap: str = "jet",
        max_images: int | None = None,
        **schedule: Any,
    ) -> None:
        if probe is None:
            raise ValueError("GradCAMMonitor needs a probe set: GradCAMMonitor(ProbeSet.from_dataset(val_dataset))")
        super().__init__(probe, **schedule)
        self.target_sets = target_sets_for(target)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        colormap_lut(cmap)  # unknown names fail here, not at the first log step
        self.layers_spec = layers
        self.target = target
        self.fixed_scale = fixed_scale
        self.alpha = alpha
        self.cmap = cmap
        self.max_images = max_images
        self.scale: dict[str, float] = {}
        self._layers: dict[str, nn.Module] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, layers=repr(self.layers_spec), target=self.target)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scale": dict(self.scale)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.scale = {k: float(v) for k, v in state_dict.get("scale", {}).items()}

    @override
    def _configure(self, pl_module: nn.Module) -> None:
        self._layers = self._resolve_layers(pl_module, self.layers_spec)
        self._check_spatial(pl_module, self._layers)
        self._require(self._layers, gradients=True, input_gradient=False, target_sets=set(self.target_sets))

    def _normalise(self, layer: str, cam: Tensor) -> Tensor:
        if not self.fixed_scale:
            return normalize_maps(cam, vmin=0.0)
        if layer not in self.scale:
            self.scale[layer] = max(float(cam.max()), 1e-12)
        return normalize_maps(cam, vmin=0.0, vmax=self.scale[layer])

    @override
    def _log(self, step: int, pl_module: nn.Module, trainer: pl.Trainer) -> None:
        assert self.probe is not None
        result = self._pass(pl_module, step)
        k = len(self.probe) if self.max_images is None else min(self.max_images, len(self.probe))
        images = self.probe.display_images()[:k]
        captions = self._captions(result)[:k]
        size = self.probe.image_size
        for layer in self._layers:
            tiles, tile_captions = [], []
            for target_set in self.target_sets:
                cam = grad_cam_map(result.activations[layer][:k], result.gradients[target_set][layer][:k], size)
                tiles.append(overlay_heatmap(images, self._normalise(layer, cam.cpu()), self.alpha, self.cmap))
                if len(self.target_sets) == 1:
                    tile_captions.append(captions)
                else:
                    names = [self.probe.class_name(int(t)) for t in result.targets[target_set][:k]]
                    tile_captions.append([f"{c}\nmap: {target_set} ({n})" for c, n in zip(captions, names)])
            # interleave so each probe image's tiles sit side by side
            grid_tiles = torch.stack(tiles, dim=1).flatten(0, 1)
            grid_captions = [c for group in zip(*tile_captions) for c in group]
            ncol = None if len(tiles) == 1 else 2 * max(1, round((k / 2) ** 0.5))
            self._image(f"probelens/gradcam/{layer}", labelled_grid(grid_tiles, grid_captions, ncol=ncol), step)
