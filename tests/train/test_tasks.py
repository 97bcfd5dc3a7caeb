"""The tasks' own pieces: which task a stage trains, click-prediction rows and pairs (labels from
ratings, sampled non-clicks), and the click model trained on them with the click loss."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raysys.config import Config, PretrainConfig, StudentConfig
from raysys.data.batches import training_parts
from raysys.models.ctr import ClickModel
from raysys.models.student import build_student
from raysys.objectives.ctr import ctr_loss
from raysys.train.tasks import ClickTask, DistillTask, PretrainTask, task_for
from raysys.train.tasks.click import ctr_pairs


def random_sequences(rng: np.random.Generator, count: int, max_length: int, num_items: int = 50) -> list[np.ndarray]:
    lengths = rng.integers(0, max_length, size=count)
    return [rng.integers(2, num_items, size=n).astype(np.int32) for n in lengths]


def tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in batch.items()}


def test_a_stage_picks_its_task_and_next_item_drops_the_other_objectives() -> None:
    cfg = Config(pretrain=PretrainConfig(task="next_item", weight_masked_item=1.0, weight_contrastive=0.5))
    task = task_for(cfg, "pretrain")
    assert type(task) is PretrainTask and task.metric == "ndcg@10"
    assert (task.train_cfg.weight_next_item, task.train_cfg.weight_masked_item, task.train_cfg.weight_contrastive) == (
        1.0,
        0.0,
        0.0,
    )
    assert type(task_for(cfg, "distill")) is DistillTask
    click = task_for(Config(pretrain=PretrainConfig(task="ctr")), "pretrain")
    assert type(click) is ClickTask and click.metric == "auc" and click.model_section == "teacher"


def test_ctr_pairs_with_explicit_low_ratings() -> None:
    seqs = [np.array([2, 3, 4, 5]), np.array([6, 7])]
    ratings = [np.array([5.0, 2.0, 4.0, 1.0]), np.array([3.0, 5.0])]
    pairs = ctr_pairs(seqs, 3, 20, np.random.default_rng(0), ratings=ratings, rating_threshold=4.0)
    assert pairs["input_ids"].tolist() == [[0, 0, 2], [0, 2, 3], [2, 3, 4], [0, 0, 6]]
    assert pairs["candidates"].tolist() == [3, 4, 5, 7]
    assert pairs["labels"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_ctr_pairs_sample_negatives_without_ratings() -> None:
    seqs = random_sequences(np.random.default_rng(0), 100, 20, num_items=30)
    pairs = ctr_pairs(seqs, 5, 30, np.random.default_rng(1), negatives_per_click=2)
    clicks = sum(max(len(s) - 1, 0) for s in seqs)
    assert len(pairs["labels"]) == 3 * clicks and pairs["labels"].sum() == clicks
    positives, negatives = pairs["candidates"][:clicks], pairs["candidates"][clicks:].reshape(2, clicks)
    assert np.all(negatives != positives) and negatives.min() >= 2 and negatives.max() < 30
    np.testing.assert_array_equal(pairs["input_ids"][clicks : 2 * clicks], pairs["input_ids"][:clicks])


def test_click_rows_keep_ratings_aligned_and_draw_new_negatives_per_batch() -> None:
    task = task_for(Config(data={"max_len": 4}, pretrain=PretrainConfig(task="ctr")), "pretrain")
    table = pa.table(
        {
            "user_index": pa.array([0], pa.int32()),
            "items": pa.array([[2, 3, 4, 5]], pa.list_(pa.int32())),
            "ratings": pa.array([[5.0, 1.0, 5.0, 1.0]], pa.list_(pa.float32())),
            "train_len": pa.array([3], pa.int32()),
        }
    )
    rows = task.rows(training_parts(table), num_items=10)
    batch = task.batch(rows, np.arange(len(rows)), np.random.default_rng(0))
    assert batch["candidates"].tolist() == [3, 4] and batch["labels"].tolist() == [0.0, 1.0]
    implicit = task.rows(training_parts(table.drop_columns(["ratings"])), num_items=1000)
    draws = [task.batch(implicit, np.arange(len(implicit)), np.random.default_rng(s))["candidates"] for s in (0, 1)]
    assert draws[0][:2].tolist() == [3, 4] and draws[0][2:].tolist() != draws[1][2:].tolist()


def test_click_model_shapes_and_probabilities() -> None:
    torch.manual_seed(0)
    model = ClickModel(build_student(StudentConfig(hidden_size=16), num_items=20, max_len=6)).eval()
    ids = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
    logits = model(ids, torch.tensor([8, 9]))
    assert logits.shape == (2,)
    probability = model.click_probability(ids, torch.tensor([8, 9]))
    assert torch.all((probability > 0) & (probability < 1))


def test_ctr_loss_is_bce_and_training_separates_clicks() -> None:
    # Clicks are even items, non-clicks odd ones: a few steps of BCE must learn the difference.
    rng = np.random.default_rng(0)
    sequences = [rng.integers(2, 30, size=12) for _ in range(40)]
    ratings = [np.where(s % 2 == 0, 5.0, 1.0) for s in sequences]
    batch = tensors(ctr_pairs(sequences, 8, 30, rng, ratings=ratings))
    torch.manual_seed(0)
    model = ClickModel(build_student(StudentConfig(hidden_size=16, dropout=0.0), num_items=30, max_len=8))
    first = ctr_loss(model, batch)
    probability = torch.sigmoid(model(batch["input_ids"], batch["candidates"]))
    expected = torch.nn.functional.binary_cross_entropy(probability, batch["labels"])
    assert abs(first.item() - expected.item()) < 1e-5
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        loss = ctr_loss(model, batch)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
    assert loss.item() < 0.3 < first.item()
    with torch.no_grad():
        prob = model.click_probability(batch["input_ids"], batch["candidates"])
    accuracy = ((prob > 0.5).float() == batch["labels"]).float().mean()
    assert accuracy > 0.95


def _left_padded(batch: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """The batch's [B, L] arrays padded on the left to `width` columns (what a full window holds)."""
    return {k: np.pad(v, ((0, 0), (width - v.shape[1], 0))) if v.ndim == 2 else v for k, v in batch.items()}


def _loss_and_grads(task, modules, batch: dict[str, np.ndarray]) -> tuple[float, list[torch.Tensor]]:
    modules.zero_grad()
    terms = task.loss(modules, tensors(batch), torch.Generator().manual_seed(0))
    terms["loss"].backward()
    return float(terms["loss"].detach()), [p.grad.clone() for p in modules.parameters() if p.grad is not None]


@pytest.mark.parametrize("case", ["next_item", "pretrain_mix", "distill", "distill_sampled"])
def test_a_batch_padded_to_its_longest_row_trains_as_a_full_window_batch(case: str) -> None:
    """Length-aware batching pads a batch only to its longest row: loss and gradients equal those of
    the same rows padded to the full window, for every task (the contrastive term, whose augmentations
    draw per position, is off; its per-row loss reads no padding either)."""
    from raysys.config import DistillConfig
    from raysys.data.batches import window_rows
    from raysys.models.teacher import build_teacher
    from raysys.objectives.distillation import HiddenAlignment
    from raysys.train.engines import TrainedModules

    max_len, num_items = 12, 40
    shape = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "dropout": 0.0}
    pretrain = PretrainConfig(
        loss="full", task="next_item" if case == "next_item" else "pretrain", weight_masked_item=1.0
    )
    distill = DistillConfig(lambda_ssl=0.0, lambda_hidden=1.0, loss="sampled" if case == "distill_sampled" else "full")
    cfg = Config(data={"max_len": max_len}, teacher=shape, student=shape, pretrain=pretrain, distill=distill)
    sequences = random_sequences(np.random.default_rng(3), 30, 8, num_items=num_items)
    table = pa.table({"items": [s.tolist() for s in sequences], "train_len": [len(s) for s in sequences]})
    rows = window_rows(training_parts(table), max_len)
    torch.manual_seed(0)
    if case.startswith("distill"):
        task = DistillTask(cfg)
        task.teacher = build_teacher(cfg.teacher, num_items, max_len).eval().requires_grad_(False)
        modules = TrainedModules(build_student(cfg.student, num_items, max_len), HiddenAlignment(16, 16))
    else:
        task = PretrainTask(cfg, "pretrain")
        modules = TrainedModules(build_teacher(cfg.teacher, num_items, max_len))
    modules.train()
    short = task.batch(rows, np.arange(len(rows)), np.random.default_rng(0))
    assert short["input_ids"].shape[1] < max_len  # the batch is narrower than a full window
    full = _left_padded(short, max_len)
    loss_short, grads_short = _loss_and_grads(task, modules, short)
    loss_full, grads_full = _loss_and_grads(task, modules, full)
    assert loss_short == pytest.approx(loss_full, rel=1e-5)
    assert len(grads_short) == len(grads_full) > 0
    for a, b in zip(grads_short, grads_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
