"""DeconvMonitor: deconvnet projections (Zeiler & Fergus, 2014) of the strongest channels of a layer."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from typing_extensions import override

from probelens.core.base import MonitorCore, base_options
from probelens.core.options import check_choice, check_int, check_single_layer, take_renamed
from probelens.core.run import Run
from probelens.core.writer import Box, Picture
from probelens.methods.engine import OutputTransform
from probelens.methods.guided import Rule, deconv_projections
from probelens.methods.layers import LayerSpec, unwrap_compiled
from probelens.methods.layout import ReshapeSpec, check_reshape
from probelens.probe import ProbeSet
from probelens.render import normalize_maps, rows_grid, to_rgb_uint8


class DeconvCore(MonitorCore):
    """Logs, per probe image, the ``top_k`` most activated channels of a layer projected back to pixel space.

    Tag: ``probelens/deconv/<layer>``: one row per probe image, the image followed by its projections (each scaled to
    its own range, shown in the input's colours), captioned with the channel indices. Each projection keeps only the
    strongest activation of its channel (``keep="max"``, as Zeiler & Fergus) or the whole channel (``keep="channel"``)
    and backpropagates it with the deconvnet rule (or ``rule="guided_backprop"``). Fires every 5 epochs by default.

    Args:
        probe: the probe set.
        layers: one layer name, or ``"auto"`` for the deepest resolution stage.
        top_k: channels per probe image.
        keep: ``"max"`` or ``"channel"``.
        rule: ``"deconvnet"`` or ``"guided_backprop"``.
        max_images: probe images (rows).
        every_n_epochs: fire at the end of every n-th epoch (every 5 epochs by default).
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
        top_k: int = 4,
        keep: Literal["max", "channel"] = "max",
        rule: Rule = "deconvnet",
        max_images: int = 4,
        reshape: ReshapeSpec = None,
        every_n_epochs: int | None = 5,
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
        **deprecated: Any,
    ) -> None:
        (layers,) = take_renamed(type(self).__name__, deprecated, {"layer": ("layers", layers, "auto")})
        super().__init__(probe, **base_options(locals()))
        owner = type(self).__name__
        check_single_layer(owner, "layers", layers)
        check_int(owner, "top_k", top_k)
        check_int(owner, "max_images", max_images)
        check_choice(owner, "keep", keep, ("max", "channel"))
        check_choice(owner, "rule", rule, ("deconvnet", "guided_backprop"))
        self.reshape = check_reshape(reshape, owner)
        self.layer_spec = layers
        self.top_k = top_k
        self.keep = keep
        self.rule = rule
        self.max_images = max_images
        self._layer = ""

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, layer=repr(self.layer_spec))

    @override
    def configure(self, pl_module: nn.Module) -> None:
        layers = self._resolve_layers(pl_module, self.layer_spec)
        name = list(layers)[-1]
        if len(layers) != 1 and not (isinstance(self.layer_spec, str) and self.layer_spec == "auto"):
            raise ValueError(f"{self.name}: pass one layer, got {list(layers)}")
        spatial = self._check_spatial(pl_module, {name: layers[name]}, reshape=self.reshape)
        channels = spatial[name][1][0]
        if self.top_k > channels:
            raise ValueError(
                f"{self.name}: top_k={self.top_k} but layer {name!r} has only {channels} channels; pass "
                f"top_k<={channels} or a wider layer"
            )
        self._layer = name
        self._require({}, gradients=False, input_gradient=False, target_sets={"pred"})

    @override
    def explain(self, step: int, pl_module: nn.Module, trainer: Run) -> None:
        assert self.probe is not None
        result = self._pass(pl_module, step)
        shown = self._shown(self.max_images)
        k = len(shown)
        projections, channels = deconv_projections(
            unwrap_compiled(pl_module),
            result.images[shown.to(result.images.device)],
            self._layer,
            self.top_k,
            "guided_backprop" if self.rule == "guided_backprop" else "deconvnet",
            keep="channel" if self.keep == "channel" else "max",
            unsupported="ignore",
            reshape=self.reshape,
        )
        projections = self._finite(projections.float().cpu(), "deconvnet projections", step)
        pictures = self.probe.display_images()[shown]
        captions = [f"#{int(shown[i])}: channels " + ", ".join(str(int(c)) for c in channels[i]) for i in range(k)]

        rows = []
        for i in range(k):
            scaled = normalize_maps(projections[i])  # [top_k, C, H, W], each projection on its own range
            rows.append(torch.cat([pictures[i : i + 1], to_rgb_uint8((scaled * 255).round().to(torch.uint8))]))
        boxes: list[Box] = []
        grid = rows_grid(rows, captions, cell_boxes=boxes)
        self.writer.picture(Picture.grid(f"probelens/deconv/{self._layer}", step, grid, boxes, shown=shown))
