"""Model weights as plain numpy dicts (for weight-sharing baselines and client state)."""

from __future__ import annotations

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
