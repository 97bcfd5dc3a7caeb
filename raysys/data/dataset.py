"""The prepared dataset directory: the contract between the data stage and everything after it.

Layout (written by `raysys.data.prepare`, read here):

    manifest.json            written last; counts, vocab sizes, input/output checksums, data config
    item_vocab.parquet       item_id: string (original id), item_index: int32 (0 = pad, 1 = mask, items from 2)
    user_vocab.parquet       user_id: string, user_index: int32 (from 0)
    item_text.parquet        item_id: string, item_index: int32, text: string   (only when the log has item text)
    sequences/part-*.parquet one row per user, sorted by user_index:
        user_index  int32
        user_id     string
        items       list<int32>   every kept interaction, chronological (stable: file order breaks ties)
        timestamps  list<int64>   seconds (sequence-per-line input: the position)
        ratings     list<float32> only when the log has ratings
        train_len   int32         items[:train_len] is the training part
        valid_target int32        items[train_len]     or 0 when the user has < 3 interactions
        test_target  int32        items[train_len + 1] or 0 when the user has < 3 interactions
                                  (data.split=temporal: the first item after data.time_cutoff, or 0; the
                                  valid target is the last one up to it, or 0 when only one is; so the
                                  test target is items[train_len + (valid_target > 0)])

Leave-one-out: the last item is the test target, the second-last the valid target, the rest train.
Valid history = items[:train_len]; test history = items[:train_len + 1] (without a valid target:
items[:train_len]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysys.errors import RaysysError

FORMAT_VERSION = 1
PAD_INDEX = 0
MASK_INDEX = 1
FIRST_ITEM_INDEX = 2
MANIFEST = "manifest.json"
SEQUENCES_DIR = "sequences"


@dataclass(frozen=True)
class SplitExamples:
    """Evaluation examples of one split: each user's history and held-out target (item indices)."""

    user_index: np.ndarray  # [N] int32
    histories: list[np.ndarray]  # N arrays of int32, chronological, most recent last
    targets: np.ndarray  # [N] int32


@dataclass(frozen=True)
class PreparedDataset:
    """A validated prepared dataset directory (see the module docstring for the layout)."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> PreparedDataset:
        """Open a prepared dataset; raises RaysysError if its manifest is missing or incomplete."""
        path = Path(path).expanduser()
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise RaysysError("not a prepared dataset (no manifest.json)", where=str(path))
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise RaysysError(
                f"dataset format {manifest.get('format_version')} is not {FORMAT_VERSION}", where=str(path)
            )
        return cls(path=path, manifest=manifest)

    @property
    def num_items(self) -> int:
        """Size of the item index space including pad and mask: valid indices are 2..num_items-1."""
        return int(self.manifest["item_vocab_size"])

    @property
    def num_users(self) -> int:
        return int(self.manifest["num_users"])

    @property
    def has_text(self) -> bool:
        return bool(self.manifest.get("has_text"))

    def item_vocab(self) -> pa.Table:
        return pq.read_table(self.path / "item_vocab.parquet")

    def item_ids(self) -> list[str]:
        """Original item ids by index ("" for pad and mask)."""
        ids = [""] * self.num_items
        vocab = self.item_vocab()
        for item_id, index in zip(vocab["item_id"].to_pylist(), vocab["item_index"].to_pylist(), strict=True):
            ids[index] = item_id
        return ids

    def user_vocab(self) -> pa.Table:
        return pq.read_table(self.path / "user_vocab.parquet")

    def item_text(self) -> pa.Table | None:
        file = self.path / "item_text.parquet"
        return pq.read_table(file) if file.is_file() else None

    def sequences(self, columns: list[str] | None = None) -> pa.Table:
        """All users' rows in one table (fine up to a few million users; Ray workers use `ray_dataset`)."""
        read = None if columns is None else list(dict.fromkeys(["user_index", *columns]))
        table = pq.read_table(self.path / SEQUENCES_DIR, columns=read).sort_by("user_index")
        return table if columns is None else table.select(columns)

    def sequences_schema(self, columns: list[str]) -> pa.Schema:
        """The schema of those columns of the sequences table (read from a shard's footer, no data)."""
        schema = pq.read_schema(next(iter(sorted((self.path / SEQUENCES_DIR).glob("*.parquet")))))
        return pa.schema([schema.field(name) for name in columns])

    def ray_dataset(self, columns: list[str] | None = None):
        """The sequences as a Ray Dataset, streamed from the Parquet shards."""
        import ray.data

        return ray.data.read_parquet(str(self.path / SEQUENCES_DIR), columns=columns)

    @cached_property
    def _core(self) -> pa.Table:
        return self.sequences(["user_index", "items", "train_len", "valid_target", "test_target"])

    def train_sequences(self) -> list[np.ndarray]:
        """Each user's training part (int32 item indices), in user_index order."""
        items, train_len = _lists(self._core["items"]), self._core["train_len"].to_numpy()
        return [seq[:n] for seq, n in zip(items, train_len, strict=True)]

    def split(self, name: str) -> SplitExamples:
        """Evaluation examples for 'valid' or 'test' (users without that target have none)."""
        if name not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', not {name!r}")
        core = self._core
        targets = core[f"{name}_target"].to_numpy()
        keep = np.flatnonzero(targets > 0)
        # The test history holds the valid target when there is one (always, leave-one-out)
        extra = np.zeros(len(targets), np.int64) if name == "valid" else (core["valid_target"].to_numpy() > 0)
        items, train_len = _lists(core["items"]), core["train_len"].to_numpy()
        histories = [items[i][: train_len[i] + int(extra[i])] for i in keep]
        user_index = core["user_index"].to_numpy()[keep].astype(np.int32)
        return SplitExamples(user_index=user_index, histories=histories, targets=targets[keep].astype(np.int32))


def _lists(column: pa.ChunkedArray) -> list[np.ndarray]:
    """A list<int32> column as numpy arrays (zero-copy slices of one flat buffer)."""
    column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    offsets = column.offsets.to_numpy() - column.offsets[0].as_py()
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(column))]
