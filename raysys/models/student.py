"""The student: a small causal transformer. `student.arch=llama` (default) is the teacher's HF Llama
family at the student's size; `student.arch=causal` is written out here, cheap to serve and easy to
read (nanoGPT-style: pre-LayerNorm blocks, learned positions, fused SDPA attention).

    ids [B, L] -> item embedding + position embedding -> N x Block -> LayerNorm -> hidden [B, L, H]
    scores = hidden[:, -1] · item_embeddings().T      (tied, as in the teacher)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysys.config import StudentConfig
from raysys.models.common import (
    ItemEmbedding,
    SequenceModel,
    check_length,
    check_model_config,
    padding_mask,
    position_ids,
)
from raysys.models.hf import HFSequenceModel


def attention_mask(real: torch.Tensor) -> torch.Tensor:
    """Causal + padding mask for SDPA, [B, L] bool -> [B, 1, L, L] bool (True = may attend).

    A left-pad query has no real key at or before it; letting it attend to itself keeps its softmax
    row finite (an all-masked row is NaN, and NaN values leak into real rows through 0 * NaN).
    """
    B, L = real.shape  # batch, length
    causal = torch.ones(L, L, dtype=torch.bool, device=real.device).tril()
    allowed = causal & real[:, None, :]
    allowed = allowed | torch.eye(L, dtype=torch.bool, device=real.device)
    return allowed[:, None, :, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention` (flash / memory-efficient)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, C = x.size()  # batch, length, channels
        q, k, v = self.qkv(x).split(C, dim=2)
        # [B, L, C] -> [B, heads, L, C / heads]
        q, k, v = (t.view(B, L, self.num_heads, C // self.num_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, L, C)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_size)
        self.attn = SelfAttention(hidden_size, num_heads, dropout)
        self.ln_2 = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, intermediate_size),
            nn.GELU(),
            nn.Linear(intermediate_size, hidden_size),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class CausalStudent(SequenceModel):
    """Item + position embeddings -> causal pre-LN blocks -> final LayerNorm; tied scores."""

    is_causal = True

    def __init__(self, cfg: StudentConfig, num_items: int, max_len: int, text_emb: torch.Tensor | None = None) -> None:
        super().__init__()
        self.hidden_size = cfg.hidden_size
        self.max_len = max_len
        self.items = ItemEmbedding.from_config(cfg, num_items, text_emb)
        self.positions = nn.Embedding(max_len, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        intermediate = cfg.intermediate_size or 4 * cfg.hidden_size
        self.blocks = nn.ModuleList(
            Block(cfg.hidden_size, cfg.num_heads, intermediate, cfg.dropout) for _ in range(cfg.num_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.hidden_size)
        self._init_weights(cfg.init_std)

    def _init_weights(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not self.items.text_projection:
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.positions.weight, std=std)

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] long, left-padded with 0 -> [B, L, H] (after the final LayerNorm)."""
        check_length(input_ids, self.max_len)
        real = padding_mask(input_ids)
        x = self.dropout(self.items(input_ids) + self.positions(position_ids(real)))
        mask = attention_mask(real)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)


def build_student(
    cfg: StudentConfig, num_items: int, max_len: int, text_emb: torch.Tensor | None = None
) -> SequenceModel:
    """A student for `num_items` (index space incl. pad 0 and mask 1) and windows of `max_len`.

    `cfg.arch` "llama" is the teacher's HF Llama family at the student's size (the default: it
    learns the same data better, see StudentConfig.arch); "causal" is `CausalStudent` above.
    `text_emb` [num_items, text_dim] is used when `cfg.use_text`.
    """
    check_model_config(cfg, "student", text_emb)
    if cfg.arch == "llama":
        return HFSequenceModel("llama", cfg, num_items, max_len, text_emb)
    return CausalStudent(cfg, num_items, max_len, text_emb)
