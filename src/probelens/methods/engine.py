"""The one-pass engine: one forward and one ``torch.autograd.grad`` per target set over a probe batch.

From a single pass come the logits, the activations at every requested layer, the gradients of the target scores
with respect to those activations and the gradient with respect to the input. Grad-CAM at every layer, vanilla
saliency, gradient x input and activation grids are all read off this one result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from probelens.methods.hooks import ActivationCapture, probe_context
from probelens.methods.layers import unwrap_compiled

TargetSpec = Tensor | None | Mapping[str, Tensor | None]
OutputTransform = Callable[[Any], Tensor]


def default_output_transform(output: Any) -> Tensor:
    """Pick the class scores from a model output: a tensor as is, the first element of a tuple/list, the ``"logits"``
    entry of a mapping or the ``.logits`` attribute of an output object (Hugging Face style)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"cannot find class scores in a model output of type {type(output).__name__}"
        + (f" (keys {sorted(map(str, output))}, no 'logits')" if isinstance(output, Mapping) else "")
        + "; pass output_transform=lambda out: <the [N, num_classes] tensor in out> to the monitor or method"
    )


def class_scores(output: Any, output_transform: OutputTransform | None = None) -> Tensor:
    """Class scores ``[N, K]`` from a model output: ``output_transform`` (or :func:`default_output_transform`), then a
    single logit per image (``[N]`` or ``[N, 1]``, a binary head) as the two scores ``(-z/2, z/2)``: their softmax is
    ``(1 - sigmoid(z), sigmoid(z))`` and the gradient of class 1's score is ``dz/2`` (class 0's ``-dz/2``), the
    sign convention of pytorch-grad-cam's ``BinaryClassifierOutputTarget``. Any other shape raises a ``ValueError``
    that shows ``output_transform=``.
    """
    scores = (output_transform or default_output_transform)(output)
    if not isinstance(scores, Tensor):
        raise TypeError(
            f"output_transform returned a {type(scores).__name__}, not a tensor of class scores [N, num_classes]"
        )
    if scores.dim() == 1 or (scores.dim() == 2 and scores.shape[1] == 1):
        half = scores.reshape(-1, 1) / 2
        return torch.cat([-half, half], dim=1)
    if scores.dim() != 2:
        raise ValueError(
            f"the model output (after output_transform) must be class scores [N, num_classes] (or one logit [N] / "
            f"[N, 1] for a binary head), got shape {tuple(scores.shape)}; pass output_transform=lambda out: "
            "<the [N, num_classes] tensor in out> to the monitor or method"
        )
    return scores


@dataclass
class ProbePass:
    """Everything one explanation pass over a probe batch produced (all tensors detached).

    Attributes:
        images: the input batch ``[N,C,H,W]`` as fed to the model.
        logits: class scores ``[N,K]``.
        targets: per target set (e.g. ``"pred"``, ``"label"``), the class index explained for each image ``[N]``.
        activations: per layer, the layer output ``[N,C_l,h_l,w_l]``.
        gradients: per target set and layer, ``d(sum_i logits[i, t_i]) / d activation`` with the activation's shape.
        input_gradients: per target set, the gradient of the same score with respect to the input ``[N,C,H,W]``.
        calls: per layer, how often its forward hook fired (more than 1 means the module is reused).
    """

    images: Tensor
    logits: Tensor
    targets: dict[str, Tensor]
    activations: dict[str, Tensor]
    gradients: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    input_gradients: dict[str, Tensor] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def probabilities(self) -> Tensor:
        """Softmax over the class scores ``[N,K]``."""
        return self.logits.float().softmax(dim=1)

    @property
    def predictions(self) -> Tensor:
        """Predicted class per image ``[N]``."""
        return self.logits.argmax(dim=1)


def check_targets(targets: Tensor, n: int, num_classes: int) -> Tensor:
    """Validate a target tensor against the batch size and number of classes; return it as ``long``."""
    if not isinstance(targets, Tensor):
        targets = torch.as_tensor(targets)
    if targets.dim() == 0:
        targets = targets.expand(n)
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape [{n}] (one class index per image), got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if n and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(
            f"target class out of range: got values in [{int(targets.min())}, {int(targets.max())}] but the model "
            f"outputs {num_classes} classes"
        )
    return targets.long()


def _capture_forward(
    net: nn.Module, images: Tensor, layers: dict[str, nn.Module], need_backward: bool, transform: OutputTransform
) -> tuple[ActivationCapture, Tensor, Tensor]:
    """The forward pass with the layer outputs recorded. In the rare case :meth:`ActivationCapture.settle` finds a
    recorded output overwritten in place, the pass is dropped and run again with every output cloned."""

    def attempt(clone_all: bool) -> tuple[ActivationCapture, Tensor, Tensor]:
        with ActivationCapture(layers, clone_all=clone_all) as capture:
            # a fresh leaf outside inference mode: probes may come from inference-mode code (validate/test)
            x = images.detach().clone()
            if need_backward:
                x.requires_grad_(True)
            with torch.set_grad_enabled(need_backward):
                scores = transform(net(x))
        return capture, x, scores

    capture, x, scores = attempt(clone_all=False)
    if capture.settle():
        del capture, x, scores  # free the first graph before building the second
        capture, x, scores = attempt(clone_all=True)
        capture.settle()
    return capture, x, scores


def forward_backward(
    model: nn.Module,
    images: Tensor,
    targets: TargetSpec = None,
    layers: Mapping[str, nn.Module] | None = None,
    *,
    gradients: bool = True,
    input_gradient: bool = True,
    output_transform: OutputTransform | None = None,
) -> ProbePass:
    """Run one forward pass and, per target set, one ``torch.autograd.grad``.

    Parameter ``.grad`` fields are never touched (gradients are taken with respect to activations and the input
    only); every submodule's train flag, the RNG states and grad mode are restored; autocast is off.

    Args:
        model: the network (a ``torch.compile`` wrapper is looked through).
        images: ``[N,C,H,W]`` float batch on the model's device.
        targets: ``None`` (explain the predicted class), a ``[N]`` tensor of class indices, or a mapping from a target
            set name to either of those (e.g. ``{"pred": None, "label": labels}``) to explain several from one forward.
        layers: ``{name: module}`` whose outputs (and gradients) to capture.
        gradients: compute gradients at the layers (otherwise activations only, no backward).
        input_gradient: also return the gradient with respect to the input.
        output_transform: maps the model output to ``[N,K]`` scores; see :func:`default_output_transform`.

    Returns:
        A :class:`ProbePass` with detached tensors.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a 4-D tensor [N,C,H,W], got {shape}")
    net = unwrap_compiled(model)
    layers = dict(layers or {})
    transform = functools.partial(class_scores, output_transform=output_transform)
    target_sets: dict[str, Tensor | None] = dict(targets) if isinstance(targets, Mapping) else {"target": targets}
    need_backward = gradients or input_gradient
    with probe_context(net):
        capture, x, scores = _capture_forward(net, images, layers, need_backward, transform)
        n, k = scores.shape
        predictions = scores.detach().argmax(dim=1)
        resolved = {
            key: predictions if t is None else check_targets(torch.as_tensor(t).to(predictions.device), n, k)
            for key, t in target_sets.items()
        }
        result = ProbePass(
            images=x.detach(),
            logits=scores.detach(),
            targets=resolved,
            activations={name: out.detach() for name, out in capture.outputs.items()},
            calls=dict(capture.calls),
        )
        missing = [name for name in layers if name not in capture.outputs]
        if missing:
            raise RuntimeError(
                f"layers {missing} did not run during the forward pass; pick layers on the path from input to output"
            )
        if not need_backward:
            return result
        layer_names = list(capture.outputs) if gradients else []
        detached = [name for name in layer_names if not capture.outputs[name].requires_grad]
        if detached:
            raise ValueError(
                f"the outputs of layers {detached} are not on the autograd path, so no gradient reaches them. Typical "
                "causes: gradient checkpointing with use_reentrant=True around these layers (use "
                "torch.utils.checkpoint.checkpoint(..., use_reentrant=False), or pick layers outside the checkpointed "
                "block), or a torch.no_grad()/detach() inside the model's forward"
            )
        wrt = [capture.outputs[name] for name in layer_names]
        if input_gradient:
            wrt.append(x)
        keys = list(resolved)
        for i, key in enumerate(keys):
            score = scores.gather(1, resolved[key][:, None]).sum()
            raw = torch.autograd.grad(score, wrt, retain_graph=i < len(keys) - 1, allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g.detach() for g, w in zip(raw, wrt)]
            result.gradients[key] = dict(zip(layer_names, grads[: len(layer_names)]))
            if input_gradient:
                result.input_gradients[key] = grads[-1]
    return result
