"""FedDF server-side ensemble distillation on tiny models and toy separable data."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fedkd.losses import LOSSES
from fedkd.models import build_model
from fedkd.server_distill import DistillReport, _kl, distill_ensemble, ensemble_logits

CENTERS = torch.tensor([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])


class Lin(nn.Module):
    """``nn.Linear`` returning ``(features, logits)`` like every fedkd model."""

    def __init__(self, weight: Tensor | None = None, bias: Tensor | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            if weight is not None:
                self.fc.weight.copy_(weight)
            if bias is not None:
                self.fc.bias.copy_(bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, self.fc(x)


def blobs(n_per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per_class)
    x = CENTERS[y] + 0.7 * torch.randn(len(y), 2, generator=g)
    return x, y


def good_teacher(scale: float = 1.0) -> Lin:
    # Nearest-centre classifier: logit_c = 2 μ_c·x − |μ_c|².
    return Lin(2 * CENTERS * scale, -(CENTERS**2).sum(1) * scale)


def bad_student() -> Lin:
    # The reversed classifier: starts far from the teachers.
    return Lin(-2 * CENTERS, (CENTERS**2).sum(1))


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x)[1].argmax(1) == y).float().mean().item()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- ensemble_logits


def two_teachers() -> tuple[Lin, Lin]:
    a = Lin(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0.0, 1.0, -1.0]))
    b = Lin(torch.tensor([[0.0, 2.0], [3.0, 0.0], [-1.0, 1.0]]), torch.tensor([2.0, 0.0, 0.5]))
    return a, b


def test_ensemble_logits_is_the_mean_of_logits() -> None:
    a, b = two_teachers()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, 0.0], [3.0, -2.0], [0.5, 0.5]])
    # Hand-computed: a(x) = [x0, x1 + 1, x0 + x1 − 1], b(x) = [2 x1 + 2, 3 x0, −x0 + x1 + 0.5].
    x0, x1 = x[:, 0], x[:, 1]
    la = torch.stack([x0, x1 + 1, x0 + x1 - 1], 1)
    lb = torch.stack([2 * x1 + 2, 3 * x0, -x0 + x1 + 0.5], 1)
    out = ensemble_logits([a, b], x, batch_size=2)  # several batches, last one partial
    assert out.shape == (5, 3)
    torch.testing.assert_close(out, (la + lb) / 2)
    # By hand at x = [1, 2]: a = [1, 3, 2], b = [6, 3, 1.5].
    torch.testing.assert_close(out[0], torch.tensor([3.5, 3.0, 1.75]))
    # Weighted: 1:3 -> (la + 3 lb) / 4; weights are normalised.
    torch.testing.assert_close(ensemble_logits([a, b], x, weights=[1, 3]), (la + 3 * lb) / 4)
    torch.testing.assert_close(ensemble_logits([a, b], x, weights=[0.25, 0.75]), (la + 3 * lb) / 4)
    torch.testing.assert_close(ensemble_logits([a, b], x, weights=[1.0, 0.0]), la)


def test_ensemble_logits_eval_mode_and_restores_modes() -> None:
    class ModeProbe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 3)
            self.seen: list[bool] = []

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            self.seen.append(self.training)
            return x, self.fc(x)

    t1, t2 = ModeProbe(), ModeProbe()
    t1.train()
    t2.eval()
    ensemble_logits([t1, t2], torch.zeros(4, 2))
    assert t1.seen == [False] and t2.seen == [False]
    assert t1.training and not t2.training


def test_ensemble_logits_errors() -> None:
    a, b = two_teachers()
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="at least one teacher"):
        ensemble_logits([], x)
    with pytest.raises(ValueError, match="empty"):
        ensemble_logits([a], torch.zeros(0, 2))
    with pytest.raises(ValueError, match="2 teachers"):
        ensemble_logits([a, b], x, weights=[1.0])
    with pytest.raises(ValueError, match="not all 0"):
        ensemble_logits([a, b], x, weights=[0.0, 0.0])
    with pytest.raises(ValueError, match=">= 0"):
        ensemble_logits([a, b], x, weights=[2.0, -1.0])


# ---------------------------------------------------------------- loss


def test_loss_is_reference_kl_without_t_squared() -> None:
    g = gen(3)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    kl = LOSSES.get("kl")
    torch.testing.assert_close(_kl(s, t, 1.0), kl(s, t, temperature=1.0))
    torch.testing.assert_close(_kl(s, t, 2.0), kl(s, t, temperature=2.0) / 4)


# ---------------------------------------------------------------- distill_ensemble


def test_distillation_raises_validation_accuracy() -> None:
    public_x, _ = blobs(40, seed=1)  # labels unused: the public set is unlabelled
    val_x, val_y = blobs(30, seed=2)
    teachers = [good_teacher(1.0), good_teacher(0.5)]
    assert accuracy(teachers[0], val_x, val_y) > 0.95
    student = bad_student()
    assert accuracy(student, val_x, val_y) < 0.1
    report = distill_ensemble(
        student,
        teachers,
        public_x,
        val_x,
        val_y,
        max_steps=300,
        batch_size=16,
        lr=0.05,
        eval_every=20,
        patience=300,
        generator=gen(0),
    )
    assert isinstance(report, DistillReport)
    assert report.initial_val_acc < 0.1
    assert report.best_val_acc > 0.9
    assert report.steps == 300 and not report.stopped_early
    assert report.history[0] == (0, report.initial_val_acc)
    assert [s for s, _ in report.history] == list(range(0, 301, 20))
    assert max(a for _, a in report.history) == report.best_val_acc
    assert accuracy(student, val_x, val_y) == pytest.approx(report.best_val_acc)
    assert student.training  # mode restored


def test_final_step_is_evaluated_when_budget_is_not_a_multiple() -> None:
    public_x, _ = blobs(10, seed=1)
    val_x, val_y = blobs(10, seed=2)
    report = distill_ensemble(
        bad_student(),
        [good_teacher()],
        public_x,
        val_x,
        val_y,
        max_steps=25,
        eval_every=10,
        generator=gen(),
    )
    assert [s for s, _ in report.history] == [0, 10, 20, 25]
    assert report.steps == 25


@pytest.mark.parametrize(("patience", "eval_every"), [(100, 10), (25, 10), (40, 40)])
def test_early_stopping_when_nothing_can_improve(patience: int, eval_every: int) -> None:
    public_x, _ = blobs(20, seed=1)
    val_x, val_y = blobs(10, seed=2)
    student = bad_student()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = distill_ensemble(
        student,
        [good_teacher()],
        public_x,
        val_x,
        val_y,
        max_steps=1000,
        batch_size=8,
        lr=0.0,  # the student cannot move, so validation accuracy cannot improve
        eval_every=eval_every,
        patience=patience,
        generator=gen(),
    )
    assert report.stopped_early
    assert patience <= report.steps < patience + eval_every
    assert report.steps % eval_every == 0
    assert report.best_val_acc == report.initial_val_acc
    assert len({a for _, a in report.history}) == 1
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_early_stopping_with_unlearnable_validation_labels() -> None:
    # Every validation input is the same point, labelled 0, 1 and 2 equally often: any model
    # predicts one class for all of them, so validation accuracy is 1/3 forever.
    public_x, _ = blobs(20, seed=1)
    val_x = torch.zeros(9, 2)
    val_y = torch.arange(3).repeat(3)
    report = distill_ensemble(
        bad_student(),
        [good_teacher()],
        public_x,
        val_x,
        val_y,
        max_steps=500,
        lr=0.05,
        eval_every=10,
        patience=50,
        generator=gen(),
    )
    assert report.stopped_early and report.steps == 50
    assert report.best_val_acc == pytest.approx(1 / 3)


def test_best_state_is_restored() -> None:
    # A good student distilled toward a bad teacher gets worse: the step-0 state must come back.
    public_x, _ = blobs(20, seed=1)
    val_x, val_y = blobs(20, seed=2)
    student = good_teacher(0.1)  # small logits, so the bad teacher drags it off quickly
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = distill_ensemble(
        student,
        [bad_student()],
        public_x,
        val_x,
        val_y,
        max_steps=200,
        batch_size=16,
        lr=0.1,
        eval_every=10,
        patience=50,
        generator=gen(),
    )
    assert report.initial_val_acc > 0.95
    assert min(a for _, a in report.history) < 0.5  # it did get worse before being restored
    assert report.best_val_acc == report.initial_val_acc
    assert report.stopped_early and report.steps == 50
    assert accuracy(student, val_x, val_y) == pytest.approx(report.best_val_acc)
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_restores_the_first_best_intermediate_state() -> None:
    # The student snapshots its parameters whenever it runs in eval mode, i.e. at each
    # validation (the toy val set fits in one batch), so snapshots[i] is history[i]'s state.
    class Snapshotting(Lin):
        def __init__(self, *args: Tensor) -> None:
            super().__init__(*args)
            self.snapshots: list[dict[str, Tensor]] = []

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            if not self.training:
                self.snapshots.append({k: v.clone() for k, v in self.fc.state_dict().items()})
            return super().forward(x)

    public_x, _ = blobs(40, seed=1)
    val_x, val_y = blobs(30, seed=2)
    student = Snapshotting(-2 * CENTERS, (CENTERS**2).sum(1))
    report = distill_ensemble(
        student,
        [good_teacher()],
        public_x,
        val_x,
        val_y,
        max_steps=300,
        batch_size=16,
        lr=0.05,
        eval_every=10,
        patience=1000,
        generator=gen(5),
    )
    snapshots = student.snapshots[: len(report.history)]
    assert len(snapshots) == len(report.history)
    accs = [a for _, a in report.history]
    first_best = accs.index(max(accs))
    assert report.best_val_acc == max(accs)
    # The best accuracy is reached before the end and kept (ties): the earliest state wins.
    assert 0 < first_best < len(accs) - 1 and accs[-1] == max(accs)
    restored = student.fc.state_dict()
    for k, v in restored.items():
        torch.testing.assert_close(v, snapshots[first_best][k])
    assert any(not torch.equal(restored[k], snapshots[-1][k]) for k in restored)
    assert accuracy(student, val_x, val_y) == pytest.approx(report.best_val_acc)


def test_deterministic_given_the_generator_seed() -> None:
    public_x, _ = blobs(30, seed=1)
    val_x, val_y = blobs(10, seed=2)

    def run(seed: int) -> tuple[DistillReport, dict[str, Tensor]]:
        student = Lin(torch.zeros(3, 2), torch.zeros(3))
        report = distill_ensemble(
            student,
            [good_teacher(), good_teacher(0.3)],
            public_x,
            val_x,
            val_y,
            max_steps=40,
            batch_size=7,
            lr=0.01,
            eval_every=5,
            generator=gen(seed),
        )
        return report, student.state_dict()

    r1, s1 = run(11)
    r2, s2 = run(11)
    r3, s3 = run(12)
    assert r1 == r2
    for k in s1:
        assert torch.equal(s1[k], s2[k])
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)


def test_mlp_models_from_the_registry() -> None:
    g = gen(0)
    spec = {"name": "mlp", "hidden": [16]}
    torch.manual_seed(0)
    teachers = [build_model(spec, (1, 8, 8), 3, 8) for _ in range(2)]
    student = build_model(spec, (1, 8, 8), 3, 8)
    public_x = torch.randn(50, 1, 8, 8, generator=g)
    val_x = torch.randn(20, 1, 8, 8, generator=g)
    # Label the validation set with the ensemble itself: distillation has something to learn.
    val_y = ensemble_logits(teachers, val_x).argmax(1)
    report = distill_ensemble(
        student,
        teachers,
        public_x,
        val_x,
        val_y,
        max_steps=60,
        batch_size=16,
        lr=0.01,
        eval_every=10,
        generator=gen(1),
    )
    assert 0 < report.steps <= 60
    assert report.best_val_acc >= report.initial_val_acc
    assert accuracy(student, val_x, val_y) == pytest.approx(report.best_val_acc)


def test_zero_steps_only_evaluates() -> None:
    val_x, val_y = blobs(5, seed=2)
    report = distill_ensemble(
        bad_student(), [good_teacher()], val_x, val_x, val_y, max_steps=0, generator=gen()
    )
    assert report.steps == 0 and report.history == [(0, report.initial_val_acc)]
    assert not report.stopped_early


def test_errors_for_empty_or_bad_inputs() -> None:
    x, y = blobs(5, seed=1)
    student, teacher = bad_student(), good_teacher()
    with pytest.raises(ValueError, match="public_x is empty"):
        distill_ensemble(student, [teacher], x[:0], x, y, generator=gen())
    with pytest.raises(ValueError, match="validation set is empty"):
        distill_ensemble(student, [teacher], x, x[:0], y[:0], generator=gen())
    with pytest.raises(ValueError, match="rows"):
        distill_ensemble(student, [teacher], x, x, y[:3], generator=gen())
    with pytest.raises(ValueError, match="at least one teacher"):
        distill_ensemble(student, [], x, x, y, generator=gen())
    with pytest.raises(ValueError, match="eval_every"):
        distill_ensemble(student, [teacher], x, x, y, eval_every=0, generator=gen())
    with pytest.raises(ValueError, match="temperature"):
        distill_ensemble(student, [teacher], x, x, y, temperature=0.0, generator=gen())


def test_docstring_budget_is_the_configured_one():
    """The module docstring states the FedDF step budget the config ships."""
    import re

    import fedkd.server_distill as module
    from fedkd.config import compose

    strategy = compose(["strategy=feddf"])["strategy"]
    stated = dict(
        re.findall(r"``(max_steps|eval_every|patience|batch_size)=(\d+)``", module.__doc__)
    )
    assert stated == {
        k: str(strategy[k]) for k in ("max_steps", "eval_every", "patience", "batch_size")
    }
