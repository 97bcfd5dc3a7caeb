"""Eval test helpers: tiny prepared-dataset directories written by hand in the documented layout
(raysys.data.dataset), so evaluator tests do not depend on the prepare pipeline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysys.data.dataset import FIRST_ITEM_INDEX, FORMAT_VERSION, PreparedDataset


def write_prepared_dataset(path: Path, sequences: list[list[int]], num_items: int) -> PreparedDataset:
    """A prepared dataset holding `sequences` (item indices >= 2, chronological), split leave-one-out."""
    train_len = [len(s) - 2 if len(s) >= 3 else len(s) for s in sequences]
    table = pa.table(
        {
            "user_index": pa.array(range(len(sequences)), pa.int32()),
            "user_id": pa.array([f"u{i}" for i in range(len(sequences))]),
            "items": pa.array(sequences, pa.list_(pa.int32())),
            "train_len": pa.array(train_len, pa.int32()),
            "valid_target": pa.array([s[-2] if len(s) >= 3 else 0 for s in sequences], pa.int32()),
            "test_target": pa.array([s[-1] if len(s) >= 3 else 0 for s in sequences], pa.int32()),
        }
    )
    (path / "sequences").mkdir(parents=True)
    pq.write_table(table, path / "sequences" / "part-00000.parquet")
    items = range(FIRST_ITEM_INDEX, num_items)
    vocab = pa.table({"item_id": [f"i{i}" for i in items], "item_index": pa.array(items, pa.int32())})
    pq.write_table(vocab, path / "item_vocab.parquet")
    manifest = {"format_version": FORMAT_VERSION, "item_vocab_size": num_items, "num_users": len(sequences)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return PreparedDataset.open(path)


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[[list[list[int]], int], PreparedDataset]:
    """Factory: make_dataset(sequences, num_items) -> PreparedDataset under tmp_path."""
    counter = iter(range(1_000_000))
    return lambda sequences, num_items: write_prepared_dataset(tmp_path / f"ds{next(counter)}", sequences, num_items)


@pytest.fixture
def random_sequences() -> Callable[..., list[list[int]]]:
    """Factory: random_sequences(seed, num_users, num_items, max_length) -> user sequences of
    lengths 1..max_length over items 2..num_items-1 (repeats allowed)."""

    def make(seed: int, num_users: int, num_items: int, max_length: int) -> list[list[int]]:
        rng = np.random.default_rng(seed)
        lengths = rng.integers(1, max_length + 1, size=num_users)
        return [rng.integers(2, num_items, size=int(n)).tolist() for n in lengths]

    return make


@pytest.fixture(scope="session")
def evaluated_parts() -> set[str]:
    """The splits and slices every full evaluation reports."""
    return {"valid", "valid/cold_items", "test", "test/short_history", "test/cold_items", "test/warm_items"}
