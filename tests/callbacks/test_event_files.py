"""Monitors write their pictures to an event file of their own in the logger's run directory: TensorBoard's own
writer is left as it is (no process-wide patch), and the files are valid for TensorBoard's reference checksum."""

import os
import struct

from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference
from tensorboard.summary.writer import record_writer

from lit import LitClassifier, loaders, random_data, read_events, trainer
from probelens import GradCAMMonitor, ProbeSet


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


def test_pictures_go_to_probelens_own_event_file_and_tensorboard_is_left_alone(tmp_path):
    before = record_writer.masked_crc32c
    probe = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=4, seed=0)
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [GradCAMMonitor(probe, layers="last")], max_epochs=2)
    tr.fit(LitClassifier(), train, val)
    assert record_writer.masked_crc32c is before  # no process-wide swap of another library's function
    files = sorted(f for f in os.listdir(tr.logger.log_dir) if "tfevents" in f)
    ours = [f for f in files if f.endswith(".probelens")]
    assert len(ours) == 1 and len(files) == 2, files  # the logger's file and ours, one run directory
    assert files[-1] == ours[0]  # ours sorts after the logger's (readers that follow the last file)
    bodies = [body for f in files for body in records(os.path.join(tr.logger.log_dir, f))]
    assert [b for b in bodies if len(b) > 2048], "no image records were checked"
    acc = read_events(tr.logger.log_dir)
    assert [e.step for e in acc.Images("probelens/gradcam/model.8")] == [1, 3]
    assert [e.step for e in acc.Scalars("val_loss")] == [1, 3]  # the logger's scalars, same run, same axis
