"""PNG encoding and caption drawing of the pictures probelens writes.

Run ``python benchmarks/render_bench.py`` (about half a minute on 2 CPU cores); it prints Markdown tables for
``benchmarks/RESULTS.md``: ``encode_png`` (Pillow at level 1) against Pillow at its other levels, and the text
stamper (lines rasterised once by ``ImageDraw``, cached, stamped onto the tensor grid) against drawing every caption
with ``ImageDraw`` onto a PIL copy of the grid. Pass ``--against REV`` to add the ``encode_png`` of another revision
(e.g. the hand-written encoder of ``af73a73``) as a column. The pictures are built the way the monitors build them,
from a seeded tiny CNN on the snow-vs-desert data:

- Grad-CAM overlay grids of 16 probe images at 64 px and at 224 px (captioned, as ``GradCAMMonitor`` logs them);
- a sparse saliency grid (vanilla gradients colour-mapped without the image, as ``SaliencyMonitor(overlay=False)``);
- a filter grid of a 64 x 32 x 3 x 3 conv weight (as ``FilterMonitor``).

Each encoder's time is the best of ``--repeats`` runs per picture (the pictures are small enough that the best run is
the steady state). Pillow is called as probelens would call it: ``Image.save(format="PNG", compress_level=k,
optimize=False, pnginfo=...)`` with the grid's text chunks.

``--layout-against REV`` measures what a firing costs with the grids of ``REV`` (``src/probelens/render/grid.py`` of
that revision, loaded beside the current one and handed to the monitors in place of the current functions) against
the current grids, in one process:

- per firing of the stress benchmark's core monitors (``FilterMonitor``, ``ActivationMonitor(layers="auto")``,
  ``GradCAMMonitor(layers="all")``, ``SaliencyMonitor(vanilla, gradient x input)``, a 16-image 64 px probe of the
  demo, pictures drawn on the calling thread and written to a real TensorBoard event file): milliseconds (median of
  ``--firings`` firings per layout, the layouts alternating firing by firing), pixels, PNG bytes and pictures, each
  picture's size, and a cProfile of where a firing's time goes (the shared pass, map math, grids, caption text, PNG
  encoding, the event-file write);
- with ``--fit-rounds K``, the stress benchmark itself: the demo CNN trained for 2 epochs on 4000 images without
  monitors and with the core monitors every 6 steps drawn with each layout, in ``K`` rounds (ABBA order), the
  median of each round's fit-time ratio (as ``benchmarks/bench.py`` reports it);
- with ``--recommended``, a third variant: the current grids with the monitor defaults proposed in ``RECOMMENDED``
  given as options (what the firing would cost were they the defaults).

    python benchmarks/render_bench.py --layout-against 78adcf8 --layout-only --recommended --fit-rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import importlib.util
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import Tensor, nn

from probelens.data import generate_snow_desert
from probelens.logformat import NO_FACTS, GridFacts
from probelens.methods import grad_cam, saliency
from probelens.render import (
    apply_colormap,
    cells_to_text,
    filter_grid,
    labelled_grid,
    normalize_maps,
    overlay_heatmap,
    saliency_to_heat,
    to_display_images,
)
from probelens.render.image import encode_png
from probelens.render.text import card_font_size, fit_text, line_height, stamp_lines

ROOT = Path(__file__).resolve().parents[1]


def _model() -> nn.Module:
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1)
    )
    return nn.Sequential(features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2)).eval()


def pictures() -> dict[str, tuple[Tensor, dict[str, str]]]:
    """The benchmark's pictures: name -> (uint8 ``[3, H, W]``, the text chunks the monitor would attach)."""
    model = _model()
    out: dict[str, tuple[Tensor, dict[str, str]]] = {}
    for size in (64, 224):
        data = generate_snow_desert(16, size=size, seed=0)
        targets = data.labels
        cams = grad_cam(model, data.images, targets, layers=["0.3"])["0.3"]
        tiles = overlay_heatmap(to_display_images(data.images), normalize_maps(cams), 0.5, "jet")
        captions = [f"#{i} true: {'snow' if t else 'arabian'} | pred: snow 0.{50 + i}" for i, t in enumerate(targets)]
        boxes: list[tuple[int, int, int, int]] = []
        grid = labelled_grid(tiles, captions, cell_boxes=boxes)
        cells = [(i, *box) for i, box in enumerate(boxes)]
        out[f"Grad-CAM overlay grid, 16 x {size} px"] = (grid, cells_to_text(cells))
        if size == 224:
            sal = saliency(model, data.images, targets, method="vanilla")
            heat = apply_colormap(normalize_maps(saliency_to_heat(sal)), "gray")
            boxes = []
            grid = labelled_grid(heat, captions, cell_boxes=boxes)
            out["sparse saliency grid, 16 x 224 px"] = (grid, cells_to_text([(i, *b) for i, b in enumerate(boxes)]))
    weight = nn.Conv2d(32, 64, 3).weight.detach()
    out["filter grid, 64 x 32 x 3 x 3"] = (filter_grid(weight), {})
    return out


def pillow_png(level: int) -> Callable[[Tensor, dict[str, str]], bytes]:
    def encode(image: Tensor, text: dict[str, str]) -> bytes:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(
            buf, format="PNG", compress_level=level, optimize=False, pnginfo=info
        )
        return buf.getvalue()

    return encode


def probelens_png(image: Tensor, text: dict[str, str]) -> bytes:
    return encode_png(image, compress_level=1, text=text)


def encoder_at(rev: str) -> Callable[[Tensor, dict[str, str]], bytes]:
    """``probelens.render.image.encode_png`` as it was at git revision ``rev`` (loaded beside the current one)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/probelens/render/image.py"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    path = Path(tempfile.mkdtemp()) / "image_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("probelens.render._image_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return lambda image, text: module.encode_png(image, compress_level=1, text=text)


def _stamp_copy(canvas: Tensor, blocks: list, font: Any) -> None:
    stamp_lines(canvas.clone(), blocks, font, (0, 0, 0))


def _draw_copy(canvas: Tensor, blocks: list, font: Any) -> None:
    from PIL import ImageDraw

    image = Image.fromarray(np.ascontiguousarray(canvas.permute(1, 2, 0).numpy()))
    draw = ImageDraw.Draw(image)
    for x, y, _, lines in blocks:
        for k, line in enumerate(lines):
            draw.text((x, y + k * line_height(font)), line, fill=(0, 0, 0), font=font)
    torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())


def caption_drawing(repeats: int) -> None:
    """The text of captioned grids: the stamper against ``ImageDraw.text`` of every line on a PIL copy of the grid
    (the same lines, fonts and places; the caches warm, as at the second and later log steps)."""
    g = torch.Generator().manual_seed(0)
    cases: dict[str, tuple[Tensor, list[str], int]] = {}
    for size in (64, 224):
        tiles = torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8, generator=g)
        cases[f"Grad-CAM grid, 16 x {size} px"] = (
            tiles,
            [f"#{i} true: snow | pred: arabian 0.{50 + i}" for i in range(16)],
            4,
        )
    print("\n| captioned grid | whole grid (ms) | its captions: stamped / ImageDraw (ms) |")
    print("| --- | --- | --- |")
    for name, (tiles, captions, ncol) in cases.items():
        build = functools.partial(labelled_grid, tiles, captions, ncol=ncol)
        canvas = build()
        boxes: list[tuple[int, int, int, int]] = []
        labelled_grid(tiles, None, ncol=ncol, cell_boxes=boxes)
        width = canvas.shape[2]
        font, lines, _ = fit_text(captions, boxes[0][2] - boxes[0][0] - 4, card_font_size(width), 4)
        blocks = [(x0, y1, x1 - x0, ls) for (x0, _, x1, y1), ls in zip(boxes, lines)]
        stamp, draw = (functools.partial(f, canvas, blocks, font) for f in (_stamp_copy, _draw_copy))
        stamp()
        row = [best_of(f, repeats) * 1e3 for f in (build, stamp, draw)]
        print(f"| {name} | {row[0]:.1f} | {row[1]:.1f} / {row[2]:.1f} |")


RECOMMENDED: dict[str, dict[str, Any]] = {"ActivationMonitor": {"max_images": 4}}
"""Monitor defaults this benchmark measures a change of (``--recommended``): the option each would take by default."""

FEWER_PICTURES: dict[str, dict[str, Any]] = {
    **RECOMMENDED,
    "FilterMonitor": {"layers": ["net.0.0"]},
    "SaliencyMonitor": {"methods": ("vanilla",)},
}
"""``--fewer-pictures``: on top of ``RECOMMENDED``, the first conv's filters alone and one saliency method: the cost of
the pictures a firing would no longer draw (the stress benchmark names these two options itself)."""

GRID_FUNCTIONS = ("labelled_grid", "rows_grid", "filmstrip", "filter_grid", "activation_grid")


def grid_at(rev: str) -> ModuleType:
    """``probelens.render.grid`` as it was at git revision ``rev``, loaded beside the current one (it draws with the
    current text, colormap and image modules)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/probelens/render/grid.py"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    path = Path(tempfile.mkdtemp()) / "grid.py"  # its own name, so the profile counts its time as the grids'
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("probelens.render._grid_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def drawn_with(grid: ModuleType | None) -> Iterator[None]:
    """The monitors draw with ``grid``'s functions (None: the current ones) inside the block: each core module's
    imported name is pointed at them and put back afterwards."""
    from probelens.render import grid as current

    swapped: list[tuple[ModuleType, str, object]] = []
    if grid is not None:
        for name, module in list(sys.modules.items()):
            if not name.startswith("probelens.core."):
                continue
            for fn in GRID_FUNCTIONS:
                if getattr(module, fn, None) is getattr(current, fn):
                    swapped.append((module, fn, getattr(current, fn)))
                    setattr(module, fn, getattr(grid, fn))
    try:
        yield
    finally:
        for module, fn, original in swapped:
            setattr(module, fn, original)


@dataclass
class Firings:
    """What the firings of one layout cost and wrote."""

    label: str
    times: list[float] = field(default_factory=list)
    pictures: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # tag -> (height, width, PNG bytes)
    bytes: int = 0
    pixels: int = 0
    counting: bool = False
    pieces: dict[str, float] = field(default_factory=dict)
    per_monitor: dict[str, list[float]] = field(default_factory=dict)  # monitor class -> seconds per timed firing


@dataclass
class Variant:
    """How a firing is drawn: the grids (a module of another revision, or None for the current ones) and options
    given to the core monitors on top of the stress benchmark's (``{"ActivationMonitor": {"max_images": 4}}``)."""

    label: str
    grid: ModuleType | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def monitors(self, probe: Any, shortcut_probe: Any) -> list[Any]:
        """The stress benchmark's core monitors (``bench.core_monitors``), each with its options of this variant."""
        import bench

        monitors = bench.core_monitors(probe, shortcut_probe)
        if not self.options:
            return monitors
        probes = {"FilterMonitor": None}
        out = []
        for m in monitors:
            name = type(m).__name__
            extra = self.options.get(name)
            if not extra:
                out.append(m)
                continue
            kwargs = {**_stress_options(name), "every_n_steps": bench.CORE_EVERY, **extra}
            probe_arg = probes.get(name, shortcut_probe)
            out.append(type(m)(**kwargs) if probe_arg is None else type(m)(probe_arg, **kwargs))
        return out


def _stress_options(name: str) -> dict[str, Any]:
    """The options ``bench.core_monitors`` gives monitor ``name`` (besides the probe and the schedule)."""
    return {
        "ActivationMonitor": {"layers": "auto"},
        "GradCAMMonitor": {"layers": "all"},
        "SaliencyMonitor": {"methods": ("vanilla", "gradient_x_input")},
    }.get(name, {})


def _core_monitors(demo: Any, root: str, variant: Variant) -> tuple[list[Any], Any, nn.Module]:
    """The stress benchmark's core monitors, set up on a real Trainer with a TensorBoardLogger of their own."""
    import bench

    _train, val, probe, _shortcut = bench.demo_data(256)
    monitors = variant.monitors(probe, bench.ProbeSet_from(val, 16))
    root = os.path.join(root, variant.label.replace(" ", "_"))
    trainer = bench._quiet_trainer(root, max_epochs=1, callbacks=monitors)  # one run: the monitors share one pass
    torch.manual_seed(0)
    model = demo.LeopardClassifier()
    for m in monitors:
        m.setup(trainer, model, "fit")
        m._ensure_configured(trainer, model, required=True)
    return monitors, trainer, model


def _observe_writes(monitor: Any, record: Firings) -> None:
    """Count what ``monitor``'s sink writes (the sink still writes it: the TensorBoard event file)."""
    sink = monitor.writer.sink
    add_image = sink.add_image

    def counted(tag: str, image: Tensor, step: int, facts: Any = NO_FACTS) -> Any:
        written = add_image(tag, image, step, facts)
        if record.counting:  # the timed firings only
            nbytes = int(written or 0)
            record.pictures[tag] = (int(image.shape[-2]), int(image.shape[-1]), nbytes)
            record.bytes += nbytes
            record.pixels += int(image.shape[-2]) * int(image.shape[-1])
        return written

    sink.add_image = counted


def firing_cost(variants: list[Variant], firings: int, root: str) -> dict[str, Firings]:
    """Fire the core monitors ``firings`` times per variant, the variants alternating firing by firing (one untimed
    warm-up firing each first); then profile ``firings`` more of each."""
    import bench

    demo = bench.load_demo()
    layouts = {v.label: v.grid for v in variants}
    records = {label: Firings(label) for label in layouts}
    setups = {v.label: _core_monitors(demo, root, v) for v in variants}
    for label, (monitors, _trainer, _model) in setups.items():
        for m in monitors:
            _observe_writes(m, records[label])
    step = 0

    def fire(label: str) -> float:
        nonlocal step
        step += 6
        monitors, trainer, model = setups[label]
        with torch.no_grad():  # new weight versions, same values: FilterMonitor draws at every firing, as in training
            for p in model.parameters():
                p.mul_(1.0)
        record = records[label]
        with drawn_with(layouts[label]):
            start = time.perf_counter()
            for m in monitors:
                began = time.perf_counter()
                m.writer.begin("fit", step)
                m.writer.open()
                m.explain(step, model, trainer)
                m.writer.commit()
                if record.counting:
                    record.per_monitor.setdefault(type(m).__name__, []).append(time.perf_counter() - began)
            return time.perf_counter() - start

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label in layouts:
            fire(label)
        for k in range(firings):
            for label in layouts if k % 2 == 0 else list(layouts)[::-1]:
                records[label].counting = True
                records[label].times.append(fire(label))
                records[label].counting = False
        for label in layouts:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(firings):
                fire(label)
            profile.disable()
            pieces = bench._piece_times(pstats.Stats(profile), bench.FIRING_PIECES)
            records[label].pieces = {k: v / firings for k, v in pieces.items()}
    for record in records.values():  # bytes and pixels were added up over the timed firings
        timed = len(record.times)
        record.bytes //= max(1, timed)
        record.pixels //= max(1, timed)
    return records


def drawing_cost(variants: list[Variant], repeats: int, root: str) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per variant and picture of one firing: ``(draw seconds, encode seconds, PNG bytes)``, each time the best of
    ``repeats`` (the deterministic part of a firing that the layout changes, steady on a loaded machine, where a
    firing's wall time is not). Draw: the monitor's ``explain`` on the step's cached shared pass (its map math and
    its grids), split evenly over the pictures it hands over; encode: each picture's PNG with its grid facts.
    Filmstrips are left out."""
    import bench

    demo = bench.load_demo()
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for variant in variants:
            monitors, trainer, model = _core_monitors(demo, root, variant)
            costs: dict[str, tuple[float, float, int]] = {}
            for m in monitors:
                pictures: list[Any] = []
                m.writer.picture = pictures.append  # the records, not written

                def explain(m: Any = m, pictures: list[Any] = pictures, model: Any = model, run: Any = trainer) -> None:
                    pictures.clear()
                    m.writer.begin("fit", 6)
                    m.explain(6, model, run)

                with drawn_with(variant.grid):
                    draw = best_of(explain, repeats)
                shown = [p for p in pictures if "_filmstrip" not in p.tag]
                for picture in shown:
                    text = GridFacts(picture.cells).text()
                    encode = best_of(functools.partial(encode_png, picture.image, text=text), repeats)
                    nbytes = len(encode_png(picture.image, text=text))
                    costs[picture.tag] = (draw / max(1, len(shown)), encode, nbytes)
            out[variant.label] = costs
    return out


def fit_cost(variants: list[Variant], rounds: int, root: str) -> dict[str, list[float]]:
    """The stress benchmark: fit seconds without monitors and with the core monitors every 6 steps drawn as each
    variant draws them (on the training thread), ``rounds`` rounds in ABBA order in this process."""
    import bench

    demo = bench.load_demo()
    runs: list[tuple[str, Variant | None]] = [("without monitors", None)]
    runs += [(f"core monitors, {v.label}", v) for v in variants]
    fits: dict[str, list[float]] = {label: [] for label, _ in runs}
    for k in range(rounds):
        for label, variant in runs if k % 2 == 0 else runs[::-1]:
            with drawn_with(None if variant is None else variant.grid):
                run = bench.train_once(
                    demo,
                    4000,
                    2,
                    variant is not None,
                    os.path.join(root, f"fit{k}"),
                    monitors_fn=bench.core_monitors if variant is None else variant.monitors,
                    sync_images=True,
                )
            fits[label].append(run["fit"])
            print(f"    round {k + 1}: {label:40s} fit {run['fit']:6.2f} s, {run['fires']} firings", flush=True)
    return fits


def layout_report(variants: list[Variant], firings: int, fit_rounds: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="probelens-render-bench-") as root:
        drawing = drawing_cost(variants, repeats, root)
        records = firing_cost(variants, firings, root) if firings else {}
        fits = fit_cost(variants, fit_rounds, root) if fit_rounds else {}
    labels = [v.label for v in variants]
    print(f"\n| one firing's pictures, best of {repeats} | " + " | ".join(labels) + " |")
    print("| --- | " + " | ".join("---" for _ in labels) + " |")
    sums = {label: [sum(c[k] for c in drawing[label].values()) for k in range(3)] for label in labels}
    print("| draw (ms) | " + " | ".join(f"{sums[label][0] * 1e3:.1f}" for label in labels) + " |")
    print("| PNG encode (ms) | " + " | ".join(f"{sums[label][1] * 1e3:.1f}" for label in labels) + " |")
    print("| draw + encode (ms) | " + " | ".join(f"{(sums[lb][0] + sums[lb][1]) * 1e3:.1f}" for lb in labels) + " |")
    print("| KiB of PNG | " + " | ".join(f"{sums[label][2] / 1024:.0f}" for label in labels) + " |")
    for tag in sorted({t for costs in drawing.values() for t in costs}):
        cells = []
        for label in labels:
            draw, encode, nbytes = drawing[label].get(tag, (0.0, 0.0, 0))
            cells.append(f"{draw * 1e3:.1f} + {encode * 1e3:.1f}" if nbytes else "-")
        print(f"| `{tag}`: draw + encode (ms) | " + " | ".join(cells) + " |")
    if not records:
        return
    print("\n| core monitors, one firing | " + " | ".join(labels) + " |")
    print("| --- | " + " | ".join("---" for _ in labels) + " |")
    rows = {
        "ms per firing (median)": lambda r: f"{statistics.median(r.times) * 1e3:.1f}",
        "pictures": lambda r: f"{len(r.pictures)}",
        "pixels (M)": lambda r: f"{r.pixels / 1e6:.2f}",
        "KiB of PNG": lambda r: f"{r.bytes / 1024:.0f}",
    }
    for monitor in records[labels[0]].per_monitor:
        rows[f"{monitor} (ms, median)"] = lambda r, monitor=monitor: (
            f"{statistics.median(r.per_monitor[monitor]) * 1e3:.1f}" if monitor in r.per_monitor else "-"
        )
    for piece in bench_pieces():
        rows[f"profile: {piece} (ms)"] = lambda r, piece=piece: f"{r.pieces.get(piece, 0.0) * 1e3:.1f}"
    for name, cell in rows.items():
        print(f"| {name} | " + " | ".join(cell(records[label]) for label in labels) + " |")
    print("\n| picture | " + " | ".join(f"{label}: W x H, KiB" for label in labels) + " |")
    print("| --- | " + " | ".join("---" for _ in labels) + " |")
    tags = sorted({tag for r in records.values() for tag in r.pictures})
    for tag in tags:
        cells = []
        for label in labels:
            h, w, nbytes = records[label].pictures.get(tag, (0, 0, 0))
            cells.append(f"{w} x {h}, {nbytes / 1024:.0f}" if h else "-")
        print(f"| `{tag}` | " + " | ".join(cells) + " |")
    if fits:
        base = fits["without monitors"]
        print("\n| fit, demo CNN, 2 epochs, n=4000 | seconds per round | overhead (median of round ratios) |")
        print("| --- | --- | --- |")
        for label, seconds in fits.items():
            ratios = [a / b - 1.0 for a, b in zip(seconds, base, strict=True)]
            overhead = f"{statistics.median(ratios) * 100:+.1f}%" if label != "without monitors" else ""
            print(f"| {label} | " + ", ".join(f"{s:.2f}" for s in seconds) + f" | {overhead} |")


def bench_pieces() -> list[str]:
    import bench

    return list(bench.FIRING_PIECES)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--against", default=None, help="git revision whose encode_png is measured too")
    parser.add_argument("--layout-against", default=None, help="git revision whose grids a firing is drawn with too")
    parser.add_argument("--firings", type=int, default=12, help="timed firings per layout (--layout-against)")
    parser.add_argument("--fit-rounds", type=int, default=0, help="rounds of the stress benchmark (--layout-against)")
    parser.add_argument("--layout-only", action="store_true", help="only the --layout-against section")
    parser.add_argument(
        "--recommended", action="store_true", help="also the current grids with the RECOMMENDED monitor defaults"
    )
    parser.add_argument("--fewer-pictures", action="store_true", help="also the current grids with FEWER_PICTURES")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 keeps a shared, loaded machine from oversubscribing)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.layout_against:
        rev = args.layout_against
        variants = [Variant(f"grids at {rev}", grid_at(rev)), Variant("current grids")]
        if args.recommended:
            variants.append(Variant("current grids, recommended defaults", options=RECOMMENDED))
        if args.fewer_pictures:
            variants.append(Variant("current grids, fewer pictures", options=FEWER_PICTURES))
        layout_report(variants, args.firings, args.fit_rounds, args.repeats)
        if args.layout_only:
            return
    pics = pictures()
    encoders: dict[str, Callable[[Tensor, dict[str, str]], bytes]] = {}
    if args.against:
        encoders[f"encode_png at {args.against} (level 1)"] = encoder_at(args.against)
    encoders |= {
        "probelens encode_png (level 1)": probelens_png,
        "Pillow, compress_level=3": pillow_png(3),
        "Pillow, compress_level=6 (default)": pillow_png(6),
    }
    print("| picture | size | " + " | ".join(f"{name}: ms / KiB" for name in encoders) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in encoders) + " |")
    for name, (image, text) in pics.items():
        cells = []
        for encode in encoders.values():
            data = encode(image, text)
            with Image.open(io.BytesIO(data)) as decoded:  # every encoder must round-trip the pixels and the chunks
                assert np.array_equal(np.asarray(decoded.convert("RGB")), image.permute(1, 2, 0).numpy())
                assert all(decoded.info.get(k) == v for k, v in text.items())
            ms = best_of(functools.partial(encode, image, text), args.repeats) * 1e3
            cells.append(f"{ms:.1f} / {len(data) / 1024:.0f}")
        print(f"| {name} | {image.shape[2]}x{image.shape[1]} | " + " | ".join(cells) + " |")
    caption_drawing(args.repeats)


if __name__ == "__main__":
    main()
