"""FeatureVisMonitor: activation maximisation images of chosen channels or classes, from a fixed seed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from probelens.core.base import MonitorCore, base_options
from probelens.core.options import check_float, check_int, check_single_layer, take_renamed
from probelens.core.run import Run
from probelens.core.writer import Picture
from probelens.methods.engine import OutputTransform, forward_backward
from probelens.methods.feature_vis import feature_visualization
from probelens.methods.layers import LayerSpec, unwrap_compiled
from probelens.methods.layout import ReshapeSpec, check_reshape
from probelens.probe import ProbeSet
from probelens.render import labelled_grid, to_rgb_uint8


class FeatureVisCore(MonitorCore):
    """Logs feature visualisations (activation maximisation, Olah et al. 2017) of a layer's channels or of classes.

    Tag: ``probelens/feature_vis/<layer>`` (``probelens/feature_vis/classes`` with ``layers=None``). All channels are
    optimised as one batch with a Fourier, colour-decorrelated parameterisation and jitter/scale/rotate robustness
    transforms, from the same seed at every log step, so the images are comparable across training. The probe set
    supplies the image shape and the normalisation (``mean``/``std``). Fires every 5 epochs by default.

    Args:
        probe: the probe set (image shape and normalisation; its images are not used).
        layers: a layer name, ``"auto"`` (the deepest resolution stage) or ``None`` to maximise class logits.
        channels: channel (or class) indices, or an int ``n`` for the first ``n`` (for classes: all classes).
        steps: optimisation steps.
        lr: learning rate.
        seed: the fixed seed.
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
        channels: int | Sequence[int] = 8,
        *,
        steps: int = 64,
        lr: float = 0.05,
        seed: int = 0,
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
        check_single_layer(owner, "layers", layers, none_ok=True)
        if isinstance(channels, int) and not isinstance(channels, bool):
            check_int(owner, "channels", channels, fix="or a list of channel indices")
        elif not (
            isinstance(channels, (list, tuple))
            and channels
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in channels)
            and len(set(channels)) == len(channels)
        ):
            raise ValueError(
                f"{owner}: channels={channels!r} is not allowed; channels must be a count n >= 1 (the first n "
                "channels) or a non-empty list of distinct channel indices >= 0, e.g. channels=[0, 5, 9]"
            )
        check_int(owner, "steps", steps)
        check_float(owner, "lr", lr, 0.0, low_open=True)
        check_int(owner, "seed", seed, minimum=0)
        self.reshape = check_reshape(reshape, owner)
        self.layer_spec = layers
        self.channels_spec = channels
        self.steps = steps
        self.lr = lr
        self.seed = seed
        self._layer: str | None = None
        self._channels: list[int] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, layer=repr(self.layer_spec))

    @override
    def configure(self, pl_module: nn.Module) -> None:
        assert self.probe is not None
        net = unwrap_compiled(pl_module)
        if self.layer_spec is None:
            self._layer = None
            x = self._example(net)
            assert x is not None
            probe_pass = forward_backward(
                net, x, None, {}, gradients=False, input_gradient=False, output_transform=self.output_transform
            )
            available = int(probe_pass.logits.shape[1])
        else:
            layers = self._resolve_layers(pl_module, self.layer_spec)
            name = list(layers)[-1]
            self._check_spatial(pl_module, {name: layers[name]}, reshape=self.reshape)
            self._layer = name
            available = None
        if isinstance(self.channels_spec, int):
            n = self.channels_spec if available is None else min(self.channels_spec, available)
            self._channels = list(range(n))
        else:
            self._channels = [int(c) for c in self.channels_spec]
        # one step at setup: a channel out of range fails now (with the layer's channel count), not after an epoch
        try:
            self._dry_run(net)
        except ValueError as err:
            raise ValueError(f"{self.name}: channels={self.channels_spec!r}: {err}") from err

    def _dry_run(self, net: nn.Module) -> None:
        assert self.probe is not None
        feature_visualization(
            net,
            self._layer,
            sorted({min(self._channels), max(self._channels)}),
            image_shape=self._image_shape(),
            steps=1,
            mean=self.probe.mean,
            std=self.probe.std,
            output_transform=self.output_transform,
            reshape=self.reshape,
        )

    def _image_shape(self) -> tuple[int, int, int]:
        assert self.probe is not None
        return (self.probe.num_channels, *self.probe.image_size)

    @override
    def explain(self, step: int, pl_module: nn.Module, trainer: Run) -> None:
        assert self.probe is not None
        images = feature_visualization(
            unwrap_compiled(pl_module),
            self._layer,
            self._channels,
            image_shape=self._image_shape(),
            steps=self.steps,
            lr=self.lr,
            seed=self.seed,
            mean=self.probe.mean,
            std=self.probe.std,
            output_transform=self.output_transform,
            reshape=self.reshape,
        )
        images = self._finite(images.float().cpu(), "feature visualisations", step)
        if self._layer is None:
            captions = [f"class {self.probe.class_name(c)}" for c in self._channels]
        else:
            captions = [f"channel {c}" for c in self._channels]

        grid = labelled_grid(to_rgb_uint8((images.clamp(0, 1) * 255).round().to(torch.uint8)), captions)
        self.writer.picture(Picture(f"probelens/feature_vis/{self._layer or 'classes'}", step, grid))
