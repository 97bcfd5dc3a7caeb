"""Knowledge distillation from a frozen teacher (or an ensemble of them): softened-softmax KL over the
catalog (or over the teacher's top-K items), an optional hidden-state alignment, and the teacher's item
vectors as the student's starting item embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    topk: int | None = None,
) -> torch.Tensor:
    """KL(teacher || student) of the softmaxes at temperature T, times T^2, [N, V] x [N, V] -> scalar.

    With `topk`, both distributions are renormalised over the teacher's K best items per row, so
    the student copies the teacher's ranking of what matters without paying for the long tail.
    The T^2 factor keeps the gradient scale independent of T (Hinton et al., 2015).
    """
    teacher_logits = teacher_logits.detach().float()
    student_logits = student_logits.float()
    if topk is not None and topk < teacher_logits.shape[-1]:
        top = teacher_logits.topk(topk, dim=-1).indices  # [N, K]
        teacher_logits = teacher_logits.gather(-1, top)
        student_logits = student_logits.gather(-1, top)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


class TeacherEnsemble(nn.Module):
    """Frozen teachers distilled as one (`distill.teacher` + `distill.extra_teachers`).

    KD's target is the normalised geometric mean of the members' next-item distributions: the mean of
    their log-softmaxes, [N, V] (a softmax renormalises it, so masking items afterwards stays exact).
    The hidden states, hidden size and item vectors (the alignment, init_items=teacher) are the first
    member's. Every member must read the sequence the same way (all causal or all bidirectional).
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len({m.is_causal for m in members}) > 1:
            raise ValueError("the ensemble's teachers must all be causal or all bidirectional")
        self.members = nn.ModuleList(members)
        self.is_causal: bool = members[0].is_causal
        self.hidden_size: int = members[0].hidden_size

    def item_embeddings(self) -> torch.Tensor:
        return self.members[0].item_embeddings()


def ensemble_logits(member_logits: list[torch.Tensor]) -> torch.Tensor:
    """The mean of the members' log-softmaxes, [M x [N, V]] -> [N, V] (one member: its logits as they are)."""
    if len(member_logits) == 1:
        return member_logits[0]
    return torch.stack([logits.float().log_softmax(dim=-1) for logits in member_logits]).mean(dim=0)


class HiddenAlignment(nn.Module):
    """A linear map from the student's hidden size to the teacher's, trained with the student."""

    def __init__(self, student_hidden: int, teacher_hidden: int) -> None:
        super().__init__()
        self.projection = nn.Linear(student_hidden, teacher_hidden)

    def forward(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
        """MSE between projected student and (detached) teacher states, [N, Hs] x [N, Ht] -> scalar."""
        projected = self.projection(student_hidden).float()
        return F.mse_loss(projected, teacher_hidden.detach().float())


def teacher_item_init(teacher_items: torch.Tensor, hidden_size: int, std: float) -> torch.Tensor:
    """The teacher's item vectors as a student's item table, [V, Ht] -> [V, hidden_size].

    The centred vectors are projected on their `hidden_size` principal directions (the widest the
    teacher's geometry allows; zero columns pad a student wider than the teacher) and scaled to an
    element std of `std`, so the student starts with the teacher's item neighbourhoods at the scale
    its own initialisation would have had.
    """
    items = teacher_items.detach().float()
    centred = items - items.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)  # v: [min(V, Ht), Ht], rows = directions
    k = min(hidden_size, v.shape[0])
    reduced = centred @ v[:k].T  # [V, k]
    out = torch.zeros(items.shape[0], hidden_size)
    out[:, :k] = reduced * (std / reduced.std().clamp_min(1e-12))
    return out
