"""Export probelens TensorBoard logs to animated GIFs, filmstrips, scalar plots and one static HTML page.

Run it on a TensorBoard log directory (any directory holding runs, or a single run)::

    python -m probelens export lightning_logs                    # writes lightning_logs/probelens_export/
    python -m probelens export lightning_logs --out report --max-frames 8 --fps 4

For every image tag of every run (``probelens/gradcam/<layer>``, ``probelens/saliency/<method>``, ...) it writes an
animated GIF over the logged steps, each frame stamped with its step, and a filmstrip PNG (at most ``--max-frames``
evenly spaced frames side by side, first and last included). The scalar curves (``probelens/*``, ``shortcut/*`` and
the loss/accuracy scalars) are drawn with matplotlib, and ``index.html`` lays everything out per run with relative
links only, so the output folder can be zipped, mailed or attached to a pull request as is.

An image tag holds one picture per step (a Grad-CAM grid has every probe image as a tile), so the GIF of a tag shows
how the whole grid evolves. The monitors also record in each grid PNG which box shows which probe image
(:data:`probelens.render.CELLS_KEY`), so per probe image and tag the export writes a GIF and a filmstrip of just that
image's cell over training, and ``index.html`` shows each probe image's methods side by side next to the scalar
curves. Only TensorBoard is needed to read the event files (no TensorFlow).
"""

from __future__ import annotations

import argparse
import html
import io
import os
import re
import sys
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from probelens.logs import _text_chunks, describe_dir, encoded_by_step, find_runs, load_run, probe_boxes, run_name
from probelens.render.image import probe_from_text

__all__ = [
    "DEFAULT_OUT_NAME",
    "ExportError",
    "ExportResult",
    "ProbeImageExport",
    "RunExport",
    "TagExport",
    "export",
    "main",
]

DEFAULT_OUT_NAME = "probelens_export"
"""Folder created inside ``LOGDIR`` when ``--out`` is not given."""

_BAND_BACKGROUND = (32, 32, 32)
_BAND_TEXT = (255, 255, 255)
_PAD_BACKGROUND = (255, 255, 255)
_STRIP_GAP = 4
_SCALAR_PREFIXES = ("probelens/", "shortcut/")
_LOSS_OR_ACC = re.compile(r"loss|acc", re.IGNORECASE)
_CROP_BUDGET_BYTES = 256 * 2**20  # decoded per-probe crops held at once; more probe images -> more passes


class ExportError(Exception):
    """An export that cannot go ahead; ``exit_code`` is what the command line returns.

    Args:
        message: What went wrong and what was found instead.
        exit_code: 2 for a bad argument (a missing log directory), 1 when there is nothing to export.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ProbeImageExport:
    """One probe image's cell of one image tag, over the logged steps.

    Attributes:
        index: The probe image's index in the probe set (``#index`` in the grids' captions).
        probe: The fingerprint of that probe set, as the grid recorded it (``None`` in logs from before it was).
        steps: The steps whose picture has this probe image (one GIF frame each).
        gif: The animated GIF of the cell.
        filmstrip: The filmstrip PNG of the cell (the tag's ``filmstrip_steps`` that have it).
    """

    index: int
    steps: list[int]
    gif: Path
    filmstrip: Path
    probe: str | None = None


@dataclass
class TagExport:
    """What was written for one image tag of one run.

    Attributes:
        tag: The TensorBoard tag, e.g. ``probelens/gradcam/model.4``.
        steps: The logged steps, in order (one GIF frame each).
        gif: The animated GIF over all steps.
        filmstrip: The filmstrip PNG.
        filmstrip_steps: The steps shown in the filmstrip (at most ``max_frames``, first and last included).
        size: ``(width, height)`` of the frames before the step band: the largest width and height over the steps
            (smaller pictures are padded with white at the bottom and right, never scaled).
        probe_images: Per probe image, its cell over training; empty for pictures that are not per probe image
            (filters, feature visualisations, filmstrips) and for logs written before the layout was recorded.
    """

    tag: str
    steps: list[int]
    gif: Path
    filmstrip: Path
    filmstrip_steps: list[int]
    size: tuple[int, int]
    probe_images: list[ProbeImageExport] = field(default_factory=list)


@dataclass
class ScalarExport:
    """One scalar tag drawn as a PNG.

    Attributes:
        tag: The TensorBoard tag, e.g. ``shortcut/score``.
        plot: The PNG.
        points: How many (step, value) points it shows.
    """

    tag: str
    plot: Path
    points: int


@dataclass
class RunExport:
    """What was exported for one run (a directory holding event files).

    Attributes:
        name: The run name as TensorBoard shows it (path relative to the log directory, ``.`` for the root).
        path: The run directory.
        images: One entry per image tag.
        scalars: One entry per plotted scalar tag.
        other_scalars: Scalar tags found but not plotted (neither probelens/shortcut nor loss/accuracy).
    """

    name: str
    path: Path
    images: list[TagExport] = field(default_factory=list)
    scalars: list[ScalarExport] = field(default_factory=list)
    other_scalars: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    """Everything :func:`export` wrote.

    Attributes:
        out: The output folder.
        index: ``out/index.html``.
        runs: One entry per run, sorted by name.
    """

    out: Path
    index: Path
    runs: list[RunExport]

    @property
    def files(self) -> list[Path]:
        """Every GIF and PNG written (the index excluded)."""
        paths: list[Path] = []
        for run in self.runs:
            for image in run.images:
                paths += [image.gif, image.filmstrip]
                for probe_image in image.probe_images:
                    paths += [probe_image.gif, probe_image.filmstrip]
            paths += [s.plot for s in run.scalars]
        return paths


# ----------------------------------------------------------------------------------------------------------------------
# reading


# the event-file reading lives in probelens.logs (shared with the TensorBoard dashboard)
_run_name = run_name
_load = load_run
_encoded_by_step = encoded_by_step


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:  # reads the header only
        return image.size


# ----------------------------------------------------------------------------------------------------------------------
# pictures


def evenly_spaced(n: int, k: int) -> list[int]:
    """``min(n, k)`` indices into ``range(n)``, evenly spaced, first and last included (the last alone if ``k == 1``).

    Args:
        n: How many items there are.
        k: How many to keep.

    Returns:
        Sorted distinct indices.
    """
    if n <= 0 or k <= 0:
        return []
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _pad(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` at its own scale in the top-left corner of a white canvas of ``size`` (at least as large)."""
    if image.size == size:
        return image
    canvas = Image.new("RGB", size, _PAD_BACKGROUND)
    canvas.paste(image, (0, 0))
    return canvas


def stamp(image: Image.Image, text: str) -> Image.Image:
    """``image`` with a small dark band underneath carrying ``text`` (the picture itself is not covered).

    Args:
        image: An RGB image.
        text: The caption, e.g. ``"step 120"``.

    Returns:
        A new RGB image, taller than ``image`` by the band.
    """
    font = _font(max(10, min(14, image.width // 12)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    band = int(bottom - top) + 6
    out = Image.new("RGB", (image.width, image.height + band), _BAND_BACKGROUND)
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    x = max(2, (image.width - (right - left)) // 2)
    draw.text((x - left, image.height + 3 - top), text, fill=_BAND_TEXT, font=font)
    return out


def _stamped(encoded: Sequence[tuple[int, bytes]], size: tuple[int, int]) -> Iterator[Image.Image]:
    """The frames, decoded one at a time, each on a canvas of ``size`` and stamped with its step.

    The step band also keeps consecutive frames distinct, so the GIF writer never merges two steps into one frame.
    """
    for step, data in encoded:
        yield stamp(_pad(_decode(data), size), f"step {step}")


def write_gif(frames: Iterable[Image.Image], path: Path, fps: float) -> None:
    """Write ``frames`` as a looping animated GIF.

    Args:
        frames: RGB images of one size (any iterable: a generator is consumed one frame at a time).
        path: Where to write.
        fps: Frames per second.
    """
    duration = max(20, round(1000 / fps))
    frames = iter(frames)
    first = next(frames)
    first.save(path, format="GIF", save_all=True, append_images=frames, duration=duration, loop=0)


def write_filmstrip(frames: Sequence[Image.Image], path: Path) -> None:
    """Write ``frames`` side by side (separated by a thin white gap) as one PNG.

    Args:
        frames: RGB images of one size.
        path: Where to write.
    """
    width = sum(f.width for f in frames) + _STRIP_GAP * (len(frames) - 1)
    strip = Image.new("RGB", (width, max(f.height for f in frames)), _PAD_BACKGROUND)
    x = 0
    for frame in frames:
        strip.paste(frame, (x, 0))
        x += frame.width + _STRIP_GAP
    strip.save(path, format="PNG", optimize=True)


_probe_boxes = probe_boxes


def _layout(encoded: Sequence[tuple[int, bytes]]) -> dict[int, tuple[int, int]]:
    """Probe index -> the largest ``(width, height)`` of its box over the steps (headers and text chunks only, no
    pixels decoded)."""
    largest: dict[int, tuple[int, int]] = {}
    for _, data in encoded:
        with Image.open(io.BytesIO(data)) as image:
            for k, (x0, y0, x1, y1) in _probe_boxes(image).items():
                w, h = largest.get(k, (0, 0))
                largest[k] = (max(w, x1 - x0), max(h, y1 - y0))
    return largest


def _budget_groups(sizes: dict[int, tuple[int, int]], n_steps: int) -> list[list[int]]:
    """Probe indices in groups whose crops over all steps fit :data:`_CROP_BUDGET_BYTES` (one decode pass each)."""
    groups: list[list[int]] = [[]]
    used = 0
    for k in sorted(sizes):
        cost = 3 * sizes[k][0] * sizes[k][1] * n_steps
        if groups[-1] and used + cost > _CROP_BUDGET_BYTES:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += cost
    return groups


def _export_probe_images(
    encoded: Sequence[tuple[int, bytes]], chosen_steps: Sequence[int], folder: Path, fps: float
) -> list[ProbeImageExport]:
    """Per probe image: a GIF and a filmstrip of its cell of the grid, cropped step by step with that step's layout.

    Every step is decoded once per group of probe images (one group unless the crops exceed the memory budget).
    """
    sizes = _layout(encoded)
    if not sizes:
        return []
    with Image.open(io.BytesIO(encoded[-1][1])) as last:
        probe = probe_from_text(_text_chunks(last))
    folder.mkdir(parents=True, exist_ok=True)
    chosen = set(chosen_steps)
    exports: list[ProbeImageExport] = []
    for group in _budget_groups(sizes, len(encoded)):
        crops: dict[int, list[tuple[int, Image.Image]]] = {k: [] for k in group}
        for step, data in encoded:
            with Image.open(io.BytesIO(data)) as image:
                boxes = _probe_boxes(image)
                if not any(k in boxes for k in group):
                    continue
                rgb = image.convert("RGB")
            for k in group:
                if k in boxes:
                    crops[k].append((step, rgb.crop(boxes[k])))
        for k in group:
            frames = crops.pop(k)
            if not frames:
                continue
            size = sizes[k]
            gif, strip = folder / f"probe_{k:03d}.gif", folder / f"probe_{k:03d}.filmstrip.png"
            write_gif((stamp(_pad(crop, size), f"#{k} step {step}") for step, crop in frames), gif, fps)
            in_strip = [(step, crop) for step, crop in frames if step in chosen] or frames[-1:]
            write_filmstrip([stamp(_pad(crop, size), f"step {step}") for step, crop in in_strip], strip)
            exports.append(
                ProbeImageExport(index=k, steps=[step for step, _ in frames], gif=gif, filmstrip=strip, probe=probe)
            )
    return sorted(exports, key=lambda e: e.index)


def _wants_scalar(tag: str) -> bool:
    return tag.startswith(_SCALAR_PREFIXES) or bool(_LOSS_OR_ACC.search(tag.rsplit("/", 1)[-1]))


def plot_scalar(points: Sequence[tuple[int, float]], tag: str, path: Path) -> None:
    """Draw one scalar curve (value over step) as a small PNG with matplotlib's Agg backend.

    Args:
        points: ``(step, value)`` pairs.
        tag: The tag, used as the title.
        path: Where to write.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 2.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    ax.plot(steps, values, color="#d2552d", linewidth=1.5, marker="o" if len(points) <= 30 else None, markersize=3)
    ax.set_title(tag, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")


# ----------------------------------------------------------------------------------------------------------------------
# export


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__")).strip("._")
    return slug or "_"


class _Names:
    """Hands out file names that are unique within one folder (tags that differ only in punctuation)."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def __call__(self, text: str) -> str:
        base = _slug(text)
        name, k = base, 1
        while name.lower() in self._used:
            k += 1
            name = f"{base}-{k}"
        self._used.add(name.lower())
        return name


def _export_run(acc: Any, run: RunExport, run_out: Path, max_frames: int, fps: float) -> None:
    tags = acc.Tags()
    names = _Names()
    image_tags = sorted(tags.get("images", []))
    if image_tags:
        (run_out / "images").mkdir(parents=True, exist_ok=True)
    for tag in image_tags:
        encoded = _encoded_by_step(acc.Images(tag))
        if not encoded:
            continue
        # one canvas for all frames: the largest width and height, so a picture that grows over the steps (such as
        # probelens/gradcam_filmstrip/<layer>, one column per step) is padded rather than squeezed
        sizes = [_size(data) for _, data in encoded]
        size = (max(w for w, _ in sizes), max(h for _, h in sizes))
        name = names(tag)
        gif = run_out / "images" / f"{name}.gif"
        filmstrip = run_out / "images" / f"{name}.filmstrip.png"
        write_gif(_stamped(encoded, size), gif, fps)
        chosen = [encoded[i] for i in evenly_spaced(len(encoded), max_frames)]
        write_filmstrip(list(_stamped(chosen, size)), filmstrip)
        chosen_steps = [step for step, _ in chosen]
        run.images.append(
            TagExport(
                tag=tag,
                steps=[step for step, _ in encoded],
                gif=gif,
                filmstrip=filmstrip,
                filmstrip_steps=chosen_steps,
                size=size,
                probe_images=_export_probe_images(encoded, chosen_steps, run_out / "probe_images" / name, fps),
            )
        )
    scalar_tags = sorted(tags.get("scalars", []))
    for tag in scalar_tags:
        if not _wants_scalar(tag):
            run.other_scalars.append(tag)
            continue
        points = [(int(e.step), float(e.value)) for e in acc.Scalars(tag)]
        if not points:
            continue
        (run_out / "scalars").mkdir(parents=True, exist_ok=True)
        plot = run_out / "scalars" / f"{names(tag)}.png"
        plot_scalar(points, tag, plot)
        run.scalars.append(ScalarExport(tag=tag, plot=plot, points=len(points)))


_describe_dir = describe_dir


def export(
    logdir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    max_frames: int = 16,
    fps: float = 2.0,
) -> ExportResult:
    """Export every run under ``logdir`` to GIFs, filmstrips, scalar plots and ``index.html``.

    Args:
        logdir: A TensorBoard log directory: one run, or a folder of runs at any depth.
        out: Output folder (created); default ``logdir/probelens_export``. Files from an earlier export are
            overwritten, other files are left alone.
        max_frames: At most this many frames per filmstrip (evenly spaced, first and last included).
        fps: GIF frames per second.

    Returns:
        What was written.

    Raises:
        ExportError: ``logdir`` does not exist (``exit_code`` 2), holds no event files, or no run has an image tag
            (``exit_code`` 1; the message says what was found).
        ValueError: ``max_frames`` < 1 or ``fps`` <= 0.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    root = Path(logdir)
    if not root.exists():
        raise ExportError(f"log directory {str(root)!r} does not exist", exit_code=2)
    if not root.is_dir():
        raise ExportError(f"{str(root)!r} is not a directory (pass the folder holding the runs)", exit_code=2)
    out_dir = Path(out) if out is not None else root / DEFAULT_OUT_NAME
    run_dirs = find_runs(root, exclude=out_dir)
    if not run_dirs:
        fallback = [p for p in root.rglob("probelens_images") if p.is_dir()]
        hint = (
            f"; found probelens PNG folders (written without a TensorBoardLogger) at {', '.join(map(str, fallback))}"
            if fallback
            else ""
        )
        raise ExportError(
            f"no TensorBoard event files (events.out.tfevents.*) under {str(root)!r}: {_describe_dir(root)}{hint}"
        )
    loaded = [(RunExport(name=_run_name(root, d), path=d), _load(d)) for d in run_dirs]
    if not any(acc.Tags().get("images") for _, acc in loaded):
        found = "; ".join(f"run {run.name!r} {_tag_counts(acc)}" for run, acc in loaded)
        raise ExportError(
            f"no image tags in the {len(loaded)} run(s) under {str(root)!r}: {found}. probelens writes images "
            "to TensorBoard only through a TensorBoardLogger; did the run have GradCAMMonitor, SaliencyMonitor, ... "
            "among its callbacks and fire at least once?"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    run_names = _Names()
    runs = []
    for run, acc in loaded:
        _export_run(acc, run, out_dir / run_names(run.name if run.name != "." else "root"), max_frames, fps)
        runs.append(run)
    runs.sort(key=lambda r: r.name)
    index = out_dir / "index.html"
    index.write_text(render_index(runs, out_dir, root, max_frames=max_frames, fps=fps), encoding="utf-8")
    return ExportResult(out=out_dir, index=index, runs=runs)


def _tag_counts(acc: Any) -> str:
    counts = [f"{kind} ({len(v)})" for kind, v in acc.Tags().items() if isinstance(v, list) and v]
    return "has " + ", ".join(counts) if counts else "has no tags"


# ----------------------------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em 2em; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #d2552d; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.5em; }
h4 { margin: 1.2em 0 0.4em; color: #555; font-family: ui-monospace, monospace; }
code { background: #f3f3f3; padding: 0 0.25em; border-radius: 3px; }
.meta { color: #666; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.grid figure { margin: 0; }
figure.tag { margin: 0 0 1.2em; }
figure.tag figcaption { margin-bottom: 0.3em; }
.pair { display: flex; gap: 16px; align-items: flex-start; }
.strip { overflow-x: auto; max-width: 100%; }
.strip img, .gif img { display: block; }
.small { font-size: 0.85em; color: #666; }
"""


def _href(path: Path, base: Path) -> str:
    return urllib.parse.quote(Path(os.path.relpath(path, base)).as_posix())


def _group(tag: str) -> str:
    return tag.rsplit("/", 1)[0] if "/" in tag else "(top level)"


def _steps_text(steps: Sequence[int]) -> str:
    n = len(steps)
    if n == 1:
        return f"1 step ({steps[0]})"
    return f"{n} steps ({steps[0]} to {steps[-1]})"


def render_index(runs: Sequence[RunExport], out: Path, logdir: Path, max_frames: int, fps: float) -> str:
    """The static ``index.html`` for ``runs`` (relative links into ``out``, no scripts, no external assets).

    Args:
        runs: The exported runs.
        out: The folder ``index.html`` goes into.
        logdir: The log directory (shown in the header).
        max_frames: The filmstrip limit used (shown in the header).
        fps: The GIF speed used (shown in the header).

    Returns:
        The HTML document.
    """
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>probelens export: {e(str(logdir))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>probelens export</h1>",
        f'<p class="meta">Log directory <code>{e(str(logdir))}</code>: {len(runs)} run{"s" if len(runs) != 1 else ""}.'
        f" GIFs play at {fps:g} frames per second, one frame per logged step; filmstrips show at most {max_frames}"
        " evenly spaced steps, first and last included.</p>",
        "<nav><ul>",
    ]
    for k, run in enumerate(runs):
        parts.append(
            f'<li><a href="#run-{k}"><code>{e(run.name)}</code></a>: {len(run.images)} image tags, '
            f"{len(run.scalars)} scalar plots</li>"
        )
    parts.append("</ul></nav>")
    for k, run in enumerate(runs):
        parts.append(f'<section id="run-{k}"><h2>Run <code>{e(run.name)}</code></h2>')
        if run.scalars:
            parts.append("<h3>Scalars</h3>")
            for group, items in _grouped(run.scalars):
                parts.append(f'<h4>{e(group)}</h4><div class="grid">')
                for s in items:
                    src = _href(s.plot, out)
                    parts.append(
                        f'<figure><a href="{src}"><img src="{src}" alt="{e(s.tag)}" width="420" height="260"></a>'
                        "</figure>"
                    )
                parts.append("</div>")
        if run.other_scalars:
            listed = ", ".join(f"<code>{e(t)}</code>" for t in run.other_scalars)
            parts.append(f'<p class="small">Other scalars (not drawn): {listed}</p>')
        parts += _probe_image_sections(run, out)
        if run.images:
            parts.append("<h3>Images</h3>")
            for group, items in _grouped(run.images):
                parts.append(f"<h4>{e(group)}</h4>")
                for t in items:
                    gif, strip = _href(t.gif, out), _href(t.filmstrip, out)
                    parts.append(
                        f'<figure class="tag"><figcaption><code>{e(t.tag)}</code>: {_steps_text(t.steps)}; '
                        f'<a href="{gif}">GIF</a>, <a href="{strip}">filmstrip</a></figcaption>'
                        f'<div class="pair"><div class="gif"><img src="{gif}" alt="{e(t.tag)} over the logged steps">'
                        f'</div><div class="strip"><img src="{strip}" alt="{e(t.tag)} filmstrip, steps '
                        f'{", ".join(map(str, t.filmstrip_steps))}"></div></div></figure>'
                    )
        else:
            parts.append('<p class="small">No image tags in this run.</p>')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _probe_image_sections(run: RunExport, out: Path) -> list[str]:
    """``index.html``'s "Per probe image" part of ``run``: each probe image's methods side by side, one GIF each.

    Rows are keyed by probe set and index: grids drawn from different probe sets (monitors given different probes)
    never share a row, and the page lists which probe set each tag used."""
    by_image: dict[tuple[str, int], list[tuple[str, ProbeImageExport]]] = {}
    probe_of: dict[str, str] = {}
    for t in run.images:
        for p in t.probe_images:
            key = p.probe or "unrecorded"
            by_image.setdefault((key, p.index), []).append((t.tag, p))
            probe_of[t.tag] = key
    if not by_image:
        return []
    e = html.escape
    probes = sorted(set(probe_of.values()))
    names = {
        probe: f"probe set {chr(ord('A') + i)}" if i < 26 else f"probe set {probe}" for i, probe in enumerate(probes)
    }
    parts = [
        "<h3>Per probe image</h3>",
        '<p class="small">Each probe image\'s cell of every grid, one GIF frame per logged step; click a GIF for its '
        "filmstrip.</p>",
    ]
    if len(probes) > 1:
        parts.append(
            '<p class="small">The monitors used different probe sets; each row is one image of one set:</p><ul>'
        )
        for probe in probes:
            tags = ", ".join(f"<code>{e(tag)}</code>" for tag, p in sorted(probe_of.items()) if p == probe)
            parts.append(f'<li class="small">{names[probe]} (fingerprint <code>{e(probe)}</code>): {tags}</li>')
        parts.append("</ul>")
    for probe, index in sorted(by_image):
        label = f"probe image #{index}" + (f" of {names[probe]}" if len(probes) > 1 else "")
        parts.append(f'<h4>{label}</h4><div class="grid">')
        for tag, p in by_image[(probe, index)]:
            gif, strip = _href(p.gif, out), _href(p.filmstrip, out)
            parts.append(
                f'<figure><a href="{strip}"><img src="{gif}" alt="{e(tag)}, {label}, over the logged '
                f'steps"></a><figcaption class="small"><code>{e(tag)}</code></figcaption></figure>'
            )
        parts.append("</div>")
    return parts


def _grouped(items: Sequence[Any]) -> list[tuple[str, list[Any]]]:
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(_group(item.tag), []).append(item)
    return sorted(groups.items())


# ----------------------------------------------------------------------------------------------------------------------
# command line


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser(prog: str = "probelens export") -> argparse.ArgumentParser:
    """The ``probelens export`` argument parser.

    Args:
        prog: Program name shown in usage and errors.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export the images and scalars that probelens logged to TensorBoard as animated GIFs, "
        "filmstrip PNGs, scalar plots and one static index.html.",
    )
    parser.add_argument("logdir", help="TensorBoard log directory (a run, or a folder of runs)")
    parser.add_argument("--out", default=None, help=f"output folder (default: LOGDIR/{DEFAULT_OUT_NAME})")
    parser.add_argument(
        "--max-frames", type=_positive_int, default=16, help="at most this many frames per filmstrip (default 16)"
    )
    parser.add_argument("--fps", type=_positive_float, default=2.0, help="GIF frames per second (default 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point of ``probelens export``.

    Args:
        argv: Arguments after ``export`` (default ``sys.argv[1:]``).

    Returns:
        0 on success, 1 when there is nothing to export, 2 for a bad argument such as a missing log directory.
    """
    args = build_parser().parse_args(argv)
    try:
        result = export(args.logdir, out=args.out, max_frames=args.max_frames, fps=args.fps)
    except ExportError as err:
        print(f"probelens export: error: {err}", file=sys.stderr)
        return err.exit_code
    n_images = sum(len(r.images) for r in result.runs)
    n_probe = sum(len(t.probe_images) for r in result.runs for t in r.images)
    n_scalars = sum(len(r.scalars) for r in result.runs)
    print(
        f"probelens export: {len(result.runs)} run(s), {n_images} image tag(s) as GIF + filmstrip, "
        f"{n_probe} per-probe-image GIF(s) + filmstrip(s), {n_scalars} scalar plot(s)\n  open {result.index}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
