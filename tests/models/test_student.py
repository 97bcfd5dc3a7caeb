"""The hand-written student: contract, padding invariance, causality, text, bf16, size."""

from __future__ import annotations

import pytest
import torch

from raysys.config import StudentConfig
from raysys.data.dataset import FIRST_ITEM_INDEX
from raysys.errors import RaysysError
from raysys.models.common import NEG_SCORE, count_non_embedding_params, mark_id_less, score_items
from raysys.models.student import attention_mask, build_student

NUM_ITEMS, MAX_LEN = 30, 8


def history_batch() -> torch.Tensor:
    return torch.tensor([[0, 0, 0, 5, 6, 7, 8, 9], [0, 0, 0, 0, 0, 0, 0, 3]])


def test_contract_shapes_and_defaults() -> None:
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="causal"), NUM_ITEMS, MAX_LEN).eval()
    assert model.is_causal and model.hidden_size == 64 and len(model.blocks) == 2
    assert model.encode(history_batch()).shape == (2, MAX_LEN, 64)
    assert model.item_embeddings().shape == (NUM_ITEMS, 64)
    scores = model.next_item_scores(history_batch())
    assert scores.shape == (2, NUM_ITEMS)
    assert torch.all(scores[:, :FIRST_ITEM_INDEX] == NEG_SCORE)
    # Small enough to serve cheaply: ~0.1 M parameters outside the item table.
    assert count_non_embedding_params(model) < 150_000


def test_left_padding_does_not_change_scores() -> None:
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="causal"), NUM_ITEMS, MAX_LEN).eval()
    padded = model.next_item_scores(history_batch())
    torch.testing.assert_close(model.next_item_scores(torch.tensor([[5, 6, 7, 8, 9]])), padded[:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.next_item_scores(torch.tensor([[3]])), padded[1:], atol=1e-5, rtol=0)


def test_longer_histories_keep_the_most_recent_items() -> None:
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="causal"), NUM_ITEMS, MAX_LEN).eval()
    long = torch.arange(2, 14)[None]  # 12 items > max_len
    torch.testing.assert_close(model.next_item_scores(long), model.next_item_scores(long[:, -MAX_LEN:]))
    with pytest.raises(ValueError, match="max_len"):
        model.encode(long)


def test_hidden_states_ignore_the_future() -> None:
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="causal"), NUM_ITEMS, MAX_LEN).eval()
    a = torch.tensor([[4, 5, 6, 7, 8, 9, 10, 11]])
    b = a.clone()
    b[0, 5:] = torch.tensor([20, 21, 22])
    torch.testing.assert_close(model.encode(a)[:, :5], model.encode(b)[:, :5])


def test_attention_mask_is_causal_over_real_items() -> None:
    mask = attention_mask(torch.tensor([[False, True, True]]))[0, 0]
    expected = torch.tensor([[True, False, False], [False, True, False], [False, True, True]])
    assert torch.equal(mask, expected)


def test_gradients_are_finite_with_padding() -> None:
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="causal", dropout=0.1), NUM_ITEMS, MAX_LEN).train()
    loss = torch.nn.functional.cross_entropy(model.next_item_scores(history_batch()), torch.tensor([10, 4]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bf16_autocast_forward() -> None:
    torch.manual_seed(0)
    model = build_student(StudentConfig(arch="causal"), NUM_ITEMS, MAX_LEN).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model.next_item_scores(history_batch())
    assert scores.dtype == torch.bfloat16 and torch.isfinite(scores).all()


def test_text_embeddings_and_config_errors() -> None:
    torch.manual_seed(0)
    text = torch.randn(NUM_ITEMS, 12)
    model = build_student(StudentConfig(arch="causal", use_text=True), NUM_ITEMS, MAX_LEN, text_emb=text)
    expected = model.items.id_embedding.weight + text @ model.items.text_projection.weight.T
    torch.testing.assert_close(model.item_embeddings(), expected)
    # use_text=False ignores given text embeddings.
    assert build_student(StudentConfig(arch="causal"), NUM_ITEMS, MAX_LEN, text_emb=text).items.text_projection is None
    with pytest.raises(RaysysError, match="student.use_text"):
        build_student(StudentConfig(arch="causal", use_text=True), NUM_ITEMS, MAX_LEN)
    with pytest.raises(RaysysError, match="student.num_heads"):
        build_student(StudentConfig(arch="causal", hidden_size=30, num_heads=4), NUM_ITEMS, MAX_LEN)


@pytest.mark.parametrize("arch", ["causal", "llama"])
def test_id_dropout_scores_some_lookups_from_text_alone_in_training_only(arch: str) -> None:
    torch.manual_seed(0)
    text = torch.randn(NUM_ITEMS, 12)
    cfg = StudentConfig(arch=arch, use_text=True, id_dropout=0.5)
    items = build_student(cfg, NUM_ITEMS, MAX_LEN, text_emb=text).items
    ids, text_only = items.id_embedding.weight, text @ items.text_projection.weight.T  # [N, H] each
    items.train()
    rows = items()  # [N, H] the catalog, one draw
    dropped = torch.isclose(rows, text_only).all(dim=1)
    kept = torch.isclose(rows, ids + text_only).all(dim=1)
    assert (dropped | kept).all() and 0 < dropped.sum() < NUM_ITEMS
    inputs = items(torch.full((64, MAX_LEN), 5))  # [B, L, H] the same item looked up 512 times
    share = torch.isclose(inputs, text_only[5]).all(dim=-1).float().mean().item()
    assert 0.4 < share < 0.6
    masks = items(torch.full((64, MAX_LEN), 1))  # the mask token (masked-item pretraining) is never dropped
    torch.testing.assert_close(masks, (ids[1] + text_only[1]).expand_as(masks))
    items.eval()
    torch.testing.assert_close(items(), ids + text_only)
    # Without text there is nothing to fall back on: the setting does nothing.
    plain = build_student(StudentConfig(arch=arch, id_dropout=0.5), NUM_ITEMS, MAX_LEN).items.train()
    torch.testing.assert_close(plain(), plain.id_embedding.weight)


def test_default_student_is_a_small_llama_with_the_same_contract() -> None:
    model = build_student(StudentConfig(), NUM_ITEMS, MAX_LEN).eval()
    assert StudentConfig().arch == "llama" and model.is_causal and model.hidden_size == 64
    ids = torch.randint(2, NUM_ITEMS, (3, MAX_LEN))
    ids[0, :4] = 0  # left padding
    with torch.no_grad():
        scores = model.next_item_scores(ids)
    assert scores.shape == (3, NUM_ITEMS) and torch.isfinite(scores).all()


def test_new_item_boost_raises_only_the_id_less_items_when_ranking() -> None:
    torch.manual_seed(0)
    text = torch.randn(NUM_ITEMS, 12)
    model = build_student(StudentConfig(use_text=True, new_item_boost=0.5), NUM_ITEMS, MAX_LEN, text_emb=text).eval()
    ids = torch.randint(FIRST_ITEM_INDEX, NUM_ITEMS, (3, MAX_LEN))
    with torch.no_grad():
        before = model.next_item_scores(ids)  # nothing is ID-less yet: no boost anywhere
        model.items.id_embedding.weight[[5, 9]] = 0.0  # as pinned: items training never saw
        model.items.id_embedding.weight[1] = 0.0  # the mask row: never an item
        mark_id_less(model.items)  # read from the weights, as a loaded model directory is
        boosted = model.next_item_scores(ids)
        plain = score_items(model.user_state(ids), model.item_embeddings())
    assert model.items.id_less.nonzero().flatten().tolist() == [5, 9]
    torch.testing.assert_close(boosted - plain, 0.5 * model.items.id_less.float().expand(3, -1))
    assert not torch.equal(before, boosted)
    # "auto" builds with no boost until training resolves it; without text there is never one.
    assert StudentConfig(use_text=True).fixed_new_item_boost == 0.0
    assert StudentConfig(new_item_boost=0.5).fixed_new_item_boost == 0.0
