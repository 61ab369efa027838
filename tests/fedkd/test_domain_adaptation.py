"""FedKA domain-adaptation pieces: GRL, DANN ramp, MK-MMD, domain head (docs/algorithms.md §2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedkd.domain import DomainHead, dann_lambda, grad_reverse, mk_mmd
from fedkd.errors import ConfigError


def official_mmd(source: torch.Tensor, target: torch.Tensor, mul: float = 2.0, num: int = 5):
    """The FedKA notebook's MMD_loss, restated (direct pairwise differences)."""
    n = source.shape[0] + target.shape[0]
    total = torch.cat([source, target])
    d = ((total[None, :, :] - total[:, None, :]) ** 2).sum(2)
    bw = d.detach().sum() / (n * n - n) / mul ** (num // 2)
    k = sum(torch.exp(-d / (bw * mul**i)) for i in range(num))
    b = source.shape[0]
    return torch.mean(k[:b, :b] + k[b:, b:] - k[:b, b:] - k[b:, :b])


# ---------------------------------------------------------------- gradient reversal
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 2.5])
def test_grad_reverse_flips_and_scales(lam: float) -> None:
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = grad_reverse(x, lam)
    assert torch.equal(y, x)  # identity forward
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -lam * w)


def test_grad_reverse_inside_a_graph() -> None:
    x = torch.randn(5, requires_grad=True)
    (grad_reverse(x * 2.0, 0.5) ** 2).sum().backward()
    assert torch.allclose(x.grad, -0.5 * 2.0 * 2.0 * (2.0 * x.detach()))  # -λ · d/dx (2x)²
    with pytest.raises(ConfigError, match="lambda_"):
        grad_reverse(x, math.nan)


# ---------------------------------------------------------------- DANN ramp
def test_dann_lambda_schedule() -> None:
    assert dann_lambda(0.0) == 0.0
    values = [dann_lambda(p / 100) for p in range(101)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # 0.9866
    assert dann_lambda(1.0, gamma=10.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(1.0, gamma=10.0) > dann_lambda(1.0)
    assert dann_lambda(50.0) == pytest.approx(1.0)
    assert 0.0 < dann_lambda(0.5) < 1.0


def test_dann_lambda_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="progress"):
        dann_lambda(-0.1)
    with pytest.raises(ConfigError, match="gamma"):
        dann_lambda(0.5, gamma=0.0)


# ---------------------------------------------------------------- MK-MMD
def test_mmd_matches_official_notebook() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(16, 800, dtype=torch.float64), torch.randn(16, 800, dtype=torch.float64)
    t = t + 0.3
    assert mk_mmd(s, t).item() == pytest.approx(official_mmd(s, t).item(), rel=1e-9)
    assert mk_mmd(s, t, 3.0, 3).item() == pytest.approx(official_mmd(s, t, 3.0, 3).item(), rel=1e-9)


def test_mmd_gradient_matches_official_notebook() -> None:
    torch.manual_seed(1)
    s = torch.randn(8, 20, dtype=torch.float64, requires_grad=True)
    t = torch.randn(8, 20, dtype=torch.float64) + 0.5
    (g_ours,) = torch.autograd.grad(mk_mmd(s, t), s)
    (g_ref,) = torch.autograd.grad(official_mmd(s, t), s)
    assert torch.allclose(g_ours, g_ref, rtol=1e-7, atol=1e-12)


def test_mmd_zero_on_identical_samples() -> None:
    torch.manual_seed(2)
    x = torch.randn(32, 64) + 5.0
    assert abs(mk_mmd(x, x).item()) < 1e-6
    same = torch.ones(4, 3)
    assert mk_mmd(same, same).item() == 0.0  # h = 0 is floored, no NaN


def test_mmd_larger_on_shifted_samples_symmetric_nonnegative() -> None:
    torch.manual_seed(3)
    a, b = torch.randn(64, 10), torch.randn(64, 10)
    same_dist = mk_mmd(a, b).item()
    shifted = mk_mmd(a, b + 2.0).item()
    assert shifted > 5 * same_dist
    assert shifted > 0.5
    assert mk_mmd(b + 2.0, a).item() == pytest.approx(shifted, rel=1e-5)
    for _ in range(10):
        s, t = torch.randn(8, 4), torch.randn(8, 4) * 2
        assert mk_mmd(s, t).item() > -1e-6  # biased MMD² is a squared RKHS norm


def test_mmd_grows_with_shift() -> None:
    torch.manual_seed(4)
    a, b = torch.randn(32, 5), torch.randn(32, 5)
    values = [mk_mmd(a, b + shift).item() for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values)


def test_mmd_bandwidth_gets_no_gradient_and_trains() -> None:
    torch.manual_seed(5)
    s = (torch.randn(16, 4) + 3.0).requires_grad_()
    t = torch.randn(16, 4)
    opt = torch.optim.SGD([s], lr=1.0)
    before = mk_mmd(s, t).item()
    for _ in range(50):
        opt.zero_grad()
        mk_mmd(s, t).backward()
        opt.step()
    assert mk_mmd(s, t).item() < 0.5 * before


def test_mmd_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="must match"):
        mk_mmd(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\[B, d\]"):
        mk_mmd(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ConfigError, match="kernel_num"):
        mk_mmd(torch.zeros(4, 3), torch.ones(4, 3), kernel_num=0)
    with pytest.raises(ConfigError, match="kernel_mul"):
        mk_mmd(torch.zeros(4, 3), torch.ones(4, 3), kernel_mul=-2.0)


# ---------------------------------------------------------------- domain head
def test_domain_head_shape_and_layers() -> None:
    head = DomainHead(800)
    layers = [type(m).__name__ for m in head.net]
    assert layers == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head.net[0].in_features == 800 and head.net[0].out_features == 100
    assert head(torch.randn(16, 800)).shape == (16, 2)
    assert head(torch.randn(16, 50, 4, 4)).shape == (16, 2)  # conv features are flattened
    with pytest.raises(ConfigError, match="feature_dim"):
        DomainHead(0)


def test_domain_head_grl_reverses_feature_gradient() -> None:
    torch.manual_seed(6)
    head = DomainHead(12, hidden=8).eval()  # eval: BN uses running stats, same map both times
    feats = torch.randn(6, 12)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])

    def feat_grad(lam: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        f = feats.clone().requires_grad_()
        head.zero_grad()
        F.cross_entropy(head(f, grl_lambda=lam), labels).backward()
        return f.grad, head.net[0].weight.grad.clone()

    g_plain, w_plain = feat_grad(None)
    g_rev, w_rev = feat_grad(0.7)
    assert torch.allclose(g_rev, -0.7 * g_plain, atol=1e-7)
    assert torch.allclose(w_rev, w_plain)  # the head itself still descends the domain loss
