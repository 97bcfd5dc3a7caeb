"""The plain engine's steps, the optimizer's parameter groups, the lr schedule and pinned cold-item
ID vectors: the pieces every driver's loop stands on (no Ray, no data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raysys.config import DistillConfig, StudentConfig
from raysys.models.student import build_student
from raysys.train.engines import PlainEngine, TrainedModules, make_optimizer
from raysys.train.schedule import lr_factor
from raysys.train.tasks.base import pin_unseen_item_ids, seed_everything


def tiny_student(num_items: int = 12, use_text: bool = False) -> torch.nn.Module:
    text_emb = torch.randn(num_items, 8) if use_text else None
    cfg = StudentConfig(hidden_size=16, num_layers=1, num_heads=2, dropout=0.0, use_text=use_text)
    return build_student(cfg, num_items, 4, text_emb=text_emb)


def test_lr_factor_warms_up_then_decays() -> None:
    assert [lr_factor(s, 4, 10, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 10, "cosine") == 1.0 and lr_factor(10, 4, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(7, 4, 10, "cosine") == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor(7, 4, 10, "linear") == pytest.approx(0.5) and lr_factor(9, 4, 10, "linear") == pytest.approx(1 / 6)
    assert lr_factor(9, 4, 10, "constant") == 1.0 and lr_factor(0, 0, 10, "linear") == 1.0


def loss_of(model: torch.nn.Module) -> torch.Tensor:
    scores = model.next_item_scores(torch.tensor([[0, 2, 3, 4]]))
    return F.cross_entropy(scores, torch.tensor([5]))


def test_backward_accumulates_and_step_updates_clears_and_schedules() -> None:
    seed_everything(0)
    model = tiny_student()
    engine = PlainEngine(TrainedModules(model), DistillConfig(warmup_steps=2, lr=1e-2), total_steps=10)
    before = [p.detach().clone() for p in model.parameters()]
    engine.backward(loss_of(model), 0.5, boundary=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # only accumulated
    first = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    engine.backward(loss_of(model), 0.5, boundary=True)
    for name, param in model.named_parameters():  # two halves of the same loss: the mean is that loss's gradient
        if name in first:
            torch.testing.assert_close(param.grad, 2 * first[name])
    stepped = engine.step()
    assert stepped["lr"] == pytest.approx(0.5e-2) and stepped["grad_norm"] > 0  # warm-up step 1 of 2
    assert engine.lr() == pytest.approx(1e-2) and engine.steps == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_a_restored_engine_continues_where_the_saved_one_was(tmp_path) -> None:
    seed_everything(0)
    cfg = DistillConfig(lr=1e-2, weight_decay=0.05)
    engine = PlainEngine(TrainedModules(tiny_student()), cfg, total_steps=10)
    engine.backward(loss_of(engine.modules.model), 1.0, boundary=True)
    engine.step()
    engine.save(tmp_path)
    seed_everything(1)
    other = PlainEngine(TrainedModules(tiny_student()), cfg.model_copy(update={"lr": 5e-3}), total_steps=10)
    other.load(tmp_path)
    assert other.steps == 1 and other.weights().keys() == engine.weights().keys()
    assert all(torch.equal(other.weights()[k], v) for k, v in engine.weights().items())
    other.apply_settings(cfg.model_copy(update={"lr": 5e-3, "weight_decay": 0.2}))  # PBT's explored values
    assert other.lr() == pytest.approx(5e-3 * engine.scheduler.lr_lambdas[0](1))
    assert other.optimizer.param_groups[0]["weight_decay"] == 0.2


def test_optimizer_decays_matrices_only() -> None:
    model = tiny_student()
    decay, no_decay = make_optimizer([model], DistillConfig(weight_decay=0.1)).param_groups
    assert decay["weight_decay"] == 0.1 and all(p.ndim == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])


def test_unseen_items_keep_a_zero_id_embedding() -> None:
    seed_everything(0)
    model = tiny_student(use_text=True)
    handle = pin_unseen_item_ids(model, np.array([2, 3, 4, 5], np.int32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss_of(model).backward()
        optimizer.step()
        optimizer.zero_grad()
    weight = model.items.id_embedding.weight
    assert not weight[6:].any()  # items 6..11 never trained: ID part stays 0, the text part scores them
    assert weight[2:6].abs().sum(dim=1).min() > 0 and weight[1].abs().sum() > 0  # seen items and mask train
    assert model.items.unseen.tolist() == [False] * 6 + [True] * 6  # and no loss takes them as negatives
    handle.remove()
