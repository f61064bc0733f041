"""Module naming through wrappers: ``torch.compile``'s ``_orig_mod``, FSDP's ``_fsdp_wrapped_module`` and the
activation-checkpoint wrapper. Both :mod:`probelens.methods.layers` (what a layer spec selects) and
:mod:`probelens.methods.layout` (what a layer's output is) use it, so neither imports the other's internals."""

from __future__ import annotations

from torch import nn

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
