"""Writing pictures off the training thread, into event files probelens owns (no Lightning imported here).

- :mod:`probelens.writing.event_file`: :class:`EventFileWriter`, a TensorBoard event file next to the logger's.
- :mod:`probelens.writing.pipeline`: :class:`ImagePipeline`, a bounded, ordered background worker for the jobs that
  render, encode and write a firing's pictures.
- :mod:`probelens.writing.transfer`: :func:`map_math`, the maps' normalising, colouring and blending on the
  accelerator they are on (then one non-blocking copy to the host), or deferred to the drawing on the CPU.
"""

from probelens.writing.event_file import FAST_CRC, EventFileWriter, masked_crc32c
from probelens.writing.pipeline import SYNC_ENV_VAR, ImagePipeline, JobFailure
from probelens.writing.transfer import map_math, on_accelerator

__all__ = [
    "FAST_CRC",
    "SYNC_ENV_VAR",
    "EventFileWriter",
    "ImagePipeline",
    "JobFailure",
    "map_math",
    "masked_crc32c",
    "on_accelerator",
]
