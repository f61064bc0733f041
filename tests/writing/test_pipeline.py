"""The image pipeline: ordered, bounded, flushed on every way out, errors reported on the owner's thread, the same
bytes as the synchronous path, and no thread left behind."""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from PIL import Image

from probelens.writing import EventFileWriter, ImagePipeline, JobFailure
from probelens.writing.pipeline import SYNC_ENV_VAR


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("probelens-images")]


@pytest.fixture(autouse=True)
def no_thread_left():
    assert not workers(), "a previous test left a worker running"
    yield
    gc.collect()
    deadline = time.monotonic() + 5
    while workers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not workers(), f"worker threads left: {workers()}"


def test_jobs_run_in_submission_order_under_many_jobs():
    out: list[int] = []

    def job(i: int):
        def run():
            if i % 7 == 0:
                time.sleep(0.001)  # uneven job lengths
            out.append(i)

        return run

    with ImagePipeline(max_jobs=4) as pipeline:
        indices = [pipeline.submit(job(i)) for i in range(500)]
        assert pipeline.flush() == []
        assert out == list(range(500))
    assert indices == list(range(500))


def test_a_slow_job_blocks_submit_once_the_job_bound_is_reached():
    release = threading.Event()
    started = threading.Event()
    pipeline = ImagePipeline(max_jobs=2)

    def slow():
        started.set()
        release.wait(10)

    pipeline.submit(slow)
    started.wait(5)
    pipeline.submit(lambda: None)  # queued: 2 in flight now
    third = threading.Thread(target=pipeline.submit, args=(lambda: None,))
    third.start()
    third.join(0.3)
    assert third.is_alive(), "submit returned although max_jobs jobs were in flight"
    assert pipeline.pending == 2
    release.set()
    third.join(5)
    assert not third.is_alive()
    pipeline.close()
    assert pipeline.pending == 0


def test_the_byte_bound_holds_memory_and_blocks_the_submitter():
    """Each job closes over a 1 MiB tensor; with a 3 MiB bound never more than 3 are alive, queued or running, and
    the submitter waits about as long as the jobs take."""
    mib = 2**20
    alive = [0]
    peak = [0]
    lock = threading.Lock()

    class Tracked:
        def __init__(self):
            self.data = torch.zeros(mib, dtype=torch.uint8)
            with lock:
                alive[0] += 1
                peak[0] = max(peak[0], alive[0])

        def __del__(self):
            with lock:
                alive[0] -= 1

    def job(payload):
        def run():
            time.sleep(0.02)
            assert payload.data.numel() == mib

        return run

    pipeline = ImagePipeline(max_jobs=100, max_bytes=3 * mib)
    start = time.perf_counter()
    for _ in range(12):
        payload = Tracked()
        pipeline.submit(job(payload), nbytes=payload.data.nbytes)
        del payload
        assert pipeline.pending_bytes <= 3 * mib
    submitting = time.perf_counter() - start
    pipeline.close()
    # the one being constructed + at most 3 in flight
    assert peak[0] <= 4, peak[0]
    assert submitting >= 8 * 0.02, "submit never waited for room"
    assert alive[0] == 0


def test_one_job_larger_than_the_byte_bound_still_runs_alone():
    out = []
    with ImagePipeline(max_bytes=10) as pipeline:
        pipeline.submit(lambda: out.append("big"), nbytes=1000)
        pipeline.submit(lambda: out.append("small"), nbytes=1)
    assert out == ["big", "small"]


def test_an_exception_in_the_owners_code_still_writes_everything_submitted():
    out: list[int] = []

    def job(i):
        return lambda: (time.sleep(0.005), out.append(i))

    with pytest.raises(ZeroDivisionError), ImagePipeline() as pipeline:
        for i in range(20):
            pipeline.submit(job(i))
        raise ZeroDivisionError("the training step failed")
    assert out == list(range(20))
    assert pipeline.closed and not workers()


def test_a_failing_job_is_reported_on_the_owners_thread_not_raised():
    reported: list[tuple[JobFailure, int]] = []
    out: list[int] = []

    def job(i):
        def run():
            if i == 3:
                raise ValueError("colormap exploded")
            out.append(i)

        return run

    pipeline = ImagePipeline(on_error=lambda f: reported.append((f, threading.get_ident())))
    for i in range(6):
        pipeline.submit(job(i), name=f"tag/{i}")  # never raises
    failures = pipeline.flush()
    assert out == [0, 1, 2, 4, 5], "the jobs after a failure still run"
    assert [(f.index, f.name, type(f.error), str(f.error)) for f in failures] == [
        (3, "tag/3", ValueError, "colormap exploded")
    ]
    assert [f for f, _ in reported] == failures, "on_error gets each failure once"
    assert {ident for _, ident in reported} == {threading.get_ident()}
    assert failures[0].error.__traceback__ is not None
    assert pipeline.flush() == [] and len(reported) == 1
    pipeline.close()


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_sync_mode_runs_on_the_callers_thread_with_the_same_results(monkeypatch, how):
    monkeypatch.setenv(SYNC_ENV_VAR, "1" if how == "environment" else "0")
    threads: list[int] = []
    out: list[int] = []
    reported: list[JobFailure] = []

    def job(i):
        def run():
            threads.append(threading.get_ident())
            if i == 2:
                raise KeyError(i)
            out.append(i)

        return run

    pipeline = ImagePipeline(sync=True if how == "argument" else None, on_error=reported.append)
    assert pipeline.sync
    for i in range(5):
        pipeline.submit(job(i))
        assert pipeline.pending == 0  # done before submit returned
    assert not workers()
    assert out == [0, 1, 3, 4] and set(threads) == {threading.get_ident()}
    assert [f.index for f in reported] == [2]  # reported at once, from submit
    assert [f.index for f in pipeline.close()] == [2]


def test_the_environment_does_not_override_an_explicit_choice(monkeypatch):
    monkeypatch.setenv(SYNC_ENV_VAR, "1")
    with ImagePipeline(sync=False) as pipeline:
        assert not pipeline.sync
        threads = []
        pipeline.submit(lambda: threads.append(threading.get_ident()))
        pipeline.flush()
    assert threads and threads[0] != threading.get_ident()


def render_png(maps: torch.Tensor) -> bytes:
    """A small stand-in for a monitor's job: normalise, colour, tile, encode (torch ops and Pillow's zlib)."""
    lo, hi = maps.amin(dim=(1, 2, 3), keepdim=True), maps.amax(dim=(1, 2, 3), keepdim=True)
    x = (maps - lo) / (hi - lo).clamp_min(1e-12)
    rgb = torch.cat([x, x.sqrt(), 1 - x], dim=1)
    grid = torch.cat(list(rgb), dim=2)  # [3, H, N*W]
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def test_jobs_that_own_their_data_write_the_same_bytes_as_the_synchronous_path(tmp_path):
    def run(logdir, pipeline):
        writer = EventFileWriter(logdir)
        g = torch.Generator().manual_seed(0)
        buffer = torch.empty(4, 1, 32, 32)
        for step in range(30):
            buffer.copy_(torch.rand(4, 1, 32, 32, generator=g))  # the training side's reused buffer
            maps = buffer.clone()  # what a monitor hands over: its own copy

            def job(maps=maps, step=step):
                writer.add_image(f"probelens/gradcam/{step % 3}", render_png(maps), 32, 128, step, float(step))

            pipeline.submit(job, nbytes=maps.nbytes)
        pipeline.close()
        writer.close()
        (name,) = os.listdir(logdir)
        with open(os.path.join(logdir, name), "rb") as fh:
            data = fh.read()
        first = 16 + int.from_bytes(data[:8], "little")  # skip the file_version record (its wall time differs)
        return data[first:]

    sync = run(tmp_path / "sync", ImagePipeline(sync=True))
    threaded = run(tmp_path / "thread", ImagePipeline(max_jobs=3))
    assert len(sync) > 30 * 1000 and threaded == sync


def test_no_thread_is_left_after_close_and_close_is_idempotent():
    pipeline = ImagePipeline()
    pipeline.submit(lambda: None)
    assert len(workers()) == 1
    pipeline.close()
    assert not workers()
    assert pipeline.close() == []
    with pytest.raises(RuntimeError, match="closed"):
        pipeline.submit(lambda: None)


def test_a_forgotten_pipeline_is_drained_when_collected():
    out = []
    pipeline = ImagePipeline()
    for i in range(5):
        pipeline.submit(lambda i=i: (time.sleep(0.01), out.append(i)))
    del pipeline
    gc.collect()
    assert out == list(range(5))


def test_an_unclosed_pipeline_is_drained_at_interpreter_exit(tmp_path):
    path = tmp_path / "out.txt"
    script = textwrap.dedent(
        f"""
        import time
        from probelens.writing import ImagePipeline
        PIPELINE = ImagePipeline()  # a module global: alive until interpreter exit
        def job(i):
            def run():
                time.sleep(0.02)
                with open({str(path)!r}, "a") as fh:
                    fh.write(f"{{i}}\\n")
            return run
        for i in range(10):
            PIPELINE.submit(job(i))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert path.read_text().split() == [str(i) for i in range(10)]


def test_flush_with_a_timeout_says_how_many_are_pending():
    release = threading.Event()
    pipeline = ImagePipeline()
    pipeline.submit(lambda: release.wait(10))
    with pytest.raises(TimeoutError, match="1 image job"):
        pipeline.flush(timeout=0.05)
    release.set()
    pipeline.close()


def test_the_pipeline_leaves_the_training_threads_torch_threads_alone():
    """In a fresh process (no parallel op run yet, where a worker's ``torch.set_num_threads`` would set the main
    thread's count too), a pipeline whose job runs torch ops leaves the main thread's thread count as it was."""
    script = textwrap.dedent(
        """
        import torch
        from probelens.writing import ImagePipeline
        torch.set_num_threads(2)
        with ImagePipeline() as pipeline:
            pipeline.submit(lambda: torch.rand(64, 64, 64).sum())
        print(torch.get_num_threads())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2"]


def test_many_failures_are_counted_and_their_tensors_freed():
    freed = []

    class Payload:
        def __del__(self):
            freed.append(1)

    def job():
        payload = Payload()  # a local of the failing frame
        raise RuntimeError(f"bad {payload is not None}")

    reported = []
    pipeline = ImagePipeline(on_error=reported.append)
    for _ in range(150):
        pipeline.submit(job)
    failures = pipeline.flush()
    pipeline.close()
    assert pipeline.failed == 150 and len(failures) == 100
    # handed over at each submit/flush: at most 100 pile up between two of them; each failure at most once
    indices = [f.index for f in reported]
    assert 100 <= len(indices) <= 150 and len(set(indices)) == len(indices)
    assert len(freed) == 150, "a kept traceback still holds the failed job's locals"
    assert failures[0].error.__traceback__ is not None


def test_a_job_cannot_wait_for_its_own_pipeline():
    errors_seen = []
    with ImagePipeline() as pipeline:

        def job():
            try:
                pipeline.flush()
            except RuntimeError as err:
                errors_seen.append(str(err))

        pipeline.submit(job)
    assert errors_seen and "its own jobs" in errors_seen[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"max_jobs": 0}, "max_jobs"), ({"max_bytes": 0}, "max_bytes")],
)
def test_bad_bounds_are_refused_with_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImagePipeline(**kwargs)
