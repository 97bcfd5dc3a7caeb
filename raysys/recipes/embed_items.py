"""`raysys embed_items`: the item-text embeddings of a prepared dataset, by Ray Data batch inference.

    raysys embed_items --config jobs/configs/quickstart.yaml --out runs/embed
    raysys embed_items --config jobs/configs/ml100k.yaml --actors 2 --cpus-per-actor 1 --out runs/embed

setup (the prepared dataset) -> its non-blank item texts -> Ray Data `map_batches` over a pool of actors,
each holding one all-MiniLM-L6-v2 encoder -> DATASET_DIR/item_text_emb-<key>.parquet, keyed by the encoder
and a checksum of the (item id, text) pairs. Training (`use_text`) reads the table from there, so a run
after this stage never embeds again; without it, the first training run embeds in its own process.
summary.json: {"cache_file", "items", "cache_hit", "seconds"}.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import Any

from raysys.config import Config
from raysys.errors import RaysysError

DESCRIPTION = "embed the dataset's item texts with Ray Data batch inference (all-MiniLM); cached beside the dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actors", type=int, default=2, help="encoder actors in the pool at most (default 2)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="Ray CPUs per encoder actor (default 1)")


def run(cfg: Config, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Embed `cfg.data`'s item texts into the dataset's directory (a no-op when already there)."""
    from raysys.data.prepare import ensure_ray, load_or_prepare
    from raysys.models.text_encoder import embed_item_texts, embed_on_ray, item_text_cache_file, non_blank_rows

    if args.actors < 1 or args.cpus_per_actor <= 0:
        raise RaysysError("--actors must be at least 1 and --cpus-per-actor above 0", where="embed_items")
    start = time.perf_counter()
    dataset = load_or_prepare(cfg.data, progress=False)
    item_text = dataset.item_text()
    if item_text is None:
        raise RaysysError(
            "the dataset has no item text to embed",
            where="data.item_path",
            hint="point data.item_path at an item file with text fields, or leave use_text off",
        )
    item_ids, _, texts = non_blank_rows(item_text)
    cache_file = item_text_cache_file(dataset.path, item_ids, texts)
    hit = cache_file.is_file()
    ensure_ray()
    embed = partial(embed_on_ray, actors=args.actors, cpus_per_actor=args.cpus_per_actor)
    table = embed_item_texts(item_text, cache_dir=dataset.path, embed=embed, progress=False)
    return {
        "cache_file": str(cache_file),
        "items": table.num_rows,
        "cache_hit": hit,
        "seconds": round(time.perf_counter() - start, 2),
    }
