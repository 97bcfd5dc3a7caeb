"""Distillation: KL at temperature (full catalog and teacher top-K), hidden-state alignment, the
teacher's item vectors as the student's start, and an ensemble of teachers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raysys.objectives.distillation import HiddenAlignment, TeacherEnsemble, ensemble_logits, kd_loss, teacher_item_init


def test_kl_is_zero_when_student_equals_teacher() -> None:
    logits = torch.randn(6, 40)
    assert kd_loss(logits, logits.clone(), temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, logits.clone(), temperature=2.0, topk=5).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_matches_the_definition_times_t_squared() -> None:
    torch.manual_seed(0)
    student, teacher, t = torch.randn(4, 10), torch.randn(4, 10), 3.0
    p, q = F.softmax(teacher / t, -1), F.softmax(student / t, -1)
    expected = (p * (p.log() - q.log())).sum(-1).mean() * t**2
    assert kd_loss(student, teacher, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_topk_kl_renormalises_over_the_teachers_best_items() -> None:
    teacher = torch.tensor([[5.0, 4.0, 0.0, -1.0]])
    # The student agrees on the top-2 ordering and gaps but not on the tail: top-2 KL is 0.
    student = torch.tensor([[1.0, 0.0, 3.0, 9.0]])
    assert kd_loss(student, teacher, 1.0, topk=2).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(student, teacher, 1.0).item() > 1.0
    # topk >= catalog size is the full KL.
    assert kd_loss(student, teacher, 1.0, topk=4).item() == pytest.approx(kd_loss(student, teacher, 1.0).item())


def test_kl_gradient_flows_to_the_student_only() -> None:
    student = torch.randn(3, 12, requires_grad=True)
    teacher = torch.randn(3, 12, requires_grad=True)
    loss = kd_loss(student, teacher, 2.0, topk=4)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_hidden_alignment_is_mse_after_projection() -> None:
    torch.manual_seed(0)
    align = HiddenAlignment(8, 16)
    s, t = torch.randn(5, 8), torch.randn(5, 16)
    expected = F.mse_loss(align.projection(s), t)
    loss = align(s, t)
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert align.projection.weight.grad.abs().sum() > 0


def test_teacher_item_init_keeps_the_teachers_item_geometry_at_the_students_scale() -> None:
    """Teacher vectors spanning 3 directions of 8: a 4-wide start keeps every pairwise distance up to
    one scale factor (PCA loses nothing), its 4th column is empty, and its element std is the given one."""
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(8, 3)).Q.T  # [3, 8] orthonormal rows
    teacher = torch.randn(50, 3) * torch.tensor([3.0, 2.0, 1.0]) @ basis + 5.0  # [50, 8], off-centre
    start = teacher_item_init(teacher, hidden_size=4, std=0.02)  # [50, 4]
    assert start.shape == (50, 4)
    assert torch.allclose(start[:, 3], torch.zeros(50), atol=1e-6)
    assert start.std().item() == pytest.approx(0.02, rel=1e-4)
    ratio = (
        torch.cdist(start, start)[~torch.eye(50, dtype=torch.bool)]
        / torch.cdist(teacher, teacher)[~torch.eye(50, dtype=torch.bool)]
    )
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3)


def test_teacher_item_init_keeps_the_widest_directions_when_narrowing() -> None:
    """Narrower than the teacher's rank: the start is the projection on the largest-variance directions."""
    torch.manual_seed(1)
    teacher = torch.randn(200, 6) * torch.tensor([10.0, 5.0, 0.1, 0.1, 0.1, 0.1])  # two wide axes
    start = teacher_item_init(teacher, hidden_size=2, std=1.0)
    centred = teacher[:, :2] - teacher[:, :2].mean(0)
    # the same 2-d geometry up to scale and a rotation / reflection: the Gram matrices agree
    gram_start, gram_teacher = start @ start.T, centred @ centred.T
    scale = gram_start.norm() / gram_teacher.norm()
    assert torch.allclose(gram_start, scale * gram_teacher, atol=0.02 * gram_start.abs().max().item())


def test_an_ensembles_target_is_the_normalised_geometric_mean_of_its_members() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(4, 9), torch.randn(4, 9)
    assert torch.equal(ensemble_logits([a]), a)  # one member: its own logits
    target = F.softmax(ensemble_logits([a, b]), dim=-1)
    geometric = (F.softmax(a, -1) * F.softmax(b, -1)).sqrt()
    assert torch.allclose(target, geometric / geometric.sum(-1, keepdim=True), atol=1e-6)
    # a member's logits shifted by a constant per row change nothing (log-softmax first)
    assert torch.allclose(ensemble_logits([a + 5.0, b]), ensemble_logits([a, b]), atol=1e-5)


def test_an_ensemble_mixes_no_causal_and_bidirectional_teachers() -> None:
    class Member(torch.nn.Module):
        def __init__(self, causal: bool) -> None:
            super().__init__()
            self.is_causal, self.hidden_size = causal, 8

    assert TeacherEnsemble([Member(True), Member(True)]).is_causal
    with pytest.raises(ValueError, match="all be causal or all bidirectional"):
        TeacherEnsemble([Member(True), Member(False)])
