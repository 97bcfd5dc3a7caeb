"""The packaged sentence encoder: offline loading, pooling parity with sentence-transformers, the
Parquet cache and the [num_items, 384] table the models take."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raysys.errors import RaysysError
from raysys.models.text_encoder import (
    EMB_SCHEMA,
    TEXT_DIM,
    TextEncoder,
    emb_table,
    embed_item_texts,
    encoder_model_dir,
    text_emb_tensor,
)

TEXTS = [
    "A space opera about rebels fighting an empire among the stars",
    "Science fiction adventure with starships and alien worlds",
    "A romantic comedy about two chefs falling in love in Paris",
    "Cookbook of classic French desserts and pastries",
    "x",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def item_text_table(texts: list[str | None]) -> pa.Table:
    return pa.table(
        {
            "item_id": [f"i{n}" for n in range(len(texts))],
            "item_index": pa.array(range(2, 2 + len(texts)), pa.int32()),
            "text": pa.array(texts, pa.string()),
        }
    )


class ForbiddenEncoder:
    """Stands in for the encoder when a test asserts the cache answered (encoding fails the test)."""

    def __init__(self, identity: str) -> None:
        self._identity = identity

    def identity(self) -> str:
        return self._identity

    def encode(self, texts, **kwargs):
        raise AssertionError("the cache should have answered")


@pytest.mark.slow
def test_embeddings_are_unit_384_dim_and_batch_independent(encoder: TextEncoder) -> None:
    one_batch = encoder.encode(TEXTS, batch_size=64)
    small_batches = encoder.encode(TEXTS, batch_size=2)
    assert one_batch.shape == (len(TEXTS), TEXT_DIM) and one_batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(one_batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(one_batch, small_batches, atol=1e-5)  # padding never leaks into the mean


@pytest.mark.slow
def test_embeddings_place_related_texts_together(encoder: TextEncoder) -> None:
    e = encoder.encode(TEXTS)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.1 and sim[0, 1] > sim[0, 3] + 0.1  # sci-fi with sci-fi
    assert sim[2, 3] > sim[2, 1]  # French food with French food


@pytest.mark.slow
def test_matches_sentence_transformers_reference(encoder: TextEncoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(encoder_model_dir()), device="cpu", local_files_only=True)
    expected = reference.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5)


@pytest.mark.slow
def test_embed_item_texts_caches_by_text_and_skips_blank_texts(encoder: TextEncoder, tmp_path) -> None:
    table = item_text_table(["space opera with starships", None, "   ", "french pastry cookbook"])
    out = embed_item_texts(table, cache_dir=tmp_path, encoder=encoder, progress=False)
    assert out.schema == EMB_SCHEMA
    assert out["item_id"].to_pylist() == ["i0", "i3"] and out["item_index"].to_pylist() == [2, 5]
    [cache_file] = tmp_path.glob("item_text_emb-*.parquet")
    assert pq.read_table(cache_file).equals(out)

    # Same ids and texts, other indices: answered from the cache, with the indices asked about.
    moved = table.set_column(1, "item_index", pa.array([7, 8, 9, 10], pa.int32()))
    again = embed_item_texts(moved, cache_dir=tmp_path, encoder=ForbiddenEncoder(encoder.identity()))
    assert again["item_index"].to_pylist() == [7, 10]
    assert again["embedding"].equals(out["embedding"])

    # Changed text: a new key, so the forbidden encoder is asked and fails.
    changed = table.set_column(2, "text", pa.array(["space opera", None, "", "french pastry"], pa.string()))
    with pytest.raises(AssertionError, match="cache should have answered"):
        embed_item_texts(changed, cache_dir=tmp_path, encoder=ForbiddenEncoder(encoder.identity()))


def test_text_emb_tensor_aligns_rows_with_item_indices() -> None:
    vectors = np.arange(2 * TEXT_DIM, dtype=np.float32).reshape(2, TEXT_DIM)
    table = emb_table(["a", "b"], [4, 2], vectors)
    out = text_emb_tensor(table, num_items=6)
    assert out.shape == (6, TEXT_DIM) and out.dtype == torch.float32
    assert torch.equal(out[4], torch.from_numpy(vectors[0])) and torch.equal(out[2], torch.from_numpy(vectors[1]))
    assert not out[[0, 1, 3, 5]].any()  # pad, mask and items without text stay zero


def test_text_emb_tensor_rejects_pad_or_out_of_range_indices() -> None:
    vectors = np.ones((1, TEXT_DIM), dtype=np.float32)
    with pytest.raises(RaysysError, match="outside 2..5"):
        text_emb_tensor(emb_table(["a"], [1], vectors), num_items=6)
    with pytest.raises(RaysysError, match="outside"):
        text_emb_tensor(emb_table(["a"], [6], vectors), num_items=6)


def test_missing_text_column_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(RaysysError, match=r"lacks column\(s\) \['text'\]"):
        embed_item_texts(pa.table({"item_id": ["a"], "item_index": [2]}), cache_dir=tmp_path)


def test_logged_embeddings_fill_in_for_items_without_text(tmp_path) -> None:
    """A dataset's text table: its item texts' embeddings (here from their cache file) plus, for items
    the item file has no text for, the embeddings POST /items logged (LOGGED_EMB_FILE); unknown ids and
    items that have text keep out of it."""
    from raysys.bench.model_dirs import write_random_dataset
    from raysys.models.text_encoder import LOGGED_EMB_FILE, item_text_cache_file, item_text_embeddings

    dataset = write_random_dataset(tmp_path / "data", num_items=5, num_users=3)
    vector = lambda x: [float(x)] * TEXT_DIM  # noqa: E731
    logged = pa.table(
        {
            "item_id": ["i3", "i1", "elsewhere"],
            "embedding": pa.array([vector(3), vector(1), vector(9)], pa.list_(pa.float32())),
        }
    )
    pq.write_table(logged, dataset.path / LOGGED_EMB_FILE)
    alone = item_text_embeddings(dataset)  # no item file: the logged ones alone
    assert alone["item_id"].to_pylist() == ["i3", "i1"] and alone["item_index"].to_pylist() == [5, 3]

    pq.write_table(
        pa.table({"item_id": ["i1"], "item_index": pa.array([3], pa.int32()), "text": ["Heat"]}),
        dataset.path / "item_text.parquet",
    )
    cached = emb_table(["i1"], [3], np.full((1, TEXT_DIM), 0.5, np.float32))
    pq.write_table(cached, item_text_cache_file(dataset.path, ["i1"], ["Heat"]))
    both = item_text_embeddings(dataset)
    assert both["item_id"].to_pylist() == ["i1", "i3"]  # i1's text wins over its logged vector
    tensor = text_emb_tensor(both, dataset.num_items)
    assert tensor[3, 0].item() == 0.5 and tensor[5, 0].item() == 3.0 and tensor[4].abs().sum().item() == 0.0
