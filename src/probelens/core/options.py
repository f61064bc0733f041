"""Constructor checks of monitor options: type and range, with a message that names the option, the value, the allowed
range and the fix, so that a bad value fails when the monitor is built, not at its first firing."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"<{type(value).__name__}: {text[:60]}...>"


def _fail(owner: str, option: str, value: Any, allowed: str, fix: str = "") -> ValueError:
    message = f"{owner}: {option}={_shown(value)} is not allowed; {option} must be {allowed}"
    return ValueError(message + (f" ({fix})" if fix else ""))


def check_int(
    owner: str, option: str, value: Any, minimum: int = 1, *, none_ok: bool = False, fix: str = ""
) -> int | None:
    """``value`` as an ``int >= minimum`` (or ``None`` where ``none_ok``); else a ``ValueError`` naming it."""
    if value is None and none_ok:
        return None
    # numbers.Integral admits numpy integers (a config read through numpy); bools are not counts
    if _is_bool(value) or not isinstance(value, numbers.Integral) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or None" if none_ok else "")
        raise _fail(owner, option, value, allowed, fix)
    return int(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ in ("bool", "bool_")  # numpy.bool_, without numpy


def check_float(
    owner: str,
    option: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    none_ok: bool = False,
    fix: str = "",
) -> float | None:
    """``value`` as a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``); else a ``ValueError``."""
    if value is None and none_ok:
        return None
    ok = isinstance(value, numbers.Real) and not _is_bool(value) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        upper = "inf)" if math.isinf(high) else f"{high}]"
        allowed = f"a finite number in {bracket}{low}, {upper}" + (" or None" if none_ok else "")
        raise _fail(owner, option, value, allowed, fix)
    return float(value)


def check_choice(owner: str, option: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``; else a ``ValueError`` listing them."""
    if value not in choices:
        raise _fail(owner, option, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def check_bool(owner: str, option: str, value: Any) -> bool:
    if not _is_bool(value):
        raise _fail(owner, option, value, "True or False")
    return bool(value)


def check_cmap(owner: str, option: str, value: Any) -> str:
    """A colormap name matplotlib knows (checked now, not at the first firing)."""
    from probelens.render import colormap_lut

    try:
        colormap_lut(value)
    except (ValueError, TypeError, KeyError) as err:
        raise _fail(owner, option, value, "a matplotlib colormap name, e.g. 'jet', 'inferno', 'viridis'") from err
    return value


def check_names(owner: str, option: str, value: Any, valid: Sequence[str]) -> list[str]:
    """A name or a non-empty list of distinct names from ``valid``."""
    names = [value] if isinstance(value, str) else value
    if (
        not isinstance(names, (list, tuple))
        or not names
        or any(n not in valid for n in names)
        or len(set(names)) != len(names)
    ):
        raise _fail(owner, option, value, "a non-empty list of distinct names from " + ", ".join(valid))
    return list(names)


def check_single_layer(owner: str, option: str, value: Any, *, none_ok: bool = False) -> Any:
    """One layer: ``"auto"`` (the deepest stage), a layer name, a module type, or a one-element list of these."""
    if value is None and none_ok:
        return None
    spec = check_layer_spec(owner, option, value)
    many = (isinstance(spec, (list, tuple)) and len(spec) != 1) or spec in ("all",)
    if many:
        raise _fail(owner, option, value, "one layer: 'auto', a layer name or a module type", "this monitor shows one")
    return spec


def check_callable(owner: str, option: str, value: Any, example: str) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise _fail(owner, option, value, f"None or a callable, e.g. {option}={example}")
    return value


def check_key(owner: str, option: str, value: Any) -> str | None:
    """``None`` or a non-empty string (a key of dict items)."""
    if value is not None and (not isinstance(value, str) or not value):
        raise _fail(owner, option, value, "None or the key (a non-empty string) of the dataset's dict items")
    return value


def check_name(owner: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or value != value.strip("/ "):
        raise _fail(owner, "name", value, "None or a non-empty string without leading/trailing '/' or spaces")
    return value


def check_layer_spec(owner: str, option: str, value: Any, *, none_ok: bool = False) -> Any:
    """A layer specification as :func:`probelens.methods.layers.resolve_layers` takes it: a string (``"auto"``,
    ``"all"``, ``"last"`` or a layer name), a module type, or a non-empty sequence of names and types."""
    if value is None and none_ok:
        return None
    if type(value).__name__ == "ProbeSet":
        fix = (
            "FilterMonitor shows weights and takes no probe: FilterMonitor(layers='all') (or a layer name)"
            if owner == "FilterMonitor"
            else f"pass the probe first and layer names as {option}=, e.g. {owner}(probe, {option}='auto')"
        )
        raise TypeError(f"{owner}: got a ProbeSet as {option}=; {fix}")

    def one(v: Any) -> bool:
        return (isinstance(v, str) and bool(v)) or (isinstance(v, type) and issubclass(v, nn.Module))

    if one(value):
        return value
    if isinstance(value, (list, tuple)) and value and all(one(v) for v in value):
        return value
    allowed = "'auto', 'all', a layer name, a module type (e.g. torch.nn.Conv2d) or a non-empty list of these"
    raise _fail(owner, option, value, allowed + (" or None" if none_ok else ""), "see layer_summary(model, x)")


def dry_run(
    owner: str, method: Callable[..., Any], label: str, images: Tensor | None, options: Mapping[str, Any]
) -> None:
    """Call ``method`` once on a 1x1-conv stand-in model with ``options``, so its own argument checks (counts,
    ranges, baseline shapes) reject a bad value when the monitor is built or set up, with the method's message.

    ``images``: one probe image ``[1,C,H,W]``, or ``None`` before the probe is known; then a 3x8x8 stand-in image is
    used and tensor-valued options (whose shape depends on the real images) wait for setup.
    """
    if images is None:
        images = torch.zeros(1, 3, 8, 8)
        options = {k: v for k, v in options.items() if not isinstance(v, Tensor)}
    # the user's RNG stream is untouched (a monitor built between seeding and model creation changes nothing), and
    # the stand-in is built outside inference mode (setup of trainer.validate/test runs inside it)
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        images = images[:1].detach().cpu().clone()
        if not images.dtype.is_floating_point:
            images = images.float()
        channels = images.shape[1]
        # the stand-in takes the images' dtype, whatever torch's default dtype is (set_default_dtype(float64))
        stand_in = nn.Sequential(nn.Conv2d(channels, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        stand_in = stand_in.to(images.dtype)
        try:
            method(stand_in, images, torch.zeros(1, dtype=torch.long), **options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{owner}: {label} rejected: {err}") from err


def take_renamed(owner: str, deprecated: Mapping[str, Any], renames: Mapping[str, tuple[str, Any, Any]]) -> list[Any]:
    """The values of renamed options: ``renames`` maps each old name to ``(new name, value given as the new name,
    its default)``. An old name in ``deprecated`` (the constructor's ``**deprecated``) still works, with a
    ``DeprecationWarning`` naming the new one; both at once, or any other keyword, is a ``TypeError``.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     take_renamed("DeconvMonitor", {"layer": "model.3"}, {"layer": ("layers", "auto", "auto")})
        ['model.3']
        >>> str(caught[0].message)
        'DeconvMonitor: layer= is deprecated since 0.3.0; use layers= (same meaning)'
    """
    unknown = sorted(set(deprecated) - set(renames))
    if unknown:
        raise TypeError(f"{owner}.__init__() got an unexpected keyword argument {unknown[0]!r}")
    values = []
    for old, (new, value, default) in renames.items():
        if old in deprecated:
            if value is not default:
                raise TypeError(f"{owner}: got both {old}= (deprecated) and {new}=; pass {new}= only")
            warnings.warn(
                f"{owner}: {old}= is deprecated since 0.3.0; use {new}= (same meaning)",
                DeprecationWarning,
                stacklevel=3,
            )
            value = deprecated[old]
        values.append(value)
    return values
