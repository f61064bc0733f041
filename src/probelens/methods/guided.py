"""Modified-ReLU backward rules: guided backpropagation and deconvnet, and deconvnet projections.

Both rules replace the backward pass of every ReLU and leave the forward values unchanged. For an upstream gradient
``g`` at a ReLU with input ``x``:

- guided backpropagation (Springenberg et al., 2015, "Striving for Simplicity"): ``g * [x > 0] * [g > 0]``;
- deconvnet (Zeiler & Fergus, 2014, "Visualizing and Understanding Convolutional Networks"): ``max(g, 0)``, which
  ignores the sign of the forward input.

All other layers keep their ordinary gradient (max-pooling routes through its "switches", convolutions through their
transposed filters), which is exactly the deconvnet of Zeiler & Fergus and the guided backward pass of Springenberg.

How ReLUs are found: a :class:`torch.overrides.TorchFunctionMode` is active during the forward pass and reroutes every
``torch.nn.functional.relu`` / ``relu_``, ``torch.relu`` / ``relu_`` and ``Tensor.relu`` / ``relu_`` call through an
autograd Function with the modified backward. ``nn.ReLU`` modules call ``F.relu``, so modules (also ``inplace=True``,
also one module reused several times, as in ResNet blocks) and functional calls are treated alike, and no module hook
is registered (full backward hooks fail on in-place ReLUs). Captum's ``GuidedBackprop``/``Deconvolution`` hook only
``nn.ReLU`` modules and silently return the plain gradient for models that call ``F.relu``; these functions do not.

What is not covered, and how it is reported (``unsupported=``): other activations (``ReLU6``/``hardtanh``,
``LeakyReLU``, ``PReLU``, ``ELU``, ``GELU``, ``SiLU``, ...) have no rule in either paper and keep their plain gradient,
as in Captum; a rectifier written as arithmetic (``clamp(min=0)``, ``x * (x > 0)``) or hidden inside TorchScript or
compiled code is invisible. When the forward pass runs such an activation, or no ReLU at all (the result would then be
the plain gradient), a ``UserWarning`` names it (``unsupported="warn"``, the default), a ``ValueError`` is raised
(``"raise"``) or nothing is said (``"ignore"``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from probelens.methods.engine import OutputTransform, forward_backward
from probelens.methods.hooks import probe_context
from probelens.methods.layers import resolve_layers, unwrap_compiled
from probelens.methods.layout import ReshapeSpec, layout_of

Rule = Literal["guided_backprop", "deconvnet"]
Unsupported = Literal["warn", "raise", "ignore"]
RULES: tuple[str, ...] = ("guided_backprop", "deconvnet")
UNSUPPORTED_POLICIES: tuple[str, ...] = ("warn", "raise", "ignore")
KEEP_MODES: tuple[str, ...] = ("max", "channel")

# F.relu_ is the same object as torch.relu_
_RELU_OUT_OF_PLACE = (F.relu, torch.relu, Tensor.relu)
_RELU_IN_PLACE = (torch.relu_, Tensor.relu_)
# activations whose backward the rules leave alone (matched by function name, trailing "_" of in-place forms removed);
# sigmoid/tanh/softmax are gates, not rectifiers, and are deliberately not reported
_OTHER_ACTIVATIONS = frozenset(
    {
        "hardtanh",  # nn.ReLU6 and F.relu6 run through hardtanh
        "relu6",
        "leaky_relu",
        "prelu",
        "rrelu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "silu",
        "mish",
        "hardswish",
        "softplus",
        "threshold",
    }
)


class _RectifiedBackward(torch.autograd.Function):
    """``relu`` in the forward pass, a modified-ReLU rule in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, guided: bool, inplace: bool) -> Tensor:
        if inplace:
            ctx.mark_dirty(x)
            out = torch.relu_(x)
        else:
            out = torch.relu(x)
        ctx.guided = guided
        # one tensor of the output's dtype and shape, as the plain relu saves (its output): non-reentrant gradient
        # checkpointing recomputes the plain relu in the backward pass and hands its saved tensors over by position,
        # dtype and shape. Guided backprop reads it, so it keeps the positive mask as a new tensor of that dtype: a
        # later in-place op on the output (another relu_) must not invalidate the backward pass; positive where the
        # output is, so the recomputed output serves as well
        ctx.save_for_backward((out > 0).to(out.dtype) if guided else out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        if ctx.guided:
            (out,) = ctx.saved_tensors
            grad = torch.where(out > 0, grad, torch.zeros_like(grad))  # relu(x) > 0 exactly where x > 0
        return grad.clamp_min(0), None, None


@dataclass
class RuleReport:
    """What a :func:`relu_backward_rule` context saw during its forward passes.

    Attributes:
        rule: the rule applied.
        relu_calls: how many ReLU calls were rerouted through the rule.
        other_activations: activation functions (by name) that ran with their plain gradient, with call counts.
    """

    rule: str
    relu_calls: int = 0
    other_activations: Counter[str] = field(default_factory=Counter)

    def problems(self) -> list[str]:
        """Human-readable reasons why the result is not a pure guided/deconvnet map (empty when it is)."""
        out = []
        if self.relu_calls == 0:
            out.append(
                f"no ReLU ran during the forward pass, so {self.rule} equals the plain gradient (ReLUs written as "
                "clamp(min=0) or inside TorchScript/compiled code cannot be seen)"
            )
        if self.other_activations:
            names = ", ".join(f"{n} (x{c})" for n, c in sorted(self.other_activations.items()))
            out.append(
                f"the forward pass ran activations without a {self.rule} rule: {names}; only ReLU backward passes are "
                "modified, these keep their plain gradient (as in Captum)"
            )
        return out


class _ReluRuleMode(TorchFunctionMode):
    def __init__(self, report: RuleReport) -> None:
        super().__init__()
        self.report = report
        self.guided = report.rule == "guided_backprop"

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _RELU_OUT_OF_PLACE or func in _RELU_IN_PLACE:
            inplace = func in _RELU_IN_PLACE
            if func is F.relu:
                inplace = bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            x = args[0] if args else kwargs["input"]
            self.report.relu_calls += 1
            return _RectifiedBackward.apply(x, self.guided, inplace)
        name = getattr(func, "__name__", "")
        name = name[:-1] if name.endswith("_") and not name.endswith("__") else name
        if name in _OTHER_ACTIVATIONS:
            self.report.other_activations[name] += 1
        return func(*args, **kwargs)


def _check_choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(repr(v) for v in valid)}")


@contextlib.contextmanager
def relu_backward_rule(rule: Rule = "guided_backprop", unsupported: Unsupported = "warn") -> Iterator[RuleReport]:
    """Apply a modified-ReLU backward rule to every ReLU that runs inside the ``with`` block.

    Forward values are unchanged; tensors produced inside the block carry the rule in their autograd graph, so the
    backward pass (``torch.autograd.grad``) may run inside or after the block. Nothing is registered on any module;
    the function mode is popped on exit, also when the body raises.

    Args:
        rule: ``"guided_backprop"`` (``g * [x > 0] * [g > 0]``) or ``"deconvnet"`` (``max(g, 0)``).
        unsupported: on normal exit, what to do when no ReLU ran or an activation without a rule ran (see the module
            docstring): ``"warn"``, ``"raise"`` (``ValueError``) or ``"ignore"``.

    Yields:
        A :class:`RuleReport` that counts what the forward passes ran.
    """
    _check_choice("rule", rule, RULES)
    _check_choice("unsupported", unsupported, UNSUPPORTED_POLICIES)
    report = RuleReport(rule)
    with _ReluRuleMode(report):
        yield report
    problems = report.problems()
    if problems and unsupported == "raise":
        raise ValueError("; ".join(problems) + "; pass unsupported='warn' or 'ignore' to accept this")
    if problems and unsupported == "warn":
        for problem in problems:
            warnings.warn(problem, UserWarning, stacklevel=4)


def guided_saliency(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None = None,
    rule: Rule = "guided_backprop",
    output_transform: OutputTransform | None = None,
    *,
    unsupported: Unsupported = "warn",
) -> Tensor:
    """Guided backpropagation or deconvnet attribution of the target class score to the input.

    The gradient ``d(sum_i Y[i, t_i]) / dx`` with every ReLU's backward replaced by the rule (see the module
    docstring); equals Captum ``GuidedBackprop(model).attribute(x, target=t)`` / ``Deconvolution`` on models built
    from ``nn.ReLU`` modules, and is also right for models that call ``F.relu``. One forward, one backward, in eval
    mode, without touching parameter ``.grad``.

    Args:
        model: a classifier (a ``torch.compile`` wrapper is looked through).
        images: ``[N,C,H,W]``.
        targets: ``[N]`` class indices; ``None`` explains the predicted class.
        rule: ``"guided_backprop"`` or ``"deconvnet"``.
        output_transform: selects ``[N,K]`` scores from the model output.
        unsupported: ``"warn"`` | ``"raise"`` | ``"ignore"`` when the model runs no ReLU or other activations.

    Returns:
        ``[N,C,H,W]`` raw attributions on the input's device.
    """
    _check_choice("rule", rule, RULES)
    with relu_backward_rule(rule, unsupported):
        result = forward_backward(
            model, images, targets, None, gradients=False, input_gradient=True, output_transform=output_transform
        )
    return result.input_gradients["target"]


class _StopForward(BaseException):
    """Raised by a forward hook to end the forward pass once the wanted layer has run (a BaseException, so a model's
    own ``except Exception`` does not swallow it)."""


def forward_to_layer(model: nn.Module, x: Tensor, module: nn.Module, name: str) -> Tensor:
    """Run ``model(x)`` until ``module`` first returns, and return that output (still on the autograd path).

    The rest of the network is not run. A module that runs several times per forward (a reused ReLU) is read at its
    first call. The hook is removed on exit, also on error.

    Raises:
        RuntimeError: the module did not run. TypeError: it returned something other than a tensor.
    """
    captured: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"layer {name!r} returned {type(output).__name__}, not a tensor; pick a feature-map layer")
        captured.append(output)
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"layer {name!r} did not run during the forward pass; pick a layer on the input-output path")
    return captured[0]


def resolve_single_layer(model: nn.Module, layer: str) -> tuple[str, nn.Module]:
    """``(name, module)`` for one layer name; unknown names raise :func:`resolve_layers`' error."""
    if not isinstance(layer, str):
        raise TypeError(f"layer must be one layer name (str), got {type(layer).__name__}: {layer!r}")
    if layer in ("auto", "all", "last"):
        raise ValueError(f"layer must name one module, not the selector {layer!r}")
    ((name, module),) = resolve_layers(model, layer).items()
    return name, module


def deconv_projections(
    model: nn.Module,
    images: Tensor,
    layer: str,
    top_k: int = 4,
    rule: Rule = "deconvnet",
    *,
    keep: Literal["max", "channel"] = "max",
    unsupported: Unsupported = "warn",
    reshape: ReshapeSpec = None,
) -> tuple[Tensor, Tensor]:
    """Project the strongest channels of a layer back to pixel space (Zeiler & Fergus, 2014, Sec. 2.1).

    Per image, the ``top_k`` channels with the largest maximum activation ``max_{ij} A[c,i,j]`` are chosen. For each
    (image, channel) the layer output is replaced by a seed that keeps only that channel, either only its single
    strongest activation (``keep="max"``, as in the paper) or its whole map (``keep="channel"``), every other entry set
    to zero, and the seed is propagated back to the input with the ``rule`` (``"deconvnet"``: rectified gradient
    through ReLUs, max-pool switches, transposed filters; ``"guided_backprop"`` for guided projections).

    All ``N * top_k`` projections come from one forward pass of the batch with each image repeated ``top_k`` times
    (stopped at ``layer``) and one ``torch.autograd.grad`` with the stacked seeds as ``grad_outputs``. Eval mode, no
    parameter ``.grad`` touched, RNG restored. A layer that runs several times per forward is read at its first call.

    Args:
        model: the network (a ``torch.compile`` wrapper is looked through).
        images: ``[N,C,H,W]``.
        layer: a module name whose output is ``[N,C_l,...]`` (e.g. a conv, a ReLU or a block).
        top_k: channels per image, ``1 <= top_k <= C_l``.
        rule: ``"deconvnet"`` or ``"guided_backprop"``.
        keep: ``"max"`` or ``"channel"``.
        unsupported: see :func:`relu_backward_rule`.
        reshape: how to view the layer's output as ``[N,C_l,h,w]`` where it is not NCHW, channels-last or tokens on
            a grid (those are recognised, see :mod:`probelens.methods.layout`).

    Returns:
        ``(projections [N,top_k,C,H,W], channels [N,top_k] long)``, channels sorted by decreasing maximum activation.

    Raises:
        ValueError: unknown layer, ``top_k`` out of range, unknown ``rule``/``keep``.
    """
    _check_choice("rule", rule, RULES)
    _check_choice("keep", keep, KEEP_MODES)
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a 4-D tensor [N,C,H,W], got {shape}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    net = unwrap_compiled(model)
    name, module = resolve_single_layer(net, layer)
    n = images.shape[0]
    with probe_context(net), relu_backward_rule(rule, unsupported):
        x = images.detach().repeat_interleave(top_k, dim=0).requires_grad_(True)
        raw = forward_to_layer(net, x, module, name)
        if raw.dim() < 2 or raw.shape[0] != x.shape[0]:
            raise ValueError(f"layer {name!r} output has shape {tuple(raw.shape)}; expected [N,C_l,...] per image")
        act = raw
        if raw.dim() > 2:  # a map: channels and positions read through its layout (channels-last, tokens)
            act = layout_of(net, images[:1], name, module, raw, reshape).to_nchw(raw)
        num_channels = act.shape[1]
        if top_k > num_channels:
            raise ValueError(f"top_k={top_k} but layer {name!r} has only {num_channels} channels")
        flat = act.detach().reshape(n * top_k, num_channels, -1)  # [N*k, C_l, S]
        peak = flat[::top_k].amax(dim=2)  # [N, C_l]; every copy of an image has the same activation
        channels = peak.topk(top_k, dim=1).indices  # [N, k]
        rows = torch.arange(n * top_k, device=flat.device)
        chan = channels.reshape(-1)
        maps = flat[rows, chan]  # [N*k, S]
        if keep == "max":
            pos = maps.argmax(dim=1)
            kept = torch.zeros_like(maps)
            kept[rows, pos] = maps[rows, pos]
        else:
            kept = maps
        seed = torch.zeros_like(flat)
        seed[rows, chan] = kept
        (grad,) = torch.autograd.grad(act, x, grad_outputs=seed.reshape(act.shape), allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x)
    return grad.detach().reshape(n, top_k, *images.shape[1:]), channels
