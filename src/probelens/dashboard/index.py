"""What the dashboard knows about a log directory: its runs, and per run every probelens picture, shortcut scalar
and strategy discovery scalar.

Read from the event files alone, never sampled: every logged step of every tag is listed. The files are followed by
byte offset (:class:`EventFileFollower`): each pass reads only what was appended since the last one, so a run that is
still training costs a few ``stat`` calls and its new records per pass. A background thread (:meth:`LogIndex.start`)
makes the passes; the routes answer from the index as it stands, never waiting for a pass. The index holds, per
picture, where its record lies (file, offset, length) and its PNG layout, not its bytes: :meth:`RunIndex.image`
reads a picture on demand, through a small LRU cache bounded in bytes, so the server's memory does not grow with
the number of pictures logged.

Damage is reported, not hidden: a file that ends in an incomplete record (still being written, or truncated), a
damaged record (its checksum or its protobuf does not hold; the rest of that file is not read), a file that shrank
(rewritten: its run is read again from the start) and a run folder that disappeared each give a notice that the
dashboard shows in the affected run's panel. Listings hold no NaN or infinity (JSON has neither): they become
``null``. Nothing here imports torch or probelens' render code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2

from probelens.logformat import (
    PREDICTIONS_KEY,
    PngLayout,
    layout_from_header,
    predictions_from_text,
    read_png_header,
)
from probelens.logs import find_runs, is_event_file, png_layout, run_name

__all__ = [
    "DISCOVERY_KEYS",
    "EventFileFollower",
    "ImageCache",
    "LogIndex",
    "RunIndex",
    "classify_tag",
    "discovery_picture",
    "discovery_scalar",
    "finite",
    "layer_order_key",
]

_STAGES = ("validate/", "test/")
_COUNTERFACTUALS = "shortcut/counterfactuals"
_ALERT_TEXT = "shortcut/alert"
_SCALAR_PREFIXES = ("shortcut/", "concept/")
_DISCOVERY = "discovery"
DISCOVERY_KEYS = ("clusters", "eigengap", "largest_share", "two_strategies")
"""The scalars StrategyMonitor logs per class (``discovery/[<name>/]<class>/<key>``), in the order the view draws
them; a key not among these (a later version's) is listed after them."""
_READ_CHUNK = 8 << 20  # bytes read from a file at once; a record larger than this is read whole


def classify_tag(tag: str) -> tuple[str, str, str] | None:
    """``(stage, method, layer)`` of a probelens image tag, ``None`` for another tool's tag.

    ``probelens/gradcam/net.0.3`` -> ``("", "gradcam", "net.0.3")``; ``validate/probelens/saliency/vanilla`` ->
    ``("validate", "saliency", "vanilla")``; ``shortcut/counterfactuals`` -> ``("", "counterfactuals", "")``. A
    monitor given ``name=`` writes ``probelens/<name>/<method>/...``; its ``<name>/<method>`` is the method here.
    """
    stage = ""
    for prefix in _STAGES:
        if tag.startswith(prefix):
            stage, tag = prefix[:-1], tag[len(prefix) :]
            break
    if tag == _COUNTERFACTUALS:
        return stage, "counterfactuals", ""
    if not tag.startswith("probelens/"):
        return None
    parts = tag[len("probelens/") :].split("/")
    if len(parts) == 1:
        return stage, parts[0], ""
    return stage, "/".join(parts[:-1]), parts[-1]


def discovery_picture(tag: str) -> tuple[str, str, str] | None:
    """``(stage, monitor, class)`` of a StrategyMonitor picture tag, ``None`` for any other tag.

    ``probelens/discovery/snow`` -> ``("", "", "snow")``; ``validate/probelens/spare/discovery/snow`` (a monitor
    given ``name="spare"``) -> ``("validate", "spare", "snow")``.
    """
    parts = classify_tag(tag)
    if parts is None:
        return None
    stage, method, layer = parts
    if not layer:
        return None
    if method == _DISCOVERY:
        return stage, "", layer
    if method.endswith("/" + _DISCOVERY):
        return stage, method[: -len(_DISCOVERY) - 1], layer
    return None


def discovery_scalar(tag: str) -> tuple[str, str, str, str] | None:
    """``(stage, monitor, class, key)`` of a StrategyMonitor scalar tag, ``None`` for any other tag.

    ``discovery/snow/eigengap`` -> ``("", "", "snow", "eigengap")``; ``test/discovery/spare/snow/clusters`` ->
    ``("test", "spare", "snow", "clusters")``. The class is the segment before the key, the monitor's name what
    lies between ``discovery/`` and the class (as :class:`probelens.core.writer.MonitorWriter` names tags).
    """
    stage = ""
    for prefix in _STAGES:
        if tag.startswith(prefix):
            stage, tag = prefix[:-1], tag[len(prefix) :]
            break
    parts = tag.split("/")
    if len(parts) < 3 or parts[0] != _DISCOVERY or not parts[-1] or not parts[-2]:
        return None
    return stage, "/".join(parts[1:-2]), parts[-2], parts[-1]


def layer_order_key(layer: str) -> tuple[Any, ...]:
    """Sort key of a layer name in the order its name encodes: numbers as numbers (``net.0.4`` before ``net.0.12``),
    the rest as text. Module names count children from 0 in forward order, so this is depth order."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", layer) if part)


def finite(value: Any) -> Any:
    """``value`` with every NaN and infinity (at any depth of dicts, lists and tuples) replaced by ``None``: JSON has
    neither, and a browser's ``JSON.parse`` rejects Python's bare ``NaN``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------ event files
def _crc32c_function() -> Any:
    """``google_crc32c.value`` where its C code is installed, else ``None`` (payload checksums are then skipped)."""
    try:
        import google_crc32c
    except ImportError:
        return None
    if getattr(google_crc32c, "implementation", "c") == "c":
        return google_crc32c.value
    return None


_CRC32C = _crc32c_function()


def _masked_crc32c(data: bytes) -> int:
    if _CRC32C is None:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

        return int(masked_crc32c(data))
    crc = _CRC32C(data) & 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclass
class Record:
    """One record of an event file: its ``Event``, where it starts and how long it is (framing included)."""

    offset: int
    length: int
    event: Any


class EventFileFollower:
    """Reads an event file (TFRecord framing around ``Event`` protobufs) on from where the last read stopped.

    The length of every record is checked against its CRC (cheap: 8 bytes); the payload's CRC too when
    ``google_crc32c``'s C code is installed (TensorBoard's pure-Python CRC would cost seconds per 100 MB). A record
    that is not complete yet is left for the next read. Damage stops the reading of this file for good (there is no
    way to find the next record boundary reliably); :attr:`notice` says where.

    Args:
        path: The event file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.size = 0
        self.identity: tuple[int, int] | None = None
        self.damaged: str | None = None
        self.incomplete = 0  # bytes of an incomplete last record at the last read
        self.exhausted = False  # the last read stopped at its budget, with more to read
        self._incomplete_reads = 0

    @property
    def notice(self) -> str | None:
        """What is wrong with this file, for a person; ``None`` when nothing is."""
        if self.damaged:
            return self.damaged
        if self.incomplete and self._incomplete_reads >= 2:
            return (
                f"{self.path.name} ends in an incomplete record ({self.incomplete} bytes from byte {self.offset}): "
                "the file is still being written, or was truncated; what that record holds is not shown"
            )
        return None

    def shrank(self) -> bool:
        """Whether the file is now shorter than what was read, or was replaced by another file of the same name."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        identity = (st.st_dev, st.st_ino)
        return st.st_size < self.offset or (self.identity is not None and identity != self.identity)

    def read(self, budget: int | None = None) -> list[Record]:
        """The complete records appended since the last call (at most about ``budget`` bytes of them)."""
        if self.damaged:
            return []
        try:
            if not stat.S_ISREG(os.stat(self.path).st_mode):
                # a named pipe would block the reading thread in open() for as long as nobody writes to it
                self.damaged = f"{self.path.name} is not a regular file (a named pipe, a device or a folder): not read"
                return []
            fh = open(self.path, "rb")  # noqa: SIM115 - a with block below
        except OSError:
            return []
        records: list[Record] = []
        with fh:
            st = os.fstat(fh.fileno())
            self.identity = (st.st_dev, st.st_ino)
            unchanged = st.st_size == self.size
            self.size = st.st_size
            if self.size == self.offset:
                return records
            if unchanged and self.incomplete and not self.exhausted:
                self._incomplete_reads += 1  # the same incomplete record as last time: not read again
                return records
            fh.seek(self.offset)
            self.exhausted = False
            pending = self.size - self.offset
            buffer = b""
            base = self.offset
            pos = 0
            read_total = 0
            while True:
                if len(buffer) - pos < 12:
                    want = min(_READ_CHUNK, pending)
                    if budget is not None:
                        want = min(want, max(1, budget - read_total))
                    if want > 0 and budget is not None and read_total >= budget:
                        self.exhausted = True
                        break
                    if want <= 0:
                        break
                    chunk = fh.read(want)
                    if not chunk:
                        break
                    pending -= len(chunk)
                    read_total += len(chunk)
                    buffer, base, pos = buffer[pos:] + chunk, base + pos, 0
                    continue
                header = buffer[pos : pos + 8]
                (length,) = struct.unpack("<Q", header)
                (length_crc,) = struct.unpack("<I", buffer[pos + 8 : pos + 12])
                if length_crc != _masked_crc32c(header):
                    self.damaged = (
                        f"{self.path.name} is damaged at byte {base + pos} (a record length fails its checksum): "
                        "the rest of this file is not read"
                    )
                    break
                total = 12 + length + 4
                if len(buffer) - pos < total:
                    if pending <= 0:
                        break
                    if budget is not None and read_total >= budget:
                        self.exhausted = True
                        break
                    want = min(_READ_CHUNK, pending)
                    if budget is not None:
                        want = min(want, max(1, budget - read_total))
                    chunk = fh.read(max(want, total - (len(buffer) - pos)))
                    if not chunk:
                        break
                    pending -= len(chunk)
                    read_total += len(chunk)
                    buffer, base, pos = buffer[pos:] + chunk, base + pos, 0
                    continue
                payload = buffer[pos + 12 : pos + 12 + length]
                if _CRC32C is not None:
                    (data_crc,) = struct.unpack("<I", buffer[pos + 12 + length : pos + total])
                    if data_crc != _masked_crc32c(payload):
                        self.damaged = (
                            f"{self.path.name} is damaged at byte {base + pos} (a record fails its checksum): "
                            "the rest of this file is not read"
                        )
                        break
                try:
                    event = event_pb2.Event.FromString(payload)
                except Exception:  # any parse failure is damage
                    self.damaged = (
                        f"{self.path.name} is damaged at byte {base + pos} (a record is not an event): "
                        "the rest of this file is not read"
                    )
                    break
                records.append(Record(base + pos, total, event))
                pos += total
            self.offset = base + pos
        self.incomplete = self.size - self.offset if not (self.damaged or self.exhausted) else 0
        self._incomplete_reads = 1 if self.incomplete else 0
        return records


_TRIM_AFTER_BYTES = 16 << 20


def _release_freed_memory() -> None:
    """Hand the heap's free pages back to the system after a pass that read many megabytes (glibc's ``malloc_trim``;
    a no-op elsewhere). Reading 90 MiB of event files leaves ~95 MiB of freed read buffers in glibc's heap, counted
    in the server's resident memory though nothing holds them; trimmed, the process is back within ~3 MiB of where
    it started (measured in-process; ``benchmarks/RESULTS.md``, "Dashboard")."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def read_record(path: Path, offset: int, length: int) -> Any:
    """The ``Event`` of the record at ``offset`` (``length`` bytes, framing included) of an event file."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise OSError(f"{path.name}: the record at byte {offset} is no longer there (the file was cut or replaced)")
    return event_pb2.Event.FromString(data[12 : length - 4])


def _image_bytes(value: Any, index: int) -> bytes | None:
    if index < 0:
        return bytes(value.image.encoded_image_string)
    strings = value.tensor.string_val
    return bytes(strings[index]) if index < len(strings) else None


class ImageCache:
    """The pictures read last, up to ``max_bytes`` in all (least recently used out first)."""

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Any, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: Any, data: bytes) -> None:
        if len(data) > self.max_bytes // 4:
            return  # one picture never fills the cache
        with self._lock:
            old = self._items.pop(key, None)
            self.bytes -= len(old) if old is not None else 0
            self._items[key] = data
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class _Picture:
    file: int  # index into RunIndex._files
    offset: int
    length: int
    value: int  # index of the summary value in the event
    string: int  # -1: Summary.Image; else the index into a tensor's string_val (images plugin, new style)
    wall_time: float
    layout: PngLayout  # shared between the steps that have the same cells (predictions and scale kept apart)
    captions: str | None  # the grid's predictions chunk as written, parsed when a listing is built
    scale: dict[str, object] | None


class RunIndex:
    """One run (a directory of event files): its probelens tags, indexed incrementally by byte offset.

    Args:
        logdir: The log directory the run's name is relative to.
        path: The run directory.
        cache: Where pictures read on demand are kept (shared by the runs of a :class:`LogIndex`).
    """

    def __init__(self, logdir: Path, path: Path, cache: ImageCache | None = None) -> None:
        self.path = path
        self.name = run_name(logdir, path)
        self._cache = cache if cache is not None else ImageCache()
        self._refresh_lock = threading.Lock()  # one pass at a time
        self._lock = threading.Lock()  # the index below
        self._reset()
        self.load_seconds = 0.0
        self.deleted = False

    def _reset(self) -> None:
        self._followers: dict[str, EventFileFollower] = {}
        self._files: list[Path] = []
        self._pictures: dict[str, dict[int, _Picture]] = {}
        self._tag_order: dict[str, int] = {}
        self._scalars: dict[str, dict[int, float]] = {}
        # StrategyMonitor's scalars by tag, and its (stage, monitor, class) triples in the order first written
        self._discovery: dict[str, dict[int, float]] = {}
        self._discovery_order: dict[tuple[str, str, str], int] = {}
        self._epochs: dict[int, float] = {}  # Lightning's "epoch" scalar: aligns two runs by epoch
        self._scalar_plugin: dict[str, str] = {}
        self._alerts: dict[tuple[str, int], str] = {}
        self._other_tags: dict[str, set[str]] = {"images": set(), "scalars": set(), "tensors": set()}
        self._layouts: dict[bytes, PngLayout] = {}
        self._notices: list[str] = []
        self._version = 0
        self._built: tuple[int, bytes] | None = None
        self.indexed = False
        self.bytes_read = 0
        self.bytes_total = 0

    # ------------------------------------------------------------------ reading
    def _event_files(self) -> list[str] | None:
        try:
            return sorted(name for name in os.listdir(self.path) if is_event_file(name))
        except OSError:
            return None

    def refresh(self, budget: int | None = None) -> bool:
        """Read what was appended to the run's event files since the last call; True if the index changed.

        Args:
            budget: Read at most about this many bytes in this pass (the rest at the next), so that a cold start
                indexes every run a bit at a time; ``None`` reads everything there is.
        """
        with self._refresh_lock:
            start = time.perf_counter()
            names = self._event_files()
            if names is None:
                if not self.deleted:
                    with self._lock:
                        self.deleted = True
                        self._version += 1
                    return True
                return False
            changed = False
            if self.deleted:
                self.deleted, changed = False, True
            if any(f.shrank() for f in self._followers.values()):
                shrunk = [f.path.name for f in self._followers.values() if f.shrank()]
                with self._lock:
                    self._reset()
                    self._notices = [
                        f"{', '.join(shrunk)} shrank or was replaced since it was read (rewritten or truncated): the "
                        "run was read again from the start"
                    ]
                changed = True
            total = 0
            for name in names:
                if name not in self._followers:
                    self._followers[name] = EventFileFollower(self.path / name)
                    with self._lock:
                        self._files.append(self.path / name)
                with contextlib.suppress(OSError):
                    total += os.stat(self.path / name).st_size
            file_ids = {path.name: k for k, path in enumerate(self._files)}
            done = True
            for name in names:
                follower = self._followers[name]
                records = follower.read(budget)
                if follower.exhausted:
                    done = False  # the budget ran out in this file
                if records:
                    self._add(file_ids[name], records)
                    changed = True
                    if budget is not None:
                        budget -= sum(r.length for r in records)
                        if budget <= 0:
                            done = False
                            break
            notices = [n for n in (f.notice for f in self._followers.values()) if n]
            read = sum(f.offset for f in self._followers.values())
            with self._lock:
                kept = [n for n in self._notices if "was read again from the start" in n]
                if notices + kept != self._notices:
                    self._notices = kept + notices
                    changed = True
                indexed = done or self.indexed
                if indexed != self.indexed or read != self.bytes_read or total != self.bytes_total:
                    changed = True
                self.indexed, self.bytes_read, self.bytes_total = indexed, read, total
                if changed:
                    self._version += 1
            self.load_seconds = time.perf_counter() - start
            return changed

    def _layout(self, data: bytes) -> tuple[PngLayout, str | None, dict[str, object] | None]:
        """The picture's layout (shared by every picture with the same cells), its predictions chunk as written (a
        short string: parsed only when a listing is built) and its colour scale."""
        try:
            header = read_png_header(data)
        except ValueError:
            try:
                layout = png_layout(data)  # another format (GIF, JPEG): its size from Pillow's header reader
            except Exception:  # not an image a header reader knows: listed, shown if the browser can
                layout = PngLayout(0, 0, {}, None, {})
            return layout, None, None
        text = {k: v for k, v in header.text.items() if k != PREDICTIONS_KEY}
        layout = layout_from_header(header.width, header.height, text)
        key = repr(
            (layout.width, layout.height, sorted(layout.boxes.items()), layout.probe, sorted(layout.maps.items()))
        ).encode()
        shared = self._layouts.setdefault(
            key, PngLayout(layout.width, layout.height, layout.boxes, layout.probe, {}, layout.maps)
        )
        return shared, header.text.get(PREDICTIONS_KEY), layout.scale

    def _add(self, file_id: int, records: list[Record]) -> None:
        with self._lock:
            for record in records:
                event = record.event
                if not event.HasField("summary"):
                    continue
                step, wall = int(event.step), float(event.wall_time)
                for k, value in enumerate(event.summary.value):
                    tag = value.tag
                    plugin = value.metadata.plugin_data.plugin_name if value.HasField("metadata") else ""
                    kind = value.WhichOneof("value")
                    if kind == "image":
                        self._add_picture(tag, step, wall, file_id, record, k, -1, value.image.encoded_image_string)
                    elif kind == "simple_value":
                        self._add_scalar(tag, step, float(value.simple_value))
                    elif kind == "tensor":
                        if plugin:
                            self._scalar_plugin.setdefault(tag, plugin)
                        plugin = plugin or self._scalar_plugin.get(tag, "")
                        if plugin == "images" and len(value.tensor.string_val) >= 3:
                            # the images plugin's tensor form: width, height, then the encoded pictures
                            data = value.tensor.string_val[2]
                            self._add_picture(tag, step, wall, file_id, record, k, 2, data)
                        elif plugin == "scalars":
                            self._add_scalar(tag, step, _tensor_scalar(value.tensor))
                        else:
                            self._other_tags["tensors"].add(tag)
                            if tag.removesuffix("/text_summary").endswith(_ALERT_TEXT):
                                strings = list(value.tensor.string_val)
                                text = strings[0].decode("utf-8", "replace") if strings else ""
                                self._alerts[(tag, step)] = text

    def _add_picture(
        self, tag: str, step: int, wall: float, file_id: int, record: Record, value: int, string: int, data: bytes
    ) -> None:
        self._other_tags["images"].add(tag)
        if classify_tag(tag) is None:
            return
        self._tag_order.setdefault(tag, len(self._tag_order))
        found = discovery_picture(tag)
        if found is not None:
            self._discovery_order.setdefault(found, len(self._discovery_order))
        by_step = self._pictures.setdefault(tag, {})
        old = by_step.get(step)
        # a step logged twice (a resumed run) keeps the picture written last: later file, or later in the same file
        if old is None or (old.file, old.offset) <= (file_id, record.offset):
            layout, captions, scale = self._layout(data)
            by_step[step] = _Picture(
                file_id, record.offset, record.length, value, string, wall, layout, captions, scale
            )

    def _add_scalar(self, tag: str, step: int, value: float) -> None:
        self._other_tags["scalars"].add(tag)
        if tag == "epoch":
            self._epochs[step] = value
        bare = tag.split("/", 1)[1] if tag.startswith(_STAGES) else tag
        if bare.startswith(_SCALAR_PREFIXES):
            self._scalars.setdefault(tag, {})[step] = value
            return
        found = discovery_scalar(tag)
        if found is not None:
            self._discovery_order.setdefault(found[:3], len(self._discovery_order))
            self._discovery.setdefault(tag, {})[step] = value

    # ------------------------------------------------------------------ answering
    def summary(self) -> dict[str, Any]:
        """The run's listing as it stands (see :meth:`LogIndex.listing` and ``docs/dashboard.md``); no file is read."""
        return json.loads(self.summary_json())

    def summary_json(self) -> bytes:
        """:meth:`summary` as JSON (NaN and infinities as ``null``), built once per change of the index; only these
        bytes are kept (a listing as Python objects is ~10x their size)."""
        with self._lock:
            if self._built is None or self._built[0] != self._version:
                self._built = (self._version, json.dumps(finite(self._build()), separators=(",", ":")).encode())
            return self._built[1]

    def image(self, tag: str, step: int) -> bytes | None:
        """The encoded picture of ``tag`` at ``step``, exactly as stored in the event file (``None`` if absent).

        Raises:
            OSError: The record is no longer where it was indexed (the file was cut or replaced meanwhile).
        """
        with self._lock:
            picture = self._pictures.get(tag, {}).get(step)
            if picture is None:
                return None
            path = self._files[picture.file]
        key = (str(path), picture.offset, picture.value, picture.string)
        data = self._cache.get(key)
        if data is None:
            event = read_record(path, picture.offset, picture.length)
            data = _image_bytes(event.summary.value[picture.value], picture.string)
            if data is None:
                return None
            self._cache.put(key, data)
        return data

    def _entry(self, step: int, picture: _Picture) -> dict[str, Any]:
        """A picture's line in a listing: its step, size and, where its PNG recorded them, its probe-image cells,
        captions, map boxes and colour scale."""
        layout = picture.layout
        entry: dict[str, Any] = {"step": step, "wall_time": picture.wall_time, "w": layout.width, "h": layout.height}
        if layout.boxes:
            entry["probe"] = layout.probe or ""
            entry["boxes"] = {str(k): list(box) for k, box in sorted(layout.boxes.items())}
        predictions = predictions_from_text({PREDICTIONS_KEY: picture.captions}) if picture.captions else {}
        if predictions:
            entry["predictions"] = {str(k): list(v) for k, v in sorted(predictions.items())}
        if layout.maps:
            entry["maps"] = {str(k): list(box) for k, box in sorted(layout.maps.items())}
        if picture.scale:
            entry["scale"] = picture.scale
        return entry

    def _discovery_listing(self) -> list[dict[str, Any]]:
        """StrategyMonitor's logs: per (stage, monitor) every class that has a picture or a scalar, in the order first
        written, with its picture at every logged step and its scalars by key (``docs/dashboard.md``)."""
        pictures: dict[tuple[str, str, str], str] = {}
        for tag in self._pictures:
            found = discovery_picture(tag)
            if found is not None:
                pictures[found] = tag
        scalars: dict[tuple[str, str, str], dict[str, str]] = {}
        for tag in self._discovery:
            found_scalar = discovery_scalar(tag)
            if found_scalar is not None:
                scalars.setdefault(found_scalar[:3], {})[found_scalar[3]] = tag
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        # fit first, then the other stages by name (test, validate); monitors and classes in the order first written
        for key in sorted(self._discovery_order, key=lambda k: (k[0] != "", k[0], self._discovery_order[k])):
            stage, monitor, name = key
            picture_tag = pictures.get(key)
            entries = (
                [self._entry(step, p) for step, p in sorted(self._pictures[picture_tag].items())] if picture_tag else []
            )
            tags = scalars.get(key, {})
            keys = [k for k in DISCOVERY_KEYS if k in tags] + sorted(k for k in tags if k not in DISCOVERY_KEYS)
            groups.setdefault((stage, monitor), []).append(
                {
                    "class": name,
                    "tag": picture_tag,
                    "entries": entries,
                    "scalars": {k: [[s, v] for s, v in sorted(self._discovery[tags[k]].items())] for k in keys},
                    "scalar_tags": {k: tags[k] for k in keys},
                }
            )
        return [{"stage": st, "monitor": mon, "classes": classes} for (st, mon), classes in groups.items()]

    def _build(self) -> dict[str, Any]:
        grids, pictures, panels = [], [], []
        # the matrix' rows per probe set, in the order the grids show them (interleaved by class), not by index
        probes: dict[str, list[int]] = {}
        method_order: dict[tuple[str, str], int] = {}
        for tag in sorted(self._pictures, key=self._tag_order.__getitem__):
            stage, method, _ = classify_tag(tag) or ("", "", "")
            method_order.setdefault((stage, method), len(method_order))

        def order(tag: str) -> tuple[Any, ...]:
            stage, method, layer = classify_tag(tag) or ("", "", "")
            # stages apart (fit first), methods in the order they were first written (the configured order), layers in
            # the order their names encode (depth order)
            return (stage != "", stage, method_order[(stage, method)], layer_order_key(layer), tag)

        for tag in sorted(self._pictures, key=order):
            if discovery_picture(tag) is not None:
                continue  # the Discovery view's: its cells are the prototypes, not a matrix column
            stage, method, layer = classify_tag(tag) or ("", "", "")
            entries = [self._entry(step, picture) for step, picture in sorted(self._pictures[tag].items())]
            has_cells = any("boxes" in entry for entry in entries)
            if method != "counterfactuals":  # the matrix' rows: the grids' probe images
                for _, picture in sorted(self._pictures[tag].items()):
                    if picture.layout.boxes:
                        rows = probes.setdefault(picture.layout.probe or "", [])
                        rows.extend(k for k in picture.layout.boxes if k not in rows)
            item: dict[str, Any] = {"tag": tag, "stage": stage, "method": method, "layer": layer, "entries": entries}
            if method == "counterfactuals":
                panels.append(item)
            elif has_cells:
                grids.append(item)
            else:
                pictures.append(item)
        discovery = self._discovery_listing()
        scalars = {tag: [[s, v] for s, v in sorted(points.items())] for tag, points in sorted(self._scalars.items())}
        alerts = [{"tag": tag, "step": step, "text": text} for (tag, step), text in self._alerts.items()]
        found = [e["step"] for group in discovery for c in group["classes"] for e in c["entries"]]
        steps = sorted({e["step"] for item in grids + panels + pictures for e in item["entries"]} | set(found))
        scalar_steps = sorted({s for points in [*self._scalars.values(), *self._discovery.values()] for s in points})
        return {
            "run": self.name,
            "steps": steps,
            "scalar_steps": scalar_steps,
            "epochs": [[step, epoch] for step, epoch in sorted(self._epochs.items())],
            "grids": grids,
            "panels": panels,
            "pictures": pictures,
            "scalars": scalars,
            "alerts": sorted(alerts, key=lambda a: (a["step"], a["tag"])),
            "discovery": discovery,
            "probes": dict(sorted(probes.items())),
            "other_tags": {kind: len(tags) for kind, tags in self._other_tags.items() if tags},
            "indexed": self.indexed,
            "progress": {"bytes_read": self.bytes_read, "bytes_total": self.bytes_total},
            "notices": list(self._notices),
            "deleted": self.deleted,
        }

    def status(self) -> dict[str, Any]:
        """The run's line in :meth:`LogIndex.listing` (no file read)."""
        with self._lock:
            n_grids = sum(
                1
                for tag, steps in self._pictures.items()
                if discovery_picture(tag) is None and any(p.layout.boxes for p in steps.values())
            )
            steps = {s for by_step in self._pictures.values() for s in by_step}
            return {
                "run": self.name,
                "probelens": bool(self._pictures or self._scalars or self._discovery),
                "grids": n_grids,
                "steps": len(steps),
                "shortcut": any(
                    (t.split("/", 1)[1] if t.startswith(_STAGES) else t).startswith("shortcut/") for t in self._scalars
                ),
                "discovery": bool(self._discovery_order),
                "indexed": self.indexed,
                "progress": {"bytes_read": self.bytes_read, "bytes_total": self.bytes_total},
                "notices": len(self._notices),
            }

    def has_probelens(self) -> bool:
        with self._lock:
            return bool(self._pictures or self._scalars or self._discovery)


def _tensor_scalar(tensor: Any) -> float:
    """The value of a rank-0 float tensor proto (the scalars plugin's tensor form)."""
    if tensor.float_val:
        return float(tensor.float_val[0])
    if tensor.double_val:
        return float(tensor.double_val[0])
    if tensor.tensor_content:
        fmt = {1: "<f", 2: "<d"}.get(tensor.dtype, "<f")  # DT_FLOAT = 1, DT_DOUBLE = 2
        return float(struct.unpack_from(fmt, tensor.tensor_content)[0])
    return math.nan


class LogIndex:
    """The runs under one log directory, kept current by passes over the files (:meth:`refresh`), either called
    directly or made by a background thread (:meth:`start`).

    Args:
        logdir: The directory TensorBoard was started on (``--logdir``).
        rescan_s: How long a listing of the run directories is reused before the tree is walked again.
        poll_s: The background thread's pause between two passes.
        cache_bytes: The bound of the cache of pictures read on demand.
        pass_budget: Bytes one pass reads from a run at most, so that a cold start lists every run early and
            indexes them a slice at a time.
        read_rate: Bytes per second the background thread reads at most (``None``: as fast as the disk allows), for
            log directories on storage shared with others; a pass then reads at most half a second's worth per run
            and the thread pauses after it as long as the bytes read take at that rate.
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        rescan_s: float = 2.0,
        poll_s: float = 1.0,
        cache_bytes: int = 32 << 20,
        pass_budget: int = 64 << 20,
        read_rate: float | None = None,
    ) -> None:
        if read_rate is not None and not (math.isfinite(read_rate) and read_rate > 0):
            raise ValueError(f"read_rate must be a positive number of bytes per second, or None; got {read_rate!r}")
        self.logdir = Path(logdir)
        self.rescan_s = rescan_s
        self.poll_s = poll_s
        self.pass_budget = pass_budget
        self.read_rate = read_rate
        self.last_pass_bytes = 0
        self.cache = ImageCache(cache_bytes)
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._runs: dict[str, RunIndex] = {}
        self._deleted: dict[str, float] = {}
        self._scanned = -float("inf")
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.passes = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ background
    def start(self) -> None:
        """Start the background thread that keeps the index current (once; a daemon, so it never holds up exit)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="probelens-dashboard-index", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop the background thread (after its current pass)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        budget = self.pass_budget
        if self.read_rate is not None:
            budget = max(1, min(budget, int(self.read_rate / 2)))
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                busy = self.refresh(budget=budget)
                self.last_error = None
            except Exception as err:  # a pass that fails is tried again at the next one
                busy, self.last_error = False, f"{type(err).__name__}: {err}"
            if self.read_rate is not None:
                # hold the rate: the pass's bytes take this long at it
                pause = self.last_pass_bytes / self.read_rate - (time.monotonic() - started)
                if pause > 0 and self._stop.wait(pause):
                    break
            if not busy:
                self._stop.wait(self.poll_s)

    def refresh(self, budget: int | None = None) -> bool:
        """One pass: find the runs again (at most every ``rescan_s``) and read what every run's files gained.

        Args:
            budget: Bytes read per run at most in this pass (``None``: all there is).

        Returns:
            Whether some run is not fully indexed yet (another pass right away reads on).
        """
        with self._refresh_lock:
            self._scan()
            unfinished = False
            read = 0
            for run in self._current():
                before = run.bytes_read
                run.refresh(budget)
                read += max(0, run.bytes_read - before)
                unfinished = unfinished or not run.indexed
            self.passes += 1
            self.last_pass_bytes = read
            if read >= _TRIM_AFTER_BYTES:
                _release_freed_memory()
            return unfinished

    def _scan(self, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._scanned < self.rescan_s:
                return
        found = find_runs(self.logdir) if self.logdir.is_dir() else []
        with self._lock:
            current = {}
            for path in found:
                name = run_name(self.logdir, path)
                current[name] = self._runs.get(name) or RunIndex(self.logdir, path, self.cache)
            for name in self._runs.keys() - current.keys():
                self._deleted[name] = time.time()
            for name in current:
                self._deleted.pop(name, None)
            self._runs = current
            self._scanned = time.monotonic()

    def _current(self) -> list[RunIndex]:
        with self._lock:
            return [self._runs[name] for name in sorted(self._runs)]

    # ------------------------------------------------------------------ answering
    def runs(self) -> list[RunIndex]:
        """Every run under the log directory, sorted by name (walked again first when the thread is not running and
        the last walk is older than ``rescan_s``)."""
        if self._thread is None:
            self._scan()
        return self._current()

    def run(self, name: str) -> RunIndex | None:
        """The run called ``name`` (as :meth:`listing` names it), or ``None``."""
        with self._lock:
            return self._runs.get(name)

    def was_deleted(self, name: str) -> bool:
        """Whether a run called ``name`` was listed earlier and its folder is gone."""
        with self._lock:
            return name in self._deleted

    def listing(self) -> dict[str, Any]:
        """The runs, which of them have probelens data, how far indexing got, and a message when there is nothing to
        show (no file is read: runs are listed before their pictures are indexed)."""
        if not self.logdir.is_dir():
            return {
                "logdir": str(self.logdir),
                "runs": [],
                "indexing": {"done": True, "bytes_read": 0, "bytes_total": 0},
                "message": f"The log directory {str(self.logdir)!r} does not exist (or is not a local folder): "
                "start TensorBoard with --logdir pointing at the folder that holds your runs "
                "(e.g. tensorboard --logdir lightning_logs).",
            }
        runs = [run.status() for run in self.runs()]
        done = all(r["indexed"] for r in runs)
        indexing = {
            "done": done,
            "bytes_read": sum(r["progress"]["bytes_read"] for r in runs),
            "bytes_total": sum(r["progress"]["bytes_total"] for r in runs),
        }
        message = None
        if not runs:
            message = (
                f"No TensorBoard event files (events.out.tfevents.*) under {str(self.logdir)!r}. Train with a "
                "TensorBoardLogger and probelens monitors among the Trainer's callbacks, or point --logdir at the "
                "folder that holds the runs."
            )
        elif done and not any(r["probelens"] for r in runs):
            names = ", ".join(str(r["run"]) for r in runs[:8]) + (" ..." if len(runs) > 8 else "")
            message = (
                f"None of the {len(runs)} run(s) under {str(self.logdir)!r} ({names}) has probelens data (image tags "
                "probelens/* or scalars shortcut/*). Add GradCAMMonitor, SaliencyMonitor or ShortcutMonitor to the "
                "Trainer's callbacks with a TensorBoardLogger; they write at their first log step."
            )
        with self._lock:
            deleted = sorted(self._deleted)
        return {"logdir": str(self.logdir), "runs": runs, "indexing": indexing, "deleted": deleted, "message": message}
