"""Strategy options are checked right after composition, without torch or Flower.

``fedkd.strategy_options`` holds each strategy's traits and option checks; the server's
strategy classes take both from it, and its tables of optimiser options and loss spaces
match what ``fedkd.train`` and ``fedkd.losses`` build. A bad value reaches the user as one
line naming the key and what to set, before torch is imported.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
from helpers import ROOT, run_fedkd_sim

from fedkd.config import compose
from fedkd.errors import ConfigError
from fedkd.losses import LOSSES
from fedkd.strategy_options import LOSS_SPACES, OPTIMIZER_OPTIONS, SPECS, StrategySpec
from fedkd.train import OPTIMIZERS
from server.options import check_options
from server.strategies import STRATEGIES


def test_optimizer_options_are_torchs():
    assert sorted(OPTIMIZER_OPTIONS) == OPTIMIZERS.names()
    for name, options in OPTIMIZER_OPTIONS.items():
        params = inspect.signature(OPTIMIZERS.get(name)).parameters
        assert set(options) == set(params) - {"params"}, name


FLAGS = ("nesterov", "maximize", "foreach", "differentiable", "fused", "capturable", "amsgrad")


@pytest.mark.parametrize("name", sorted(OPTIMIZER_OPTIONS))
def test_the_light_check_refuses_what_torchs_optimizers_refuse(name):
    """Every combination of the boolean options (unset, true, false): the check without
    torch accepts a spec exactly when torch builds the optimiser, so the launcher need not
    build one (docs/performance.md)."""
    import itertools

    import torch

    from fedkd.strategy_options import check_optimizer

    flags = [f for f in FLAGS if f in OPTIMIZER_OPTIONS[name]]
    params = [torch.nn.Parameter(torch.zeros(1))]
    refused = 0
    for values in itertools.product([None, True, False], repeat=len(flags)):
        spec = {
            "name": name,
            "lr": 0.1,
            **{f: v for f, v in zip(flags, values, strict=True) if v is not None},
        }
        if name == "sgd":
            spec["momentum"] = 0.9
        try:
            OPTIMIZERS.get(name)(params, **{k: v for k, v in spec.items() if k != "name"})
            torch_accepts = True
        except (RuntimeError, TypeError, ValueError):
            torch_accepts = False
        try:
            check_optimizer("client.optimizer", spec)
            light_accepts = True
        except ConfigError as err:
            light_accepts = False
            assert "\n" not in str(err) and str(err).startswith("client.optimizer.")
        assert light_accepts == torch_accepts, spec
        refused += not torch_accepts
    assert refused > 0  # the combinations reach what torch refuses


def test_loss_spaces_are_the_losses():
    assert sorted(LOSS_SPACES) == LOSSES.names()
    for name, space in LOSS_SPACES.items():
        assert LOSSES.get(name).target_space == space


def test_strategy_classes_take_their_traits_from_the_specs():
    assert sorted(SPECS) == STRATEGIES.names()
    for name, spec in SPECS.items():
        cls = STRATEGIES.get(name)
        assert cls.name == name
        for trait in StrategySpec.TRAITS:
            assert getattr(cls, trait) == getattr(spec, trait), (name, trait)


@pytest.mark.parametrize("strategy", sorted(SPECS))
def test_every_strategy_default_passes(strategy):
    overrides = [f"strategy={strategy}"]
    if SPECS[strategy].homogeneous_only:
        overrides.append("model=mlp")
    assert check_options(compose(overrides)).name == strategy


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["strategy=knfu", "strategy.beta=-1"],
            "strategy.beta must be a number >= 0 (got -1); set e.g. strategy.beta=10.0 (the default)",
        ),
        (
            ["strategy=dsfl", "strategy.server_model=1"],
            "set e.g. strategy.server_model=true (the default)",
        ),
        (["strategy=feddf", "strategy.lr=0"], "strategy.lr must be > 0 (got 0); set e.g."),
        (["strategy=knfu", "strategy.gating=top"], "strategy.gating=top: must be one of"),
        (
            ["strategy=knfu", "strategy.top_m=2"],
            "strategy.top_m=2 is used only with strategy.gating=top_m",
        ),
        (["strategy=fd", "strategy.teacher=lo"], "strategy.teacher=lo: must be one of mean, loo"),
        (["strategy=fd", "strategy.loss=mse"], "use one of kl, l1"),
        (["strategy=dsfl", "strategy.era_temperature=2"], "e.g. strategy.era_temperature=0.1"),
        (["strategy=fedmd", "strategy.alignment_size=0"], "strategy.alignment_size must be"),
        (["strategy=vote", "strategy.top_k=0"], "strategy.top_k must be an integer >= 1"),
        (["strategy=fedproto", "strategy.lambda=-1"], "strategy.lambda must be a number >= 0"),
        (["strategy=feddf", "split.server_val_per_class=0"], "split.server_val_per_class=5"),
        (["strategy=fedka", "model=mlp", "strategy.method=dan"], "did you mean dann?"),
        (["strategy=fedavg"], "needs identical models on every client"),
        (["client.optimizer.lr=-1"], "client.optimizer.lr must be a number >= 0"),
        (["+client.optimizer.momentun=0.9"], "did you mean momentum?"),
        (
            ["strategy=dsfl", "strategy.distill.optimizer.name=adamm"],
            "strategy.distill.optimizer.name=adamm: unknown optimizer; did you mean adam?",
        ),
        (["privacy=central", "strategy=knfu"], "use the client-side mod (privacy=gaussian"),
        (["attack.kind=scale", "strategy=local"], "cannot attack strategy 'local'"),
        (["swing=adaptive", "strategy=fd"], "'fd' does not (drop swing=... or use strategy=dsfl)"),
    ],
)
def test_bad_options_are_one_line(overrides, expected):
    with pytest.raises(ConfigError) as err:
        check_options(compose(overrides))
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["strategy=knfu", "strategy.beta=-1"], "strategy.beta must be a number >= 0 (got -1)"),
        (["strategy=fedavg"], "(use model=mlp)"),
        (["strategy=fedmd", "strategy.digest_loss=mse"], "strategy.digest_loss=mse: loss 'mse'"),
        (["client.optimizer.lr=-1"], "e.g. client.optimizer.lr=0.01"),
        (["privacy=central", "strategy=knfu"], "privacy=central cannot protect strategy 'knfu'"),
        (["attack.kind=scale", "strategy=local"], "cannot attack strategy 'local'"),
    ],
)
def test_launcher_refuses_strategy_options_before_importing_torch(tmp_path, args, expected):
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = run_fedkd_sim([*args, f"hydra.run.dir={tmp_path / 'bad'}"], timeout=120, env=env)
    assert result.returncode == 1
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "fedkd.strategy_options" in imported
    assert not {"torch", "flwr", "ray"} & imported
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("fedkd-sim: error: "), result.stderr
    assert expected in errors[0]


def test_deploy_refuses_a_bad_value_before_torch_or_any_process():
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "simulations.deploy", "strategy=knfu", "strategy.beta=-1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert not {"torch", "flwr", "ray"} & imported
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == [
        "fedkd-deploy: error: strategy.beta must be a number >= 0 (got -1); "
        "set e.g. strategy.beta=10.0 (the default)"
    ]
