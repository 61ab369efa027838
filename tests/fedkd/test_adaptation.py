"""FedKA's loops (fedkd.adaptation) and the ``fedka`` strategy's server side."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import info_for

from fedkd.adaptation import (
    adapt_locally,
    batch_stream,
    finetune_on_votes,
    join_arrays,
    ramp,
    split_arrays,
)
from fedkd.domain import DomainHead
from fedkd.errors import ConfigError
from fedkd.knowledge import ModelWeights
from fedkd.models import build_model
from fedkd.train import predict
from server.strategies import STRATEGIES

ADAM = {"name": "adam", "lr": 1e-3}


def toy(seed: int = 0):
    """Source: two well separated classes; target: the same, shifted by +3."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (64,), generator=g)
    x = torch.randn(64, 1, 2, 2, generator=g) * 0.3 + y.view(-1, 1, 1, 1).float() * 2
    torch.manual_seed(seed)
    model = build_model({"name": "mlp", "hidden": [16]}, (1, 2, 2), 2, 8)
    return model, x, y, x + 3.0


def run(method: str, *, accumulate: str = "sum", seed: int = 0, head: bool = True):
    model, x, y, xt = toy(seed)
    torch.manual_seed(1)
    dom = DomainHead(8, 16) if head else None
    reference = copy.deepcopy(model)
    report = adapt_locally(
        model, x, y, xt, method=method, head=dom, reference=reference, batches=12,
        batch_size=8, optimizer=ADAM, round_index=3, num_rounds=5,
        generator=torch.Generator().manual_seed(0), mmd_every=4, mmd_accumulate=accumulate,
    )  # fmt: skip
    return model, dom, report


def params(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_ramp_follows_the_notebook_schedule():
    assert ramp(0, 32, 0, 200, 5.0) == 0.0
    p = (5 + 2 * 32) / (200 * 32)
    assert ramp(5, 32, 2, 200, 5.0) == pytest.approx(2 / (1 + np.exp(-5 * p)) - 1)
    assert ramp(31, 32, 199, 200, 5.0) < 2 / (1 + np.exp(-5)) - 1 + 1e-12


def test_batch_stream_covers_every_sample_before_repeating():
    stream = batch_stream(10, 4, torch.Generator().manual_seed(0))
    first = torch.cat(
        [next(stream), next(stream)]
    )  # 8 of 10; the last 2 wait for a new permutation
    assert len(set(first.tolist())) == 8
    assert len(next(stream)) == 4
    assert len(next(batch_stream(3, 16, torch.Generator()))) == 3


def test_split_and_join_arrays_round_trip():
    arrays = join_arrays({"w": 1}, {"net.0.weight": 2}, {"w": 3})
    assert arrays == {"w": 1, "domain_head.net.0.weight": 2, "reference.w": 3}
    assert split_arrays(arrays) == ({"w": 1}, {"net.0.weight": 2}, {"w": 3})


def test_source_only_trains_the_classifier_and_not_the_head():
    _, dom, report = run("source")
    torch.manual_seed(1)
    assert torch.equal(params(dom), params(DomainHead(8, 16)))
    assert report.domain_loss == 0 and report.mmd_loss == 0 and np.isnan(report.domain_acc)
    assert report.ce_loss > 0


def test_adversarial_methods_train_the_domain_head():
    _, dom, report = run("dann")
    torch.manual_seed(1)
    assert not torch.equal(params(dom), params(DomainHead(8, 16)))
    assert report.domain_loss > 0 and 0 <= report.domain_acc <= 1 and report.mmd_loss == 0


def test_mmd_phase_moves_source_features_towards_the_reference_target_features():
    plain, _, _ = run("source")
    matched, _, report = run("mmd")
    _, x, _, xt = toy()
    reference = toy()[0]  # the frozen global extractor (the initial model)
    target_feats = predict(reference, xt, 64)[0]
    from fedkd.domain import mk_mmd

    gap_plain = float(mk_mmd(predict(plain, x, 64)[0], target_feats))
    gap_matched = float(mk_mmd(predict(matched, x, 64)[0], target_feats))
    assert report.mmd_loss > 0
    assert gap_matched < gap_plain


def test_official_mmd_accumulation_differs_from_the_sum():
    a, _, _ = run("mmd", accumulate="sum")
    b, _, _ = run("mmd", accumulate="official")
    assert not torch.equal(params(a), params(b))


def test_methods_check_their_inputs():
    model, x, y, xt = toy()
    common = dict(
        batches=1, batch_size=4, optimizer=ADAM, round_index=0, num_rounds=1,
        generator=torch.Generator(),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="domain head"):
        adapt_locally(model, x, y, xt, method="dann", head=None, reference=None, **common)
    with pytest.raises(ConfigError, match="reference"):
        adapt_locally(model, x, y, xt, method="fedka", head=DomainHead(8), reference=None, **common)
    with pytest.raises(ConfigError, match="method must be one of"):
        adapt_locally(model, x, y, xt, method="coral", head=None, reference=None, **common)


def test_finetune_on_votes_uses_only_pseudo_labelled_samples():
    model, x, _, _ = toy()
    before = params(model)
    none = torch.full((64,), -1)
    loss = finetune_on_votes(
        model, x, none, batches=5, batch_size=8, optimizer=ADAM, round_index=2, num_rounds=4,
        generator=torch.Generator(),
    )  # fmt: skip
    assert loss == 0.0 and torch.equal(before, params(model))


@pytest.mark.parametrize("ramp_on", ["loss", "lr"])
def test_finetune_on_votes_fits_the_pseudo_labels(ramp_on):
    model, x, _, _ = toy()
    pseudo = torch.zeros(64, dtype=torch.long)  # everything is class 0
    pseudo[:8] = -1
    finetune_on_votes(
        model, x, pseudo, batches=60, batch_size=16, optimizer={"name": "adam", "lr": 1e-2},
        round_index=3, num_rounds=4, generator=torch.Generator().manual_seed(0), ramp_on=ramp_on,
    )  # fmt: skip
    assert float((predict(model, x, 64)[1].argmax(1) == 0).float().mean()) > 0.9


def test_lr_ramp_is_zero_at_the_first_step():
    model, x, _, _ = toy()
    before = params(model)
    finetune_on_votes(
        model, x, torch.zeros(64, dtype=torch.long), batches=1, batch_size=8, optimizer=ADAM,
        round_index=0, num_rounds=4, generator=torch.Generator(), ramp_on="lr",
    )  # fmt: skip
    assert torch.equal(before, params(model))  # lambda_p = 0 at p = 0


# ------------------------------------------------------------------- strategy
def fedka(*overrides: str):
    return STRATEGIES.get("fedka")(
        info_for(
            "strategy=fedka", "model=mlp", "dataset=digits_domains", "partition=domain",
            "split.target_domain=rotated", *overrides, num_classes=10,
        )
    )  # fmt: skip


def uploads_from(strategy, n: int = 3):
    """Each client returns the broadcast weights, perturbed a little."""
    sent = split_arrays(strategy.payload_for(1, 0).arrays)
    rng = np.random.default_rng(0)
    out = {}
    for cid in range(n):
        model = {k: (v + rng.normal(0, 0.01, v.shape)).astype(v.dtype) for k, v in sent[0].items()}
        out[cid] = ModelWeights(join_arrays(model, sent[1]))
    return out


def test_fedka_sends_model_and_domain_head_and_fuses_with_voting():
    strategy = fedka("num_clients=5")
    model, head, reference = split_arrays(strategy.payload_for(1, 0).arrays)
    assert head and not reference  # broadcast=finetuned: the loaded model is the reference
    diag = strategy.fuse(1, uploads_from(strategy), {0: 10, 1: 10, 2: 10})
    for key in ("global_model_target_acc", "fedavg_target_acc", "client_target_acc", "voting_acc"):
        assert 0.0 <= diag[key] <= 1.0
    assert diag["group_effect"] == pytest.approx(
        diag["global_model_target_acc"] - diag["client_target_acc"]
    )
    assert diag["pseudo_labels"] == len(strategy.target_x)  # threshold 0: every sample


def test_fedka_official_broadcast_sends_the_finetuned_model_as_reference():
    strategy = fedka("num_clients=5", "strategy.broadcast=fedavg")
    strategy.fuse(1, uploads_from(strategy), {0: 1, 1: 1, 2: 1})
    model, _, reference = split_arrays(strategy.payload_for(2, 0).arrays)
    assert set(reference) == set(model)
    assert any(not np.array_equal(model[k], reference[k]) for k in model)


def test_fedka_source_only_has_no_domain_head_and_no_votes():
    strategy = fedka("num_clients=5", "strategy.method=source", "strategy.voting_enabled=false")
    assert not split_arrays(strategy.payload_for(1, 0).arrays)[1]
    diag = strategy.fuse(1, uploads_from(strategy), {0: 1, 1: 1, 2: 1})
    assert "voting_acc" not in diag
    assert diag["global_model_target_acc"] == diag["fedavg_target_acc"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy.method=coral", "strategy.method=coral: must be one of source, dann, fedka, mmd"),
        ("strategy.broadcast=all", "strategy.broadcast"),
        ("strategy.mmd_accumulate=mean", "strategy.mmd_accumulate"),
        ("strategy.vote_ramp_on=steps", "strategy.vote_ramp_on"),
        ("strategy.batch_size=1", "strategy.batch_size"),
        ("strategy.voting.noise=laplace", "voting.noise"),
    ],
)
def test_fedka_bad_options_are_refused(override, message):
    from fedkd.config import compose

    cfg = compose(["strategy=fedka", "model=mlp", override])
    with pytest.raises(ConfigError, match=message):
        STRATEGIES.get("fedka").check_config(cfg)
