"""FedProto prototype fusion (Tan et al. AAAI 2022, arXiv 2105.00243).

``C̄[j]`` is the mean of the clients' prototypes for class ``j`` over the clients that own
``j``. The official code (yuetan031/FedProto ``lib/utils.py proto_aggregation``) uses an
unweighted mean, our default; the paper's equation weights by sample count (unverified),
available as ``weighted=True``. Robust reducers are our option.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkd.errors import PayloadError
from fedkd.fusion.reduce import per_class_reduce


def prototype_mean(
    protos: np.ndarray,
    counts: np.ndarray,
    weighted: bool = False,
    reducer: str = "mean",
    reducer_params: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Global prototypes ``[C, d]`` from ``protos [K, C, d]`` and ``present [C]``."""
    protos = np.asarray(protos)
    if protos.ndim != 3:
        raise PayloadError(f"prototypes must have shape [K, C, d], got {list(protos.shape)}")
    return per_class_reduce(
        protos, counts, reducer=reducer, weighted=weighted, params=reducer_params
    )
