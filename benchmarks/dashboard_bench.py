"""How the probelens dashboard keeps up with a run that trains, against TensorBoard's own images plugin.

Measured in the real ``tensorboard`` (``--load_fast=false``, the Python loader, the same one the tests use), on event
files written with probelens' own writer: grid PNGs of random smooth maps (sized like the monitors' pictures) plus
the shortcut scalars, every step.

- **Cold start:** a server started on a log directory of ``--steps`` steps: how long until the probelens ``/runs``
  listing answers (it lists runs before their pictures are indexed), until its index holds every step, and until
  TensorBoard's images plugin lists every step of every image tag, on the same server from the same start.
- **While a run trains:** a writer subprocess appends one step every ``--interval`` seconds; the latency of the
  ``/run`` listing (every request timed, while the run grows), and the lag from a step's flush to its appearance in
  ``/run``, and in the images plugin (TensorBoard's ``--reload_interval`` is 5 s by default).
- **Server memory:** the resident memory of the TensorBoard process (``--samples_per_plugin images=1``, so that
  TensorBoard's own images plugin holds one picture per tag) on an empty log directory, on the small and on the large
  log, after ``/run`` listings and a pass over every picture through ``/image``; and the index's own Python heap
  (``tracemalloc``) at both sizes.

``python benchmarks/dashboard_bench.py`` (~5 minutes on 2 shared cores) prints the figures and replaces the section
"Dashboard: live runs, cold start, memory" of ``benchmarks/RESULTS.md`` (other sections are left as they are);
``--quick`` runs a small version and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Dashboard: live runs, cold start, memory (benchmarks/dashboard_bench.py)"
P = "/data/plugin/probelens"
TAGS = (
    "probelens/gradcam/net.0.0",
    "probelens/gradcam/net.0.4",
    "probelens/gradcam/net.0.8",
    "probelens/saliency/vanilla",
)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# the writer: one step of pictures and scalars per call of step(); run in-process for the logs, in a subprocess live
WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import torch
    from probelens.logformat import GridFacts
    from probelens.render import apply_colormap, encode_png
    from probelens.writing.event_file import EventFileWriter

    TAGS = {tags!r}
    TILE, N = {tile}, 16

    def grid(rng):
        # 16 tiles of smooth random maps through a colormap, 4 x 4: a Grad-CAM grid's look and size
        low = torch.from_numpy(rng.random((N, 1, 8, 8)).astype("float32"))
        maps = torch.nn.functional.interpolate(low, size=(TILE, TILE), mode="bilinear", align_corners=False)
        tiles = apply_colormap(maps[:, 0])
        image = torch.zeros(3, 4 * TILE, 4 * TILE, dtype=torch.uint8)
        cells = []
        for k in range(N):
            r, c = divmod(k, 4)
            image[:, r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = tiles[k]
            cells.append((k, c * TILE, r * TILE, (c + 1) * TILE, (r + 1) * TILE))
        preds = [(k, "snow", "desert", 0.75) for k in range(N)]
        return encode_png(image, text=GridFacts(tuple(cells), "fp", tuple(preds)).text())

    def write_steps(run, steps, interval=0.0, start=0):
        rng = np.random.default_rng(start)
        with EventFileWriter(run) as writer:
            for step in range(start, start + steps):
                for tag in TAGS:
                    writer.add_image(tag, grid(rng), 4 * TILE, 4 * TILE, step)
                writer.add_scalar("shortcut/score", float(rng.random()), step)
                writer.flush()
                if interval:
                    print(step, time.time(), flush=True)
                    time.sleep(interval)

    if __name__ == "__main__":
        write_steps(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    """
)


def get(port: int, route: str, **params: Any) -> tuple[int, bytes]:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{route}{query}", timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def get_json(port: int, route: str, **params: Any) -> Any:
    status, body = get(port, route, **params)
    return json.loads(body) if status == 200 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def tensorboard(logdir: Path, images: int = 100000) -> Iterator[tuple[int, subprocess.Popen[bytes], float]]:
    """The real ``tensorboard`` on ``logdir``; yields ``(port, process, start time)`` once it answers HTTP."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        f"--logdir={logdir}",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--samples_per_plugin=images={images}",
        "--load_fast=false",
    ]
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            try:
                if get(port, "/data/plugins_listing")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if proc.poll() is not None or time.monotonic() - start > 300:
                raise RuntimeError("tensorboard did not start")
            time.sleep(0.1)
        yield port, proc, start
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_logs(writer: Path, run: Path, steps: int) -> None:
    subprocess.run([sys.executable, str(writer), str(run), str(steps), "0", "0"], check=True)


def probelens_steps(port: int, run: str) -> int:
    summary = get_json(port, f"{P}/run", run=run)
    if not summary:
        return 0
    per_tag = [len(g["entries"]) for g in summary["grids"] if g["tag"] in TAGS]
    return min(per_tag) if len(per_tag) == len(TAGS) else 0


def images_plugin_steps(port: int, run: str) -> int:
    tags = get_json(port, "/data/plugin/images/tags") or {}
    if set(tags.get(run, {})) < set(TAGS):
        return 0
    counts = []
    for tag in TAGS:
        listed = get_json(port, "/data/plugin/images/images", run=run, tag=tag)
        counts.append(len(listed) if listed else 0)
    return min(counts)


def cold_start(logdir: Path, run: str, steps: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with tensorboard(logdir) as (port, _, start):
        out["server_up_s"] = time.monotonic() - start
        while "probelens_runs_s" not in out or "probelens_all_s" not in out or "images_all_s" not in out:
            now = time.monotonic() - start
            if "probelens_runs_s" not in out:
                listing = get_json(port, f"{P}/runs")
                if listing and listing["runs"]:
                    out["probelens_runs_s"] = time.monotonic() - start
            if "probelens_all_s" not in out and probelens_steps(port, run) >= steps:
                out["probelens_all_s"] = time.monotonic() - start
            if "images_all_s" not in out and images_plugin_steps(port, run) >= steps:
                out["images_all_s"] = time.monotonic() - start
            if now > 900:
                break
            time.sleep(0.2)
    return out


def live(logdir: Path, writer: Path, run: str, start_step: int, steps: int, interval: float) -> dict[str, Any]:
    """A writer appends ``steps`` steps; per step, when it showed up in /run and in the images plugin."""
    latencies: list[float] = []
    lag_probelens: list[float] = []
    lag_images: list[float] = []
    with tensorboard(logdir) as (port, _, _):
        while probelens_steps(port, run) < start_step or images_plugin_steps(port, run) < start_step:
            time.sleep(0.5)
        proc = subprocess.Popen(
            [sys.executable, str(writer), str(logdir / run), str(steps), str(interval), str(start_step)],
            stdout=subprocess.PIPE,
            text=True,
        )
        written: dict[int, float] = {}
        seen_p: dict[int, float] = {}
        seen_i: dict[int, float] = {}

        def read_writer() -> None:
            for line in proc.stdout or []:
                step, wall = line.split()
                written[int(step)] = float(wall)

        reader = threading.Thread(target=read_writer, daemon=True)
        reader.start()
        deadline = time.monotonic() + steps * interval + 60
        last = start_step + steps - 1
        while time.monotonic() < deadline and (last not in seen_p or last not in seen_i):
            t0 = time.perf_counter()
            n_p = probelens_steps(port, run)
            latencies.append(time.perf_counter() - t0)
            now = time.time()
            for s in range(start_step, n_p):
                seen_p.setdefault(s, now)
            n_i = images_plugin_steps(port, run)
            now = time.time()
            for s in range(start_step, n_i):
                seen_i.setdefault(s, now)
            time.sleep(0.1)
        proc.wait(timeout=60)
        for s, wall in written.items():
            if s in seen_p:
                lag_probelens.append(seen_p[s] - wall)
            if s in seen_i:
                lag_images.append(seen_i[s] - wall)
    return {"latency": latencies, "lag_probelens": lag_probelens, "lag_images": lag_images}


def memory(small: Path, large: Path, run: str) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as empty, tensorboard(Path(empty), images=1) as (_, proc, _):
        time.sleep(3)
        out["empty"] = rss_mb(proc.pid)
    for name, logdir in (("small", small), ("large", large)):
        with tensorboard(logdir, images=1) as (port, proc, _):
            while not (get_json(port, f"{P}/runs") or {}).get("indexing", {}).get("done"):
                time.sleep(0.5)
            summary = get_json(port, f"{P}/run", run=run)
            out[f"{name}_indexed"] = rss_mb(proc.pid)
            for grid in summary["grids"]:
                for entry in grid["entries"]:
                    get(port, f"{P}/image", run=run, tag=grid["tag"], step=entry["step"])
            out[f"{name}_after_images"] = rss_mb(proc.pid)
            out[f"{name}_log_mb"] = sum(p.stat().st_size for p in (logdir / run).iterdir()) / 2**20
    return out


def index_heap(logdir: Path) -> float:
    """The Python heap (MiB) that a fully built ``LogIndex`` of ``logdir`` holds (tracemalloc, current)."""
    from probelens.dashboard.index import LogIndex

    tracemalloc.start()
    index = LogIndex(logdir, rescan_s=0.0)
    index.refresh()
    for run in index.runs():
        run.summary_json()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del index
    return current / 2**20


def q(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def _stats(values: list[float], digits: int, p95: bool = False) -> str:
    if not values:
        return "n/a"
    parts = [statistics.median(values)] + ([q(values, 0.95)] if p95 else []) + [max(values)]
    return " / ".join(f"{v:.{digits}f}" for v in parts) + " s"


def section(args: argparse.Namespace, figures: dict[str, Any]) -> str:
    cold, live_f, mem, heap = figures["cold"], figures["live"], figures["memory"], figures["heap"]
    lat, lag_p, lag_i = live_f["latency"], live_f["lag_probelens"], live_f["lag_images"]
    nan = float("nan")
    p_all, i_all = cold.get("probelens_all_s", nan), cold.get("images_all_s", nan)
    small, large = mem["small_log_mb"], mem["large_log_mb"]
    rows = [
        (
            f"cold start, {args.steps} steps ({figures['large_mb']:.0f} MiB): first `/runs` listing",
            f"{cold.get('probelens_runs_s', nan):.1f} s",
            "-",
        ),
        ("cold start: every step of every tag listed", f"{p_all:.1f} s", f"{i_all:.1f} s (ratio {p_all / i_all:.2f})"),
        (f"while a run trains: `/run` latency, median / p95 / max ({len(lat)} requests)", _stats(lat, 3, True), "-"),
        (
            f"while a run trains: lag of a new step, median / max ({len(lag_p)} steps, one per {args.interval:g} s)",
            _stats(lag_p, 1),
            _stats(lag_i, 1),
        ),
        ("server RSS, empty log dir", f"{mem['empty']:.0f} MB", "(same process)"),
        (
            f"server RSS, {small:.0f} MiB log: indexed / after serving every picture",
            f"{mem['small_indexed']:.0f} / {mem['small_after_images']:.0f} MB",
            "",
        ),
        (
            f"server RSS, {large:.0f} MiB log: indexed / after serving every picture",
            f"{mem['large_indexed']:.0f} / {mem['large_after_images']:.0f} MB",
            "",
        ),
        (
            f"the index's Python heap (tracemalloc), {small:.0f} / {large:.0f} MiB log",
            f"{heap['small']:.1f} / {heap['large']:.1f} MiB",
            "",
        ),
    ]
    table = "\n".join(["| measure | probelens dashboard | TensorBoard images plugin |", "|---|---|---|"])
    table += "".join(f"\n| {a} | {b} | {c} |" for a, b, c in rows)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    intro = (
        f"Run {when} on {os.cpu_count()} shared CPU cores, Python {platform.python_version()}, the real "
        f"`tensorboard --load_fast=false`. Logs written by probelens' event writer: {len(TAGS)} grid tags (16 tiles "
        f"of {args.tile} px, ~{figures['png_kb']:.0f} KiB per PNG) and `shortcut/score`, every step. Targets (issue "
        "24): `/run` <= 2 s while a run trains; a new step within TensorBoard's reload interval (5 s) + 5 s; cold "
        "start within 2x TensorBoard's images plugin; memory bounded independently of the number of pictures."
    )
    notes = (
        "The dashboard follows the files by byte offset in a background thread (a pass every second; `/run` answers "
        "from the index as it stands), holds each picture's offset and PNG layout rather than its bytes, and reads "
        "pictures on demand through a 32 MiB LRU cache. The server RSS is TensorBoard's whole process (its own "
        "multiplexer included, kept at one picture per tag by `--samples_per_plugin images=1` in the memory rows); "
        "the heap row is the dashboard's index alone (its cached JSON listing included), which grows with the number "
        "of pictures by their offsets and captions, not by their bytes. After a pass that read 16 MiB or more the "
        "index hands glibc's freed read buffers back to the system (`malloc_trim`). Both plugins run in the one "
        "server during the cold start and share its cores."
    )
    return f"{SECTION}\n\n{textwrap.fill(intro, 118)}\n\n{table}\n\n{textwrap.fill(notes, 118)}"


def write_section(text: str) -> None:
    current = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# probelens benchmark results\n"
    if SECTION in current:
        head, rest = current.split(SECTION, 1)
        following = rest.find("\n## ")
        tail = rest[following:] if following >= 0 else "\n"
        current = head.rstrip() + "\n\n" + text + "\n" + tail
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    RESULTS.write_text(current, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="steps in the large log (cold start, memory)")
    parser.add_argument("--small-steps", type=int, default=60, help="steps in the small log (memory)")
    parser.add_argument("--live-steps", type=int, default=20, help="steps written while the server serves")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between two live steps")
    parser.add_argument("--tile", type=int, default=64, help="tile size of the grids in pixels")
    parser.add_argument("--quick", action="store_true", help="a small run; prints, writes nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.small_steps, args.live_steps, args.interval = 30, 10, 4, 1.0
    if shutil.which("tensorboard") is None and not (Path(sys.executable).parent / "tensorboard").exists():
        print("tensorboard is not installed", file=sys.stderr)
        return 2
    run = "run"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        writer = tmp_path / "writer.py"
        writer.write_text(WRITER.format(tags=TAGS, tile=args.tile))
        large, small, live_dir = tmp_path / "large", tmp_path / "small", tmp_path / "live"
        t0 = time.perf_counter()
        write_logs(writer, large / run, args.steps)
        write_logs(writer, small / run, args.small_steps)
        write_logs(writer, live_dir / run, 5)
        large_mb = sum(p.stat().st_size for p in (large / run).iterdir()) / 2**20
        png_kb = large_mb * 1024 / (args.steps * len(TAGS))
        print(f"logs written in {time.perf_counter() - t0:.0f} s: {large_mb:.0f} MiB, ~{png_kb:.0f} KiB per PNG")
        figures: dict[str, Any] = {"large_mb": large_mb, "png_kb": png_kb}
        figures["cold"] = cold_start(large, run, args.steps)
        print("cold start", figures["cold"])
        figures["live"] = live(live_dir, writer, run, 5, args.live_steps, args.interval)
        lat = figures["live"]["latency"]
        print(
            f"live: /run latency median {statistics.median(lat):.3f} s, max {max(lat):.3f} s; lag probelens "
            f"{figures['live']['lag_probelens']}, images plugin {figures['live']['lag_images']}"
        )
        figures["memory"] = memory(small, large, run)
        print("memory", figures["memory"])
        figures["heap"] = {"small": index_heap(small), "large": index_heap(large)}
        print("index heap MiB", figures["heap"])
    text = section(args, figures)
    print(text)
    if not args.quick:
        write_section(text)
        print(f"wrote the section to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
