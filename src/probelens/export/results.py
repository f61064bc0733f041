"""What an export wrote: one record per run, image tag, probe image and scalar plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ExportError", "ExportResult", "ProbeImageExport", "RunExport", "ScalarExport", "TagExport"]


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
        skipped: One line per logged picture left out (too large to decode safely, or not decodable), naming its tag
            and step; the export carries on without it.
    """

    name: str
    path: Path
    images: list[TagExport] = field(default_factory=list)
    scalars: list[ScalarExport] = field(default_factory=list)
    other_scalars: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    """Everything :func:`probelens.export.export` wrote.

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
