"""Setup checks of a monitor against the model it will explain: they raise before the first training step.

Each takes the monitor's ``name`` for its messages: the probe fits the model and the output is class scores
(:func:`check_probe_fits`), the selected layers output maps that can be read (:func:`check_spatial`).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_info
from torch import Tensor, nn

from probelens.methods.engine import OutputTransform, class_scores
from probelens.methods.hooks import ActivationCapture, probe_context
from probelens.methods.layers import conv_layers, unwrap_compiled
from probelens.methods.layout import LayerRecord, LayerTraces, Layout, ReshapeSpec, layouts_for
from probelens.probe import ProbeSet


def model_trace(traces: LayerTraces, model: nn.Module, probe: ProbeSet) -> dict[str, LayerRecord]:
    """The trace of ``model`` on the first probe image, from ``traces`` (the run's, held by the model's shared
    session: layer resolution, layout checks and the architecture table read one trace per model and probe size)."""
    net = unwrap_compiled(model)
    return traces.records(net, probe_example(net, probe))


def probe_example(model: nn.Module, probe: ProbeSet) -> Tensor:
    """The first probe image ``[1,C,H,W]`` on the model's device, in its (floating) dtype."""
    x = probe.images[:1]
    param = next(iter(model.parameters()), None)
    if param is not None and param.dtype.is_floating_point:
        x = x.to(device=param.device, dtype=param.dtype)
    elif param is not None:
        x = x.to(device=param.device)
    return x


def scores_of(name: str, output: Any, transform: OutputTransform | None) -> Tensor:
    """The class scores ``[N, K]`` in a model output, or a ``ValueError`` that shows ``output_transform=``."""
    try:
        return class_scores(output, transform)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: {err}") from err
    except Exception as err:  # the user's transform itself failed
        raise ValueError(
            f"{name}: output_transform raised {type(err).__name__}: {err} on the model's output of type "
            f"{type(output).__name__}; it must map that output to class scores [N, num_classes]"
        ) from err


def check_probe_fits(name: str, model: nn.Module, probe: ProbeSet, transform: OutputTransform | None) -> None:
    """One forward of one probe image, so a probe that does not fit the model, or an output that is not class
    scores, fails before training starts."""
    net = unwrap_compiled(model)
    try:
        with probe_context(net), torch.no_grad():
            output = net(probe_example(net, probe))
    except Exception as err:
        raise ValueError(
            f"{name}: the model cannot run on the probe images (shape {tuple(probe.images.shape)}): {err}. Build the "
            "probe from the same dataset and transforms the model trains on."
        ) from err
    scores = scores_of(name, output, transform)
    top = int(probe.targets.max())
    if top >= scores.shape[1]:
        raise ValueError(
            f"{name}: probe target {top} is out of range: the model outputs {scores.shape[1]} classes. Check the probe "
            "labels (and class_names) against the model's head."
        )


def check_spatial(
    name: str,
    model: nn.Module,
    probe: ProbeSet,
    layers: dict[str, nn.Module],
    needs_grad: bool = False,
    reshape: ReshapeSpec = None,
    *,
    traces: LayerTraces,
) -> dict[str, tuple[Layout, tuple[int, ...]]]:
    """Raise if a selected layer's output is not a map (NCHW, channels-last or tokens on a grid, or what ``reshape``
    makes of it; read from the forward structure of the model's shared trace, never guessed from the shape), never
    runs or, with ``needs_grad``, gets no gradient. Returns each layer's layout and the ``(C, h, w)`` of its map for
    one image, in forward (depth) order; says (on rank 0) how a layer that is not NCHW is read. ``traces``: the
    run's traces of the model (:func:`model_trace`)."""
    net = unwrap_compiled(model)
    x = probe_example(net, probe)
    capture = ActivationCapture(layers)
    try:
        with probe_context(net), torch.set_grad_enabled(needs_grad), capture:
            net(x.detach().clone().requires_grad_(needs_grad))
    except TypeError as err:
        raise ValueError(f"{name}: {err}") from err
    if needs_grad:
        detached = [layer for layer, out in capture.outputs.items() if not out.requires_grad]
        if detached:
            raise ValueError(
                f"{name}: no gradient reaches layers {detached} (gradient checkpointing with use_reentrant=True "
                "around them, or no_grad/detach in the forward); use checkpoint(..., use_reentrant=False) or pick "
                "layers outside the checkpointed block"
            )
    missing = [layer for layer in layers if layer not in capture.outputs]
    if missing:
        raise ValueError(
            f"{name}: layers {missing} never run in the forward pass; pick layers on the path from input to output "
            "(layer_summary(model, x) lists them)"
        )
    records = model_trace(traces, net, probe)
    try:
        layouts = layouts_for(net, x, layers, reshape, records=records)
    except ValueError as err:
        if not conv_layers(net) and not any(r.spatial for r in records.values()):
            raise ValueError(
                f"{name}: {type(net).__name__} has no 2-D convolution, so no layer outputs a spatial feature map; "
                "SaliencyMonitor and OcclusionMonitor explain any image model from its input"
            ) from err
        raise ValueError(f"{name}: {err}") from err
    read = [f"{layer} as {layout.describe()}" for layer, layout in layouts.items() if layout.kind != "nchw"]
    if read:  # say how a layer that is not an NCHW map is read (prefix tokens dropped, a user reshape)
        rank_zero_info(f"{name}: reading {'; '.join(read)}")
    # in forward order (the order the layers' outputs were completed), which is depth order
    return {
        layer: (layouts[layer], tuple(layouts[layer].to_nchw(out).shape[1:]))
        for layer, out in capture.outputs.items()
        if layer in layers
    }
