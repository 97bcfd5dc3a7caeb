"""The HF teacher: contract, padding invariance, causality, text, bf16, checkpointing, 100M+ sizing."""

from __future__ import annotations

import pytest
import torch

from raysys.config import TeacherConfig
from raysys.data.dataset import FIRST_ITEM_INDEX
from raysys.errors import RaysysError
from raysys.models.common import NEG_SCORE
from raysys.models.teacher import build_teacher, count_non_embedding_params

ARCHS = ["bert", "gpt2", "llama"]
NUM_ITEMS, MAX_LEN = 30, 8


def tiny(arch: str, **kw) -> TeacherConfig:
    return TeacherConfig(**{"arch": arch, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "dropout": 0.0, **kw})


def history_batch() -> torch.Tensor:
    """Two left-padded histories: one of 5 items, one of a single item."""
    return torch.tensor([[0, 0, 0, 5, 6, 7, 8, 9], [0, 0, 0, 0, 0, 0, 0, 3]])


@pytest.mark.parametrize("arch", ARCHS)
def test_contract_shapes(arch: str) -> None:
    torch.manual_seed(0)
    model = build_teacher(tiny(arch), NUM_ITEMS, MAX_LEN).eval()
    ids = history_batch()
    assert model.encode(ids).shape == (2, MAX_LEN, 32)
    assert model.item_embeddings().shape == (NUM_ITEMS, 32)
    scores = model.next_item_scores(ids)
    assert scores.shape == (2, NUM_ITEMS)
    assert torch.all(scores[:, :FIRST_ITEM_INDEX] == NEG_SCORE)
    assert torch.isfinite(scores).all()
    assert model.is_causal == (arch != "bert")
    assert model.hidden_size == 32
    assert model.backbone.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padding_does_not_change_scores(arch: str) -> None:
    torch.manual_seed(0)
    model = build_teacher(tiny(arch), NUM_ITEMS, MAX_LEN).eval()
    padded = model.next_item_scores(history_batch())
    torch.testing.assert_close(model.next_item_scores(torch.tensor([[5, 6, 7, 8, 9]])), padded[:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.next_item_scores(torch.tensor([[3]])), padded[1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_hidden_states_ignore_the_future(arch: str) -> None:
    torch.manual_seed(0)
    model = build_teacher(tiny(arch), NUM_ITEMS, MAX_LEN).eval()
    a = torch.tensor([[4, 5, 6, 7, 8, 9, 10, 11]])
    b = a.clone()
    b[0, 5:] = torch.tensor([20, 21, 22])
    torch.testing.assert_close(model.encode(a)[:, :5], model.encode(b)[:, :5])
    assert not torch.allclose(model.encode(a)[:, 5:], model.encode(b)[:, 5:])


def test_bert_sees_both_directions_and_full_windows_shift() -> None:
    torch.manual_seed(0)
    model = build_teacher(tiny("bert"), NUM_ITEMS, MAX_LEN).eval()
    a = torch.tensor([[4, 5, 6, 7, 8, 9, 10, 11]])
    b = a.clone()
    b[0, -1] = 20
    assert not torch.allclose(model.encode(a)[:, 0], model.encode(b)[:, 0])
    # A full window drops its oldest item to make room for the mask token.
    torch.testing.assert_close(model.next_item_scores(a), model.next_item_scores(a[:, 1:]))


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_are_finite_with_padding(arch: str) -> None:
    torch.manual_seed(0)
    model = build_teacher(tiny(arch, dropout=0.1), NUM_ITEMS, MAX_LEN).train()
    loss = torch.nn.functional.cross_entropy(model.next_item_scores(history_batch()), torch.tensor([10, 4]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.items.id_embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast_forward(arch: str) -> None:
    torch.manual_seed(0)
    model = build_teacher(tiny(arch), NUM_ITEMS, MAX_LEN).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model.next_item_scores(history_batch())
    assert scores.dtype == torch.bfloat16
    assert torch.isfinite(scores).all()
    ref = model.next_item_scores(history_batch())
    assert torch.equal(scores[:, FIRST_ITEM_INDEX:].float().argmax(-1), ref[:, FIRST_ITEM_INDEX:].argmax(-1))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients(arch: str) -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_teacher(tiny(arch, gradient_checkpointing=checkpointing), NUM_ITEMS, MAX_LEN).train()
        model.next_item_scores(history_batch()).logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert model.backbone.is_activation_checkpointing
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("arch", ARCHS)
def test_text_embeddings_enter_item_embeddings(arch: str) -> None:
    torch.manual_seed(0)
    text = torch.randn(NUM_ITEMS, 12)
    text[:FIRST_ITEM_INDEX] = 0
    model = build_teacher(tiny(arch, use_text=True), NUM_ITEMS, MAX_LEN, text_emb=text).eval()
    ids_only = model.items.id_embedding.weight
    expected = ids_only + text @ model.items.text_projection.weight.T
    torch.testing.assert_close(model.item_embeddings(), expected)
    torch.testing.assert_close(model.items(torch.tensor([[7]]))[0, 0], expected[7])
    assert "items.text_emb" in model.state_dict()


def test_use_text_without_text_embeddings_is_a_config_error() -> None:
    with pytest.raises(RaysysError, match="teacher.use_text"):
        build_teacher(tiny("gpt2", use_text=True), NUM_ITEMS, MAX_LEN)
    with pytest.raises(RaysysError, match="teacher.num_heads"):
        build_teacher(TeacherConfig(hidden_size=30, num_heads=4), NUM_ITEMS, MAX_LEN)


def test_state_dict_round_trip_gives_the_same_scores() -> None:
    torch.manual_seed(0)
    model = build_teacher(tiny("llama"), NUM_ITEMS, MAX_LEN).eval()
    torch.manual_seed(1)
    clone = build_teacher(tiny("llama"), NUM_ITEMS, MAX_LEN).eval()
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.next_item_scores(history_batch()), model.next_item_scores(history_batch()))


@pytest.mark.parametrize("arch", ARCHS)
def test_large_config_has_over_100m_non_embedding_params(arch: str) -> None:
    cfg = TeacherConfig(arch=arch, hidden_size=1024, num_layers=8, num_heads=16)
    with torch.device("meta"):
        model = build_teacher(cfg, num_items=50_000, max_len=200)
    n = count_non_embedding_params(model)
    assert n >= 100_000_000
    # The 50k x 1024 item table and position tables are not counted.
    assert sum(p.numel() for p in model.parameters()) - n >= 50_000 * 1024
