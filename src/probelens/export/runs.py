"""The export itself: every run under a log directory, every image tag and probe image in it, and the page.

Reading is :mod:`probelens.logs` and :mod:`probelens.export.reading`, the pictures :mod:`probelens.export.compose`,
the page :mod:`probelens.export.page`; this module walks the runs and names the files.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probelens.export.compose import plot_scalar, select_frames, stamped, write_filmstrip, write_gif
from probelens.export.page import render_index
from probelens.export.reading import budget_groups, crops, decode, largest_boxes, picture_size, undecodable
from probelens.export.results import ExportError, ExportResult, ProbeImageExport, RunExport, ScalarExport, TagExport
from probelens.logs import describe_dir, encoded_by_step, find_runs, load_run, png_layout, run_name

__all__ = ["DEFAULT_OUT_NAME", "export"]

DEFAULT_OUT_NAME = "probelens_export"
"""Folder created inside ``LOGDIR`` when ``--out`` is not given."""

_SCALAR_PREFIXES = ("probelens/", "shortcut/")
_LOSS_OR_ACC = re.compile(r"loss|acc", re.IGNORECASE)


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


def _wants_scalar(tag: str) -> bool:
    return tag.startswith(_SCALAR_PREFIXES) or bool(_LOSS_OR_ACC.search(tag.rsplit("/", 1)[-1]))


def _export_probe_images(
    encoded: Sequence[tuple[int, bytes]], chosen_steps: Sequence[int], folder: Path, fps: float
) -> list[ProbeImageExport]:
    """Per probe image: a GIF and a filmstrip of its cell of the grid, cropped step by step with that step's layout.

    Every step is decoded once per group of probe images (one group unless the crops exceed the memory budget).
    """
    sizes = largest_boxes(encoded)
    if not sizes:
        return []
    probe = png_layout(encoded[-1][1]).probe
    folder.mkdir(parents=True, exist_ok=True)
    chosen = set(chosen_steps)
    exports: list[ProbeImageExport] = []
    for group in budget_groups(sizes, len(encoded)):
        cells: dict[int, list[tuple[int, Any]]] = {k: [] for k in group}
        for step, cut in crops(encoded, group):
            for k, crop in cut.items():
                cells[k].append((step, crop))
        for k in group:
            frames = cells.pop(k)
            if not frames:
                continue
            gif, strip = folder / f"probe_{k:03d}.gif", folder / f"probe_{k:03d}.filmstrip.png"
            write_gif((stamped(crop, sizes[k], f"#{k} step {step}") for step, crop in frames), gif, fps)
            in_strip = [(step, crop) for step, crop in frames if step in chosen] or frames[-1:]
            write_filmstrip([stamped(crop, sizes[k], f"step {step}") for step, crop in in_strip], strip)
            exports.append(
                ProbeImageExport(index=k, steps=[step for step, _ in frames], gif=gif, filmstrip=strip, probe=probe)
            )
    return sorted(exports, key=lambda e: e.index)


def _decodable(run: RunExport, tag: str, encoded: Sequence[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The pictures of ``tag`` that are safe to decode; one warning (and a line in ``run.skipped``) per other one."""
    kept = []
    for step, data in encoded:
        why = undecodable(data)
        if why is None:
            kept.append((step, data))
            continue
        line = f"run {run.name!r}, tag {tag!r}, step {step}: skipped, {why}"
        run.skipped.append(line)
        warnings.warn(f"probelens export: {line}", stacklevel=3)
    return kept


def _export_run(acc: Any, run: RunExport, run_out: Path, max_frames: int, fps: float) -> None:
    tags = acc.Tags()
    names = _Names()
    image_tags = sorted(tags.get("images", []))
    if image_tags:
        (run_out / "images").mkdir(parents=True, exist_ok=True)
    for tag in image_tags:
        encoded = _decodable(run, tag, encoded_by_step(acc.Images(tag)))
        if not encoded:
            continue
        # one canvas for all frames: the largest width and height, so a picture that grows over the steps (such as
        # probelens/gradcam_filmstrip/<layer>, one column per step) is padded rather than squeezed
        sizes = [picture_size(data) for _, data in encoded]
        size = (max(w for w, _ in sizes), max(h for _, h in sizes))
        name = names(tag)
        gif = run_out / "images" / f"{name}.gif"
        filmstrip = run_out / "images" / f"{name}.filmstrip.png"
        write_gif((stamped(decode(data), size, f"step {step}") for step, data in encoded), gif, fps)
        chosen = [encoded[i] for i in select_frames(len(encoded), max_frames)]
        write_filmstrip([stamped(decode(data), size, f"step {step}") for step, data in chosen], filmstrip)
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
    for tag in sorted(tags.get("scalars", [])):
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


def _tag_counts(acc: Any) -> str:
    counts = [f"{kind} ({len(v)})" for kind, v in acc.Tags().items() if isinstance(v, list) and v]
    return "has " + ", ".join(counts) if counts else "has no tags"


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
            f"no TensorBoard event files (events.out.tfevents.*) under {str(root)!r}: {describe_dir(root)}{hint}"
        )
    loaded = [(RunExport(name=run_name(root, d), path=d), load_run(d)) for d in run_dirs]
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
