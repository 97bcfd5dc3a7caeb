"""Item-text embeddings by Ray Data batch inference (`embed_on_ray`) and the embed_items stage: the same
vectors as the in-process encoder, in input order, cached beside the dataset where training finds them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from raysys.cli import main
from raysys.config import DataConfig
from raysys.data.prepare import load_or_prepare
from raysys.models.text_encoder import (
    EMB_SCHEMA,
    TextEncoder,
    embed_on_ray,
    encoder_identity,
    item_text_embeddings,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class Forbidden:
    """An encoder whose use fails the test: the cached file must answer."""

    def identity(self) -> str:
        return encoder_identity()

    def encode(self, texts, **kwargs):
        raise AssertionError("the embeddings should have come from the file beside the dataset")


def test_embed_on_ray_matches_the_encoder_in_input_order(ray_session) -> None:
    texts = [f"item number {n} about {'space' if n % 2 else 'cooking'} " * (1 + n % 5) for n in range(40)]
    rows = pa.table(
        {"item_id": [f"i{n}" for n in range(40)], "item_index": pa.array(range(2, 42), pa.int32()), "text": texts}
    )
    table = embed_on_ray(rows, actors=2, cpus_per_actor=0.5, batch_size=7)  # several batches over two actors
    assert table.schema == EMB_SCHEMA and table["item_id"].to_pylist() == rows["item_id"].to_pylist()
    vectors = np.array(table["embedding"].to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(vectors, TextEncoder().encode(texts), atol=1e-5)


def test_embed_items_stage_caches_beside_the_dataset(ray_session, tiny_data: dict, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"data": tiny_data}))
    argv = ["embed_items", "--config", str(config), "--cpus-per-actor", "0.5"]

    assert main([*argv, "--out", str(tmp_path / "first")]) == 0
    first = json.loads((tmp_path / "first" / "summary.json").read_text())
    dataset = load_or_prepare(DataConfig(**tiny_data), progress=False)
    assert Path(first["cache_file"]).parent == dataset.path and first["items"] > 0 and not first["cache_hit"]
    from_file = item_text_embeddings(dataset, encoder=Forbidden())  # what training reads
    assert from_file.num_rows == first["items"]

    assert main([*argv, "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["cache_hit"]


def test_embed_items_without_item_text_is_a_clear_error(ray_session, tmp_path: Path, capsys) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n" + "".join(f"u{n % 5},i{n % 7},{n}\n" for n in range(60)))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": str(log), "cache_dir": str(tmp_path / "cache")}}))
    assert main(["embed_items", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "no item text" in capsys.readouterr().err
