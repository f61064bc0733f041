"""Screenshots of TensorBoard's Images, Scalars and Custom Scalars dashboards on the demo run (not run in CI).

    python docs/screenshots.py                          # trains the demo (2-3 min on 2 CPU cores), then captures
    python docs/screenshots.py --logdir lightning_logs  # reuse existing logs instead of training

It trains ``examples/snow_vs_desert.py`` with the demo's own defaults (``--epochs``/``--n`` override them) into a
temporary folder, starts the real ``tensorboard`` on 127.0.0.1, checks through its HTTP API that probelens' tags are
served, drives headless Chromium (``apt-get install chromium`` on Debian) over the DevTools protocol, waits until
every chart and image on the page has rendered, and writes ``images.png``, ``scalars.png`` and ``custom_scalars.png``
to ``docs/images/screenshots/``. A capture that comes out blank is reported and not written.

The browser is driven rather than just pointed at a URL because two settings the screenshots need are not URL
parameters: "Ignore outliers in chart scaling" (on by default, it clips the first epoch's validation loss) is kept in
the browser's local storage, and the legends of the Custom Scalars charts are collapsed by default.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "screenshots"
MAX_BYTES = 400_000
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy

# Helpers injected before every evaluated expression. TensorBoard is built from web components, so a plain
# querySelectorAll does not see inside the dashboards: `deepAll` walks every shadow root too.
_PAGE_HELPERS = """
const deepAll = (pred) => {
  const out = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (pred(el)) out.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return out;
};
const shown = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
const setCheckbox = (label, value) => {
  const boxes = deepAll((e) => e.tagName === 'PAPER-CHECKBOX' && e.textContent.includes(label));
  for (const box of boxes) if (box.checked !== value) box.click();
  return boxes.length;
};
"""

# What is on screen: the wait is over when the wanted cards are there, nothing is loading, and this has not changed
# for a few polls. `bottom` is the lower edge of the first tag group, where the screenshot is cut.
_PROBE = """
(() => {
  const all = deepAll(() => true);
  const images = all.filter((e) => e.tagName === 'IMG' && shown(e));
  const charts = all.filter((e) => e.tagName === 'VZ-LINE-CHART2' && shown(e));
  const lines = all.filter((e) => e.tagName === 'path' && (e.getAttribute('d') || '').length > 20 && shown(e));
  const spinners = all.filter((e) => e.tagName.startsWith('PAPER-SPINNER') && e.active && shown(e));
  const groups = all.filter((e) => e.tagName === 'TF-CATEGORY-PAGINATED-VIEW' && shown(e));
  return {
    images: images.length,
    loaded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    charts: charts.length,
    lines: lines.length,
    spinners: spinners.length,
    bottom: groups.length ? Math.ceil(groups[0].getBoundingClientRect().bottom) : null,
  };
})()
"""


@dataclass(frozen=True)
class Page:
    """One dashboard to capture.

    Attributes:
        name: The PNG file name.
        fragment: TensorBoard's URL fragment (dashboard, tag filter, smoothing).
        width: Browser window width in pixels.
        height: Window height; the capture is cut at the bottom of the first tag group when that comes sooner.
        images: How many images must have loaded.
        charts: How many line charts must have drawn.
        actions: JavaScript run once the page has rendered (settings that are not URL parameters).
    """

    name: str
    fragment: str
    width: int
    height: int
    images: int = 0
    charts: int = 0
    actions: str = ""


def load_demo() -> Any:
    """Import ``examples/snow_vs_desert.py`` as a module."""
    spec = importlib.util.spec_from_file_location("snow_vs_desert", ROOT / "examples" / "snow_vs_desert.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {ROOT / 'examples' / 'snow_vs_desert.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, route: str, **params: str) -> Any:
    """GET ``route`` from the local TensorBoard and decode the JSON answer."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with _NO_PROXY.open(f"http://127.0.0.1:{port}{route}{query}", timeout=10) as response:
        return json.loads(response.read())


def stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Terminate ``proc`` and everything in its session (it was started with ``start_new_session``), then reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    with suppress(ProcessLookupError, PermissionError):  # children the leader left behind (Chromium's renderers)
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def tensorboard(logdir: Path, ready: Callable[[int], bool], budget_s: float = 120.0) -> Iterator[int]:
    """Run ``tensorboard`` on 127.0.0.1 and yield its port once ``ready(port)`` holds; always stop it.

    It runs in the log directory's parent with ``--logdir <name>``, so the dashboards' sidebar shows the folder's name
    (``lightning_logs``, as after the README's command) rather than a temporary path.

    Args:
        logdir: The log directory to serve.
        ready: Called with the port until it returns true.
        budget_s: How long to wait for ``ready``.

    Yields:
        The port.
    """
    port = free_port()
    logdir = logdir.resolve()
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        f"--logdir={logdir.name}",
        "--host=127.0.0.1",
        f"--port={port}",
        "--samples_per_plugin=images=1000",  # else the images dashboard samples 10 steps per tag
        "--load_fast=false",  # the Python loader: no Rust data server to install or to clean up after
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            command, cwd=logdir.parent, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + budget_s
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if ready(port):
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                    pass  # not listening yet, or still loading
                time.sleep(0.5)
            else:
                log.seek(0)
                output = log.read().decode(errors="replace")
                state = (
                    f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready in {budget_s:.0f} s"
                )
                raise RuntimeError(f"tensorboard on {logdir}: {state}; its output:\n{output}")
            yield port
        finally:
            stop(proc)


class Chromium:
    """Headless Chromium driven over the DevTools protocol through a pipe (no WebSocket library needed).

    Chromium's ``--remote-debugging-pipe`` reads NUL-terminated JSON commands on file descriptor 3 and writes answers
    and events on descriptor 4. One page target is opened and every command goes to it.

    Args:
        binary: The browser executable.
        width: Window width in CSS pixels.
        height: Window height in CSS pixels.
        pixel_ratio: Device pixels per CSS pixel of the screenshots.
        timeout_s: The longest a single command may take.
    """

    def __init__(self, binary: str, width: int, height: int, pixel_ratio: float = 1.0, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="probelens-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # the child's ends must become fds 3 and 4; moved above 10 first so neither dup2 overwrites the other
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        command = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile.name}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(3, 4),
                preexec_fn=lambda: (os.dup2(child_r, 3), os.dup2(child_w, 4)),  # no threads yet: safe
                start_new_session=True,
            )
        finally:
            os.close(child_r)
            os.close(child_w)
        self._send_fd, self._recv_fd = to_browser_w, from_browser_r
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call("Page.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=pixel_ratio,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Ask the browser to quit, then stop whatever is left of it; remove its profile."""
        if self._proc.poll() is None:
            try:
                self._write({"id": 0, "method": "Browser.close", "params": {}})
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop(self._proc)
        for fd in (self._send_fd, self._recv_fd):
            with suppress(OSError):
                os.close(fd)
        self._profile.cleanup()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command to the page (or to the browser before a page is attached); return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        self._write(message)
        deadline = time.monotonic() + self.timeout_s
        while True:
            answer = self._read(deadline, method)
            if answer.get("id") == self._next_id:  # everything else is an event or a stale answer
                if "error" in answer:
                    raise RuntimeError(f"Chromium: {method} failed: {answer['error']}")
                return answer.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page, with ``deepAll``, ``shown`` and ``setCheckbox``."""
        # wrapped in a function so the helpers' `const`s do not collide with those of the previous evaluation
        wrapped = f"(() => {{{_PAGE_HELPERS}\nreturn ({expression});\n}})()"
        result = self.call("Runtime.evaluate", expression=wrapped, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed in the page: {result['exceptionDetails'].get('exception')}")
        return result["result"].get("value")

    def screenshot(self, target: Path, width: int, height: int) -> None:
        """Write the top ``width`` x ``height`` CSS pixels of the page to ``target`` as PNG (times the pixel ratio)."""
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip)["data"]
        target.write_bytes(base64.b64decode(data))

    def _write(self, message: dict[str, Any]) -> None:
        os.write(self._send_fd, json.dumps(message).encode() + b"\0")

    def _read(self, deadline: float, method: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._recv_fd], [], [], remaining)[0]:
                raise TimeoutError(f"Chromium did not answer {method} within {self.timeout_s:.0f} s")
            chunk = os.read(self._recv_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self._proc.poll()}) while answering {method}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)


def wait_rendered(browser: Chromium, page: Page, budget_s: float) -> dict[str, Any]:
    """Poll the page until ``page.images`` images have loaded, ``page.charts`` charts have drawn lines, no spinner
    turns, and all of that has held still for 1.5 s. Returns the last probe.

    Raises:
        TimeoutError: With the last probe, when that does not happen within ``budget_s``.
    """
    deadline = time.monotonic() + budget_s
    history: list[dict[str, Any]] = []
    probe = None
    while time.monotonic() < deadline:
        probe = browser.evaluate(_PROBE)
        complete = (
            probe["loaded"] == probe["images"] >= page.images
            and probe["charts"] >= page.charts
            and (page.charts == 0 or probe["lines"] >= page.charts)
            and probe["spinners"] == 0
        )
        history = [*history[-2:], probe] if complete else []
        if len(history) == 3 and all(p == probe for p in history):
            return probe
        time.sleep(0.5)
    raise TimeoutError(
        f"{page.name}: the page did not finish rendering in {budget_s:.0f} s (wanted {page.images} images and "
        f"{page.charts} charts; last seen {probe})"
    )


def capture(chromium: str, url: str, page: Page, target: Path, budget_s: float) -> None:
    """Load ``url`` in a fresh headless Chromium, wait for it to render, apply ``page.actions`` and screenshot it.

    The page is rendered at twice the pixel density and brought back to ``page.width`` by :func:`finish`: TensorBoard
    shows a 392-pixel Grad-CAM grid in a 350-pixel card, and the browser's own downscaling smears its 9-pixel
    captions ("pred" reads "prec"); rendering at 2x and resampling with Lanczos keeps them legible.
    """
    with Chromium(chromium, page.width, page.height, pixel_ratio=2.0) as browser:
        browser.call("Page.navigate", url=url)
        wait_rendered(browser, page, budget_s)
        if page.actions:
            browser.evaluate(page.actions)
            time.sleep(0.5)  # let the click handlers start their redraw before the next probe
        probe = wait_rendered(browser, page, budget_s)
        bottom = probe["bottom"]
        height = page.height if bottom is None else min(page.height, bottom + 6)
        browser.screenshot(target, page.width, height)


def looks_blank(path: Path) -> bool:
    """True if a capture is (nearly) one colour or has hardly any content below the TensorBoard header bar."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    body = pixels[80:]  # below TensorBoard's orange header
    background = np.median(body.reshape(-1, 3), axis=0)
    content = (np.abs(body - background).sum(axis=-1) > 40).mean()
    return bool(pixels.std() < 8 or content < 0.03)


def finish(path: Path, width: int, max_bytes: int = MAX_BYTES) -> None:
    """Rewrite ``path`` at ``width`` pixels wide (Lanczos) and within ``max_bytes``: an optimised PNG, else 256
    colours, else downscaled further until it fits."""
    from PIL import Image

    with Image.open(path) as im:
        image = im.convert("RGB")
    if image.width != width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    image.save(path, format="PNG", optimize=True)
    scale = 1.0
    while path.stat().st_size > max_bytes and scale >= 0.3:
        size = (round(image.width * scale), round(image.height * scale))
        small = image if scale == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, format="PNG", optimize=True)
        scale *= 0.85


def logged_gradcam_steps(logdir: Path) -> dict[tuple[str, str], list[int]]:
    """``{(run, tag): steps}`` of every ``probelens/gradcam/*`` tag in the event files under ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    runs = sorted({p.parent for p in logdir.rglob("*tfevents*")})
    expected = {}
    for run_dir in runs:
        acc = EventAccumulator(str(run_dir), size_guidance={IMAGES: 0})
        acc.Reload()
        run = run_dir.relative_to(logdir).as_posix() if run_dir != logdir else "."
        for tag in acc.Tags()["images"]:
            if tag.startswith("probelens/gradcam/"):
                expected[run, tag] = [e.step for e in acc.Images(tag)]
    if not expected:
        raise RuntimeError(f"no probelens/gradcam/* image tags in the event files under {logdir}")
    return expected


def served_run(port: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The first run whose probelens tags TensorBoard serves: ``(run, image tags, scalar tags)``.

    Raises:
        RuntimeError: When no run has Grad-CAM images, a filmstrip, ``shortcut/*`` and ``probelens/cost_ms/*`` scalars.
    """
    images = get_json(port, "/data/plugin/images/tags")
    scalars = get_json(port, "/data/plugin/scalars/tags")
    for run, tags in sorted(images.items()):
        run_scalars = scalars.get(run, {})
        has_gradcam = any(t.startswith("probelens/gradcam/") for t in tags)
        has_strip = any(t.startswith("probelens/gradcam_filmstrip/") for t in tags)
        if has_gradcam and has_strip and any(t.startswith("shortcut/") for t in run_scalars):
            if not any(t.startswith("probelens/cost_ms/") for t in run_scalars):
                raise RuntimeError(f"run {run!r} has no probelens/cost_ms/* scalars: {sorted(run_scalars)}")
            return run, tags, run_scalars
    raise RuntimeError(f"no run with probelens Grad-CAM and shortcut tags; image tags served: {images}")


def dashboard_pages(port: int) -> list[Page]:
    """The three pages to capture, their tag filters and how many cards each must show, from what is served."""
    run, image_tags, scalar_tags = served_run(port)
    layer = min(t for t in image_tags if t.startswith("probelens/gradcam_filmstrip/")).rsplit("/", 1)[1]
    # the deepest layer's Grad-CAM grid and filmstrip (the filmstrip is logged for the deepest layer) and a saliency map
    image_filter = f"gradcam(_filmstrip)?/{re.escape(layer)}$|saliency/vanilla$"
    scalar_filter = (
        "loss$|shortcut/(score|background_only_accuracy|foreground_only_accuracy|background_swap_flip_rate)$"
    )
    layout = get_json(port, "/data/plugin/custom_scalars/layout")
    custom_charts = sum(len(category.get("chart", [])) for category in layout.get("category", []))
    if not custom_charts:
        raise RuntimeError(f"no custom scalars layout served (ShortcutMonitor writes one): {layout}")
    steps = [e["step"] for e in get_json(port, "/data/plugin/images/images", run=run, tag=f"probelens/gradcam/{layer}")]
    print(f"TensorBoard serves run {run!r}: {len(image_tags)} image tags (Grad-CAM at steps {steps}),")
    print(f"  {len(scalar_tags)} scalar tags, e.g. {', '.join(sorted(scalar_tags)[:4])}, ...")

    def fragment(dashboard: str, tag_filter: str | None = None) -> str:
        tag = f"&tagFilter={urllib.parse.quote(tag_filter, safe='')}" if tag_filter else ""
        return f"#{dashboard}{tag}&_smoothingWeight=0"

    # the first epoch's validation loss is ~25x the others: with outliers ignored its chart is cut at the top
    full_scale = "setCheckbox('Ignore outliers in chart scaling', false)"
    legends = "deepAll((e) => e.classList && e.classList.contains('toggle-matches-button')).map((b) => b.click())"
    return [
        Page(
            "images.png",
            fragment("images", image_filter),
            1500,
            1200,
            images=sum(bool(re.search(image_filter, t)) for t in image_tags),
        ),
        Page(
            "scalars.png",
            fragment("scalars", scalar_filter),
            1500,
            1000,
            charts=sum(bool(re.search(scalar_filter, t)) for t in scalar_tags),
            actions=full_scale,
        ),
        Page(
            "custom_scalars.png",
            fragment("custom_scalars"),
            1500,
            1100,
            charts=custom_charts,
            actions=f"[{full_scale}, {legends}]",
        ),
    ]


def find_chromium(explicit: str | None) -> str:
    """The Chromium binary: ``explicit``, else the first of chromium, chromium-browser, google-chrome on PATH."""
    for name in [explicit] if explicit else ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name)
        if path:
            return path
    wanted = repr(explicit) if explicit else "chromium, chromium-browser or google-chrome on PATH"
    raise SystemExit(
        f"no Chromium found ({wanted}); install it (Debian: apt-get update && apt-get install -y chromium)"
    )


def check_python_tools() -> None:
    """Fail early, before a two-minute training run, when TensorBoard or Pillow is missing."""
    missing = [name for name in ("tensorboard", "PIL", "numpy") if importlib.util.find_spec(name) is None]
    if missing:
        names = {"PIL": "pillow"}
        raise SystemExit(f"missing Python packages: {', '.join(names.get(m, m) for m in missing)}; pip install them")


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` blocks that stop tensorboard and Chromium


def main(argv: Sequence[str] | None = None) -> int:
    """Train the demo (or reuse ``--logdir``), start TensorBoard and capture the three dashboards.

    Args:
        argv: Command line arguments (default ``sys.argv[1:]``).

    Returns:
        0 when all three screenshots were written, 1 when one came out blank.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", type=Path, default=None, help="existing TensorBoard logs (skip training)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--chromium", default=None, help="browser binary (default: chromium on PATH)")
    parser.add_argument("--epochs", type=int, default=None, help="demo epochs (default: the demo's own)")
    parser.add_argument("--n", type=int, default=None, help="demo training images (default: the demo's own)")
    parser.add_argument("--budget-s", type=float, default=90.0, help="seconds a page gets to render (default 90)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    check_python_tools()
    chromium = find_chromium(args.chromium)
    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.logdir
        if logdir is None:
            logdir = Path(tmp) / "lightning_logs"
            demo_args = ["--logdir", str(logdir), "--quiet"]
            demo_args += ["--epochs", str(args.epochs)] if args.epochs is not None else []
            demo_args += ["--n", str(args.n)] if args.n is not None else []
            load_demo().main(demo_args)
        elif not logdir.is_dir():
            raise SystemExit(f"--logdir {logdir} is not a directory")

        expected = logged_gradcam_steps(logdir)

        def ready(port: int) -> bool:
            # tensorboard loads the event files in the background: wait until every Grad-CAM step is served
            images = get_json(port, "/data/plugin/images/tags")
            for (run, tag), steps in expected.items():
                if tag not in images.get(run, {}):
                    return False
                if [e["step"] for e in get_json(port, "/data/plugin/images/images", run=run, tag=tag)] != steps:
                    return False
            return True

        with tensorboard(logdir, ready) as port:
            base = f"http://127.0.0.1:{port}/"
            args.out.mkdir(parents=True, exist_ok=True)
            blank = []
            for page in dashboard_pages(port):
                shot = Path(tmp) / page.name
                capture(chromium, base + page.fragment, page, shot, args.budget_s)
                if looks_blank(shot):
                    blank.append(page.name)
                    print(f"{page.name}: the {page.fragment} dashboard came out blank; not written")
                    continue
                finish(shot, page.width)
                shutil.copyfile(shot, args.out / page.name)
                size_kb = (args.out / page.name).stat().st_size // 1000
                print(f"{page.name}: {base}{page.fragment} -> {args.out / page.name} ({size_kb} KB)")
    return 1 if blank else 0


if __name__ == "__main__":
    sys.exit(main())
