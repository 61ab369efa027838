"""Compact knowledge on the wire: float16, int8 with a per-row scale, top-k sparse scores.

A codec turns a payload's arrays (``Payload.to_arrays()``) into smaller arrays
plus a few metadata entries, and back. Only floating arrays are encoded;
integer arrays (indices, counts, votes) travel as they are. The encoding is
chosen in the run config (``knowledge.encoding``, ``knowledge.top_k``) and used
both ways: by every client for what it uploads and by the server for what it
sends down (``protocol.wire.put_knowledge`` / ``get_payload``). The metadata
names the codec and its parameters, so the receiver needs no configuration to
decode, and a malformed encoded record is a ``PayloadError`` (``malformed``).

Choices that are ours (compression of distillation knowledge is standard
practice, but these exact formats are not from a paper):

- ``float16``: values beyond float16's range are clipped to +-65504, so no
  finite upload turns into Inf.
- ``int8``: symmetric linear quantisation per row (the last axis), scale
  ``max|row| / 127`` sent as float32 beside it; an all-zero row gets scale 1.
- after a lossy decode (float16, int8) probability tables (``space: probs``)
  are renormalised per row: rounding would otherwise push row sums past the
  validator's tolerance and every reply would be rejected. Only an error that
  rounding can explain is corrected; anything else is left for validation.
- ``topk``: for a kind's score table ``[N, C]`` (``Payload.score_key``:
  ``PublicLogits.values``, ``ClassLogits.logits``) each row keeps its ``k`` largest entries (float32,
  column ids in the smallest unsigned dtype that holds ``C``) and one fill
  value for the others: the mean of the dropped logits, so the row's mean is
  kept; for probabilities ``(1 - kept mass) / (C - k)``, so rows still sum to 1.
  The fill travels as the last column of the kept values (``[N, k + 1]``): each
  array on the wire costs a ~130-byte header, which matters for small tables.
  Other arrays (prototypes, weights, temperatures) stay float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedkd.errors import PayloadError
from fedkd.knowledge import PAYLOADS
from fedkd.registry import Registry

ENCODINGS: Registry = Registry("encoding")
META_KEY = "encoding"  # knowledge_meta entry naming the codec; its other entries start "encoding."
ENCODED_KEY = "encoding.arrays"  # comma-separated names of the arrays the codec changed
FLOAT16_MAX = float(np.finfo(np.float16).max)


def _score_key(meta: Mapping[str, Any]) -> str | None:
    """The score table of the payload kind named in ``meta`` (``Payload.score_key``): what
    top-k may sparsify and a lossy decode renormalises; None for other kinds."""
    kind = meta.get("kind")
    return PAYLOADS.get(kind).score_key if isinstance(kind, str) and kind in PAYLOADS else None


def _floating(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return [k for k, v in arrays.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]


def _bad(message: str) -> PayloadError:
    return PayloadError(f"encoded knowledge: {message}", "malformed")


@dataclass(frozen=True)
class DecodeLimits:
    """What a receiver accepts of the fields an encoded record declares, checked before
    anything is allocated: ``encodings`` (the codecs accepted: the run's own), ``max_columns``
    (the run's classes: the widest score table a top-k record may expand to) and
    ``max_bytes`` (the largest decoded array). None: no bound."""

    encodings: tuple[str, ...] | None = None
    max_columns: int | None = None
    max_bytes: int | None = None

    def check_table(self, key: str, rows: int, cols: int) -> None:
        if self.max_columns is not None and cols > self.max_columns:
            raise _bad(f"'encoding.{key}.cols'={cols} exceeds the run's {self.max_columns} classes")
        if self.max_bytes is not None and rows * cols * 4 > self.max_bytes:
            raise PayloadError(
                f"encoded knowledge: '{key}' would decode to {rows * cols * 4} bytes, more than "
                f"{self.max_bytes}",
                "too_large",
            )


NO_LIMITS = DecodeLimits()


def _float_part(key: str, value: np.ndarray) -> None:
    if value.dtype not in (np.float32, np.float64):
        raise _bad(f"'{key}' must be float32 or float64, got {value.dtype}")


class Codec:
    """``encode(arrays, meta, spec) -> (arrays, extra meta)``; ``decode(arrays, meta) -> arrays``."""

    name: ClassVar[str] = ""

    def encode(
        self, arrays: dict[str, np.ndarray], meta: Mapping[str, Any], spec: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raise NotImplementedError

    def decode(
        self,
        arrays: dict[str, np.ndarray],
        meta: Mapping[str, Any],
        limits: DecodeLimits = NO_LIMITS,
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError


@ENCODINGS.register("float32")
class Float32(Codec):
    """No compression: the payload's arrays as they are (the default)."""

    name = "float32"

    def encode(self, arrays, meta, spec):
        return dict(arrays), {}

    def decode(self, arrays, meta, limits=NO_LIMITS):
        return dict(arrays)


@ENCODINGS.register("float16")
class Float16(Codec):
    """Half precision, clipped to float16's finite range."""

    name = "float16"

    def encode(self, arrays, meta, spec):
        out, names = dict(arrays), _floating(arrays)
        for key in names:
            out[key] = np.clip(arrays[key], -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
        return out, {ENCODED_KEY: ",".join(names)}

    def decode(self, arrays, meta, limits=NO_LIMITS):
        out = dict(arrays)
        for key in _names(meta, arrays):
            if arrays[key].dtype != np.float16:
                raise _bad(f"'{key}' should be float16, got {arrays[key].dtype}")
            out[key] = arrays[key].astype(np.float32)
        return _renormalise_probs(out, meta)


@ENCODINGS.register("int8")
class Int8(Codec):
    """int8 per row (last axis) with a float32 scale per row: ``x ~ q * scale``."""

    name = "int8"

    def encode(self, arrays, meta, spec):
        out, names = dict(arrays), _floating(arrays)
        for key in names:
            x = np.asarray(arrays[key], dtype=np.float64)
            rows = x.reshape(-1, x.shape[-1]) if x.ndim >= 1 else x.reshape(1, 1)
            peak = np.abs(rows).max(axis=1) if rows.size else np.zeros(len(rows))
            scale = np.where(peak > 0, peak / 127.0, 1.0)
            q = np.rint(rows / scale[:, None]).clip(-127, 127).astype(np.int8)
            out[key] = q.reshape(x.shape)
            out[f"{key}.scale"] = scale.astype(np.float32)
        return out, {ENCODED_KEY: ",".join(names)}

    def decode(self, arrays, meta, limits=NO_LIMITS):
        out = dict(arrays)
        for key in _names(meta, arrays):
            q, scale = arrays[key], arrays.get(f"{key}.scale")
            if q.dtype != np.int8 or scale is None:
                raise _bad(f"'{key}' needs int8 values and a '{key}.scale' array")
            _float_part(f"{key}.scale", scale)
            if q.ndim >= 1 and q.shape[-1] == 0:
                raise _bad(f"'{key}' has rows of length 0")
            rows = q.reshape(-1, q.shape[-1]) if q.ndim >= 1 else q.reshape(1, 1)
            if scale.shape != (len(rows),) or not np.isfinite(scale).all() or (scale < 0).any():
                raise _bad(f"'{key}.scale' must hold {len(rows)} finite values >= 0")
            out[key] = (rows.astype(np.float32) * scale[:, None].astype(np.float32)).reshape(
                q.shape
            )
            del out[f"{key}.scale"]
        return _renormalise_probs(out, meta)


@ENCODINGS.register("topk")
class TopK(Codec):
    """The ``k`` largest scores per row plus one fill value for the rest."""

    name = "topk"

    def encode(self, arrays, meta, spec):
        out = dict(arrays)
        key = _score_key(meta)
        if key is None or key not in arrays or np.asarray(arrays[key]).ndim != 2:
            return out, {ENCODED_KEY: ""}
        x = np.asarray(arrays[key], dtype=np.float32)
        cols, k = x.shape[1], int(spec["top_k"])
        if k >= cols:  # nothing to drop
            return out, {ENCODED_KEY: ""}
        index = np.argsort(-x, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(x, index, axis=1)
        dropped = cols - k
        if meta.get("space") == "probs":
            fill = np.clip(1.0 - kept.sum(axis=1), 0.0, None) / dropped
        else:
            fill = (x.sum(axis=1) - kept.sum(axis=1)) / dropped
        del out[key]
        out[f"{key}.values"] = np.hstack([kept, fill[:, None]]).astype(np.float32)
        out[f"{key}.index"] = index.astype(np.min_scalar_type(cols - 1))
        return out, {ENCODED_KEY: key, f"encoding.{key}.cols": cols}

    def decode(self, arrays, meta, limits=NO_LIMITS):
        out = dict(arrays)
        for key in _names(meta, arrays, stored=False):
            packed = arrays.get(f"{key}.values")
            index = arrays.get(f"{key}.index")
            cols = meta.get(f"encoding.{key}.cols")
            if (
                packed is None
                or index is None
                or isinstance(cols, bool)
                or not isinstance(cols, int)
            ):
                raise _bad(f"'{key}' needs .values, .index and 'encoding.{key}.cols'")
            if cols < 1:
                raise _bad(f"'encoding.{key}.cols' must be >= 1, got {cols}")
            _float_part(f"{key}.values", packed)
            if (
                packed.ndim != 2
                or index.ndim != 2
                or packed.shape != (len(index), index.shape[1] + 1)
            ):
                raise _bad(
                    f"'{key}' parts have inconsistent shapes (values [N, k+1], index [N, k])"
                )
            if index.shape[1] > cols:
                raise _bad(f"'{key}.index' keeps {index.shape[1]} of {cols} columns")
            limits.check_table(key, len(index), cols)  # before the [N, cols] table exists
            values, fill = packed[:, :-1], packed[:, -1]
            if not np.issubdtype(index.dtype, np.integer) or (
                index.size and (index.min() < 0 or index.max() >= cols)
            ):
                raise _bad(f"'{key}.index' must hold column ids in 0..{cols - 1}")
            full = np.repeat(fill.astype(np.float32)[:, None], cols, axis=1)
            np.put_along_axis(full, index.astype(np.int64), values.astype(np.float32), axis=1)
            for part in ("values", "index"):
                del out[f"{key}.{part}"]
            out[key] = full
        return out


def _renormalise_probs(arrays: dict[str, np.ndarray], meta: Mapping[str, Any]) -> dict:
    """Rows of a decoded probability table rescaled to sum to 1 (see the module docstring).

    Only rows whose sum is off by no more than rounding can explain (half an int8
    step per entry, or float16's precision) are rescaled: a table that did not sum
    to 1 before encoding is left as it is, and validation rejects it as it would
    unencoded.
    """
    key = _score_key(meta)
    if meta.get("space") != "probs" or key not in arrays or arrays[key].ndim != 2:
        return arrays
    probs = arrays[key]
    if probs.size == 0 or probs.min() < 0:
        return arrays
    total = probs.sum(axis=1, keepdims=True)
    rounding = probs.shape[1] * probs.max(axis=1, keepdims=True) / 254 + 1e-3
    fixable = (total > 0) & (np.abs(total - 1.0) <= rounding)
    arrays[key] = np.where(fixable, probs / np.where(fixable, total, 1.0), probs)
    return arrays


def _names(meta: Mapping[str, Any], arrays: Mapping[str, Any], stored: bool = True) -> list[str]:
    text = meta.get(ENCODED_KEY, "")
    if not isinstance(text, str):
        raise _bad(f"'{ENCODED_KEY}' must be a string")
    names = [n for n in text.split(",") if n]
    missing = [n for n in names if stored and n not in arrays]
    if missing:
        raise _bad(f"arrays {missing} are missing")
    return names


def check_spec(spec: Mapping[str, Any]) -> None:
    """The ``knowledge`` config section; ValueError naming the bad key (``fedkd.config``)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"knowledge must be a mapping with encoding and top_k (got {spec!r})")
    missing = [key for key in ("encoding", "top_k") if key not in spec]
    if missing:
        raise ValueError(f"knowledge has no {', '.join(missing)}; configs/config.yaml sets both")
    name = spec["encoding"]
    if name not in ENCODINGS:
        raise ValueError(
            f"knowledge.encoding must be one of {', '.join(ENCODINGS.names())} (got {name!r})"
        )
    k = spec["top_k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"knowledge.top_k must be an integer >= 1 (got {k!r})")


def encode(
    arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], spec: Mapping[str, Any] | None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and meta to put on the wire under ``spec`` (``knowledge`` config section;
    None: as they are, like ``encoding: float32``)."""
    name = "float32" if spec is None else spec["encoding"]
    if name == "float32":
        return dict(arrays), dict(meta)
    codec = ENCODINGS.get(name)()
    encoded, extra = codec.encode(dict(arrays), meta, spec)
    return encoded, {**meta, META_KEY: name, **extra}


def decode(
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    limits: DecodeLimits | None = None,
) -> tuple[dict, dict]:
    """Undo ``encode``: plain arrays and the payload's own meta (codec entries removed).

    ``limits`` bound what the record's own fields may make the receiver allocate."""
    name = meta.get(META_KEY)
    if name is None:
        return dict(arrays), dict(meta)
    if not isinstance(name, str) or name not in ENCODINGS:
        raise _bad(f"unknown encoding {str(name)[:40]!r}")
    limits = limits or NO_LIMITS
    if limits.encodings is not None and name not in limits.encodings:
        raise _bad(f"encoding {name!r} is not this run's ({', '.join(limits.encodings)})")
    decoded = ENCODINGS.get(name)().decode(dict(arrays), meta, limits)
    own = {k: v for k, v in meta.items() if k != META_KEY and not k.startswith(f"{META_KEY}.")}
    return decoded, own
