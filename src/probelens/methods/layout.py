"""What a layer's output *is*: a feature map ``[N,C,H,W]``, channels-last ``[N,H,W,C]``, tokens on a grid, or not
spatial at all, decided from one traced forward pass.

Every layer method computes on ``[N,C,h,w]`` maps. Convolutional networks produce them directly; ConvNeXt blocks and
Swin stages keep their maps channels-last; vision transformers keep tokens ``[N,T,C]`` with ``T = h*w`` patch tokens,
possibly after a class token and register or distillation tokens. :func:`trace_layers` runs the model once on an
example and classifies every module's output by

1. **the module's type**: convolutions, batch/group/instance norms, 2-D pooling and ``LayerNorm2d`` write channels at
   dim 1; ``nn.Linear`` and ``nn.LayerNorm`` write them last;
2. **the shape**: a grid ``(h, w)`` must have the probe image's aspect ratio (within rounding and padding), tokens
   ``T - p = h*w`` for a prefix of ``p`` tokens (the model's ``num_prefix_tokens`` where it says so, else the
   smallest ``p`` that gives such a grid), and the batch axis must be the probe's;
3. **the forward structure**: an output that *is* an earlier module's output tensor (a block and its last child, an
   in-place ReLU) shares its layout, and a module that keeps its input's shape (an activation, a drop path) keeps its
   input's layout.

An output with two readings left after all three (e.g. ``[N,16,16,16]`` from a custom module) is *ambiguous* and
refused with a message that shows ``reshape=``; nothing is ever computed on a guessed axis. Tensors inside attention
modules (attention maps, window-partitioned tokens) are not spatial maps.

:class:`Layout` turns an output into the ``[N,C,h,w]`` view that every method uses (a view: no copy, and a gradient
taken with respect to the raw output is viewed the same way).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from probelens.methods.layers import named_modules, strip_compile_prefix, unwrap_compiled

Reshape = Callable[[Tensor], Tensor]
"""A user function from a layer's raw output to ``[N,C,h,w]`` (pytorch-grad-cam's ``reshape_transform``)."""
ReshapeSpec = Reshape | Mapping[str, Reshape] | None
LayoutKind = Literal["nchw", "nhwc", "tokens", "custom", "channels_first_tokens"]

_GRAPH_LIMIT = 256
_SCRAMBLED = object()  # a permute of a known map into an order that is neither NCHW nor NHWC
# autograd nodes that may move the channel axis: an output reached through one of them is not given its source's layout
_AXIS_MOVERS = (
    "Permute",
    "Transpose",
    "View",
    "Reshape",
    "Unsafe",
    "AsStrided",
    "Mm",
    "Bmm",
    "Expand",
    "Squeeze",
    "Unfold",
    "Im2Col",
    "Col2Im",
    "PixelShuffle",
    "PixelUnshuffle",
    "Cat",
    "Stack",
    "Split",
    "Chunk",
    "Index",
    "Gather",
    "Scatter",
    "Roll",
    "Flip",
    "Sort",
    "Take",
    "Select",
    "Slice",
    "Narrow",
)

MAX_PREFIX_TOKENS = 16
"""Tokens before the patch grid looked for when a model does not say (class, distillation, register tokens)."""


@dataclass(frozen=True)
class Layout:
    """How a layer's output holds its channels and positions.

    Attributes:
        kind: ``"nchw"``, ``"nhwc"`` (channels last), ``"tokens"`` (``[N,T,C]``, ``T = prefix + h*w``, row-major
            grid) or ``"custom"`` (the user's ``reshape``).
        grid: ``(h, w)`` of the map (``None`` for ``"custom"``).
        prefix: tokens before the grid (class, register, distillation tokens), dropped by :meth:`to_nchw`.
        reshape: the user's function for ``"custom"``.
    """

    kind: LayoutKind
    grid: tuple[int, int] | None = None
    prefix: int = 0
    reshape: Reshape | None = field(default=None, compare=False)

    def to_nchw(self, tensor: Tensor) -> Tensor:
        """The output viewed as ``[N,C,h,w]`` (for a gradient of the output too)."""
        if self.kind == "nchw":
            return tensor
        if self.kind == "nhwc":
            return tensor.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            assert self.grid is not None
            h, w = self.grid
            patches = tensor[:, self.prefix : self.prefix + h * w]
            return patches.reshape(tensor.shape[0], h, w, tensor.shape[-1]).permute(0, 3, 1, 2)
        assert self.reshape is not None
        return self.reshape(tensor)

    def describe(self) -> str:
        """``"NCHW"``, ``"NHWC (channels last)"``, ``"tokens 1+14x14 (1 prefix token dropped)"``, ``"reshape="``."""
        if self.kind == "nchw":
            return "NCHW"
        if self.kind == "nhwc":
            return "NHWC (channels last)"
        if self.kind == "tokens":
            assert self.grid is not None
            grid = f"{self.grid[0]}x{self.grid[1]}"
            if not self.prefix:
                return f"tokens {grid}"
            plural = "s" if self.prefix > 1 else ""
            return f"tokens {self.prefix}+{grid} ({self.prefix} prefix token{plural} dropped)"
        return "reshape="


NCHW = Layout("nchw")

# modules that write channels at dim 1 (their output is [N,C,H,W] when it is 4-D)
_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.Dropout2d,
)


def _channels_first(module: nn.Module) -> bool | None:
    """True: channels at dim 1; False: channels last; None: the type does not say."""
    if isinstance(module, nn.LayerNorm):
        # timm's and torchvision's LayerNorm2d (and LayerNormAct2d) normalise dim 1 of an NCHW map
        return type(module).__name__.lower().endswith("2d")
    if isinstance(module, _CHANNELS_FIRST):
        return True
    if isinstance(module, nn.Linear):
        return False
    return None


def _trusted_channels_last(module: nn.Module) -> bool:
    """A LayerNorm (not LayerNorm2d) normalises the last axis: its output is channels-last. The order of the positions
    before it is taken as row-major (Hiera's unrolled tokens, NesT's blocks are not; pass ``reshape=`` there)."""
    return isinstance(module, nn.LayerNorm) and _channels_first(module) is False


def _grid_fits(h: int, w: int, image: tuple[int, int], slack: float) -> bool:
    """Whether an ``h x w`` grid can tile an ``H x W`` image: the same stride on both axes within rounding (and,
    with ``slack``, the border lost by unpadded convolutions)."""
    big_h, big_w = image
    if h < 1 or w < 1 or h > big_h + 8 or w > big_w + 8:
        return False
    return abs(w - big_w * h / big_h) <= 1 + slack * w and abs(h - big_h * w / big_w) <= 1 + slack * h


def _token_grid(tokens: int, image: tuple[int, int], prefix: int) -> tuple[int, int] | None:
    count = tokens - prefix
    if count < 2:
        return None
    fits = [
        (h, count // h) for h in range(1, count + 1) if count % h == 0 and _grid_fits(h, count // h, image, slack=0)
    ]
    return fits[0] if len(fits) == 1 else None


def _readings(shape: torch.Size, batch: int, image: tuple[int, int], prefix_hint: int | None) -> list[Layout]:
    """Every layout a tensor of this shape could have on this image."""
    if len(shape) < 3 or shape[0] != batch:
        return []
    if len(shape) == 4:
        out = []
        if _grid_fits(shape[2], shape[3], image, slack=0.2):
            out.append(Layout("nchw", (int(shape[2]), int(shape[3]))))
        if _grid_fits(shape[1], shape[2], image, slack=0.2):
            out.append(Layout("nhwc", (int(shape[1]), int(shape[2]))))
        return out
    if len(shape) == 3:
        # the model's own count of prefix tokens first (timm's num_prefix_tokens), then the smallest that fits: a
        # model may add its class token late (CaiT, XCiT), so its early blocks have none
        prefixes = [prefix_hint] if prefix_hint is not None else []
        prefixes += [p for p in range(MAX_PREFIX_TOKENS + 1) if p != prefix_hint]
        out = []
        for prefix in prefixes:
            grid = _token_grid(int(shape[1]), image, prefix)
            if grid is not None:
                out.append(Layout("tokens", grid, prefix))
                break
        # [N, C, T] (channels first, e.g. a conv map flattened, or a token-mixing MLP): never read as a map, but its
        # possibility makes a [N, T, C] reading of the same tensor ambiguous
        grid = _token_grid(int(shape[2]), image, 0)
        if grid is not None:
            out.append(Layout("channels_first_tokens", grid, 0))
        return out
    return []


@dataclass
class LayerRecord:
    """One module in a traced forward pass (:func:`trace_layers`).

    Attributes:
        name: qualified module name.
        module: the module.
        shape: its output's shape (first call), ``None`` if the output is not a tensor.
        layout: the output's layout, or ``None`` when it is not a spatial map (or is ambiguous).
        readings: for an ambiguous output, the layouts it could have (empty otherwise).
        calls: how often the module ran in the forward pass.
        order: position in completion order of its first call.
        input_id: ``id()`` of the first tensor argument of its first call (the trace's tensors are kept alive while
            it runs; compare ids only between records of one trace).
        input_grid: that tensor's grid if it is a known spatial map, else ``None``.
    """

    name: str
    module: nn.Module
    shape: tuple[int, ...] | None
    layout: Layout | None
    readings: list[Layout]
    calls: int
    order: int
    input_id: int | None = None
    input_grid: tuple[int, int] | None = None

    @property
    def spatial(self) -> bool:
        """A map with more than one position (a ``1x1`` gate or pooled vector has nothing to localise)."""
        grid = self.layout.grid if self.layout is not None else None
        return grid is not None and grid[0] * grid[1] > 1

    @property
    def ambiguous(self) -> bool:
        return len(self.readings) > 1


def _prefix_hint(model: nn.Module) -> int | None:
    hint = getattr(model, "num_prefix_tokens", None)  # timm's vision transformers
    return int(hint) if isinstance(hint, int) and 0 <= hint <= 64 else None


_ATTENTION_WORDS = ("attention", "attn")


def _attention_internal(name: str, modules: Mapping[str, nn.Module]) -> bool:
    """An attention module or inside one (its maps, queries, keys, talking-heads logits, window partitions): by
    class name (``Attention``, ``WindowAttention``, ``XCA``'s ``attn``) or attribute name (``attn``, ``self_attn``)."""
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        module = modules.get(".".join(parts[:depth]))
        kind = type(module).__name__.lower() if module is not None else ""
        if any(word in kind or word in parts[depth - 1].lower() for word in _ATTENTION_WORDS):
            return True
    return False


def trace_layers(model: nn.Module, example: Tensor) -> dict[str, LayerRecord]:
    """Run ``model`` once on ``example`` (eval mode, RNG restored; with autograd, whose graph shows how a functional
    op made a tensor from recorded ones) and classify every module's output.

    Returns:
        ``{name: LayerRecord}`` in completion order of each module's first call, for modules that returned a tensor.
    """
    from probelens.methods._hooks import probe_context  # local: _hooks imports layers, which imports this lazily

    net = unwrap_compiled(model)
    modules = named_modules(net)
    with torch.inference_mode(False):  # validate/test run under inference mode; the trace needs autograd
        x = example.detach().clone().requires_grad_(True)
    batch, image = int(x.shape[0]), (int(x.shape[-2]), int(x.shape[-1]))
    hint = _prefix_hint(net)
    known: dict[int, Layout | None] = {id(x): NCHW}
    by_node: dict[object, Layout] = {}  # autograd node that made a recorded output -> its layout
    alive: list[Tensor] = [x]  # keeps ids unique while the trace runs
    records: dict[str, LayerRecord] = {}

    def make_hook(name: str, module: nn.Module):
        def hook(_mod: nn.Module, args: tuple, out: object) -> None:
            if not isinstance(out, Tensor):
                return
            if name in records:
                records[name].calls += 1
                known.setdefault(id(out), records[name].layout)
                alive.append(out)
                return
            layout, readings = _classify(name, module, args, out)
            if layout is not None:
                known[id(out)] = layout
            else:
                known.setdefault(id(out), None)
            if out.grad_fn is not None and layout is not None:
                by_node.setdefault(out.grad_fn, layout)
            alive.append(out)
            first = next((a for a in args if isinstance(a, Tensor)), None)
            source = known.get(id(first)) if first is not None else None
            records[name] = LayerRecord(
                name,
                module,
                tuple(out.shape),
                layout,
                readings,
                1,
                len(records),
                input_id=id(first) if first is not None else None,
                input_grid=source.grid if source is not None else None,
            )

        return hook

    def _classify(name: str, module: nn.Module, args: tuple, out: Tensor) -> tuple[Layout | None, list[Layout]]:
        if _attention_internal(name, modules):
            return None, []
        readings = _readings(out.shape, batch, image, hint)
        evidence = _channels_first(module)
        if evidence is not None and not (evidence is False and isinstance(module, nn.Linear)):
            # a Linear's last axis is its features, which a token-mixing MLP makes the tokens: no evidence
            kinds = ("nchw",) if evidence else ("nhwc", "tokens")
            readings = [r for r in readings if r.kind in kinds]
        elif known.get(id(out)) is not None:
            return known[id(out)], []
        first_arg = next((a for a in args if isinstance(a, Tensor)), None)
        if out.dim() == 4:
            # the module is a permute of a recorded map (torchvision's ops.Permute), or reads one (a LayerNorm
            # after a functional permute) and keeps all but the channel axis
            for moved, source in ((_permute_of_known(out), out), (_permute_of_known(first_arg), first_arg)):
                if moved is _SCRAMBLED:  # e.g. x.transpose(1, 3): [N, W, H, C] read as NHWC would be transposed
                    return None, []
                if (
                    isinstance(moved, Layout)
                    and source is not None
                    and source.shape[:3] == out.shape[:3]
                    and moved in readings
                ):
                    return moved, []
        if len(readings) == 1 and readings[0].kind == "nchw":
            return readings[0], []  # the one reading, channels first: a conv net's map
        if len(readings) == 1 and readings[0].kind != "channels_first_tokens" and _trusted_channels_last(module):
            return readings[0], []  # a LayerNorm normalises its channels, last
        # channels-last and token readings, and any choice between readings, need the forward structure to agree
        choices = [
            known.get(id(first_arg)) if first_arg is not None and first_arg.shape == out.shape else None,
            _features_of(first_arg, out),
        ]
        fitting = [c for c in _through_graph(out) if c in readings]
        if len(set(fitting)) == 1:
            choices.append(fitting[0])
        choice = next((c for c in choices if c is not None and c in readings), None)
        if choice is not None and choice.kind != "channels_first_tokens":
            return choice, []
        return None, readings if len(readings) > 1 else []

    def _features_of(first: Tensor | None, out: Tensor) -> Layout | None:
        """A module that maps the channels of a channels-last map or of tokens (a Linear, an MLP) keeps its input's
        positions: its output has the input's layout when all but the last axis agree."""
        if first is None or first.dim() != out.dim() or first.shape[:-1] != out.shape[:-1]:
            return None
        source = known.get(id(first))
        if source is None:
            fitting = _through_graph(first)
            source = fitting.pop() if len(fitting) == 1 else None
        return source if source is not None and source.kind in ("nhwc", "tokens") else None

    def _permute_of_known(tensor: Tensor | None) -> Layout | object | None:
        """If ``tensor`` is a permute/transpose (then perhaps ``contiguous()``) of a recorded 4-D map: its layout, or
        ``_SCRAMBLED`` when the axes end in an order that is neither NCHW nor NHWC; else ``None``."""
        if tensor is None or tensor.dim() != 4:
            return None
        node = tensor.grad_fn
        while node is not None and type(node).__name__.startswith("CloneBackward"):
            node = node.next_functions[0][0]
        if node is None:
            return None
        kind = type(node).__name__
        if kind.startswith("PermuteBackward"):
            order = list(getattr(node, "_saved_dims"))  # noqa: B009 (autograd saves them)
        elif kind.startswith("TransposeBackward"):
            order = [0, 1, 2, 3]
            a, b = int(getattr(node, "_saved_dim0")) % 4, int(getattr(node, "_saved_dim1")) % 4  # noqa: B009
            order[a], order[b] = order[b], order[a]
        else:
            return None
        parent = node.next_functions[0][0]
        source = by_node.get(parent) if parent is not None else None
        if source is None and parent is not None and getattr(parent, "variable", None) is x:
            source = NCHW
        if source is None or len(order) != 4 or source.kind not in ("nchw", "nhwc"):
            return None
        roles = ["N", "C", "H", "W"] if source.kind == "nchw" else ["N", "H", "W", "C"]
        moved = [roles[i] for i in order]
        if moved == ["N", "C", "H", "W"]:
            return Layout("nchw", source.grid)
        if moved == ["N", "H", "W", "C"]:
            return Layout("nhwc", source.grid)
        return _SCRAMBLED

    def _through_graph(out: Tensor) -> set[Layout]:
        """The layouts of the nearest recorded outputs that ``out`` was computed from by shape-keeping ops (a
        residual sum, an activation, a norm applied functionally), read off the autograd graph. A way through a
        permute, view, reshape, matrix product or gather (which may move the channel or the token axis) is not
        followed: a tensor made only that way has no layout from here; an elementwise op that joins such a branch
        with a followed one has the followed one's layout (both have its shape)."""
        start = out.grad_fn
        if start is None:
            return set()
        seen, frontier, found = {start}, [start], []
        while frontier and len(seen) < _GRAPH_LIMIT:
            node = frontier.pop(0)
            if node is not start and node in by_node:
                found.append(by_node[node])
                continue
            if getattr(node, "variable", None) is x:  # the model input
                found.append(NCHW)
                continue
            if any(word in type(node).__name__ for word in _AXIS_MOVERS):
                continue
            for parent, _ in node.next_functions:
                if parent is not None and parent not in seen:
                    seen.add(parent)
                    frontier.append(parent)
        return {layout for layout in found if layout is not None}

    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name, module)))
        with probe_context(net):  # with autograd: the graph tells how an output was made from recorded ones
            net(x)
    finally:
        for h in handles:
            h.remove()
    return records  # insertion order is completion order of each first call


def _reshape_for(name: str, reshape: ReshapeSpec) -> Reshape | None:
    if reshape is None:
        return None
    if callable(reshape):
        return reshape
    return reshape.get(name)


def reshape_hint(name: str) -> str:
    return (
        f"pass reshape={{{name!r}: lambda t: <t as [N, C, h, w]>}} (or one function for every such layer, like "
        "pytorch-grad-cam's reshape_transform)"
    )


def resolve_layouts(
    model: nn.Module,
    example: Tensor,
    layers: Mapping[str, nn.Module] | list[str],
    reshape: ReshapeSpec = None,
    *,
    records: Mapping[str, LayerRecord] | None = None,
) -> dict[str, Layout]:
    """The layout of each layer's output on ``example``, or a ``ValueError`` naming the layers that are not spatial
    maps or are ambiguous, their shapes and the ``reshape=`` that fixes it.

    Args:
        model: the network.
        example: ``[N,C,H,W]`` (one image suffices).
        layers: layer names (or a ``{name: module}`` mapping).
        reshape: a function from a raw output to ``[N,C,h,w]``, used for every layer whose output is not NCHW, or a
            ``{layer: function}`` mapping (used for exactly those layers).
        records: a trace of ``model`` on ``example`` already made (:func:`trace_layers`).
    """
    names = list(layers)
    reshape = check_reshape(reshape, "reshape")
    if isinstance(reshape, Mapping):
        reshape = {strip_compile_prefix(key): fn for key, fn in reshape.items()}  # `_orig_mod.` names as layers= takes
        unknown = [key for key in reshape if key not in names]
        if unknown:
            raise ValueError(f"reshape= names layers {unknown} that are not among the selected layers {names}")
    if records is None:
        records = trace_layers(model, example)
    out: dict[str, Layout] = {}
    problems: list[str] = []
    for name in names:
        record = records.get(name)
        custom = _reshape_for(name, reshape)
        explicit = isinstance(reshape, Mapping) and name in reshape
        if record is None:
            problems.append(f"{name!r} returned no tensor (or never ran) in the forward pass")
            continue
        if custom is not None and (explicit or record.layout is None or record.layout.kind != "nchw"):
            out[name] = _checked_custom(model, example, name, custom, record)
            continue
        if record.layout is not None:
            out[name] = record.layout
        elif record.ambiguous:
            readings = " or ".join(r.kind.upper() + f" {r.grid[0]}x{r.grid[1]}" for r in record.readings if r.grid)
            problems.append(f"{name!r} ({type(record.module).__name__}, output {record.shape}) could be {readings}")
        else:
            problems.append(
                f"{name!r} ({type(record.module).__name__}, output {record.shape}) is not a spatial map on a "
                f"{example.shape[-2]}x{example.shape[-1]} image"
            )
    if problems:
        raise ValueError(
            "layers do not output a spatial feature map [N, C, h, w] (NCHW, channels-last or tokens on a grid): "
            + "; ".join(problems)
            + ". Pick layers with a spatial output (probelens.methods.layer_summary(model, x) lists them), or "
            + reshape_hint(names[0] if len(names) == 1 else "<layer>")
        )
    return out


def _checked_custom(model: nn.Module, example: Tensor, name: str, fn: Reshape, record: LayerRecord) -> Layout:
    from probelens.methods._hooks import probe_context

    modules = named_modules(unwrap_compiled(model))
    seen: list[Tensor] = []

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, Tensor) and not seen:
            seen.append(out)

    # two images, so a reshape that drops or folds the batch axis is caught (it would show one image of N)
    batch = example[:2] if example.shape[0] >= 2 else torch.cat([example, example])
    handle = modules[name].register_forward_hook(hook)
    try:
        with torch.no_grad(), probe_context(unwrap_compiled(model)):
            unwrap_compiled(model)(batch.detach())
    finally:
        handle.remove()
    try:
        viewed = fn(seen[0])
    except Exception as err:
        raise ValueError(
            f"reshape= for layer {name!r} raised {type(err).__name__}: {err} on its output of shape {record.shape}"
        ) from err
    if not isinstance(viewed, Tensor) or viewed.dim() != 4 or viewed.shape[0] != batch.shape[0]:
        got = tuple(viewed.shape) if isinstance(viewed, Tensor) else type(viewed).__name__
        raise ValueError(
            f"reshape= for layer {name!r} must return [N, C, h, w] keeping the batch axis: checked on a batch of "
            f"{batch.shape[0]} probe images, its output of shape {tuple(seen[0].shape)} became {got} (use "
            "t.shape[0], not a fixed batch size)"
        )
    return Layout("custom", (int(viewed.shape[2]), int(viewed.shape[3])), reshape=fn)


def plainly_nchw(module: nn.Module, shape: torch.Size | tuple[int, ...], image: tuple[int, int]) -> bool:
    """True when an output can only be read as ``[N,C,h,w]`` (a conv net's map): no trace is needed to know."""
    if len(shape) != 4 or _channels_first(module) is False:
        return False
    readings = _readings(torch.Size(shape), int(shape[0]), image, None)
    return len(readings) == 1 and readings[0].kind == "nchw"


def layouts_for(
    model: nn.Module,
    example: Tensor,
    layers: Mapping[str, nn.Module],
    reshape: ReshapeSpec = None,
    outputs: Mapping[str, Tensor] | None = None,
) -> dict[str, Layout]:
    """:func:`resolve_layouts`, without tracing the model when ``outputs`` (the layers' outputs on ``example``'s
    image size) are all plainly NCHW (:func:`plainly_nchw`) and no ``reshape`` is given."""
    reshape = check_reshape(reshape, "reshape")
    image = (int(example.shape[-2]), int(example.shape[-1]))
    if (
        reshape is None
        and outputs is not None
        and all(name in outputs and plainly_nchw(module, outputs[name].shape, image) for name, module in layers.items())
    ):
        return dict.fromkeys(layers, NCHW)
    return resolve_layouts(model, example[:2], layers, reshape)


def layout_of(
    model: nn.Module, example: Tensor, name: str, module: nn.Module, output: Tensor, reshape: ReshapeSpec = None
) -> Layout:
    """The layout of one layer whose ``output`` (any batch) on ``example``'s image size is at hand."""
    image = (int(example.shape[-2]), int(example.shape[-1]))
    if reshape is None and plainly_nchw(module, output.shape, image):
        return NCHW
    return resolve_layouts(model, example[:1], {name: module}, reshape)[name]


def as_maps(tensors: Mapping[str, Tensor], layouts: Mapping[str, Layout] | None) -> dict[str, Tensor]:
    """``{layer: [N,C,h,w]}`` views of raw layer outputs (or their gradients)."""
    if not layouts:
        return dict(tensors)
    return {name: layouts[name].to_nchw(t) if name in layouts else t for name, t in tensors.items()}


def check_reshape(reshape: object, owner: str = "reshape") -> ReshapeSpec:
    """Validate a ``reshape=`` argument: ``None``, a callable, or a mapping from layer names to callables."""
    if reshape is None or callable(reshape):
        return reshape
    if isinstance(reshape, Mapping):
        bad = {k: type(v).__name__ for k, v in reshape.items() if not isinstance(k, str) or not callable(v)}
        if not bad:
            return reshape
        raise ValueError(
            f"{owner}: reshape={reshape!r} is not allowed; reshape= must map layer names (str) to functions (raw "
            f"output -> [N, C, h, w]); not a function or not a name: {bad}"
        )
    raise ValueError(
        f"{owner}: reshape={reshape!r} is not allowed; reshape= must be None, a function (raw output -> "
        "[N, C, h, w]) or a {layer name: function} mapping"
    )


def evenly_spaced(count: int, k: int) -> list[int]:
    """``k`` indices out of ``range(count)``, evenly spaced and ending at the last: ``(12, 4) -> [2, 5, 8, 11]``."""
    k = min(k, count)
    return sorted({count - 1 - math.floor(j * count / k) for j in range(k)})


__all__ = [
    "NCHW",
    "LayerRecord",
    "Layout",
    "Reshape",
    "ReshapeSpec",
    "as_maps",
    "check_reshape",
    "evenly_spaced",
    "layout_of",
    "layouts_for",
    "plainly_nchw",
    "resolve_layouts",
    "trace_layers",
]
