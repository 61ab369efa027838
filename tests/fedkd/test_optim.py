"""fedkd's optimisers against torch.optim's: the same parameters after every step, the same
refusals, and a client round that leaves ``torch._dynamo`` unimported."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkd import optim
from fedkd.errors import ConfigError
from fedkd.train import OPTIMIZERS, make_optimizer

TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
STEPS = 4

SHAPES = st.lists(
    st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=3
)
LR = st.sampled_from([0.0, 1e-3, 0.05, 0.5])
WEIGHT_DECAY = st.sampled_from([0.0, 1e-4, 0.1])


@st.composite
def sgd_options(draw) -> dict:
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
    nesterov = momentum > 0 and draw(st.booleans())
    return {
        "lr": draw(LR),
        "momentum": momentum,
        "dampening": 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1])),
        "nesterov": nesterov,
        "weight_decay": draw(WEIGHT_DECAY),
        "maximize": draw(st.booleans()),
    }


@st.composite
def adam_options(draw) -> dict:
    return {
        "lr": draw(LR),
        "betas": (draw(st.sampled_from([0.0, 0.5, 0.9])), draw(st.sampled_from([0.9, 0.999]))),
        "eps": draw(st.sampled_from([1e-8, 1e-3])),
        "weight_decay": draw(WEIGHT_DECAY),
        "amsgrad": draw(st.booleans()),
        "maximize": draw(st.booleans()),
    }


OPTIONS = {"sgd": sgd_options(), "adam": adam_options(), "adamw": adam_options()}


def test_the_registry_is_ours():
    assert OPTIMIZERS.names() == sorted(TORCH)
    for name in TORCH:
        assert issubclass(OPTIMIZERS.get(name), optim.Optimizer)


@pytest.mark.parametrize("name", sorted(TORCH))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_step_equals_torchs(name, data):
    shapes = data.draw(SHAPES, label="shapes")
    options = data.draw(OPTIONS[name], label="options")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(shape, generator=gen) for shape in shapes]
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    opt_ours = OPTIMIZERS.get(name)(ours, **options)
    opt_theirs = TORCH[name](theirs, **options)
    for step in range(STEPS):
        # a parameter may go without a gradient in a step (both then leave it alone)
        skip = data.draw(st.sampled_from([None, *range(len(shapes))]), label="skip")
        opt_ours.zero_grad(set_to_none=True)
        opt_theirs.zero_grad(set_to_none=True)
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if i != skip:
                grad = torch.randn(a.shape, generator=gen)
                a.grad, b.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b), (step, options)


def test_state_is_torchs():
    a, b = torch.ones(2, 3, requires_grad=True), torch.ones(2, 3, requires_grad=True)
    ours = optim.Adam([a], amsgrad=True)
    theirs = torch.optim.Adam([b], amsgrad=True)
    for p, opt in ((a, ours), (b, theirs)):
        p.grad = torch.full_like(p, 0.5)
        opt.step()
    mine, torchs = ours.state[a], theirs.state[b]
    assert sorted(mine) == sorted(torchs)
    for key in torchs:
        assert mine[key].dtype == torchs[key].dtype and torch.equal(mine[key], torchs[key]), key


def test_zero_grad_keeps_zeros_when_asked():
    p = torch.ones(3, requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None


def test_the_learning_rate_can_change_between_steps():
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    ours, theirs = optim.SGD([a], lr=0.1, momentum=0.9), torch.optim.SGD([b], lr=0.1, momentum=0.9)
    for lr in (0.1, 0.02, 0.5):
        for p, opt in ((a, ours), (b, theirs)):
            opt.param_groups[0]["lr"] = lr
            p.grad = torch.full_like(p, 0.3)
            opt.step()
        assert torch.equal(a, b)


BAD = [
    ("sgd", {"lr": -0.1}),
    ("sgd", {"lr": 0.1, "momentum": -0.5}),
    ("sgd", {"lr": 0.1, "weight_decay": -1.0}),
    ("sgd", {"lr": 0.1, "nesterov": True}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}),
    ("adam", {"lr": -0.1}),
    ("adam", {"eps": -1.0}),
    ("adam", {"betas": (1.0, 0.999)}),
    ("adam", {"betas": (0.9, -0.1)}),
    ("adam", {"weight_decay": -0.01}),
    ("adam", {"betas": (0, 0.999)}),
    ("adamw", {"lr": -0.1}),
    ("adamw", {"betas": (0.9, 1.5)}),
]


@pytest.mark.parametrize("name, options", BAD)
def test_refusals_are_torchs(name, options):
    with pytest.raises(ValueError) as theirs:
        TORCH[name]([torch.zeros(1, requires_grad=True)], **options)
    with pytest.raises(ValueError) as ours:
        OPTIMIZERS.get(name)([torch.zeros(1, requires_grad=True)], **options)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("params", [[], torch.zeros(1)])
def test_bad_params_are_refused_as_torch_does(params):
    with pytest.raises((TypeError, ValueError)) as theirs:
        torch.optim.SGD(params, lr=0.1)
    with pytest.raises((TypeError, ValueError)) as ours:
        optim.SGD(params, lr=0.1)
    assert type(ours.value) is type(theirs.value)


def test_an_unknown_option_names_the_optimizer():
    with pytest.raises(ConfigError, match="optimizer 'adam'.*momentum"):
        make_optimizer([torch.zeros(1, requires_grad=True)], {"name": "adam", "momentum": 0.9})


ROUND = """
import sys, torch
from fedkd.train import make_optimizer, train_supervised

class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return x, self.head(x)

for spec in ({"name": "sgd", "lr": 0.05, "momentum": 0.9}, {"name": "adam"}, {"name": "adamw"}):
    model = Tiny()
    train_supervised(
        model, torch.randn(12, 4), torch.randint(0, 3, (12,)), epochs=2, batch_size=4,
        optimizer=make_optimizer(model.parameters(), spec),
        generator=torch.Generator().manual_seed(0),
    )
print("torch._dynamo" in sys.modules)
"""


def test_a_client_round_does_not_import_dynamo():
    """torch.optim's classes import torch._dynamo (about 1.3 s of CPU); fedkd's do not."""
    out = subprocess.run(
        [sys.executable, "-c", ROUND], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", out.stderr
