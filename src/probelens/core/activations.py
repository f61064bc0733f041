"""ActivationMonitor: feature-map grids of the probe images at the requested layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from probelens.core.base import MonitorCore, base_options
from probelens.core.options import check_cmap, check_int, check_layer_spec
from probelens.core.run import Run
from probelens.core.writer import Box, Picture
from probelens.methods.engine import OutputTransform
from probelens.methods.layers import LayerSpec
from probelens.methods.layout import Layout, ReshapeSpec, check_reshape
from probelens.probe import ProbeSet
from probelens.render import apply_colormap, rows_grid
from probelens.render.text import CARD_WIDTH


class ActivationCore(MonitorCore):
    """Logs feature maps of the probe images.

    Tags: ``probelens/activations/<layer>``, one grid per layer and step: one row per probe image, starting with the
    image itself, followed by the ``max_channels`` channels with the highest mean activation over the probe set (the
    same channels in every row, listed in the row caption). Each channel is scaled by its min/max over the probe set,
    so rows can be compared with each other.

    Args:
        probe: the probe set.
        layers: ``"auto"``, ``"all"``, names or module types.
        max_channels: channels shown per layer.
        max_images: probe images shown (rows).
        cmap: colormap name.
        every_n_epochs: fire at the end of every n-th epoch (every epoch by default).
        every_n_steps, log_at_start, probe_size, probe_seed, probe_input_key, probe_target_key,
            max_image_side, max_bytes_per_firing, output_transform, name: as for :class:`ProbeMonitor`.
        reshape: a function (or ``{layer: function}``) viewing a layer output as ``[N,C,h,w]`` where the forward
            pass does not show it as NCHW, channels-last or tokens on a grid (:mod:`probelens.methods.layout`).
    """

    def __init__(
        self,
        probe: ProbeSet | None = None,
        layers: LayerSpec = "auto",
        *,
        max_channels: int = 8,
        max_images: int = 4,
        cmap: str = "viridis",
        reshape: ReshapeSpec = None,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        log_at_start: bool = False,
        probe_size: int = 16,
        probe_seed: int = 0,
        probe_input_key: str | None = None,
        probe_target_key: str | None = None,
        max_image_side: int | None = 1024,
        max_bytes_per_firing: int | None = None,
        output_transform: OutputTransform | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(probe, **base_options(locals()))
        owner = type(self).__name__
        check_layer_spec(owner, "layers", layers)
        check_int(owner, "max_channels", max_channels)
        check_int(owner, "max_images", max_images)
        check_cmap(owner, "cmap", cmap)
        self.reshape = check_reshape(reshape, owner)
        self.layers_spec = layers
        self.max_channels = max_channels
        self.max_images = max_images
        self.cmap = cmap
        self._layers: dict[str, nn.Module] = {}
        self._layouts: dict[str, Layout] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, layers=repr(self.layers_spec))

    @override
    def configure(self, pl_module: nn.Module) -> None:
        self._layers, self._layouts = self._map_layers(pl_module, self.layers_spec, reshape=self.reshape)
        self._require(self._layers, gradients=False, input_gradient=False, target_sets=set())

    def _tile_size(self, rows: int) -> tuple[int, int]:
        """The probe image size, shrunk so that a grid of ``rows`` rows of ``1 + max_channels`` tiles (2 px apart,
        a caption band of about 24 px per row) fits ``max_image_side`` without a downscale of the whole picture."""
        assert self.probe is not None
        h, w = self.probe.image_size
        if self.max_image_side is None:
            return (h, w)
        pad, band, cols = 2, 24, 1 + self.max_channels
        scale = min(
            1.0,
            (self.max_image_side - (cols + 1) * pad) / (cols * w),
            (self.max_image_side - (rows + 1) * pad - rows * band) / (rows * h),
        )
        return (max(1, int(h * scale)), max(1, int(w * scale)))

    @override
    def explain(self, step: int, pl_module: nn.Module, trainer: Run) -> None:
        assert self.probe is not None
        result = self._pass(pl_module, step)
        shown = self._shown(self.max_images)
        k = len(shown)
        images = self.probe.display_images()[shown]
        size, cmap = self._tile_size(k), self.cmap
        if size != self.probe.image_size:  # draw at the size that will be written, not large and then downscaled
            images = F.interpolate(images.float(), size=size, mode="area").round().to(torch.uint8)
        for layer in self._layers:
            act = self._layouts[layer].to_nchw(result.activations[layer])[shown.to(result.images.device)]
            act = self._finite(act.float(), f"activations of {layer}", step)
            c = min(self.max_channels, act.shape[1])
            channels = act.mean(dim=(0, 2, 3)).topk(c).indices
            chans = ", ".join(str(int(ch)) for ch in channels.tolist())
            captions = [f"#{int(j)} channels {chans}" if i == 0 else f"#{int(j)}" for i, j in enumerate(shown)]

            maps = act[:, channels]
            lo = maps.amin(dim=(0, 2, 3), keepdim=True)
            hi = maps.amax(dim=(0, 2, 3), keepdim=True)
            scaled = F.interpolate(((maps - lo) / (hi - lo).clamp_min(1e-12)).nan_to_num(0.0), size, mode="nearest")
            # [k, c, 3, *size]: each channel's colour map, coloured where the maps are, then to the host
            coloured = apply_colormap(scaled.flatten(0, 1), cmap, keep_device=True).unflatten(0, (k, -1)).cpu()
            rows = [torch.cat([images[i : i + 1], coloured[i]]) for i in range(k)]
            boxes: list[Box] = []
            grid = rows_grid(rows, captions, cell_boxes=boxes, card_width=CARD_WIDTH)
            tag = f"probelens/activations/{self.layer_tags[layer]}"
            self.writer.picture(Picture.grid(tag, step, grid, boxes, shown=shown))
