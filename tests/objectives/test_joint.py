"""Sequence losses on real models and the joint pretrain / distill mixes."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from raysys.config import DistillConfig, PretrainConfig, StudentConfig, TeacherConfig
from raysys.data.batches import pretrain_batch, training_windows
from raysys.errors import RaysysError
from raysys.models.common import score_items, unseen_items, without_unseen
from raysys.models.student import build_student
from raysys.models.teacher import build_teacher
from raysys.objectives.distillation import HiddenAlignment, TeacherEnsemble, ensemble_logits, kd_loss
from raysys.objectives.joint import distill_loss, pretrain_loss
from raysys.objectives.masked_item import masked_item_loss
from raysys.objectives.next_item import next_item_loss

NUM_ITEMS, MAX_LEN = 40, 8
TERMS = {"loss", "rec", "ssl", "kd", "hidden"}


def make_batch(cfg: PretrainConfig | None = None) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    sequences = [rng.integers(2, NUM_ITEMS, size=n) for n in rng.integers(2, 20, size=12)]
    batch = pretrain_batch(
        training_windows(sequences, MAX_LEN), cfg or PretrainConfig(loss="full", weight_masked_item=1.0), rng
    )
    return {key: torch.from_numpy(value) for key, value in batch.items()}


def student(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_student(StudentConfig(hidden_size=32, dropout=0.0, **kw), NUM_ITEMS, MAX_LEN)


def teacher(arch: str = "gpt2") -> torch.nn.Module:
    torch.manual_seed(1)
    cfg = TeacherConfig(arch=arch, hidden_size=48, num_layers=2, num_heads=2, dropout=0.1)
    return build_teacher(cfg, NUM_ITEMS, MAX_LEN)


def finite_grads(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(grads) and all(torch.isfinite(g).all() for g in grads)


def test_next_item_loss_of_a_blank_model_is_log_num_items() -> None:
    model = student()
    with torch.no_grad():
        model.items.id_embedding.weight.zero_()
    batch = make_batch()
    loss = next_item_loss(model, batch["input_ids"], batch["labels"], DistillConfig(loss="full"))
    assert loss.item() == pytest.approx(math.log(NUM_ITEMS - 2), abs=1e-5)


def test_next_item_loss_needs_a_causal_model() -> None:
    batch = make_batch()
    with pytest.raises(ValueError, match="causal"):
        next_item_loss(teacher("bert"), batch["input_ids"], batch["labels"], PretrainConfig(loss="full"))


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_masked_item_loss_has_finite_gradients(arch: str) -> None:
    model, batch = teacher(arch).train(), make_batch()
    loss = masked_item_loss(model, batch["cloze_input_ids"], batch["cloze_labels"], PretrainConfig(loss="full"))
    assert 0 < loss.item() < 2 * math.log(NUM_ITEMS)
    loss.backward()
    assert finite_grads(model)


def test_pretrain_mix_weights_the_terms() -> None:
    cfg = PretrainConfig(weight_next_item=1.0, weight_masked_item=0.5, weight_contrastive=0.2, loss="sampled")
    model, batch = teacher("llama").eval(), make_batch(cfg)  # eval: same dropout-free pass for each term
    out = pretrain_loss(model, batch, cfg, torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "next_item", "masked_item", "contrastive"}
    expected = out["next_item"] + 0.5 * out["masked_item"] + 0.2 * out["contrastive"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(out[name] > 0 for name in out)
    out["loss"].backward()
    assert finite_grads(model)


def test_pretrain_rejects_next_item_for_bert_and_all_zero_weights() -> None:
    with pytest.raises(RaysysError, match="pretrain.weight_next_item"):
        pretrain_loss(teacher("bert"), make_batch(), PretrainConfig(loss="full"))
    cfg = PretrainConfig(loss="full", weight_next_item=0.0, weight_masked_item=1.0)
    out = pretrain_loss(teacher("bert"), make_batch(cfg), cfg)
    assert out["next_item"].item() == 0.0 and out["masked_item"] > 0
    with pytest.raises(RaysysError, match="weight"):
        pretrain_loss(teacher("gpt2"), make_batch(), PretrainConfig(loss="full", weight_next_item=0.0))


def test_distill_without_teacher_is_rec_plus_ssl() -> None:
    model, batch = student(), make_batch()
    cfg = DistillConfig(loss="full", lambda_ssl=0.5)
    out = distill_loss(model, batch, cfg, generator=torch.Generator().manual_seed(0))
    assert set(out) == TERMS and out["kd"].item() == 0.0 and out["ssl"].item() > 0
    assert out["loss"].item() == pytest.approx((out["rec"] + 0.5 * out["ssl"]).item(), rel=1e-6)


def test_kd_is_zero_when_the_teacher_is_the_student() -> None:
    model, batch = student(), make_batch()
    frozen = copy.deepcopy(model)
    cfg = DistillConfig(loss="full", lambda_ssl=0.0, lambda_kd=1.0, kd_topk=5)
    out = distill_loss(model, batch, cfg, teacher=frozen)
    assert out["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["loss"].item() == pytest.approx(out["rec"].item(), abs=1e-6)


def test_kd_from_an_ensemble_learns_the_members_combined_distribution() -> None:
    """Two copies of one teacher teach what that teacher alone teaches; two different teachers teach
    their combined distribution (`ensemble_logits`), the hidden states being the first member's."""
    model, batch = student(), make_batch()
    first, second = teacher().eval(), teacher().eval()
    with torch.no_grad():
        for p in second.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = DistillConfig(loss="full", lambda_ssl=0.0, lambda_kd=1.0, temperature=2.0)
    alone = distill_loss(model, batch, cfg, teacher=first)["kd"]
    twice = distill_loss(model, batch, cfg, teacher=TeacherEnsemble([first, copy.deepcopy(first)]))["kd"]
    assert twice.item() == pytest.approx(alone.item(), rel=1e-5)
    both = distill_loss(model, batch, cfg, teacher=TeacherEnsemble([first, second]))["kd"]
    labels = batch["labels"]
    with torch.no_grad():
        scores = [
            score_items(m.encode(batch["input_ids"])[labels > 0], m.item_embeddings()) for m in (model, first, second)
        ]
    unseen = unseen_items(model)
    expected = kd_loss(without_unseen(scores[0], unseen), without_unseen(ensemble_logits(scores[1:]), unseen), 2.0)
    assert both.item() == pytest.approx(expected.item(), rel=1e-4) and both.item() != pytest.approx(alone.item())


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_distill_with_teacher_trains_only_the_student(arch: str) -> None:
    model, big, batch = student(), teacher(arch).train(), make_batch()
    big.requires_grad_(True)
    align = HiddenAlignment(model.hidden_size, big.hidden_size)
    cfg = DistillConfig(lambda_ssl=0.1, lambda_kd=1.0, lambda_hidden=0.5, temperature=2.0, loss="sampled")
    out = distill_loss(model, batch, cfg, teacher=big, alignment=align, generator=torch.Generator().manual_seed(0))
    assert set(out) == TERMS and all(torch.isfinite(v) for v in out.values())
    assert out["kd"] > 0 and out["hidden"] > 0
    expected = out["rec"] + 0.1 * out["ssl"] + out["kd"] + 0.5 * out["hidden"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    out["loss"].backward()
    assert not big.training  # the teacher ran in eval mode
    assert all(p.grad is None for p in big.parameters())
    assert finite_grads(model) and align.projection.weight.grad.abs().sum() > 0


def test_hidden_alignment_needs_a_projection() -> None:
    cfg = DistillConfig(loss="full", lambda_hidden=1.0)
    with pytest.raises(ValueError, match="HiddenAlignment"):
        distill_loss(student(), make_batch(), cfg, teacher=teacher())
