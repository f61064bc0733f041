"""SaliencyMonitor: input-gradient saliency maps of the probe images, from the shared one-pass engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from torch import nn
from typing_extensions import override

from probelens.callbacks.base import ProbeMonitor, target_sets_for
from probelens.methods.saliency import ONE_PASS_METHODS, saliency_from_pass
from probelens.probe import ProbeSet
from probelens.render import (
    apply_colormap,
    colormap_lut,
    labelled_grid,
    normalize_maps,
    overlay_heatmap,
    saliency_to_heat,
)

REDUCTIONS = ("abs_max", "abs_sum", "sum", "l2")


class SaliencyMonitor(ProbeMonitor):
    """Logs saliency maps of the probe images for each method.

    Tags: ``probelens/saliency/<method>``, one labelled grid per method and step (``/pred`` and ``/label`` suffixes
    with ``target="both"``). Channels are reduced to one map (``reduce``, default max of ``|x|`` over channels) and
    each map is scaled to its own maximum.

    Args:
        probe: the probe set.
        methods: any of ``"vanilla"`` (the input gradient) and ``"gradient_x_input"``; all come from one shared
            forward/backward pass.
        target: ``"pred"``, ``"label"`` or ``"both"``.
        reduce: channel reduction, one of ``"abs_max"``, ``"abs_sum"``, ``"sum"``, ``"l2"``.
        overlay: draw over the probe image (``alpha``) instead of a plain heatmap.
        alpha: overlay opacity.
        cmap: colormap name.
        max_images: log at most this many probe images.
        **schedule: ``every_n_epochs``, ``every_n_steps``, ``log_at_start``, ``name`` (see :class:`ProbeMonitor`).
    """

    def __init__(
        self,
        probe: ProbeSet,
        methods: Sequence[str] = ("vanilla", "gradient_x_input"),
        *,
        target: str = "pred",
        reduce: str = "abs_max",
        overlay: bool = False,
        alpha: float = 0.6,
        cmap: str = "inferno",
        max_images: int | None = None,
        **schedule: Any,
    ) -> None:
        if probe is None:
            raise ValueError("SaliencyMonitor needs a probe set: SaliencyMonitor(ProbeSet.from_dataset(val_dataset))")
        super().__init__(probe, **schedule)
        methods = [methods] if isinstance(methods, str) else list(methods)
        unknown = [m for m in methods if m not in ONE_PASS_METHODS]
        if unknown or not methods:
            raise ValueError(f"unknown saliency method(s) {unknown or methods}; valid: {', '.join(ONE_PASS_METHODS)}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        colormap_lut(cmap)
        self.methods = methods
        self.target = target
        self.target_sets = target_sets_for(target)
        self.reduce = reduce
        self.overlay = overlay
        self.alpha = alpha
        self.cmap = cmap
        self.max_images = max_images

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, methods=tuple(self.methods), target=self.target)

    @override
    def _configure(self, pl_module: nn.Module) -> None:
        self._require({}, gradients=False, input_gradient=True, target_sets=set(self.target_sets))

    @override
    def _log(self, step: int, pl_module: nn.Module, trainer: pl.Trainer) -> None:
        assert self.probe is not None
        result = self._pass(pl_module, step)
        k = len(self.probe) if self.max_images is None else min(self.max_images, len(self.probe))
        images = self.probe.display_images()[:k] if self.overlay else None
        captions = self._captions(result)[:k]
        for method in self.methods:
            for target_set in self.target_sets:
                sal = self._finite(saliency_from_pass(result, target_set, method)[:k].float().cpu(), method, step)
                heat = normalize_maps(saliency_to_heat(sal, self.reduce))
                if images is not None:
                    tiles = overlay_heatmap(images, heat, self.alpha, self.cmap)
                else:
                    tiles = apply_colormap(heat, self.cmap)
                suffix = f"/{target_set}" if len(self.target_sets) > 1 else ""
                self._image(f"probelens/saliency/{method}{suffix}", labelled_grid(tiles, captions), step)
