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
from functools import lru_cache

import numpy as np
from numpy.lib import format as npy_format

from fedkd.errors import PayloadError

ALLOWED_KINDS = "biufc"  # bool, signed, unsigned, float, complex: what a payload may carry
MAX_NDIM = 32  # numpy's own limit is 64; no payload array has more than 2 (weights: 4)


def _bad(name: str, message: str) -> PayloadError:
    return PayloadError(f"array '{name}': {message}", "malformed")


def npy_header(name: str, data: bytes) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data_offset)`` of ``.npy`` bytes; PayloadError if bad.

    A header's bytes decide its answer, and a client receives the same few headers
    every round (its model's, its payload's): parsed answers are kept per header bytes
    (``_parsed_header``, bounded), so numpy's parser (``ast.literal_eval``) runs once
    per distinct header. Failures are not kept.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _bad(name, f"expected .npy bytes, got {type(data).__name__}")
    head = bytes(data[:12])
    start = _PREFIX.get(head[6:8]) if head[:6] == npy_format.MAGIC_PREFIX else None
    try:
        if start is not None and len(head) >= start:
            length = int.from_bytes(head[8:start], "little")
            if length <= MAX_HEADER:  # numpy's own cap; beyond it numpy's error
                return _parsed_header(bytes(data[: start + length]))
        return _parse_header(bytes(data))
    except _Malformed as err:
        raise _bad(name, str(err)) from None


# .npy version (major, minor) bytes -> where the header text starts (after its length)
_PREFIX = {b"\x01\x00": 10, b"\x02\x00": 12, b"\x03\x00": 12}
MAX_HEADER = 10000  # numpy's default max_header_size


class _Malformed(ValueError):
    """Why a header is refused (``npy_header`` names the array)."""


@lru_cache(maxsize=256)
def _parsed_header(header: bytes) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    return _parse_header(header)


def _parse_header(data: bytes) -> tuple[tuple[int, ...], np.dtype, bool, int]:
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
        raise _Malformed(f"not a valid .npy header ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(dtype, np.dtype) or dtype.kind not in ALLOWED_KINDS or dtype.fields:
        raise _Malformed(f"dtype {dtype} is not a plain numeric dtype")
    if len(shape) > MAX_NDIM or any(not isinstance(d, int) or d < 0 for d in shape):
        raise _Malformed(f"declared shape {list(shape)[:8]} is not a shape")
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


def npy_bytes(array: np.ndarray) -> tuple[str, bytes] | None:
    """``(str(array.dtype), the bytes np.save(array, allow_pickle=False) writes)`` for a
    C-contiguous numeric ``array``; None for any other array (the caller saves it the
    usual way).

    The header and the dtype's name depend only on the dtype and shape, so they are
    built once per pair (``_npy_prefix``) instead of per array; the data is one ``tobytes``.
    """
    if array.dtype.kind not in ALLOWED_KINDS or array.dtype.fields or not array.flags.c_contiguous:
        return None
    prefix = _npy_prefix(array.dtype, array.shape)
    return None if prefix is None else (prefix[0], prefix[1] + array.tobytes())


@lru_cache(maxsize=256)
def _npy_prefix(dtype: np.dtype, shape: tuple[int, ...]) -> tuple[str, bytes] | None:
    header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    stream = io.BytesIO()
    try:
        npy_format.write_array_header_1_0(stream, header)
    except ValueError:  # a header too long for version 1.0: np.save's own path decides
        return None
    return str(dtype), stream.getvalue()
