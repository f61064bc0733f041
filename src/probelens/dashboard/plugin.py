"""The TensorBoard plugin: a "probelens" tab served by TensorBoard itself (entry point ``tensorboard_plugins``).

Routes, under ``/data/plugin/probelens/``:

- ``index.js``, ``static/<file>``: the frontend (plain ES modules and CSS, no build step, nothing from other hosts);
- ``runs``: the runs under ``--logdir``, which have probelens data, how far indexing got, and a message when none
  has (public contract, ``docs/dashboard.md``);
- ``run?run=<name>``: one run's listing: every grid tag with every logged step, each step's probe-image boxes,
  probe fingerprint and captions; the counterfactual panels; other pictures; the ``shortcut/*`` scalars and alerts;
  StrategyMonitor's scalars and pictures per class (``discovery``); notices about damaged files (public contract,
  ``docs/dashboard.md``); a run whose folder went away answers 410;
- ``image?run=<name>&tag=<tag>&step=<step>``: one logged picture, the bytes exactly as stored in the event file.

The plugin reads the event files itself (:mod:`probelens.dashboard.index`), so TensorBoard's
``--samples_per_plugin`` does not limit it: every logged step is listed. A background thread follows the files by
byte offset; every request is answered from the index as it stands, never after a read of the files. The environment
variable ``PROBELENS_DASHBOARD_READ_MIB_S`` caps how fast that thread reads (MiB per second; unset: no cap), for log
directories on storage shared with others.
"""

from __future__ import annotations

import json
import math
import os
import sys
from importlib import resources
from typing import Any

from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from probelens.dashboard.index import LogIndex, finite

__all__ = ["PLUGIN_NAME", "READ_RATE_ENV", "ProbelensPlugin", "read_rate_from_env"]

PLUGIN_NAME = "probelens"
_STATIC = {
    "index.js": "text/javascript",
    "dashboard.js": "text/javascript",
    "charts.js": "text/javascript",
    "style.css": "text/css",
}
_IMAGE_TYPES = {b"\x89PNG": "image/png", b"GIF8": "image/gif", b"\xff\xd8\xff": "image/jpeg"}
_IMAGE_CACHE_S = 24 * 3600  # the frontend adds the picture's wall time to the URL, so a rewritten step is fetched anew


READ_RATE_ENV = "PROBELENS_DASHBOARD_READ_MIB_S"


def read_rate_from_env() -> float | None:
    """The read rate cap in bytes per second that ``PROBELENS_DASHBOARD_READ_MIB_S`` sets (MiB per second), ``None``
    when it is unset or empty.

    Raises:
        ValueError: The variable holds something else than a positive number.
    """
    raw = os.environ.get(READ_RATE_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{READ_RATE_ENV}={raw!r}: expected a positive number of MiB per second (e.g. 20), or leave it unset for "
            "no cap on how fast the probelens dashboard reads the event files"
        )
    return value * (1 << 20)


def _static(name: str) -> bytes:
    return resources.files("probelens.dashboard").joinpath("static").joinpath(name).read_bytes()


class ProbelensPlugin(base_plugin.TBPlugin):
    """Every probe image, method, layer and step of probelens' logs, the shortcut curves and the strategy discovery per
    class, in one tab.

    Args:
        context: TensorBoard's ``TBContext``; only ``context.logdir`` is used.
    """

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._logdir = getattr(context, "logdir", None) or ""
        try:
            read_rate = read_rate_from_env()
        except ValueError as err:
            # TensorBoard would start without the tab if this raised: keep the tab, say why the cap is not applied
            print(f"probelens dashboard: {err}; reading without a cap", file=sys.stderr, flush=True)
            read_rate = None
        self._index = LogIndex(self._logdir, read_rate=read_rate) if self._logdir else None
        if self._index is not None:
            # index the logs while TensorBoard starts, and follow them from then on
            self._index.start()

    def get_plugin_apps(self) -> dict[str, Any]:
        apps: dict[str, Any] = {"/index.js": self._serve_index_js, "/runs": self._serve_runs, "/run": self._serve_run}
        apps["/image"] = self._serve_image
        apps["/static/*"] = self._serve_static
        return apps

    def is_active(self) -> bool:
        """Active when a run under ``--logdir`` has probelens data (until the first read is done: when there are event
        files at all); otherwise the tab is listed among TensorBoard's inactive dashboards, where it says why."""
        if self._index is None:
            return False
        runs = self._index.runs()
        if any(run.has_probelens() for run in runs):
            return True
        return any(not run.indexed for run in runs)  # not read yet: maybe

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="probelens", disable_reload=False)

    # ------------------------------------------------------------------ routes
    def _json(self, request: Any, payload: Any, code: int = 200) -> Any:
        body = payload if isinstance(payload, bytes) else json.dumps(finite(payload), separators=(",", ":"))
        return http_util.Respond(request, body, "application/json", code=code)

    def _error(self, request: Any, message: str, code: int = 400) -> Any:
        return self._json(request, {"error": message}, code=code)

    @wrappers.Request.application  # type: ignore[arg-type]
    def _serve_index_js(self, request: Any) -> Any:
        return http_util.Respond(request, _static("index.js"), "text/javascript")

    @wrappers.Request.application  # type: ignore[arg-type]
    def _serve_static(self, request: Any) -> Any:
        name = request.path.rsplit("/", 1)[-1]
        if name not in _STATIC:
            return self._error(request, f"no static file {name!r}; there are {', '.join(sorted(_STATIC))}", 404)
        return http_util.Respond(request, _static(name), _STATIC[name])

    @wrappers.Request.application  # type: ignore[arg-type]
    def _serve_runs(self, request: Any) -> Any:
        if self._index is None:
            return self._json(
                request,
                {
                    "logdir": "",
                    "runs": [],
                    "message": "TensorBoard was started without --logdir (e.g. with --logdir_spec), and the probelens "
                    "dashboard reads the event files of --logdir: start it as tensorboard --logdir <folder of runs>.",
                },
            )
        return self._json(request, self._index.listing())

    def _run_or_error(self, request: Any) -> Any:
        name = request.args.get("run")
        if self._index is None:
            return None, self._error(request, "TensorBoard was started without --logdir", 404)
        if not name:
            return None, self._error(request, "the run= parameter is missing (one of the names /runs lists)")
        run = self._index.run(name)
        if run is None and self._index.was_deleted(name):
            return None, self._error(
                request, f"the run {name!r} was deleted from {self._logdir!r} (or moved) while it was shown", 410
            )
        if run is None:
            known = ", ".join(r.name for r in self._index.runs()) or "none"
            return None, self._error(request, f"no run {name!r} under {self._logdir!r}; the runs are: {known}", 404)
        return run, None

    @wrappers.Request.application  # type: ignore[arg-type]
    def _serve_run(self, request: Any) -> Any:
        run, error = self._run_or_error(request)
        if error is not None:
            return error
        return self._json(request, run.summary_json())

    @wrappers.Request.application  # type: ignore[arg-type]
    def _serve_image(self, request: Any) -> Any:
        run, error = self._run_or_error(request)
        if error is not None:
            return error
        tag, step = request.args.get("tag"), request.args.get("step")
        if not tag or step is None:
            return self._error(request, "image needs run=, tag= and step= (as /run lists them)")
        try:
            step_number = int(step)
        except ValueError:
            return self._error(request, f"step must be an integer, got {step!r}")
        try:
            data = run.image(tag, step_number)
        except OSError as err:
            return self._error(request, f"run {run.name!r}, tag {tag!r}, step {step_number}: {err}", 410)
        if data is None:
            return self._error(request, f"run {run.name!r} has no picture for tag {tag!r} at step {step_number}", 404)
        kind = next((t for magic, t in _IMAGE_TYPES.items() if data.startswith(magic)), "application/octet-stream")
        return http_util.Respond(request, data, kind, expires=_IMAGE_CACHE_S)
