"""Item-prediction cross-entropy: full softmax over the catalog, or sampled softmax for large ones.

Both take the hidden states of the labelled positions, their target items and the tied item table:

    hidden [N, H], labels [N] (item indices >= 2), table [num_items, H] -> scalar mean loss
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raysys.config import TrainingConfig
from raysys.data.dataset import FIRST_ITEM_INDEX
from raysys.models.common import NEG_SCORE, score_items, without_unseen


def full_softmax_loss(
    hidden: torch.Tensor, labels: torch.Tensor, table: torch.Tensor, unseen: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy over every real item (pad, mask and `unseen` items are never candidates), [N, H] -> scalar."""
    return F.cross_entropy(without_unseen(score_items(hidden, table), unseen).float(), labels)


def uniform_negatives(
    num_negatives: int, num_items: int, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[K] item indices drawn uniformly from the real items (FIRST_ITEM_INDEX .. num_items - 1)."""
    gen_device = generator.device if generator is not None else device
    draws = torch.randint(FIRST_ITEM_INDEX, num_items, (num_negatives,), generator=generator, device=gen_device)
    return draws.to(device)


def sampled_softmax_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    table: torch.Tensor,
    num_negatives: int,
    generator: torch.Generator | None = None,
    unseen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax with in-batch + uniform negatives and logQ correction, [N, H] -> scalar.

    Row i scores the N in-batch targets (its own is column i) and K uniform draws. Each column's
    logit is lowered by log(expected count of that item among the candidates) = log(c_j + K / M)
    (c_j: its in-batch count, M: real items), which removes the popularity bias of in-batch
    negatives (Yi et al., 2019). Other columns holding row i's own target ("accidental hits") are
    dropped, so a positive is never pushed down as a negative; so are draws of `unseen` items.
    """
    N = labels.shape[0]
    num_real = table.shape[0] - FIRST_ITEM_INDEX
    negatives = uniform_negatives(num_negatives, table.shape[0], labels.device, generator)
    candidates = torch.cat([labels, negatives])  # [N + K]
    logits = (hidden @ table[candidates].to(hidden.dtype).T).float()  # [N, N + K]
    in_batch_count = torch.zeros(table.shape[0], device=labels.device).index_add_(
        0, labels, torch.ones(N, device=labels.device)
    )
    expected = in_batch_count[candidates] + num_negatives / num_real
    logits = logits - expected.log()
    own = torch.arange(N, device=labels.device)
    hit = candidates[None, :] == labels[:, None]
    hit[own, own] = False
    if unseen is not None:
        hit |= unseen[candidates][None, :]
    logits = logits.masked_fill(hit, NEG_SCORE)
    return F.cross_entropy(logits, own)


# loss=auto takes the sampled softmax above this many items per (targets per batch + negatives) it scores
# instead of the catalog. On speed alone the crossover is 1.1-1.9 (jobs/bench/softmax_crossover.py: 1 thread,
# hidden 64, 256 negatives, 650 / 5,000 targets per batch), but the sampled softmax can learn less. Teacher,
# 2 workers, length-aware batches: on the sparse preset (8,806 items, ratio 9.6) it reached valid NDCG@10
# 0.426 against the full softmax's 0.448 after 20 epochs, and the full one already trains at 0.55 x
# ml-100k's targets/s there; on the 100 k-item preset (34,116 items seen, ratio 18.4) it was ahead after 8
# epochs (0.220 against 0.213) at 8 x the full softmax's targets/s. Between the two: 12.
SAMPLED_ABOVE = 12.0


def auto_loss(num_items: int, targets_per_batch: float, num_negatives: int) -> tuple[str, str]:
    """What loss=auto resolves to for a catalog of `num_items` indices, and why (one line)."""
    real = num_items - FIRST_ITEM_INDEX
    scored = targets_per_batch + num_negatives
    choice = "sampled" if real > SAMPLED_ABOVE * scored else "full"
    sign = ">" if choice == "sampled" else "<="
    return choice, (
        f"{real:,} items {sign} {SAMPLED_ABOVE:g} x ({targets_per_batch:,.0f} targets per batch + "
        f"{num_negatives} negatives)"
    )


def item_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    table: torch.Tensor,
    cfg: TrainingConfig,
    generator: torch.Generator | None = None,
    unseen: torch.Tensor | None = None,
) -> torch.Tensor:
    """`cfg.loss` picks full or sampled softmax (with `cfg.num_negatives`; "auto" must have been resolved
    by then); [N, H] -> scalar.
    `unseen` [num_items] bool: items never used as negatives (`raysys.models.common.unseen_items`).

    With no labelled position the loss is a zero that still depends on the parameters, so every
    worker runs the same backward graph.
    """
    if labels.numel() == 0:
        return hidden.sum() * 0.0 + table.sum() * 0.0
    if cfg.loss == "sampled":
        return sampled_softmax_loss(hidden, labels, table, cfg.num_negatives, generator, unseen)
    if cfg.loss == "auto":
        raise ValueError("loss=auto is resolved from the data before training (raysys.train.loop.resolve_auto)")
    return full_softmax_loss(hidden, labels, table, unseen)


def uniform_loss(num_items: int) -> float:
    """The full-softmax loss of a model that knows nothing: log of the number of real items."""
    return math.log(num_items - FIRST_ITEM_INDEX)
