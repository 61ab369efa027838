"""``fedkd.client.round.run_round`` per plan shape, without Flower or Ray.

A tiny MLP on a few separable samples, on CPU: each test runs one round with one kind
of plan and checks what the round did (the model moved or not, the payload's values
against a direct computation, the metrics the plan asks for).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkd.client.round import round_generator, run_round
from fedkd.client.runtime import ClientTensors
from fedkd.confusion import GLOBAL_CONFUSION
from fedkd.errors import PayloadError
from fedkd.knowledge import ClassLogits, ModelWeights, Prototypes, PublicLogits, Votes
from fedkd.models.mlp import MLP
from fedkd.plan import DistillSpec, ExtractSpec, Plan, RegulariserSpec
from fedkd.train import evaluate, predict
from fedkd.weights import model_to_arrays

C, D, FEATURES = 3, 4, 5
CLIENT = {
    "epochs": 1,
    "batch_size": 4,
    "optimizer": {"name": "sgd", "lr": 0.1},
    "eval_batch_size": 64,
}
CPU = torch.device("cpu")


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of ``C`` classes around well-separated centres."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    x = rng.normal(size=(n, D)) * 0.1 + np.eye(C, D)[y] * 3.0
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))


@pytest.fixture
def data() -> ClientTensors:
    train_x, train_y = blobs(12, 0)
    test_x, test_y = blobs(6, 1)
    global_x, global_y = blobs(9, 2)
    public_x, _ = blobs(10, 3)
    return ClientTensors(
        train_x, train_y, test_x, test_y, global_x, global_y, public_x, C, (D,)
    )  # fmt: skip


def model() -> MLP:
    torch.manual_seed(0)
    return MLP((D,), C, FEATURES, hidden=(8,))


def round_of(plan: Plan, data: ClientTensors, net=None, received=None, indices=None, rnd=1):
    net = model() if net is None else net
    out = run_round(
        net,
        data,
        plan=plan,
        client_cfg=CLIENT,
        received=received,
        request_indices=indices,
        generator=round_generator(0, rnd, 0),
        server_round=rnd,
        device=CPU,
    )
    return net, out


def params(net) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in model_to_arrays(net).items()}


def moved(before: dict, after) -> bool:
    return any(not np.array_equal(before[k], v) for k, v in model_to_arrays(after).items())


def test_local_only_trains_evaluates_and_uploads_nothing(data):
    net = model()
    before = params(net)
    _, out = round_of(Plan(), data, net)
    assert out.payload is None
    assert moved(before, net)
    m = out.metrics
    assert m["num_train"] == 12 and m["num_local_test"] == 6 and m["eval_round"] == 1
    assert 0.0 <= m["local_test_acc"] <= 1.0 and 0.0 <= m["global_test_acc"] <= 1.0
    assert m["train_loss"] > 0 and m["distill_loss"] == 0.0
    assert GLOBAL_CONFUSION not in m  # only when the plan asks


def test_confusion_counts_every_global_test_sample(data):
    _, out = round_of(Plan(confusion=True), data)
    counts = out.metrics[GLOBAL_CONFUSION]
    assert counts.shape == (C, C) and counts.sum() == 9
    assert counts.trace() / 9 == pytest.approx(out.metrics["global_test_acc"])


def test_train_epochs_overrides_the_client_epochs(data):
    once, _ = round_of(Plan(), data)
    twice, _ = round_of(Plan(train_epochs=2), data)
    assert moved(params(once), twice)


def test_class_logits_are_the_training_pass_means(data):
    _, out = round_of(Plan(extract=ExtractSpec("class_logits")), data)
    payload = out.payload
    assert isinstance(payload, ClassLogits)
    np.testing.assert_array_equal(payload.counts, [4, 4, 4])  # one epoch over 12 samples
    assert payload.logits.shape == (C, C) and payload.logits.dtype == np.float32
    payload.validate(num_classes=C)


def test_prototypes_are_feature_means(data):
    _, out = round_of(Plan(extract=ExtractSpec("prototypes")), data)
    assert isinstance(out.payload, Prototypes)
    assert out.payload.prototypes.shape == (C, FEATURES)
    assert (out.payload.prototypes >= 0).all()  # features are taken after the ReLU
    out.payload.validate(num_classes=C, feature_dim=FEATURES)


def test_public_logits_and_probabilities_are_the_models_predictions(data):
    indices = np.array([1, 4, 7], np.int64)
    net, out = round_of(Plan(extract=ExtractSpec("public_logits")), data, indices=indices)
    expected = predict(net, data.public_x[indices], 64)[1].numpy()
    np.testing.assert_allclose(out.payload.values, expected, rtol=1e-6)
    np.testing.assert_array_equal(out.payload.indices, indices)
    spec = ExtractSpec("public_logits", space="probs", temperature=2.0)
    net, out = round_of(Plan(extract=spec), data, indices=indices)
    logits = predict(net, data.public_x[indices], 64)[1]
    np.testing.assert_allclose(out.payload.values, torch.softmax(logits / 2.0, 1).numpy(), 1e-6)
    assert out.payload.space == "probs"


def test_votes_are_the_top_k_classes_best_first(data):
    indices = np.array([0, 2, 3, 9], np.int64)
    net, out = round_of(Plan(extract=ExtractSpec("votes", top_k=2)), data, indices=indices)
    assert isinstance(out.payload, Votes) and out.payload.votes.shape == (4, 2)
    logits = predict(net, data.public_x[indices], 64)[1].numpy()
    np.testing.assert_array_equal(out.payload.votes[:, 0], logits.argmax(1))


def test_public_predictions_need_requested_indices(data):
    with pytest.raises(PayloadError, match="no indices were sent"):
        round_of(Plan(extract=ExtractSpec("public_logits")), data)


def test_weights_are_the_trained_model(data):
    net, out = round_of(Plan(extract=ExtractSpec("model_weights")), data)
    assert isinstance(out.payload, ModelWeights)
    for key, value in model_to_arrays(net).items():
        np.testing.assert_array_equal(out.payload.arrays[key], value)


def test_load_weights_and_evaluate_received_reports_the_previous_round(data):
    sender = model()
    with torch.no_grad():
        for p in sender.parameters():
            p.add_(1.0)
    received = ModelWeights(model_to_arrays(sender))
    plan = Plan(load_weights=True, eval_received=True, extract=ExtractSpec("model_weights"))
    _, out = round_of(plan, data, received=received, rnd=3)
    assert out.metrics["eval_round"] == 2
    # the evaluation is of the received model, before training
    acc, loss = evaluate(sender, data.global_x, data.global_y, 64)
    assert out.metrics["global_test_acc"] == acc and out.metrics["global_test_loss"] == loss
    # then the loaded model trained: what it uploads is neither the received nor a fresh model
    assert not np.array_equal(out.payload.arrays["head.weight"], received.arrays["head.weight"])
    fresh, _ = round_of(Plan(), data, rnd=3)
    assert not np.array_equal(
        out.payload.arrays["head.weight"], model_to_arrays(fresh)["head.weight"]
    )
    with pytest.raises(PayloadError, match="no ModelWeights were sent"):
        round_of(plan, data)


def targets(indices: np.ndarray) -> PublicLogits:
    probs = np.full((len(indices), C), 0.1, np.float32)
    probs[np.arange(len(indices)), 0] = 0.8  # every public sample: "class 0"
    return PublicLogits(indices=indices, values=probs, space="probs")


@pytest.mark.parametrize("when", ["before", "after"])
def test_distillation_on_public_targets_moves_towards_them(data, when):
    indices = np.arange(10, dtype=np.int64)
    spec = DistillSpec(loss="soft_ce", batch_size=5, when=when, epochs=30)
    plan = Plan(distill=spec)
    net, out = round_of(plan, data, received=targets(indices))
    assert out.metrics["distill_loss"] > 0
    other = "after_train" if when == "before" else "after_distill"
    assert {"after_distill_global_acc", "after_train_global_acc"} <= set(out.metrics)
    assert out.metrics[f"{other}_global_acc"] == out.metrics["global_test_acc"]
    probs = torch.softmax(predict(net, data.public_x, 64)[1], 1).numpy()
    if when == "after":  # the last step: the public predictions lean to class 0
        assert (probs.argmax(1) == 0).mean() > 0.5
    plain, _ = round_of(Plan(), data)
    assert moved(params(plain), net)


def test_a_zero_step_budget_distils_nothing(data):
    spec = DistillSpec(loss="soft_ce", batch_size=5, steps=0)
    _, out = round_of(Plan(distill=spec), data, received=targets(np.arange(10, dtype=np.int64)))
    _, plain = round_of(Plan(), data)
    assert out.metrics["distill_loss"] == 0.0 and "after_distill_global_acc" not in out.metrics
    assert out.metrics["global_test_acc"] == plain.metrics["global_test_acc"]


def test_distillation_needs_public_targets(data):
    spec = DistillSpec(loss="soft_ce", batch_size=5, epochs=3)
    _, out = round_of(Plan(distill=spec), data, received=None)  # nothing sent: local only
    _, plain = round_of(Plan(), data)
    assert out.metrics["global_test_acc"] == plain.metrics["global_test_acc"]


@pytest.mark.parametrize(
    ("kind", "loss", "table"),
    [
        ("class_logits", "kl", lambda: ClassLogits(np.eye(C, dtype=np.float32) * 5, np.ones(C))),
        ("prototypes", "mse", lambda: Prototypes(np.ones((C, FEATURES), np.float32), np.ones(C))),
    ],
)
def test_each_regulariser_adds_its_term_on_the_received_table(data, kind, loss, table):
    plan = Plan(regulariser=RegulariserSpec(kind, loss=loss, beta=1.0), extract=ExtractSpec(kind))
    net, out = round_of(plan, data, received=table())
    assert out.metrics["distill_loss"] > 0  # the regulariser's mean loss
    plain, no_table = round_of(plan, data, received=None)  # no table: plain CE
    assert no_table.metrics["distill_loss"] == 0.0
    assert moved(params(plain), net)
    absent = table()
    absent = type(absent)(absent.table(), np.zeros(C, np.int64))  # no label covered
    _, uncovered = round_of(plan, data, received=absent)
    assert uncovered.metrics["distill_loss"] == 0.0


def test_a_regulariser_loss_in_the_wrong_space_is_refused(data):
    plan = Plan(regulariser=RegulariserSpec("prototypes", loss="kl", beta=1.0))
    received = Prototypes(np.ones((C, FEATURES), np.float32), np.ones(C, np.int64))
    with pytest.raises(Exception, match="loss 'kl' needs logits targets"):
        round_of(plan, data, received=received)


def test_evaluate_prototypes_reports_nearest_prototype_accuracy(data):
    net, _ = round_of(Plan(), data)
    features = predict(net, data.global_x, 64)[0].numpy()
    labels = data.global_y.numpy()
    means = np.stack([features[labels == c].mean(0) for c in range(C)]).astype(np.float32)
    received = Prototypes(means, np.ones(C, np.int64))
    _, out = round_of(Plan(evaluate_prototypes=True), data, received=received)
    assert 0.0 <= out.metrics["global_test_proto_acc"] <= 1.0
    _, without = round_of(Plan(), data, received=received)
    assert "global_test_proto_acc" not in without.metrics


def test_extract_after_train_is_taken_before_distilling(data):
    indices = np.arange(10, dtype=np.int64)
    distill = DistillSpec(loss="soft_ce", batch_size=5, when="after", epochs=30)
    early = ExtractSpec("public_logits", at="after_train")
    net, out = round_of(Plan(extract=early, distill=distill), data, received=targets(indices), indices=indices)  # fmt: skip
    final = predict(net, data.public_x[indices], 64)[1].numpy()
    assert not np.allclose(out.payload.values, final)  # distillation came after the upload
    trained, _ = round_of(Plan(), data)
    expected = predict(trained, data.public_x[indices], 64)[1].numpy()
    np.testing.assert_allclose(out.payload.values, expected, rtol=1e-5)


def test_run_round_takes_a_plan_not_a_dict(data):
    with pytest.raises(TypeError, match="fedkd.plan.Plan"):
        round_of({"extract": {"kind": "none"}}, data)
