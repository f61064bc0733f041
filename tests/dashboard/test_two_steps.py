"""Two steps side by side: the matrix at the slider's step beside another (the first logged step, the step before, or
one chosen), per probe image keyed by its probe set and index, with what the two colour scales allow; row filters
over the two steps, click to enlarge both, a run beside aligned, and a run that is still training. In the real
``tensorboard`` and headless Chromium, on event files written by probelens' own writer (and a replayed real run)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from tb_client import get_json, wait_indexed
from test_browser import _FRAME, _wait, chromium  # noqa: F401 - the fixture

from probelens.logformat import GridFacts
from probelens.render.image import encode_png
from probelens.writing.event_file import EventFileWriter

P = "/data/plugin/probelens"
CELL_W = 150  # dashboard.js: a matrix cell's width in CSS pixels
TILE, BAND = 16, 6  # a square map over a caption band
TAGS = ["probelens/gradcam/net.0.0", "probelens/gradcam/net.0.4", "probelens/saliency/vanilla"]
FIXED = {"colormap": "jet", "mode": "fixed", "vmin": 0.0, "vmax": 2.5}
PER_IMAGE = {"colormap": "jet", "mode": "per_image"}
pytestmark = pytest.mark.integration


def _scale(tag: str, step: int) -> dict | None:
    if tag == TAGS[0]:  # a fixed scale whose top moves at step 3
        return FIXED if step < 3 else {**FIXED, "vmax": 4.0}
    return PER_IMAGE if tag == TAGS[2] else None  # net.0.4 records none


def _grid(step: int, fingerprint: str, scale: dict | None, swapped: bool = False) -> bytes:
    """Two probe images' cells side by side (probe image 1 left of 0 when ``swapped``); image 0 ('snow') is
    misclassified throughout, image 1 ('desert') from step 2 on."""
    image = torch.zeros(3, TILE + BAND, 2 * TILE, dtype=torch.uint8)
    image[0, :TILE] = 30 * (step + 1)  # each step its own shade
    left, right = (TILE, 0) if swapped else (0, TILE)
    cells = GridFacts(
        ((0, left, 0, left + TILE, TILE + BAND), (1, right, 0, right + TILE, TILE + BAND)),
        fingerprint,
        ((0, "snow", "desert", 0.7), (1, "desert", "desert" if step < 2 else "snow", 0.9)),
        scale=scale,
    )
    return encode_png(image, text=cells.text())


@pytest.fixture(scope="module")
def steps_logs(tmp_path_factory):
    """``run``: steps 0-3, the probe images' cells swap places at step 3; ``reprobe``: another probe set from step 2
    on; ``zlong``: twice as many steps as ``run``, to align with it."""
    logdir = tmp_path_factory.mktemp("steps") / "logs"
    with EventFileWriter(logdir / "run") as writer:
        for step in range(4):
            for tag in TAGS:
                png = _grid(step, "fp", _scale(tag, step), swapped=step == 3)
                writer.add_image(tag, png, TILE + BAND, 2 * TILE, step)
    with EventFileWriter(logdir / "reprobe") as writer:
        for step in range(3):
            writer.add_image(TAGS[0], _grid(step, "fpX" if step < 2 else "fpY", FIXED), TILE + BAND, 2 * TILE, step)
    with EventFileWriter(logdir / "zlong") as writer:
        for step in range(8):
            writer.add_image(TAGS[0], _grid(step, "fp", FIXED), TILE + BAND, 2 * TILE, step)
    return logdir


_STEPS = """(() => {
  const d = %FRAME%;
  if (!d || !d.querySelector('table.two-steps')) return null;
  const panels = [...d.querySelectorAll('.run-panel')].map((p) => ({
    run: p.dataset.run,
    title: p.querySelector('h2').textContent,
    heads: [...p.querySelectorAll('.two-steps thead th[data-tag]')].map((t) => ({
      tag: t.dataset.tag, scale: t.querySelector('.scale-pair').textContent,
      bars: t.querySelectorAll('.colorbar').length, steps: t.querySelector('.pair-steps').textContent})),
    rows: [...p.querySelectorAll('.two-steps tbody tr[data-probe]')].map((r) => ({
      probe: r.dataset.probe,
      head: r.querySelector('th.rowhead').textContent,
      cells: [...r.querySelectorAll(':scope > td')].map((td) => {
        const c = td.querySelector('.cell');
        if (!c) return {empty: td.textContent};
        const img = c.querySelector('img');
        return {side: c.dataset.side, tag: c.dataset.tag, step: Number(c.dataset.step),
                probe: c.dataset.probe + ':' + c.dataset.index, left: parseFloat(img.style.left),
                src: img.getAttribute('src'), loaded: img.complete && img.naturalWidth > 0,
                slider: td.classList.contains('slider-step')};
      }),
    })),
  }));
  const a = d.getElementById('step-a');
  return {step: d.getElementById('step-value').textContent, a: a ? a.value : null,
          options: a ? [...a.options].map((o) => o.value) : [], panels};
})()""".replace("%FRAME%", _FRAME)


def _select(browser: Any, which: str, value: str) -> None:
    browser.evaluate(
        f"(() => {{ const s = {_FRAME}.getElementById('{which}'); s.value = {json.dumps(value)}; "
        "s.dispatchEvent(new Event('change')); })()"
    )


def _slide(browser: Any, index: int) -> None:
    browser.evaluate(
        f"(() => {{ const s = {_FRAME}.getElementById('step-slider'); s.value = '{index}'; "
        "s.dispatchEvent(new Event('input')); })()"
    )


def _pairs(state: dict[str, Any], run: str) -> dict[str, list[tuple[Any, ...]]]:
    """Per row (probe set:index), its cells in column order: (side, tag, step, the probe image the cell shows, left
    offset of the crop) or ('-',) where empty."""
    panels = [p for p in state["panels"] if p["run"] == run]
    if not panels:
        return {}
    return {
        r["probe"]: [
            ("-",) if "empty" in c else (c["side"], c["tag"], c["step"], c["probe"], c["left"]) for c in r["cells"]
        ]
        for r in panels[0]["rows"]
    }


def _expect(rows: list[str], early: int, late: int, swapped_at: int = 3) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``run``: per column the earlier step's cell, then the later one's, each cut at the box its own
    picture recorded for that probe image (probe image 0 sits right of 1 at step 3)."""

    def left(index: int, step: int) -> float:
        x0 = (TILE if index == 0 else 0) if step >= swapped_at else (0 if index == 0 else TILE)
        return -round(x0 * CELL_W / TILE) + 0.0

    out = {}
    for key in rows:
        index = int(key.split(":")[1])
        out[key] = [
            (side, tag, step, key, left(index, step))
            for tag in TAGS
            for side, step in (("earlier", early), ("later", late))
        ]
    return out


def _showing(run: str, expected: dict[str, list[tuple[Any, ...]]]):
    def done(state: dict[str, Any]) -> bool:
        if _pairs(state, run) != expected:
            return False
        (panel,) = [p for p in state["panels"] if p["run"] == run]
        return all(c.get("loaded", True) for r in panel["rows"] for c in r["cells"])

    return done


def test_two_steps_side_by_side(chromium, steps_logs, serve, shots):  # noqa: F811
    rows = ["fp:0", "fp:1"]
    with serve(steps_logs) as port, shots.Chromium(chromium, 1600, 1100) as browser:
        wait_indexed(port)
        assert [g["tag"] for g in get_json(port, f"{P}/run", run="run")["grids"]] == TAGS
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/#probelens")
        _wait(
            browser,
            f"(() => {{ const d = {_FRAME}; return d && d.querySelector('.view-tab[data-view=steps]') ? 1 : null; }})"
            "()",
            bool,
            "the view tabs",
        )
        browser.evaluate(f"{_FRAME}.querySelector('.view-tab[data-view=steps]').click()")
        _select(browser, "run-left", "run")  # the first run listed is 'reprobe'; the step stays where it was (2)
        _wait(browser, _STEPS, lambda s: s["panels"][0]["run"] == "run", "run 'run'")
        _slide(browser, 3)
        # by default the first logged step beside the slider's (the last): every cell keyed by its probe image, cut at
        # the box its own picture recorded (at step 3 image 0 sits on the right)
        state = _wait(browser, _STEPS, _showing("run", _expect(rows, 0, 3)), "steps 0 and 3 side by side")
        assert state["a"] == "first" and state["step"] == "step 3"
        assert state["options"] == ["first", "before", "0", "1", "2", "3"]
        (panel,) = state["panels"]
        heads = {h["tag"]: h for h in panel["heads"]}
        assert heads[TAGS[0]]["bars"] == 2 and "different scales at the two steps" in heads[TAGS[0]]["scale"]
        assert "fixed scale 0 to 2.5" in heads[TAGS[0]]["scale"] and "fixed scale 0 to 4" in heads[TAGS[0]]["scale"]
        assert heads[TAGS[1]]["scale"] == "colour scale not recorded" and heads[TAGS[1]]["bars"] == 0
        assert heads[TAGS[2]]["bars"] == 1
        assert "per image" in heads[TAGS[2]]["scale"] and "not how bright" in heads[TAGS[2]]["scale"]
        assert all(h["steps"] == "step 0step 3" for h in panel["heads"])
        # the slider's step is the outlined one
        assert all(c["slider"] == (c["side"] == "later") for r in panel["rows"] for c in r["cells"])
        # the picture of the step each cell says, from the run it is in
        cells = [c for r in panel["rows"] for c in r["cells"]]
        assert all("run=run" in c["src"] and f"step={c['step']}&" in c["src"] for c in cells)

        # the slider moves its step; the other stays; at step 2 net.0.0 shares its fixed scale with step 0
        _slide(browser, 2)
        state = _wait(browser, _STEPS, _showing("run", _expect(rows, 0, 2)), "steps 0 and 2 side by side")
        heads = {h["tag"]: h for h in state["panels"][0]["heads"]}
        assert (
            heads[TAGS[0]]["bars"] == 1
            and "the same scale at both steps: brightness can be compared" in (heads[TAGS[0]]["scale"])
        )
        # the captions of both steps in the row header, the change marked
        head = {r["probe"]: r["head"] for r in state["panels"][0]["rows"]}
        assert "true: desert" in head["fp:1"] and "step 0: desert 0.90" in head["fp:1"]
        assert "step 2: \u25b2 snow 0.90" in head["fp:1"] and "\u25b2" not in head["fp:0"]

        # row filters over the two steps
        visible = f"[...{_FRAME}.querySelectorAll('.two-steps tbody tr[data-probe]')].map((r) => r.dataset.probe)"
        for value, expected in (("between", ["fp:1"]), ("wrong-other", ["fp:0"]), ("wrong", rows), ("all", rows)):
            _select(browser, "row-filter", value)
            _wait(browser, visible, lambda r, e=expected: sorted(r) == e, f"rows {value}: {expected}")

        # the step before the slider's; a chosen step after it goes to the right and the slider's to the left
        _select(browser, "step-a", "before")
        _wait(browser, _STEPS, _showing("run", _expect(rows, 1, 2)), "steps 1 and 2 (the step before)")
        _select(browser, "step-a", "3")
        state = _wait(browser, _STEPS, _showing("run", _expect(rows, 2, 3)), "steps 2 and 3 (step 3 chosen)")
        assert state["a"] == "3"
        assert all(c["slider"] == (c["side"] == "earlier") for r in state["panels"][0]["rows"] for c in r["cells"])

        # a click enlarges the map at both steps
        browser.evaluate(f"{_FRAME}.querySelector('.two-steps .cell').click()")
        shots_ = _wait(
            browser,
            f"[...{_FRAME}.querySelectorAll('.lightbox figure')].map((f) => [Number(f.dataset.step), "
            "f.querySelector('.crop').getBoundingClientRect().width])",
            lambda f: len(f) == 2,
            "both steps enlarged",
        )
        assert [s for s, _ in shots_] == [2, 3] and all(w > CELL_W for _, w in shots_)
        browser.evaluate(f"{_FRAME}.querySelector('.lightbox').click()")

        # another probe set from step 2 on: its rows are never paired with the earlier set's images at the same index
        _select(browser, "run-left", "reprobe")
        _select(browser, "step-a", "first")
        state = _wait(
            browser,
            _STEPS,
            lambda s: s["panels"][0]["run"] == "reprobe" and len(s["panels"][0]["rows"]) == 4,
            "the two probe sets of run reprobe",
        )
        pairs = _pairs(state, "reprobe")
        for index in (0, 1):
            x0 = -round((0 if index == 0 else TILE) * CELL_W / TILE) + 0.0
            assert pairs[f"fpX:{index}"] == [("earlier", TAGS[0], 0, f"fpX:{index}", x0), ("-",)]
            assert pairs[f"fpY:{index}"] == [("-",), ("later", TAGS[0], 2, f"fpY:{index}", x0)]
        # nor compared: image 1 of each set says 'desert' at step 0 (fpX) and 'snow' at step 2 (fpY), which is no
        # change of one image's prediction, between the two steps or since the step before (in the matrix too)
        _select(browser, "row-filter", "between")
        _wait(browser, visible, lambda r: r == [], "no row changed between steps 0 and 2 of run reprobe")
        browser.evaluate(f"{_FRAME}.querySelector('.view-tab[data-view=matrix]').click()")
        _select(browser, "row-filter", "changed")
        matrix_rows = f"[...{_FRAME}.querySelectorAll('.matrix tbody tr[data-probe]')].map((r) => r.dataset.probe)"
        _wait(browser, matrix_rows, lambda r: r == [], "no row changed since the step before at step 2")
        _select(browser, "row-filter", "all")
        _wait(browser, matrix_rows, lambda r: sorted(r) == ["fpX:0", "fpX:1", "fpY:0", "fpY:1"], "every row")
        browser.evaluate(f"{_FRAME}.querySelector('.view-tab[data-view=steps]').click()")

        # a run beside, aligned by progress: each run shows its own matching steps
        _select(browser, "run-left", "run")
        _select(browser, "run-right", "zlong")
        _wait(browser, _STEPS, lambda s: len(s["panels"]) == 2, "run zlong beside run")
        _select(browser, "align", "progress")
        _slide(browser, 3)
        late = {"fp:0": [("later", TAGS[0], 7, "fp:0", 0.0)], "fp:1": [("later", TAGS[0], 7, "fp:1", -150.0)]}

        def zlong(early: int):
            expected = {
                k: [("earlier", TAGS[0], early, k, 0.0 if k == "fp:0" else -150.0), *v] for k, v in late.items()
            }
            return lambda s: len(s["panels"]) == 2 and _showing("zlong", expected)(s) and s["step"] == "step 3"

        state = _wait(browser, _STEPS, zlong(0), "zlong at steps 0 and 7 beside steps 0 and 3")
        assert "at steps 0 and 7 (aligned by progress)" in state["panels"][1]["title"]
        assert _showing("run", _expect(rows, 0, 3))(state)
        _select(browser, "step-a", "1")
        state = _wait(browser, _STEPS, zlong(2), "zlong at steps 2 and 7 beside steps 1 and 3")
        assert _showing("run", _expect(rows, 1, 3))(state)


def test_two_steps_follow_a_run_while_it_trains(chromium, two_runs, tmp_path, serve, replay, shots):  # noqa: F811
    logdir = tmp_path / "live"
    a = replay(two_runs / "a" / "version_0", logdir / "a")
    a.upto(2)
    with serve(logdir) as port, shots.Chromium(chromium, 1600, 1100) as browser:
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/#probelens")
        _wait(
            browser,
            f"(() => {{ const d = {_FRAME}; return d && d.querySelector('.run-panel .matrix .cell') ? 1 : null; }})()",
            bool,
            "run a's matrix",
        )
        browser.evaluate(f"{_FRAME}.querySelector('.view-tab[data-view=steps]').click()")

        def at(early: int, late: int):
            def done(state: dict[str, Any]) -> bool:
                cells = [c for r in state["panels"][0]["rows"] for c in r["cells"]]
                return (
                    bool(cells)
                    and state["step"] == f"step {late}"
                    and all("empty" not in c and c["loaded"] for c in cells)
                    and {c["step"] for c in cells if c["side"] == "earlier"} == {early}
                    and {c["step"] for c in cells if c["side"] == "later"} == {late}
                    # every cell shows its row's probe image
                    and all(c["probe"] == r["probe"] for r in state["panels"][0]["rows"] for c in r["cells"])
                )

            return done

        _wait(browser, _STEPS, at(0, 2), "steps 0 and 2 of run a")
        # new steps: the slider's side follows the newest, the first step stays, the new steps can be chosen
        a.upto(5)
        state = _wait(browser, _STEPS, at(0, 5), "steps 0 and 5 without a reload")
        assert state["options"] == ["first", "before", "0", "1", "2", "3", "4", "5"]
        _select(browser, "step-a", "before")
        _wait(browser, _STEPS, at(4, 5), "steps 4 and 5 (the step before)")
        a.upto(7)
        _wait(browser, _STEPS, at(6, 7), "steps 6 and 7: the step before follows the newest step")
