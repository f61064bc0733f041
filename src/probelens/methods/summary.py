"""A table of the layers an explanation can target: name, type, output shape, parameters, receptive field."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from probelens.methods._hooks import ActivationCapture, probe_context
from probelens.methods.layers import is_conv2d, named_modules, unwrap_compiled


@dataclass
class LayerInfo:
    """One row of :func:`layer_summary`."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    parameters: int
    receptive_field: tuple[int, int] | None
    is_conv: bool


def _extent(grad: Tensor) -> tuple[int, int] | None:
    nz = grad.abs().sum(dim=(0, 1)) > 0
    if not nz.any():
        return None
    rows = nz.any(dim=1).nonzero().flatten()
    cols = nz.any(dim=0).nonzero().flatten()
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def layer_summary(model: nn.Module, example: Tensor, receptive_field: bool = True) -> list[LayerInfo]:
    """Describe every module that produces a spatial feature map ``[N,C,H,W]`` (``H*W > 1``) on ``example``.

    The receptive field is *measured*: the height and width of the region of input pixels with a non-zero gradient
    for the output position at the centre of the feature map (summed over channels), on the first example image.
    For chains of convolutions and poolings this equals the theoretical receptive field clipped to the image; ReLUs
    that are off and max-pooling (which routes the gradient to one input) can make it smaller. A field as large as
    the image means the layer sees everything.

    Args:
        model: the network.
        example: ``[N,C,H,W]``; only the first image is used.
        receptive_field: also measure receptive fields (one backward pass per layer on one image).

    Returns:
        Rows in the order the modules finish their forward pass.
    """
    net = unwrap_compiled(model)
    modules = named_modules(net)
    capture = ActivationCapture(modules)
    finished: list[str] = []

    def note(name: str):
        def hook(*_: object) -> None:
            if name not in finished:
                finished.append(name)

        return hook

    handles = []
    rows: list[LayerInfo] = []
    with probe_context(net):
        x = example[:1].detach().clone().requires_grad_(True)
        try:
            for name, module in modules.items():
                handles.append(module.register_forward_hook(note(name)))
            with _tolerant(capture):
                net(x)
        finally:
            for h in handles:
                h.remove()
        for name in finished:
            out = capture.outputs.get(name)
            if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[-2] * out.shape[-1] == 1:
                continue  # not a spatial map (a 1x1 global pool output has nothing to localise)
            rf = None
            if receptive_field and out.requires_grad:
                h, w = out.shape[-2:]
                (grad,) = torch.autograd.grad(out[0, :, h // 2, w // 2].sum(), x, retain_graph=True, allow_unused=True)
                rf = None if grad is None else _extent(grad)
            module = modules[name]
            rows.append(
                LayerInfo(
                    name=name,
                    type=type(module).__name__,
                    output_shape=tuple(out.shape[1:]),
                    parameters=sum(p.numel() for p in module.parameters()),
                    receptive_field=rf,
                    is_conv=is_conv2d(module),
                )
            )
    return rows


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
        "`layers=`; RF = receptive field of the centre unit, measured from input gradients.",
        "",
        "| layer | type | output (C, H, W) | parameters | RF (h x w) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        rf = "-" if r.receptive_field is None else f"{r.receptive_field[0]} x {r.receptive_field[1]}"
        name = f"**{r.name}**" if r.is_conv else r.name
        lines.append(f"| {name} | {r.type} | {tuple(r.output_shape)} | {r.parameters:,} | {rf} |")
    return "\n".join(lines)
