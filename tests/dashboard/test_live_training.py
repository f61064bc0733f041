"""The dashboard while runs are still training: a subprocess appends a real run's records step by step
(``replay.py``) while the real ``tensorboard`` serves the folder. Through the routes and in headless Chromium: a new
step appears, a new run appears, a deleted run, a truncated file, a model gone NaN. Every wait is bounded; how fast
things appear is measured by ``benchmarks/dashboard_bench.py``, not asserted here."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from tb_client import STEPS, get, get_json
from test_browser import _FRAME, _wait, chromium  # noqa: F401 - the fixture

P = "/data/plugin/probelens"
GRID = "probelens/gradcam/model.8"
pytestmark = pytest.mark.integration


def _strict_json(body: bytes) -> Any:
    """JSON as a browser parses it: a bare NaN or Infinity fails."""

    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(body, parse_constant=refuse)


def _until(what: str, check: Any, budget_s: float = 30.0) -> Any:
    deadline = time.monotonic() + budget_s
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {budget_s:.0f} s; last seen: {str(value)[:1500]}")


def _steps(port: int, run: str) -> list[int]:
    status, body, _ = get(port, f"{P}/run", run=run)
    return _strict_json(body)["steps"] if status == 200 else []


def _truncated_copy(source: Path, target: Path) -> tuple[Path, str, int]:
    """A copy of ``source`` (moved into place whole) whose picture file is cut in the middle of its last picture's
    record; returns the cut file, and the tag and step of the picture cut."""
    from replay import records
    from tensorboard.compat.proto import event_pb2

    staging = target.parent.parent / f"staging-{target.name}"
    shutil.copytree(source, staging)
    pictures = max(staging.glob("*tfevents*"), key=lambda p: p.stat().st_size)
    offset, cut = 0, None
    for step, record in records(pictures):
        event = event_pb2.Event.FromString(record[12:-4])
        images = [v.tag for v in event.summary.value if v.HasField("image")]
        if images:
            cut = (offset + len(record) // 2, images[0], step)
        offset += len(record)
    assert cut is not None
    pictures.write_bytes(pictures.read_bytes()[: cut[0]])
    staging.rename(target)
    return target / pictures.name, cut[1], cut[2]


def test_routes_follow_runs_while_they_train(two_runs, tmp_path, serve, replay):
    logdir = tmp_path / "live"
    a = replay(two_runs / "a" / "version_0", logdir / "a")
    a.upto(3)
    with serve(logdir) as port:
        _until("run a listed with steps 0-3", lambda: _steps(port, "a") == [0, 1, 2, 3])
        # a new step, while the run trains
        a.upto(7)
        _until("steps 4-7 of run a", lambda: _steps(port, "a") == list(range(8)))
        status, body, _ = get(port, f"{P}/image", run="a", tag=GRID, step=7)
        assert status == 200 and body.startswith(b"\x89PNG")

        # a new run appears without a restart
        b = replay(two_runs / "b" / "version_0", logdir / "b")
        b.upto(1)
        _until("run b in /runs", lambda: "b" in [r["run"] for r in get_json(port, f"{P}/runs")["runs"]])
        _until("run b's steps", lambda: _steps(port, "b") == [0, 1])

        # the model went NaN: the listing is still JSON, the values null
        for value, step in (("nan", 2), ("inf", 3), ("-inf", 4)):
            b.send(f"scalar shortcut/score {value} {step}")

        def nan_listed() -> Any:
            status, body, _ = get(port, f"{P}/run", run="b")
            points = dict(map(tuple, _strict_json(body)["scalars"].get("shortcut/score", [])))
            return status == 200 and all(points.get(s, "missing") is None for s in (2, 3, 4))

        _until("the NaN scores as null", nan_listed)
        _strict_json(get(port, f"{P}/runs")[1])

        # a truncated file: the steps before the cut are listed, the panel's listing says what was lost
        cut, cut_tag, cut_step = _truncated_copy(two_runs / "a" / "version_0", logdir / "cut")

        def notice() -> Any:
            status, body, _ = get(port, f"{P}/run", run="cut")
            summary = _strict_json(body) if status == 200 else {}
            return [n for n in summary.get("notices", []) if cut.name in n and "incomplete record" in n]

        _until("a notice about the truncated file", notice)
        summary = get_json(port, f"{P}/run", run="cut")
        (item,) = [i for i in summary["grids"] + summary["panels"] + summary["pictures"] if i["tag"] == cut_tag]
        assert cut_step not in [e["step"] for e in item["entries"]]  # the picture in the lost bytes
        assert item["entries"] and all(e["step"] < cut_step for e in item["entries"])  # the ones before it stay

        # a deleted run: gone from /runs, its listing says so (410), the others carry on
        b.close()
        shutil.rmtree(logdir / "b")
        _until("run b gone from /runs", lambda: "b" not in [r["run"] for r in get_json(port, f"{P}/runs")["runs"]])
        status, body, _ = get(port, f"{P}/run", run="b")
        assert status == 410 and "was deleted" in json.loads(body)["error"]
        a.upto(STEPS)
        _until("run a to the end", lambda: _steps(port, "a") == list(range(STEPS)))


_PANELS = f"""(() => {{
  const d = {_FRAME};
  if (!d || !d.getElementById('probelens')) return null;
  return {{
    toolbar: !!d.querySelector('header.toolbar'),
    step: d.getElementById('step-value') ? d.getElementById('step-value').textContent : null,
    runs: [...d.querySelectorAll('#run-left option')].map((o) => o.value),
    panels: [...d.querySelectorAll('.run-panel')].map((p) => ({{
      run: p.dataset.run,
      notices: [...p.querySelectorAll('.notice')].map((n) => n.className + ': ' + n.textContent),
      cells: p.querySelectorAll('.matrix .cell img').length,
    }})),
  }};
}})()"""


def _select(browser: Any, which: str, run: str) -> None:
    browser.evaluate(
        f"(() => {{ const s = {_FRAME}.getElementById('{which}'); s.value = {json.dumps(run)}; "
        "s.dispatchEvent(new Event('change')); })()"
    )


def test_open_tab_follows_runs_while_they_train(chromium, two_runs, tmp_path, serve, replay, shots):  # noqa: F811
    logdir = tmp_path / "live"
    a = replay(two_runs / "a" / "version_0", logdir / "a")
    a.upto(2)
    with serve(logdir) as port, shots.Chromium(chromium, 1500, 1100) as browser:
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/#probelens")
        _wait(browser, _PANELS, lambda s: s["step"] == "step 2" and s["panels"][0]["cells"] > 0, "run a at step 2")

        # a new step: the open tab, following the newest step, moves on to it
        a.upto(5)
        _wait(browser, _PANELS, lambda s: s["step"] == "step 5", "the new step 5 without a reload")

        # a new run joins the selector
        b = replay(two_runs / "b" / "version_0", logdir / "b")
        b.upto(3)
        _wait(browser, _PANELS, lambda s: s["runs"] == ["a", "b"], "run b in the run selector")

        # a NaN model: run b's listing holds null scores; its panel still draws its cells
        b.send("scalar shortcut/score nan 3")
        _select(browser, "run-right", "b")
        _wait(
            browser,
            _PANELS,
            lambda s: [p["run"] for p in s["panels"]] == ["a", "b"] and s["panels"][1]["cells"] > 0,
            "run b beside run a",
        )
        browser.evaluate(f"{_FRAME}.querySelector('.view-tab[data-view=shortcut]').click()")
        _wait(
            browser,
            f"(() => {{ const d = {_FRAME}; return [...d.querySelectorAll('.run-panel[data-run=b] svg')].length; }})()",
            lambda n: n > 0,
            "run b's shortcut curves despite the NaN score",
        )
        browser.evaluate(f"{_FRAME}.querySelector('.view-tab[data-view=matrix]').click()")

        # the run beside is deleted: a notice in its panel only, the toolbar and run a stay
        b.close()
        shutil.rmtree(logdir / "b")
        state = _wait(
            browser,
            _PANELS,
            lambda s: len(s["panels"]) == 2 and any("was deleted" in n for n in s["panels"][1]["notices"]),
            "a notice in the deleted run's panel",
        )
        assert state["toolbar"] and state["panels"][0]["run"] == "a" and not state["panels"][0]["notices"]
        assert state["panels"][0]["cells"] > 0

        # a truncated file: a notice in that run's panel
        cut, _, _ = _truncated_copy(two_runs / "a" / "version_0", logdir / "cut")
        _wait(browser, _PANELS, lambda s: "cut" in s["runs"], "the truncated run in the selector")
        _select(browser, "run-right", "cut")
        state = _wait(
            browser,
            _PANELS,
            lambda s: (
                len(s["panels"]) == 2
                and s["panels"][1]["run"] == "cut"
                and any(cut.name in n and "incomplete record" in n for n in s["panels"][1]["notices"])
            ),
            "a notice about the truncated file in its panel",
        )
        assert state["toolbar"] and not state["panels"][0]["notices"]
