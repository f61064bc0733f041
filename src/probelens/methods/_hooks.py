"""Context managers that let an explanation run without leaving a trace on the model or the training run.

Every hook is registered inside a ``try``/``finally`` and removed on exit, also when the body raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own ``training`` flag on exit.

    A blanket ``model.train()`` afterwards would re-enable a BatchNorm the user froze, so flags are saved per module.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _cuda_devices() -> list[int]:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    return list(range(torch.cuda.device_count()))


@contextlib.contextmanager
def probe_context(model: nn.Module) -> Iterator[None]:
    """Everything an explanation pass needs to be harmless and to work from any Lightning hook.

    - ``torch.inference_mode(False)`` + ``torch.enable_grad()``: ``trainer.validate``/``test`` run under inference
      mode and validation inside ``fit`` under ``no_grad``;
    - autocast disabled, so the pass runs in the model's own dtype;
    - ``torch.compile`` bypassed (``torch.compiler.set_stance("force_eager")``): in a compiled forward, hooks fire
      but the captured activations are off the autograd path, so explanations of a compiled model (also
      ``trainer.fit(torch.compile(model))`` and compiled submodules) run its eager code, with the same weights;
    - eval mode per submodule (BatchNorm statistics and dropout untouched), flags restored;
    - CPU and CUDA RNG states forked and restored.
    """
    device_type = "cpu"
    for p in model.parameters():
        device_type = p.device.type
        break
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=_cuda_devices()))
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        if device_type in ("cpu", "cuda"):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
        if set_stance is not None:
            stack.enter_context(set_stance("force_eager"))
        stack.enter_context(eval_mode(model))
        yield


class ActivationCapture:
    """Forward hooks that record the output of named modules.

    The hook stores the module's output and hands a ``clone()`` to the rest of the network, so an in-place op that
    follows (``ReLU(inplace=True)``) modifies the clone and the recorded tensor keeps the module's true output, still
    on the autograd path. A module that runs several times per forward (weight sharing, a reused ReLU) keeps its last
    output; ``calls`` counts the firings.
    """

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers = layers
        self.outputs: dict[str, Tensor] = {}
        self.calls: dict[str, int] = dict.fromkeys(layers, 0)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _make_hook(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> object:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {name!r} returned {type(output).__name__}, not a tensor; pick a layer whose output is a "
                    "feature map [N,C,H,W]"
                )
            self.outputs[name] = output
            self.calls[name] += 1
            return output.clone()

        return hook

    def __enter__(self) -> ActivationCapture:
        try:
            for name, module in self.layers.items():
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def count_hooks(model: nn.Module) -> int:
    """Number of hooks of any kind registered on ``model`` and its submodules (used by the no-leak tests)."""
    total = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        ):
            total += len(getattr(m, attr, {}) or {})
    return total
