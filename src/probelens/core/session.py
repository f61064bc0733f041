"""One explanation pass per (model state, probe set), shared by every monitor that fires at that point.

Each monitor registers what it needs (layers, gradients, input gradient, target sets) when it is configured; the
first monitor to fire computes a pass covering the union of all registered needs for its probe set, and the others
read from it. A pass is reused only while the model is unchanged: the key holds the global step and the sum of the
version counters of every parameter and buffer (an optimizer step or a BatchNorm update bumps them).

Memory: the pass runs in chunks of the probe whose autograd graph fits the memory budget of the multi-pass methods
(:func:`probelens.methods.batching.default_budget_bytes`: 256 MiB on CPU, a quarter of the free memory on CUDA), so
the peak of one firing grows with the captured layer outputs only, not with the whole graph of the probe. The
monitors release the cached pass when the next training batch starts and at teardown, so no pass tensor is kept
between firings. At setup, :meth:`SharedPass.check_memory` warns once when what a pass keeps (the captured layer
outputs, their gradients and the input gradients) exceeds :data:`PASS_WARN_BYTES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor, nn

from probelens.methods import batching
from probelens.methods.engine import OutputTransform, ProbePass, forward_backward
from probelens.methods.hooks import ActivationCapture, probe_context
from probelens.methods.layout import LayerTraces
from probelens.methods.sharded import is_sharded, sharded_forward_backward
from probelens.probe import ProbeSet

_Slot = tuple[ProbeSet, Any]  # (probe set, output transform): one pass each

PASS_WARN_BYTES = 2 * 2**30
MEMORY_SLACK = 1.4
"""The fit-start memory estimate's factor for the drawing's temporaries and the allocator's slack."""
"""Above this many bytes kept by one shared pass (layer outputs, their gradients, input gradients) setup warns."""


@dataclass
class PassNeeds:
    """What one shared pass must produce: the layers whose outputs it keeps, whether it back-propagates to them (and
    to the input), for which target sets (``"pred"``, ``"label"``), and the model-output transform. Monitors state
    theirs with :meth:`MonitorCore._require`; a monitor running a pass of its own (a derived batch, forward only)
    builds one with ``PassNeeds(output_transform=...)``."""

    layers: dict[str, nn.Module] = field(default_factory=dict)
    gradients: bool = False
    input_gradient: bool = False
    target_sets: set[str] = field(default_factory=set)
    output_transform: OutputTransform | None = None

    def covers(self, other: PassNeeds) -> bool:
        return (
            set(other.layers) <= set(self.layers)
            and (self.gradients or not other.gradients)
            and (self.input_gradient or not other.input_gradient)
            and other.target_sets <= self.target_sets
        )


def model_version(model: nn.Module) -> int:
    """Sum of the in-place version counters of all parameters and buffers: changes whenever any of them is updated."""
    total = 0
    for parameter in model.parameters():
        total += parameter._version
    for buffer in model.buffers():
        total += buffer._version
    return total


class SharedPass:
    """Shared pass cache of one model (kept in a weak map keyed by the module)."""

    def __init__(self) -> None:
        # keyed by (probe, output transform): monitors that read the model's output differently never share a pass
        self._needs: dict[_Slot, PassNeeds] = {}
        self.layer_traces = LayerTraces()
        """The model's layer traces, shared by its monitors (layer resolution, layout checks, the layer table)."""
        self._cache: dict[_Slot, tuple[tuple, PassNeeds, ProbePass]] = {}
        self._inputs: dict[ProbeSet, tuple[tuple, Tensor, Tensor]] = {}
        self._memory_checked: set[_Slot] = set()
        self.forward_count = 0
        self.chunk_calls = 0  # forward passes of all chunks (equals forward_count when no pass is chunked)

    @staticmethod
    def _key(probe: ProbeSet, transform: OutputTransform | None) -> _Slot:
        return (probe, transform)  # a ProbeSet hashes by identity; so does a function

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
        needs = self._needs.setdefault(self._key(probe, output_transform), PassNeeds(output_transform=output_transform))
        needs.layers.update(layers)
        needs.gradients |= gradients
        needs.input_gradient |= input_gradient
        needs.target_sets |= target_sets

    def probe_inputs(self, probe: ProbeSet, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The probe images and targets on the model's device and in its dtype (cached)."""
        key = (device, dtype)
        hit = self._inputs.get(probe)
        if hit is None or hit[0] != key:
            images = probe.images.detach().to(device=device, dtype=dtype)
            hit = (key, images, probe.targets.to(device))
            self._inputs[probe] = hit
        return hit[1], hit[2]

    def get(self, model: nn.Module, probe: ProbeSet, step: int, needs: PassNeeds) -> ProbePass:
        """The pass for ``probe`` on the model as it is now, computed at most once per model state."""
        key = (step, model_version(model))
        slot = self._key(probe, needs.output_transform)
        all_needs = self._needs.setdefault(slot, PassNeeds(output_transform=needs.output_transform))
        if not all_needs.covers(needs):  # a monitor that was not registered: widen and recompute
            self.register(
                probe,
                needs.layers,
                gradients=needs.gradients,
                input_gradient=needs.input_gradient,
                target_sets=needs.target_sets,
                output_transform=needs.output_transform,
            )
        hit = self._cache.get(slot)
        if hit is not None and hit[0] == key and hit[1].covers(needs):
            return hit[2]
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else probe.images.device
        dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
        images, labels = self.probe_inputs(probe, device, dtype)
        targets: dict[str, Tensor | None] = {}
        for name in sorted(all_needs.target_sets) or ["pred"]:
            targets[name] = labels if name == "label" else None
        self._cache.pop(slot, None)  # free the stale pass before the new one is built
        options: dict[str, Any] = dict(
            gradients=all_needs.gradients,
            input_gradient=all_needs.input_gradient,
            output_transform=all_needs.output_transform,
        )
        if is_sharded(model):  # sharded parameters (FSDP): every rank explains a slice and the slices are gathered
            result = sharded_forward_backward(model, images, targets, all_needs.layers, **options)
            self.chunk_calls += 1
        else:
            chunk = self.pass_chunk(model, images, all_needs.gradients or all_needs.input_gradient)
            assembled: PassAssembly | None = None
            for start, stop in batching.chunk_ranges(images.shape[0], chunk):
                part_targets = {k: None if t is None else t[start:stop] for k, t in targets.items()}
                part = forward_backward(model, images[start:stop], part_targets, all_needs.layers, **options)
                self.chunk_calls += 1
                if assembled is None:
                    assembled = PassAssembly(part, images.shape[0])
                assembled.put(start, part)
                del part  # only the assembled pass and one chunk's graph are alive at a time
            assert assembled is not None
            result = assembled.result
        self.forward_count += 1
        snapshot = PassNeeds(
            dict(all_needs.layers), all_needs.gradients, all_needs.input_gradient, set(all_needs.target_sets)
        )
        self._cache[slot] = (key, snapshot, result)
        return result

    @staticmethod
    def pass_chunk(model: nn.Module, images: Tensor, backward: bool) -> int:
        """Probe images per forward/backward of the shared pass: the most whose autograd graph fits the budget."""
        return batching._chunk_bounds(model, images, 1, None, backward)[1]

    def check_memory(
        self, model: nn.Module, probe: ProbeSet, transform: OutputTransform | None, example: Tensor
    ) -> int:
        """Estimated peak bytes of one firing over ``probe``: what the pass keeps (captured outputs, their gradients
        per target set, the input gradients), one chunk's autograd graph and the maps drawn at the image size, times
        :data:`MEMORY_SLACK`; warns once above :data:`PASS_WARN_BYTES`. Measured with ``example`` (one probe image on
        the model's device, in its dtype) through the model."""
        slot = self._key(probe, transform)
        needs = self._needs.get(slot)
        if needs is None:
            return 0
        x = example
        capture = ActivationCapture(needs.layers)
        with probe_context(model), torch.no_grad(), capture:
            model(x.detach().clone())
        sets = max(1, len(needs.target_sets))
        n = len(probe)
        per_image = sum(out.numel() * out.element_size() for out in capture.outputs.values())
        per_image *= 1 + (sets if needs.gradients else 0)
        per_image += x.numel() * x.element_size() * (1 + (sets if needs.input_gradient else 0))
        kept = per_image * n
        # the autograd graph of one chunk (chunks are sized to the budget), and the maps drawn from the pass: each
        # layer's (and the input gradient's) map per target set, upsampled to the image and coloured (1 + 3 planes of
        # float32 per pixel)
        graph_per_image = batching.activation_bytes(model, x)[0] * (2 if needs.gradients else 1)
        graph = min(batching.default_budget_bytes(x.device), graph_per_image * n)
        pixels = x.shape[-2] * x.shape[-1]
        drawn = n * pixels * 4 * 4 * sets * (len(needs.layers) + (1 if needs.input_gradient else 0))
        # temporaries of the drawing and the allocator's slack: calibrated against the peak RSS growth of real fits
        # (tests/faults/test_fault_injection.py::test_the_memory_estimate_at_fit_start_covers_the_measured_growth)
        total = int(MEMORY_SLACK * (kept + graph + drawn))
        if total > PASS_WARN_BYTES and slot not in self._memory_checked:
            self._memory_checked.add(slot)
            rank_zero_warn(
                f"probelens: one explanation pass over the {n}-image probe set takes about {total / 2**30:.1f} GiB "
                f"while it is drawn ({kept / 2**30:.1f} GiB kept: the outputs of {len(needs.layers)} layers, their "
                f"gradients and the input gradients; {graph / 2**30:.1f} GiB for one chunk's autograd graph; "
                f"{drawn / 2**30:.1f} GiB of maps drawn at the image size), more than "
                f"{PASS_WARN_BYTES / 2**30:.0f} GiB. Use a smaller probe (num_samples=16 to 64 is typical), fewer or "
                "coarser layers, or smaller images."
            )
        return total

    def release(self) -> None:
        """Drop cached passes (their tensors) but keep the registrations."""
        self._cache.clear()


class PassAssembly:
    """One :class:`ProbePass` over ``n`` images filled chunk by chunk: its tensors are allocated once, at the first
    chunk's shapes, and each chunk is copied into its rows, so assembling never holds the pass twice. A single chunk
    covering every image is taken as it is."""

    def __init__(self, first: ProbePass, n: int) -> None:
        self.n = n
        if first.images.shape[0] == n:
            self.result = first
            return

        def room(t: Tensor) -> Tensor:
            return t.new_empty((n, *t.shape[1:]))

        self.result = ProbePass(
            images=room(first.images),
            logits=room(first.logits),
            targets={k: room(v) for k, v in first.targets.items()},
            activations={k: room(v) for k, v in first.activations.items()},
            gradients={s: {k: room(v) for k, v in g.items()} for s, g in first.gradients.items()},
            input_gradients={k: room(v) for k, v in first.input_gradients.items()},
            calls=dict(first.calls),
        )

    def put(self, start: int, part: ProbePass) -> None:
        if part is self.result:
            return
        stop = start + part.images.shape[0]
        out = self.result
        out.images[start:stop] = part.images
        out.logits[start:stop] = part.logits
        for k, v in part.targets.items():
            out.targets[k][start:stop] = v
        for k, v in part.activations.items():
            out.activations[k][start:stop] = v
        for target_set, grads in part.gradients.items():
            for k, v in grads.items():
                out.gradients[target_set][k][start:stop] = v
        for k, v in part.input_gradients.items():
            out.input_gradients[k][start:stop] = v
