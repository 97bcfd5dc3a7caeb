"""Click prediction: P(click | history, candidate item) on top of any sequence model.

    u = model.user_state(history)         [B, H]   (the state that scores the next item)
    c = model.item_embeddings()[cand]     [B, H]
    logit = u · c + MLP([u, c, u * c])    [B]

The dot product is the model's own next-item score, so a pretrained encoder starts as a sensible
ranker; the MLP learns what separates a click from a mere next interaction.
"""

from __future__ import annotations

import torch
from torch import nn

from raysys.models.common import SequenceModel


class CTRHead(nn.Module):
    """Scores (user state, candidate embedding) pairs: [B, H] x [B, H] -> [B] click logits."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 1))

    def forward(self, user: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        features = torch.cat([user, candidate, user * candidate], dim=-1)
        return (user * candidate).sum(-1) + self.mlp(features).squeeze(-1)


class ClickModel(nn.Module):
    """A sequence model plus a CTR head, trained and saved as one module."""

    def __init__(self, encoder: SequenceModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = CTRHead(encoder.hidden_size)

    def forward(self, input_ids: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] left-padded, candidates [B] item indices -> [B] click logits."""
        user = self.encoder.user_state(input_ids)
        candidate = self.encoder.item_embeddings()[candidates]
        return self.head(user, candidate.to(user.dtype))

    def click_probability(self, input_ids: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[B, L], [B] -> [B] P(click) in [0, 1]."""
        return torch.sigmoid(self(input_ids, candidates))
