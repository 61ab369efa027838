"""Differential privacy for released knowledge (docs/algorithms.md §4.7, §5; no Flower).

Mechanisms (what is released, with which noise) are kept apart from accountants (what
that costs), as in Opacus: :mod:`fedkd.privacy.mechanisms` draws noise,
:mod:`fedkd.privacy.accounting` composes the costs with ``dp-accounting``.
"""

from fedkd.privacy.accounting import RdpLedger
from fedkd.privacy.mechanisms import confident_gnmax, gaussian_noise, gnmax

__all__ = ["RdpLedger", "confident_gnmax", "gaussian_noise", "gnmax"]
