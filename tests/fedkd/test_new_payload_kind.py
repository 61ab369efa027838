"""A new payload kind is one class: defined here, registered, and every generic path uses it.

CONTRIBUTING.md ("Add a payload kind") says a new kind touches its kind file, its strategy
and its config. This test is the kind file: the class below is registered as
``fedkd/knowledge/<name>.py`` would register it, and then goes through the wire (encoded
and decoded), validation, the attacks, the injected faults, the privacy release and the
ledger, and extraction from a real client round, none of which names it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from helpers import default_cfg

from fedkd.client import attacks, faults
from fedkd.client.round import round_generator, run_round
from fedkd.client.runtime import ClientTensors
from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge import PAYLOADS, Payload
from fedkd.knowledge.base import check_counts, check_keys, float_array, int_array
from fedkd.models.mlp import MLP
from fedkd.plan import ExtractSpec, Plan
from fedkd.privacy.release import LocalSpec, privatize, round_event
from protocol import wire

C = 3


@dataclass(frozen=True, eq=False)
class ClassConfidence(Payload):
    """Per-class mean confidence ``[C]`` (the mean of each label's collected logits) + counts.

    Deliberately unlike the built-in kinds: a 1-D value array."""

    kind: ClassVar[str] = "class_confidence"
    collects: ClassVar[str | None] = "logits"
    releases: ClassVar[int] = 2
    attacks: ClassVar[tuple[str, ...]] = ("scale", "label_flip", "stale", "count_claim")
    confidence: np.ndarray
    counts: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"confidence": self.confidence, "counts": self.counts}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]):
        check_keys(cls.kind, "array", arrays, {"confidence", "counts"})
        check_keys(cls.kind, "meta", meta, set())
        return cls(arrays["confidence"], arrays["counts"])

    def validate(self, *, num_classes, num_public=None, feature_dim=None, max_bytes=None):
        values = float_array(f"{self.kind}.confidence", self.confidence, 1)
        counts = int_array(f"{self.kind}.counts", self.counts, 1)
        if values.shape[0] != num_classes:
            raise PayloadError(
                f"{self.kind}.confidence: expected {num_classes} classes, got {values.shape[0]}",
                "class_count",
            )
        check_counts(f"{self.kind}.counts", counts, num_classes)
        self._check_bytes(max_bytes)

    @classmethod
    def extract(cls, source, spec):
        means = source.class_means()
        return cls(means.mean(axis=1).astype(np.float32), source.class_counts)

    def bounded_arrays(self):
        return [(f"{self.kind}.confidence", self.confidence, "logits")]

    def privatize(self, release):
        noisy = release.values(self.confidence[None, :])[0].astype(np.float32)
        return ClassConfidence(noisy, release.counts(self.counts))

    def relabelled(self, pi):
        values, counts = np.empty_like(self.confidence), np.empty_like(self.counts)
        values[pi], counts[pi] = self.confidence, self.counts
        return ClassConfidence(values, counts)

    def scaled(self, factor):
        return ClassConfidence((self.confidence * factor).astype(np.float32), self.counts)

    def claiming(self, count):
        return ClassConfidence(self.confidence, np.where(self.counts > 0, count, 0))

    @classmethod
    def with_extra_class(cls, arrays):
        return {k: np.concatenate([v, v[:1]]) for k, v in arrays.items()}


@pytest.fixture
def registered():
    """``@PAYLOADS.register("class_confidence")``, as the kind's own file would, undone after."""
    PAYLOADS.register(ClassConfidence.kind)(ClassConfidence)
    yield ClassConfidence
    PAYLOADS.unregister(ClassConfidence.kind)


def payload() -> ClassConfidence:
    return ClassConfidence(np.array([0.5, -1.0, 2.0], np.float32), np.array([3, 0, 5]))


@pytest.mark.parametrize("encoding", ["float32", "float16", "int8", "topk"])
def test_it_travels_over_the_wire_under_every_encoding(registered, encoding):
    content = RecordDict()
    wire.put_payload(content, payload(), {"encoding": encoding, "top_k": 1})
    back = wire.get_payload(content)
    assert isinstance(back, ClassConfidence)
    np.testing.assert_allclose(back.confidence, payload().confidence, atol=0.02)
    np.testing.assert_array_equal(back.counts, payload().counts)
    back.validate(num_classes=C)


def test_an_unregistered_kind_is_refused_on_arrival():
    content = RecordDict()
    wire.put_payload(content, payload())
    with pytest.raises(PayloadError, match="unknown payload kind 'class_confidence'"):
        wire.get_payload(content)


def test_validation_names_what_is_wrong(registered):
    with pytest.raises(PayloadError, match="expected 4 classes, got 3") as err:
        payload().validate(num_classes=4)
    assert err.value.reason == "class_count"


def attack_cfg(kind: str, **extra) -> dict:
    cfg = default_cfg(seed=0, num_clients=2)
    cfg["attack"].update(kind=kind, clients=[1], **extra)
    return cfg


def test_the_attacks_it_declares_apply_and_the_others_are_refused(registered):
    honest = payload()
    scaled = attacks.apply(attack_cfg("scale", factor=-2.0), 1, 1, honest, {}, C)
    np.testing.assert_array_equal(scaled.confidence, honest.confidence * -2.0)
    pi = attacks.permutation(attack_cfg("label_flip"), C)
    flipped = attacks.apply(attack_cfg("label_flip"), 1, 1, honest, {}, C)
    np.testing.assert_array_equal(flipped.confidence[pi], honest.confidence)
    claimed = attacks.apply(attack_cfg("count_claim", count=99), 1, 1, honest, {}, C)
    np.testing.assert_array_equal(claimed.counts, [99, 0, 99])
    assert attacks.apply(attack_cfg("scale"), 0, 1, honest, {}, C) is honest  # not an attacker
    attacks.check_attack(attack_cfg("scale"), ClassConfidence.kind, "mine")
    with pytest.raises(ConfigError, match="cannot attack strategy 'mine'"):
        attacks.check_attack(attack_cfg("random_logits"), ClassConfidence.kind, "mine")
    with pytest.raises(ConfigError, match="cannot attack class_confidence payloads"):
        attacks.apply(attack_cfg("random_logits"), 1, 1, honest, {}, C)


@pytest.mark.parametrize("mode", ["nan", "dtype", "shape", "classes", "kind"])
def test_every_injected_fault_is_rejected_for_its_reason(registered, mode):
    cfg = default_cfg()
    cfg["faults"]["bad_payload"]["mode"] = mode
    p = payload()
    arrays, meta = faults.corrupt(cfg, 1, p.kind, p.to_arrays(), {"kind": p.kind})
    content = RecordDict()
    wire.put_knowledge(content, arrays, meta)
    received = wire.get_payload(content)
    if mode == "kind":
        assert received.kind != p.kind  # the server rejects it as the wrong kind
        return
    with pytest.raises(PayloadError) as err:
        received.validate(num_classes=C)
    assert err.value.reason == faults.BAD_MODES[mode]


def test_the_privacy_mod_noises_it_and_the_ledger_charges_two_releases(registered):
    spec = LocalSpec(mechanism="gaussian", noise_multiplier=1.0, clip=1.0)
    noised = privatize(payload(), spec, np.random.default_rng(0))
    assert isinstance(noised, ClassConfidence)
    assert not np.allclose(noised.confidence, payload().confidence)
    assert noised.counts.dtype == np.int64 and noised.counts.sum() != payload().counts.sum()
    event = round_event("gaussian", 1.0, ClassConfidence.kind, C, None)
    assert len(event.events) == 2  # the confidences and their counts


def test_a_client_round_extracts_it(registered):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = torch.from_numpy(np.arange(9) % C)
    x = torch.from_numpy((rng.normal(size=(9, 4)) + np.eye(C, 4)[y.numpy()] * 3).astype(np.float32))
    data = ClientTensors(x, y, x, y, x, y, x, C, (4,))
    out = run_round(
        MLP((4,), C, 5, hidden=(8,)),
        data,
        plan=Plan(extract=ExtractSpec(ClassConfidence.kind)),
        client_cfg={"epochs": 2, "batch_size": 3, "optimizer": {"name": "sgd", "lr": 0.1},
                    "eval_batch_size": 16},
        received=None,
        request_indices=None,
        generator=round_generator(0, 1, 0),
        server_round=1,
        device=torch.device("cpu"),
    )  # fmt: skip
    assert isinstance(out.payload, ClassConfidence)
    np.testing.assert_array_equal(out.payload.counts, [6, 6, 6])  # two epochs of 9 samples
    out.payload.validate(num_classes=C)
    # and the plan naming it crosses the wire like any other
    content = RecordDict(
        {
            wire.CONFIG: wire.make_config(
                1, json.dumps({}), Plan(extract=ExtractSpec(ClassConfidence.kind))
            )
        }
    )
    assert wire.read_config(content)[2].extract.kind == ClassConfidence.kind


def test_the_servers_magnitude_bound_applies_to_it(registered):
    from fedkd.bounds import Bounds, check_magnitude

    bounds = Bounds(logits=10.0, max_count=100)
    check_magnitude(payload(), bounds)
    loud = ClassConfidence(np.array([0.5, -1e6, 2.0], np.float32), np.array([3, 0, 5]))
    with pytest.raises(
        PayloadError, match="class_confidence.confidence: .* exceeds bounds limit 10"
    ):
        check_magnitude(loud, bounds)
