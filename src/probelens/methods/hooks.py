"""Context managers that let an explanation run without leaving a trace on the model or the training run.

Every hook is registered inside a ``try``/``finally`` and removed on exit, also when the body raises.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
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


# per layer module (weakly referenced): whether its output must be cloned because an op after it works in place
_CLONE_NEEDED: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
_CLONE_ALL: contextvars.ContextVar[bool] = contextvars.ContextVar("probelens_clone_all", default=False)


@contextlib.contextmanager
def cloning_every_output() -> Iterator[None]:
    """Within it, every :class:`ActivationCapture` clones every output (no learning, never a second forward): for
    collective forwards (sharded models), where one rank must not decide alone to run the forward again."""
    token = _CLONE_ALL.set(True)
    try:
        yield
    finally:
        _CLONE_ALL.reset(token)


class ActivationCapture:
    """Forward hooks that record the output of named modules.

    The recorded tensor must stay the module's true output, on the autograd path, even when an op that follows works
    in place (``ReLU(inplace=True)`` after a convolution would overwrite it). The first time a module is seen, its
    hook hands a ``clone()`` to the rest of the network and :meth:`settle` looks afterwards whether that clone was
    modified in place. A module whose clone was left alone is trusted from then on: its output is recorded without a
    copy (a conv output read by a BatchNorm needs none, and on plain conv stacks the clones are a noticeable share of
    the pass), and
    :meth:`settle` checks its version counter instead; if an in-place op did touch it after all, the module goes back
    to being cloned and :meth:`settle` names it, so that the caller runs the forward again. A module that runs
    several times per forward (weight sharing, a reused ReLU) keeps its last output, is always cloned; ``calls``
    counts the firings. ``clone_all=True`` (or :func:`cloning_every_output`) clones every output, as a second
    forward after a stale one does.
    """

    def __init__(self, layers: dict[str, nn.Module], clone_all: bool = False) -> None:
        self.layers = layers
        self.clone_all = clone_all or _CLONE_ALL.get()
        self.outputs: dict[str, Tensor] = {}
        self.calls: dict[str, int] = dict.fromkeys(layers, 0)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._clones: dict[str, Tensor] = {}
        self._versions: dict[str, int] = {}

    def _make_hook(self, name: str):
        def hook(module: nn.Module, _inputs: object, output: object) -> object:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {name!r} returned {type(output).__name__}, not a tensor; pick a layer whose output is a "
                    "feature map [N,C,H,W]"
                )
            self.outputs[name] = output
            self.calls[name] += 1
            if self.clone_all or _CLONE_NEEDED.get(module, True) or self.calls[name] > 1:
                self._versions.pop(name, None)
                self._clones[name] = clone = output.clone()
                return clone
            self._versions[name] = output._version
            return None

        return hook

    def settle(self) -> list[str]:
        """After the forward: learn which modules need no clone; return the layers whose recorded output an in-place
        op modified (possible only for a trusted module whose graph changed; run the forward again)."""
        stale = []
        for name, version in self._versions.items():
            if self.outputs[name]._version != version:
                _CLONE_NEEDED[self.layers[name]] = True
                stale.append(name)
        for name, clone in self._clones.items():
            module = self.layers[name]
            if self.calls[name] == 1 and clone._version == 0:
                _CLONE_NEEDED.setdefault(module, False)
            else:
                _CLONE_NEEDED[module] = True
        return stale

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
