"""A table of the layers an explanation can target: name, type, output shape, parameters, receptive field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from probelens.methods.hooks import ActivationCapture, probe_context
from probelens.methods.layers import is_conv2d, named_modules, unwrap_compiled
from probelens.methods.layout import LayerRecord, trace_layers


@dataclass
class LayerInfo:
    """One row of :func:`layer_summary`.

    Attributes:
        name: qualified module name (use it in ``layers=``).
        type: the module's class name.
        output_shape: the raw output shape of one image (e.g. ``(C, H, W)``, ``(H, W, C)``, ``(T, C)``).
        parameters: parameters of the module and its children.
        receptive_field: measured ``(h, w)`` in input pixels of the map's centre position, ``None`` if not measured.
        is_conv: a 2-D convolution.
        layout: how the output holds channels and positions (:meth:`probelens.methods.layout.Layout.describe`:
            ``"NCHW"``, ``"NHWC (channels last)"``, ``"tokens 1+14x14 (1 prefix token dropped)"``), or
            ``"not a map (axes ...)"`` for an output shaped like a map whose axes the forward pass does not show as
            one (pass ``reshape=`` to use it).
        map_shape: ``(C, h, w)`` of the map every method computes on, ``None`` for an output that is not read as a map.
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    parameters: int
    receptive_field: tuple[int, int] | None
    is_conv: bool
    layout: str = "NCHW"
    map_shape: tuple[int, int, int] | None = None


def _extent(grad: Tensor) -> tuple[int, int] | None:
    nz = grad.abs().sum(dim=(0, 1)) > 0
    if not nz.any():
        return None
    rows = nz.any(dim=1).nonzero().flatten()
    cols = nz.any(dim=0).nonzero().flatten()
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def layer_summary(
    model: nn.Module,
    example: Tensor,
    receptive_field: bool = True,
    max_receptive_fields: int | None = 48,
    *,
    records: Mapping[str, LayerRecord] | None = None,
) -> list[LayerInfo]:
    """Describe every module whose output is a spatial map on ``example``: NCHW feature maps, channels-last maps
    (ConvNeXt blocks, Swin stages) and tokens on a grid (vision transformers), each named with its layout
    (:mod:`probelens.methods.layout`); outputs shaped like a map whose axes the forward pass does not show as one
    are listed as ``"not a map"``.

    The receptive field is *measured*: the height and width of the region of input pixels with a non-zero gradient
    for the map position at the centre (a fixed random mix of its channels, so that a norm whose channel sum is
    constant, e.g. ``LayerNorm2d``, still passes a gradient), on the first example image. For chains of
    convolutions and poolings this equals the theoretical receptive field clipped to the image; ReLUs that are off
    and max-pooling (which routes the gradient to one input) can make it smaller. A field as large as the image
    means the layer sees everything (every token after a global attention).

    Args:
        model: the network.
        example: ``[N,C,H,W]``; only the first image is used.
        receptive_field: also measure receptive fields: one forward and backward pass of ``k`` copies of the image
            for ``k`` layers (in chunks of 32).
        max_receptive_fields: measure at most this many layers' fields, evenly spaced over the rows (the first and
            the last included; the others show ``None``); ``None`` measures every row. The monitors' table passes the
            probe's size, so measuring costs one forward and backward pass of a probe batch.
        records: a trace of ``model`` on ``example`` already made (shared by every monitor of a model).

    Returns:
        Rows in the order the modules finish their forward pass.
    """
    net = unwrap_compiled(model)
    modules = named_modules(net)
    if records is None:
        records = trace_layers(net, example[:1])
    listed = [r for r in records.values() if r.spatial or r.ambiguous]
    fields: dict[str, tuple[int, int] | None] = {}
    if receptive_field:
        measured = listed
        if max_receptive_fields is not None and len(listed) > max(2, max_receptive_fields):
            k = max(2, max_receptive_fields)
            picks = sorted({round(i * (len(listed) - 1) / (k - 1)) for i in range(k)})
            measured = [listed[i] for i in picks]
        for start in range(0, len(measured), _RF_CHUNK):
            fields.update(_receptive_fields(net, modules, example[:1], measured[start : start + _RF_CHUNK]))
    rows: list[LayerInfo] = []
    for record in listed:
        module = modules[record.name]
        map_shape = None
        if record.layout is not None and record.layout.grid is not None and record.shape is not None:
            channels = _map_channels(record)
            map_shape = (channels, *record.layout.grid) if channels else None
        rows.append(
            LayerInfo(
                name=record.name,
                type=type(module).__name__,
                output_shape=tuple(record.shape[1:]) if record.shape else (),
                parameters=sum(p.numel() for p in module.parameters()),
                receptive_field=fields.get(record.name),
                is_conv=is_conv2d(module),
                layout=record.layout.describe() if record.layout is not None else f"not a map {record.axes}",
                map_shape=map_shape,
            )
        )
    return rows


_RF_CHUNK = 32
"""Layers whose receptive fields one batched backward pass measures (one probe-image copy each)."""


def _map_channels(record: LayerRecord) -> int | None:
    layout, shape = record.layout, record.shape
    if layout is None or shape is None:
        return None
    if layout.kind == "nchw":
        return int(shape[1])
    if layout.kind in ("nhwc", "tokens"):
        return int(shape[-1])
    return None


def _receptive_fields(
    net: nn.Module, modules: dict[str, nn.Module], image: Tensor, records: list[LayerRecord]
) -> dict[str, tuple[int, int] | None]:
    """Receptive fields of several layers from one forward and one backward pass: copy ``k`` of the image is read at
    layer ``k``'s centre (a fixed random mix of its channels), and in eval mode the copies do not interact, so the
    input gradient of copy ``k`` is layer ``k``'s field alone."""
    spatial = [r for r in records if r.layout is not None]
    if not spatial:
        return {}
    capture = ActivationCapture({r.name: modules[r.name] for r in spatial})
    out: dict[str, tuple[int, int] | None] = {}
    with probe_context(net):
        x = image.detach().repeat(len(spatial), 1, 1, 1).requires_grad_(True)
        with _tolerant(capture):
            net(x)
        mix = torch.Generator().manual_seed(0)
        total = x.new_zeros(())
        used = []
        for k, record in enumerate(spatial):
            raw = capture.outputs.get(record.name)
            if not isinstance(raw, Tensor) or not raw.requires_grad or record.layout is None:
                continue
            view = record.layout.to_nchw(raw)
            h, w = view.shape[-2:]
            weights = torch.randn(view.shape[1], generator=mix).to(device=view.device, dtype=view.dtype)
            total = total + (view[k, :, h // 2, w // 2] * weights).sum()
            used.append((k, record.name))
        if used and total.requires_grad:
            (grad,) = torch.autograd.grad(total, x, allow_unused=True)
            for k, name in used:
                out[name] = None if grad is None else _extent(grad[k : k + 1])
    return out


class _tolerant:
    """Use an :class:`ActivationCapture` but skip modules whose output is not a tensor (tuples, dicts)."""

    def __init__(self, capture: ActivationCapture) -> None:
        self.capture = capture
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> ActivationCapture:
        def make(name: str):
            def hook(_m: nn.Module, _i: object, out: object) -> object:
                if isinstance(out, Tensor):
                    self.capture.outputs[name] = out
                    return out.clone()
                return None

            return hook

        try:
            for name, module in self.capture.layers.items():
                self._handles.append(module.register_forward_hook(make(name)))
        except BaseException:
            self.__exit__()
            raise
        return self.capture

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def summary_markdown(rows: list[LayerInfo], image_size: tuple[int, int]) -> str:
    """The rows as a Markdown table (TensorBoard's text plugin renders it)."""
    lines = [
        f"Layers with a spatial output on a {image_size[0]}x{image_size[1]} probe image. Use these names in "
        "`layers=`; map = the (C, h, w) every method computes on; RF = receptive field of the centre position, "
        "measured from input gradients (- where not measured: the table costs one extra pass); a layer that is "
        "'not a map' needs `reshape=`.",
        "",
        "| layer | type | output | layout | map (C, h, w) | parameters | RF (h x w) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rf = "-" if r.receptive_field is None else f"{r.receptive_field[0]} x {r.receptive_field[1]}"
        name = f"**{r.name}**" if r.is_conv else r.name
        shown = "-" if r.map_shape is None else str(tuple(r.map_shape))
        lines.append(
            f"| {name} | {r.type} | {tuple(r.output_shape)} | {r.layout} | {shown} | {r.parameters:,} | {rf} |"
        )
    return "\n".join(lines)
