"""Typed knowledge payloads exchanged between clients and server (see docs/algorithms.md §0).

One payload kind is one file in this package: a frozen dataclass registered in
:data:`PAYLOADS` that implements :class:`~fedkd.knowledge.base.Payload` (its arrays,
validation, encoding hints, privacy release, attacks, faults and extraction). Every
module here is imported below, so a new kind's file registers itself; nothing else
is edited (CONTRIBUTING.md, "Add a payload kind").

- :class:`PublicLogits`: values on indexed public samples (FedMD logits; DS-FL / KnFu
  probabilities).
- :class:`ClassLogits`: FD per-label mean logits + label counts (Jeong et al. 2018).
- :class:`Prototypes`: FedProto per-class mean features + counts (Tan et al. 2022).
- :class:`Votes`: top-k class labels on public samples.
- :class:`ModelWeights`: named parameter arrays for weight-sharing baselines (FedAvg).
"""

from __future__ import annotations

import importlib
import pkgutil

from fedkd.knowledge.base import (
    PAYLOADS,
    PROB_TOLERANCE,
    SPACES,
    Payload,
    PerClass,
    Release,
    Source,
    decode,
    kind_of,
)
from fedkd.knowledge.class_logits import ClassLogits
from fedkd.knowledge.model_weights import ModelWeights
from fedkd.knowledge.prototypes import Prototypes
from fedkd.knowledge.public_logits import PublicLogits
from fedkd.knowledge.votes import Votes

# every other kind file in this package registers itself on import
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "PAYLOADS",
    "PROB_TOLERANCE",
    "SPACES",
    "ClassLogits",
    "ModelWeights",
    "Payload",
    "PerClass",
    "Prototypes",
    "PublicLogits",
    "Release",
    "Source",
    "Votes",
    "decode",
    "kind_of",
]
