"""Replays a finished run's event files into a new run folder step by step, as its training wrote them: a subprocess
that the live tests drive while the real ``tensorboard`` serves the folder.

``python replay.py SOURCE_RUN TARGET_RUN`` reads commands on stdin, one per line, and answers each on stdout:

- ``upto K``: append to every target file the source's records up to step ``K`` (the files grow in place, record by
  record, exactly as the training appended them; each file is flushed), answer ``ok K``;
- ``scalar TAG VALUE STEP``: append a scalar (``nan`` and ``inf`` allowed) with TensorBoard's ``SummaryWriter``-style
  record to the logger's file, answer ``ok``;
- ``quit``.

The records are the source's bytes, not re-encoded: the pictures, their text chunks and the framing are what a real
Lightning run wrote.
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2


def records(path: Path) -> list[tuple[int, bytes]]:
    """``(step, record bytes)`` of every record of an event file (the ``file_version`` record has step 0)."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        total = 12 + length + 4
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
        out.append((int(event.step), data[pos : pos + total]))
        pos += total
    return out


def frame(payload: bytes) -> bytes:
    """TFRecord framing around ``payload``, with TensorBoard's own checksum."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", masked_crc32c(header)) + payload + struct.pack("<I", masked_crc32c(payload))


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in source.iterdir() if "tfevents" in p.name)
    pending = {p.name: records(p) for p in files}
    written = {name: 0 for name in pending}
    logger = files[0].name  # the logger's file sorts first
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "upto":
            upto = int(words[1])
            for name, recs in pending.items():
                with open(target / name, "ab") as fh:
                    k = written[name]
                    while k < len(recs) and recs[k][0] <= upto:
                        fh.write(recs[k][1])
                        k += 1
                    written[name] = k
            print(f"ok {upto}", flush=True)
        elif words[0] == "scalar":
            tag, value, step = words[1], float(words[2]), int(words[3])
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
            with open(target / logger, "ab") as fh:
                fh.write(frame(event.SerializeToString()))
            print("ok", flush=True)


if __name__ == "__main__":
    main()
