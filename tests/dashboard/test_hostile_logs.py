"""The dashboard on hostile logs (``tests/export/hostile_logs.py``) inside the real ``tensorboard``: oversized PNGs
are listed with the size their header claims and served as stored (the server never decodes them), tags that look
like paths or HTML are listed and served verbatim and shown as text in headless Chromium, a NaN scalar is ``null``,
and a run behind a symbolic link is listed while a link loop ends."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from tb_client import get, get_json, wait_indexed
from test_browser import _FRAME, _wait, chromium  # noqa: F401 - the fixture

P = "/data/plugin/probelens"
pytestmark = pytest.mark.integration


def _hostile_module():
    spec = importlib.util.spec_from_file_location(
        "probelens_hostile_logs", Path(__file__).resolve().parents[1] / "export" / "hostile_logs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


hostile_logs = _hostile_module()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return hostile_logs.write_hostile_logs(tmp_path_factory.mktemp("hostile"))


def _strict(body: bytes):
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(body, parse_constant=refuse)


def test_routes_on_hostile_logs(hostile, serve):
    with serve(hostile.logdir) as port:
        listing = wait_indexed(port)
        assert [r["run"] for r in listing["runs"]] == [hostile.linked, "real/version_0"]
        for run in (hostile.linked, "real/version_0"):
            status, body, _ = get(port, f"{P}/run", run=run)
            assert status == 200
            summary = _strict(body)
            assert dict(map(tuple, summary["scalars"]["shortcut/score"]))[2] is None
            items = {i["tag"]: i for i in summary["grids"] + summary["pictures"]}
            assert set(items) == {hostile_logs.GOOD, hostile_logs.BOMB, *hostile_logs.HOSTILE_TAGS}
            sizes = [(e["step"], e["w"], e["h"]) for e in items[hostile_logs.BOMB]["entries"]]
            assert sizes[1::2] == [(1, 100000, 100000), (3, 20000, 20000)]
            status, body, _ = get(port, f"{P}/image", run=run, tag=hostile_logs.BOMB, step=1)
            assert status == 200 and body == hostile_logs.header_bomb()  # as stored, never decoded
            for tag in hostile_logs.HOSTILE_TAGS:
                status, body, _ = get(port, f"{P}/image", run=run, tag=tag, step=3)
                assert status == 200 and body == hostile_logs.grid(3)
        # the server is still serving after all of it
        assert get_json(port, f"{P}/runs")["runs"]


_STATE = f"""(() => {{
  const d = {_FRAME};
  if (!d || !d.querySelector('.run-panel .matrix')) return null;
  return {{pwned: window.top.pwned === undefined ? null : String(window.top.pwned),
           heads: [...d.querySelectorAll('.matrix th[data-tag]')].map((t) => t.dataset.tag),
           text: d.body.textContent, injected: d.querySelectorAll('.matrix img[src=x], .matrix th script').length}};
}})()"""


def test_hostile_tags_are_text_in_the_browser(chromium, hostile, serve, shots):  # noqa: F811
    with serve(hostile.logdir) as port, shots.Chromium(chromium, 1500, 1100) as browser:
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/#probelens")
        state = _wait(browser, _STATE, lambda s: len(s["heads"]) >= 4, "the matrix of the hostile run")
        assert state["pwned"] is None and state["injected"] == 0
        grids = [t for t in hostile_logs.HOSTILE_TAGS if t.startswith("probelens/")]
        assert set(grids) <= set(state["heads"])
        assert "<script>" in state["text"]  # shown as text
