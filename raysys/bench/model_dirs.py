"""Randomly initialised model directories of any catalog size, for load tests and benchmarks.

Serving latency depends on the catalog size, the model shape and the history length, not on what
the weights learned, so a deployment can be sized before any training:

    random_model_dir("/tmp/m10k", num_items=10_000, num_users=2_000)

writes a small prepared dataset (Zipf-popular items, random histories) next to the model directory
and exports an untrained student over it with `export_model_dir`, so the result is a complete,
loadable model directory in the standard format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raysys.config import StudentConfig
from raysys.data.dataset import FIRST_ITEM_INDEX, FORMAT_VERSION, MANIFEST, SEQUENCES_DIR, PreparedDataset
from raysys.models.export import export_model_dir
from raysys.models.student import build_student
from raysys.models.text_encoder import TEXT_DIM, emb_table


def write_random_dataset(
    out_dir: str | Path, *, num_items: int, num_users: int, max_history: int = 30, seed: int = 0
) -> PreparedDataset:
    """A prepared dataset of `num_items` items ("i0", "i1", ...) and `num_users` users ("u0", ...)
    whose histories (3..max_history items) draw items with Zipf(1) popularity."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    (out / SEQUENCES_DIR).mkdir(parents=True, exist_ok=True)
    item_ids = [f"i{j}" for j in range(num_items)]
    indices = np.arange(FIRST_ITEM_INDEX, FIRST_ITEM_INDEX + num_items, dtype=np.int32)
    popularity = 1.0 / np.arange(1, num_items + 1)
    popularity = rng.permutation(popularity / popularity.sum())
    lengths = rng.integers(3, max_history + 1, size=num_users)
    sequences = [rng.choice(indices, size=n, p=popularity).astype(np.int32) for n in lengths]
    pq.write_table(pa.table({"item_id": item_ids, "item_index": indices}), out / "item_vocab.parquet")
    users = [f"u{u}" for u in range(num_users)]
    pq.write_table(
        pa.table({"user_id": users, "user_index": np.arange(num_users, dtype=np.int32)}), out / "user_vocab.parquet"
    )
    pq.write_table(
        pa.table(
            {
                "user_index": np.arange(num_users, dtype=np.int32),
                "user_id": users,
                "items": pa.array([s.tolist() for s in sequences], pa.list_(pa.int32())),
                "timestamps": pa.array([list(range(len(s))) for s in sequences], pa.list_(pa.int64())),
                "train_len": (lengths - 2).astype(np.int32),
                "valid_target": np.array([s[-2] for s in sequences], np.int32),
                "test_target": np.array([s[-1] for s in sequences], np.int32),
            }
        ),
        out / SEQUENCES_DIR / "part-00000.parquet",
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "item_vocab_size": num_items + FIRST_ITEM_INDEX,
        "num_users": num_users,
        "num_interactions": int(lengths.sum()),
        "has_text": False,
        "source": "raysys.bench.model_dirs (random)",
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return PreparedDataset.open(out)


def random_model_dir(
    out_dir: str | Path,
    *,
    num_items: int,
    num_users: int = 1000,
    model_cfg: StudentConfig | None = None,
    max_len: int = 50,
    model_version: str | None = None,
    seed: int = 0,
) -> Path:
    """Export an untrained student over a random dataset (written to `<out_dir>.data`).

    With `model_cfg.use_text`, items get random unit text vectors, so the model has the text tower
    that /items needs.
    """
    out_dir = Path(out_dir)
    model_cfg = model_cfg or StudentConfig(dropout=0.0)
    dataset = write_random_dataset(
        out_dir.with_name(out_dir.name + ".data"), num_items=num_items, num_users=num_users, seed=seed
    )
    torch.manual_seed(seed)
    text_emb = _random_text_emb(dataset.num_items, seed) if model_cfg.use_text else None
    model = build_student(model_cfg, dataset.num_items, max_len, text_emb=text_emb).eval()
    table = None
    if text_emb is not None:
        rows = np.arange(FIRST_ITEM_INDEX, dataset.num_items)
        table = emb_table([f"i{j - FIRST_ITEM_INDEX}" for j in rows], rows, text_emb[rows].numpy())
    return export_model_dir(
        model,
        out_dir,
        dataset,
        kind="student",
        model_cfg=model_cfg,
        max_len=max_len,
        metrics={"note": "randomly initialised, for load tests"},
        model_version=model_version,
        text_emb=table,
    )


def _random_text_emb(num_items: int, seed: int) -> torch.Tensor:
    """[num_items, 384] unit vectors (zeros for pad and mask), like MiniLM's normalised output."""
    gen = torch.Generator().manual_seed(seed + 1)
    emb = torch.nn.functional.normalize(torch.randn(num_items, TEXT_DIM, generator=gen), dim=1)
    emb[:FIRST_ITEM_INDEX] = 0
    return emb
