"""What a monitor writes, as values, and the one stage that writes them: tags, downscaling, the byte budget, sinks.

A monitor's :meth:`~probelens.core.base.MonitorCore.explain` computes its pictures and hands them over as records:
:class:`Picture` (the tag, the uint8 pixels, which probe image each grid cell shows and what its caption says, the
map boxes and colour scale), :class:`Text` and :class:`Scalars`. A :class:`MonitorWriter` belongs to one monitor and
is the only thing that writes: during a firing it keeps the firing's records (:meth:`~MonitorWriter.open`) until the
firing is known to have succeeded (:meth:`~MonitorWriter.commit`; every rank agreed, under FSDP) or drops them
(:meth:`~MonitorWriter.discard`), so a failed firing writes nothing. Committing names each tag (the monitor's name,
the stage), downscales to ``max_image_side`` and the byte budget, records the grid's facts in the PNG
(:class:`probelens.logformat.GridFacts`) and hands it to the run's sink, on the training thread; an error propagates
to the firing, which counts it. Outside a firing (the layer table) a record is written at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor

from probelens.core.sinks import ImageSink
from probelens.methods.engine import ProbePass
from probelens.probe import ProbeSet
from probelens.render import Cell, GridFacts, colormap_lut, labelled_grid

Box = tuple[int, int, int, int]
Fact = tuple[str, str, float]
"""``(true label, predicted label, probability of the prediction)`` of one probe image, as its caption says."""


@dataclass(frozen=True)
class Captions:
    """The captions of a grid's probe images (``texts``, in the order shown) and the facts they state (``facts``:
    probe index -> :data:`Fact`), which the grid's PNG records (:func:`probe_captions`)."""

    texts: list[str]
    facts: dict[int, Fact]


@dataclass(frozen=True)
class Picture:
    """One picture a monitor hands to its writer.

    Attributes:
        tag: the tag, before the writer adds the monitor's name and the stage (``probelens/gradcam/model.4``).
        step: the training step it belongs to.
        image: uint8 ``[C,H,W]`` (C = 1 or 3) on the host.
        cells: for a grid of probe images, each cell's probe index and box (:class:`probelens.logformat.Cell`).
        maps: each cell's map alone, without its caption (same format; empty: the viewer shows the whole cell).
        facts: what the captions state per probe index (recorded for the probe images the cells show).
        scale: the colour scale the maps were drawn with (:func:`colour_scale`), ``None`` for none.
    """

    tag: str
    step: int
    image: Tensor
    cells: tuple[Cell, ...] = ()
    maps: tuple[Cell, ...] = ()
    facts: Mapping[int, Fact] = field(default_factory=dict)
    scale: Mapping[str, object] | None = None

    @classmethod
    def grid(
        cls,
        tag: str,
        step: int,
        image: Tensor,
        boxes: Sequence[Box],
        *,
        shown: Tensor | Sequence[int] | None = None,
        per_probe: int = 1,
        map_boxes: Sequence[Box] = (),
        captions: Captions | None = None,
        scale: Mapping[str, object] | None = None,
    ) -> Picture:
        """A grid whose ``boxes`` (and ``map_boxes``) come ``per_probe`` to a probe image, for the probe images
        ``shown`` in order (default ``0, 1, ...``); ``captions``: what its captions say."""
        index = list(range(len(boxes))) if shown is None else [int(i) for i in shown]
        if len(boxes) > per_probe * len(index):
            raise ValueError(f"{tag}: {len(boxes)} cell boxes for {len(index)} probe images x {per_probe} per image")
        cells = tuple(Cell(index[j // per_probe], *box) for j, box in enumerate(boxes))
        maps = tuple(Cell(index[j // per_probe], *box) for j, box in enumerate(map_boxes))
        facts = captions.facts if captions is not None else {}
        return cls(tag, step, image, cells, maps, facts, scale)


@dataclass(frozen=True)
class Text:
    """A text entry (markdown) at ``tag`` and ``step``; ``exact``: the tag as it is (no name, no stage prefix)."""

    tag: str
    step: int
    text: str
    exact: bool = False


@dataclass(frozen=True)
class Scalars:
    """Scalars for every logger at ``step``; ``named``: the monitor's name enters the tags (as for pictures)."""

    metrics: Mapping[str, float]
    step: int
    named: bool = True
    loggers: Sequence[Any] = ()


Record = Picture | Text | Scalars


def captioned_grid(
    tag: str,
    step: int,
    tiles: Tensor,
    captions: Captions,
    *,
    shown: Tensor | Sequence[int],
    texts: Sequence[str] | None = None,
    per_probe: int = 1,
    ncol: int | None = None,
    scale: Mapping[str, object] | None = None,
) -> Picture:
    """The :func:`probelens.render.labelled_grid` of ``tiles`` (uint8 ``[k * per_probe, 3, h, w]``, on any device: drawn
    on the host), ``per_probe`` consecutive tiles per probe image ``shown``, captioned by ``texts`` (default
    ``captions.texts``), as a :class:`Picture` with its cell and map boxes."""
    boxes: list[Box] = []
    map_boxes: list[Box] = []
    words = captions.texts if texts is None else list(texts)
    image = labelled_grid(tiles.cpu(), words, ncol=ncol, cell_boxes=boxes, map_boxes=map_boxes)
    return Picture.grid(
        tag, step, image, boxes, shown=shown, per_probe=per_probe, map_boxes=map_boxes, captions=captions, scale=scale
    )


def probe_captions(
    probe: ProbeSet, result: ProbePass, shown: Tensor | Sequence[int], target_set: str | None = None
) -> Captions:
    """Per shown probe image: its index, true label, prediction and probability (``target_set="label"`` adds the class
    the map is for), and those facts for the grid's PNG."""
    probs, preds = result.probabilities, result.predictions
    texts: list[str] = []
    facts: dict[int, Fact] = {}
    for i in (int(j) for j in shown):
        true, pred = probe.class_name(int(probe.targets[i])), int(preds[i])
        facts[i] = (true, probe.class_name(pred), float(probs[i, pred]))
        line = f"#{i} true: {true}\npred: {probe.class_name(pred)} {float(probs[i, pred]):.2f}"
        if target_set == "label":
            line += f"\nmap for: {probe.class_name(int(result.targets['label'][i]))}"
        texts.append(line)
    return Captions(texts, facts)


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


def layer_labels(layers: Sequence[str]) -> dict[str, str]:
    """The tag segment of each layer (``layers`` in depth order): its name where TensorBoard's natural sort of the
    names is the depth order, else the name after its zero-padded depth (``00_net.0.2``, ``01_net.0.10``,
    ``02_net.0``), so the cards of one method sort by depth either way."""
    names = list(layers)
    if sorted(names, key=_natural) == names:
        return {name: name for name in names}
    width = max(2, len(str(len(names) - 1)))
    return {name: f"{i:0{width}d}_{name}" for i, name in enumerate(names)}


class MonitorWriter:
    """Names and writes one monitor's records (see the module docstring).

    Args:
        name: the monitor's name.
        named: whether ``name`` was given by the user; then it enters every tag after its first segment
            (``probelens/<name>/gradcam/...``), so two monitors of one class write apart.
        max_image_side: longer side (pixels) above which images are downscaled before they are written.
        max_bytes_per_firing: the PNG bytes one firing may write (``None``: no budget; see :meth:`begin`).
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
        self._measured = (-1, 0)  # (step, PNG bytes) of the last firing written
        self._scale_since = 0  # the first step drawn at the current scale
        self.sink: ImageSink | None = None
        self.probe: ProbeSet | None = None
        self.loggers: Sequence[Any] = ()
        self.stage = "fit"
        self._pending: list[Record] | None = None  # the open firing's records (None: write at once)
        self._failed_loggers: set[int] = set()  # ids of the loggers whose scalar failure was reported

    def attach(self, sink: ImageSink, probe: ProbeSet | None, loggers: Sequence[Any] = ()) -> None:
        """Write pictures to ``sink`` and scalars to ``loggers`` from now on, about ``probe``'s images."""
        self.sink, self.probe, self.loggers = sink, probe, list(loggers)
        self._failed_loggers.clear()  # a logger's scalar failure is reported once per run

    def begin(self, stage: str, step: int = -1) -> None:
        """A firing at ``step`` starts in ``stage``. With a byte budget, the pictures' side follows the bytes of the
        last firing measured at the current size: the largest power of two (1 to 1/8) at most
        ``scale * sqrt(budget / bytes)`` (PNG bytes grow with the area)."""
        self.stage = stage
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

    # ------------------------------------------------------------------ records in
    def picture(self, picture: Picture) -> None:
        """Write ``picture`` (when the open firing commits)."""
        self._add(picture)

    def text(self, tag: str, text: str, step: int, exact: bool = False) -> None:
        """Write a text entry (markdown) at ``tag`` and ``step``, in order with the pictures (``exact``: at ``tag``
        itself, without the monitor's name or the stage: a run-wide entry such as the layer table)."""
        self._add(Text(tag, step, text, exact))

    def scalars(self, metrics: Mapping[str, float], step: int, named: bool = True) -> None:
        """Log ``metrics`` to every attached logger (scalars go to every logger, CSV included)."""
        self._add(Scalars(dict(metrics), step, named, self.loggers))

    def _add(self, record: Record) -> None:
        if self._pending is not None:
            self._pending.append(record)
        else:
            self._write([record])

    # ------------------------------------------------------------------ a firing
    def open(self) -> None:
        """Keep what is written from now on until :meth:`commit` (or :meth:`discard`)."""
        self._pending = []

    def commit(self) -> int:
        """Write the open firing's records in order; returns the PNG bytes written. An error propagates (the firing
        counts it); the records are dropped either way."""
        records, self._pending = self._pending or [], None
        return self._write(records)

    def discard(self) -> None:
        """Drop the open firing's records: a failed firing writes nothing."""
        self._pending = None

    # ------------------------------------------------------------------ the writing stage
    def _write(self, records: Sequence[Record]) -> int:
        written, step = 0, -1
        for record in records:
            if isinstance(record, Scalars):
                self._log_scalars(record)
                continue
            assert self.sink is not None, "the writer is attached when the monitor is configured"
            if isinstance(record, Text):
                self.sink.add_text(record.tag if record.exact else self.tag(record.tag), record.text, record.step)
                continue
            step = record.step
            image, facts = self._prepare(record)
            nbytes = self.sink.add_image(self.tag(record.tag), image, record.step, facts)
            written += nbytes if isinstance(nbytes, int) and not isinstance(nbytes, bool) else 0
        if step >= 0:
            self._measured = (step, written)
        return written

    def _prepare(self, picture: Picture) -> tuple[Tensor, GridFacts]:
        """``picture``'s pixels at the size they are written (``max_image_side``, the byte budget) and its facts with
        the boxes scaled to match."""
        image, sy, sx = downscale(picture.image, self.max_image_side)
        if self.scale < 1.0:  # the byte budget: subsampled, so the flat blocks of upscaled tiles stay flat
            image, by, bx = downscale(image, max(16, int(max(image.shape[-2:]) * self.scale)), "nearest-exact")
            sy, sx = sy * by, sx * bx
        cells, maps = picture.cells, picture.maps
        if (sy, sx) != (1.0, 1.0):
            size = (image.shape[-2], image.shape[-1])
            cells = tuple(scale_cell(cell, sy, sx, size) for cell in cells)
            maps = tuple(scale_cell(cell, sy, sx, size) for cell in maps)
        if not cells:
            return image, GridFacts()
        shown = dict.fromkeys(cell.probe_index for cell in cells)
        predictions = tuple((k, *picture.facts[k]) for k in shown if k in picture.facts)
        probe = self.probe.fingerprint() if self.probe is not None else None
        return image, GridFacts(cells, probe, predictions, maps, picture.scale)

    def _log_scalars(self, record: Scalars) -> None:
        tagged = {self.tag(key, record.named): value for key, value in record.metrics.items()}
        for logger in record.loggers:
            try:
                logger.log_metrics(tagged, step=record.step)
            except Exception as err:  # a full disk, a broken logger: the scalars are lost, never the training run
                if id(logger) not in self._failed_loggers:
                    self._failed_loggers.add(id(logger))
                    rank_zero_warn(
                        f"probelens: {type(logger).__name__}.log_metrics failed while {self.name} wrote "
                        f"{sorted(tagged)} at step {record.step} ({type(err).__name__}: {err}); training goes on, and "
                        "further scalar failures of this logger are not reported."
                    )


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
