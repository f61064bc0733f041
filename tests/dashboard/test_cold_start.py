"""A cold start on a large run: the real ``tensorboard`` is started on a log directory that takes a while to index, and
the probelens tab, opened at once in headless Chromium, shows how far indexing got and the steps read so far, then the
whole run. The routes answer while the index is still being built.

Reading a few tens of MiB takes well under a second on a local disk, faster than TensorBoard starts, so the server
runs with ``PROBELENS_DASHBOARD_READ_MIB_S=1`` (the documented cap on how fast the dashboard reads, for shared
storage): indexing the ~24 MiB below then takes at least 20 s whatever the machine, a window that does not depend on
how fast the machine is. Nothing here is timed; every wait is bounded.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pytest
import torch
from tb_client import get_json
from test_browser import _FRAME, chromium  # noqa: F401 - the fixture

from probelens.dashboard.index import LogIndex
from probelens.dashboard.plugin import READ_RATE_ENV, read_rate_from_env
from probelens.logformat import GridFacts
from probelens.render.image import encode_png
from probelens.writing.event_file import EventFileWriter

P = "/data/plugin/probelens"
TAGS = ["probelens/gradcam/net.0.0", "probelens/gradcam/net.0.4", "probelens/saliency/vanilla"]
STEPS = 40
SIDE = 256  # 4 x 4 probe images of 64 px: ~195 KiB of noise per picture, 120 pictures


def test_read_rate_from_env(monkeypatch):
    monkeypatch.delenv(READ_RATE_ENV, raising=False)
    assert read_rate_from_env() is None
    monkeypatch.setenv(READ_RATE_ENV, " 2.5 ")
    assert read_rate_from_env() == 2.5 * 2**20
    for bad in ("fast", "0", "-1", "nan", "inf"):
        monkeypatch.setenv(READ_RATE_ENV, bad)
        with pytest.raises(ValueError, match=rf"{READ_RATE_ENV}='{re.escape(bad)}': expected a positive number"):
            read_rate_from_env()
    with pytest.raises(ValueError, match="read_rate must be a positive number of bytes per second"):
        LogIndex(".", read_rate=0.0)


def test_the_plugin_takes_the_cap_from_the_environment_and_says_when_it_cannot(tmp_path, monkeypatch, capsys):
    from tensorboard.plugins import base_plugin

    from probelens.dashboard.plugin import ProbelensPlugin

    for value, rate in (("2", 2 * 2**20), ("fast", None), ("", None)):
        monkeypatch.setenv(READ_RATE_ENV, value)
        plugin = ProbelensPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
        try:
            assert plugin._index is not None and plugin._index.read_rate == rate
        finally:
            plugin._index.stop()
        err = capsys.readouterr().err
        if value == "fast":  # the tab stays; the console says why there is no cap
            assert f"probelens dashboard: {READ_RATE_ENV}='fast': expected a positive number" in err
            assert "reading without a cap" in err
        else:
            assert READ_RATE_ENV not in err


@pytest.fixture(scope="module")
def large_run(tmp_path_factory):
    """``logs/big``: 40 steps of three 256 x 256 grids of incompressible noise (~24 MiB), 16 probe images each."""
    logdir = tmp_path_factory.mktemp("cold") / "logs"
    rng = np.random.default_rng(0)
    tile = SIDE // 4
    cells = [(k, (k % 4) * tile, (k // 4) * tile, (k % 4 + 1) * tile, (k // 4 + 1) * tile) for k in range(16)]
    with EventFileWriter(logdir / "big") as writer:
        for step in range(STEPS):
            for tag in TAGS:
                pixels = torch.from_numpy(rng.integers(0, 256, (3, SIDE, SIDE), dtype=np.uint8))
                preds = [(k, "snow", "desert" if (k + step) % 3 else "snow", 0.6) for k in range(16)]
                png = encode_png(pixels, text=GridFacts(tuple(cells), "fp", tuple(preds)).text())
                writer.add_image(tag, png, SIDE, SIDE, step)
            writer.add_scalar("shortcut/score", step / STEPS, step)
    return logdir


_STATE = f"""(() => {{
  const d = {_FRAME};
  const root = d && d.getElementById('probelens');
  if (!root) return null;
  const message = root.querySelector('#progress');
  const panel = root.querySelector('.run-panel');
  const cells = panel ? [...panel.querySelectorAll('.matrix .cell img')] : [];
  const out = d.getElementById('step-value');
  return {{
    message: message ? message.textContent : null,
    notices: panel ? [...panel.querySelectorAll('.notice.progress')].map((n) => n.textContent) : [],
    cells: cells.length,
    loaded: cells.filter((i) => i.complete && i.naturalWidth > 0).length,
    steps: [...new Set(cells.map((i) => i.closest('.cell').dataset.step))],
    step: out ? out.textContent : null,
  }};
}})()"""
_READ = re.compile(r"Indexing (?:this run|the logs): ([\d.]+) of ([\d.]+) MB read \((\d+)%\)")


@pytest.mark.integration
def test_cold_start_shows_progress_then_the_run(chromium, large_run, serve, shots, monkeypatch):  # noqa: F811
    total = sum(p.stat().st_size for p in (large_run / "big").iterdir())
    assert total > 20 * 2**20
    monkeypatch.setenv(READ_RATE_ENV, "1")  # the server inherits it: at most 1 MiB/s, so >= 20 s of indexing
    with serve(large_run) as port, shots.Chromium(chromium, 1500, 1100) as browser:
        # the routes answer while the run is being indexed: listed at once, with how far indexing got
        listing = get_json(port, f"{P}/runs")
        assert not listing["indexing"]["done"], f"indexed before the first request: {listing}"
        (run,) = listing["runs"]
        assert run["run"] == "big" and run["indexed"] is False
        assert 0 <= run["progress"]["bytes_read"] < run["progress"]["bytes_total"] == total
        summary = get_json(port, f"{P}/run", run="big")
        assert summary["indexed"] is False and len(summary["steps"]) < STEPS

        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/#probelens")
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = browser.evaluate(_STATE)
            if state is not None:
                seen.append(state)
                done = (
                    not state["notices"]
                    and state["step"] == f"step {STEPS - 1}"
                    and state["cells"] == 16 * len(TAGS)
                    and state["loaded"] == state["cells"]
                )
                if done:
                    break
            time.sleep(0.25)
        else:
            pytest.fail(f"the whole run was not shown within 120 s; last seen: {seen[-1:]}")

        # while indexing: progress in the run's panel, growing, beside the steps read so far
        progress = [
            (float(m[1]), float(m[2]), int(m[3])) for s in seen for text in s["notices"] if (m := _READ.search(text))
        ]
        assert progress, f"no progress shown while indexing; seen: {seen[:3]}"
        assert all(read < of and abs(of - total / 2**20) <= 0.051 for read, of, _ in progress), progress
        assert [r for r, _, _ in progress] == sorted(r for r, _, _ in progress)  # never backwards
        assert len({r for r, _, _ in progress}) >= 2, progress  # it moved while the tab was open
        partial = [s for s in seen if s["notices"] and s["cells"] and s["loaded"] == s["cells"]]
        assert partial, "no step was shown while the run was being indexed"
        assert any(s["step"] != f"step {STEPS - 1}" for s in partial)  # the steps read so far, before the last
        # then the whole run, and the listing says so
        assert seen[-1]["steps"] == [str(STEPS - 1)]
        listing = get_json(port, f"{P}/runs")
        assert listing["indexing"]["done"] and listing["runs"][0]["steps"] == STEPS
