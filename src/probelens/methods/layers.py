"""Resolve user layer specifications (``"auto"``, ``"all"``, names, module types) to named modules."""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor, nn

from probelens.methods._modules import is_conv2d, named_modules, strip_compile_prefix, unwrap_compiled
from probelens.methods.layout import LayerRecord, evenly_spaced, trace_layers

LayerSpec = str | Sequence[str | type] | type | None

__all__ = [
    "LayerSpec",
    "auto_layers",
    "conv_layers",
    "is_conv2d",
    "named_modules",
    "resolve_layers",
    "strip_compile_prefix",
    "unwrap_compiled",
]


def conv_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every 2-D convolution of ``model`` in registration order."""
    return {name: m for name, m in named_modules(model).items() if is_conv2d(m)}


def _unknown_layer_error(name: str, valid: Iterable[str]) -> ValueError:
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f" did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(repr(v) for v in valid[:40]) + (" ..." if len(valid) > 40 else "")
    return ValueError(f"unknown layer {name!r};{hint} valid layer names: {shown}")


def resolve_layers(
    model: nn.Module,
    layers: LayerSpec = "auto",
    example_input: Tensor | None = None,
    *,
    records: Mapping[str, LayerRecord] | None = None,
) -> dict[str, nn.Module]:
    """Turn a layer specification into an ordered ``{name: module}`` dict.

    Args:
        model: the network (a ``torch.compile`` wrapper is looked through).
        layers: ``"auto"`` (the last spatial layer of each resolution stage, see :func:`auto_layers`; needs
            ``example_input``, else falls back to the last conv of every stage found by ``"all"``), ``"all"`` (every
            2-D convolution), ``"last"`` (the last 2-D convolution), a layer name, a module type (every module of that
            type), or a sequence mixing names and types. Names may carry ``_orig_mod.`` (or FSDP) prefixes.
        example_input: a small batch used to trace output shapes for ``"auto"``.
        records: a trace of ``model`` on ``example_input`` already made (:class:`~probelens.methods.layout.
            LayerTraces` shares one between every monitor of a model).

    Returns:
        Ordered mapping from qualified name to module.

    Raises:
        ValueError: an unknown name (the message lists valid names and close matches), an empty selection, or a model
            without 2-D convolutions when one is needed.
    """
    modules = named_modules(model)
    if layers is None:
        layers = "auto"
    if isinstance(layers, str) and layers == "auto" and example_input is not None:
        return auto_layers(model, example_input, records=records)
    if isinstance(layers, str) and layers in ("auto", "all", "last"):
        convs = {n: m for n, m in modules.items() if is_conv2d(m)}
        if not convs:
            raise ValueError(
                f"{type(model).__name__} has no 2-D convolution, so layers={layers!r} selects nothing; pass layer "
                f"names explicitly (valid: {', '.join(list(modules)[:20])})"
            )
        if layers == "all":
            return convs
        if layers == "last":
            name = list(convs)[-1]
            return {name: convs[name]}
        return convs
    specs: Sequence[str | type] = [layers] if isinstance(layers, (str, type)) else list(layers)
    if not specs:
        raise ValueError("layers is empty; pass 'auto', 'all', a layer name or a list of names")
    out: dict[str, nn.Module] = {}
    for spec in specs:
        if isinstance(spec, type):
            if not issubclass(spec, nn.Module):
                raise TypeError(f"layer types must be nn.Module subclasses, got {spec!r}")
            found = {n: m for n, m in modules.items() if isinstance(m, spec)}
            if not found:
                raise ValueError(f"{type(model).__name__} has no module of type {spec.__name__}")
            out.update(found)
        elif isinstance(spec, str):
            name = strip_compile_prefix(spec)
            if name not in modules:
                raise _unknown_layer_error(spec, modules)
            out[name] = modules[name]
        else:
            raise TypeError(f"a layer must be a name (str) or a module type, got {type(spec).__name__}: {spec!r}")
    return out


def auto_layers(
    model: nn.Module, example_input: Tensor, *, records: Mapping[str, LayerRecord] | None = None
) -> dict[str, nn.Module]:
    """Pick one layer per resolution stage from the real forward pass.

    The model is traced once on ``example_input`` (:func:`probelens.methods.layout.trace_layers`: no grad, eval mode,
    every output's layout read from the forward structure: NCHW, channels-last, tokens on a grid, or not a map), or
    ``records`` (such a trace, made already) is used. Then:

    - only the main path counts: a side branch whose grid never reaches the final map (GC-ViT's ``global_block``,
      which pools each stage to 7x7 to make queries) is not a stage;
    - an output shaped like a map whose axes the forward pass does not show as one (a transposed map, an order a
      reshape scrambled) is skipped, with an info line on the ``probelens`` logger naming it: pass it by name with
      ``reshape=`` to use it;

    - only spatial maps count (more than one position), of modules that ran **once** (a reused module, e.g. the ReLU
      of a torchvision ``Bottleneck``, is captured at its last call, which is not the stage's map), that are not
      pass-throughs (``Identity``, dropout) or tensors inside attention modules; 1x1 gates (squeeze-excite) and pooled
      vectors are ignored, so they do not split a stage;
    - a module whose parent outputs a map of a *different* grid is internal to a block that changes resolution (the
      first conv of a stride-2 bottleneck, a DenseNet transition's norm) and is not a stage's map;
    - consecutive maps on one grid form a stage; a stage without a learned layer (an adaptive pool alone) is skipped;
      each stage gives the last module to finish on it (a block container finishes after its children, so a ResNet
      gives ``layer1`` ... ``layer4``, a plain ``nn.Sequential`` CNN its last ReLU per resolution);
    - an isotropic transformer (a single stage of tokens or channels-last maps, e.g. ViT/DeiT) gives up to four
      evenly spaced blocks ending at the last, each at its first token output (``blocks.11.norm1`` in timm: the
      last block's *output* tokens do not reach a class-token head, so their gradient is zero); hierarchical
      transformers (Swin) give one layer per stage like a CNN.

    Falls back to every 2-D convolution if no stage is found.
    """
    if records is None:
        records = trace_layers(model, example_input)
    once = {name: r for name, r in records.items() if r.calls == 1}
    _say_skipped([r for r in once.values() if r.ambiguous and r.main_path and not _pass_through(r.module)])
    grids: dict[str, tuple[int, int]] = {
        name: r.layout.grid for name, r in once.items() if r.spatial and r.layout and r.layout.grid
    }
    # blocks whose output is a pooled vector or a 1x1 map still change resolution
    block_grids = {name: r.layout.grid if r.layout else (1, 1) for name, r in once.items() if r.shape}

    @functools.cache
    def branching_or_transition(block_name: str) -> bool:
        """A block that branches (a residual shortcut reads its input too), or a transition (DenseNet's, torchvision
        ConvNeXt's downsample) that only normalises or mixes channels on its input grid before changing it."""
        block = once[block_name]
        inside = [r for n, r in once.items() if n.startswith(block_name + ".") and r.layout is not None]
        depth = block_name.count(".") + 1
        readers = [r for r in inside if r.name.count(".") == depth and r.input_id == block.input_id]
        return len(readers) > 1 or all(
            block_grids.get(r.name) == block.input_grid
            and not (is_conv2d(r.module) and tuple(getattr(r.module, "kernel_size", (1, 1))) != (1, 1))
            for r in inside
            if block_grids.get(r.name, block_grids[block_name]) != block_grids[block_name]
        )

    def internal(name: str) -> bool:
        """Inside a block that leaves this grid: an ancestor reads a map on it and writes another grid, and the
        record is below one of its children, or the block branches or is a transition."""
        parts = name.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            block = once.get(".".join(parts[:depth]))
            if block is None or block_grids.get(block.name, grids[name]) == grids[name]:
                continue
            if block.input_grid != grids[name]:
                continue
            if depth < len(parts) - 1 or branching_or_transition(block.name):
                return True
        return False

    usable = [
        r
        for name, r in once.items()
        if name in grids and r.main_path and not _pass_through(r.module) and not internal(name)
    ]
    stages: list[list] = []
    for r in usable:
        if stages and _same_stage(grids[stages[-1][-1].name], grids[r.name]):
            stages[-1].append(r)
        else:
            stages.append([r])
    stages = [s for s in stages if any(_learned(r.module) for r in s)]
    transformer = [s for s in stages if any(r.layout.kind in ("tokens", "nhwc") for r in s)]
    out: dict[str, nn.Module] = {}
    for stage in stages:
        if len(transformer) == 1 and stage is transformer[0]:
            picked = _spaced_blocks(stage)
            if picked:
                out.update({r.name: r.module for r in picked})
                continue
        out.setdefault(stage[-1].name, stage[-1].module)
    if not out:
        convs = conv_layers(model)
        if not convs:
            raise ValueError(
                f"{type(model).__name__} has no 2-D convolution and no layer that outputs a spatial map (NCHW, "
                f"channels-last or tokens on a grid) on a {example_input.shape[-2]}x{example_input.shape[-1]} "
                "input, so layers='auto' selects nothing; pass layer names, with reshape= for outputs that hold a "
                "map in another layout"
            )
        return convs
    return out


_LOG = logging.getLogger("probelens")


def _say_skipped(refused: list[LayerRecord]) -> None:
    """One info line for the map-shaped outputs that ``"auto"`` leaves out because their layout is not known."""
    if not refused:
        return
    shown = "; ".join(f"{r.name!r} {r.axes}" for r in refused[:4]) + (" ..." if len(refused) > 4 else "")
    _LOG.info(
        "layers='auto' skips %d layer(s) shaped like a map whose axes the forward pass does not show as one (%s); "
        "name them with reshape= to use them",
        len(refused),
        shown,
    )


_PASS_THROUGH_TYPES = (nn.Identity, nn.modules.dropout._DropoutNd)


def _pass_through(module: nn.Module) -> bool:
    """Identity, dropout and permutes (torchvision's ``ops.Permute``): never a stage's layer of their own."""
    return isinstance(module, _PASS_THROUGH_TYPES) or (
        type(module).__name__ == "Permute" and not any(True for _ in module.parameters())
    )


def _same_stage(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """One resolution: equal grids, or grids that differ only by an unpadded convolution's border (Inception-v3's
    149 -> 147), at most 5% per side."""
    return all(abs(p - q) <= 0.05 * max(p, q) for p, q in zip(a, b))


def _learned(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _spaced_blocks(stage: list) -> list:
    """Up to four evenly spaced blocks of the longest run of sibling blocks in ``stage``, each at its first token
    output (the block's normalised input)."""
    children: dict[str, list] = {}
    for r in stage:
        if "." in r.name:
            children.setdefault(r.name.rsplit(".", 1)[0], []).append(r)
    # blocks: siblings of one type (a transformer's blocks), not the different parts of one block
    runs = [[r.name for r in rs] for rs in children.values() if len({type(r.module) for r in rs}) == 1]
    blocks = max(runs, key=len, default=[])
    if len(blocks) < 2:
        return []
    picked = []
    for index in evenly_spaced(len(blocks), 4):
        block = blocks[index]
        first = next(
            (r for r in stage if r.name.startswith(block + ".") and r.layout.kind in ("tokens", "nhwc")),
            None,
        )
        picked.append(first or next(r for r in stage if r.name == block))
    return picked
