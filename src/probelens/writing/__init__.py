"""Writing pictures into event files probelens owns (no Lightning imported here).

- :mod:`probelens.writing.event_file`: :class:`EventFileWriter`, a TensorBoard event file next to the logger's.
"""

from probelens.writing.event_file import FAST_CRC, EventFileWriter, masked_crc32c

__all__ = ["FAST_CRC", "EventFileWriter", "masked_crc32c"]
