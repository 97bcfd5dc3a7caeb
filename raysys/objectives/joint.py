"""The losses a training step calls: the teacher's pretraining mix and the student's distillation mix.

    pretrain: L = w_next · L_next + w_masked · L_cloze + w_cl · L_cl
    distill:  L = L_rec + λ_ssl · L_ssl + λ_kd · L_kd + λ_hidden · L_hidden

Each returns a dict of scalar tensors: "loss" (to backpropagate) and one entry per term (zeros for
terms that are switched off), so training loops log them all the same way.
"""

from __future__ import annotations

import torch

from raysys.config import DistillConfig, PretrainConfig
from raysys.errors import RaysysError
from raysys.models.common import SequenceModel, score_items, unseen_items, without_unseen
from raysys.objectives.contrastive import contrastive_loss
from raysys.objectives.distillation import HiddenAlignment, TeacherEnsemble, ensemble_logits, kd_loss
from raysys.objectives.masked_item import masked_item_loss
from raysys.objectives.next_item import next_item_loss


def check_pretrain_objectives(cfg: PretrainConfig, is_causal: bool) -> None:
    """Raise RaysysError for an objective mix the model cannot train on."""
    if cfg.weight_next_item + cfg.weight_masked_item + cfg.weight_contrastive <= 0:
        raise RaysysError("every objective weight is 0", where="pretrain.weight_next_item")
    if cfg.weight_next_item > 0 and not is_causal:
        raise RaysysError(
            "next-item loss at every position needs a causal teacher; a bidirectional one sees the answer",
            where="pretrain.weight_next_item",
            hint="for teacher.arch=bert set pretrain.weight_next_item=0 pretrain.weight_masked_item=1",
        )


def pretrain_loss(
    model: SequenceModel,
    batch: dict[str, torch.Tensor],
    cfg: PretrainConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted self-supervised mix -> {"loss", "next_item", "masked_item", "contrastive"}.

    batch (see `raysys.data.batches.pretrain_batch`): "input_ids", "labels" [B, L] next-item windows,
    plus "cloze_input_ids", "cloze_labels" [B, L] when the masked-item weight is > 0.
    """
    check_pretrain_objectives(cfg, model.is_causal)
    input_ids = batch["input_ids"]
    terms: dict[str, torch.Tensor] = {}
    if cfg.weight_next_item > 0:
        terms["next_item"] = next_item_loss(model, input_ids, batch["labels"], cfg, generator)
    if cfg.weight_masked_item > 0:
        terms["masked_item"] = masked_item_loss(model, batch["cloze_input_ids"], batch["cloze_labels"], cfg, generator)
    if cfg.weight_contrastive > 0:
        terms["contrastive"] = contrastive_loss(model, input_ids, cfg, generator)
    weights = {
        "next_item": cfg.weight_next_item,
        "masked_item": cfg.weight_masked_item,
        "contrastive": cfg.weight_contrastive,
    }
    loss = sum(weights[name] * value for name, value in terms.items())
    zero = loss.detach() * 0.0
    return {"loss": loss, **{name: terms.get(name, zero) for name in weights}}


@torch.no_grad()
def teacher_outputs(
    teacher: SequenceModel | TeacherEnsemble, input_ids: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen teacher's hidden states and catalog scores at the positions the student learns from.

    Causal teacher: every labelled position, [N, Ht] and [N, V]. A bidirectional teacher would see
    the future at inner positions, so only each window's last position (the BERT4Rec mask read-out):
    [B, Ht] and [B, V]. Runs in eval mode without gradients. An ensemble: the first member's states,
    the members' combined scores (`ensemble_logits`).
    """
    teacher.eval()
    members = list(teacher.members) if isinstance(teacher, TeacherEnsemble) else [teacher]
    outputs = []
    for member in members:
        if member.is_causal:
            states = member.encode(input_ids)[labels > 0]
        else:
            states = member.user_state(input_ids)
        outputs.append((states, score_items(states, member.item_embeddings())))
    return outputs[0][0], ensemble_logits([logits for _, logits in outputs])


def distill_loss(
    student: SequenceModel,
    batch: dict[str, torch.Tensor],
    cfg: DistillConfig,
    teacher: SequenceModel | TeacherEnsemble | None = None,
    alignment: HiddenAlignment | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The student's joint loss -> {"loss", "rec", "ssl", "kd", "hidden"}.

    batch: "input_ids", "labels" [B, L] next-item windows (see `raysys.data.batches.next_item_batch`).
    The teacher (optional, frozen) runs in eval mode without gradients; `alignment` is required
    when `cfg.lambda_hidden > 0` and must be in the optimizer with the student.
    """
    input_ids, labels = batch["input_ids"], batch["labels"]
    hidden = student.encode(input_ids)  # [B, L, Hs], shared by every term
    rec = next_item_loss(student, input_ids, labels, cfg, generator, hidden=hidden)
    zero = rec.detach() * 0.0
    terms = {"rec": rec, "ssl": zero, "kd": zero, "hidden": zero}
    if cfg.lambda_ssl > 0:
        terms["ssl"] = contrastive_loss(student, input_ids, cfg, generator)
    if teacher is not None and (cfg.lambda_kd > 0 or cfg.lambda_hidden > 0):
        t_state, t_logits = teacher_outputs(teacher, input_ids, labels)
        s_state = hidden[labels > 0] if teacher.is_causal else hidden[:, -1]
        if cfg.lambda_kd > 0:
            # Items absent from training are no negatives here either: both distributions leave them out.
            unseen = unseen_items(student)
            s_logits = without_unseen(score_items(s_state, student.item_embeddings()), unseen)
            terms["kd"] = kd_loss(s_logits, without_unseen(t_logits, unseen), cfg.temperature, cfg.kd_topk)
        if cfg.lambda_hidden > 0:
            if alignment is None:
                raise ValueError("distill.lambda_hidden > 0 needs a HiddenAlignment(student_hidden, teacher_hidden)")
            terms["hidden"] = alignment(s_state, t_state)
    loss = rec + cfg.lambda_ssl * terms["ssl"] + cfg.lambda_kd * terms["kd"] + cfg.lambda_hidden * terms["hidden"]
    return {"loss": loss, **terms}
