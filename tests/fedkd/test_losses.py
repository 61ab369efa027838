"""Distillation losses against hand-computed 2-class examples; space checks."""

from __future__ import annotations

import math

import pytest
import torch

from fedkd.errors import ConfigError
from fedkd.losses import LOSSES, check_space

LN3 = math.log(3.0)
# Teacher logits [ln 3, 0] -> q = [3/4, 1/4]; student logits [0, 0] -> p = [1/2, 1/2].
# KL(q || p) = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2) = 0.75 ln 1.5 - 0.25 ln 2
KL_Q_P = 0.75 * math.log(1.5) - 0.25 * math.log(2.0)  # 0.1308120...


def t(rows: list[list[float]], grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def test_registry_and_spaces() -> None:
    assert LOSSES.names() == ["kl", "kl_probs", "l1", "mse", "soft_ce", "swing_kl"]
    spaces = {name: LOSSES.get(name).target_space for name in LOSSES.names()}
    assert spaces == {
        "kl": "logits",
        "kl_probs": "probs",
        "l1": "logits",
        "mse": "features",
        "soft_ce": "probs",
        "swing_kl": "probs",
    }


def test_kl_hand_computed() -> None:
    loss = LOSSES.get("kl")(t([[0.0, 0.0]]), t([[LN3, 0.0]]))
    assert loss.item() == pytest.approx(KL_Q_P, rel=1e-9)
    assert abs(KL_Q_P - 0.1308120) < 1e-7


def test_kl_temperature_scales_by_t_squared() -> None:
    # T = 2: teacher [2 ln 3, 0] / 2 = [ln 3, 0] gives the same q; the loss is 4 * KL
    loss = LOSSES.get("kl")(t([[0.0, 0.0]]), t([[2 * LN3, 0.0]]), temperature=2.0)
    assert loss.item() == pytest.approx(4 * KL_Q_P, rel=1e-9)


def test_kl_is_batchmean() -> None:
    # second row: student == teacher, KL 0; batchmean -> KL_Q_P / 2
    loss = LOSSES.get("kl")(t([[0.0, 0.0], [1.0, 2.0]]), t([[LN3, 0.0], [1.0, 2.0]]))
    assert loss.item() == pytest.approx(KL_Q_P / 2, rel=1e-9)


def test_kl_identical_inputs_is_zero() -> None:
    x = torch.randn(5, 7)
    for temperature in (1.0, 4.0):
        assert LOSSES.get("kl")(x, x.clone(), temperature=temperature).item() == pytest.approx(
            0.0, abs=1e-6
        )


def test_kl_probs_hand_computed() -> None:
    loss = LOSSES.get("kl_probs")(t([[0.0, 0.0]]), t([[0.75, 0.25]]))
    assert loss.item() == pytest.approx(KL_Q_P, rel=1e-9)
    loss_t = LOSSES.get("kl_probs")(t([[0.0, 0.0]]), t([[0.75, 0.25]]), temperature=3.0)
    assert loss_t.item() == pytest.approx(9 * KL_Q_P, rel=1e-9)


def test_kl_probs_zero_target_entries() -> None:
    # q = [1, 0], p = [1/2, 1/2]: KL = 1 * ln(1 / 0.5) + 0 = ln 2, and no NaN from 0 ln 0
    student = t([[0.0, 0.0]], grad=True)
    loss = LOSSES.get("kl_probs")(student, t([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-9)
    loss.backward()
    # d/ds KL = p - q = [0.5 - 1, 0.5 - 0]
    assert student.grad is not None
    torch.testing.assert_close(student.grad, t([[-0.5, 0.5]]))


def test_soft_ce_hand_computed() -> None:
    # student [ln 3, 0] -> p = [3/4, 1/4]; q = [3/4, 1/4]
    # CE = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.5623351 (the entropy of q)
    loss = LOSSES.get("soft_ce")(t([[LN3, 0.0]]), t([[0.75, 0.25]]))
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.5623351, abs=1e-7)


def test_soft_ce_is_batch_mean() -> None:
    # row 2: q = [1, 0], p = [1/2, 1/2] -> CE = ln 2; mean with row 1 (0.5623351)
    loss = LOSSES.get("soft_ce")(t([[LN3, 0.0], [0.0, 0.0]]), t([[0.75, 0.25], [1.0, 0.0]]))
    expected = (-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + math.log(2.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_l1_hand_computed() -> None:
    # |1-0| + |2-0| + |3-1| + |4-(-4)| = 1 + 2 + 2 + 8 = 13 over 4 entries = 3.25
    loss = LOSSES.get("l1")(t([[1.0, 2.0], [3.0, 4.0]]), t([[0.0, 0.0], [1.0, -4.0]]))
    assert loss.item() == pytest.approx(3.25)


def test_mse_hand_computed() -> None:
    # diffs 0, 2, 3, 0 -> squares 0, 4, 9, 0 -> 13 / 4 = 3.25 (mean over batch and dims)
    loss = LOSSES.get("mse")(t([[1.0, 2.0], [3.0, 4.0]]), t([[1.0, 0.0], [0.0, 4.0]]))
    assert loss.item() == pytest.approx(3.25)


@pytest.mark.parametrize("name", ["kl", "kl_probs", "soft_ce", "l1", "mse"])
def test_gradients_flow_to_student(name: str) -> None:
    torch.manual_seed(0)
    student = torch.randn(4, 3, requires_grad=True)
    target = torch.softmax(torch.randn(4, 3), dim=1)
    kwargs = {"temperature": 2.0} if name in ("kl", "kl_probs", "soft_ce") else {}
    loss = LOSSES.get(name)(student, target, **kwargs)
    assert loss.ndim == 0
    loss.backward()
    assert student.grad is not None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["l1", "mse"])
def test_losses_without_temperature_refuse_one(name: str) -> None:
    with pytest.raises(ConfigError, match=f"loss '{name}' has no temperature, got 2.0"):
        LOSSES.get(name)(t([[0.0]]), t([[0.0]]), temperature=2.0)


def test_non_positive_temperature() -> None:
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        LOSSES.get("kl")(t([[0.0, 0.0]]), t([[0.0, 0.0]]), temperature=0.0)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"student shape \[1, 2\] != target shape \[1, 3\]"):
        LOSSES.get("kl")(t([[0.0, 0.0]]), t([[0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="expected \\[B, D\\] tensors, got 1-D"):
        LOSSES.get("soft_ce")(torch.zeros(2), torch.zeros(2))


def test_check_space_accepts_matching_pairs() -> None:
    check_space("kl", "logits")
    check_space("l1", "logits")
    check_space("kl_probs", "probs")
    check_space("soft_ce", "probs")
    check_space("mse", "features")


@pytest.mark.parametrize(
    "loss, space",
    [
        ("kl", "probs"),
        ("l1", "probs"),
        ("kl_probs", "logits"),
        ("soft_ce", "logits"),
        ("mse", "logits"),
        ("kl", "features"),
    ],
)
def test_check_space_rejects_mismatch(loss: str, space: str) -> None:
    with pytest.raises(
        ConfigError, match=f"loss '{loss}' needs .* targets but the payload carries {space}"
    ):
        check_space(loss, space)


def test_check_space_unknown_names() -> None:
    with pytest.raises(ConfigError, match="unknown target space 'log_probs'"):
        check_space("kl", "log_probs")
    with pytest.raises(ConfigError, match="unknown loss 'js'"):
        check_space("js", "logits")
