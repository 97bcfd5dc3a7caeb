"""The Ray Data datasource: read tasks over runs of Parquet row groups, ordinals across tasks and files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysys.config import DataConfig
from raysys.data import sources
from raysys.data.datasource import read_interactions
from raysys.data.sources import resolve_source
from raysys.data.validate import ORDINAL_FILE_SHIFT


@pytest.mark.slow
def test_ray_datasource_splits_parquet_by_row_groups(ray_session, tmp_path: Path, monkeypatch) -> None:
    """Read tasks cover runs of row groups; ordinals stay (file, row in file) across tasks and files."""
    monkeypatch.setattr(sources, "ROWS_PER_READ_TASK", 100)
    n = 1000
    table = pa.table(
        {
            "user_id": [f"u{i % 37}" for i in range(n)],
            "item_id": [f"i{i % 11}" for i in range(n)],
            "timestamp": np.arange(n, dtype=np.int64),
        }
    )
    for i in range(2):
        pq.write_table(table, tmp_path / f"log-{i}.parquet", row_group_size=50)
    source = resolve_source(DataConfig(path=str(tmp_path)))
    assert len(source.files) == 20  # 2 files x 1000 rows / 100 rows per task
    read = pa.concat_tables(ray_session.get(read_interactions(source, "fail").to_arrow_refs()))
    ordinals = np.sort(read["ordinal"].to_numpy())
    expected = np.concatenate([np.arange(n), (1 << ORDINAL_FILE_SHIFT) + np.arange(n)])
    assert np.array_equal(ordinals, expected)
    assert read.num_rows == 2 * n and int((read["reason"].to_numpy() == 0).sum()) == 2 * n
