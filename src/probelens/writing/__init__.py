"""Writing pictures off the training thread, into event files probelens owns (no Lightning imported here).

- :mod:`probelens.writing.event_file`: :class:`EventFileWriter`, a TensorBoard event file next to the logger's.
- :mod:`probelens.writing.pipeline`: :class:`ImagePipeline`, a bounded, ordered background worker for the jobs that
  render, encode and write a firing's pictures.
"""

from probelens.writing.event_file import FAST_CRC, EventFileWriter, masked_crc32c
from probelens.writing.pipeline import SYNC_ENV_VAR, ImagePipeline, JobFailure

__all__ = ["FAST_CRC", "SYNC_ENV_VAR", "EventFileWriter", "ImagePipeline", "JobFailure", "masked_crc32c"]
