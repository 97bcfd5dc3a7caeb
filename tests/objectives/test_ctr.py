"""Click prediction: the head, the ClickModel, and BCE training on labelled pairs."""

from __future__ import annotations

import numpy as np
import torch

from raysys.config import StudentConfig
from raysys.data.batches import ctr_pairs
from raysys.models.ctr import ClickModel
from raysys.models.student import build_student
from raysys.objectives.ctr import ctr_loss


def tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in batch.items()}


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
