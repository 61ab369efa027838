"""What a strategy class declares about itself, merged over the class hierarchy.

A concrete strategy's traits (what it uploads, whether it needs the public set,
accepts ``privacy=central``, ...) are its ``fedkd.strategy_options.SPECS`` entry's,
set on the class when it is defined, so the launchers' checks (which run before
torch loads) and the class never disagree. A class adds its own bookkeeping state
keys (``bookkeeping``: kept as they are when knowledge is rolled back, never checked
for NaN, ``server/fusion.py``) and its seeded random streams (``streams``: one
number each, ``server/streams.py``); :class:`StrategyTraits` merges both over the
hierarchy into ``not_knowledge`` and ``STREAMS``. docs/architecture.md describes the
server.
"""

from __future__ import annotations

from typing import Any, ClassVar

from fedkd.strategy_options import SPECS, StrategySpec


class StrategyTraits:
    """The class-level declarations of a fedkd strategy (``FedkdStrategy``'s base)."""

    # the traits (fedkd.strategy_options.StrategySpec) come from SPECS[name]
    name: ClassVar[str] = ""
    upload_kind: ClassVar[str | None] = None  # fedkd.knowledge kind every reply must carry
    upload_space: ClassVar[str] = "logits"
    needs_public_set: ClassVar[bool] = False
    supports_central: ClassVar[bool] = False  # fuses with a plain mean: privacy=central applies
    personalised: ClassVar[bool] = False  # a different fused payload per client (KnFu)
    supports_swing: ClassVar[bool] = False  # uploads probabilities a Swing release can replace
    homogeneous_only: ClassVar[bool] = False  # averages weights: identical models everywhere
    subset_key: ClassVar[str] = ""  # strategy option holding the per-round subset size
    final_evaluation: ClassVar[bool] = False  # send one evaluate exchange after the last round
    bookkeeping: ClassVar[tuple[str, ...]] = ("base", "privacy")  # state keys, not knowledge
    streams: ClassVar[dict[str, int]] = {"sample": 1}  # seeded: random.rng_for(round, name)
    not_knowledge: ClassVar[tuple[str, ...]] = bookkeeping  # merged over the hierarchy
    STREAMS: ClassVar[dict[str, int]] = streams

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = SPECS.get(cls.__dict__.get("name", ""))
        if spec is not None:  # a concrete strategy: its traits are its spec's
            for trait in StrategySpec.TRAITS:
                setattr(cls, trait, getattr(spec, trait))
        parent = cls.__mro__[1]
        cls.not_knowledge = tuple(dict.fromkeys((*parent.not_knowledge, *cls.bookkeeping)))
        cls.STREAMS = {**parent.STREAMS, **cls.__dict__.get("streams", {})}
        if len(set(cls.STREAMS.values())) != len(cls.STREAMS):
            raise TypeError(f"{cls.__name__}: two random streams share a number: {cls.STREAMS}")
