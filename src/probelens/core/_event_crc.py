"""A C implementation of CRC-32C for TensorBoard's event writer.

TensorBoard's ``RecordWriter`` (used by ``torch.utils.tensorboard.SummaryWriter``, hence by Lightning's
``TensorBoardLogger``) checksums every record with ``masked_crc32c`` from
``tensorboard.compat.tensorflow_stub.pywrap_tensorflow``: a pure-Python loop over the bytes, about 150 ms per MB on
the 2-core CI machine. It runs in the writer's background thread while holding the GIL, so a step that logs a few MB
of PNGs stalls the training thread for seconds: every torch op the main thread calls releases the GIL and then waits
up to ``sys.getswitchinterval()`` (5 ms) to get it back. Measured on ResNet-18 at 128 px (Grad-CAM at 20 layers):
2.1 s per firing with the Python checksum, 0.35 s with this one.

:func:`install` swaps that one function, in the one module that calls it, for the same masked CRC-32C computed by
``google_crc32c``'s C extension. The checksums are bit-identical (checked on test vectors before the swap; the swap
is skipped when the check fails, the C extension is missing or ``PROBELENS_FAST_EVENT_CRC=0`` is set), so the event
files are byte-for-byte what TensorBoard would have written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["ENV_VAR", "install", "installed"]

ENV_VAR = "PROBELENS_FAST_EVENT_CRC"
"""Set to ``0`` to keep TensorBoard's own pure-Python checksum."""

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
# the CRC-32C check value of b"123456789" (RFC 3720, appendix B.4) and vectors of every length class the writer uses
_CHECK = (b"123456789", 0xE3069283)


def _masked(value: Callable[[bytes], int]) -> Callable[[Any], int]:
    def masked_crc32c(data: Any) -> int:
        crc = value(bytes(data)) & _U32
        return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32

    masked_crc32c.probelens_fast = True  # type: ignore[attr-defined]
    return masked_crc32c


def _record_writer() -> Any | None:
    try:
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return None
    return record_writer


def installed() -> bool:
    """Whether TensorBoard's event writer checksums with the C implementation now."""
    module = _record_writer()
    return module is not None and getattr(getattr(module, "masked_crc32c", None), "probelens_fast", False)


def install() -> bool:
    """Make TensorBoard's event writer use the C CRC-32C (idempotent; see the module docstring).

    Returns:
        Whether the fast checksum is in place.
    """
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    module = _record_writer()
    if module is None or not hasattr(module, "masked_crc32c"):
        return False
    if installed():
        return True
    try:
        import google_crc32c
    except ImportError:
        return False
    if getattr(google_crc32c, "implementation", "c") != "c":  # its pure-Python fallback is no faster
        return False
    fast = _masked(google_crc32c.value)
    original = module.masked_crc32c
    data, check = _CHECK
    vectors = [b"", data, bytes(range(256)) * 5, b"\x00" * 12, b"\xff" * 4097]
    if google_crc32c.value(data) != check or any(fast(v) != original(v) for v in vectors):
        return False
    module.masked_crc32c = fast
    return True
