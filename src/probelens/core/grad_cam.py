"""GradCAMMonitor: Grad-CAM overlays at every requested layer, from the shared one-pass engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from probelens.core.base import MonitorCore, TargetMode, base_options, target_sets_for
from probelens.core.options import check_bool, check_cmap, check_float, check_int, check_layer_spec
from probelens.core.run import Run
from probelens.core.writer import Picture, captioned_grid, colour_scale, probe_captions
from probelens.methods.cam import CAM_METHODS, FORWARD_CAMS, GRADIENT_CAMS, cam_map, score_cam_map
from probelens.methods.engine import OutputTransform
from probelens.methods.layers import LayerSpec, unwrap_compiled
from probelens.methods.layout import Layout, ReshapeSpec, check_reshape
from probelens.probe import ProbeSet
from probelens.render import filmstrip, normalize_maps, overlay_heatmap, select_frames


class GradCAMCore(MonitorCore):
    """Logs Grad-CAM (Selvaraju et al., 2017), or any set of the CAM family, over the probe images at each layer.

    Tags: ``probelens/<method>/<layer>`` (``probelens/gradcam/<layer>`` for Grad-CAM), one labelled grid per method,
    layer and step; each tile is the probe image with its heatmap overlaid and a caption with the true label, the
    prediction and its probability. With ``target="both"`` each probe image gets two tiles side by side: the map for
    the predicted class and the map for the true class.

    Every gradient and activation variant (``"gradcam"``, ``"gradcam++"``, ``"xgradcam"``, ``"layercam"``,
    ``"hirescam"``, ``"eigencam"``, ``"eigengradcam"``) at every layer is read off the one forward/backward pass the
    monitors share; ``"scorecam"`` adds its masked forward passes (one per channel and probe image, batched and
    chunked to the memory budget). Formulas and papers: :mod:`probelens.methods.cam`.

    Args:
        probe: the probe set.
        layers: ``"auto"`` (one layer per resolution stage), ``"all"`` (every conv), names or module types.
        methods: the CAM variants to log (:data:`probelens.methods.CAM_METHODS`), default Grad-CAM alone.
        target: explain the ``"pred"``-icted class (default: what the model actually uses), the ``"label"`` class, or
            ``"both"``.
        fixed_scale: keep one colour scale per layer, set by the maximum of the first logged step, so magnitudes can be
            compared over training (values above it saturate). Otherwise each map is scaled to its own maximum.
        alpha: heatmap opacity in the overlay.
        cmap: colormap name.
        max_images: log at most this many probe images.
        filmstrip: also log ``probelens/<method>_filmstrip/<layer>`` (``probelens/gradcam_filmstrip/<layer>``) for
            the first method and the deepest layer: one row per probe image, its overlay at each log step so far
            (left to right), so the evolution is visible at a glance despite TensorBoard's 10-sample default. At
            most ``filmstrip_frames`` steps are shown: the first, the last and evenly spaced ones between. Each
            picture holds the whole history, so it is written at most once per epoch (at the epoch's first firing,
            once ``1/filmstrip_frames`` of the history has come since the last one) and when training ends.
        filmstrip_frames: frames per strip.
        filmstrip_images: probe images (rows) in the strip.
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
        methods: Sequence[str] = ("gradcam",),
        target: TargetMode = "pred",
        fixed_scale: bool = False,
        alpha: float = 0.5,
        cmap: str = "jet",
        max_images: int | None = None,
        filmstrip: bool = True,
        filmstrip_frames: int = 16,
        filmstrip_images: int = 8,
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
        self.target_sets = target_sets_for(target, owner)
        check_layer_spec(owner, "layers", layers)
        methods = [methods] if isinstance(methods, str) else list(methods)
        unknown = [m for m in methods if m not in CAM_METHODS]
        if unknown or not methods or len(set(methods)) != len(methods):
            raise ValueError(
                f"{owner}: methods={methods!r} is not allowed; methods must be a non-empty list of distinct names "
                f"from {', '.join(CAM_METHODS)}"
            )
        self.methods = methods
        check_bool(owner, "fixed_scale", fixed_scale)
        check_float(owner, "alpha", alpha, 0.0, 1.0)
        check_int(owner, "max_images", max_images, none_ok=True, fix="None shows the whole probe set")
        check_bool(owner, "filmstrip", filmstrip)
        check_int(owner, "filmstrip_frames", filmstrip_frames, minimum=2)
        check_int(owner, "filmstrip_images", filmstrip_images)
        check_cmap(owner, "cmap", cmap)
        self.reshape = check_reshape(reshape, owner)
        self.layers_spec = layers
        self.target = target
        self.fixed_scale = fixed_scale
        self.alpha = alpha
        self.cmap = cmap
        self.max_images = max_images
        self.filmstrip = filmstrip
        self.filmstrip_frames = filmstrip_frames
        self.filmstrip_images = filmstrip_images
        self._layers: dict[str, nn.Module] = {}
        self._layouts: dict[str, Layout] = {}
        self.reset_history()

    @override
    def reset_history(self) -> None:
        self.scale: dict[str, float] = {}
        self._frames: list[tuple[int, Tensor]] = []  # (step, uint8 [k,3,h,w]) of the deepest layer
        self._strip_of: tuple[str, Tensor] | None = None  # the strip's layer and probe images
        self._strip_epoch = -1  # the epoch whose first firing wrote the strip
        self._strip_pending: int | None = None  # the step of a frame not yet in a written strip
        self._strip_frames = 0  # frames added in this run
        self._strip_written = 0  # frames added when the last strip was written

    @property
    @override
    def state_key(self) -> str:
        if self.methods == ["gradcam"]:  # the key of earlier versions, so their checkpoints still resume
            return self._generate_state_key(name=self.name, layers=repr(self.layers_spec), target=self.target)
        return self._generate_state_key(
            name=self.name, layers=repr(self.layers_spec), target=self.target, methods=tuple(self.methods)
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        # the filmstrip's frames (uint8 thumbnails, at most 4 * filmstrip_frames of them) travel with the checkpoint,
        # so a resumed run continues the strip instead of restarting it; the base flushes pending pictures first
        state = super().state_dict()
        frames = [(int(step), frame.cpu()) for step, frame in self._frames]
        return {**state, "scale": dict(self.scale), "filmstrip_frames": frames}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.scale = {k: float(v) for k, v in state_dict.get("scale", {}).items()}
        self._frames = [(int(step), frame) for step, frame in state_dict.get("filmstrip_frames", [])]

    @override
    def configure(self, pl_module: nn.Module) -> None:
        gradients = any(m in GRADIENT_CAMS for m in self.methods)
        self._layers, self._layouts = self._map_layers(
            pl_module, self.layers_spec, needs_grad=gradients, reshape=self.reshape
        )
        self._require(self._layers, gradients=gradients, input_gradient=False, target_sets=set(self.target_sets))

    def _vmax(self, key: str, cam: Tensor) -> float | None:
        """The top of the colour scale of ``key``'s maps: fixed by the first logged step with ``fixed_scale``, else
        ``None`` (each map scaled to its own maximum)."""
        if not self.fixed_scale:
            return None
        if key not in self.scale:
            self.scale[key] = max(float(cam.max()), 1e-12)
        return self.scale[key]

    def _maps(
        self, pl_module: nn.Module, result: Any, method: str, layer: str, target_set: str, shown: Tensor
    ) -> Tensor:
        assert self.probe is not None
        size = self.probe.image_size
        index = shown.to(result.images.device)
        layout = self._layouts[layer]
        activation = layout.to_nchw(result.activations[layer])
        if method in FORWARD_CAMS:  # its cost is per image: only the shown ones
            return score_cam_map(
                unwrap_compiled(pl_module),
                result.images[index],
                result.targets[target_set][index],
                activation[index],
                output_transform=self.output_transform,
            )
        # maps of the whole probe at the layer's resolution, then the shown ones upsampled: indexing the activations
        # first would copy them (as large as the pass itself)
        gradient = layout.to_nchw(result.gradients[target_set][layer]) if method in GRADIENT_CAMS else None
        maps = cam_map(activation, gradient, method)[index]
        if tuple(maps.shape[-2:]) != tuple(size):
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return maps

    @override
    def explain(self, step: int, pl_module: nn.Module, trainer: Run) -> None:
        assert self.probe is not None
        result = self._pass(pl_module, step)
        shown = self._shown(self.max_images)
        k = len(shown)
        images = self.probe.display_images()[shown]
        captions = probe_captions(self.probe, result, shown)
        if len(self.target_sets) == 1:
            tile_captions = [captions.texts]
        else:
            tile_captions = []
            for target_set in self.target_sets:
                names = [self.probe.class_name(int(result.targets[target_set][i])) for i in shown]
                tile_captions.append([f"{c}\nmap: {target_set} ({n})" for c, n in zip(captions.texts, names)])
        # interleaved so each probe image's tiles sit side by side
        grid_captions = [c for group in zip(*tile_captions) for c in group]
        ncol = None if len(self.target_sets) == 1 else 2 * max(1, round((k / 2) ** 0.5))
        alpha, cmap = self.alpha, self.cmap
        for method in self.methods:
            for layer in self._layers:
                maps = []  # (maps of the shown images, top of their colour scale) per target set, on the pass' device
                for target_set in self.target_sets:
                    cam = self._maps(pl_module, result, method, layer, target_set, shown)
                    cam = self._finite(cam, f"{method} maps of {layer}", step)
                    maps.append((cam, self._vmax(layer if method == "gradcam" else f"{method}/{layer}", cam)))

                overlays = [  # colour and blend where the maps are, then to the host
                    overlay_heatmap(images, normalize_maps(m, vmin=0.0, vmax=v), alpha, cmap, keep_device=True).cpu()
                    for m, v in maps
                ]
                tag = f"probelens/{method}/{self.layer_tags[layer]}"
                scale = colour_scale(cmap, maps[0][1])  # fixed_scale: one top per method and layer, else per image
                tiles = torch.stack(overlays, dim=1).flatten(0, 1)  # each probe image's tiles side by side
                picture = captioned_grid(
                    tag,
                    step,
                    tiles,
                    captions,
                    shown=shown,
                    texts=grid_captions,
                    per_probe=len(maps),
                    ncol=ncol,
                    scale=scale,
                )
                self.writer.picture(picture)
                if method == self.methods[0]:
                    strip_tiles = overlays[0]  # ends as the deepest layer's overlays, scaled as in its grid
        if self.filmstrip and self.writer.stage == "fit":  # the strip is the training history
            self._add_frame(step, trainer.current_epoch, strip_tiles, shown)

    def _add_frame(self, step: int, epoch: int, tiles: Tensor, shown: Tensor) -> None:
        """Add this step's frame (the first ``filmstrip_images`` of the deepest layer's first-method overlays
        ``tiles``, the ones its grid shows, of the probe images ``shown``) to the strip. The strip is written at
        most once per epoch, at its first firing, and only once it would show a new frame slot; what came after the
        last one is written when training ends (:meth:`at_fit_end`)."""
        k = min(self.filmstrip_images, len(shown))
        self._strip_of = (list(self._layers)[-1], shown[:k])
        self._strip_frames += 1
        # a new strip only where it would show a new frame slot: at the epoch's first firing, once 1/filmstrip_frames
        # of the history has come since the last one (1000 one-step epochs write ~80 strips, not 1000)
        spacing = max(1, self._strip_frames // self.filmstrip_frames)
        write_now = epoch != self._strip_epoch and self._strip_frames - self._strip_written >= spacing
        if write_now:
            self._strip_epoch, self._strip_written, self._strip_pending = epoch, self._strip_frames, None
        else:
            self._strip_pending = step

        frame = tiles[:k].clone()  # its own memory: the grid's overlays are not kept with the history
        if max(frame.shape[-2:]) > 96:  # keep the history small: frames are thumbnails
            scale = 96 / max(frame.shape[-2:])
            size = (max(1, round(frame.shape[-2] * scale)), max(1, round(frame.shape[-1] * scale)))
            frame = F.interpolate(frame.float(), size=size, mode="area").round().to(torch.uint8)
        self._frames.append((step, frame))
        if len(self._frames) > 4 * self.filmstrip_frames:  # bounded memory over long runs
            keep = select_frames(len(self._frames), 2 * self.filmstrip_frames)
            self._frames = [self._frames[i] for i in keep]
        if write_now:
            self.writer.picture(Picture(self._strip_tag(), step, self._strip_picture()))

    def _strip_tag(self) -> str:
        assert self._strip_of is not None
        return f"probelens/{self.methods[0]}_filmstrip/{self.layer_tags[self._strip_of[0]]}"

    def _strip_picture(self) -> Tensor:
        """The strip of the frames so far: one row per probe image, at most ``filmstrip_frames`` steps."""
        assert self.probe is not None and self._strip_of is not None
        shown = self._strip_of[1]
        names = [f"#{int(i)} {self.probe.class_name(int(self.probe.targets[i]))}" for i in shown]
        names[0] += " | steps"
        frames, steps = [f for _, f in self._frames], [str(s) for s, _ in self._frames]
        return filmstrip(frames, steps, self.filmstrip_frames, row_captions=names, min_tile=64)

    @override
    def at_fit_end(self, trainer: Run) -> None:
        if self._strip_pending is not None:
            self.writer.picture(Picture(self._strip_tag(), self._strip_pending, self._strip_picture()))
            self._strip_pending = None
