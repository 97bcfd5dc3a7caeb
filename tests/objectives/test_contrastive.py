"""CL4SRec augmentations and the InfoNCE loss."""

from __future__ import annotations

import math

import pytest
import torch

from raysys.config import StudentConfig, TrainingConfig
from raysys.data.dataset import MASK_INDEX
from raysys.models.student import build_student
from raysys.objectives.contrastive import augment, contrastive_loss, crop, info_nce, mask, reorder

BATCH = torch.tensor([[0, 0, 0, 0, 5, 6, 7, 8, 9, 10], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [0] * 9 + [4]])


def real_items(row: torch.Tensor) -> list[int]:
    return row[row > 0].tolist()


def test_crop_keeps_a_contiguous_left_padded_span() -> None:
    out = crop(BATCH, 0.6, torch.Generator().manual_seed(0))
    for row, original in zip(out, BATCH, strict=True):
        kept, items = real_items(row), real_items(original)
        assert len(kept) == math.ceil(0.6 * len(items))
        start = items.index(kept[0])
        assert items[start : start + len(kept)] == kept
        assert torch.all(row[: len(row) - len(kept)] == 0)  # padding stays on the left


def test_mask_replaces_only_real_items() -> None:
    out = mask(BATCH.repeat(50, 1), 0.3, torch.Generator().manual_seed(0))
    real = BATCH.repeat(50, 1) > 0
    assert torch.all(out[~real] == 0)
    changed = out[real] != BATCH.repeat(50, 1)[real]
    assert torch.all(out[real][changed] == MASK_INDEX)
    assert abs(changed.float().mean().item() - 0.3) < 0.05


def test_reorder_permutes_a_contiguous_span_only() -> None:
    out = reorder(BATCH, 0.6, torch.Generator().manual_seed(1))
    for row, original in zip(out, BATCH, strict=True):
        assert sorted(row.tolist()) == sorted(original.tolist())
        moved = torch.nonzero(row != original).flatten()
        if moved.numel():
            assert moved.max() - moved.min() < math.ceil(0.6 * len(real_items(original)))
            assert torch.all(original[moved] > 0)
    assert not torch.equal(out, BATCH)


def test_augment_is_reproducible_and_mixes_the_three() -> None:
    batch = BATCH.repeat(30, 1)
    a = augment(batch, TrainingConfig(), torch.Generator().manual_seed(5))
    b = augment(batch, TrainingConfig(), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    cropped = (a > 0).sum(1) < (batch > 0).sum(1)
    masked = (a == MASK_INDEX).any(1)
    assert cropped.any() and masked.any() and (~cropped & ~masked & (a != batch).any(1)).any()


def test_info_nce_is_lower_for_identical_views_than_for_random_pairs() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 32)
    same = info_nce(z, z.clone(), temperature=0.5)
    random = info_nce(z, torch.randn(16, 32), temperature=0.5)
    assert same < 0.5 < random
    # All similarities equal (orthogonal views against zero views): the loss is log(2B - 1).
    assert info_nce(torch.eye(8), torch.zeros(8, 8), 1.0).item() == pytest.approx(math.log(15), abs=1e-5)


def test_contrastive_loss_on_a_model_has_finite_gradients() -> None:
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="causal", hidden_size=32), num_items=20, max_len=10).train()
    loss = contrastive_loss(model, BATCH, TrainingConfig(cl_temperature=0.5), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
