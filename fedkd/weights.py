"""Model weights as plain numpy dicts (for weight-sharing baselines and client state)."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import nn

from fedkd.errors import PayloadError


def model_to_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def arrays_to_model(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load ``arrays`` into ``model``; a different architecture raises PayloadError."""
    own = model.state_dict()
    if set(arrays) != set(own):
        missing, extra = sorted(set(own) - set(arrays)), sorted(set(arrays) - set(own))
        raise PayloadError(
            f"weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for key, value in arrays.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise PayloadError(
                f"weight '{key}' has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}"
            )
    model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()})


def packed_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters and buffers as one flat array per dtype, in ``state_dict`` order.

    What a client keeps between rounds: one array per dtype costs one
    (de)serialisation instead of one per tensor. The layout is the model's own,
    so only a module of the same architecture can unpack it (``load_packed``).
    """
    groups: dict[str, list[np.ndarray]] = {}
    for value in model.state_dict().values():
        array = value.detach().cpu().numpy()
        groups.setdefault(array.dtype.str, []).append(array.ravel())
    return {dtype: np.concatenate(parts) for dtype, parts in groups.items()}


def load_packed(model: nn.Module, packed: dict[str, np.ndarray]) -> None:
    """Load ``packed_state`` arrays into ``model``; a different layout raises PayloadError.

    The whole layout is checked before any value is written, then each parameter and
    buffer is copied in place from its slice of the packed array (what
    ``load_state_dict`` does, without an intermediate copy per tensor).
    """
    own = model.state_dict()
    offsets = dict.fromkeys(packed, 0)
    slices = []
    for key, value in own.items():
        dtype = _numpy_dtype(value.dtype)
        size = value.numel()
        start = offsets.get(dtype)
        if start is None or start + size > packed[dtype].size:
            raise PayloadError(f"packed state does not fit the model at '{key}'")
        slices.append((value, dtype, start, size))
        offsets[dtype] = start + size
    if any(offsets[d] != packed[d].size for d in packed):
        raise PayloadError("packed state holds more values than the model has")
    flat = {
        d: torch.from_numpy(np.require(a, requirements=["C", "W"]).reshape(-1))
        for d, a in packed.items()
    }
    with torch.no_grad():
        for value, dtype, start, size in slices:
            value.copy_(flat[dtype][start : start + size].view(value.shape))


@cache
def _numpy_dtype(dtype: torch.dtype) -> str:
    """numpy's ``dtype.str`` of a torch dtype (``packed_state``'s keys)."""
    return torch.empty(0, dtype=dtype).numpy().dtype.str
