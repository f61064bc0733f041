"""Gradient saliency: vanilla gradient (Simonyan et al., 2014) and gradient x input (Shrikumar et al., 2016)."""

from __future__ import annotations

from torch import Tensor, nn

from probelens.methods.engine import OutputTransform, ProbePass, forward_backward

ONE_PASS_METHODS = ("vanilla", "gradient_x_input")
GUIDED_METHODS = ("guided_backprop", "deconvnet")
SALIENCY_METHODS = (*ONE_PASS_METHODS, *GUIDED_METHODS)


def saliency_from_pass(result: ProbePass, target_set: str, method: str = "vanilla") -> Tensor:
    """Saliency ``[N,C,H,W]`` of one target set read off an existing :class:`ProbePass`."""
    grad = result.input_gradients[target_set]
    if method == "vanilla":
        return grad
    if method == "gradient_x_input":
        return grad * result.images
    raise ValueError(f"unknown one-pass saliency method {method!r}; valid: {', '.join(ONE_PASS_METHODS)}")


def saliency(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None = None,
    method: str = "vanilla",
    *,
    output_transform: OutputTransform | None = None,
) -> Tensor:
    """Input-gradient attribution.

    ``vanilla``: ``dY_t/dx`` (signed, as Captum ``Saliency(abs=False)``); ``gradient_x_input``: ``x * dY_t/dx``
    (Captum ``InputXGradient``); ``guided_backprop`` (Springenberg et al., 2015) and ``deconvnet`` (Zeiler & Fergus,
    2014): the gradient with the modified ReLU backward rules of :func:`probelens.methods.guided.guided_saliency`
    (Captum ``GuidedBackprop``/``Deconvolution``; also correct for models that call ``F.relu``).

    Args:
        model: a classifier.
        images: ``[N,C,H,W]``.
        targets: ``[N]`` class indices; ``None`` explains the predicted class.
        method: one of ``"vanilla"``, ``"gradient_x_input"``, ``"guided_backprop"``, ``"deconvnet"``.
        output_transform: selects ``[N,K]`` scores from the model output.

    Returns:
        ``[N,C,H,W]`` raw attributions.
    """
    if method in GUIDED_METHODS:
        from probelens.methods.guided import (  # guided imports the engine; keep module import light
            Rule,
            guided_saliency,
        )

        rule: Rule = "guided_backprop" if method == "guided_backprop" else "deconvnet"
        return guided_saliency(model, images, targets, rule=rule, output_transform=output_transform)
    if method not in ONE_PASS_METHODS:
        raise ValueError(f"unknown saliency method {method!r}; valid: {', '.join(SALIENCY_METHODS)}")
    result = forward_backward(
        model, images, targets, None, gradients=False, input_gradient=True, output_transform=output_transform
    )
    return saliency_from_pass(result, "target", method)
