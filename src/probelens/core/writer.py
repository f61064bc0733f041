"""What a monitor writes, and how it is named: tags, downscaling, captions and the probe-image layout of a grid.

A :class:`MonitorWriter` belongs to one monitor. It is given the run's sink (:mod:`probelens.core.sinks`) when the
monitor is configured for a Trainer, and the stage at every firing; the monitor's ``_log`` writes through it only:
:meth:`~MonitorWriter.draw` (a picture), :meth:`~MonitorWriter.text`, :meth:`~MonitorWriter.scalars`, and
:meth:`~MonitorWriter.captions` for the per-image captions whose facts (true label, prediction, probability) are
also recorded in the grid's PNG. :meth:`~MonitorWriter.held` keeps a firing's writes back until they are known to
be wanted (sharded firings, where every rank must first agree that the step succeeded).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor

from probelens.core.run import DrawFailed
from probelens.core.sinks import ImageSink, write_image
from probelens.methods.engine import ProbePass
from probelens.probe import ProbeSet
from probelens.render import Cell, ProbeCells, colormap_lut
from probelens.writing.transfer import T, map_math

Box = tuple[int, int, int, int]
Render = Callable[[], "Tensor | tuple[Tensor, Sequence[Box]] | tuple[Tensor, Sequence[Box], Sequence[Box]] | None"]
"""What a monitor's picture callable returns: the image; or the image and its grid's cell boxes; or those and each
cell's map box (the tile alone, without its caption: :data:`probelens.logformat.MAPS_KEY`); ``None`` for nothing."""
"""Draws one picture from what it closed over: the image, or the image and its grid's cell boxes (``None``: none)."""


def scale_cell(cell: Cell, sy: float, sx: float, size: tuple[int, int]) -> Cell:
    """``cell``'s box on an image resized by ``(sy, sx)`` to ``size``: the covering pixel box, at least 1 px."""
    k, x0, y0, x1, y1 = cell
    left, top = min(int(x0 * sx), size[1] - 1), min(int(y0 * sy), size[0] - 1)
    right = max(left + 1, min(size[1], math.ceil(x1 * sx)))
    bottom = max(top + 1, min(size[0], math.ceil(y1 * sy)))
    return Cell(k, left, top, right, bottom)


def downscale(image: Tensor, max_side: int | None, mode: str = "area") -> tuple[Tensor, float, float]:
    """``image`` (uint8 ``[C,H,W]``) resized (``mode``: ``"area"``, or ``"nearest-exact"``, which keeps flat
    blocks flat) so its longer side is at most ``max_side``, and the scale factors ``(sy, sx)`` (``1.0`` when it
    already fits or ``max_side`` is ``None``)."""
    height, width = image.shape[-2:]
    side = max(height, width)
    if max_side is None or side <= max_side:
        return image, 1.0, 1.0
    size = (max(1, int(height * max_side / side)), max(1, int(width * max_side / side)))
    small = torch.nn.functional.interpolate(image[None].float(), size=size, mode=mode)[0]
    return small.round().clamp(0, 255).to(torch.uint8), size[0] / height, size[1] / width


def _natural(text: str) -> list[Any]:
    """TensorBoard's tag order: digit runs compare as numbers (``model.4`` before ``model.10``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


_NOT_IN_TAGS = re.compile(r"[^A-Za-z0-9_.-]+")


def tag_segment(name: str, fallback: str) -> str:
    """``name`` (a class, group or concept name) as one tag segment: runs of other characters than letters, digits,
    ``_``, ``.`` and ``-`` become ``_``; ``fallback`` where nothing is left.

    Example:
        >>> tag_segment("snow leopard/arabian", "0"), tag_segment("???", "0")
        ('snow_leopard_arabian', '0')
    """
    return _NOT_IN_TAGS.sub("_", name).strip("_") or fallback


def layer_labels(layers: Sequence[str]) -> dict[str, str]:
    """The tag segment of each layer (``layers`` in depth order): its name where TensorBoard's natural sort of the
    names is the depth order, else the name after its zero-padded depth (``00_net.0.2``, ``01_net.0.10``,
    ``02_net.0``), so the cards of one method sort by depth either way."""
    names = list(layers)
    if sorted(names, key=_natural) == names:
        return {name: name for name in names}
    width = max(2, len(str(len(names) - 1)))
    return {name: f"{i:0{width}d}_{name}" for i, name in enumerate(names)}


class HeldWrites:
    """A firing's writes kept back, in order, until :meth:`release` hands them to the real sink."""

    def __init__(self, sink: ImageSink) -> None:
        self._sink = sink
        self._writes: list[tuple[str, tuple[Any, ...]]] = []

    def add_image(self, tag: str, image: Tensor, step: int, cells: Sequence[Cell] = ()) -> None:
        self._writes.append(("image", (tag, image, step, cells)))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._writes.append(("text", (tag, text, step)))

    def release(self) -> None:
        """Write everything held to the real sink (texts and images in the order they came)."""
        for kind, args in self._writes:
            if kind == "text":
                self._sink.add_text(*args)
            else:
                write_image(self._sink, *args)
        self._writes = []


class MonitorWriter:
    """Names and writes one monitor's pictures, text and scalars (see the module docstring).

    Args:
        name: the monitor's name.
        named: whether ``name`` was given by the user; then it enters every tag after its first segment
            (``probelens/<name>/gradcam/...``), so two monitors of one class write apart.
        max_image_side: longer side (pixels) above which images are downscaled before they are written.
    """

    def __init__(
        self, name: str, named: bool, max_image_side: int | None, max_bytes_per_firing: int | None = None
    ) -> None:
        self.name = name
        self.named = named
        self.max_image_side = max_image_side
        self.max_bytes_per_firing = max_bytes_per_firing
        self.scale = 1.0
        """The side of every picture relative to its drawn size: below 1 while the byte budget needs it."""
        self._written_step, self._written = -1, 0
        self._measured = (-1, 0)  # (step, PNG bytes) of the last firing whose pictures are all written
        self._scale_since = 0  # the first step drawn at the current scale
        self.sink: ImageSink | None = None
        self.probe: ProbeSet | None = None
        self.stage = "fit"
        self._failed_loggers: set[int] = set()  # ids of the loggers whose scalar failure was reported
        self._facts: dict[int, tuple[str, str, float]] = {}  # probe index -> (true, predicted, probability)
        self.pipeline: Any = None
        """The run's :class:`~probelens.writing.pipeline.ImagePipeline`, or ``None``: draw on the calling thread."""
        self.on_failure: Callable[[int, str, Exception], None] | None = None
        """Told ``(step, what, error)`` when a picture drawn on the pipeline's worker fails."""
        self.map_math_now: bool | None = None
        """Where :meth:`map_math` runs: ``None`` at once exactly on an accelerator, ``True``/``False`` always/never."""

    def attach(self, sink: ImageSink, probe: ProbeSet | None) -> None:
        """Write to ``sink`` from now on, about ``probe``'s images."""
        self.sink, self.probe = sink, probe
        self._failed_loggers.clear()  # a logger's scalar failure is reported once per run

    def begin(self, stage: str, step: int = -1) -> None:
        """A firing at ``step`` starts in ``stage``: its captions only (never a prediction of an earlier step). With
        a byte budget, the pictures' side follows the bytes of the last firing measured at the current size: the
        largest power of two (1 to 1/8) at most ``scale * sqrt(budget / bytes)`` (PNG bytes grow with the area)."""
        self.stage = stage
        self._facts = {}
        budget, (measured_step, last) = self.max_bytes_per_firing, self._measured
        if budget is not None and last > 0 and measured_step >= self._scale_since:
            # halve or double the side, so a steady budget settles on one size rather than flickering between two
            wanted = self.scale * math.sqrt(budget / last)
            scale = min(1.0, max(0.125, 2.0 ** math.floor(math.log2(wanted) + 1e-9)))
            if scale != self.scale:
                self.scale, self._scale_since = scale, max(step, measured_step + 1)

    def tag(self, tag: str, named: bool = True) -> str:
        """``tag`` as written: the monitor's name after the first segment when the user named it (and ``named``),
        and the stage first under ``validate``/``test`` (``validate/probelens/gradcam/...``)."""
        if named and self.named:
            head, _, rest = tag.partition("/")
            tag = f"{head}/{self.name}/{rest}" if rest else f"{head}/{self.name}"
        return tag if self.stage == "fit" else f"{self.stage}/{tag}"

    def captions(self, result: ProbePass, shown: Tensor, target_set: str | None = None) -> list[str]:
        """Per shown probe image: its index, true label, prediction and probability (``target_set="label"`` adds
        the class the map is for). The facts are recorded in the PNG of the grid that shows those images."""
        probe = self.probe
        assert probe is not None
        probs, preds = result.probabilities, result.predictions
        captions = []
        for i in (int(j) for j in shown):
            true, pred = probe.class_name(int(probe.targets[i])), int(preds[i])
            self._facts[i] = (true, probe.class_name(pred), float(probs[i, pred]))
            line = f"#{i} true: {true}\npred: {probe.class_name(pred)} {float(probs[i, pred]):.2f}"
            if target_set == "label":
                line += f"\nmap for: {probe.class_name(int(result.targets['label'][i]))}"
            captions.append(line)
        return captions

    def map_math(self, math: Callable[[], T], device: torch.device) -> Callable[[], T]:
        """``math`` (normalise, colour, blend, upsample maps that are on ``device``) run now on an accelerator, its
        uint8 result copied to the host without blocking, else deferred to whoever draws; call the result inside a
        :meth:`draw`'s render for the host tensors (computed once, however often it is called).
        See :mod:`probelens.writing.transfer`."""
        return map_math(math, device, now=self.map_math_now)

    def draw(
        self,
        tag: str,
        step: int,
        render: Render,
        *,
        per_probe: int = 1,
        shown: Tensor | None = None,
        nbytes: int = 0,
        colour_scale: Mapping[str, object] | None = None,
    ) -> None:
        """Writes the picture ``render()`` returns at ``tag`` and ``step``: a uint8 ``[C,H,W]`` image, or the image and
        its grid's cell boxes (``per_probe`` consecutive boxes per probe image, the images ``shown``, by default
        probe images 0, 1, ...), which become the PNG's probe-image layout (:data:`probelens.render.CELLS_KEY`), and
        optionally each cell's map box (:data:`probelens.logformat.MAPS_KEY`). ``colour_scale``: the colour scale the
        maps were drawn with, recorded as :data:`probelens.logformat.SCALE_KEY` (see :func:`colour_scale`).

        With an image pipeline attached, ``render`` runs later on its worker thread, in submission order (so steps
        stay ordered), and a failure there is reported to :attr:`on_failure`; without one (and inside
        :meth:`held`) it runs now. Either way ``render`` must read only what it closed over: CPU tensors that the
        training thread no longer changes (the tag, the captions' facts and the probe's fingerprint are taken now).
        ``nbytes``: what those tensors hold, counted against the pipeline's memory bound (back-pressure).
        """
        full, sink, facts, scale = self.tag(tag), self.sink, dict(self._facts), self.scale
        assert sink is not None, "the writer is attached when the monitor is configured"
        fingerprint = self.probe.fingerprint() if self.probe is not None else None

        def job() -> None:
            out = render()
            if out is None:  # the render kept history only (e.g. a filmstrip frame), nothing to write this step
                return
            image, boxes, map_boxes = (out, (), ()) if isinstance(out, Tensor) else (*out, ())[:3]
            index = list(range(len(boxes))) if shown is None else [int(i) for i in shown]
            cells = [Cell(index[j // per_probe], *box) for j, box in enumerate(boxes)]
            maps = [Cell(index[j // per_probe], *box) for j, box in enumerate(map_boxes)]
            image, sy, sx = downscale(image, self.max_image_side)
            if scale < 1.0:  # the byte budget: subsampled, so the flat blocks of upscaled tiles stay flat
                image, by, bx = downscale(image, max(16, int(max(image.shape[-2:]) * scale)), "nearest-exact")
                sy, sx = sy * by, sx * bx
            if (sy, sx) != (1.0, 1.0):
                size = (image.shape[-2], image.shape[-1])
                cells = [scale_cell(cell, sy, sx, size) for cell in cells]
                maps = [scale_cell(cell, sy, sx, size) for cell in maps]
            predictions = [(k, *facts[k]) for k in dict.fromkeys(c[0] for c in cells) if k in facts]
            recorded = ProbeCells(cells, fingerprint if cells else None, predictions, maps=maps, scale=colour_scale)
            written = write_image(sink, full, image, step, recorded)
            self._count(step, written or 0)

        self.submit(job, step, f"drawing {full}", nbytes)

    def text(self, tag: str, text: str, step: int) -> None:
        """Writes a text entry (markdown) at ``tag`` and ``step`` (in order with the pictures)."""
        full, sink = self.tag(tag), self.sink
        assert sink is not None, "the writer is attached when the monitor is configured"
        self.submit(lambda: sink.add_text(full, text, step), step, f"writing {full}")

    def submit(
        self,
        job: Callable[[], None],
        step: int,
        what: str,
        nbytes: int = 0,
        report: Callable[[int, str, Exception], None] | None = None,
    ) -> None:
        """Run ``job`` (a write) on the pipeline's worker, after what was handed over before it (now, without one).
        A failure there is told to ``report`` (default :attr:`on_failure`) as ``(step, what, error)``."""
        pipeline = self.pipeline
        if pipeline is None or isinstance(self.sink, HeldWrites):
            job()  # a failure propagates: the firing counts it
            return
        report = report or self.on_failure

        def reported() -> None:
            try:
                job()
            except Exception as err:  # told on the training thread (the pipeline's on_error)
                raise DrawFailed(report, step, what, err) from err

        pipeline.submit(reported, nbytes=nbytes, name=what)

    def _count(self, step: int, nbytes: int) -> None:
        """Adds a picture's bytes to its firing's total (on the worker); a new step closes the last one's."""
        if step != self._written_step:
            if self._written_step >= 0:
                self._measured = (self._written_step, self._written)
            self._written_step, self._written = step, 0
        self._written += nbytes
        if self.max_bytes_per_firing is not None and self._written > self.max_bytes_per_firing:
            self._measured = (step, self._written)  # over budget already: the next firing need not wait

    def flush(self) -> None:
        """Wait until everything handed to the pipeline is written (no-op without one)."""
        if self.pipeline is not None:
            self.pipeline.flush()

    def scalars(self, loggers: Sequence[Any], metrics: dict[str, float], step: int, named: bool = True) -> None:
        """Logs ``metrics`` to each of the trainer's ``loggers`` (scalars go to every logger, CSV included)."""
        tagged = {self.tag(key, named): value for key, value in metrics.items()}
        for logger in loggers:
            try:
                logger.log_metrics(tagged, step=step)
            except Exception as err:  # a full disk, a broken logger: the scalars are lost, never the training run
                if id(logger) not in self._failed_loggers:
                    self._failed_loggers.add(id(logger))
                    rank_zero_warn(
                        f"probelens: {type(logger).__name__}.log_metrics failed while {self.name} wrote "
                        f"{sorted(tagged)} at step {step} ({type(err).__name__}: {err}); training goes on, and "
                        "further scalar failures of this logger are not reported."
                    )

    @contextlib.contextmanager
    def held(self) -> Iterator[HeldWrites]:
        """Inside the block, writes are kept in the :class:`HeldWrites` it yields; call its ``release()`` after the
        block to write them, or drop it to write nothing."""
        assert self.sink is not None, "the writer is attached when the monitor is configured"
        sink = self.sink
        held = HeldWrites(sink)
        self.sink = held
        try:
            yield held
        finally:
            self.sink = sink


def colour_scale(
    cmap: str, vmax: float | None = None, *, vmin: float = 0.0, symmetric: bool = False
) -> dict[str, object]:
    """The colour scale of maps drawn with colormap ``cmap``, as :data:`probelens.logformat.SCALE_KEY` records it:
    ``"fixed"`` from ``vmin`` to ``vmax`` when one top holds for every image (``fixed_scale=True``), else
    ``"per_image"`` (each map normalised to its own range; ``symmetric``: around zero); ``stops``: the colormap
    sampled evenly, 32 colours, low to high.

    Example:
        >>> scale = colour_scale("jet", 2.5)
        >>> scale["mode"], scale["vmax"], len(scale["stops"]), scale["stops"][0]
        ('fixed', 2.5, 32, '#000080')
    """
    lut = colormap_lut(cmap)  # [256, 3] uint8
    stops = [f"#{int(r):02x}{int(g):02x}{int(b):02x}" for r, g, b in lut[:: max(1, len(lut) // 32)][:32].tolist()]
    if vmax is None:
        return {"colormap": cmap, "mode": "per_image", "symmetric": symmetric, "stops": stops}
    return {"colormap": cmap, "mode": "fixed", "vmin": float(vmin), "vmax": float(vmax), "stops": stops}
