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
(:data:`probelens.logformat.CELLS_KEY`), so per probe image and tag the export writes a GIF and a filmstrip of just that
image's cell over training, and ``index.html`` shows each probe image's methods side by side next to the scalar
curves. Only TensorBoard is needed to read the event files (no TensorFlow), and nothing here imports torch: pictures
are decoded and composed with Pillow and numpy.

The package: :mod:`~probelens.export.reading` (decoded pictures and probe-image boxes, over
:mod:`probelens.logs`), :mod:`~probelens.export.compose` (frames, GIFs, filmstrips, plots),
:mod:`~probelens.export.page` (``index.html`` from the ``page.html`` template), :mod:`~probelens.export.runs`
(:func:`export`) and :mod:`~probelens.export.cli` (:func:`main`).
"""

from probelens.export.cli import build_parser, main
from probelens.export.page import render_index
from probelens.export.results import (
    ExportError,
    ExportResult,
    ProbeImageExport,
    RunExport,
    ScalarExport,
    TagExport,
)
from probelens.export.runs import DEFAULT_OUT_NAME, export

__all__ = [
    "DEFAULT_OUT_NAME",
    "ExportError",
    "ExportResult",
    "ProbeImageExport",
    "RunExport",
    "ScalarExport",
    "TagExport",
    "build_parser",
    "export",
    "main",
    "render_index",
]
