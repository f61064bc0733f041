"""The probelens tab in real headless Chromium, inside the real TensorBoard page: the matrix shows the pictures of the
chosen step, cut out at the boxes the PNGs recorded; moving the slider (arrow keys on it, as a user does) changes
them; the second run goes beside the first; the probe-image and shortcut views follow the step.

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped with a message where no browser is installed.
"""

from __future__ import annotations

import io
import shutil
import time
import urllib.parse
from typing import Any

import pytest
from PIL import Image
from tb_client import STEPS, get

from lit import read_events
from probelens.logformat import MAPS_KEY
from probelens.render.image import cells_from_text

P = "/data/plugin/probelens"
CELL_W = 150  # dashboard.js: a matrix cell's width in CSS pixels
GRIDS = ["probelens/gradcam/model.8", "probelens/saliency/vanilla"]

# run inside TensorBoard's page: the plugin's iframe document (same origin), or null while it is not there yet
_FRAME = "(() => { const f = deepAll((e) => e.tagName === 'IFRAME')[0]; return f ? f.contentDocument : null; })()"
_CELLS = f"""(() => {{
  const d = {_FRAME};
  if (!d || !d.getElementById('probelens')) return null;
  const cells = [...d.querySelectorAll('.run-panel .matrix .cell')].map((c) => {{
    const img = c.querySelector('img');
    return {{run: c.closest('.run-panel').dataset.run, tag: c.dataset.tag, step: Number(c.dataset.step),
             probe: c.dataset.probe, index: Number(c.dataset.index), src: img.getAttribute('src'),
             left: parseFloat(img.style.left), top: parseFloat(img.style.top), width: parseFloat(img.style.width),
             loaded: img.complete && img.naturalWidth > 0, natural: img.naturalWidth,
             cropW: c.querySelector('.crop').getBoundingClientRect().width}};
  }});
  const out = d.getElementById('step-value');
  const message = d.querySelector('.message');
  return {{cells, step: out ? out.textContent : null, message: message ? message.textContent : null,
           panels: [...d.querySelectorAll('.run-panel')].map((p) => p.dataset.run)}};
}})()"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser binary; requested before the runs are trained, so a machine without one skips at once."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "headless Chromium is not installed (none of chromium, chromium-browser, google-chrome on PATH): the "
        "dashboard's browser test needs it; on Debian: apt-get update && apt-get install -y chromium"
    )


def _wait(browser: Any, expression: str, done: Any, what: str, budget_s: float = 45.0) -> Any:
    deadline = time.monotonic() + budget_s
    value = None
    while time.monotonic() < deadline:
        value = browser.evaluate(expression)
        if value is not None and done(value):
            return value
        time.sleep(0.25)
    pytest.fail(f"the dashboard did not show {what} within {budget_s:.0f} s; last seen: {str(value)[:2000]}")


def _matrix_at(step: int, run: str = "a/version_0"):
    """Done when every matrix cell of ``run`` shows step ``step`` and every picture has loaded."""

    def done(state: dict[str, Any]) -> bool:
        cells = [c for c in state["cells"] if c["run"] == run]
        return bool(cells) and state["step"] == f"step {step}" and all(c["loaded"] and c["step"] == step for c in cells)

    return done


def _expected_cells(acc: Any, step: int) -> dict[tuple[str, int], tuple[int, int, int, int]]:
    """(tag, probe index) -> the box the view crops at ``step`` (the map box where the PNG records one, else the
    cell), read from the stored PNGs (independently of the plugin)."""
    expected = {}
    for tag in GRIDS:
        (event,) = [e for e in acc.Images(tag) if e.step == step]
        with Image.open(io.BytesIO(event.encoded_image_string)) as image:
            maps = {k: tuple(box) for k, *box in cells_from_text(image.text, MAPS_KEY)}
            for k, *box in cells_from_text(image.text):
                expected[(tag, k)] = maps.get(k, tuple(box))
    return expected


def _press(browser: Any, key: str, code: int, times: int = 1) -> None:
    for _ in range(times):
        for kind in ("keyDown", "keyUp"):
            browser.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)
        time.sleep(0.15)


def _check_matrix(state: dict[str, Any], acc: Any, step: int, run: str, port: int) -> set[str]:
    cells = [c for c in state["cells"] if c["run"] == run]
    expected = _expected_cells(acc, step)
    # every (method, layer) x probe image of this step, keyed by the probe index the PNG recorded, and nothing else
    assert {(c["tag"], c["index"]) for c in cells} == set(expected)
    for c in cells:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(c["src"]).query)
        assert query["run"] == [run] and query["tag"] == [c["tag"]] and query["step"] == [str(step)], c
        x0, y0, x1, _ = expected[(c["tag"], c["index"])]
        scale = CELL_W / (x1 - x0)
        assert (c["left"], c["top"]) == (-round(x0 * scale), -round(y0 * scale)), c  # cut at this image's box
        assert abs(c["cropW"] - CELL_W) < 1
    # what the browser was given is the picture logged at this step, byte for byte
    for tag in GRIDS:
        src = next(c["src"] for c in cells if c["tag"] == tag)
        status, body, _ = get(port, f"{P}/{src.removeprefix('./')}")
        assert status == 200 and body == next(e for e in acc.Images(tag) if e.step == step).encoded_image_string
    return {c["src"] for c in cells}


def test_matrix_follows_the_slider_and_the_views_follow_the_step(chromium, two_runs, serve, shots):
    acc_a = read_events(two_runs / "a" / "version_0")
    acc_b = read_events(two_runs / "b" / "version_0")
    last = STEPS - 1
    with serve(two_runs) as port, shots.Chromium(chromium, 1500, 1100) as browser:
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/#probelens")
        state = _wait(browser, _CELLS, _matrix_at(last), f"the matrix at the last step ({last})")
        assert state["panels"] == ["a/version_0"] and state["message"] is None
        before = _check_matrix(state, acc_a, last, "a/version_0", port)

        # the slider has the keyboard: three presses of the left arrow are three logged steps back
        browser.evaluate(f"{_FRAME}.getElementById('step-slider').focus()")
        _press(browser, "ArrowLeft", 37, times=3)
        state = _wait(browser, _CELLS, _matrix_at(last - 3), f"the matrix at step {last - 3}")
        after = _check_matrix(state, acc_a, last - 3, "a/version_0", port)
        assert before.isdisjoint(after)  # every picture changed
        _press(browser, "Home", 36)
        state = _wait(browser, _CELLS, _matrix_at(0), "the matrix at step 0")
        _check_matrix(state, acc_a, 0, "a/version_0", port)
        # play steps forward on its own; pause stops it there
        browser.evaluate(f"{_FRAME}.getElementById('play').click()")
        state = _wait(browser, _CELLS, _matrix_at(1), "the matrix at step 1 after play")
        browser.evaluate(f"{_FRAME}.getElementById('play').click()")
        paused = browser.evaluate(f"{_FRAME}.getElementById('step-value').textContent")
        time.sleep(2.0)  # more than two frames of play
        assert browser.evaluate(f"{_FRAME}.getElementById('step-value').textContent") == paused
        _press(browser, "Home", 36)  # the slider kept the focus through play and pause
        state = _wait(browser, _CELLS, _matrix_at(0), "the matrix back at step 0")

        # the second run beside the first, at the same step
        browser.evaluate(
            f"(() => {{ const s = {_FRAME}.getElementById('run-right'); s.value = 'b/version_0';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        state = _wait(browser, _CELLS, _matrix_at(0, "b/version_0"), "run b beside run a")
        assert state["panels"] == ["a/version_0", "b/version_0"]
        _check_matrix(state, acc_a, 0, "a/version_0", port)
        _check_matrix(state, acc_b, 0, "b/version_0", port)

        # the shortcut view: a click on a chart's right edge moves the step there, for every view
        browser.evaluate(f"{_FRAME}.querySelector('.view-tab[data-view=shortcut]').click()")
        charts = _wait(
            browser,
            f"{_FRAME}.querySelectorAll('.run-panel[data-run=\"a/version_0\"] .chart-box').length",
            lambda n: n > 0,
            "the shortcut charts",
        )
        wanted = {t for t in acc_a.Tags()["scalars"] if t.startswith("shortcut/") and not t.endswith("_chance")}
        assert charts == len(wanted)
        browser.evaluate(
            f"(() => {{ const svg = {_FRAME}.querySelector('.chart-box svg'); const r = svg.getBoundingClientRect();"
            " svg.dispatchEvent(new MouseEvent('click', {clientX: r.right - 11, clientY: r.top + 40, bubbles: true}));"
            " })()"
        )
        panel = _wait(
            browser,
            f"[...{_FRAME}.querySelectorAll('.run-panel[data-run=\"a/version_0\"] .cf')].map((c) => c.dataset.step)",
            lambda steps: bool(steps) and set(steps) == {str(last)},
            f"the counterfactual panel at step {last} after the click",
        )
        assert len(panel) == len(_expected_cells(acc_a, last)) // len(GRIDS)
        # the probe-image view at that step: each grid's filmstrip of one image over every logged step
        browser.evaluate(f"{_FRAME}.querySelector('.view-tab[data-view=image]').click()")
        strips = _wait(
            browser,
            f"""[...{_FRAME}.querySelectorAll('.run-panel[data-run="a/version_0"] tr.strip')].map((r) => ({{
                tag: r.dataset.tag, steps: [...r.querySelectorAll('.cell')].map((c) => Number(c.dataset.step)),
                current: r.querySelector('td.current .cell') ? Number(r.querySelector('td.current .cell').dataset.step)
                  : null}}))""",
            lambda rows: len(rows) == len(GRIDS),
            "the probe image's filmstrips",
        )
        assert sorted(r["tag"] for r in strips) == GRIDS
        assert all(r["steps"] == list(range(STEPS)) and r["current"] == last for r in strips)
