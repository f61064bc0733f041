"""TensorBoard's event writer checksums with a C CRC-32C once a monitor writes to a TensorBoardLogger; the event
files stay byte-for-byte valid for TensorBoard's own (pure-Python) checksum."""

import os
import struct

import pytest
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference
from tensorboard.summary.writer import record_writer

from lit import LitClassifier, loaders, random_data, read_events, trainer
from probelens import GradCAMMonitor, ProbeSet
from probelens.core import _event_crc


@pytest.fixture
def pristine(monkeypatch):
    """TensorBoard's own checksum in place for the test, and put back whatever was there afterwards."""
    monkeypatch.setattr(record_writer, "masked_crc32c", reference)
    monkeypatch.delenv(_event_crc.ENV_VAR, raising=False)
    yield monkeypatch


def records(path):
    """The records of a TFRecord file, each checked with TensorBoard's reference masked CRC-32C."""
    with open(path, "rb") as fh:
        data = fh.read()
    offset, out = 0, []
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        body = data[offset + 12 : offset + 12 + length]
        (body_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert header_crc == reference(header) and body_crc == reference(body), f"bad checksum at byte {offset}"
        out.append(body)
        offset += 16 + length
    return out


def test_a_monitor_run_installs_the_c_checksum_and_writes_valid_event_files(tmp_path, pristine):
    assert not _event_crc.installed()
    probe = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=4, seed=0)
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [GradCAMMonitor(probe, layers="last")], max_epochs=2)
    tr.fit(LitClassifier(), train, val)
    assert _event_crc.installed()
    files = [os.path.join(tr.logger.log_dir, f) for f in os.listdir(tr.logger.log_dir) if "tfevents" in f]
    bodies = [body for f in files for body in records(f)]
    big = [b for b in bodies if len(b) > 4096]  # the PNG image summaries
    assert big, "no image records were checked"
    assert len(read_events(tr.logger.log_dir).Images("probelens/gradcam/model.8")) == 2


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 255, 4096, 100_003])
def test_the_c_checksum_equals_tensorboards(pristine, size):
    assert _event_crc.install()
    data = os.urandom(size)
    assert record_writer.masked_crc32c(data) == reference(data)
    assert record_writer.masked_crc32c(bytearray(data)) == reference(data)


def test_opt_out_keeps_tensorboards_checksum(pristine):
    pristine.setenv(_event_crc.ENV_VAR, "0")
    assert not _event_crc.install()
    assert record_writer.masked_crc32c is reference


def test_a_checksum_that_disagrees_is_never_installed(pristine):
    import google_crc32c

    pristine.setattr(google_crc32c, "value", lambda data: 0)
    assert not _event_crc.install()
    assert record_writer.masked_crc32c is reference
