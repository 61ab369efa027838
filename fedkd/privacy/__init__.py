"""Differential privacy for released knowledge (docs/algorithms.md §4.7, §5; no Flower).

Mechanisms (what is released, with which noise) are kept apart from accountants (what
that costs), as in Opacus: :mod:`fedkd.privacy.mechanisms` draws noise,
:mod:`fedkd.privacy.accounting` records every mechanism's releases in one ledger and
composes them per client with ``dp-accounting``.
"""

from fedkd.privacy.accounting import EVERY, GnmaxRecorder, Ledger, Release
from fedkd.privacy.mechanisms import confident_gnmax, gaussian_noise, gnmax

__all__ = [
    "EVERY",
    "GnmaxRecorder",
    "Ledger",
    "Release",
    "confident_gnmax",
    "gaussian_noise",
    "gnmax",
]
