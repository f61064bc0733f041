"""Resolve user layer specifications (``"auto"``, ``"all"``, names, module types) to named modules."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

LayerSpec = str | Sequence[str | type] | type | None

_COMPILE_PREFIX = "_orig_mod."
# wrappers that put the user's module one level down: torch.compile, FSDP (FullyShardedDataParallel) and the
# activation-checkpoint wrapper that FSDP strategies apply
_WRAPPER_ATTRS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """Return the eager module behind a ``torch.compile`` wrapper (or the module itself).

    Hooks on a compiled module fire, but the captured activation is off the autograd path, so every explanation runs
    through the original module.
    """
    orig = getattr(model, "_orig_mod", None)
    return orig if isinstance(orig, nn.Module) else model


def strip_compile_prefix(name: str) -> str:
    """``"_orig_mod.features.0"`` -> ``"features.0"`` (also nested prefixes of compiled submodules), and the same for
    the FSDP and activation-checkpoint wrappers: ``"_fsdp_wrapped_module.features.0._fsdp_wrapped_module"`` ->
    ``"features.0"``."""
    parts = [part for part in name.split(".") if part not in _WRAPPER_ATTRS]
    return ".".join(parts)


def _innermost(module: nn.Module) -> nn.Module:
    """The user's module behind any stack of compile / FSDP / checkpoint wrappers."""
    while True:
        inner = next((getattr(module, attr, None) for attr in _WRAPPER_ATTRS if hasattr(module, attr)), None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """All submodules by their qualified name, with wrapper prefixes (``torch.compile``'s ``_orig_mod``, FSDP's
    ``_fsdp_wrapped_module``, ``_checkpoint_wrapped_module``) removed and each wrapper replaced by the module it wraps,
    so hooks and type checks see the user's module. The root module (name ``""``) is left out."""
    out: dict[str, nn.Module] = {}
    for name, module in unwrap_compiled(model).named_modules():
        clean = strip_compile_prefix(name)
        if not clean or clean in out:
            continue
        out[clean] = _innermost(module)
    return out


def is_conv2d(module: nn.Module) -> bool:
    """True for 2-D convolutions (``nn.Conv2d``, its subclasses and lazy variants once materialised)."""
    return isinstance(module, nn.modules.conv._ConvNd) and len(getattr(module, "kernel_size", ())) == 2


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
    model: nn.Module, layers: LayerSpec = "auto", example_input: Tensor | None = None
) -> dict[str, nn.Module]:
    """Turn a layer specification into an ordered ``{name: module}`` dict.

    Args:
        model: the network (a ``torch.compile`` wrapper is looked through).
        layers: ``"auto"`` (the last spatial layer of each resolution stage, see :func:`auto_layers`; needs
            ``example_input``, else falls back to the last conv of every stage found by ``"all"``), ``"all"`` (every
            2-D convolution), ``"last"`` (the last 2-D convolution), a layer name, a module type (every module of that
            type), or a sequence mixing names and types. Names may carry ``_orig_mod.`` (or FSDP) prefixes.
        example_input: a small batch used to trace output shapes for ``"auto"``.

    Returns:
        Ordered mapping from qualified name to module.

    Raises:
        ValueError: an unknown name (the message lists valid names and close matches), an empty selection, or a model
            without 2-D convolutions when one is needed.
    """
    modules = named_modules(model)
    if layers is None:
        layers = "auto"
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
        if example_input is not None:
            return auto_layers(model, example_input)
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


def auto_layers(model: nn.Module, example_input: Tensor) -> dict[str, nn.Module]:
    """Pick one layer per resolution stage: the last module to finish at each spatial size.

    The model is run once on ``example_input`` (no grad, eval mode, restored afterwards); every module whose output
    is a 4-D tensor is recorded in completion order. Consecutive records with the same spatial size form a stage;
    stages without a 2-D convolution are skipped. Within a stage the last completed module is chosen; when several
    modules return the very same tensor (a block and its last child), the outermost one wins, so a ResNet gives
    ``layer1`` ... ``layer4`` and a plain ``nn.Sequential`` CNN gives its last ReLU (or pool input) per resolution.
    """
    from probelens.methods._hooks import eval_mode  # local: _hooks imports this module's helpers

    modules = named_modules(model)
    records: list[tuple[str, tuple[int, int], Tensor, bool]] = []  # tensors kept alive so identity is meaningful
    handles = []

    def make_hook(name: str, module: nn.Module):
        def hook(_mod, _inp, out):
            if isinstance(out, Tensor) and out.dim() == 4:
                records.append((name, (out.shape[-2], out.shape[-1]), out, is_conv2d(module)))

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name, module)))
        with torch.no_grad(), eval_mode(model):
            unwrap_compiled(model)(example_input[:1])
    finally:
        for h in handles:
            h.remove()
    stages: list[list[tuple[str, tuple[int, int], Tensor, bool]]] = []
    for rec in records:
        if stages and stages[-1][-1][1] == rec[1]:
            stages[-1].append(rec)
        else:
            stages.append([rec])
    out: dict[str, nn.Module] = {}
    for stage in stages:
        if not any(r[3] for r in stage):
            continue
        last_out = stage[-1][2]
        # the outermost module returning the same tensor finishes last; prefer it
        name = stage[-1][0]
        for rec in reversed(stage):
            if rec[2] is not last_out:
                break
            name = rec[0] if rec[0].count(".") < name.count(".") else name
        out.setdefault(name, modules[name])
    if not out:
        return conv_layers(model)
    return out
