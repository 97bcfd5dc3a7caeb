"""Full and sampled softmax: values, gradients, and agreement on a toy catalog."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raysys.config import TrainingConfig
from raysys.objectives.softmax import full_softmax_loss, item_loss, sampled_softmax_loss, uniform_loss


def test_full_softmax_of_uniform_scores_is_log_num_items() -> None:
    hidden = torch.zeros(4, 8, requires_grad=True)
    table = torch.randn(102, 8)
    loss = full_softmax_loss(hidden, torch.tensor([2, 50, 77, 101]), table)
    assert loss.item() == pytest.approx(math.log(100), abs=1e-5)  # pad and mask are not candidates
    assert uniform_loss(102) == pytest.approx(math.log(100))
    loss.backward()
    assert torch.isfinite(hidden.grad).all() and hidden.grad.abs().sum() > 0


def test_sampled_softmax_gradient_matches_the_full_one_on_a_toy() -> None:
    torch.manual_seed(0)
    table, labels = torch.randn(200, 16), torch.randint(2, 200, (32,))
    hidden = torch.randn(32, 16, requires_grad=True)
    (full_grad,) = torch.autograd.grad(full_softmax_loss(hidden, labels, table), hidden)
    for num_negatives, min_cosine in ((16, 0.85), (256, 0.98)):
        mean_grad = torch.zeros_like(full_grad)
        for seed in range(20):
            loss = sampled_softmax_loss(hidden, labels, table, num_negatives, torch.Generator().manual_seed(seed))
            assert torch.isfinite(loss)
            mean_grad += torch.autograd.grad(loss, hidden)[0] / 20
        assert F.cosine_similarity(mean_grad.flatten(), full_grad.flatten(), dim=0) > min_cosine
        # Every row moves its hidden state the same way as the full softmax would.
        assert torch.all(F.cosine_similarity(mean_grad, full_grad, dim=1) > 0.5)
    with torch.no_grad():
        stepped = hidden - 0.5 * mean_grad
        assert full_softmax_loss(stepped, labels, table) < full_softmax_loss(hidden, labels, table)


def test_sampled_softmax_drops_accidental_hits() -> None:
    # Every row has the same target: in-batch duplicates must not be negatives, so a hidden state
    # aligned with the target gets a near-zero loss even though the target fills N columns.
    table = torch.eye(6) * 10
    labels = torch.full((4,), 3)
    hidden = table[labels]
    loss = sampled_softmax_loss(hidden, labels, table, num_negatives=8, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-3


def test_item_loss_dispatches_and_handles_no_labels() -> None:
    torch.manual_seed(0)
    table = torch.randn(30, 8, requires_grad=True)
    hidden, labels = torch.randn(5, 8), torch.randint(2, 30, (5,))
    full = item_loss(hidden, labels, table, TrainingConfig(loss="full"))
    assert full.item() == pytest.approx(full_softmax_loss(hidden, labels, table).item())
    sampled = item_loss(hidden, labels, table, TrainingConfig(loss="sampled", num_negatives=10))
    assert torch.isfinite(sampled) and sampled.item() != pytest.approx(full.item())
    empty = item_loss(hidden[:0], labels[:0], table, TrainingConfig())
    assert empty.item() == 0.0
    empty.backward()
    assert table.grad is not None


def test_unseen_items_are_never_negatives() -> None:
    torch.manual_seed(0)
    table = torch.randn(12, 8, requires_grad=True)
    hidden, labels = torch.randn(6, 8), torch.tensor([2, 3, 4, 5, 2, 3])
    unseen = torch.zeros(12, dtype=torch.bool)
    unseen[6:] = True
    full = full_softmax_loss(hidden, labels, table, unseen)
    assert full.item() == pytest.approx(full_softmax_loss(hidden, labels, table[:6]).item(), rel=1e-6)
    (grad,) = torch.autograd.grad(full, table)
    assert not grad[6:].any() and grad[2:6].abs().sum() > 0  # an unseen item's embedding is never pushed away
    sampled = sampled_softmax_loss(hidden, labels, table, num_negatives=64, unseen=unseen)
    (grad,) = torch.autograd.grad(sampled, table)
    assert not grad[6:].any()  # uniform draws of unseen items are dropped like accidental hits


def test_auto_loss_takes_sampled_only_for_a_catalog_large_against_a_batch() -> None:
    from raysys.objectives.softmax import SAMPLED_ABOVE, auto_loss

    # ml-100k: 1,682 items, a batch of 128 full windows holds ~6,000 targets: the catalog is small.
    assert auto_loss(1684, 6000, 256)[0] == "full"
    # the sparse preset: 10,000 items, ~650 targets per batch: the full softmax still pays
    assert auto_loss(10002, 650, 256)[0] == "full"
    # a 100 k-item catalog
    loss, reason = auto_loss(100002, 1800, 256)
    assert (
        loss == "sampled" and reason == f"100,000 items > {SAMPLED_ABOVE:g} x (1,800 targets per batch + 256 negatives)"
    )
    edge = int(SAMPLED_ABOVE * (650 + 256))
    assert auto_loss(edge + 2, 650, 256)[0] == "full" and auto_loss(edge + 3, 650, 256)[0] == "sampled"


def test_an_unresolved_auto_loss_is_refused() -> None:
    from raysys.config import TrainingConfig

    with pytest.raises(ValueError, match="resolved from the data"):
        item_loss(torch.zeros(2, 4), torch.tensor([2, 3]), torch.zeros(5, 4), TrainingConfig(loss="auto"))
