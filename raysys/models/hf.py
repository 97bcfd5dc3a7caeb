"""Sequence models over Hugging Face transformers: item embeddings in, tied catalog scores out.

    arch = "bert"  -> BertModel  (bidirectional; masked-item pretraining, BERT4Rec-style scoring)
    arch = "gpt2"  -> GPT2Model  (causal; learned absolute positions)
    arch = "llama" -> LlamaModel (causal; RoPE, RMSNorm, SwiGLU)

The HF model never sees item ids: we feed `inputs_embeds` = item-ID embedding (+ projected item text),
so the catalog table lives in our `ItemEmbedding` and is tied to the output scores. HF owns what makes
a large model scale: SDPA attention, activation checkpointing, bf16 and DeepSpeed compatibility.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel, PreTrainedModel

from raysys.config import ModelConfig
from raysys.data.dataset import MASK_INDEX
from raysys.models.common import ItemEmbedding, SequenceModel, check_length, padding_mask, position_ids


def _intermediate(cfg: ModelConfig) -> int:
    return cfg.intermediate_size or 4 * cfg.hidden_size


def hf_backbone(arch: str, cfg: ModelConfig, max_len: int, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """The bare HF transformer of family `arch`, sized by `cfg`, taking sequences up to `max_len`.

    Its own token table has one row and is frozen: items enter through `inputs_embeds`, and a
    vocabulary-sized table we never use would waste memory and confuse DDP's unused-parameter check.
    """
    common = dict(
        vocab_size=1, initializer_range=cfg.init_std, use_cache=False, attn_implementation=attn_implementation
    )
    if arch == "gpt2":
        config = GPT2Config(
            n_positions=max_len,
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=_intermediate(cfg),
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            bos_token_id=None,
            eos_token_id=None,
            **common,
        )
        model: PreTrainedModel = GPT2Model(config)
    elif arch == "llama":
        config = LlamaConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=_intermediate(cfg),
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            max_position_embeddings=max_len,
            attention_dropout=cfg.dropout,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            **common,
        )
        model = LlamaModel(config)
    else:
        config = BertConfig(
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=_intermediate(cfg),
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            max_position_embeddings=max_len,
            type_vocab_size=1,
            pad_token_id=0,
            **common,
        )
        model = BertModel(config, add_pooling_layer=False)
    model.get_input_embeddings().requires_grad_(False)
    return model


class HFSequenceModel(SequenceModel):
    """Item embedding -> HF transformer of family `arch` -> tied scores (see the module docstring).

    The teacher is one (`build_teacher`, any arch); so is the default student (`build_student`, llama).
    """

    def __init__(
        self,
        arch: str,
        cfg: ModelConfig,
        num_items: int,
        max_len: int,
        text_emb: torch.Tensor | None = None,
        *,
        gradient_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        self.arch = arch
        self.hidden_size = cfg.hidden_size
        self.max_len = max_len
        self.is_causal = arch != "bert"
        self.items = ItemEmbedding.from_config(cfg, num_items, text_emb)
        # Llama has no embedding dropout of its own; GPT-2 and BERT apply cfg.dropout after adding positions.
        self.input_dropout = nn.Dropout(cfg.dropout if arch == "llama" else 0.0)
        self.backbone = hf_backbone(arch, cfg, max_len, attn_implementation)
        if gradient_checkpointing:
            self.backbone.activation_checkpointing_enable()

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] long, left-padded with 0 -> [B, L, H] final hidden states (after the last norm)."""
        check_length(input_ids, self.max_len)
        real = padding_mask(input_ids)
        out = self.backbone(
            inputs_embeds=self.input_dropout(self.items(input_ids)),
            attention_mask=real.long(),
            position_ids=position_ids(real),
            use_cache=False,
        )
        return out.last_hidden_state

    def user_state(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, H]. BERT appends the mask token after the history and reads the mask
        position, as BERT4Rec does; a full window (L = max_len) is shifted left by one first so the
        length stays max_len (dropping the oldest column, which is padding unless the history is full)."""
        input_ids = self.recent(input_ids)
        if not self.is_causal:
            keep = input_ids[:, 1:] if input_ids.shape[1] >= self.max_len else input_ids
            input_ids = torch.cat([keep, torch.full_like(input_ids[:, :1], MASK_INDEX)], dim=1)
        return self.encode(input_ids)[:, -1]
