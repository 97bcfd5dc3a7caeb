"""What teacher and student share: the item embedding (ID + projected text), the padding-aware
positions, tied scoring, and the contract every sequence model keeps.

The contract (see `SequenceModel`):

    hidden = model.encode(input_ids)          # [B, L] long, left-padded with 0 -> [B, L, H]
    table  = model.item_embeddings()          # [num_items, H]
    scores = model.next_item_scores(ids)      # [B, num_items]; pad and mask columns get NEG_SCORE
    state  = model.user_state(ids)            # [B, H], the hidden state the next-item scores use
    model.is_causal, model.hidden_size
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import nn

from raysys.config import ModelConfig
from raysys.data.dataset import FIRST_ITEM_INDEX, PAD_INDEX
from raysys.errors import RaysysError

# A finite "never recommend" score for pad and mask: -inf would turn 0 * log(0) into NaN in the
# distillation KL, and -1e4 still fits in float16 / bfloat16.
NEG_SCORE = -1e4


class ItemEmbedding(nn.Module):
    """Item-ID embedding plus an optional linear projection of fixed item-text embeddings.

    With text, `id_dropout` (training only) zeroes the ID vector of a random share of the lookups, the
    catalog's rows included, so those items are scored from their text alone (no rescaling: an item
    without an ID vector is scored exactly so at serving time).

    `new_item_boost` is added to the scores of the items without an ID vector (`id_less`, [num_items]
    bool: the rows pinned at zero, see `mark_id_less`) when a model ranks (`boost_new_items`), never in
    training losses.

    The text table is a persistent buffer so a saved state dict holds everything needed to score
    items (including cold items that only have text); building without `text_emb` and then loading
    a state dict that has one fails loudly instead of silently dropping the text.
    """

    def __init__(
        self,
        num_items: int,
        hidden_size: int,
        init_std: float = 0.02,
        text_emb: torch.Tensor | None = None,
        id_dropout: float = 0.0,
        new_item_boost: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.id_dropout = id_dropout if text_emb is not None else 0.0
        self.new_item_boost = new_item_boost if text_emb is not None else 0.0
        self.register_buffer("id_less", None, persistent=False)  # [num_items] bool, set by mark_id_less
        self.register_buffer("catalog", torch.arange(num_items), persistent=False)  # every item index
        self.id_embedding = nn.Embedding(num_items, hidden_size, padding_idx=PAD_INDEX)
        nn.init.normal_(self.id_embedding.weight, std=init_std)
        with torch.no_grad():
            self.id_embedding.weight[PAD_INDEX].zero_()
        self.text_projection: nn.Linear | None = None
        if text_emb is not None:
            if text_emb.ndim != 2 or text_emb.shape[0] != num_items:
                raise ValueError(f"text_emb must be [num_items={num_items}, text_dim], got {tuple(text_emb.shape)}")
            self.register_buffer("text_emb", text_emb.detach().float().clone(), persistent=True)
            self.text_projection = nn.Linear(text_emb.shape[1], hidden_size, bias=False)
            nn.init.normal_(self.text_projection.weight, std=init_std)

    @classmethod
    def from_config(cls, cfg: ModelConfig, num_items: int, text_emb: torch.Tensor | None) -> ItemEmbedding:
        """The item table a model config describes (text only with cfg.use_text)."""
        text_emb = text_emb if cfg.use_text else None
        return cls(num_items, cfg.hidden_size, cfg.init_std, text_emb, cfg.id_dropout, cfg.fixed_new_item_boost)

    @property
    def uses_text(self) -> bool:
        return self.text_projection is not None

    def boost_new_items(self, scores: torch.Tensor) -> torch.Tensor:
        """[..., num_items] scores + new_item_boost at the ID-less items (unchanged without either)."""
        if not self.new_item_boost or self.id_less is None:
            return scores
        return scores + self.new_item_boost * self.id_less.to(scores.dtype)

    def forward(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[...] long item indices -> [..., H] embeddings; None -> the whole catalog [num_items, H].

        The catalog is looked up through the embedding module rather than read from `.weight`, so
        DeepSpeed ZeRO-3 (which gathers a partitioned parameter only around its module's call) works.
        """
        if item_ids is None:
            item_ids = self.catalog
        out = self.id_embedding(item_ids)
        if self.training and self.id_dropout > 0:  # each lookup keeps its ID vector with 1 - id_dropout
            keep = torch.rand(item_ids.shape, device=out.device) >= self.id_dropout  # [...]
            keep |= item_ids < FIRST_ITEM_INDEX  # pad and mask are no items: the mask token keeps its vector
            out = out * keep.unsqueeze(-1).to(out.dtype)
        if self.text_projection is not None:
            out = out + self.text_projection(self.text_emb[item_ids].to(self.text_projection.weight.dtype))
        return out


def padding_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] long -> [B, L] bool, True at real items (not PAD_INDEX)."""
    return input_ids != PAD_INDEX


def position_ids(real: torch.Tensor) -> torch.Tensor:
    """Positions counted from the first real item, [B, L] bool -> [B, L] long.

    Left padding then does not shift any real item's position, so a padded history encodes exactly
    like the unpadded one (pads get position 0; they are masked out of attention anyway).
    """
    return (real.long().cumsum(dim=1) - 1).clamp(min=0)


def check_model_config(cfg: ModelConfig, section: str, text_emb: torch.Tensor | None) -> None:
    """Raise RaysysError (naming `section.key`) for a model config that cannot be built."""
    if cfg.hidden_size % cfg.num_heads:
        raise RaysysError(
            f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}", where=f"{section}.num_heads"
        )
    if cfg.use_text and text_emb is None:
        raise RaysysError(
            "use_text is true but no item text embeddings were given (the dataset has no item text?)",
            where=f"{section}.use_text",
            hint=f"set {section}.use_text=false or give an item file with text (data.item_path)",
        )


def check_length(input_ids: torch.Tensor, max_len: int) -> None:
    """Raise if a [B, L] batch is longer than the model's positions (callers truncate histories)."""
    if input_ids.ndim != 2 or input_ids.shape[1] > max_len:
        raise ValueError(f"input_ids must be [B, L] with L <= max_len={max_len}, got {tuple(input_ids.shape)}")


def score_items(hidden: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Tied dot-product scores, [..., H] x [N, H] -> [..., N]; pad and mask columns get NEG_SCORE."""
    scores = hidden @ table.to(hidden.dtype).T
    return scores.index_fill(-1, torch.arange(FIRST_ITEM_INDEX, device=scores.device), NEG_SCORE)


def unseen_items(model: nn.Module) -> torch.Tensor | None:
    """[num_items] bool: items absent from the training parts, which training never uses as negatives
    (set by `raysys.train.tasks.base.pin_unseen_item_ids` for a model with item text), else None."""
    items = getattr(model, "items", None)
    return getattr(items, "unseen", None)


def mark_id_less(items: ItemEmbedding, id_less: torch.Tensor | None = None) -> None:
    """Set `items.id_less` ([num_items] bool): the items without an ID vector, whose scores take
    `new_item_boost`. Given (training: the items absent from the training parts), or read from the
    weights (a loaded model: the rows pinned at exactly zero; pad and mask rows never count). Only
    a model with item text has such items; without text this does nothing."""
    if not items.uses_text:
        return
    if id_less is None:
        id_less = (items.id_embedding.weight == 0).all(dim=1)
    id_less = id_less.clone().to(items.id_embedding.weight.device)
    id_less[:FIRST_ITEM_INDEX] = False
    items.id_less = id_less


def without_unseen(scores: torch.Tensor, unseen: torch.Tensor | None) -> torch.Tensor:
    """[..., N] scores with the columns of `unseen` items set to NEG_SCORE (no-op for None)."""
    return scores if unseen is None else scores.masked_fill(unseen, NEG_SCORE)


def count_non_embedding_params(model: nn.Module) -> int:
    """Parameters outside every `nn.Embedding` (item, position and unused HF token tables).

    Works on models built on the meta device (only shapes are read).
    """
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding_ids)


class SequenceModel(nn.Module, metaclass=ABCMeta):
    """Base of teacher and student: subclasses set `self.items`, `hidden_size`, `is_causal` and
    implement `encode`; causal models score the next item from the last position's hidden state."""

    items: ItemEmbedding
    hidden_size: int
    is_causal: bool
    max_len: int

    @abstractmethod
    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] long, left-padded with 0 -> [B, L, H]."""

    @property
    def num_items(self) -> int:
        return self.items.num_items

    def item_embeddings(self) -> torch.Tensor:
        """[num_items, H]: ID embedding + projected text embedding when the model uses text."""
        return self.items()

    def recent(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, min(L, max_len)]: the most recent max_len items, on the model's device (an
        evaluator's CPU batch for a model on the GPU)."""
        return input_ids[:, -self.max_len :].to(self.items.id_embedding.weight.device)

    def user_state(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, H]: the hidden state that predicts the item after the history (`recent`)."""
        return self.encode(self.recent(input_ids))[:, -1]

    def next_item_scores(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, num_items] scores for the item after the last position (ranking: ID-less items
        take the model's new_item_boost, see `ItemEmbedding`)."""
        return self.items.boost_new_items(score_items(self.user_state(input_ids), self.item_embeddings()))
