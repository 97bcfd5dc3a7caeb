"""jobs/bench/update_replay.py: its per-chunk table (means over seeds, the two shares the targets are on)
and its arguments. The replay itself runs for the closing note's figures (hours on ml-100k), not here:
`raysys update` end to end is tests/serve/test_update.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("update_replay", REPO / "jobs" / "bench" / "update_replay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(seed: int, chunk: int, update: float, full: float, update_s: float, full_s: float) -> dict:
    return {
        "seed": seed,
        "chunk": chunk,
        "update_ndcg@10": update,
        "serving_ndcg@10": 0.05,
        "full_ndcg@10": full,
        "update_seconds": update_s,
        "full_seconds": full_s,
    }


def test_the_table_averages_seeds_per_chunk_and_gives_the_shares() -> None:
    runs = [_row(0, 1, 0.10, 0.10, 20, 100), _row(1, 1, 0.08, 0.10, 30, 100), _row(0, 2, 0.12, 0.0, 10, 0)]
    first, second, overall = _bench().table(runs, chunks=3)  # chunk 3 has no run yet: left out
    assert first["seeds"] == 2 and first["update_ndcg@10"] == 0.09 and first["full_ndcg@10"] == 0.1
    assert first["quality_share"] == 0.9 and first["time_share"] == 0.25
    assert second["chunk"] == 2 and second["quality_share"] is None and second["time_share"] is None
    assert overall["chunk"] == "all" and overall["seeds"] == 2
    assert overall["quality_share"] == pytest.approx(0.1 / (0.2 / 3), abs=1e-3)  # ratio of the means
    assert overall["time_share"] == pytest.approx(20 / (200 / 3), abs=1e-3)
    assert len(_bench().table(runs[:1], chunks=3)) == 1  # one chunk: no "all" row


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        _bench().parse_args(["--chunks", "0"])
    with pytest.raises(SystemExit):
        _bench().parse_args(["--train-share", "1.0"])
