"""Benchmark probelens against Captum, pytorch-grad-cam and torchcam; write ``benchmarks/RESULTS.md``.

Run from the repository root (about 18 minutes on 2 CPU cores; ``--quick`` is a ~1-minute smoke run that writes
nothing unless ``--out`` is given)::

    python benchmarks/bench.py [--quick] [--wait-load 1.5] [--out benchmarks/RESULTS.md]

Unit: the "floor", one forward + ``torch.autograd.grad`` of the summed target logits with respect to the input for the
probe batch, model in eval mode. Every time is measured paired with a floor run right before it and reported as the
median of the ratios, which cancels most of the drift of a shared machine. Each method gets one untimed warm-up call
first, which is also where its peak memory is taken (CPU: the rise of the resident set size over the call, from
``VmHWM`` in ``/proc/self/status`` after resetting it and trimming the heap; CUDA: ``torch.cuda.max_memory_allocated``).
See ``benchmarks/README.md`` for what each section measures.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import gc
import glob
import importlib.util
import io
import logging
import math
import os
import platform
import pstats
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
N_PROBE = 16
TARGET_DEFAULT_FLOOR = 1.15
TARGET_PEER_SPEEDUP = 2.0
TARGET_TRAIN_OVERHEAD = 0.03
TARGET_CORE_OVERHEAD = 0.15
CORE_EVERY = 6

Fn = Callable[[], Any]


# ----------------------------------------------------------------------------------------------------------------------
# environment, budget, timing and memory
# ----------------------------------------------------------------------------------------------------------------------


def load() -> tuple[float, float, float]:
    return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]


def wait_for_load(threshold: float, max_wait: float) -> float:
    """Poll the 1-minute load average until it drops below ``threshold`` (at most ``max_wait`` seconds)."""
    start = time.monotonic()
    while threshold > 0 and os.getloadavg()[0] >= threshold and time.monotonic() - start < max_wait:
        print(f"  waiting for the load to drop below {threshold}: {load()}", flush=True)
        time.sleep(15)
    return time.monotonic() - start


class Budget:
    """Wall-clock allowance of the whole run, split into section shares; repeats shrink when a section runs late."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()


class Memory:
    """Peak memory of one call: CPU resident-set rise (VmHWM after a reset) or CUDA peak allocation."""

    def __init__(self) -> None:
        self.libc = None
        with contextlib.suppress(OSError):
            self.libc = ctypes.CDLL("libc.so.6")
        self.cpu_ok = False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.cpu_ok = self._status("VmHWM") is not None
        except OSError:
            pass

    @staticmethod
    def _status(key: str) -> int | None:
        with contextlib.suppress(OSError):
            with open("/proc/self/status") as fh:
                match = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.MULTILINE)
            if match:
                return int(match.group(1)) * 1024
        return None

    def peak(self, fn: Fn, device: torch.device) -> tuple[Any, float | None]:
        """Run ``fn`` once; return its result and its peak memory rise in MiB (``None`` when not measurable)."""
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            out = fn()
            torch.cuda.synchronize(device)
            return out, (torch.cuda.max_memory_allocated(device) - base) / 2**20
        if not self.cpu_ok:
            return fn(), None
        if self.libc is not None:
            self.libc.malloc_trim(0)  # hand freed heap back, so the call's allocations show up in the RSS
        base = self._status("VmRSS") or 0
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the high-water mark to the current RSS
        out = fn()
        peak = self._status("VmHWM") or base
        return out, (peak - base) / 2**20


@dataclass
class Measure:
    """Timings of one method, each run right after a floor run: ``ratio`` = median time / median floor time."""

    name: str
    seconds: list[float] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)
    peak_mib: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        if not self.seconds:
            return math.nan
        return statistics.median(self.seconds) / statistics.median(self.floors)

    @property
    def time(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.nan


class Timer:
    """Times functions interleaved with the floor of their configuration."""

    def __init__(self, device: torch.device, memory: Memory) -> None:
        self.device = device
        self.memory = memory

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, fn: Fn) -> float:
        self._sync()
        start = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - start

    def warm(self, measure: Measure, fn: Fn) -> float:
        """The untimed warm-up call, which is also the memory probe; returns its wall time."""
        start = time.perf_counter()
        _, measure.peak_mib = self.memory.peak(fn, self.device)
        return time.perf_counter() - start

    def measure(
        self, name: str, fn: Fn, floor: Fn, repeats: int, *, warmup: Fn | None = None, allowance: float | None = None
    ) -> Measure:
        """One warm-up call (``warmup`` or ``fn``), then up to ``repeats`` rounds of (floor, ``fn``). With
        ``allowance`` (seconds), fewer rounds when the warm-up shows that they would not fit."""
        result = Measure(name)
        took = self.warm(result, warmup or fn)
        if allowance is not None and warmup is None:
            repeats = max(1, min(repeats, int(allowance / max(took * 1.3, 1e-3))))
        for _ in range(repeats):
            self.rounds([result], [fn], floor, 1)
        return result

    def rounds(self, measures: list[Measure], fns: list[Fn], floor: Fn, repeats: int) -> None:
        """``repeats`` rounds of: floor, then each function; every function's run is paired with that floor run."""
        for _ in range(repeats):
            base = self.once(floor)
            for measure, fn in zip(measures, fns):
                measure.floors.append(base)
                measure.seconds.append(self.once(fn))


# ----------------------------------------------------------------------------------------------------------------------
# models and probes
# ----------------------------------------------------------------------------------------------------------------------


def vgg_cnn(num_classes: int = 10, width: int = 16) -> nn.Module:
    """Four blocks of (conv-BN-ReLU) x 2 + max-pool (widths 16, 32, 64, 128, like the demo's), GAP, linear head."""
    layers: list[nn.Module] = []
    in_ch = 3
    for k in range(4):
        out_ch = width * 2**k
        for _ in range(2):
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            in_ch = out_ch
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes))


def build_model(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10) if name == "resnet18" else vgg_cnn()
    return model.eval()


@dataclass
class Config:
    model_name: str
    size: int
    device: torch.device
    model: nn.Module
    x: Tensor
    t: Tensor
    convs: dict[str, nn.Module]

    @property
    def label(self) -> str:
        dev = "" if self.device.type == "cpu" else f" {self.device.type}"
        return f"{self.model_name} {self.size}px{dev}"

    def floor(self) -> None:
        x = self.x.detach().clone().requires_grad_(True)
        out = self.model(x)
        torch.autograd.grad(out.gather(1, self.t[:, None]).sum(), x)


def make_config(model_name: str, size: int, device: torch.device) -> Config:
    from probelens.methods import conv_layers

    model = build_model(model_name).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N_PROBE, 3, size, size, generator=gen).to(device)
    with torch.no_grad():
        t = model(x).argmax(dim=1)
    return Config(model_name, size, device, model, x, t, conv_layers(model))


# ----------------------------------------------------------------------------------------------------------------------
# default per-step work: Grad-CAM at every conv + saliency + gradient x input + activations
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Maps:
    """What one default step produces: Grad-CAM per layer (``raw`` at input size, or ``normalised`` per image), the
    input gradient, gradient x input and the activations."""

    cams: dict[str, Tensor]
    saliency: Tensor
    grad_x_input: Tensor
    activations: list[Tensor]
    kind: str = "raw"  # raw | minmax (pytorch-grad-cam) | lowres (torchcam, raw at layer resolution)


def ours(cfg: Config) -> Maps:
    from probelens.methods import forward_backward, grad_cam_map, saliency_from_pass

    result = forward_backward(cfg.model, cfg.x, cfg.t, cfg.convs, gradients=True, input_gradient=True)
    grads = result.gradients["target"]
    size = (cfg.size, cfg.size)
    cams = {name: grad_cam_map(result.activations[name], grads[name], size) for name in cfg.convs}
    return Maps(
        cams,
        saliency_from_pass(result, "target", "vanilla"),
        saliency_from_pass(result, "target", "gradient_x_input"),
        list(result.activations.values()),
    )


def captum_rest(cfg: Config) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Captum ``Saliency`` (signed) + ``InputXGradient`` + ``LayerActivation`` over all conv layers."""
    from captum.attr import InputXGradient, LayerActivation, Saliency

    saliency = Saliency(cfg.model).attribute(cfg.x, target=cfg.t, abs=False)
    gxi = InputXGradient(cfg.model).attribute(cfg.x, target=cfg.t)
    acts = LayerActivation(cfg.model, list(cfg.convs.values())).attribute(cfg.x)
    return saliency, gxi, list(acts)


def captum_per_layer(cfg: Config, layers: dict[str, nn.Module] | None = None) -> Maps:
    from captum.attr import LayerAttribution, LayerGradCam

    cams = {}
    for name, module in (layers or cfg.convs).items():
        cam = LayerGradCam(cfg.model, module).attribute(cfg.x, target=cfg.t, relu_attributions=True)
        cams[name] = LayerAttribution.interpolate(cam, (cfg.size, cfg.size), interpolate_mode="bilinear")
    return Maps(cams, *captum_rest(cfg))


def _cam_from(act: Tensor, grad: Tensor, size: tuple[int, int] | None) -> Tensor:
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
    return cam if size is None else F.interpolate(cam, size=size, mode="bilinear", align_corners=False)


def captum_multi_layer(cfg: Config) -> Maps:
    """``LayerGradientXActivation`` over the list of convs (gradients of all layers from one backward) +
    ``LayerActivation`` over the list (one forward); Grad-CAM is formed from the two by hand."""
    from captum.attr import InputXGradient, LayerActivation, LayerGradientXActivation, Saliency

    layers = list(cfg.convs.values())
    grads = LayerGradientXActivation(cfg.model, layers, multiply_by_inputs=False).attribute(cfg.x, target=cfg.t)
    acts = LayerActivation(cfg.model, layers).attribute(cfg.x)
    size = (cfg.size, cfg.size)
    cams = {name: _cam_from(a, g, size) for name, a, g in zip(cfg.convs, acts, grads)}
    saliency = Saliency(cfg.model).attribute(cfg.x, target=cfg.t, abs=False)
    gxi = InputXGradient(cfg.model).attribute(cfg.x, target=cfg.t)
    return Maps(cams, saliency, gxi, list(acts))


def _pgc_targets(cfg: Config) -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(int(c)) for c in cfg.t]


def pgc_per_layer(cfg: Config, layers: dict[str, nn.Module] | None = None) -> Maps:
    from pytorch_grad_cam import GradCAM

    cams = {}
    targets = _pgc_targets(cfg)
    for name, module in (layers or cfg.convs).items():
        with GradCAM(model=cfg.model, target_layers=[module], reshape_transform=None) as cam:
            cams[name] = torch.from_numpy(cam(input_tensor=cfg.x, targets=targets))[:, None]
    cfg.model.zero_grad(set_to_none=True)  # it calls backward(): drop the parameter gradients it left
    return Maps(cams, *captum_rest(cfg), kind="minmax")


def pgc_all_layers(cfg: Config) -> Maps:
    """pytorch-grad-cam with every conv in ``target_layers``: one forward + one backward for all of them. Its
    ``aggregate_multi_layers`` (the mean over layers) is overridden to hand back the per-layer maps it computed."""
    from pytorch_grad_cam import GradCAM

    class PerLayerGradCAM(GradCAM):
        def aggregate_multi_layers(self, cam_per_target_layer):  # type: ignore[override]
            return cam_per_target_layer

    with PerLayerGradCAM(model=cfg.model, target_layers=list(cfg.convs.values()), reshape_transform=None) as cam:
        per_layer = cam(input_tensor=cfg.x, targets=_pgc_targets(cfg))
    cfg.model.zero_grad(set_to_none=True)
    cams = {name: torch.from_numpy(c) for name, c in zip(cfg.convs, per_layer)}
    return Maps(cams, *captum_rest(cfg), kind="minmax")


def _torchcam(cfg: Config, upsample: bool) -> tuple[dict[str, Tensor], list[Tensor]]:
    from torchcam.methods import GradCAM

    with GradCAM(cfg.model, target_layer=list(cfg.convs.values())) as extractor:
        scores = cfg.model(cfg.x)
        raw = extractor(class_idx=cfg.t.tolist(), scores=scores, normalized=False)
        acts = list(extractor.hook_a)
    size = (cfg.size, cfg.size)
    cams = {
        name: F.interpolate(c[:, None], size=size, mode="bilinear", align_corners=False) if upsample else c[:, None]
        for name, c in zip(cfg.convs, raw)
    }
    return cams, acts


def torchcam_all_layers(cfg: Config) -> Maps:
    """torchcam ``GradCAM(target_layer=[all convs])``: one forward + one ``autograd.grad`` for all layers."""
    cams, _ = _torchcam(cfg, upsample=True)
    return Maps(cams, *captum_rest(cfg))


def peers_hand_fused(cfg: Config) -> Maps:
    """The leanest mix of the peers' public APIs: torchcam for all layers (its hooks also hold the activations) +
    one Captum ``Saliency``, gradient x input multiplied by hand. Two forwards and two backwards in all."""
    from captum.attr import Saliency

    cams, acts = _torchcam(cfg, upsample=True)
    saliency = Saliency(cfg.model).attribute(cfg.x, target=cfg.t, abs=False)
    return Maps(cams, saliency, saliency * cfg.x, acts)


DEFAULT_METHODS: dict[str, Callable[[Config], Maps]] = {
    "probelens (one pass)": ours,
    "Captum, per layer": captum_per_layer,
    "Captum, multi-layer": captum_multi_layer,
    "pytorch-grad-cam, per layer": pgc_per_layer,
    "pytorch-grad-cam, all layers": pgc_all_layers,
    "torchcam, all layers": torchcam_all_layers,
    "best peer mix (hand-fused)": peers_hand_fused,
}
PER_LAYER = {"Captum, per layer": captum_per_layer, "pytorch-grad-cam, per layer": pgc_per_layer}
PER_LAYER_MAX_SIZE = 64  # one pass per layer: 10-30x the floor at 64 px already, seconds per call at 128 px


def _rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _corr(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().float().cpu().flatten(), b.detach().float().cpu().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def verify(cfg: Config, name: str, theirs: Maps, mine: Maps) -> tuple[str, bool]:
    """Check that a peer's maps equal ours (after its normalisation where it normalises)."""
    errors = {
        "saliency": _rel_err(theirs.saliency, mine.saliency),
        "grad x input": _rel_err(theirs.grad_x_input, mine.grad_x_input),
        "activations": max(_rel_err(a, b) for a, b in zip(theirs.activations, mine.activations)),
    }
    ok = all(e < 1e-4 for e in errors.values()) and len(theirs.activations) == len(mine.activations)
    if theirs.kind == "raw":
        cam_err = max(_rel_err(theirs.cams[n], mine.cams[n]) for n in theirs.cams)
        errors["Grad-CAM"] = cam_err
        ok = ok and cam_err < 1e-4
        text = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
        return f"max rel. error: {text}", ok
    # pytorch-grad-cam scales each map by (x - min) / (1e-7 + max) at layer resolution (twice for a single layer:
    # once more when it "aggregates" the one layer), then resizes with cv2 (bilinear, half-pixel centres). Both
    # scalings are affine per image and commute with bilinear resizing, so an exact per-image min-max of its maps
    # and of ours must agree up to the two resizers.
    worst, worst_corr = 0.0, 1.0
    for n, cam in theirs.cams.items():
        a, b = _minmax(cam.float()), _minmax(mine.cams[n].float().cpu())
        worst = max(worst, float((a - b).abs().max()))
        worst_corr = min(worst_corr, _corr(a, b))
    ok = ok and worst < 1e-3
    text = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    return f"Grad-CAM after min-max: max abs diff {worst:.1e}, min corr {worst_corr:.5f}; {text}", ok


def _minmax(maps: Tensor) -> Tensor:
    lo = maps.amin(dim=(2, 3), keepdim=True)
    span = maps.amax(dim=(2, 3), keepdim=True) - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-30), torch.zeros_like(maps))


def op_profile(fn: Fn, reference: Fn, top: int = 6) -> list[tuple[str, float, float]]:
    """Where ``fn`` spends more than ``reference`` (torch.profiler, self CPU time per op name, one call of each after
    a warm-up call): the ``top`` ops by ``fn``'s excess, as ``(op, fn ms, reference ms)``."""
    from torch.profiler import ProfilerActivity, profile

    def self_times(f: Fn) -> dict[str, float]:
        f()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            f()
        return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}

    mine, theirs = self_times(fn), self_times(reference)
    rows = [(op, ms, theirs.get(op, 0.0)) for op, ms in mine.items()]
    rows.sort(key=lambda r: r[1] - r[2], reverse=True)
    return [r for r in rows[:top] if r[1] - r[2] > 0.05]


def _profile_text(rows: list[tuple[str, float, float]], mine: str, theirs: str) -> str:
    return ", ".join(f"`{op}` {a:.1f} vs {b:.1f}" for op, a, b in rows) + f" (ms, {mine} vs {theirs})"


def bench_default(cfg: Config, timer: Timer, repeats: int, allowance: float, log: Callable[[str], None]) -> dict:
    log(f"  default per-step work, {cfg.label}: {len(cfg.convs)} conv layers")
    mine = ours(cfg)
    checks = {}
    per_layer_timed = cfg.size <= PER_LAYER_MAX_SIZE
    for name, method in DEFAULT_METHODS.items():
        if name == "probelens (one pass)" or (name in PER_LAYER and not per_layer_timed):
            continue
        checks[name] = verify(cfg, name, method(cfg), mine)
        if not checks[name][1]:
            log(f"    WARNING: {name} does not match probelens: {checks[name][0]}")
    first = dict(list(cfg.convs.items())[:1])
    rows: dict[str, Measure] = {}
    rows["floor"] = timer.measure("floor", cfg.floor, cfg.floor, repeats)
    cheap = [n for n in DEFAULT_METHODS if n not in PER_LAYER]
    share = allowance / (len(cheap) + 2 * len(PER_LAYER))
    for name in cheap:
        rows[name] = timer.measure(name, lambda m=DEFAULT_METHODS[name]: m(cfg), cfg.floor, repeats, allowance=share)
    for name, method in PER_LAYER.items():
        if not per_layer_timed:
            rows[name] = Measure(name, note=f"not timed above {PER_LAYER_MAX_SIZE} px (seconds per call)")
            continue
        # warm-up / memory probe on the first conv only (each layer is its own pass), then one paired run
        rows[name] = timer.measure(
            name, lambda m=method: m(cfg), cfg.floor, 1, warmup=lambda m=method: m(cfg, first), allowance=share
        )
        rows[name].note = "memory: one layer's pass"
    for name, row in rows.items():
        if math.isnan(row.ratio):
            log(f"    {name:32s} {row.note}")
            continue
        log(f"    {name:32s} {row.ratio:6.2f}x floor  ({row.time * 1e3:8.1f} ms, peak {_mib(row.peak_mib)})")
    profile = op_profile(lambda: ours(cfg), cfg.floor)
    log("    profile, probelens over the floor: " + _profile_text(profile, "probelens", "floor"))
    return {"rows": rows, "checks": checks, "profile": profile}


def _ratio(value: float) -> str:
    return "not timed" if math.isnan(value) else f"{value:.2f}x"


def _best_peer(rows: dict[str, Measure]) -> str:
    """The fastest timed peer row."""
    peers = [n for n in DEFAULT_METHODS if n != "probelens (one pass)" and not math.isnan(rows[n].ratio)]
    return min(peers, key=lambda n: rows[n].ratio)


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MiB"


# ----------------------------------------------------------------------------------------------------------------------
# multi-pass methods: SmoothGrad, integrated gradients, occlusion
# ----------------------------------------------------------------------------------------------------------------------


def multipass_methods(cfg: Config) -> dict[str, dict[str, Any]]:
    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    from probelens.methods import integrated_gradients, occlusion, smoothgrad

    model, x, t = cfg.model, cfg.x, cfg.t
    window = 8 if cfg.size <= 64 else 16
    # Captum's stdevs is one number for the batch; ours is 15% of each image's range (same order, timing only)
    sigma = float(0.15 * (x.amax() - x.amin()))

    def sg_captum(batch: int | None) -> Tensor:
        return NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=16, nt_samples_batch_size=batch, stdevs=sigma, target=t, abs=False
        )

    def ig_captum(batch: int | None) -> Tensor:
        return IntegratedGradients(model).attribute(x, target=t, n_steps=16, internal_batch_size=batch)

    def occ_captum(per_eval: int) -> Tensor:
        shape = (3, window, window)
        return Occlusion(model).attribute(
            x, sliding_window_shapes=shape, strides=shape, baselines=0.0, target=t, perturbations_per_eval=per_eval
        )

    return {
        "SmoothGrad (16 samples)": {
            "ours": lambda: smoothgrad(model, x, t, samples=16, noise=0.15),
            "captum": sg_captum,
            "default": None,
            "sweep": ("nt_samples_batch_size", [None, 1, 2, 4]),
            "check": None,
        },
        "integrated gradients (16 steps)": {
            "ours": lambda: integrated_gradients(model, x, t, steps=16),
            "captum": ig_captum,
            "default": None,
            "sweep": ("internal_batch_size", [None, 16, 32, 64]),
            "check": lambda: _rel_err(integrated_gradients(model, x, t, steps=16), ig_captum(None)),
        },
        f"occlusion (window {window}, stride {window})": {
            "ours": lambda: occlusion(model, x, t, window=window, stride=window, baseline=0.0),
            "captum": occ_captum,
            "default": 1,
            "sweep": ("perturbations_per_eval", [1, 2, 4, 8]),
            "check": lambda: _rel_err(
                occlusion(model, x, t, window=window, stride=window, baseline=0.0), occ_captum(4)
            ),
        },
    }


def bench_multipass(cfg: Config, timer: Timer, repeats: int, allowance: float, log: Callable[[str], None]) -> dict:
    """Per method: probelens's warm-up (memory probe); Captum's default setting (its first call, so also its memory
    probe, which makes it a few percent slower) and the sweep, one paired run per setting; then head-to-head rounds
    of (floor, probelens, Captum at the fastest setting of the sweep), which decide the comparison."""
    log(f"  multi-pass methods, {cfg.label}")
    out = {}
    methods = multipass_methods(cfg)
    per_method = allowance / len(methods)
    for name, spec in methods.items():
        start = time.perf_counter()
        check = spec["check"]() if spec["check"] is not None else None
        mine = Measure("probelens")
        one = timer.warm(mine, spec["ours"])
        arg, values = spec["sweep"]
        default = Measure(f"{arg}={spec['default']} (default)")
        timer.warm(default, lambda s=spec: s["captum"](s["default"]))  # memory probe, untimed
        sweep: list[Measure] = []
        for value in values:
            if len(sweep) >= 2 and time.perf_counter() - start + 2 * one * (repeats + 1) > per_method:
                break
            trial = Measure(f"{arg}={value}")
            timer.rounds([trial], [lambda s=spec, v=value: s["captum"](v)], cfg.floor, 1)
            sweep.append(trial)
        best = min(sweep, key=lambda m: m.ratio)
        head = Measure(f"{best.name} (head-to-head)")
        left = per_method - (time.perf_counter() - start)
        rounds = max(1, min(repeats, int(left / max(1e-3, 2.2 * one))))
        timer.rounds(
            [mine, head], [spec["ours"], lambda s=spec, b=best: s["captum"](_setting(b.name))], cfg.floor, rounds
        )
        profile = op_profile(spec["ours"], lambda s=spec, b=best: s["captum"](_setting(b.name)))
        out[name] = {
            "ours": mine,
            "default": default,
            "sweep": sweep,
            "best": head,
            "check": check,
            "arg": arg,
            "profile": profile,
        }
        tried = ", ".join(f"{m.name} {m.ratio:.1f}x" for m in sweep)
        log(
            f"    {name:34s} probelens {mine.ratio:6.2f}x | Captum {best.name} {head.ratio:6.2f}x head-to-head "
            f"({rounds} rounds) | sweep: {tried}" + (f" | check {check:.1e}" if check is not None else "")
        )
    return out


# ----------------------------------------------------------------------------------------------------------------------
# the CAM family: every gradient variant at every conv from one pass vs pytorch-grad-cam's per-variant calls
# ----------------------------------------------------------------------------------------------------------------------

PGC_CAMS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
}
"""The variants timed against pytorch-grad-cam. Its Eigen variants are left out of the timing: they compute a full SVD
(``full_matrices=True``: a ``(h*w) x (h*w)`` U, 4096 x 4096 at a 64 px layer) per image and layer, which took minutes
per call at every conv of these models; probelens' ``eigencam``/``eigengradcam`` are timed on their own."""


def ours_cam_family(cfg: Config) -> dict[str, dict[str, Tensor]]:
    """Every gradient and activation variant at every conv, upsampled to the input: one forward + one backward."""
    from probelens.methods import cams_from_pass, forward_backward

    result = forward_backward(cfg.model, cfg.x, {"t": cfg.t}, cfg.convs, gradients=True, input_gradient=False)
    return {method: cams_from_pass(result, "t", method) for method in PGC_CAMS}


def ours_eigen(cfg: Config) -> dict[str, dict[str, Tensor]]:
    from probelens.methods import cams_from_pass, forward_backward

    result = forward_backward(cfg.model, cfg.x, {"t": cfg.t}, cfg.convs, gradients=True, input_gradient=False)
    return {method: cams_from_pass(result, "t", method) for method in ("eigencam", "eigengradcam")}


def pgc_cam_family(cfg: Config) -> dict[str, list]:
    """pytorch-grad-cam: one call per variant with every conv in ``target_layers`` (its per-layer maps kept), so one
    forward + one backward per variant, the cheapest way it offers."""
    import pytorch_grad_cam

    out = {}
    targets = _pgc_targets(cfg)
    for method, class_name in PGC_CAMS.items():

        class PerLayer(getattr(pytorch_grad_cam, class_name)):  # type: ignore[misc]
            def aggregate_multi_layers(self, cam_per_target_layer):  # type: ignore[override]
                return cam_per_target_layer

        with PerLayer(model=cfg.model, target_layers=list(cfg.convs.values()), reshape_transform=None) as cam:
            out[method] = cam(input_tensor=cfg.x, targets=targets)
        cfg.model.zero_grad(set_to_none=True)
    return out


def ours_score_cam(cfg: Config, layer: str) -> Tensor:
    from probelens.methods import cam

    return cam(cfg.model, cfg.x, cfg.t, layers={layer: cfg.convs[layer]}, method="scorecam")[layer]


def pgc_score_cam(cfg: Config, layer: str, batch_size: int) -> Any:
    from pytorch_grad_cam import ScoreCAM

    with ScoreCAM(model=cfg.model, target_layers=[cfg.convs[layer]]) as cam:
        cam.batch_size = batch_size
        import tqdm

        real = tqdm.tqdm
        tqdm.tqdm = lambda it, *a, **k: it  # its progress bar would print per image
        try:
            return cam(input_tensor=cfg.x, targets=_pgc_targets(cfg))
        finally:
            tqdm.tqdm = real


def bench_cam(cfg: Config, timer: Timer, repeats: int, allowance: float, log: Callable[[str], None]) -> dict:
    layer = list(cfg.convs)[-1]
    log(f"  CAM family, {cfg.label}: {len(PGC_CAMS)} variants x {len(cfg.convs)} conv layers; Score-CAM at {layer}")
    rows: dict[str, Measure] = {}
    rows["floor"] = timer.measure("floor", cfg.floor, cfg.floor, repeats)
    share = allowance / 6
    rows["probelens: 5 gradient variants x every conv (one pass)"] = timer.measure(
        "probelens family", lambda: ours_cam_family(cfg), cfg.floor, repeats, allowance=share
    )
    rows["pytorch-grad-cam: 5 calls (every conv each)"] = timer.measure(
        "pgc family", lambda: pgc_cam_family(cfg), cfg.floor, repeats, allowance=share
    )
    rows["probelens: eigencam + eigengradcam x every conv (one pass)"] = timer.measure(
        "probelens eigen", lambda: ours_eigen(cfg), cfg.floor, repeats, allowance=share
    )
    rows["probelens Score-CAM (deepest conv)"] = timer.measure(
        "probelens scorecam", lambda: ours_score_cam(cfg, layer), cfg.floor, max(1, repeats // 2), allowance=share
    )
    for batch in (16, 64):
        rows[f"pytorch-grad-cam ScoreCAM, batch_size={batch}"] = timer.measure(
            f"pgc scorecam {batch}",
            lambda b=batch: pgc_score_cam(cfg, layer, b),
            cfg.floor,
            max(1, repeats // 2),
            allowance=share,
        )
    for name, row in rows.items():
        log(f"    {name:48s} {row.ratio:7.2f}x floor  ({row.time * 1e3:8.1f} ms, peak {_mib(row.peak_mib)})")
    return {"rows": rows, "layer": layer, "convs": len(cfg.convs)}


def _setting(name: str) -> int | None:
    value = name.split("=", 1)[1].split(" ", 1)[0]
    return None if value == "None" else int(value)


# ----------------------------------------------------------------------------------------------------------------------
# rendering + logging: real monitors, compute vs render+write
# ----------------------------------------------------------------------------------------------------------------------


def load_demo():
    path = ROOT / "examples" / "snow_vs_desert.py"
    spec = importlib.util.spec_from_file_location("snow_vs_desert_demo", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quiet_trainer(root: str, **kwargs: Any):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    kwargs.setdefault("accelerator", "cpu")
    return pl.Trainer(
        logger=TensorBoardLogger(root, name="bench"),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        **kwargs,
    )


RENDER_PIECES = {
    "colormaps": ("colormap.py", "apply_colormap"),
    "overlays": ("image.py", "overlay_heatmap"),
    "captioned grids": ("grid.py", ("labelled_grid", "rows_grid")),
    "PNG encode": ("image.py", "encode_png"),
    "event-file write": ("event_file.py", "add_image"),
}

FIRING_PIECES = {
    "shared pass": ("engine.py", "forward_backward"),
    "maps": ("cam.py", "cam_map"),
    "colour + blend": ("image.py", ("overlay_heatmap", "normalize_maps")),
    "colormaps": ("colormap.py", "apply_colormap"),
    "grids": ("grid.py", ("labelled_grid", "rows_grid", "filmstrip")),
    "caption text": ("text.py", ("stamp_lines", "fit_text")),
    "PNG encode": ("image.py", "encode_png"),
    "event-file write": ("event_file.py", "add_image"),
}
"""What one firing of the core monitors spends its time on (cumulative, so nested pieces overlap: grids hold their
caption text, filter grids their colormaps)."""


def _piece_times(stats: pstats.Stats, pieces: dict[str, tuple[str, Any]] = RENDER_PIECES) -> dict[str, float]:
    out = dict.fromkeys(pieces, 0.0)
    for (filename, _line, func), (_cc, _nc, _tt, cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for piece, (fname, funcs) in pieces.items():
            names = (funcs,) if isinstance(funcs, str) else funcs
            if filename.endswith(fname) and func in names:
                out[piece] += cum
    return out


def bench_render(
    label: str, model: nn.Module, probe: Any, repeats: int, log: Callable[[str], None], root: str
) -> dict[str, Any]:
    """Fire GradCAMMonitor(all convs), SaliencyMonitor(vanilla, gradient x input) and ActivationMonitor(auto) as the
    demo configures them: the shared pass (compute) is timed apart from each monitor's ``explain`` on the cached pass
    (render + write: Grad-CAM maps from the cached pass, colormaps, overlays, captioned grids, PNG, TensorBoard)."""
    from probelens import ActivationMonitor, GradCAMMonitor, SaliencyMonitor

    log(f"  rendering + logging, {label}")
    monitors = [
        GradCAMMonitor(probe, layers="all"),
        SaliencyMonitor(probe, methods=("vanilla", "gradient_x_input")),
        ActivationMonitor(probe, layers="auto"),
    ]
    trainer = _quiet_trainer(root, max_epochs=1, callbacks=monitors)  # the Trainer's monitors share one run and pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in monitors:
            m.setup(trainer, model, "fit")
            m._ensure_configured(trainer, model)
    session = monitors[0]._shared
    compute: list[float] = []
    render: dict[str, list[float]] = {type(m).__name__: [] for m in monitors}
    pieces = dict.fromkeys(RENDER_PIECES, 0.0)
    for step in range(repeats + 1):
        session.release()
        start = time.perf_counter()
        monitors[0]._pass(model, step)
        took = time.perf_counter() - start
        if step:
            compute.append(took)
        profile = cProfile.Profile() if step == repeats else None
        for m in monitors:
            if profile is not None:
                profile.enable()
            start = time.perf_counter()
            m.explain(step, model, trainer)
            took = time.perf_counter() - start
            if profile is not None:
                profile.disable()
            if step:
                render[type(m).__name__].append(took)
        if profile is not None:
            pieces = _piece_times(pstats.Stats(profile))
    trainer.logger.experiment.flush()
    comp = statistics.median(compute)
    per_monitor = {k: statistics.median(v) for k, v in render.items()}
    total = sum(per_monitor.values())
    log(
        f"    compute (shared pass) {comp * 1e3:7.1f} ms | render+write {total * 1e3:7.1f} ms ("
        + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in per_monitor.items())
        + ") | profiled: "
        + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in pieces.items())
    )
    return {"compute": comp, "render": per_monitor, "total": total, "pieces": pieces}


def bench_png(images: list[tuple[str, Tensor]], repeats: int) -> dict[str, tuple[float, int]]:
    """Encode the demo monitors' images: SummaryWriter.add_image's encoder (PIL, zlib level 6), PIL level 1, and
    probelens.render.encode_png."""
    from PIL import Image
    from torch.utils.tensorboard.summary import image as tb_image

    from probelens.render import encode_png

    def pil(level: int) -> Callable[[Tensor], bytes]:
        def encode(img: Tensor) -> bytes:
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy())).save(
                buf, format="PNG", compress_level=level
            )
            return buf.getvalue()

        return encode

    def tensorboard(img: Tensor) -> bytes:
        return tb_image("t", img.numpy(), dataformats="CHW").value[0].image.encoded_image_string

    encoders = {
        "SummaryWriter.add_image (PIL, level 6)": tensorboard,
        "PIL, compress_level=1": pil(1),
        "probelens encode_png (level 1)": encode_png,
    }
    out = {}
    for name, enc in encoders.items():
        total, size = 0.0, 0
        for _tag, img in images:
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                data = enc(img)
                runs.append(time.perf_counter() - start)
            total += min(runs)
            size += len(data)
        out[name] = (total, size)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# training overhead of the demo's monitors
# ----------------------------------------------------------------------------------------------------------------------


class _EpochClock:
    """A callback that records the wall time of every training epoch (validation and monitor firings included) and
    of every training step (``on_train_batch_start`` to ``on_train_batch_end``, after the monitors' hooks)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.steps: list[float] = []
        self._start = 0.0
        self._step = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(time.perf_counter() - self._step)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self._start)


def _timed_hooks(monitor: Any, totals: dict[str, float], profile: cProfile.Profile | None = None) -> None:
    """Wrap every Lightning hook a monitor implements so that the time spent inside it is added up (and profiled
    with ``profile``, when given)."""
    name = type(monitor).__name__
    for hook in (
        "setup",
        "on_fit_start",
        "on_train_start",
        "on_train_batch_end",
        "on_train_epoch_end",
        "on_validation_start",
        "on_validation_end",
    ):
        original = getattr(monitor, hook)

        def wrapped(*args, _original=original, **kwargs):
            start = time.perf_counter()
            if profile is not None:
                profile.enable()
            try:
                return _original(*args, **kwargs)
            finally:
                if profile is not None:
                    profile.disable()
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

        setattr(monitor, hook, wrapped)


def demo_monitors(probe: Any, shortcut_probe: Any) -> list:
    """The monitor set of examples/snow_vs_desert.py."""
    from probelens import ActivationMonitor, FilterMonitor, GradCAMMonitor, SaliencyMonitor, ShortcutMonitor

    return [
        FilterMonitor(layers=["net.0.0"]),
        ActivationMonitor(probe, layers="auto"),
        GradCAMMonitor(probe, layers="all"),
        SaliencyMonitor(probe, methods=("vanilla", "gradient_x_input")),
        ShortcutMonitor(shortcut_probe, on_shortcut="warn"),
    ]


def ProbeSet_from(val: Any, k: int) -> Any:
    from probelens import ProbeSet
    from probelens.data import CLASS_NAMES, MEAN, STD

    return ProbeSet.from_dataset(
        val, num_samples=k, per_class=True, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES
    )


def demo_data(n: int, size: int = 64) -> tuple[Any, Any, Any, Any]:
    from probelens.data import SnowDesertDataset

    common = dict(size=size, p=0.95, spot_contrast=0.6)
    train = SnowDesertDataset(n=n, seed=0, **common)
    val = SnowDesertDataset(n=max(n // 4, 64), seed=1, return_masks=True, **common)
    return train, val, ProbeSet_from(val, 8), ProbeSet_from(val, 32)


def core_monitors(probe: Any, shortcut_probe: Any) -> list:
    """The four core monitors of the "training never waits for pictures" issue, every 6 optimizer steps: filters,
    activations, Grad-CAM at every conv, vanilla + gradient x input saliency (a 16-image 64 px probe)."""
    from probelens import ActivationMonitor, FilterMonitor, GradCAMMonitor, SaliencyMonitor

    every = dict(every_n_steps=CORE_EVERY)
    return [
        FilterMonitor(**every),
        ActivationMonitor(shortcut_probe, layers="auto", **every),
        GradCAMMonitor(shortcut_probe, layers="all", **every),
        SaliencyMonitor(shortcut_probe, methods=("vanilla", "gradient_x_input"), **every),
    ]


def train_once(
    demo: Any,
    n: int,
    epochs: int,
    with_monitors: bool,
    root: str,
    monitors_fn: Callable[[Any, Any], list] | None = None,
    profile: cProfile.Profile | None = None,
    accelerator: str = "cpu",
) -> dict[str, Any]:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    pl.seed_everything(0, workers=True, verbose=False)
    train, val, probe, shortcut_probe = demo_data(n)
    if monitors_fn is not None and monitors_fn is not demo_monitors:
        shortcut_probe = ProbeSet_from(val, 16)
    monitors = (monitors_fn or demo_monitors)(probe, shortcut_probe) if with_monitors else []
    if accelerator != "cpu":
        torch.cuda.reset_peak_memory_stats()
    hook_time: dict[str, float] = {}
    for m in monitors:
        _timed_hooks(m, hook_time, profile)
    from pytorch_lightning import Callback

    clock_cb = type("EpochClock", (_EpochClock, Callback), {})()
    trainer = _quiet_trainer(
        root, max_epochs=epochs, callbacks=[*monitors, clock_cb], log_every_n_steps=10, accelerator=accelerator
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(
            demo.LeopardClassifier(),
            DataLoader(train, batch_size=64, shuffle=True),
            DataLoader(val, batch_size=256),
        )
    elapsed = time.perf_counter() - start
    trainer.logger.experiment.flush()
    log_dir = trainer.logger.log_dir
    events = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    size = sum(os.path.getsize(f) for f in events)
    image_bytes, image_events = 0, 0
    if with_monitors:
        from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

        acc = EventAccumulator(log_dir, size_guidance={IMAGES: 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            for event in acc.Images(tag):
                image_bytes += len(event.encoded_image_string)
                image_events += 1
    fires = max((m.fire_count for m in monitors), default=0)
    return {
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if accelerator != "cpu" else None,
        "fit": elapsed,
        "epochs": list(clock_cb.times),
        "step": statistics.median(clock_cb.steps),  # a step without a firing: how fast the machine trains now
        "hooks": hook_time,
        "bytes": size,
        "image_bytes": image_bytes,
        "image_events": image_events,
        "fires": fires,
    }


# ----------------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in (
        "torchvision",
        "captum",
        "grad-cam",
        "torchcam",
        "pytorch-lightning",
        "tensorboard",
        "pillow",
        "numpy",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def write_report(path: Path, ctx: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    add("# probelens benchmark results")
    add("")
    add(f"Written by `python benchmarks/bench.py{' --quick' if ctx['quick'] else ''}` on {ctx['date']}. ")
    add("Unit: the **floor** = one forward + `torch.autograd.grad` of the summed target logits w.r.t. the input, probe")
    add(f"batch N={N_PROBE}, model in eval mode. Ratios are medians of runs paired with a floor run just before each.")
    add("")
    add("## Machine")
    add("")
    add(f"- CPU: {ctx['cpu']} ({os.cpu_count()} cores visible), torch threads: {THREADS}")
    add(f"- {platform.platform()}")
    add("- " + ", ".join(f"{k} {v}" for k, v in ctx["versions"].items()))
    add(f"- CUDA: {ctx['cuda']}")
    add(f"- load average (1, 5, 15 min): start {ctx['load_start']}, end {ctx['load_end']}")
    add(f"- run time: {ctx['runtime']:.0f} s (plus {ctx['waited']:.0f} s waiting for the load to drop)")
    add(f"- memory: {ctx['memory_note']}")
    add("")
    targets = ctx["targets"]
    add("## Targets")
    add("")
    add("| target | measured | verdict |")
    add("| --- | --- | --- |")
    for name, measured, ok in targets:
        add(f"| {name} | {measured} | {verdict(ok)} |")
    add("")
    # default work
    add("## Default per-step work: Grad-CAM at every conv + saliency + gradient x input + activations")
    add("")
    configs = list(ctx["default"])
    names = ["floor", *DEFAULT_METHODS]
    add("Time as a multiple of the floor (lower is better); floor in ms in the header; peak memory below.")
    add("")
    header = " | ".join(f"{c} (floor {ctx['default'][c]['rows']['floor'].time * 1e3:.0f} ms)" for c in configs)
    add(f"| method | {header} |")
    add("|---" * (len(configs) + 1) + "|")
    for name in names:
        cells = [_ratio(ctx["default"][c]["rows"][name].ratio) for c in configs]
        add(f"| {name} | " + " | ".join(cells) + " |")
    best_cells = []
    for c in configs:
        rows = ctx["default"][c]["rows"]
        peer = _best_peer(rows)
        best_cells.append(f"{rows[peer].ratio / rows['probelens (one pass)'].ratio:.2f}x ({peer})")
    add("| **probelens speed-up over the best peer** | " + " | ".join(best_cells) + " |")
    add("")
    add("Peak memory (rise of the resident set over one call, MiB):")
    add("")
    add(f"| method | {' | '.join(configs)} |")
    add("|---" * (len(configs) + 1) + "|")
    for name in names:
        cells = [_mib(ctx["default"][c]["rows"][name].peak_mib).replace(" MiB", "") for c in configs]
        add(f"| {name} | " + " | ".join(cells) + " |")
    add("")
    add("Profile of the one pass over the floor (torch.profiler, one call each, self CPU time of the ops where it")
    add("spends the most more than the floor):")
    add("")
    for c in configs:
        if ctx["default"][c].get("profile"):
            add(f"- {c}: " + _profile_text(ctx["default"][c]["profile"], "one pass", "floor"))
    add("")
    add("What each peer row runs (all produce the same maps; checked in the run):")
    add("")
    lines.extend(PEER_NOTES)
    add("")
    add("Agreement checks (peer vs probelens):")
    add("")
    for c in configs:
        for name, (text, ok) in ctx["default"][c]["checks"].items():
            add(f"- {c}, {name}: {'OK' if ok else 'MISMATCH'} ({text})")
    add("")
    # multi-pass
    add("## Multi-pass methods (probelens chunks automatically; Captum at its default and hand-tuned)")
    add("")
    add(
        "| config | method | probelens | Captum default | Captum best (setting) | probelens / Captum best | peak MiB"
        " probelens / Captum default |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- |")
    for c, methods in ctx["multipass"].items():
        for name, r in methods.items():
            best = r["best"]
            add(
                f"| {c} | {name} | {r['ours'].ratio:.1f}x | {r['sweep'][0].ratio:.1f}x | {best.ratio:.1f}x "
                f"({best.name.replace(' (head-to-head)', '')}) | {r['ours'].ratio / best.ratio:.2f} | "
                f"{_mib(r['ours'].peak_mib)} / {_mib(r['default'].peak_mib)} |"
            )
    add("")
    add("probelens and Captum best are medians of head-to-head rounds (floor, probelens, Captum at the fastest")
    add("setting of the sweep); Captum default is its single sweep run. Sweeps, one paired run per setting:")
    add("")
    for c, methods in ctx["multipass"].items():
        for name, r in methods.items():
            tried = ", ".join(f"{m.name}: {m.ratio:.1f}x" for m in r["sweep"])
            check = "" if r["check"] is None else f"; max rel. difference to Captum {r['check']:.1e}"
            add(f"- {c}, {name}: {tried}{check}")
    add("")
    add("SmoothGrad noise differs between the libraries (different generators), so only its timing is compared.")
    add("")
    add("Profiles where probelens is slower than Captum's best (torch.profiler, one call each, self CPU time of the")
    add("ops where probelens spends the most more):")
    add("")
    for c, methods in ctx["multipass"].items():
        for name, r in methods.items():
            if r["ours"].ratio > r["best"].ratio and r.get("profile"):
                add(f"- {c}, {name}: " + _profile_text(r["profile"], "probelens", "Captum best"))
    add("")
    if ctx.get("cam"):
        add("## The CAM family from the one shared pass")
        add("")
        add("probelens: gradcam, gradcam++, xgradcam, layercam and hirescam at every conv, upsampled to the input,")
        add("from one forward + one `autograd.grad` (`forward_backward` + `cams_from_pass`); eigencam + eigengradcam")
        add("the same way, timed on their own (pytorch-grad-cam's Eigen variants, a full SVD with a (h*w) x (h*w) U")
        add("per image and layer, took minutes per call at every conv of these models and are not timed).")
        add("pytorch-grad-cam: one call per variant with every conv in `target_layers` (its per-layer maps kept),")
        add("the cheapest way it offers (one forward + one backward each). Score-CAM at the deepest conv: probelens")
        add("chunks its masked copies to the memory budget (tuned on the first call on CPU); pytorch-grad-cam at its")
        add("default `batch_size` 16 and at 64. Time as a multiple of the floor; peak memory of the warm-up call.")
        add("")
        labels = list(ctx["cam"])
        add("| method | " + " | ".join(labels) + " |")
        add("|---|" + "---|" * len(labels))
        names = list(next(iter(ctx["cam"].values()))["rows"])
        for name in names:
            cells = []
            for label in labels:
                row = ctx["cam"][label]["rows"][name]
                cells.append(f"{_ratio(row.ratio)} ({_mib(row.peak_mib)})")
            add(f"| {name} | " + " | ".join(cells) + " |")
        add("")
        for label in labels:
            r = ctx["cam"][label]
            family = r["rows"]["pytorch-grad-cam: 5 calls (every conv each)"].ratio
            mine = r["rows"]["probelens: 5 gradient variants x every conv (one pass)"].ratio
            add(
                f"- {label}: the five gradient variants at every conv {family / mine:.1f}x faster than "
                "pytorch-grad-cam's per-variant calls. Agreement is checked by tests/methods/test_cam.py (every "
                "variant against pytorch-grad-cam, three against torchcam, at the layers' resolution, to float "
                "tolerance); at random init these deep maps are nearly constant, so a min-max comparison here "
                "would measure noise."
            )
        add("")
    # render
    add("## Rendering + logging vs the compute it renders")
    add("")
    add("Monitors as in the demo: GradCAMMonitor(layers='all'), SaliencyMonitor(vanilla, gradient_x_input),")
    add("ActivationMonitor(layers='auto'), TensorBoardLogger. Compute = the one shared pass; render+write = each")
    add("monitor's `explain` on the cached pass (maps, colormaps, overlays, captioned grids, PNG, event write).")
    add("")
    add(
        "| config | compute ms | render+write ms | GradCAM / Saliency / Activation ms | ratio | profile of render+write"
        " (cumulative ms) |"
    )
    add("| --- | --- | --- | --- | --- | --- |")
    for label, r in ctx["render"].items():
        per = " / ".join(f"{v * 1e3:.0f}" for v in r["render"].values())
        prof = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in r["pieces"].items())
        add(
            f"| {label} | {r['compute'] * 1e3:.0f} | {r['total'] * 1e3:.0f} | {per} | "
            f"{r['total'] / r['compute']:.2f}x | {prof} |"
        )
    add("")
    if ctx.get("png"):
        add("PNG encoding of one firing of the demo's monitors (13 images; sum of the best of 3 runs each):")
        add("")
        add("| encoder | ms | KiB |")
        add("| --- | --- | --- |")
        for name, (secs, size) in ctx["png"].items():
            add(f"| {name} | {secs * 1e3:.0f} | {size / 1024:.0f} |")
        add("")
    # training
    tr = ctx.get("train")
    if tr:
        add("## Training overhead of the demo's default monitors")
        add("")
        add(f"examples/snow_vs_desert.py model and data, n={tr['n']}, {tr['epochs']} epochs, batch 64, all five demo")
        add("monitors firing every epoch (Filter, Activation, GradCAM(all), Saliency, Shortcut).")
        add("")
        add("| run | fit s | epoch s (each) | time inside monitor hooks s |")
        add("| --- | --- | --- | --- |")
        for run in tr["runs"]:
            epochs = ", ".join(f"{e:.2f}" for e in run["epochs"])
            hooks = sum(run["hooks"].values())
            add(f"| {run['label']} | {run['fit']:.2f} | {epochs} | {hooks:.2f} |")
        add("")
        add(
            f"- overhead, A/B: {tr['ab'] * 100:+.1f}% (median over {tr['rounds']} rounds of each round's fit with / "
            f"without - 1; best with / best without: {tr['ab_best'] * 100:+.1f}%)"
        )
        add(
            f"- overhead, speed-normalised: {tr['ab_normalised'] * 100:+.1f}% (each round's fit ratio divided by its "
            f"ratio of median step times; the steps without a firing ran {tr['step_ratio']:.2f}x as long with the "
            "monitors as without, the machine's speed between the two runs)"
        )
        add(f"- overhead, direct (time inside monitor hooks / rest of the fit): {tr['direct'] * 100:.1f}%")
        add("- per monitor, seconds per firing: " + ", ".join(f"{k} {v:.3f}" for k, v in tr["per_fire"].items()))
        add(
            f"- event file: {tr['bytes_per_step'] / 1024:.0f} KiB per log step ({tr['image_bytes_per_step'] / 1024:.0f}"
            f" KiB of it PNG, {tr['images_per_step']:.0f} images)"
        )
        add("")
    core = ctx.get("core")
    if core:
        add(f"## Core monitors every {CORE_EVERY} steps: A/B against no monitors")
        add("")
        add(
            f"examples/snow_vs_desert.py model and data, n={core['n']}, {core['epochs']} epochs, batch 64, one process,"
        )
        add("TensorBoardLogger in every run; FilterMonitor, ActivationMonitor(auto), GradCAMMonitor(all) and")
        add(f"SaliencyMonitor(vanilla, gradient x input) on a 16-image 64 px probe, every_n_steps={CORE_EVERY}.")
        add('"core monitors": the monitors as they run (pictures drawn and written on the training thread).')
        add("")
        add("| run | fit s | epoch s (each) |")
        add("| --- | --- | --- |")
        for run in core["runs"]:
            add(f"| {run['label']} | {run['fit']:.2f} | " + ", ".join(f"{e:.2f}" for e in run["epochs"]) + " |")
        add("")
        add(
            f"- overhead, A/B (median over {core['rounds']} rounds of each round's fit with / without - 1): "
            f"{core['ab'] * 100:+.1f}% drawn on the training thread (best with / best without: "
            f"{core['ab_best'] * 100:+.1f}%)"
        )
        if core.get("ab_cuda") is not None:
            add(
                f"- on CUDA (model on the GPU; map math on the device, drawing on the training thread): "
                f"A/B {core['ab_cuda'] * 100:+.1f}% (median over rounds), peak device memory "
                f"{core['peak_cuda_mib']:.0f} MiB"
            )
        else:
            add("- on CUDA: not measured (no GPU on this machine)")
        add(
            f"- overhead, speed-normalised: {core['ab_normalised'] * 100:+.1f}% (each round's fit ratio divided by its "
            f"ratio of median step times; the steps without a firing ran {core['step_ratio']:.2f}x as long)"
        )
        add(
            f"- bytes per firing: {core['image_bytes_per_firing'] / 1024:.0f} KiB of PNG in "
            f"{core['images_per_firing']:.1f} images ({core['fires']} firings)"
        )
        add(
            f"- time per firing inside the monitors' hooks (drawn on the training thread): "
            f"{core['hooks_per_firing'] * 1e3:.0f} ms, against {core['between_firings'] * 1e3:.0f} ms of training "
            f"between two firings without monitors"
        )
        add(
            f"- profile of one more epoch drawn on the training thread (cProfile inside the hooks, "
            f"{core['profiled_per_firing'] * 1e3:.0f} ms per firing with the profiler's own cost; cumulative ms per "
            "firing, nested pieces overlap: grids hold their caption text): "
            + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in core["pieces"].items())
        )
        add("")
    if ctx.get("analysis"):
        add("## Analysis and proposed fixes")
        add("")
        lines.extend(ctx["analysis"])
        add("")
    text = "\n".join(lines) + "\n"
    if path is not None:
        text += _other_scripts_sections(path, {line for line in lines if line.startswith("## ")})
        path.write_text(text)
    return text


def _other_scripts_sections(path: Path, written: set[str]) -> str:
    """The sections of the report at ``path`` that other scripts wrote (``benchmarks/event_writer_bench.py``,
    ``benchmarks/render_bench.py``: headings this run does not write, other than the analysis), kept as they are."""
    if not path.exists():
        return ""
    kept, keep = [], False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keep = line not in written and not line.startswith("## Analysis")
        if keep:
            kept.append(line)
    return ("\n" + "\n".join(kept).rstrip() + "\n") if kept else ""


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------


PEER_NOTES = [
    "- Captum, per layer: `LayerGradCam(relu_attributions=True)` + bilinear `LayerAttribution.interpolate` per",
    "  conv, `Saliency(abs=False)`, `InputXGradient`, `LayerActivation([all convs])`.",
    "- Captum, multi-layer: `LayerGradientXActivation([all convs], multiply_by_inputs=False)` (one backward for",
    "  all layer gradients) + `LayerActivation([all convs])`, Grad-CAM formed by hand; `Saliency`, `InputXGradient`.",
    "- pytorch-grad-cam: `GradCAM(target_layers=[layer])` per conv, or all convs in one call (its per-layer maps,",
    "  taken before its mean over layers); plus the Captum saliency/activation calls. It runs `loss.backward()`,",
    "  so it also computes parameter gradients.",
    "- torchcam: `GradCAM(target_layer=[all convs])` (one `autograd.grad`), bilinear upsampling; plus the Captum",
    "  calls.",
    "- best peer mix: torchcam for all layers (activations from its hooks) + one Captum `Saliency`; gradient x",
    "  input multiplied by hand: the fewest passes the peers' public APIs allow (2 forwards, 2 backwards).",
]


@dataclass
class Plan:
    default_configs: list[tuple[str, int]]
    multipass_configs: list[tuple[str, int]]
    repeats: int
    multipass_repeats: int
    train_n: int
    train_epochs: int
    train_rounds: int
    render_repeats: int
    cam_configs: list[tuple[str, int]] = field(default_factory=lambda: [("vgg", 64), ("resnet18", 64)])


def plans(quick: bool) -> Plan:
    everything = [("vgg", 64), ("resnet18", 64), ("vgg", 128), ("resnet18", 128)]
    if quick:
        return Plan([("vgg", 64), ("resnet18", 64)], [("vgg", 64)], 3, 2, 512, 1, 1, 1)
    return Plan(everything, everything, 5, 3, 4000, 2, 3, 3)  # training: the demo's own n=4000, 3 rounds of 2 epochs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~1-minute smoke run (fewer configs and repeats)")
    parser.add_argument("--out", default=None, help="report path (default benchmarks/RESULTS.md; --quick: none)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 900, quick 60)")
    parser.add_argument("--wait-load", type=float, default=0.0, help="wait until the 1-min load is below this")
    parser.add_argument("--wait-max", type=float, default=240.0, help="wait at most this long for the load (s)")
    parser.add_argument(
        "--skip", default="", help="comma-separated sections to skip: default,multipass,cam,render,train,core"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(THREADS)
    with contextlib.suppress(ImportError):  # pytorch-grad-cam resizes with OpenCV, which would use every core
        import cv2

        cv2.setNumThreads(THREADS)
    warnings.filterwarnings("ignore")  # Captum's "required_grads has been set automatically", Lightning's tips
    for name in ("pytorch_lightning", "lightning", "lightning_fabric", "lightning_utilities"):
        logging.getLogger(name).setLevel(logging.ERROR)
    waited = wait_for_load(args.wait_load, args.wait_max)
    plan = plans(args.quick)
    budget = Budget(args.budget or (60.0 if args.quick else 900.0))
    out_path = Path(args.out) if args.out else (None if args.quick else ROOT / "benchmarks" / "RESULTS.md")
    skip = set(filter(None, args.skip.split(",")))
    load_start = load()
    memory = Memory()

    def log(msg: str) -> None:
        print(f"[{budget.elapsed():6.1f}s] {msg}", flush=True)

    log(f"probelens benchmark: {THREADS} threads, torch {torch.__version__}, load {load_start}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        cuda = torch.cuda.get_device_name(0)
    else:
        cuda = "not available: GPU measurements skipped"
        log("CUDA not available: GPU measurements skipped")
    ctx: dict[str, Any] = {
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(),
        "versions": versions(),
        "cuda": cuda,
        "load_start": load_start,
        "waited": waited,
        "default": {},
        "multipass": {},
        "cam": {},
        "render": {},
        "memory_note": (
            "CPU peak = rise of the resident set size (VmHWM after a reset via /proc/self/clear_refs, heap trimmed "
            "first) over the untimed warm-up call of each method; CUDA: torch.cuda.max_memory_allocated over it"
            if memory.cpu_ok
            else "not measurable on this system (no /proc/self/clear_refs)"
        ),
    }
    demo = load_demo()
    with tempfile.TemporaryDirectory(prefix="probelens-bench-") as root:
        # the training A/B first, while the process is fresh (after the heavy sections the same fit ran up to 50%
        # slower in one process, which the paired rounds cancel only in part)
        if "train" not in skip:
            log(f"== training overhead (demo, n={plan.train_n}, {plan.train_epochs} epochs)")
            ctx["train"] = bench_train(demo, plan, budget, log, root)
        if "core" not in skip:
            log(f"== core monitors every {CORE_EVERY} steps (demo CNN, n={plan.train_n}, {plan.train_epochs} epochs)")
            ctx["core"] = bench_core(demo, plan, budget, log, root)
        shares = {"default": 0.2, "multipass": 0.45}
        for device in devices:
            timer = Timer(device, memory)
            if "default" not in skip:
                log(f"== default per-step work ({device.type})")
                for model_name, size in plan.default_configs:
                    cfg = make_config(model_name, size, device)
                    allowance = budget.seconds * shares["default"] / len(plan.default_configs) / len(devices)
                    ctx["default"][cfg.label] = bench_default(cfg, timer, plan.repeats, allowance, log)
            if "multipass" not in skip:
                log(f"== multi-pass methods ({device.type})")
                for model_name, size in plan.multipass_configs:
                    cfg = make_config(model_name, size, device)
                    allowance = budget.seconds * shares["multipass"] / len(plan.multipass_configs) / len(devices)
                    if budget.remaining() < 0.35 * budget.seconds:
                        allowance *= 0.5
                    ctx["multipass"][cfg.label] = bench_multipass(cfg, timer, plan.multipass_repeats, allowance, log)
            if "cam" not in skip:
                log(f"== CAM family ({device.type})")
                for model_name, size in plan.cam_configs:
                    cfg = make_config(model_name, size, device)
                    allowance = budget.seconds * 0.1 / len(plan.cam_configs) / len(devices)
                    ctx["cam"][cfg.label] = bench_cam(cfg, timer, plan.repeats, allowance, log)

        if "render" not in skip:
            log("== rendering + logging")
            from probelens import ProbeSet
            from probelens.data import MEAN, STD, SnowDesertDataset

            torch.manual_seed(0)
            _train, _val, probe, _sp = demo_data(256)
            ctx["render"]["demo CNN, 8 probe images at 64px"] = bench_render(
                "demo CNN, 8 probe images at 64px", demo.LeopardClassifier(), probe, plan.render_repeats, log, root
            )
            for model_name, size in [("vgg", 64), ("resnet18", 128)]:
                data = SnowDesertDataset(n=N_PROBE, seed=3, size=size)
                bench_probe = ProbeSet.from_dataset(data, num_samples=N_PROBE, per_class=False, mean=MEAN, std=STD)
                label = f"{model_name}, {N_PROBE} probe images at {size}px"
                model = build_model(model_name)
                ctx["render"][label] = bench_render(label, model, bench_probe, plan.render_repeats, log, root)
            captured = capture_demo_images(demo, root)
            ctx["png"] = bench_png(captured, 3)
            for name, (secs, size) in ctx["png"].items():
                log(f"    PNG: {name:40s} {secs * 1e3:7.1f} ms {size / 1024:8.0f} KiB")
    ctx["targets"] = targets(ctx)
    ctx["analysis"] = analysis(ctx)
    ctx["load_end"] = load()
    ctx["runtime"] = budget.elapsed()
    text = write_report(out_path, ctx)
    print()
    print(text)
    log(f"done in {budget.elapsed():.0f} s; load {ctx['load_end']}" + (f"; wrote {out_path}" if out_path else ""))
    return 0


def capture_demo_images(demo: Any, root: str) -> list[tuple[str, Tensor]]:
    """One firing of the demo's monitors with the sink replaced by a list: the images they log."""
    _train, _val, probe, shortcut_probe = demo_data(256)
    monitors = demo_monitors(probe, shortcut_probe)
    trainer = _quiet_trainer(root, max_epochs=1, callbacks=monitors)
    model = demo.LeopardClassifier()
    images: list[tuple[str, Tensor]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in monitors:
            m.setup(trainer, model, "fit")
            m._ensure_configured(trainer, model)
            m.writer.sink.add_image = lambda tag, img, step, facts=None: images.append((tag, img.clone()))
            m.writer.sink.add_text = lambda *a, **k: None
            m.explain(1, model, trainer)
    return images


def _pairs(runs: list[dict[str, Any]], variant: str, base: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The ``(variant, base)`` runs of each round that has both (adjacent in time)."""
    by = {(r["round"], r["variant"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs})
    return [(by[k, variant], by[k, base]) for k in rounds if (k, variant) in by and (k, base) in by]


def _paired(runs: list[dict[str, Any]], variant: str, base: str) -> tuple[float, float]:
    """``(median, best)`` overhead of ``variant`` over ``base``: the median over rounds of each round's fit ratio
    (the runs of a round are adjacent in time, so the machine's drift cancels), and best fit over best fit."""
    ratios = [a["fit"] / b["fit"] for a, b in _pairs(runs, variant, base)]
    best = min(r["fit"] for r in runs if r["variant"] == variant) / min(r["fit"] for r in runs if r["variant"] == base)
    return statistics.median(ratios) - 1.0, best - 1.0


def _speed_normalised(runs: list[dict[str, Any]], variant: str, base: str) -> tuple[float, float]:
    """``(overhead, steps)``: the median over rounds of each round's fit ratio divided by its ratio of median step
    times (a step without a firing: how fast the machine trained during that run), and the median ratio of those
    step times themselves (about 1 unless the monitors slow the steps they do not fire at, which this exposes)."""
    pairs = _pairs(runs, variant, base)
    steps = [a["step"] / b["step"] for a, b in pairs]
    fits = [(a["fit"] / b["fit"]) / s for (a, b), s in zip(pairs, steps, strict=True)]
    return statistics.median(fits) - 1.0, statistics.median(steps)


def _rounds(
    variants: list[tuple[str, dict[str, Any]]],
    run: Callable[[int, dict[str, Any]], dict[str, Any]],
    plan: Plan,
    budget: Budget,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """``plan.train_rounds`` rounds of every variant in turn (at least two when the plan has two, the rest while the
    budget lasts), in the listed order in even rounds and reversed in odd ones (ABBA), so a steady drift of the
    machine's speed weighs on every variant alike."""
    runs: list[dict[str, Any]] = []
    for k in range(plan.train_rounds):
        last = sum(r["fit"] for r in runs if r["round"] == k - 1)
        if k >= 2 and budget.remaining() < 1.2 * last:
            log(f"    (stopping after {k} rounds: out of time budget)")
            break
        for label, kwargs in variants if k % 2 == 0 else variants[::-1]:
            result = run(k, kwargs)
            result["label"], result["variant"], result["round"] = f"{label} #{k + 1}", label, k
            runs.append(result)
            log(
                f"    {result['label']:30s} fit {result['fit']:6.2f} s, epochs "
                + ", ".join(f"{e:.2f}" for e in result["epochs"])
                + f", in monitor hooks {sum(result['hooks'].values()):.2f} s, load {load()}"
            )
    return runs


def bench_train(demo: Any, plan: Plan, budget: Budget, log: Callable[[str], None], root: str) -> dict[str, Any]:
    variants = [("without monitors", {"with_monitors": False}), ("with monitors", {"with_monitors": True})]
    runs = _rounds(
        variants,
        lambda k, kw: train_once(demo, plan.train_n, plan.train_epochs, root=os.path.join(root, f"t{k}"), **kw),
        plan,
        budget,
        log,
    )
    for r in runs:
        r["with"] = r["variant"] == "with monitors"
    with_runs = [r for r in runs if r["with"]]
    best_with = min(with_runs, key=lambda r: r["fit"])
    hooks = statistics.median(sum(r["hooks"].values()) for r in with_runs)
    fit_with = statistics.median(r["fit"] for r in with_runs)
    base_bytes = statistics.median(r["bytes"] for r in runs if not r["with"])
    fires = max(1, best_with["fires"])
    per_fire = {}
    for name in best_with["hooks"]:
        per_fire[name] = statistics.median(r["hooks"].get(name, 0.0) for r in with_runs) / fires
    ab, ab_best = _paired(runs, "with monitors", "without monitors")
    normalised, steps = _speed_normalised(runs, "with monitors", "without monitors")
    return {
        "ab_normalised": normalised,
        "step_ratio": steps,
        "n": plan.train_n,
        "epochs": plan.train_epochs,
        "runs": runs,
        "ab": ab,
        "ab_best": ab_best,
        "rounds": len(with_runs),
        "direct": hooks / max(1e-9, fit_with - hooks),
        "per_fire": per_fire,
        "bytes_per_step": (statistics.median(r["bytes"] for r in with_runs) - base_bytes) / fires,
        "image_bytes_per_step": best_with["image_bytes"] / fires,
        "images_per_step": best_with["image_events"] / fires,
    }


def bench_core(demo: Any, plan: Plan, budget: Budget, log: Callable[[str], None], root: str) -> dict[str, Any]:
    """A/B in one process, in rounds: no monitors, and the core monitors every 6 steps (on the GPU too where one is
    present)."""
    variants: list[tuple[str, dict[str, Any]]] = [
        ("without monitors", {"with_monitors": False}),
        ("core monitors", {"with_monitors": True}),
    ]
    if torch.cuda.is_available():  # the model on the GPU (map math on the device)
        variants += [
            ("without monitors, cuda", {"with_monitors": False, "accelerator": "gpu"}),
            ("core monitors, cuda", {"with_monitors": True, "accelerator": "gpu"}),
        ]
    runs = _rounds(
        variants,
        lambda k, kw: train_once(
            demo, plan.train_n, plan.train_epochs, root=os.path.join(root, f"c{k}"), monitors_fn=core_monitors, **kw
        ),
        plan,
        budget,
        log,
    )
    fires = max(1, max(r["fires"] for r in runs))
    with_runs = sync_runs = [r for r in runs if r["variant"] == "core monitors"]
    # where a firing's time goes: one more epoch, drawn on the training thread, profiled inside the monitors' hooks
    profile = cProfile.Profile()
    profiled = train_once(
        demo,
        plan.train_n,
        1,
        True,
        os.path.join(root, "cp"),
        monitors_fn=core_monitors,
        profile=profile,
    )
    per_fire = max(1, profiled["fires"])
    ab, ab_best = _paired(runs, "core monitors", "without monitors")
    normalised, steps = _speed_normalised(runs, "core monitors", "without monitors")
    pieces = {k: v / per_fire for k, v in _piece_times(pstats.Stats(profile), FIRING_PIECES).items()}
    log("    profile per firing (ms): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in pieces.items()))
    return {
        "hooks_per_firing": statistics.median(sum(r["hooks"].values()) for r in sync_runs) / fires,
        "profiled_per_firing": sum(profiled["hooks"].values()) / per_fire,
        "pieces": pieces,
        "between_firings": min(r["fit"] for r in runs if r["variant"] == "without monitors") / fires,
        "n": plan.train_n,
        "epochs": plan.train_epochs,
        "runs": runs,
        "ab_normalised": normalised,
        "step_ratio": steps,
        "ab": ab,
        "ab_best": ab_best,
        "ab_cuda": (
            _paired(runs, "core monitors, cuda", "without monitors, cuda")[0] if torch.cuda.is_available() else None
        ),
        "peak_cuda_mib": max((r["peak_cuda_mib"] or 0.0 for r in runs), default=0.0),
        "rounds": len(sync_runs),
        "fires": fires,
        "image_bytes_per_firing": statistics.median(r["image_bytes"] for r in with_runs) / fires,
        "images_per_firing": statistics.median(r["image_events"] for r in with_runs) / fires,
    }


def targets(ctx: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out = []
    if ctx["default"]:
        ratios = {c: r["rows"]["probelens (one pass)"].ratio for c, r in ctx["default"].items()}
        text = ", ".join(f"{c}: {v:.2f}x" for c, v in ratios.items())
        out.append(
            (
                f"default per-step work <= {TARGET_DEFAULT_FLOOR}x the floor",
                text,
                all(v <= TARGET_DEFAULT_FLOOR for v in ratios.values()),
            )
        )
        speedups = {}
        for c, r in ctx["default"].items():
            rows = r["rows"]
            peer = _best_peer(rows)
            speedups[c] = rows[peer].ratio / rows["probelens (one pass)"].ratio
        text = ", ".join(f"{c}: {v:.2f}x" for c, v in speedups.items())
        out.append(
            (
                f"default per-step work >= {TARGET_PEER_SPEEDUP}x faster than the best peer combination",
                text,
                all(v >= TARGET_PEER_SPEEDUP for v in speedups.values()),
            )
        )
    if ctx["multipass"]:
        worst = []
        ok = True
        for c, methods in ctx["multipass"].items():
            for name, r in methods.items():
                rel = r["ours"].ratio / r["best"].ratio
                ok = ok and rel <= 1.0
                worst.append(f"{c} {name.split(' (')[0]}: {rel:.2f}")
        out.append(
            (
                "multi-pass methods at least as fast as Captum's best hand-tuned setting (probelens / Captum best "
                "<= 1.00, no tuning)",
                "; ".join(worst),
                ok,
            )
        )
    if ctx["render"]:
        ratios = {c: r["total"] / r["compute"] for c, r in ctx["render"].items()}
        text = ", ".join(f"{c}: {v:.2f}x" for c, v in ratios.items())
        out.append(("rendering + logging <= the compute it renders", text, all(v <= 1.0 for v in ratios.values())))
    tr = ctx.get("train")
    if tr:
        text = (
            f"A/B {tr['ab'] * 100:+.1f}% (median of {tr['rounds']} rounds), speed-normalised "
            f"{tr['ab_normalised'] * 100:+.1f}%, direct {tr['direct'] * 100:.1f}%"
        )
        out.append(
            (
                f"default monitors every epoch add < {TARGET_TRAIN_OVERHEAD * 100:.0f}% to the demo's training time",
                text,
                # the plain A/B decides: the speed-normalised one assumes the monitors leave the other steps alone,
                # and the step ratio it shows says they may not
                tr["direct"] < TARGET_TRAIN_OVERHEAD and tr["ab"] < TARGET_TRAIN_OVERHEAD,
            )
        )
    core = ctx.get("core")
    if core:
        text = (
            f"A/B {core['ab'] * 100:+.1f}% (median of {core['rounds']} rounds; speed-normalised "
            f"{core['ab_normalised'] * 100:+.1f}%)"
        )
        out.append(
            (
                f"core monitors every {CORE_EVERY} steps add < {TARGET_CORE_OVERHEAD * 100:.0f}% to the demo CNN's "
                "training time",
                text,
                core["ab"] < TARGET_CORE_OVERHEAD,
            )
        )
    return out


def analysis(ctx: dict[str, Any]) -> list[str]:
    """Free-text findings, filled in from ANALYSIS below (kept with the script so the report is reproducible)."""
    return list(ANALYSIS)


ANALYSIS: list[str] = [
    "Figures from the run of 2026-12-01 19:12 (this file) and, for the spread, the four full runs before it that day",
    "(16:16, 17:54, 18:11, 18:31) and two runs of the training sections alone after it (19:36 `--skip",
    "default,multipass,cam,render,core`, 19:38 the core section alone). Two shared cores in a VM, where a fresh 4 KiB",
    "page costs ~14 us to fault in and the same configuration varies by 10-40% from run to run; within one process",
    "the same fit without monitors took 12.2, 15.8 and 19.1 s in three consecutive rounds at the end of the 18:11",
    "run, so the training sections now run first, in three ABBA rounds, with the median of each round's ratio, and a",
    "speed-normalised A/B beside it (each round's ratio divided by its ratio of median step times). The verdicts use",
    "the plain A/B: the normalised one assumes the monitors leave the steps they do not fire at alone, and in two of",
    "the runs the step ratio was above 1 (below). Each missed target, with its profile:",
    "",
    "- **Core monitors every 6 steps < 15%** (issue 17): missed, +26.0% plain A/B here (median of three rounds),",
    "  +15.7% in the core section run alone at 19:38 (rounds +15.6, +14.0, +20.6%), +22.4% at 18:31; speed-normalised",
    "  +12.1%, +14.5% and +16.0%. Profile: 100-121 ms per firing inside the hooks against 530-630 ms of training",
    "  between two firings, i.e. 17-22% from the firings alone, the steady part of the figure. Of a firing (cProfile,",
    "  cumulative ms above): the shared pass 20, maps 2, colour and blend 5, colormaps 7, grids 20 (10 of it caption",
    "  text), PNG 30, event file 4: 14 pictures, 2.4 MB of PNG from ~15 MB of pixels every 6 steps (Grad-CAM at every",
    "  conv, activations of four stages, 16 images on 128 px cards). Done this round: the map math deferred to the",
    "  drawing and done once (the filmstrip frame reuses its grid's overlays), caption text and tile placement in",
    "  numpy (a line was ~6 torch dispatches), wrapped captions cached, filter grids drawn at their written size (a",
    "  deep layer's grid was drawn 1666 px tall, then downscaled): the firing went from 146 to 119 ms under cProfile",
    "  (-18%). The PNG encoder is at its measured best (ISA-L level 1; levels 0-3 on a Grad-CAM grid: 1.9, 2.2, 2.1,",
    "  5.8 ms, level 0 files 26% larger). The worker thread makes it worse on 2 cores (+34-56%: training keeps both",
    '  cores busy; see "Event-file writer and image worker"). Closing the target on 2 CPU cores takes fewer pixels',
    '  per firing: `GradCAMMonitor(layers="auto")` (one layer per stage), `max_images=8`, or `max_bytes_per_firing=`',
    "  (pictures subsampled until a firing fits). On an accelerator the training thread keeps only the pass and the",
    "  map math (now on the device) and the worker draws: not measured, no GPU was lent.",
    "- **Demo default monitors every epoch < 3%**: missed by the steady measure, 3.3% of the fit inside the monitors'",
    "  hooks (3.4% at 19:36, 3.7% at 18:31): ShortcutMonitor takes 0.14 s of the 0.21 s per firing (four",
    "  counterfactual passes over 32 probe images), the four picture monitors the rest. The plain A/B is no steadier",
    "  than the target: +13.5% here (rounds +13.5, +6.6, +14.6%), +0.1% with the training section alone at 19:36",
    "  (rounds -5.5, +4.9, +0.1%), +9.9% at 18:31; speed-normalised +2.4%, +2.1%, +4.9%. Here and at 18:31 the median",
    "  step without a firing ran 1.04-1.09x as long with the monitors (1.06-1.13x in the core section), in the runs",
    "  of 19:36 and 19:38 0.98x and 1.01x: the machine, not the monitors. Also checked: every hook a monitor",
    "  implements is timed (`on_train_batch_start`, `on_train_end` and `teardown` add 3 ms per fit), and garbage",
    "  collection takes < 0.01 s per fit.",
    "- **Default per-step work <= 1.15x the floor**: met here (1.03-1.15x; 1.03-1.12x at 18:31, 1.07-1.21x at 18:11).",
    "  The excess over the floor (op profile above): the bilinear upsampling of each layer's map to the input size",
    "  (0.9-6.8 ms), the weighted channel sums and gradient means (`bmm`, `sum`: 1-6 ms), and convolution kernels",
    "  that run a few percent slower beside the captured layers' outputs and gradients.",
    "- **>= 2x faster than the best peer combination**: 1.79-2.01x (met on one config of four; 1.87-2.04x at 18:31).",
    "  The best peer mix is hand-fused from two libraries (torchcam for all layers + Captum `Saliency`: 2 forwards",
    "  and 2 backwards, 1.9-2.1x the floor); being 2x faster than that needs <= 0.96-1.06x the floor, the maps for",
    "  free on top of the one forward+backward any method needs: not reachable by construction. Against each library",
    "  in its best form on its own, probelens is 3.0-3.5x faster (Captum multi-layer, torchcam and pytorch-grad-cam",
    "  all layers: 3.4-4.2x the floor).",
    "- **Multi-pass methods <= Captum's best hand-tuned setting**: 0.69-1.15 (1.00 = equal; 0.92-1.13 at 18:31,",
    "  0.85-1.17 at 16:16). The op profiles above: the excess is in the same convolution, pooling and batch-norm",
    "  kernels (same FLOPs) run at probelens' chunk size, tuned by one timing per candidate on its first call,",
    "  against the best of Captum's sweep picked after the fact; ops only probelens runs (`aten::index` gathering",
    "  each copy's image, in-place `normal_` noise) are under 2% of a call. A tuning that times each candidate more",
    "  than once would cost the first firing more; not done.",
    "- **Rendering + logging <= the compute it renders**: missed, 1.3-4.2x. The same volume as above: on the demo CNN",
    "  the shared pass over 8 images takes 14 ms and its pictures 57 ms, PNG the largest piece (20 ms); the event",
    "  writer is no longer a cost (4 ms: own event file, C CRC-32C).",
    "- **GPU**: not measured (no device was lent to this task). The CUDA path of the map math is tested where a GPU",
    "  is present (tests/writing/test_transfer.py, tests/callbacks/test_image_pipeline.py) and skipped here; where",
    "  CUDA is present the core-monitor section also trains on the GPU.",
]


if __name__ == "__main__":
    sys.exit(main())
