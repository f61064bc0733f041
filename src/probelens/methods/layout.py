"""What a layer's output *is*: a feature map ``[N,C,H,W]``, channels-last ``[N,H,W,C]``, tokens on a grid, or not
spatial at all, read from the forward structure of one traced pass.

Every layer method computes on ``[N,C,h,w]`` maps. Convolutional networks produce them directly; ConvNeXt blocks and
Swin stages keep their maps channels-last; vision transformers keep tokens ``[N,T,C]`` with ``T = h*w`` patch tokens,
possibly after a class token and register or distillation tokens; Hiera keeps its tokens in an unrolled order.
:func:`trace_layers` runs the model once and follows every axis of every tensor from the input image, op by op
(:mod:`probelens.methods._axes`): which axis holds the batch, which the grid's rows and columns (and in which order),
which the channels. The shape alone is never trusted: ``[N,32,32,32]`` can be NCHW or NHWC, ``[N,256,16]`` can be 16x16
tokens or 16 channels of 256 positions, and only the ops that made the tensor tell.

An output whose axes are not a map (a transposed map, positions folded into the batch by window partitioning, a
token-mixing MLP's ``[N,C,T]``, anything made by an op the tracker does not know) is refused by name with a message
that shows ``reshape=``; nothing is ever computed on a guessed axis. Tensors inside attention modules (attention maps,
queries, keys) are not offered as maps.

:class:`Layout` turns an output into the ``[N,C,h,w]`` view that every method uses (a view where it can be, and a
gradient taken with respect to the raw output is viewed the same way).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from probelens.methods._axes import AxisTracker, Facts, ancestors, grid_tags, layout_facts
from probelens.methods._modules import named_modules, strip_compile_prefix, unwrap_compiled
from probelens.methods.hooks import probe_context

Reshape = Callable[[Tensor], Tensor]
"""A user function from a layer's raw output to ``[N,C,h,w]`` (pytorch-grad-cam's ``reshape_transform``)."""
ReshapeSpec = Reshape | Mapping[str, Reshape] | None
LayoutKind = Literal["nchw", "nhwc", "tokens", "custom", "channels_first_tokens"]

MAX_PREFIX_TOKENS = 16
"""Tokens before the patch grid looked for when a model does not say (class, distillation, register tokens)."""


@dataclass(frozen=True)
class Layout:
    """How a layer's output holds its channels and positions.

    Attributes:
        kind: ``"nchw"``, ``"nhwc"`` (channels last), ``"tokens"`` (``[N,T,C]``, ``T = prefix + h*w``) or
            ``"custom"`` (the user's ``reshape``).
        grid: ``(h, w)`` of the map (``None`` for ``"custom"``).
        prefix: tokens before the grid (class, register, distillation tokens), dropped by :meth:`to_nchw`.
        order: tokens not in row-major order (Hiera's unrolled tokens): ``order[i]`` is the token at grid position
            ``i``, row-major; ``None`` for row-major tokens.
        reshape: the user's function for ``"custom"``.
    """

    kind: LayoutKind
    grid: tuple[int, int] | None = None
    prefix: int = 0
    reshape: Reshape | None = field(default=None, compare=False)
    order: tuple[int, ...] | None = field(default=None, repr=False)

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
            if self.order is not None:
                patches = patches[:, torch.tensor(self.order, device=tensor.device)]
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
            if self.order is not None:
                grid += " (unrolled order, read by index)"
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
        layout: the output's layout (from the forward structure), or ``None`` when it is not a spatial map.
        readings: for an output that is not read as a map but whose *shape* could be one (``[N,16,16,16]`` after a
            transpose), the layouts the shape alone would allow: the reason it is refused, not a choice.
        calls: how often the module ran in the forward pass.
        order: position in completion order of its first call.
        input_id: ``id()`` of the first tensor argument of its first call (the trace's tensors are kept alive while
            it runs; compare ids only between records of one trace).
        input_grid: that tensor's grid if it is a known spatial map, else ``None``.
        axes: the output's axes in words (``"(batch, channels, H 32, W 32)"``), for messages.
        main_path: its grid is the final map's grid or one that grid was made from (by strided convolutions,
            pooling, patch merging); ``False`` for a side branch whose grid never reaches the final map (GC-ViT's
            ``global_block`` pools a stage to 7x7 only to make queries for it).
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
    axes: str = ""
    main_path: bool = True
    grid_tags: frozenset[int] = frozenset()

    @property
    def spatial(self) -> bool:
        """A map with more than one position (a ``1x1`` gate or pooled vector has nothing to localise)."""
        grid = self.layout.grid if self.layout is not None else None
        return grid is not None and grid[0] * grid[1] > 1

    @property
    def ambiguous(self) -> bool:
        """Shaped like a map, but its forward structure does not say it is one: refused (``reshape=`` reads it)."""
        return self.layout is None and bool(self.readings)


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


def _layout_from(facts: Facts) -> Layout | None:
    if facts.kind is None or facts.grid is None:
        return None
    if facts.kind == "tokens":
        return Layout("tokens", facts.grid, facts.prefix, order=facts.order)
    return Layout(facts.kind, facts.grid)  # type: ignore[arg-type]


def trace_layers(model: nn.Module, example: Tensor) -> dict[str, LayerRecord]:
    """Run ``model`` once on ``example`` (eval mode, no autograd, RNG restored) and say what every module's output is.

    The layout comes from the forward structure, never from the shape alone: an :class:`~probelens.methods._axes.
    AxisTracker` follows every axis of every tensor from the input image through each op (convolutions, ``Linear``,
    reshapes, permutes, concatenations, attention, rolls), so a module's output is a map exactly when its axes hold the
    batch, the image grid's rows and columns, and channels (:func:`~probelens.methods._axes.layout_facts`). A ``[N,32,
    32,32]`` that a stage made by ``reshape(B,H,W,C).permute(0,3,1,2)`` is NCHW whatever its input was; Hiera's
    unrolled tokens are read through their token order; an op the tracker does not know leaves its output unread.
    The trace runs two copies of the first image, so the batch axis is visible.

    Returns:
        ``{name: LayerRecord}`` in completion order of each module's first call, for modules that returned a tensor.
    """
    net = unwrap_compiled(model)
    modules = named_modules(net)
    with torch.inference_mode(False):  # validate/test run under inference mode; the trace needs plain tensors
        first = example[:1].detach()
        x = torch.cat([first, first]).clone()
    image = (int(x.shape[-2]), int(x.shape[-1]))
    tracker = AxisTracker()
    records: dict[str, LayerRecord] = {}

    def make_hook(name: str, module: nn.Module):
        def hook(_mod: nn.Module, args: tuple, out: object) -> None:
            if not isinstance(out, Tensor):
                return
            if name in records:
                records[name].calls += 1
                return
            desc = tracker.descs.get(id(out))
            facts = layout_facts(desc, out.shape)
            internal = _attention_internal(name, modules)
            layout = None if internal else _layout_from(facts)
            readings = [] if layout is not None or internal else _readings(out.shape, int(x.shape[0]), image, None)
            readings = [r for r in readings if r.grid is not None and r.grid[0] * r.grid[1] > 1]
            arg = next((a for a in args if isinstance(a, Tensor)), None)
            source = _layout_from(layout_facts(tracker.descs.get(id(arg)), arg.shape)) if arg is not None else None
            records[name] = LayerRecord(
                name,
                module,
                tuple(out.shape),
                layout,
                readings,
                1,
                len(records),
                input_id=id(arg) if arg is not None else None,
                input_grid=source.grid if source is not None else None,
                axes=facts.axes,
                grid_tags=grid_tags(desc) if layout is not None else frozenset(),
            )

        return hook

    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name, module)))
        with probe_context(net), torch.no_grad():
            tracker.start(x)
            with tracker:
                net(x)
    finally:
        for h in handles:
            h.remove()
        tracker.alive.clear()
    final = next((r for r in reversed(records.values()) if r.spatial), None)
    if final is not None:
        main = ancestors(final.grid_tags, tracker.lineage)
        for record in records.values():
            record.main_path = record.layout is None or record.grid_tags <= main
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
    maps (by their forward structure), their shapes and axes, and the ``reshape=`` that fixes it.

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
        else:
            problems.append(refusal(record, (int(example.shape[-2]), int(example.shape[-1]))))
    if problems:
        raise ValueError(
            "layers do not output a spatial feature map [N, C, h, w] (NCHW, channels-last or tokens on a grid): "
            + "; ".join(problems)
            + ". Pick layers with a spatial output (probelens.methods.layer_summary(model, x) lists them), or "
            + reshape_hint(names[0] if len(names) == 1 else "<layer>")
        )
    return out


def refusal(record: LayerRecord, image: tuple[int, int]) -> str:
    """Why a layer's output is not read as a map: its shape, its axes as the forward pass made them, and what the
    shape alone would have suggested (the guess that is not taken)."""
    shape = "[N, " + ", ".join(str(s) for s in (record.shape or ())[1:]) + "]"
    head = f"{record.name!r} ({type(record.module).__name__}, output {shape})"
    shown = [r for r in record.readings if r.kind != "channels_first_tokens" and r.grid]
    if shown:
        words = {"nchw": "NCHW", "nhwc": "NHWC", "tokens": "tokens"}
        guesses = " or ".join(f"{words.get(r.kind, r.kind)} {r.grid[0]}x{r.grid[1]}" for r in shown if r.grid)
        return (
            f"{head} is shaped like a map ({guesses}), but the forward pass gives its axes as {record.axes or '?'}: "
            "not a map probelens can read without guessing"
        )
    return f"{head} is not a spatial map on a {image[0]}x{image[1]} image (axes {record.axes or '?'})"


def _checked_custom(model: nn.Module, example: Tensor, name: str, fn: Reshape, record: LayerRecord) -> Layout:
    from probelens.methods.hooks import probe_context

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
    """True when the *shape* of an output (and the module's type) allows only an ``[N,C,h,w]`` reading. A shape
    cannot tell a map from a transposed one, so no layout is decided on this alone any more (:func:`trace_layers`)."""
    if len(shape) != 4 or _channels_first(module) is False:
        return False
    readings = _readings(torch.Size(shape), int(shape[0]), image, None)
    return len(readings) == 1 and readings[0].kind == "nchw"


class LayerTraces:
    """The traces (:func:`trace_layers`) of the models one owner explains, made once and shared: every monitor on a
    model, its layer resolution, layout checks and architecture table read one trace instead of tracing again.

    A trace is kept per model (weakly: it goes with the model) and per example signature (image size, dtype,
    device), and is made again when the model's modules change (a head replaced between two fits).
    """

    def __init__(self) -> None:
        self._traces: weakref.WeakKeyDictionary[nn.Module, dict[tuple, dict[str, LayerRecord]]] = (
            weakref.WeakKeyDictionary()
        )
        self.made = 0  # traces run (the rest were shared)

    def records(self, model: nn.Module, example: Tensor) -> dict[str, LayerRecord]:
        net = unwrap_compiled(model)
        modules = named_modules(net)
        key = (
            tuple(example.shape[1:]),
            example.dtype,
            str(example.device),
            tuple((name, id(module)) for name, module in modules.items()),
        )
        per_model = self._traces.setdefault(net, {})
        if key not in per_model:
            per_model.clear()  # one signature at a time: a changed model's old trace is not needed
            per_model[key] = trace_layers(net, example)
            self.made += 1
        return per_model[key]


def layouts_for(
    model: nn.Module,
    example: Tensor,
    layers: Mapping[str, nn.Module],
    reshape: ReshapeSpec = None,
    outputs: Mapping[str, Tensor] | None = None,
    *,
    records: Mapping[str, LayerRecord] | None = None,
) -> dict[str, Layout]:
    """:func:`resolve_layouts` of ``layers`` (``outputs`` is accepted for callers that have the layers' outputs at
    hand; the layout is read from the forward structure all the same, never from their shapes)."""
    del outputs
    return resolve_layouts(model, example[:2], layers, reshape, records=records)


def layout_of(
    model: nn.Module, example: Tensor, name: str, module: nn.Module, output: Tensor, reshape: ReshapeSpec = None
) -> Layout:
    """The layout of one layer (``output``, its output on ``example``'s image size, is not needed to decide it)."""
    del output
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
    "LayerTraces",
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
