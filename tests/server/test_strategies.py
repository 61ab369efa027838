"""Server strategies without a network: fusion state and reply validation.

Uploads are real payloads; the expected fused values are computed by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import info_for

from fedkd.config import compose
from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge import ClassLogits, ModelWeights, Prototypes, PublicLogits
from server.app import prepare_run
from server.strategies import STRATEGIES


def test_registry_lists_the_five_baselines():
    assert {"local", "fedavg", "fd", "fedmd", "dsfl"} <= set(STRATEGIES.names())


def test_fd_mean_and_leave_one_out_teachers():
    fd = STRATEGIES.get("fd")(info_for("strategy.teacher=loo"))
    uploads = {
        0: ClassLogits(
            logits=np.array([[2.0, 0.0], [0.0, 0.0]], np.float32), counts=np.array([5, 0])
        ),
        1: ClassLogits(
            logits=np.array([[4.0, 2.0], [1.0, 3.0]], np.float32), counts=np.array([1, 2])
        ),
        2: ClassLogits(
            logits=np.array([[0.0, 0.0], [3.0, 5.0]], np.float32), counts=np.array([0, 4])
        ),
    }
    fd.fuse(1, uploads, {0: 5, 1: 3, 2: 4})
    # class 0: clients 0 and 1 -> mean of [2,0] and [4,2] = [3,1]; class 1: clients 1, 2 -> [2,4]
    np.testing.assert_allclose(fd.global_teacher.logits, [[3, 1], [2, 4]])
    np.testing.assert_array_equal(fd.global_teacher.counts, [2, 2])
    # client 0 without itself: class 0 from client 1 only, class 1 from 1 and 2
    np.testing.assert_allclose(fd.payload_for(2, 0).logits, [[4, 2], [2, 4]])
    # client 2: class 0 from clients 0, 1 = [3, 1]; class 1 from client 1 = [1, 3]
    np.testing.assert_allclose(fd.payload_for(2, 2).logits, [[3, 1], [1, 3]])
    # a client that did not upload gets the plain mean
    np.testing.assert_allclose(fd.payload_for(2, 7).logits, [[3, 1], [2, 4]])


def test_fd_rejects_wrong_payloads():
    fd = STRATEGIES.get("fd")(info_for())
    with pytest.raises(PayloadError, match="expected a 'class_logits' payload"):
        fd.validate_upload(
            1,
            0,
            PublicLogits(
                indices=np.array([0]), values=np.zeros((1, 2), np.float32), space="logits"
            ),
        )
    with pytest.raises(PayloadError):
        fd.validate_upload(
            1, 0, ClassLogits(logits=np.full((2, 2), np.nan, np.float32), counts=np.array([1, 1]))
        )
    with pytest.raises(PayloadError):  # three classes, the run has two
        fd.validate_upload(
            1, 0, ClassLogits(logits=np.zeros((3, 3), np.float32), counts=np.array([1, 1, 1]))
        )


def test_dsfl_era_sharpens_the_mean_of_probabilities():
    dsfl = STRATEGIES.get("dsfl")(info_for("strategy=dsfl", "strategy.open_size=2"))
    idx = dsfl.indices_for(1)
    uploads = {
        0: PublicLogits(
            indices=idx, values=np.array([[0.8, 0.2], [0.5, 0.5]], np.float32), space="probs"
        ),
        1: PublicLogits(
            indices=idx, values=np.array([[0.6, 0.4], [0.5, 0.5]], np.float32), space="probs"
        ),
    }
    for payload in uploads.values():
        dsfl.validate_upload(1, 0, payload)
    dsfl.fuse(1, uploads, {0: 1, 1: 1})
    # mean [0.7, 0.3] -> softmax([7, 3]) = [1/(1+e^-4), e^-4/(1+e^-4)]
    first = 1 / (1 + np.exp(-4))
    np.testing.assert_allclose(dsfl.targets.values, [[first, 1 - first], [0.5, 0.5]], rtol=1e-5)
    assert dsfl.targets.space == "probs"
    np.testing.assert_array_equal(dsfl.targets.indices, idx)


def test_dsfl_refuses_indices_it_did_not_ask_for():
    dsfl = STRATEGIES.get("dsfl")(info_for("strategy=dsfl", "strategy.open_size=2"))
    asked = dsfl.indices_for(1)
    other = np.setdiff1d(np.arange(4), asked)[:2]
    with pytest.raises(PayloadError, match="indices"):
        dsfl.validate_upload(
            1,
            0,
            PublicLogits(indices=other, values=np.full((2, 2), 0.5, np.float32), space="probs"),
        )


def test_public_subsets_are_fresh_seeded_and_reproducible():
    a = STRATEGIES.get("fedmd")(
        info_for("strategy=fedmd", "strategy.alignment_size=2", num_public=50)
    )
    b = STRATEGIES.get("fedmd")(
        info_for("strategy=fedmd", "strategy.alignment_size=2", num_public=50)
    )
    rounds_a = [a.indices_for(r).tolist() for r in (1, 2, 3)]
    assert rounds_a == [b.indices_for(r).tolist() for r in (1, 2, 3)]
    assert len({tuple(r) for r in rounds_a}) > 1


def test_fedmd_consensus_is_the_mean_of_logits():
    fedmd = STRATEGIES.get("fedmd")(info_for("strategy=fedmd", "strategy.alignment_size=1"))
    idx = fedmd.indices_for(1)
    uploads = {
        0: PublicLogits(indices=idx, values=np.array([[1.0, -3.0]], np.float32), space="logits"),
        1: PublicLogits(indices=idx, values=np.array([[3.0, 1.0]], np.float32), space="logits"),
    }
    fedmd.fuse(1, uploads, {0: 1, 1: 1})
    np.testing.assert_allclose(fedmd.targets.values, [[2.0, -1.0]])
    assert fedmd.targets.space == "logits"


def test_fedavg_weighted_average():
    fedavg = STRATEGIES.get("fedavg")(info_for("strategy=fedavg", "model=mlp"))
    shapes = {k: v.shape for k, v in fedavg.weights[fedavg.group_of[0]].items()}
    ones = ModelWeights({k: np.ones(s, np.float32) for k, s in shapes.items()})
    fours = ModelWeights({k: np.full(s, 4.0, np.float32) for k, s in shapes.items()})
    fedavg.fuse(1, {0: ones, 1: fours}, {0: 2, 1: 1})  # (2*1 + 1*4) / 3 = 2
    for value in fedavg.weights[fedavg.group_of[0]].values():
        np.testing.assert_allclose(value, 2.0)


def test_fedavg_refuses_heterogeneous_models():
    with pytest.raises(ConfigError, match="identical models"):
        prepare_run(compose(["strategy=fedavg", "model=mlp_hetero"]))


def test_prepare_run_reports_the_data_and_model_facts():
    info = prepare_run(compose([]))
    assert info.num_classes == 10
    assert info.num_public > 0
    assert info.input_shape == (1, 8, 8)


def test_knfu_sends_each_client_its_own_fusion():
    knfu = STRATEGIES.get("knfu")(info_for("strategy=knfu", "strategy.divergence=kl", num_public=2))
    idx = knfu.indices_for(1)
    a = np.array([[0.9, 0.1], [0.8, 0.2]], np.float32)
    b = np.array([[0.1, 0.9], [0.2, 0.8]], np.float32)
    uploads = {
        0: PublicLogits(idx, a, "probs"),
        1: PublicLogits(idx, a, "probs"),
        2: PublicLogits(idx, b, "probs"),
    }
    for cid, payload in uploads.items():
        knfu.validate_upload(1, cid, payload)
    knfu.fuse(1, uploads, {0: 1, 1: 1, 2: 1})
    q0, q2 = knfu.payload_for(2, 0).values, knfu.payload_for(2, 2).values
    # clients 0 and 1 agree, client 2 is far: each side mostly keeps its own knowledge
    assert q0[0, 0] > 0.85 and q2[0, 1] > 0.85
    assert not np.allclose(q0, q2)
    np.testing.assert_allclose(knfu.payload_for(2, 0).values, knfu.payload_for(2, 1).values)
    assert knfu.payload_for(2, 7) is None  # no upload, no EPD, nothing to personalise


def test_knfu_with_beta_zero_is_uniform_fusion():
    knfu = STRATEGIES.get("knfu")(info_for("strategy=knfu", "strategy.beta=0", num_public=1))
    idx = knfu.indices_for(1)
    uploads = {
        0: PublicLogits(idx, np.array([[1.0, 0.0]], np.float32), "probs"),
        1: PublicLogits(idx, np.array([[0.0, 1.0]], np.float32), "probs"),
    }
    knfu.fuse(1, uploads, {0: 1, 1: 1})
    np.testing.assert_allclose(knfu.payload_for(2, 0).values, [[0.5, 0.5]])


def test_fedproto_averages_prototypes_of_clients_that_have_the_class():
    info = info_for("strategy=fedproto")
    proto = STRATEGIES.get("fedproto")(info)
    d = info.feature_dim
    p0 = np.zeros((2, d), np.float32)
    p0[0] = 1.0
    p1 = np.zeros((2, d), np.float32)
    p1[0], p1[1] = 3.0, 5.0
    uploads = {0: Prototypes(p0, np.array([4, 0])), 1: Prototypes(p1, np.array([1, 2]))}
    proto.fuse(1, uploads, {0: 4, 1: 3})
    np.testing.assert_allclose(proto.global_prototypes.prototypes[0], 2.0)  # (1 + 3) / 2
    np.testing.assert_allclose(proto.global_prototypes.prototypes[1], 5.0)  # client 1 only
    np.testing.assert_array_equal(proto.global_prototypes.counts, [2, 1])


def test_nearest_prototype_classifier_on_a_toy_case():
    import torch

    from fedkd.client.round import nearest_prototype_accuracy

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x, x

    protos = Prototypes(
        np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 0.0]], np.float32), np.array([1, 1, 0])
    )
    x = torch.tensor([[1.0, 0.5], [9.0, 9.5], [6.0, 6.0], [0.2, 0.1]])
    y = torch.tensor([0, 1, 1, 2])  # class 2 has no prototype, so its sample cannot be right
    assert nearest_prototype_accuracy(Identity(), x, y, protos, batch=2) == 0.75


def test_payload_beyond_float32_range_is_rejected():
    fd = STRATEGIES.get("fd")(info_for())
    huge = ClassLogits(logits=np.full((2, 2), 1e300, np.float64), counts=np.array([1, 1]))
    with pytest.raises(PayloadError, match="float32"):
        fd.validate_upload(1, 0, huge)


def test_non_finite_fusion_keeps_previous_knowledge():
    from server.strategies.base import FusionError

    with pytest.raises(FusionError):
        STRATEGIES.get("fd").require_finite("teacher", np.array([1.0, np.inf]))


def test_median_with_weights_is_refused_before_the_run():
    with pytest.raises(ConfigError):
        prepare_run(compose(["strategy.reducer=median", "strategy.weighted=true"]))


def test_unknown_client_optimizer_is_refused_before_the_run():
    with pytest.raises(ConfigError, match="client.optimizer"):
        prepare_run(compose(["client.optimizer.name=nosuchopt"]))


def test_public_set_strategies_need_a_public_set():
    with pytest.raises(ConfigError, match="public set"):
        prepare_run(compose(["strategy=dsfl", "split.public_fraction=0"]))


def test_feddf_needs_a_server_validation_split():
    with pytest.raises(ConfigError, match="server_val_per_class"):
        prepare_run(compose(["strategy=feddf", "split.server_val_per_class=0"]))


def test_knfu_charges_privacy_for_every_public_row_it_releases():
    """KnFu releases predictions on the whole public set each round: the record-level ledger
    counts that many queries (its subset size is a placeholder of 1)."""
    strategy = STRATEGIES.get("knfu")(
        info_for("strategy=knfu", "privacy=subteachers", num_public=30)
    )
    assert strategy.privacy_rows() == 30 == len(strategy.indices_for(1))


def test_dsfl_central_targets_are_as_sharp_as_without_privacy():
    """Central DP clips each client's whole probability table to norm ``clip``: without
    renormalised rows the mean shrinks towards zero and ERA returns almost flat targets."""
    rows, classes = 30, 10
    agreed = np.eye(classes, dtype=np.float32)[np.arange(rows) % classes] * 0.9 + 0.01
    targets = {}
    for privacy in (["privacy=none"], ["privacy=central", "privacy.noise_multiplier=0"]):
        strategy = STRATEGIES.get("dsfl")(
            info_for("strategy=dsfl", "strategy.open_size=30", *privacy,
                     num_classes=classes, num_public=rows)
        )  # fmt: skip
        idx = strategy.indices_for(1)
        strategy.fuse(1, {c: PublicLogits(idx, agreed, "probs") for c in range(3)}, {})
        targets[privacy[0]] = strategy.targets.values
    np.testing.assert_allclose(targets["privacy=central"], targets["privacy=none"], atol=1e-5)
    assert targets["privacy=central"].max(axis=1).min() > 0.99
