"""Contrastive sequence loss (CL4SRec): two random augmentations of each sequence should encode
alike and unlike every other sequence in the batch (InfoNCE).

Augmentations, each applied to a whole left-padded batch at once (no per-sequence Python loop):
    crop    keep a random contiguous ceil(crop_ratio * n) items
    mask    replace each item by MASK_INDEX with probability mask_ratio
    reorder shuffle a random contiguous ceil(reorder_ratio * n) items
Each row of each view picks one of the three uniformly at random.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raysys.config import TrainingConfig
from raysys.data.dataset import MASK_INDEX, PAD_INDEX
from raysys.models.common import SequenceModel


def _rand(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) floats on `like`'s device, drawn from `generator` (on its own device)."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def _span(lengths: torch.Tensor, ratio: float, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A random contiguous span per row: (start, size) in item offsets from the first real item."""
    size = torch.ceil(lengths * ratio).long().clamp(min=1)
    size = torch.minimum(size, lengths.clamp(min=1))
    start = (u * (lengths - size + 1)).long()
    return start, size


def crop(input_ids: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, L] left-padded -> [B, L]: a random contiguous sub-sequence of each row, left-padded again."""
    B, L = input_ids.shape  # batch, length
    n = (input_ids != PAD_INDEX).sum(dim=1)
    start, size = _span(n, ratio, _rand((B,), input_ids, generator))
    col = torch.arange(L, device=input_ids.device)[None, :]
    first_out = L - size[:, None]  # output column of the kept span's first item
    source = (L - n[:, None]) + start[:, None] + (col - first_out)
    cropped = input_ids.gather(1, source.clamp(0, L - 1))
    return torch.where(col >= first_out, cropped, PAD_INDEX)


def mask(input_ids: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, L] -> [B, L] with each real item replaced by MASK_INDEX with probability `ratio`."""
    hit = (_rand(tuple(input_ids.shape), input_ids, generator) < ratio) & (input_ids != PAD_INDEX)
    return input_ids.masked_fill(hit, MASK_INDEX)


def reorder(input_ids: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, L] -> [B, L] with a random contiguous span of each row shuffled in place.

    Vectorised as a sort: columns outside the span keep their integer index as key, columns inside
    get a random key within (first - 0.5, last + 0.5), so only the span's items change places.
    """
    B, L = input_ids.shape  # batch, length
    n = (input_ids != PAD_INDEX).sum(dim=1)
    start, size = _span(n, ratio, _rand((B,), input_ids, generator))
    col = torch.arange(L, device=input_ids.device)[None, :].expand(B, L)
    first = (L - n + start)[:, None]
    inside = (col >= first) & (col < first + size[:, None])
    random_key = first - 0.5 + _rand((B, L), input_ids, generator) * size[:, None]
    key = torch.where(inside, random_key, col.to(random_key.dtype))
    return input_ids.gather(1, key.argsort(dim=1))


def augment(input_ids: torch.Tensor, cfg: TrainingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, L] -> [B, L]: one CL4SRec augmentation (crop, mask or reorder) per row, chosen at random."""
    views = torch.stack(
        [
            crop(input_ids, cfg.cl_crop_ratio, generator),
            mask(input_ids, cfg.cl_mask_ratio, generator),
            reorder(input_ids, cfg.cl_reorder_ratio, generator),
        ]
    )  # [3, B, L]
    choice = (_rand((input_ids.shape[0],), input_ids, generator) * 3).long()
    return views[choice, torch.arange(input_ids.shape[0], device=input_ids.device)]


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over 2B views, [B, H] x [B, H] -> scalar.

    Each view's positive is the other view of the same sequence; its negatives are the other
    2B - 2 views. Similarity is the dot product / temperature, as in CL4SRec.
    """
    B = z1.shape[0]
    z = torch.cat([z1, z2]).float()  # [2B, H]
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=z.device), float("-inf"))  # not its own negative
    target = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(z.device)
    return F.cross_entropy(sim, target)


def contrastive_loss(
    model: SequenceModel,
    input_ids: torch.Tensor,
    cfg: TrainingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CL4SRec loss of a batch of left-padded sequences [B, L]: two augmented views per sequence,
    each encoded to its user state [B, H], compared with InfoNCE at `cfg.cl_temperature`."""
    input_ids = input_ids[(input_ids != PAD_INDEX).any(dim=1)]
    if input_ids.shape[0] == 0:
        return model.item_embeddings().sum() * 0.0
    z1 = model.user_state(augment(input_ids, cfg, generator))
    z2 = model.user_state(augment(input_ids, cfg, generator))
    return info_nce(z1, z2, cfg.cl_temperature)
