"""Distillation budgets in optimiser steps, warm-up and ramp (fedkd.schedule, fedkd.train.distill)."""

from __future__ import annotations

import pytest
import torch

from fedkd.errors import ConfigError
from fedkd.losses import LOSSES
from fedkd.schedule import check_budget, round_budget, transfer_steps
from fedkd.train import distill, make_optimizer

BUDGET = {
    "steps": 10,
    "batch_size": 4,
    "optimizer": {"name": "adam", "lr": 0.001},
    "start_round": 3,
    "ramp_rounds": 4,
}


def test_transfer_steps_warm_up_then_linear_ramp():
    # rounds 1-2: warm-up; 3..6: ceil(10 * j / 4) for j = 1..4 -> 3, 5, 8, 10; then 10
    assert [transfer_steps(r, 10, 3, 4) for r in range(1, 9)] == [0, 0, 3, 5, 8, 10, 10, 10]
    assert [transfer_steps(r, 10, 1, 0) for r in (1, 2)] == [10, 10]  # no warm-up, no ramp
    assert transfer_steps(5, 0, 1, 0) == 0


def test_round_budget_is_the_plan_entry():
    assert round_budget(BUDGET, 2) == {
        "steps": 0,
        "batch_size": 4,
        "optimizer": {"name": "adam", "lr": 0.001},
    }
    assert round_budget(BUDGET, 4)["steps"] == 5


@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": -1}, "strategy.distill.steps must be an int >= 0"),
        ({"batch_size": 0}, "strategy.distill.batch_size must be an int >= 1"),
        ({"start_round": 0}, "strategy.distill.start_round must be an int >= 1"),
        ({"ramp_rounds": 1.5}, "strategy.distill.ramp_rounds must be an int >= 0"),
        ({"optimizer": "adam"}, "strategy.distill.optimizer must be a mapping"),
        ({"epochs": 3}, "unknown option"),
    ],
)
def test_bad_budgets_are_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_budget({**BUDGET, **change}, "strategy.distill")
    assert "\n" not in str(err.value)


def test_a_strategy_refuses_an_unbuildable_distillation_optimizer():
    from fedkd.config import compose
    from server.strategies import STRATEGIES

    cfg = compose(["strategy=dsfl", "strategy.distill.optimizer.name=nope"])
    with pytest.raises(ConfigError, match="strategy.distill.optimizer"):
        STRATEGIES.get("dsfl").check_config(cfg)


def _adam_steps(optimizer: torch.optim.Optimizer) -> int:
    """Steps Adam has taken (its own per-parameter counter)."""
    states = list(optimizer.state.values())
    return int(states[0]["step"]) if states else 0


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return x, self.head(x)


@pytest.mark.parametrize("steps, expected", [(0, 0), (1, 1), (7, 7), (None, 3 * 3)])
def test_distill_takes_exactly_the_budgeted_steps(steps, expected):
    # 10 samples at batch 4: 3 batches a pass; 7 steps need a third pass
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(10, 3)
    targets = torch.softmax(torch.randn(10, 2), dim=1)
    optimizer = make_optimizer(model.parameters(), {"name": "adam", "lr": 0.01})
    before = model.head.weight.detach().clone()
    distill(
        model,
        x,
        targets,
        loss_fn=LOSSES.get("soft_ce"),
        temperature=1.0,
        epochs=3,
        steps=steps,
        batch_size=4,
        optimizer=optimizer,
        generator=torch.Generator().manual_seed(0),
    )
    assert _adam_steps(optimizer) == expected
    assert torch.equal(model.head.weight, before) == (expected == 0)
