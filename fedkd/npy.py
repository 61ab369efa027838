"""Reading ``.npy`` bytes that came from another process, without trusting their header.

``np.load`` allocates what an ``.npy`` header *declares* before it reads the
data: a 144-byte record declaring 2^36 float32 elements asks for 256 GiB. A
reply's size limit (``server.max_payload_bytes``) counts the bytes that were
*sent*, so it does not bound that allocation. :func:`load_npy` parses the header
first (numpy's own parser, whose header length is capped), checks the declared
dtype is a plain numeric one and that ``prod(shape) * itemsize`` equals the bytes
actually present, and only then builds the array: a hostile header can make the
reader allocate no more than the bytes it sent.

Choices that are ours: object, string, void (structured) and datetime dtypes are
refused here (no payload uses them), and a declared size that differs from the
bytes present in either direction is refused (``np.load`` would ignore trailing
bytes).
"""

from __future__ import annotations

import io
import math

import numpy as np
from numpy.lib import format as npy_format

from fedkd.errors import PayloadError

ALLOWED_KINDS = "biufc"  # bool, signed, unsigned, float, complex: what a payload may carry
MAX_NDIM = 32  # numpy's own limit is 64; no payload array has more than 2 (weights: 4)


def _bad(name: str, message: str) -> PayloadError:
    return PayloadError(f"array '{name}': {message}", "malformed")


def npy_header(name: str, data: bytes) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data_offset)`` of ``.npy`` bytes; PayloadError if bad."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _bad(name, f"expected .npy bytes, got {type(data).__name__}")
    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as err:  # numpy raises ValueError, but any failure means the same
        raise _bad(name, f"not a valid .npy header ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(dtype, np.dtype) or dtype.kind not in ALLOWED_KINDS or dtype.fields:
        raise _bad(name, f"dtype {dtype} is not a plain numeric dtype")
    if len(shape) > MAX_NDIM or any(not isinstance(d, int) or d < 0 for d in shape):
        raise _bad(name, f"declared shape {list(shape)[:8]} is not a shape")
    return tuple(shape), dtype, bool(fortran), stream.tell()


def declared_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of data an array of this shape and dtype holds (exact, Python integers)."""
    return math.prod(shape) * dtype.itemsize


def load_npy(name: str, data: bytes, max_bytes: int | None = None) -> np.ndarray:
    """The array in ``.npy`` bytes, allocated only after its header was checked.

    ``max_bytes``: largest array accepted (``too_large`` beyond it). PayloadError
    (``malformed``) when the header is invalid, declares a non-numeric dtype, or
    declares another number of bytes than the data holds.
    """
    shape, dtype, fortran, offset = npy_header(name, data)
    need, have = declared_bytes(shape, dtype), len(data) - offset
    if need != have:
        raise _bad(
            name,
            f"header declares {list(shape)} {dtype} ({need} bytes) but {have} bytes follow it",
        )
    if max_bytes is not None and need > max_bytes:
        raise PayloadError(f"array '{name}': {need} bytes exceeds {max_bytes}", "too_large")
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    order = "F" if fortran else "C"
    # a copy: the reply's bytes are read-only and must not be kept alive by the payload
    return np.array(flat.reshape(shape, order=order), order="C")
