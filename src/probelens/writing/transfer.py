"""Where a picture's map math runs: on the accelerator the model lives on, or later on the host, once.

A monitor's picture has two parts. The *map math* (normalise the maps, colour them through a colormap, blend them
over the probe images, upsample them) is elementwise tensor work on maps that the shared pass left on the model's
device. The *drawing* (tiles into a captioned grid, PNG encoding, writing) is host work. :func:`map_math` decides
where the first part runs:

- maps on an accelerator (CUDA and the like): now, on that device, where it costs microseconds; the result (uint8
  tiles, 3-4x smaller than the float maps) is copied into pinned host memory without blocking the training thread,
  and the returned callable waits for that copy (an event recorded after it) before it hands the host tensors over;
- maps on the CPU: later, by whoever draws (the image pipeline's worker, or the training thread when there is none),
  so the training thread does none of it when a worker exists.

Either way the returned callable computes at most once and returns the same host tensors each time it is called (a
Grad-CAM grid and its filmstrip frame share the deepest layer's overlays). The math must be made of device-agnostic
torch ops (:func:`probelens.render.overlay_heatmap` and :func:`~probelens.render.apply_colormap` with
``keep_device=True``), so both placements give the same pixels: bit-identical on the CPU (tested), and on CUDA up to
the rounding of its float kernels (a test compares them where a GPU is present).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["map_math", "on_accelerator"]

T = TypeVar("T", Tensor, list[Tensor])


def on_accelerator(device: torch.device | str) -> bool:
    """Whether ``device`` is one where :func:`map_math` runs the math at once (anything but the CPU and ``meta``)."""
    kind = torch.device(device).type
    return kind not in ("cpu", "meta")


def _host_copy(t: Tensor) -> Tensor:
    """A host copy of ``t`` started without blocking: into pinned memory where the device can copy asynchronously
    (``t`` itself when it is on the host already)."""
    if t.device.type == "cpu":
        return t
    pinned = t.device.type == "cuda"
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=pinned)
    return host.copy_(t, non_blocking=pinned)


def _each(result: T, fn: Callable[[Tensor], Tensor]) -> T:
    """``fn`` applied to ``result``, a tensor or a list of tensors."""
    return fn(result) if isinstance(result, Tensor) else [fn(t) for t in result]


def map_math(math: Callable[[], T], device: torch.device | str, *, now: bool | None = None) -> Callable[[], T]:
    """Runs ``math`` (returning a tensor or a list of tensors) now on an accelerator ``device``, else defers it;
    returns a callable giving its result on the host (see the module docstring).

    Args:
        math: the map math, closed over the maps on ``device`` and what it blends them with.
        device: where the maps are.
        now: run ``math`` at once even on the CPU (``True``) or defer it even on an accelerator (``False``); default:
            at once exactly on an accelerator.
    """
    if now is None:
        now = on_accelerator(device)
    if now:
        out = math()
        hosts = _each(out, _host_copy)
        copying = [t for t in ([out] if isinstance(out, Tensor) else out) if t.device.type == "cuda"]
        event = None
        if copying:
            event = torch.cuda.Event()
            event.record()  # after the copies on the current stream

        def ready() -> T:
            if event is not None:
                event.synchronize()
            return hosts

        return ready

    lock = threading.Lock()
    done: list[T] = []

    def later() -> T:
        with lock:
            if not done:
                done.append(_each(math(), lambda t: t.cpu()))
            return done[0]

    return later
