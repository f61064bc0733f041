"""Event-file writing and the image worker: what they cost the training thread (2 CPU threads).

    python benchmarks/event_writer_bench.py [--repeats 5] [--out benchmarks/RESULTS.md]

Measures, and with ``--out`` writes as the section "Event-file writer and image worker" of RESULTS.md (replacing
only that section, hand-written notes below its tables included: rewrite them after a rerun). Note that
``benchmarks/bench.py`` rewrites the whole of RESULTS.md and drops this section; rerun this script after it:

1. Writing ~5 MB of PNG image records and flushing them: :class:`probelens.writing.EventFileWriter` (C CRC-32C) vs
   TensorBoard's ``EventFileWriter`` (what ``SummaryWriter`` writes through) with its pure-Python CRC and with the C
   CRC swapped in (the old process-wide patch, applied and undone here only).
2. How much that write stalls a training thread running at the same time: the training loop's step time while each
   writer writes the 5 MB from another thread, against the loop alone.
3. Thread vs process worker for the image jobs (render: normalise, colormap, overlay, tile, PNG-encode, write):
   the training loop's time for a fixed number of steps with a firing every few steps handed to (a) nobody (the
   floor), (b) the training thread itself (synchronous), (c) one worker thread (what probelens' image pipeline was),
   (d) a one-process ``concurrent.futures.ProcessPoolExecutor`` (tensors pickled across).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from probelens.render import apply_colormap, encode_png  # noqa: E402
from probelens.writing import FAST_CRC, EventFileWriter  # noqa: E402

THREADS = 2
SECTION = "## Event-file writer and image worker"


# -- workloads ---------------------------------------------------------------------------------------------------


def heatmap_pngs(total_bytes: int, side: int = 224) -> list[bytes]:
    """Overlay-like PNGs (~100 KiB each at 224 px, as DESIGN.md measured) adding up to about ``total_bytes``."""
    g = torch.Generator().manual_seed(0)
    out: list[bytes] = []
    while sum(map(len, out)) < total_bytes:
        heat = F.interpolate(torch.rand(1, 1, 14, 14, generator=g), size=(side, side), mode="bilinear")[0, 0]
        noise = torch.rand(side, side, generator=g) * 0.25
        rgb = apply_colormap((heat * 0.75 + noise).clamp(0, 1))
        out.append(encode_png(rgb))
    return out


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    )


class Training:
    """A demo-sized training step (batch 32 of 64 px images, a 3-conv CNN of 16-32 channels, SGD)."""

    def __init__(self) -> None:
        self.model = small_cnn()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(32, 3, 64, 64, generator=g)
        self.y = torch.randint(0, 2, (32,), generator=g)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()

    def maps(self) -> torch.Tensor:
        """What a monitor would copy off the model for one firing: 16 maps at 64 px and the images."""
        with torch.no_grad():
            feats = self.model[:5](self.x[:16])
        heat = F.interpolate(feats.mean(1, keepdim=True), size=self.x.shape[-2:], mode="bilinear")
        return torch.cat([heat, self.x[:16, :1]], dim=1).clone()


def render_firing(maps: torch.Tensor, writer: EventFileWriter | None, step: int) -> int:
    """One firing's pictures from CPU tensors: per-map min-max, colormap, 50% overlay, a 4x4 grid upscaled 2x,
    PNG-encoded and written. Returns the PNG bytes."""
    heat, gray = maps[:, :1], maps[:, 1:]
    up = F.interpolate(heat, size=gray.shape[-2:], mode="bilinear", align_corners=False)
    lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
    norm = ((up - lo) / (hi - lo).clamp_min(1e-12))[:, 0]
    colored = torch.stack([apply_colormap(m) for m in norm]).float()
    base = ((gray - gray.amin()) / (gray.amax() - gray.amin()) * 255).expand(-1, 3, -1, -1)
    blended = (0.5 * colored + 0.5 * base).round().to(torch.uint8)
    _, c, h, w = blended.shape
    grid = blended.view(4, 4, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, 4 * h, 4 * w)
    grid = grid.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    total = 0
    for k in range(3):  # three pictures per firing (Grad-CAM, saliency, activations in the demo)
        png = encode_png(grid if k == 0 else grid.roll(k * 7, dims=2))
        total += len(png)
        if writer is not None:
            writer.add_image(f"probelens/bench/{k}", png, grid.shape[1], grid.shape[2], step)
    return total


class _Collect:
    """Stands in for the event-file writer inside the worker process: keeps the PNGs to send back."""

    def __init__(self) -> None:
        self.images: list[tuple[str, bytes, int, int, int]] = []

    def add_image(self, tag: str, png: bytes, height: int, width: int, step: int) -> None:
        self.images.append((tag, png, height, width, step))


def _process_job(maps: torch.Tensor, step: int) -> list[tuple[str, bytes, int, int, int]]:
    """A firing in the worker process; the PNGs go back to the parent, the one writer of the event file."""
    torch.set_num_threads(1)  # its own process: this does not touch the training's threads
    collect = _Collect()
    render_firing(maps, collect, step)  # type: ignore[arg-type]
    return collect.images


# -- 1 + 2: writers ----------------------------------------------------------------------------------------------


def tb_writer(logdir: str, fast_crc: bool) -> tuple[Any, Callable[[], None]]:
    """TensorBoard's own event-file writer (SummaryWriter's), with its Python CRC or the C one swapped in."""
    from tensorboard.summary.writer import event_file_writer, record_writer

    original = record_writer.masked_crc32c
    if fast_crc:
        from probelens.writing.event_file import masked_crc32c

        record_writer.masked_crc32c = masked_crc32c
    writer = event_file_writer.EventFileWriter(logdir, max_queue_size=10, flush_secs=120)

    def undo() -> None:
        record_writer.masked_crc32c = original

    return writer, undo


def write_all(kind: str, pngs: list[bytes], logdir: str) -> float:
    """Seconds to hand every PNG to the writer and have it on disk (flushed)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    if kind == "probelens":
        ours = EventFileWriter(logdir)
        start = time.perf_counter()
        for i, png in enumerate(pngs):
            ours.add_image("bench", png, 224, 224, i)
        ours.flush()
        elapsed = time.perf_counter() - start
        ours.close()
        return elapsed
    writer, undo = tb_writer(logdir, fast_crc=kind == "tensorboard, C CRC patched")
    try:
        start = time.perf_counter()
        for i, png in enumerate(pngs):
            image = summary_pb2.Summary.Image(height=224, width=224, colorspace=3, encoded_image_string=png)
            event = event_pb2.Event(wall_time=time.time(), step=i)
            event.summary.value.add(tag="bench", image=image)
            writer.add_event(event)
        writer.flush()  # waits until the writer thread has written every queued record
        elapsed = time.perf_counter() - start
        writer.close()
    finally:
        undo()
    return elapsed


WRITERS = ("probelens", "tensorboard, Python CRC", "tensorboard, C CRC patched")


def bench_writers(pngs: list[bytes], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in WRITERS}
    for _ in range(repeats):
        for kind in WRITERS:
            with tempfile.TemporaryDirectory() as tmp:
                times[kind].append(write_all(kind, pngs, tmp))
    return times


def bench_stall(pngs: list[bytes], repeats: int, window: float = 2.0) -> dict[str, dict[str, float]]:
    """Rate of small torch ops (a batch-1 forward of the CNN at 32 px: many short ops, each releasing and retaking
    the GIL, as a training step's Python side does) in ``window`` seconds, alone and while another thread writes
    ``pngs`` over and over with each writer; the MB it wrote meanwhile. Best (highest rate) of ``repeats``: other
    processes on the machine only ever lower a rate, the GIL effect is the floor under it."""
    model = small_cnn().eval()
    x = torch.randn(1, 3, 32, 32)
    # one intra-op thread: batch-1 ops are too small to split, and waking a second OpenMP thread on a loaded
    # machine costs a scheduler slice per op, which would measure the neighbours rather than the GIL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        for _ in range(200):
            model(x)

    def rate_while(kind: str | None) -> tuple[float, float]:
        stop = threading.Event()
        written = [0]
        thread = None
        if kind is not None:

            def run() -> None:
                while not stop.is_set():
                    with tempfile.TemporaryDirectory() as tmp:
                        write_all(kind, pngs, tmp)
                    written[0] += sum(map(len, pngs))

            thread = threading.Thread(target=run)
            thread.start()
        n, start = 0, time.perf_counter()
        with torch.no_grad():
            while time.perf_counter() - start < window:
                model(x)
                n += 1
        elapsed = time.perf_counter() - start
        stop.set()
        if thread is not None:
            thread.join()
        return n / elapsed, written[0] / 1e6 / elapsed

    out: dict[str, dict[str, list[float]]] = {k: {"rate": [], "mbps": []} for k in ("alone", *WRITERS)}
    for _ in range(repeats):
        for kind in ("alone", *WRITERS):
            rate, mbps = rate_while(None if kind == "alone" else kind)
            out[kind]["rate"].append(rate)
            out[kind]["mbps"].append(mbps)
    torch.set_num_threads(threads)
    best = {k: max(range(repeats), key=lambda i, k=k: out[k]["rate"][i]) for k in out}
    return {k: {"rate": out[k]["rate"][best[k]], "mbps": out[k]["mbps"][best[k]]} for k in out}


# -- 3: worker kinds ---------------------------------------------------------------------------------------------


def bench_workers(repeats: int, steps: int = 30, every: int = 1) -> dict[str, dict[str, float]]:
    """Training time for ``steps`` steps with a firing every ``every`` steps, per way of running the firings."""
    training = Training()
    for _ in range(5):
        training.step()
    ctx = multiprocessing.get_context("spawn")  # fork after torch's threads started is unsafe
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx)
    pool.submit(_process_job, training.maps(), 0).result()  # started and warmed up outside the timing

    def run(kind: str, logdir: str) -> tuple[float, float]:
        writer = EventFileWriter(logdir)
        # a worker thread, bounded as the process' queue (probelens draws on the training thread: this measures why)
        thread = concurrent.futures.ThreadPoolExecutor(max_workers=1) if kind == "thread (1 worker)" else None
        futures: list[concurrent.futures.Future[Any]] = []
        start = time.perf_counter()
        for step in range(steps):
            training.step()
            if step % every:
                continue
            maps = training.maps()  # the training thread's share: the copy of what will be drawn
            if kind == "synchronous":
                render_firing(maps, writer, step)
            elif thread is not None:
                if len(futures) >= 4:
                    concurrent.futures.wait(futures[:1])
                    futures.pop(0).result()
                futures.append(thread.submit(render_firing, maps, writer, step))
            elif kind == "process (1 worker)":
                if len(futures) >= 4:  # the same bound as the thread's
                    concurrent.futures.wait(futures[:1])
                futures.append(pool.submit(_process_job, maps, step))
                while futures and futures[0].done():  # the parent writes what came back, in step order
                    for image in futures.pop(0).result():
                        writer.add_image(*image)
        train_s = time.perf_counter() - start
        if thread is not None:
            thread.shutdown(wait=True)
            futures = []
        for future in futures:
            for image in future.result():
                writer.add_image(*image)
        writer.close()
        return train_s, time.perf_counter() - start

    kinds = ("no pictures (floor)", "synchronous", "thread (1 worker)", "process (1 worker)")
    results: dict[str, dict[str, list[float]]] = {k: {"train": [], "total": []} for k in kinds}
    try:
        for r in range(repeats):
            for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:  # rotated: no kind always runs first
                with tempfile.TemporaryDirectory() as tmp:
                    train_s, total_s = run(kind, tmp)
                results[kind]["train"].append(train_s)
                results[kind]["total"].append(total_s)
    finally:
        pool.shutdown()
    return {
        k: {"train": min(r["train"]), "train_median": statistics.median(r["train"]), "total": min(r["total"])}
        for k, r in results.items()
    }


# -- report ------------------------------------------------------------------------------------------------------


def load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def report(pngs: list[bytes], writers: dict[str, list[float]], stall: Any, workers: Any, args: Any, ctx: Any) -> str:
    mb = sum(map(len, pngs)) / 1e6
    lines = [
        SECTION,
        "",
        f"Written by `python benchmarks/event_writer_bench.py --repeats {args.repeats}` on {ctx['date']}: "
        f"{ctx['machine']}, {THREADS} torch threads; "
        f"load average at start ({ctx['load_start']}), end ({load()}). C CRC-32C available: {FAST_CRC}. "
        "The three engineers' jobs shared the 2 cores (see the load), so single runs vary by 10-50%.",
        "",
        f"**Writing {len(pngs)} PNG records ({mb:.1f} MB) and flushing them** (seconds):",
        "",
        "| writer | median s | MB/s |",
        "| --- | --- | --- |",
    ]
    for kind, t in writers.items():
        med = statistics.median(t)
        lines.append(f"| {kind} | {med:.3f} | {mb / med:.0f} |")
    lines += [
        "",
        "**The training thread while another thread keeps writing those records** (forwards per second of the "
        "CNN at batch 1, 32 px, 1 torch thread, in 2 s windows: many short torch ops, each giving up the GIL and "
        "waiting to get it back; best window of the repeats):",
        "",
        "| while | forwards/s | vs alone | MB/s written meanwhile | training thread's time lost per MB written |",
        "| --- | --- | --- | --- | --- |",
    ]
    alone = stall["alone"]["rate"]
    for kind, r in stall.items():
        if kind == "alone":
            lines.append(f"| nothing (alone) | {alone:.0f} | - | - | - |")
            continue
        lost = (1 - r["rate"] / alone) / r["mbps"] * 1e3 if r["mbps"] else float("nan")  # s lost per s, per MB/s
        lines.append(f"| {kind} | {r['rate']:.0f} | {r['rate'] / alone - 1:+.0%} | {r['mbps']:.0f} | {lost:.1f} ms |")
    floor = workers["no pictures (floor)"]["train"]
    lines += [
        "",
        "**Thread vs process for the image jobs**: 30 training steps (~150 ms each), a firing after every step "
        "(16 maps at 64 px -> 3 "
        "captionless 512x512 grids: min-max, colormap, overlay, tile, 2x upscale, PNG, event write); "
        "'train s' is the training loop's time, 'total s' until the last picture is written; best of the repeats "
        "(other processes only ever add time) and the median.",
        "",
        "| firings run by | train s (best) | vs floor | train s (median) | total s (best) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, r in workers.items():
        vs = r["train"] / floor - 1
        lines.append(f"| {kind} | {r['train']:.2f} | {vs:+.0%} | {r['train_median']:.2f} | {r['total']:.2f} |")
    lines += ["", *ctx["notes"], ""]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# probelens benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mb", type=float, default=5.0, help="MB of PNG records to write")
    parser.add_argument("--parts", default="writers,stall,workers", help="comma-separated subset to run")
    parser.add_argument("--out", default=None, help="RESULTS.md to write the section into (default: print only)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    ctx = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
        f"python {platform.python_version()}, torch {torch.__version__}",
        "load_start": load(),
        "notes": [],
    }
    pngs = heatmap_pngs(int(args.mb * 1e6))
    print(f"{len(pngs)} PNGs, {sum(map(len, pngs)) / 1e6:.1f} MB", flush=True)
    parts = set(args.parts.split(","))
    writers = bench_writers(pngs, args.repeats) if "writers" in parts else {}
    print("writers", {k: round(statistics.median(v), 3) for k, v in writers.items()}, flush=True)
    stall = bench_stall(pngs, args.repeats) if "stall" in parts else {}
    print("stall", stall, flush=True)
    workers = bench_workers(args.repeats) if "workers" in parts else {}
    print("workers", workers, flush=True)
    if parts != {"writers", "stall", "workers"}:
        return  # a partial run prints only
    section = report(pngs, writers, stall, workers, args, ctx)
    print(section)
    if args.out:
        write_section(Path(args.out), section)


if __name__ == "__main__":
    main()
