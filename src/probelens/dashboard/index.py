"""What the dashboard knows about a log directory: its runs, and per run every probelens picture and shortcut scalar.

Read from the event files alone (:mod:`probelens.logs`), never sampled: every logged step of every tag is listed.
Listings are cached and read again only when an event file has grown, a new one appeared, or a run was added; a
PNG's layout (probe-image boxes, probe fingerprint, captions) is read from its header once and kept.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probelens.logs import PngLayout, encoded_by_step, find_runs, is_event_file, load_run, png_layout, run_name

__all__ = ["LogIndex", "RunIndex", "classify_tag"]

_STAGES = ("validate/", "test/")
_COUNTERFACTUALS = "shortcut/counterfactuals"
_ALERT_TEXT = "shortcut/alert"


def classify_tag(tag: str) -> tuple[str, str, str] | None:
    """``(stage, method, layer)`` of a probelens image tag, ``None`` for another tool's tag.

    ``probelens/gradcam/net.0.3`` -> ``("", "gradcam", "net.0.3")``; ``validate/probelens/saliency/vanilla`` ->
    ``("validate", "saliency", "vanilla")``; ``shortcut/counterfactuals`` -> ``("", "counterfactuals", "")``. A
    monitor given ``name=`` writes ``probelens/<name>/<method>/...``; its ``<name>/<method>`` is the method here.
    """
    stage = ""
    for prefix in _STAGES:
        if tag.startswith(prefix):
            stage, tag = prefix[:-1], tag[len(prefix) :]
            break
    if tag == _COUNTERFACTUALS:
        return stage, "counterfactuals", ""
    if not tag.startswith("probelens/"):
        return None
    parts = tag[len("probelens/") :].split("/")
    if len(parts) == 1:
        return stage, parts[0], ""
    return stage, "/".join(parts[:-1]), parts[-1]


def _only_appended(old: tuple[tuple[str, int, int], ...] | None, new: tuple[tuple[str, int, int], ...]) -> bool:
    """Whether ``new`` (the run's event files: name, size, mtime) differs from ``old`` only where a reloaded
    ``EventAccumulator`` looks: the last file grew, or files sorting after it appeared. Its directory watcher reads
    the files in name order and never goes back, so a run whose earlier file grew (the logger's, while probelens
    writes pictures into a file of its own that sorts after it) must be read again from the start."""
    if not old:
        return False
    names = [name for name, _, _ in new]
    last = old[-1][0]
    if last not in names:
        return False
    keep = names.index(last)
    return tuple(new[:keep]) == tuple(old[:-1]) and len(old) - 1 == keep


@dataclass
class _TagListing:
    tag: str
    entries: list[dict[str, Any]] = field(default_factory=list)


class RunIndex:
    """One run (a directory of event files): its probelens tags, read incrementally.

    Args:
        logdir: The log directory the run's name is relative to.
        path: The run directory.
    """

    def __init__(self, logdir: Path, path: Path) -> None:
        self.path = path
        self.name = run_name(logdir, path)
        self._lock = threading.Lock()
        self._acc: Any = None
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._layouts: dict[tuple[str, int, float], PngLayout] = {}
        self._images: dict[tuple[str, int], bytes] = {}
        self._summary: dict[str, Any] | None = None
        self.load_seconds = 0.0

    def _files(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        try:
            names = sorted(os.listdir(self.path))
        except OSError:
            return ()
        for name in names:
            if is_event_file(name):
                try:
                    st = os.stat(self.path / name)
                except OSError:
                    continue
                out.append((name, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def refresh(self) -> bool:
        """Read what was appended to the run's event files since the last call; True if anything changed."""
        with self._lock:
            signature = self._files()
            if signature == self._signature and self._summary is not None:
                return False
            start = time.perf_counter()
            if self._acc is None or not _only_appended(self._signature, signature):
                self._acc = load_run(self.path)  # read every file again from the start
            else:
                self._acc.Reload()  # reads on from where the last read stopped
            self._signature = signature
            self._summary = self._build()
            self.load_seconds = time.perf_counter() - start
            return True

    def summary(self) -> dict[str, Any]:
        """The run's listing (see :meth:`LogIndex.run_listing`), read again first if the files grew."""
        self.refresh()
        assert self._summary is not None
        return self._summary

    def image(self, tag: str, step: int) -> bytes | None:
        """The encoded picture of ``tag`` at ``step``, exactly as stored in the event file (``None`` if absent)."""
        self.refresh()
        with self._lock:
            return self._images.get((tag, step))

    def _build(self) -> dict[str, Any]:
        acc = self._acc
        tags = acc.Tags()
        images: dict[tuple[str, int], bytes] = {}
        grids, pictures, panels = [], [], []
        # the matrix' rows per probe set, in the order the grids show them (interleaved by class), not by index
        probes: dict[str, list[int]] = {}
        for tag in sorted(tags.get("images", [])):
            kind = classify_tag(tag)
            if kind is None:
                continue
            stage, method, layer = kind
            events = list(acc.Images(tag))
            wall = {int(e.step): float(e.wall_time) for e in events}
            listing = _TagListing(tag)
            has_cells = False
            for step, data in encoded_by_step(events):
                images[(tag, step)] = data
                key = (tag, step, wall[step])
                layout = self._layouts.get(key)
                if layout is None:
                    try:
                        layout = png_layout(data)
                    except Exception:  # not an image Pillow knows: listed, shown by the browser if it can
                        layout = PngLayout(0, 0, {}, None, {})
                    self._layouts[key] = layout
                entry: dict[str, Any] = {"step": step, "wall_time": wall[step], "w": layout.width, "h": layout.height}
                if layout.boxes:
                    has_cells = True
                    fingerprint = layout.probe or ""
                    entry["probe"] = fingerprint
                    entry["boxes"] = {str(k): list(box) for k, box in sorted(layout.boxes.items())}
                    if method != "counterfactuals":  # the matrix' rows: the grids' probe images
                        rows = probes.setdefault(fingerprint, [])
                        rows.extend(k for k in layout.boxes if k not in rows)
                if layout.predictions:
                    entry["predictions"] = {str(k): list(v) for k, v in sorted(layout.predictions.items())}
                listing.entries.append(entry)
            item = {"tag": tag, "stage": stage, "method": method, "layer": layer, "entries": listing.entries}
            if method == "counterfactuals":
                panels.append(item)
            elif has_cells:
                grids.append(item)
            else:
                pictures.append(item)
        scalars = {}
        for tag in sorted(tags.get("scalars", [])):
            bare = tag.split("/", 1)[1] if tag.startswith(_STAGES) else tag
            if bare.startswith("shortcut/"):
                by_step = {int(e.step): float(e.value) for e in acc.Scalars(tag)}
                scalars[tag] = [[s, v] for s, v in sorted(by_step.items())]
        alerts = []
        for tag in tags.get("tensors", []):
            # add_text writes "<tag>/text_summary"
            if tag.removesuffix("/text_summary").endswith(_ALERT_TEXT):
                for e in acc.Tensors(tag):
                    values = list(e.tensor_proto.string_val)
                    text = values[0].decode("utf-8", "replace") if values else ""
                    alerts.append({"tag": tag, "step": int(e.step), "text": text})
        self._images = images
        steps = sorted({e["step"] for item in grids + panels + pictures for e in item["entries"]})
        scalar_steps = sorted({s for points in scalars.values() for s, _ in points})
        return {
            "run": self.name,
            "steps": steps,
            "scalar_steps": scalar_steps,
            "grids": grids,
            "panels": panels,
            "pictures": pictures,
            "scalars": scalars,
            "alerts": sorted(alerts, key=lambda a: a["step"]),
            "probes": dict(sorted(probes.items())),
            "other_tags": {
                kind: len(values)
                for kind, values in tags.items()
                if isinstance(values, list) and values and kind in ("images", "scalars", "tensors")
            },
        }

    def has_probelens(self) -> bool:
        summary = self.summary()
        return bool(summary["grids"] or summary["panels"] or summary["pictures"] or summary["scalars"])


class LogIndex:
    """The runs under one log directory, found again at most every ``rescan_s`` seconds.

    Args:
        logdir: The directory TensorBoard was started on (``--logdir``).
        rescan_s: How long a listing of the run directories is reused before the tree is walked again.
    """

    def __init__(self, logdir: str | os.PathLike[str], rescan_s: float = 2.0) -> None:
        self.logdir = Path(logdir)
        self.rescan_s = rescan_s
        self._lock = threading.Lock()
        self._runs: dict[str, RunIndex] = {}
        self._scanned = -float("inf")

    def runs(self) -> list[RunIndex]:
        """Every run under the log directory, sorted by name."""
        with self._lock:
            if time.monotonic() - self._scanned >= self.rescan_s:
                found = find_runs(self.logdir) if self.logdir.is_dir() else []
                current = {}
                for path in found:
                    name = run_name(self.logdir, path)
                    current[name] = self._runs.get(name) or RunIndex(self.logdir, path)
                self._runs = current
                self._scanned = time.monotonic()
            return [self._runs[name] for name in sorted(self._runs)]

    def run(self, name: str) -> RunIndex | None:
        """The run called ``name`` (as :meth:`listing` names it), or ``None``."""
        for run in self.runs():
            if run.name == name:
                return run
        return None

    def listing(self) -> dict[str, Any]:
        """The runs, which of them have probelens data, and a message when there is nothing to show."""
        if not self.logdir.is_dir():
            return {
                "logdir": str(self.logdir),
                "runs": [],
                "message": f"The log directory {str(self.logdir)!r} does not exist (or is not a local folder): "
                "start TensorBoard with --logdir pointing at the folder that holds your runs "
                "(e.g. tensorboard --logdir lightning_logs).",
            }
        runs = []
        for run in self.runs():
            summary = run.summary()
            runs.append(
                {
                    "run": run.name,
                    "probelens": run.has_probelens(),
                    "grids": len(summary["grids"]),
                    "steps": len(summary["steps"]),
                    "shortcut": bool(summary["scalars"]),
                }
            )
        message = None
        if not runs:
            message = (
                f"No TensorBoard event files (events.out.tfevents.*) under {str(self.logdir)!r}. Train with a "
                "TensorBoardLogger and probelens monitors among the Trainer's callbacks, or point --logdir at the "
                "folder that holds the runs."
            )
        elif not any(r["probelens"] for r in runs):
            names = ", ".join(str(r["run"]) for r in runs[:8]) + (" ..." if len(runs) > 8 else "")
            message = (
                f"None of the {len(runs)} run(s) under {str(self.logdir)!r} ({names}) has probelens data (image tags "
                "probelens/* or scalars shortcut/*). Add GradCAMMonitor, SaliencyMonitor or ShortcutMonitor to the "
                "Trainer's callbacks with a TensorBoardLogger; they write at their first log step."
            )
        return {"logdir": str(self.logdir), "runs": runs, "message": message}
