"""The dashboard's event-file follower and index (fast tier, no server): records read by byte offset agree with
TensorBoard's own reader, an incomplete last record is left for later and reported only while it stays incomplete,
damage stops the file with a notice, a file that shrank makes the run be read again, a pass's byte budget is not
mistaken for truncation, the picture cache stays within its bound, and a named pipe among the event files is reported
instead of blocking the reading thread."""

from __future__ import annotations

import torch

from probelens.dashboard.index import EventFileFollower, ImageCache, LogIndex, RunIndex
from probelens.logformat import GridFacts
from probelens.logs import load_run
from probelens.render.image import encode_png
from probelens.writing.event_file import EventFileWriter


def _write(run, steps, start=0):
    with EventFileWriter(run) as writer:
        for step in range(start, start + steps):
            image = torch.full((3, 8, 16), (10 * step) % 256, dtype=torch.uint8)
            png = encode_png(image, text=GridFacts(((0, 0, 0, 8, 8), (1, 8, 0, 16, 8)), "fp").text())
            writer.add_image("probelens/gradcam/net.0", png, 8, 16, step)
            writer.add_scalar("shortcut/score", step / 10, step)
        return writer.path if writer.path is not None else None


def _event_file(run):
    (path,) = sorted(run.glob("*tfevents*"))
    return path


def test_index_agrees_with_tensorboards_reader(tmp_path):
    run = tmp_path / "run"
    _write(run, 5)
    index = RunIndex(tmp_path, run)
    assert index.refresh() is True
    acc = load_run(run)
    (grid,) = index.summary()["grids"]
    assert [e["step"] for e in grid["entries"]] == [e.step for e in acc.Images("probelens/gradcam/net.0")]
    for event in acc.Images("probelens/gradcam/net.0"):
        assert index.image("probelens/gradcam/net.0", event.step) == event.encoded_image_string
    assert index.summary()["scalars"]["shortcut/score"] == [[e.step, e.value] for e in acc.Scalars("shortcut/score")]


def test_incomplete_record_is_left_for_later_and_reported_while_it_stays(tmp_path):
    run = tmp_path / "run"
    _write(run, 4)
    path = _event_file(run)
    data = path.read_bytes()
    path.write_bytes(data[:-300])  # cut inside the last record
    index = RunIndex(tmp_path, run)
    index.refresh()
    assert index.summary()["notices"] == []  # once: maybe a writer in the middle of a record
    index.refresh()
    (notice,) = index.summary()["notices"]
    assert path.name in notice and "incomplete record" in notice
    steps = [e["step"] for e in index.summary()["grids"][0]["entries"]]
    assert steps == [0, 1, 2, 3] or steps == [0, 1, 2]  # every record before the cut
    with open(path, "ab") as fh:  # the writer finishes the record
        fh.write(data[-300:])
    index.refresh()
    assert index.summary()["notices"] == []
    assert index.summary()["scalars"]["shortcut/score"][-1][0] == 3


def test_damage_stops_the_file_with_a_notice(tmp_path):
    run = tmp_path / "run"
    _write(run, 4)
    path = _event_file(run)
    data = bytearray(path.read_bytes())
    follower = EventFileFollower(path)
    records = follower.read()
    third = records[3].offset  # a record's length field: its checksum no longer holds
    data[third] ^= 0xFF
    path.write_bytes(bytes(data))
    index = RunIndex(tmp_path, run)
    index.refresh()
    (notice,) = index.summary()["notices"]
    assert f"damaged at byte {third}" in notice and "the rest of this file is not read" in notice
    assert len(index.summary()["scalars"].get("shortcut/score", [])) < 4


def test_a_file_that_shrank_is_read_again(tmp_path):
    run = tmp_path / "run"
    _write(run, 4)
    index = RunIndex(tmp_path, run)
    index.refresh()
    path = _event_file(run)
    path.unlink()
    _write(run, 2, start=100)  # a new, shorter file (rewritten)
    new = _event_file(run)
    new.rename(path)  # under the old name
    index.refresh()
    summary = index.summary()
    assert [s for s, _ in summary["scalars"]["shortcut/score"]] == [100, 101]
    assert any("read again from the start" in n for n in summary["notices"])


def test_a_pass_budget_is_not_truncation_and_cold_start_lists_runs_first(tmp_path):
    for name in ("a", "b"):
        _write(tmp_path / name, 6)
    index = LogIndex(tmp_path, rescan_s=0.0, pass_budget=1)
    index._scan()
    listing = index.listing()
    assert [r["run"] for r in listing["runs"]] == ["a", "b"] and not listing["indexing"]["done"]
    passes = 0
    while index.refresh(budget=300):  # the files are ~1.7 kB: several passes
        passes += 1
        for run in index.runs():
            assert run.summary()["notices"] == []
    assert passes > 2 and index.listing()["indexing"]["done"]
    assert all(r["steps"] == 6 for r in index.listing()["runs"])


def test_image_cache_stays_within_its_bound():
    cache = ImageCache(max_bytes=1000)
    for k in range(50):
        cache.put(k, bytes(100))
        assert cache.bytes <= 1000
    assert len(cache) == 10 and cache.get(49) is not None and cache.get(0) is None
    cache.put("big", bytes(600))  # more than a quarter of the bound: never cached
    assert cache.get("big") is None


def test_a_named_pipe_among_the_event_files_is_reported_not_waited_on(tmp_path):
    import os
    import threading

    run = tmp_path / "run"
    _write(run, 2)
    os.mkfifo(run / "events.out.tfevents.0.pipe")  # open() on it would wait for a writer forever
    index = LogIndex(tmp_path, rescan_s=0.0)
    thread = threading.Thread(target=index.refresh, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the pass waited on the named pipe"
    summary = index.run("run").summary()
    assert [e["step"] for e in summary["grids"][0]["entries"]] == [0, 1]  # the real file is read
    assert summary["notices"] == [
        "events.out.tfevents.0.pipe is not a regular file (a named pipe, a device or a folder): not read"
    ]
