"""raysys update's rules without training: the promotion decision and its reason, and the config an
update trains with (the base's vocabulary and weights, its item texts as the item file)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raysys.bench.model_dirs import write_random_dataset
from raysys.config import Config
from raysys.data.item_text import read_item_text
from raysys.data.sources import resolve_source
from raysys.recipes.update import decide, updated_config


def test_promotion_allows_the_margin_and_says_why() -> None:
    serving = {"num_users": 10, "ndcg@10": 0.20}
    assert decide({"num_users": 10, "ndcg@10": 0.21}, serving, 0.0)[0]
    assert decide({"num_users": 10, "ndcg@10": 0.19}, serving, 0.02)[0]  # within the margin
    promoted, reason = decide({"num_users": 10, "ndcg@10": 0.15}, serving, 0.02)
    assert not promoted and "worse" in reason and "0.1500" in reason and "0.2000" in reason and "0.02" in reason
    promoted, reason = decide({"num_users": 0, "ndcg@10": 0.0}, serving, 0.0)
    assert not promoted and "no held-out event" in reason


def test_the_update_trains_on_its_source_over_the_base_vocabulary_with_the_base_texts(tmp_path: Path) -> None:
    dataset = write_random_dataset(tmp_path / "data", num_items=6, num_users=3)
    texts = pa.table(
        {
            "item_id": [f"i{j}" for j in range(6)],
            "item_index": pa.array(range(2, 8), pa.int32()),
            "text": ["Toy Story | 1995", "Heat", "Fargo | crime", "Babe", "Brazil", "Kids"],
        }
    )
    pq.write_table(texts, dataset.path / "item_text.parquet")
    base = tmp_path / "base"
    source = tmp_path / "update" / "source"
    source.mkdir(parents=True)
    pq.write_table(
        pa.table({"user_id": ["u0"], "item_id": ["i1"], "timestamp": [5], "event": ["click"]}), source / "a.parquet"
    )
    cfg = updated_config(Config(), base, dataset, source)
    assert cfg.data.vocab_from == str(dataset.path) and cfg.data.format == "parquet" and cfg.data.event_col == "event"
    assert cfg.finetune.init_from == str(base / "finetune" / "model")
    assert cfg.distill.init_from == str(base / "student" / "model")
    assert (cfg.finetune.epochs, cfg.distill.lr) == (cfg.update.epochs, cfg.update.lr)
    assert cfg.distill.lambda_ssl == cfg.update.lambda_ssl == 0.1  # not distill's default (0)
    item_file = resolve_source(cfg.data).item_file
    read = read_item_text(item_file)  # the same texts, so the embeddings cached for the base serve the update
    assert read.to_pylist() == texts.select(["item_id", "text"]).to_pylist()
