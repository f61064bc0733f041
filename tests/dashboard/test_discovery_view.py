"""The Discovery view in real headless Chromium inside the real TensorBoard page, on a real Lightning run with
StrategyMonitor (tiny CNN, the snow/desert generator, a probe of 24 images, 2 epochs) that is still training: a
subprocess replays its event files step by step (``replay.py``). Every class is listed; each of its charts has one
point per firing, with the value the event file holds (read back with TensorBoard's own reader); the steps that raised
the flag are the event file's; the picture at a chosen step is the one logged at that step, byte for byte; a step at
which the monitor did not fire says so and names the step of the picture shown; the caveat stands; a run without
StrategyMonitor, beside it, says there is nothing. Needs Debian's ``chromium``."""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import torch
from tb_client import get
from test_browser import _FRAME, _wait, chromium  # noqa: F401 - the fixture
from torch.utils.data import DataLoader

from lit import LitClassifier, read_events, trainer
from probelens import GradCAMMonitor, ProbeSet, StrategyMonitor
from probelens.data import CLASS_NAMES, MEAN, STD, SnowDesertDataset

P = "/data/plugin/probelens"
KEYS = ("clusters", "eigengap", "largest_share", "two_strategies")
pytestmark = pytest.mark.integration

_STATE = f"""(() => {{
  const d = {_FRAME};
  if (!d || !d.getElementById('probelens')) return null;
  const text = (node, sel) => {{ const n = node.querySelector(sel); return n ? n.textContent : null; }};
  const panels = [...d.querySelectorAll('.run-panel')].map((p) => ({{
    run: p.dataset.run, message: text(p, '.message'), caveat: text(p, '.caveat'),
    classes: [...p.querySelectorAll('.discovery-class')].map((c) => {{
      const f = c.querySelector('.discovery-picture');
      const img = f ? f.querySelector('img') : null;
      return {{
        cls: c.dataset.class, head: text(c, 'h4'), missing: text(c, '.missing'),
        charts: Object.fromEntries([...c.querySelectorAll('.chart-box')].map((b) => [b.dataset.key,
          [...b.querySelectorAll('circle.dot')].map((e) => [Number(e.dataset.step), Number(e.dataset.value)])])),
        current: [...c.querySelectorAll('.chart-box')].map((b) => !!b.querySelector('.current-step')),
        raised: [...c.querySelectorAll('.raised button')].map((b) => Number(b.dataset.step)),
        picture: f ? {{step: Number(f.dataset.step), tag: f.dataset.tag, src: img.getAttribute('src'),
          loaded: img.complete && img.naturalWidth > 0, earlier: f.classList.contains('earlier')}} : null,
      }};
    }}),
  }}));
  const select = d.getElementById('discovery-step');
  return {{step: text(d, '#step-value'), panels,
    options: select ? [...select.options].map((o) => [o.value, o.textContent]) : null}};
}})()"""


def _train(logdir: Path, name: str, discovery: bool) -> Path:
    torch.manual_seed(0)
    train = SnowDesertDataset(n=64, size=16, seed=0)
    val = SnowDesertDataset(n=48, size=16, seed=1)
    probe = ProbeSet.from_dataset(
        val, num_samples=24, per_class=True, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES
    )
    monitors: list[Any] = [GradCAMMonitor(probe, layers="last", every_n_steps=1)]
    if discovery:  # every other step: the steps between are steps of the run at which discovery logged nothing
        monitors.append(StrategyMonitor(probe, every_n_steps=2, every_n_epochs=None))
    from pytorch_lightning.loggers import TensorBoardLogger

    tr = trainer(logdir, monitors, logger=TensorBoardLogger(str(logdir), name=name), max_epochs=2 if discovery else 1)
    tr.fit(LitClassifier(seed=0), DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=48))
    return Path(tr.logger.log_dir)


def _logged(run: Path) -> tuple[list[str], dict[str, dict[str, list[tuple[int, float]]]], dict[str, Any]]:
    """The classes, ``{class: {key: [(step, value), ...]}}`` and ``{class: {step: picture bytes}}`` the event files
    hold, read with TensorBoard's reader (independently of the plugin)."""
    acc = read_events(run)
    scalars = [t for t in acc.Tags()["scalars"] if t.startswith("discovery/")]
    classes = [c for c in CLASS_NAMES if f"discovery/{c}/clusters" in scalars]
    values = {c: {k: [(e.step, e.value) for e in acc.Scalars(f"discovery/{c}/{k}")] for k in KEYS} for c in classes}
    pictures = {c: {e.step: e.encoded_image_string for e in acc.Images(f"probelens/discovery/{c}")} for c in classes}
    return classes, values, pictures


def _points_match(shown: list[list[float]], logged: list[tuple[int, float]]) -> bool:
    finite = [(s, v) for s, v in logged if v == v]  # NaN is left out of the chart
    return [s for s, _ in shown] == [s for s, _ in finite] and all(
        v == pytest.approx(w, rel=1e-6, abs=1e-9) for (_, v), (_, w) in zip(shown, finite)
    )


def _charts_match(panel: dict[str, Any], values: dict[str, Any], upto: int) -> bool:
    """Every class's four charts show exactly its firings up to ``upto``, with the logged values."""
    if [c["cls"] for c in panel["classes"]] != list(values):
        return False
    for c in panel["classes"]:
        if set(c["charts"]) != set(KEYS):
            return False
        for key in KEYS:
            logged = [(s, v) for s, v in values[c["cls"]][key] if s <= upto]
            if not _points_match(c["charts"][key], logged):
                return False
    return True


def _panel(state: dict[str, Any], run: str) -> dict[str, Any] | None:
    return next((p for p in state["panels"] if p["run"] == run), None)


def test_discovery_view_follows_a_run_while_it_trains(chromium, tmp_path, serve, shots, replay):  # noqa: F811
    source = tmp_path / "source"
    disc = _train(source, "disc", discovery=True)
    plain = _train(source, "plain", discovery=False)
    classes, values, pictures = _logged(disc)
    assert classes == list(CLASS_NAMES)  # every class of the probe was clustered
    firings = [s for s, _ in values[classes[0]]["clusters"]]
    assert len(firings) >= 3 and all(firings == [s for s, _ in values[c]["clusters"]] for c in classes)
    last = firings[-1]
    assert last == max(e.step for e in read_events(disc).Images("probelens/gradcam/model.8"))  # the run's last step

    logdir = tmp_path / "live"
    shutil.copytree(plain, logdir / "plain")
    live = replay(disc, logdir / "disc")
    live.upto(firings[1])
    run = "disc"
    with serve(logdir) as port, shots.Chromium(chromium, 1500, 1600) as browser:
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/#probelens")
        tab = f"{_FRAME} && {_FRAME}.querySelector('.view-tab[data-view=discovery]')"
        _wait(browser, f"!!({tab})", bool, "the dashboard's Discovery tab")
        assert browser.evaluate(f"{_FRAME}.getElementById('run-left').value") == run  # the first run by name
        browser.evaluate(f"{_FRAME}.querySelector('.view-tab[data-view=discovery]').click()")

        # the first two firings, while the run trains
        state = _wait(
            browser,
            _STATE,
            lambda s: (p := _panel(s, run)) is not None and _charts_match(p, values, firings[1]),
            f"each class's charts at firings {firings[:2]}",
        )
        # new steps appear without a reload; the slider, on the newest step, follows
        live.upto(last)
        state = _wait(
            browser,
            _STATE,
            lambda s: (
                (p := _panel(s, run)) is not None and _charts_match(p, values, last) and s["step"] == f"step {last}"
            ),
            f"every firing up to step {last}",
        )
        panel = _panel(state, run)
        assert panel is not None
        # the caveat: exploratory, not a verdict; the flag is not calibrated; where the measurements are
        caveat = panel["caveat"] or ""
        assert "not a verdict" in caveat and "not calibrated" in caveat and "docs/discovery.md" in caveat
        for c in panel["classes"]:
            flagged = [s for s, v in values[c["cls"]]["two_strategies"] if v >= 0.5]
            assert c["raised"] == flagged, c
            assert all(c["current"]), c  # the slider's step marked on every chart
            assert c["missing"] is None and c["picture"]["step"] == last and not c["picture"]["earlier"]
            assert f"at step {last}: {int(values[c['cls']]['clusters'][-1][1])} cluster(s)" in c["head"]

        # the picture at a chosen step (the toolbar's "discovery step") is the one logged at that step
        chosen = firings[1]
        options = [v for v, _ in state["options"]]
        assert options == [str(s) for s in firings]
        browser.evaluate(
            f"(() => {{ const s = {_FRAME}.getElementById('discovery-step'); s.value = '{chosen}';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        state = _wait(
            browser,
            _STATE,
            lambda s: (
                s["step"] == f"step {chosen}"
                and all(c["picture"] and c["picture"]["loaded"] for c in _panel(s, run)["classes"])
            ),
            f"the pictures at step {chosen}",
        )
        for c in _panel(state, run)["classes"]:
            assert c["picture"]["step"] == chosen and c["missing"] is None, c
            query = urllib.parse.parse_qs(urllib.parse.urlparse(c["picture"]["src"]).query)
            assert query["tag"] == [f"probelens/discovery/{c['cls']}"] and query["step"] == [str(chosen)]
            status, body, _ = get(port, f"{P}/{c['picture']['src'].removeprefix('./')}")
            assert status == 200 and body == pictures[c["cls"]][chosen]

        # a step at which the monitor did not fire (Grad-CAM did): said per class, with the step of the picture shown
        between = next(s for s in range(chosen + 1, last) if s not in firings)
        browser.evaluate(f"{_FRAME}.defaultView.probelensDashboard.setStep({between})")
        state = _wait(browser, _STATE, lambda s: s["step"] == f"step {between}", f"step {between}")
        before = max(s for s in firings if s < between)
        for c in _panel(state, run)["classes"]:
            assert c["missing"] == (
                f"{c['cls']}: nothing logged at step {between}; the picture below is from step {before}, the last "
                "logged before it."
            ), c
            assert c["picture"]["step"] == before and c["picture"]["earlier"], c
        assert state["options"][0] == ["", f"step {between}: no discovery logged"]

        # a run without StrategyMonitor beside it: it says there is nothing; the first run's view stays
        browser.evaluate(
            f"(() => {{ const s = {_FRAME}.getElementById('run-right'); s.value = 'plain';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        state = _wait(browser, _STATE, lambda s: _panel(s, "plain") is not None, "the run without discovery beside")
        assert "no strategy discovery" in (_panel(state, "plain")["message"] or "")
        assert _panel(state, "plain")["classes"] == []
        assert [c["cls"] for c in _panel(state, run)["classes"]] == classes
        assert browser.evaluate(f"{_FRAME}.querySelector('.message.error')") is None

        # a prototype is a probe image: its number opens it in the probe-image view (the Grad-CAM grid shows it)
        link = f"{_FRAME}.querySelector('.run-panel[data-run=disc] .discovery-picture figcaption button')"
        index = browser.evaluate(f"{link}.textContent")
        browser.evaluate(f"{link}.click()")
        followed = _wait(
            browser,
            f"(() => {{ const d = {_FRAME}.defaultView.probelensDashboard;"
            " return d.state.view === 'image' ? d.state.probes.disc : null; })()",
            bool,
            "the prototype in the probe-image view",
        )
        assert index.startswith("#") and followed.endswith(f":{index[1:]}")
