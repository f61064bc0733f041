"""Screenshots of the probelens TensorBoard tab (matrix, two-steps, probe-image and shortcut views) on the demo (not
run in CI).

    python docs/dashboard_screenshots.py                           # trains the demo at p=0.95 and p=0.5, captures
    python docs/dashboard_screenshots.py --logdir lightning_logs   # reuse logs holding both demo runs

It trains ``examples/snow_vs_desert.py`` twice with the demo's defaults (``--p 0.95`` and ``--p 0.5``; ``--epochs``
and ``--n`` override them) into a temporary folder, starts the real ``tensorboard`` on 127.0.0.1 (the dashboard is
loaded through its ``tensorboard_plugins`` entry point, so probelens must be installed, e.g. ``pip install -e .``),
opens the "probelens" tab in headless Chromium (``apt-get install chromium``), drives it like a user (views, runs,
probe image) and writes ``matrix.png``, ``two_steps.png``, ``probe_image.png`` and ``shortcut.png`` to
``docs/images/dashboard/``. A capture that comes out blank is reported and not written. The TensorBoard launcher and
the DevTools driver are those of ``docs/screenshots.py``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import screenshots as shots

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "dashboard"
SHORTCUT_RUN = "snow_vs_desert_p0.95/version_0"
FAIR_RUN = "snow_vs_desert_p0.5/version_0"

_FRAME = "deepAll((e) => e.tagName === 'IFRAME')[0]?.contentDocument"
# settled: the tab has drawn, no "Reading the logs" message, and every picture in it has loaded
_SETTLED = f"""(() => {{
  const d = {_FRAME};
  const root = d && d.getElementById('probelens');
  if (!root || !root.querySelector('.toolbar')) return null;
  const images = [...root.querySelectorAll('img')];
  return {{images: images.length, loaded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
           charts: root.querySelectorAll('svg.chart').length, height: Math.ceil(root.getBoundingClientRect().bottom)}};
}})()"""


def settle(browser: Any, budget_s: float, charts: int = 0) -> dict[str, Any]:
    """Wait until the tab has drawn and every picture loaded, unchanged for three polls."""
    deadline = time.monotonic() + budget_s
    history: list[Any] = []
    state = None
    while time.monotonic() < deadline:
        state = browser.evaluate(_SETTLED)
        ok = state is not None and state["loaded"] == state["images"] and state["charts"] >= charts
        history = [*history[-2:], state] if ok else []
        if len(history) == 3 and all(s == state for s in history):
            return state
        time.sleep(0.4)
    raise TimeoutError(f"the probelens tab did not settle in {budget_s:.0f} s (last seen {state})")


def act(browser: Any, script: str) -> None:
    """Run ``script`` with ``d`` bound to the tab's document, then give the redraw a moment."""
    browser.evaluate(f"(() => {{ const d = {_FRAME}; {script} }})()")
    time.sleep(0.5)


def choose(select_id: str, value: str) -> str:
    return (
        f"const s = d.getElementById('{select_id}'); s.value = '{value}';"
        " s.dispatchEvent(new Event('change', {bubbles: true}));"
    )


def capture(
    chromium: str,
    url: str,
    name: str,
    steps: Sequence[str],
    width: int,
    height: int,
    out: Path,
    budget_s: float,
    charts: int = 0,
) -> Path:
    with shots.Chromium(chromium, width, height, pixel_ratio=2.0) as browser:
        browser.call("Page.navigate", url=url)
        settle(browser, budget_s)
        for script in steps:
            act(browser, script)
            settle(browser, budget_s)
        state = settle(browser, budget_s, charts)
        # the tab's iframe starts below TensorBoard's header bar (about 64 px): cut under the tab's content
        target = out / name
        browser.screenshot(target, width, min(height, state["height"] + 80))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Train the two demo runs (or reuse ``--logdir``), start TensorBoard and capture the four views.

    Returns:
        0 when all four screenshots were written, 1 when one came out blank.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", type=Path, default=None, help="logs with both demo runs (skip training)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--chromium", default=None, help="browser binary (default: chromium on PATH)")
    parser.add_argument("--epochs", type=int, default=None, help="demo epochs (default: the demo's own)")
    parser.add_argument("--n", type=int, default=None, help="demo training images (default: the demo's own)")
    parser.add_argument("--budget-s", type=float, default=90.0, help="seconds a page gets to settle (default 90)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, shots._exit_on_sigterm)
    shots.check_python_tools()
    chromium = shots.find_chromium(args.chromium)
    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.logdir
        if logdir is None:
            logdir = Path(tmp) / "lightning_logs"
            for p in ("0.95", "0.5"):
                demo_args = ["--logdir", str(logdir), "--quiet", "--p", p]
                demo_args += ["--epochs", str(args.epochs)] if args.epochs is not None else []
                demo_args += ["--n", str(args.n)] if args.n is not None else []
                shots.load_demo().main(demo_args)
        elif not logdir.is_dir():
            raise SystemExit(f"--logdir {logdir} is not a directory")

        def ready(port: int) -> bool:
            runs = {r["run"] for r in shots.get_json(port, "/data/plugin/probelens/runs")["runs"] if r["probelens"]}
            return {SHORTCUT_RUN, FAIR_RUN} <= runs

        with shots.tensorboard(logdir, ready) as port:
            url = f"http://127.0.0.1:{port}/#probelens"
            args.out.mkdir(parents=True, exist_ok=True)
            pick_changed = (
                # the first probe image whose prediction changed during training (else the first one)
                "const picker = d.querySelector('.probe-picker');"
                "for (const option of [...picker.options]) {"
                "  picker.value = option.value; picker.dispatchEvent(new Event('change'));"
                "  if (d.querySelector('tr.predictions td.changed')) break;"
                "}"
            )
            pages = [
                ("matrix.png", [choose("run-left", SHORTCUT_RUN)], 1400, 1150, 0),
                (
                    # the first logged step beside the last, Grad-CAM only (four layers, two steps each)
                    "two_steps.png",
                    [
                        choose("run-left", SHORTCUT_RUN),
                        "d.querySelector('.view-tab[data-view=steps]').click();",
                        "d.querySelector('input[data-method=saliency]').click();",
                    ],
                    1600,
                    1250,
                    0,
                ),
                (
                    "probe_image.png",
                    [
                        choose("run-left", SHORTCUT_RUN),
                        "d.querySelector('.view-tab[data-view=image]').click();",
                        pick_changed,
                    ],
                    1400,
                    1150,
                    0,
                ),
                (
                    "shortcut.png",
                    [
                        choose("run-left", SHORTCUT_RUN),
                        choose("run-right", FAIR_RUN),
                        "d.querySelector('.view-tab[data-view=shortcut]').click();",
                    ],
                    1700,
                    1250,
                    2,
                ),
            ]
            blank = []
            for name, steps, width, height, charts in pages:
                shot = capture(chromium, url, name, steps, width, height, Path(tmp), args.budget_s, charts)
                if shots.looks_blank(shot):
                    blank.append(name)
                    print(f"{name}: came out blank; not written")
                    continue
                shots.finish(shot, width, max_bytes=600_000)
                shutil.copyfile(shot, args.out / name)
                print(f"{name} -> {args.out / name} ({(args.out / name).stat().st_size // 1000} KB)")
    return 1 if blank else 0


if __name__ == "__main__":
    sys.exit(main())
