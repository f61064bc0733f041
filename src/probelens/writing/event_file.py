"""An event file that probelens owns: images and text written next to the logger's own, with a C checksum.

TensorBoard shows every event file of a directory as one run, so a file written here inside a
``TensorBoardLogger``'s ``log_dir`` puts the pictures next to the loss curves, on the same step axis, without
touching the logger's ``SummaryWriter``: no call to its private ``_get_file_writer()``, and no process-wide swap of
``tensorboard.summary.writer.record_writer.masked_crc32c``. Records are framed as TensorFlow's TFRecord format
(length, masked CRC-32C of the length, payload, masked CRC-32C of the payload) around ``Event`` protobufs from
``tensorboard.compat.proto``; the checksum is ``google_crc32c``'s C code when it is there, TensorBoard's own
pure-Python function otherwise (see :data:`FAST_CRC`). The first record is the ``file_version: "brain.Event:2"``
event that TensorBoard's own writers start with.

Wiring (what a TensorBoard sink does with it)::

    logger.experiment                               # the logger's own file exists first, so ours sorts after it
    writer = EventFileWriter(logger.log_dir)        # one per run directory and session; opens no file yet
    writer.add_image(tag, png_bytes, height, width, step=trainer.global_step)
    writer.add_text(tag, markdown, step)
    writer.flush()                                   # at the end of a firing / of fit: readers see everything
    writer.close()                                   # at teardown; a later write opens a new file

The file is created on the first write, as ``events.out.tfevents.<time>.<host>.<pid>.probelens`` (``.<n>``
appended when a writer of the same process took that name in the same second). It sorts after the logger's file of
the same process (``...<pid>.<digit>``), which matters for the readers that follow only the last file (below).
Writes are serialised by a lock, so a background worker (:class:`probelens.writing.pipeline.ImagePipeline`) may
write while the training thread flushes. Share one writer per run directory between the monitors of a session:
every extra growing file is one more that a last-file-only reader cannot follow.

How TensorBoard reads the two files of one run (measured with tensorboard 2.21 and Lightning 2.6, tested in
``tests/writing/test_event_file.py``, steps of both files interleaved, a resumed run adding a third and fourth file):

- After the run, or on a fresh start: ``tensorboard --logdir`` with its default Rust data server, the Python loader
  (``--load_fast=false``) and a new ``EventAccumulator`` (``probelens.logs.load_run``) each read every image and
  scalar of every file at its step, with the bytes as written. Nothing is purged: with ``file_version`` 2,
  TensorBoard purges "orphaned" data only when it meets a ``SessionLog.START`` event, and this writer never writes
  one. (It must not: the files are read in name order, so a START here, read after the logger's file, drops every
  scalar logged after its step.) Lightning's logger never writes one either. A ``SummaryWriter(purge_step=T)``
  does, in its new file; then the readers disagree among themselves: ``EventAccumulator`` drops the records at
  steps >= T of both files, the Rust server drops the logger's scalars but keeps this file's images, and the Python
  server purges nothing (it takes a run's first START as its start, not a restart).
- During the run: the Python readers' ``DirectoryWatcher`` reads a directory's files one after the other in name
  order and never goes back to a file once it has moved on (it assumes one writer per directory). One
  ``EventAccumulator`` reloaded again and again, or ``tensorboard --load_fast=false``, therefore keeps following the
  last file (this one: the pictures) and stops seeing the logger's scalars from the moment this file appeared. The
  Rust data server (TensorBoard's default), ``--load_fast=false --reload_multifile=true``, and
  ``plugin_event_accumulator.EventAccumulator(path, event_file_active_filter=lambda t: True)`` poll every file and
  follow both. No file name fixes this for the last-file-only readers: whichever file sorts first is abandoned.
  A caller that needs those readers live can pass a subdirectory as ``logdir`` instead (TensorBoard then shows
  the pictures as a run of their own, e.g. ``version_0/probelens``).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.plugins.text import plugin_data_pb2 as text_plugin_data_pb2

__all__ = ["FAST_CRC", "EventFileWriter", "masked_crc32c"]

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _c_crc32c() -> Callable[[bytes], int] | None:
    """``google_crc32c.value`` when its C extension is loaded and computes CRC-32C, else ``None``."""
    try:
        import google_crc32c
    except ImportError:
        return None
    if getattr(google_crc32c, "implementation", "c") != "c":  # its pure-Python fallback is no faster
        return None
    value: Callable[[bytes], int] = google_crc32c.value
    # the check value of CRC-32C (RFC 3720, appendix B.4)
    return value if value(b"123456789") == 0xE3069283 else None


_CRC32C = _c_crc32c()

FAST_CRC: bool = _CRC32C is not None
"""Whether records are checksummed by ``google_crc32c``'s C code (``False``: TensorBoard's pure-Python function)."""


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of ``data`` that TFRecord framing stores: ``rotr15(crc) + 0xA282EAD8`` modulo 2**32."""
    if _CRC32C is None:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

        return int(reference(data))
    crc = _CRC32C(data) & _U32
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


def _record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return b"".join(
        (header, struct.pack("<I", masked_crc32c(header)), payload, struct.pack("<I", masked_crc32c(payload)))
    )


class EventFileWriter:
    """Appends image, text and scalar summaries to an event file of its own in ``logdir``.

    Args:
        logdir: The run directory (a ``TensorBoardLogger``'s ``log_dir``); created on the first write if missing.
        filename_suffix: The end of the file name; it must keep ``tfevents`` in the name and is what tells this
            writer's files from the logger's.

    Attributes:
        path: The file written now, ``None`` before the first write and after :meth:`close`.
    """

    def __init__(self, logdir: str | os.PathLike[str], filename_suffix: str = ".probelens") -> None:
        if "/" in filename_suffix or os.sep in filename_suffix:
            raise ValueError(f"filename_suffix must not contain a path separator, got {filename_suffix!r}")
        self.logdir = os.fspath(logdir)
        self.filename_suffix = filename_suffix
        self.path: str | None = None
        self._file: BinaryIO | None = None
        self._lock = threading.Lock()

    def _open(self) -> BinaryIO:
        """Creates ``events.out.tfevents.<time>.<host>.<pid><suffix>`` (``.<n>`` appended if taken) and writes
        its first record. Exclusive creation keeps two writers of one process apart."""
        os.makedirs(self.logdir, exist_ok=True)
        stem = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        for n in range(10_000):
            path = os.path.join(self.logdir, f"{stem}{self.filename_suffix}" + (f".{n}" if n else ""))
            try:
                fh = open(path, "xb")  # noqa: SIM115 (kept open across calls; closed in close())
            except FileExistsError:
                continue
            break
        else:
            raise FileExistsError(f"no free event file name {stem}{self.filename_suffix}.<n> in {self.logdir}")
        first = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        first.source_metadata.writer = "probelens"
        fh.write(_record(first.SerializeToString()))
        fh.flush()  # a reader that finds the file finds a valid one
        self.path, self._file = path, fh
        return fh

    def add_summary(self, summary: summary_pb2.Summary, step: int, wall_time: float | None = None) -> None:
        """Appends one ``Summary`` at ``step`` (``wall_time``: seconds since the epoch, default now)."""
        event = event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time, step=int(step))
        event.summary.CopyFrom(summary)
        record = _record(event.SerializeToString())
        with self._lock:
            fh = self._file if self._file is not None else self._open()
            fh.write(record)

    def add_image(
        self,
        tag: str,
        png: bytes,
        height: int,
        width: int,
        step: int,
        wall_time: float | None = None,
        colorspace: int = 3,
    ) -> None:
        """Appends an already-encoded image (PNG bytes, stored as given) under ``tag`` at ``step``.

        ``height``, ``width`` and ``colorspace`` (1 gray, 3 RGB, 4 RGBA) describe the picture, as
        ``SummaryWriter.add_image`` records them.
        """
        image = summary_pb2.Summary.Image(
            height=int(height), width=int(width), colorspace=int(colorspace), encoded_image_string=png
        )
        self.add_summary(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)]), step, wall_time)

    def add_text(self, tag: str, text: str, step: int, wall_time: float | None = None) -> None:
        """Appends a text entry (markdown) under ``tag`` at ``step``, for TensorBoard's text dashboard.

        The summary is laid out as ``SummaryWriter.add_text``'s (a rank-1 string tensor with the text plugin's
        metadata), except that the tag is kept as given: ``add_text`` appends ``/text_summary`` to it.
        """
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(
                plugin_name="text", content=text_plugin_data_pb2.TextPluginData(version=0).SerializeToString()
            )
        )
        tensor = tensor_pb2.TensorProto(
            dtype="DT_STRING",
            string_val=[text.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]),
        )
        value = summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)
        self.add_summary(summary_pb2.Summary(value=[value]), step, wall_time)

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Appends a scalar under ``tag`` at ``step`` (a monitor's own cost, say), as a ``simple_value``."""
        scalar = summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        self.add_summary(summary_pb2.Summary(value=[scalar]), step, wall_time)

    def flush(self) -> None:
        """Hands everything written so far to the operating system, where readers see it."""
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        """Flushes and closes the file (idempotent). A later write starts a new file."""
        with self._lock:
            file, self._file, self.path = self._file, None, None
            if file is not None:
                file.close()  # a failing flush (a full disk) still closes the descriptor, and raises here

    def __enter__(self) -> EventFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventFileWriter(logdir={self.logdir!r}, path={self.path!r})"
