"""The matrix a person can read: layer columns in the depth order their names encode (not string order), methods in
the order they were configured (first written), cells that show the map without the caption stamped under it (the
caption is in the row header, once), a colour bar with the scale mode where the grid recorded one, and the group and
concept curves of the shortcut view. Through the index, the routes of the real ``tensorboard`` and headless
Chromium, on event files written by probelens' own writer."""

from __future__ import annotations

import pytest
import torch
from tb_client import get_json, wait_indexed
from test_browser import _FRAME, _wait, chromium  # noqa: F401 - the fixture

from probelens.dashboard.index import LogIndex, finite, layer_order_key
from probelens.logformat import GridFacts
from probelens.render.image import encode_png
from probelens.writing.event_file import EventFileWriter

P = "/data/plugin/probelens"
TILE, BAND = 16, 6  # a square map over a caption band: cells taller than wide
# written in this order: layers shuffled, gradcam configured before gradcam++
WRITTEN = [
    "probelens/gradcam/net.0.12",
    "probelens/gradcam/net.0.0",
    "probelens/gradcam/net.0.8",
    "probelens/gradcam/net.0.4",
    "probelens/gradcam++/net.0.4",
    "probelens/gradcam++/net.0.0",
]
SHOWN = [
    "probelens/gradcam/net.0.0",
    "probelens/gradcam/net.0.4",
    "probelens/gradcam/net.0.8",
    "probelens/gradcam/net.0.12",
    "probelens/gradcam++/net.0.0",
    "probelens/gradcam++/net.0.4",
]
ACTIVATIONS = "probelens/activations/net.0.4"  # written after the CAMs: listed last, shown as full-width rows
SCALE = {"colormap": "jet", "mode": "fixed", "vmin": 0.0, "vmax": 2.5}


def _grid(step: int, scale: dict | None) -> bytes:
    image = torch.zeros(3, TILE + BAND, 2 * TILE, dtype=torch.uint8)
    image[0, :TILE] = 200  # the maps: red; the caption bands: black
    cells = GridFacts(
        [(0, 0, 0, TILE, TILE + BAND), (1, TILE, 0, 2 * TILE, TILE + BAND)],
        "fp",
        # probe image 0 misclassified throughout; image 1 right until its prediction flips at step 2
        [(0, "snow", "desert", 0.7), (1, "desert", "desert" if step < 2 else "snow", 0.9)],
        scale=scale,
    )
    return encode_png(image, text=cells.text())


@pytest.fixture(scope="module")
def layout_logs(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("layout") / "logs"
    with EventFileWriter(logdir / "run") as writer:
        for step in range(3):
            for tag in WRITTEN:
                scale = SCALE if tag == "probelens/gradcam/net.0.8" else None
                writer.add_image(tag, _grid(step, scale), TILE + BAND, 2 * TILE, step)
            # activations: per probe image a row of channels (120 x 8 px), wider than tall
            acts = GridFacts(((0, 0, 0, 120, 8), (1, 0, 8, 120, 16)), "fp")
            png = encode_png(torch.full((3, 16, 120), 90, dtype=torch.uint8), text=acts.text())
            writer.add_image(ACTIVATIONS, png, 16, 120, step)
            for cls, group, value in (("snow", "snowy", 1.0), ("snow", "desert", 0.2 * step), ("desert", "snowy", 0.5)):
                writer.add_scalar(f"shortcut/group_accuracy/{cls}/{group}", value, step)
            writer.add_scalar("concept/stripes/snow", 0.1 * step, step)
            writer.add_scalar("concept/stripes/cav_accuracy", 0.9, step)  # a chart of its own, not a class line
            # a ConceptMonitor(name="bg"): its name is not a concept, its concepts are not classes
            writer.add_scalar("concept/bg/stripes/snow", 0.2 * step, step)
            writer.add_scalar("concept/bg/stripes/desert", 0.3, step)
            writer.add_scalar("concept/bg/probe_accuracy", 0.8, step)
            writer.add_scalar("shortcut/bg/group_accuracy/snow/snowy", 0.7, step)
            writer.add_scalar("shortcut/bg/probe_accuracy", 0.8, step)
            writer.add_scalar("shortcut/score", 0.5, step)
    # a longer run beside it, for alignment: steps 0-5, epoch 0 at steps 0-2 and 1 at 3-5 ("run": 0-1 and 2)
    with EventFileWriter(logdir / "zlong") as writer:
        for step in range(6):
            writer.add_image(SHOWN[0], _grid(step, None), TILE + BAND, 2 * TILE, step)
            writer.add_scalar("epoch", float(step // 3), step)
    with EventFileWriter(logdir / "run") as writer:
        for step in range(3):
            writer.add_scalar("epoch", float(step // 2), step)
    return logdir


def test_layer_order_key_is_depth_order():
    names = ["net.0.12", "net.0.4", "net.0.0", "net.0.8", "layer10.conv", "layer2.conv"]
    assert sorted(names, key=layer_order_key) == [
        "layer2.conv",
        "layer10.conv",
        "net.0.0",
        "net.0.4",
        "net.0.8",
        "net.0.12",
    ]


def test_finite_replaces_nan_and_infinities_at_any_depth():
    value = {"a": [1.0, float("nan"), {"b": (float("inf"), -float("inf"), 2)}], "c": "NaN"}
    assert finite(value) == {"a": [1.0, None, {"b": [None, None, 2]}], "c": "NaN"}


def test_index_orders_columns_and_keeps_the_scale(layout_logs):
    index = LogIndex(layout_logs, rescan_s=0.0)
    index.refresh()
    summary = index.run("run").summary()
    assert [g["tag"] for g in summary["grids"]] == [*SHOWN, ACTIVATIONS]
    scaled = next(g for g in summary["grids"] if g["tag"] == "probelens/gradcam/net.0.8")
    assert all(e["scale"] == SCALE for e in scaled["entries"])
    assert all("scale" not in e for g in summary["grids"] if g is not scaled for e in g["entries"])
    assert summary["scalars"]["concept/stripes/snow"][-1] == [2, pytest.approx(0.2)]


_MATRIX = f"""(() => {{
  const d = {_FRAME};
  if (!d || !d.querySelector('.run-panel .matrix .cell img')) return null;
  const heads = [...d.querySelectorAll('.matrix thead th[data-tag]')];
  return {{
    heads: heads.map((t) => t.dataset.tag),
    bars: heads.filter((t) => t.querySelector('.colorbar')).map((t) => [t.dataset.tag, t.textContent]),
    crops: [...d.querySelectorAll('.matrix .cell .crop')].map((c) => [c.getBoundingClientRect().width,
                                                                      c.getBoundingClientRect().height]),
    rowheads: [...d.querySelectorAll('.matrix th.rowhead')].map((t) => t.textContent),
    sticky: getComputedStyle(d.querySelector('.matrix thead th')).position,
  }};
}})()"""


def test_matrix_and_shortcut_view_in_the_browser(chromium, layout_logs, serve, shots):  # noqa: F811
    with serve(layout_logs) as port, shots.Chromium(chromium, 1500, 1100) as browser:
        wait_indexed(port)
        assert [g["tag"] for g in get_json(port, f"{P}/run", run="run")["grids"]] == [*SHOWN, ACTIVATIONS]
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/#probelens")
        state = _wait(browser, _MATRIX, lambda s: len(s["heads"]) == len(SHOWN), "the matrix with every column")
        assert state["heads"] == SHOWN
        # every cell shows the square map alone (150 x 150 CSS px), not the map and its caption band
        assert state["crops"] and all(abs(w - 150) < 1 and abs(h - 150) < 1 for w, h in state["crops"]), state
        # the caption, once per row, in HTML
        assert any("true: snow" in t and "pred: desert 0.70" in t for t in state["rowheads"]), state["rowheads"]
        assert state["bars"] == [["probelens/gradcam/net.0.8", "gradcamnet.0.8fixed scale 0 to 2.5"]]
        assert state["sticky"] == "sticky"

        # row filters at the last step (2): misclassified {0, 1}, prediction changed {1}, class snow {0}
        rows = f"[...{_FRAME}.querySelectorAll('.matrix tbody tr[data-probe]')].map((r) => r.dataset.probe)"
        for value, expected in (("wrong", ["fp:0", "fp:1"]), ("changed", ["fp:1"]), ("class:snow", ["fp:0"])):
            browser.evaluate(
                f"(() => {{ const s = {_FRAME}.getElementById('row-filter'); s.value = '{value}'; "
                "s.dispatchEvent(new Event('change')); })()"
            )
            assert sorted(_wait(browser, rows, lambda r, e=expected: sorted(r) == e, f"rows {value}")) == expected
        # activations (off by default): a full-width row under each probe image's row, not a squeezed column
        assert ACTIVATIONS not in state["heads"]
        browser.evaluate(
            f"(() => {{ const s = {_FRAME}.getElementById('row-filter'); s.value = 'all'; "
            "s.dispatchEvent(new Event('change')); })()"
        )
        browser.evaluate(f"{_FRAME}.querySelector('input[data-method=activations]').click()")
        wide = _wait(
            browser,
            f"[...{_FRAME}.querySelectorAll('.matrix tr.wide-row .crop')].map((c) => c.getBoundingClientRect().width)",
            lambda w: len(w) == 2,
            "the activation rows",
        )
        assert all(w == 240 for w in wide), wide  # twice its 120 px, wider than a 150 px cell
        heads = browser.evaluate(f"[...{_FRAME}.querySelectorAll('.matrix thead th[data-tag]')].length")
        assert heads == len(SHOWN)  # no activations column
        browser.evaluate(f"{_FRAME}.querySelector('input[data-method=activations]').click()")
        # a click on a cell enlarges its map; a click closes it
        browser.evaluate(f"{_FRAME}.querySelector('.matrix .cell').click()")
        big = _wait(
            browser,
            f"(() => {{ const b = {_FRAME}.querySelector('.lightbox .crop'); "
            "return b ? b.getBoundingClientRect().width : null; })()",
            lambda w: w > 150,
            "the enlarged cell",
        )
        assert big > 300
        browser.evaluate(f"{_FRAME}.querySelector('.lightbox').click()")
        _wait(browser, f"!{_FRAME}.querySelector('.lightbox')", lambda gone: gone, "the enlarged cell closed")

        browser.evaluate(f"{_FRAME}.querySelector('.view-tab[data-view=shortcut]').click()")
        groups = _wait(
            browser,
            f"""(() => {{ const d = {_FRAME};
              const figs = [...d.querySelectorAll('figure[data-group]')];
              return figs.length ? figs.map((f) => [f.dataset.group, [...f.querySelectorAll('.key')].map(
                (k) => k.textContent)]) : null; }})()""",
            lambda g: len(g) == 5,
            "the group and concept charts",
        )
        assert sorted(groups) == [
            ["concept stripes", ["snow"]],
            ["concept stripes (bg)", ["desert", "snow"]],
            ["group accuracy: desert", ["snowy"]],
            ["group accuracy: snow", ["desert", "snowy"]],
            ["group accuracy: snow (bg)", ["snowy"]],
        ]


_BESIDE = f"""(() => {{
  const d = {_FRAME};
  const panel = d && d.querySelector('.run-panel[data-run=zlong]');
  const cell = panel && panel.querySelector('.matrix .cell');
  const out = d && d.getElementById('step-value');
  return cell ? {{left: out.textContent, right: Number(cell.dataset.step)}} : null;
}})()"""


def test_the_run_beside_aligns_by_epoch_or_progress(chromium, layout_logs, serve, shots):  # noqa: F811
    with serve(layout_logs) as port, shots.Chromium(chromium, 1500, 1100) as browser:
        wait_indexed(port)
        assert get_json(port, f"{P}/run", run="zlong")["epochs"] == [[s, float(s // 3)] for s in range(6)]
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/#probelens")
        _wait(browser, _MATRIX, lambda s: len(s["heads"]) == len(SHOWN), "the matrix")
        browser.evaluate(
            f"(() => {{ const s = {_FRAME}.getElementById('run-right'); s.value = 'zlong'; "
            "s.dispatchEvent(new Event('change')); })()"
        )
        _wait(browser, _BESIDE, lambda s: s["right"] == 2, "run zlong beside, by step: step 2")

        def choose(align: str, slider: int) -> None:
            browser.evaluate(
                f"(() => {{ const d = {_FRAME}; const a = d.getElementById('align'); a.value = '{align}'; "
                "a.dispatchEvent(new Event('change')); const s = d.getElementById('step-slider'); "
                f"s.value = '{slider}'; s.dispatchEvent(new Event('input')); }})()"
            )

        def shown(left: int, right: int) -> None:
            expected = {"left": f"step {left}", "right": right}
            _wait(browser, _BESIDE, lambda s: s == expected, f"run zlong at step {right} beside step {left}")

        # by progress: the left run's steps 0-2 over the right's 0-5
        for left, right in ((2, 5), (1, 2), (0, 0)):
            choose("progress", left)
            shown(left, right)
        # by epoch: step 0 opens epoch 0 (right: 0), step 1 ends it (right: 2), step 2 is epoch 1 (right: its end, 5)
        for left, right in ((0, 0), (1, 2), (2, 5)):
            choose("epoch", left)
            shown(left, right)
