"""One explanation pass per (model state, probe set), shared by every monitor that fires at that point.

Each monitor registers what it needs (layers, gradients, input gradient, target sets) when it is configured; the
first monitor to fire computes a pass covering the union of all registered needs for its probe set, and the others
read from it. A pass is reused only while the model is unchanged: the key holds the global step and the sum of the
version counters of every parameter and buffer (an optimizer step or a BatchNorm update bumps them).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from probelens.methods._sharded import is_sharded, sharded_forward_backward
from probelens.methods.engine import OutputTransform, ProbePass, forward_backward
from probelens.probe import ProbeSet


@dataclass
class _Needs:
    layers: dict[str, nn.Module] = field(default_factory=dict)
    gradients: bool = False
    input_gradient: bool = False
    target_sets: set[str] = field(default_factory=set)
    output_transform: OutputTransform | None = None

    def covers(self, other: _Needs) -> bool:
        return (
            set(other.layers) <= set(self.layers)
            and (self.gradients or not other.gradients)
            and (self.input_gradient or not other.input_gradient)
            and other.target_sets <= self.target_sets
        )


def model_version(model: nn.Module) -> int:
    """Sum of the in-place version counters of all parameters and buffers: changes whenever any of them is updated."""
    total = 0
    for t in model.parameters():
        total += t._version
    for t in model.buffers():
        total += t._version
    return total


class ProbeSession:
    """Shared pass cache of one model (kept in a weak map keyed by the module)."""

    def __init__(self) -> None:
        self._needs: dict[int, _Needs] = {}
        self._cache: dict[int, tuple[tuple, _Needs, ProbePass]] = {}
        self._inputs: dict[int, tuple[tuple, Tensor, Tensor]] = {}
        self.forward_count = 0

    def register(
        self,
        probe: ProbeSet,
        layers: dict[str, nn.Module],
        *,
        gradients: bool,
        input_gradient: bool,
        target_sets: set[str],
        output_transform: OutputTransform | None = None,
    ) -> None:
        needs = self._needs.setdefault(id(probe), _Needs())
        needs.layers.update(layers)
        needs.gradients |= gradients
        needs.input_gradient |= input_gradient
        needs.target_sets |= target_sets
        if output_transform is not None:
            needs.output_transform = output_transform

    def probe_inputs(self, probe: ProbeSet, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The probe images and targets on the model's device and in its dtype (cached)."""
        key = (device, dtype)
        hit = self._inputs.get(id(probe))
        if hit is None or hit[0] != key:
            images = probe.images.detach().to(device=device, dtype=dtype)
            hit = (key, images, probe.targets.to(device))
            self._inputs[id(probe)] = hit
        return hit[1], hit[2]

    def get(self, model: nn.Module, probe: ProbeSet, step: int, needs: _Needs) -> ProbePass:
        """The pass for ``probe`` on the model as it is now, computed at most once per model state."""
        key = (step, model_version(model))
        all_needs = self._needs.setdefault(id(probe), _Needs())
        if not all_needs.covers(needs):  # a monitor that was not registered: widen and recompute
            self.register(
                probe,
                needs.layers,
                gradients=needs.gradients,
                input_gradient=needs.input_gradient,
                target_sets=needs.target_sets,
            )
        hit = self._cache.get(id(probe))
        if hit is not None and hit[0] == key and hit[1].covers(needs):
            return hit[2]
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else probe.images.device
        dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
        images, labels = self.probe_inputs(probe, device, dtype)
        targets: dict[str, Tensor | None] = {}
        for name in sorted(all_needs.target_sets) or ["pred"]:
            targets[name] = labels if name == "label" else None
        # sharded parameters (FSDP): every rank explains a slice of the probe and the slices are gathered
        run = sharded_forward_backward if is_sharded(model) else forward_backward
        result = run(
            model,
            images,
            targets,
            all_needs.layers,
            gradients=all_needs.gradients,
            input_gradient=all_needs.input_gradient,
            output_transform=all_needs.output_transform,
        )
        self.forward_count += 1
        snapshot = _Needs(
            dict(all_needs.layers), all_needs.gradients, all_needs.input_gradient, set(all_needs.target_sets)
        )
        self._cache[id(probe)] = (key, snapshot, result)
        return result

    def clear(self) -> None:
        """Drop cached passes (their tensors) but keep the registrations."""
        self._cache.clear()


_SESSIONS: weakref.WeakKeyDictionary[nn.Module, ProbeSession] = weakref.WeakKeyDictionary()


def session_for(model: nn.Module) -> ProbeSession:
    """The shared session of ``model`` (created on first use, freed with the model)."""
    session = _SESSIONS.get(model)
    if session is None:
        session = ProbeSession()
        _SESSIONS[model] = session
    return session
