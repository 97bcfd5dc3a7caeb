"""Prepare: leave-one-out split on MovieLens-100K, determinism, vocabularies, k-core, cache reuse."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raysys import cli
from raysys.config import DataConfig, SyntheticConfig
from raysys.data.cache import is_complete
from raysys.data.dataset import MANIFEST, PreparedDataset
from raysys.data.prepare import load_or_prepare, prepare_or_reuse
from raysys.errors import RaysysError

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # every test here starts Ray Data work


def sequences_by_user(ds: PreparedDataset) -> dict[str, list[str]]:
    """{original user id: original item ids in sequence order}, through the vocabularies."""
    items = dict(zip(ds.item_vocab()["item_index"].to_pylist(), ds.item_vocab()["item_id"].to_pylist(), strict=True))
    seq = ds.sequences(["user_index", "user_id", "items"])
    return {u: [items[i] for i in s] for u, s in zip(seq["user_id"].to_pylist(), seq["items"].to_pylist(), strict=True)}


def test_movielens_100k_split(ray_session, tmp_path: Path, ml100k_path: Path, monkeypatch, capsys) -> None:
    """`raysys prepare` with jobs/configs/ml100k.yaml: every user gets a valid and a test target, and each
    sequence is the pandas stable sort of the user's rows by timestamp (file order breaks ties)."""
    monkeypatch.setattr(cli, "STAGES", {"prepare": cli.STAGES["prepare"]})
    out = tmp_path / "run"
    code = cli.main(
        [
            "prepare",
            "--config",
            str(ROOT / "jobs/configs/ml100k.yaml"),
            f"data.path={ml100k_path}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["num_users"], summary["num_items"], summary["num_interactions"]) == (943, 1682, 100_000)
    assert (summary["num_valid"], summary["num_test"], summary["num_filtered"]) == (943, 943, 0)
    assert sum(summary["num_dropped"].values()) == 0 and summary["cache_hit"] is False
    assert summary["item_vocab_size"] == 1684 and summary["has_text"] is True
    assert json.loads((out / "data_manifest.json").read_text())["num_interactions"] == 100_000

    ds = PreparedDataset.open(summary["dataset_path"])
    log = pd.read_csv(ml100k_path / "ml-100k.inter", sep="\t", dtype=str)
    log.columns = ["user", "item", "rating", "timestamp"]
    log["timestamp"] = log["timestamp"].astype(float)
    ordered = log.sort_values(["user", "timestamp"], kind="stable")
    sequences = sequences_by_user(ds)
    tied_user = ordered[ordered.duplicated(["user", "timestamp"], keep=False)]["user"].iloc[0]
    for user in ("1", "405", tied_user):  # 405 has the longest history
        assert sequences[user] == ordered[ordered.user == user]["item"].tolist(), user

    seq = ds.sequences(["user_index", "items", "train_len", "valid_target", "test_target"])
    lengths = np.array([len(s) for s in seq["items"].to_pylist()])
    assert np.array_equal(seq["train_len"].to_numpy(), lengths - 2)
    assert [s[-1] for s in seq["items"].to_pylist()] == seq["test_target"].to_pylist()
    assert [s[-2] for s in seq["items"].to_pylist()] == seq["valid_target"].to_pylist()
    assert len(ds.split("test").targets) == len(ds.split("valid").targets) == 943
    assert ds.item_text().num_rows == 1682


def write_tied_log(folder: Path) -> None:
    """Three Parquet files with ties in time, repeated consumption, events and ratings."""
    rng = np.random.default_rng(7)
    folder.mkdir()
    for part in range(3):
        n = 400
        pq.write_table(
            pa.table(
                {
                    "user_id": [f"user-{u}" for u in rng.integers(0, 40, n)],
                    "item_id": rng.integers(1, 60, n).astype(str),
                    "timestamp": rng.integers(0, 30, n),  # many ties
                    "rating": rng.integers(1, 6, n).astype(np.float32),
                    "event": rng.choice(["click", "buy"], n),
                }
            ),
            folder / f"part-{part}.parquet",
        )


def test_deterministic_vocab_round_trip_and_columns(ray_session, tmp_path: Path) -> None:
    write_tied_log(tmp_path / "log")
    cfg = DataConfig(path=str(tmp_path / "log"), event_col="event", on_bad_rows="drop")
    first = load_or_prepare(cfg.model_copy(update={"cache_dir": str(tmp_path / "a")}), progress=False)
    second = load_or_prepare(cfg.model_copy(update={"cache_dir": str(tmp_path / "b")}), progress=False)
    assert first.path != second.path
    assert first.sequences().equals(second.sequences())
    assert first.item_vocab().equals(second.item_vocab()) and first.user_vocab().equals(second.user_vocab())
    assert len(list((first.path / "sequences").glob("part-*.parquet"))) > 1

    # vocabularies: users from 0 in id order, items from 2 in numeric id order (every item id is an integer)
    users, items = first.user_vocab(), first.item_vocab()
    assert users["user_index"].to_pylist() == list(range(users.num_rows))
    assert users["user_id"].to_pylist() == sorted(users["user_id"].to_pylist())
    assert items["item_index"].to_pylist() == list(range(2, items.num_rows + 2))
    assert [int(i) for i in items["item_id"].to_pylist()] == sorted(int(i) for i in items["item_id"].to_pylist())

    # round trip: indices back to ids give each user's rows, stably sorted by time, duplicates dropped
    log = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "log").glob("*.parquet"))], ignore_index=True)
    log = log.drop_duplicates(["user_id", "item_id", "timestamp"])
    expected = {
        u: g["item_id"].tolist()
        for u, g in log.sort_values(["user_id", "timestamp"], kind="stable").groupby("user_id", sort=False)
    }
    assert sequences_by_user(first) == expected
    assert first.manifest["num_dropped"]["duplicate"] == 1200 - len(log)

    seq = first.sequences()
    assert {"ratings", "events", "timestamps"} <= set(seq.column_names)
    row = seq.slice(0, 1).to_pylist()[0]
    user_rows = log[log.user_id == row["user_id"]].sort_values("timestamp", kind="stable")
    assert row["events"] == user_rows["event"].tolist() and row["timestamps"] == user_rows["timestamp"].tolist()
    assert row["ratings"] == user_rows["rating"].tolist()


def kcore_reference(pairs: list[tuple[str, str]], min_user: int, min_item: int) -> Counter:
    """Iterated k-core by brute force over interactions: drop light users and items until nothing changes."""
    kept = list(pairs)
    while True:
        users, items = Counter(u for u, _ in kept), Counter(i for _, i in kept)
        keep = [(u, i) for u, i in kept if users[u] >= min_user and items[i] >= min_item]
        if len(keep) == len(kept):
            return Counter(keep)
        kept = keep


def test_iterated_kcore_and_short_users(ray_session, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 600
    users, items = rng.zipf(1.6, n) % 80, rng.zipf(1.4, n) % 120
    log = pd.DataFrame({"user_id": users.astype(str), "item_id": items.astype(str), "timestamp": np.arange(n)})
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    expected = kcore_reference(list(zip(log.user_id, log.item_id, strict=True)), 3, 4)
    ds = load_or_prepare(
        DataConfig(path=str(path), cache_dir=str(tmp_path / "c"), min_user_interactions=3, min_item_interactions=4),
        progress=False,
    )
    assert Counter((u, i) for u, seq in sequences_by_user(ds).items() for i in seq) == expected
    m, kept = ds.manifest, sum(expected.values())
    assert 0 < kept < n and m["num_interactions"] == kept and m["num_filtered"] == n - kept
    assert m["num_items"] == len({i for _, i in expected}) and m["item_vocab_size"] == m["num_items"] + 2
    per_user = Counter(u for (u, _), c in expected.items() for _ in range(c))
    assert m["num_valid"] == m["num_test"] == sum(c >= 3 for c in per_user.values())

    unfiltered = load_or_prepare(DataConfig(path=str(path), cache_dir=str(tmp_path / "c")), progress=False)
    seq = unfiltered.sequences(["user_index", "items", "train_len", "valid_target", "test_target"]).to_pylist()
    short = [r for r in seq if len(r["items"]) < 3]
    assert short and all(
        r["train_len"] == len(r["items"]) and r["valid_target"] == r["test_target"] == 0 for r in short
    )


def test_cache_hit_and_miss_on_content_change(ray_session, tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,2\nu1,i3,3\nu2,i1,4\n")
    cfg = DataConfig(path=str(path), cache_dir=str(tmp_path / "cache"))
    first = prepare_or_reuse(cfg, progress=False)
    again = prepare_or_reuse(cfg, progress=False)
    assert (first.cache_hit, again.cache_hit) == (False, True) and again.dataset.path == first.dataset.path
    assert again.dataset.manifest["inputs"][0]["sha256"] == first.dataset.manifest["inputs"][0]["sha256"]

    stat = path.stat()  # same size and mtime, different content: only a checksum notices
    path.write_text(path.read_text().replace("u2,i1,4", "u2,i2,4"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = prepare_or_reuse(cfg, progress=False)
    assert changed.cache_hit is False and changed.dataset.path != first.dataset.path

    # a damaged output makes the cached copy invalid: it is prepared again, not trusted
    shard = next((changed.dataset.path / "sequences").glob("part-*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-8] + b"damaged!")
    assert not is_complete(changed.dataset.path)
    assert prepare_or_reuse(cfg, progress=False).cache_hit is False
    assert is_complete(changed.dataset.path)


def test_synthetic_logs_with_text(ray_session, tmp_path: Path) -> None:
    cfg = DataConfig(
        format="synthetic",
        cache_dir=str(tmp_path),
        synthetic=SyntheticConfig(num_users=200, num_items=100, num_interactions=3000),
    )
    ds = load_or_prepare(cfg, progress=False)
    m = ds.manifest
    assert m["num_input_rows"] == 3000 and m["num_interactions"] + sum(m["num_dropped"].values()) == 3000
    assert m["has_text"] and m["has_ratings"] and m["source_format"] == "synthetic"
    text = ds.item_text()
    assert text.num_rows == m["num_items"] and text["item_index"].to_pylist() == sorted(text["item_index"].to_pylist())
    assert m["num_cold_items"] > 0  # the generator plants items seen only as valid/test targets
    manifest = json.loads((ds.path / MANIFEST).read_text())
    assert {o["path"] for o in manifest["outputs"]} >= {"item_vocab.parquet", "user_vocab.parquet", "item_text.parquet"}


def test_cold_item_holdout_keeps_held_items_out_of_every_training_part(ray_session, tmp_path: Path) -> None:
    from raysys.data.dataset import FIRST_ITEM_INDEX
    from raysys.data.prepare import held_out_items
    from raysys.eval.evaluator import slice_masks, train_items

    rng = np.random.default_rng(5)
    n = 3000
    log = pd.DataFrame(
        {"user_id": (rng.integers(0, 200, n)).astype(str), "item_id": rng.integers(0, 150, n).astype(str)}
    )
    log["timestamp"] = np.arange(n)
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    cfg = DataConfig(path=str(path), cache_dir=str(tmp_path / "c"), cold_item_holdout=0.2, seed=3)
    ds = load_or_prepare(cfg, progress=False)
    plain = load_or_prepare(cfg.model_copy(update={"cold_item_holdout": 0.0}), progress=False)

    vocab = ds.item_vocab()
    held_index = np.flatnonzero(held_out_items(np.arange(FIRST_ITEM_INDEX, ds.num_items), 0.2, 3))
    held = set(vocab.filter(pa.array(np.isin(vocab["item_index"].to_numpy(), held_index)))["item_id"].to_pylist())
    assert len(held) == round(0.2 * (ds.num_items - FIRST_ITEM_INDEX))
    before, after = sequences_by_user(plain), sequences_by_user(ds)
    for user, sequence in before.items():
        targets = sequence[-2:] if len(sequence) >= 3 else []
        trainable = [item for item in sequence[: len(sequence) - len(targets)] if item not in held]
        expected = trainable + targets if targets and trainable else [i for i in sequence if i not in held]
        assert after[user] == expected
    m = ds.manifest
    assert m["num_held_out"] > 0 and m["num_interactions"] + m["num_held_out"] == plain.manifest["num_interactions"]
    assert not set(np.flatnonzero(np.isin(np.arange(ds.num_items), train_items(ds)))) & set(held_index)
    cold = slice_masks(ds.split("test"), train_items(ds), 5)["test/cold_items"]
    assert cold.sum() >= 0.1 * len(cold)  # about a fifth of the test targets are held out


def test_negative_event_types_are_left_out_of_the_sequences(ray_session, tmp_path: Path) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    events = ["click", "skip", "buy", "dislike"] * 30
    pq.write_table(
        pa.table(
            {
                "user_id": [f"u{n % 10}" for n in range(120)],
                "item_id": [f"i{n % 17}" for n in range(120)],
                "timestamp": list(range(120)),
                "kind": events,
            }
        ),
        folder / "log.parquet",
    )
    cfg = DataConfig(path=str(folder), event_col="kind", cache_dir=str(tmp_path / "cache"))
    ds = load_or_prepare(cfg, progress=False)  # default data.negative_events: skip, dislike
    assert ds.manifest["negative_events"] == ["skip", "dislike"] and ds.manifest["num_interactions"] == 60
    assert set(pc.list_flatten(ds.sequences()["events"]).to_pylist()) == {"click", "buy"}
    everything = load_or_prepare(cfg.model_copy(update={"negative_events": []}), progress=False)
    assert everything.manifest["num_interactions"] == 120 and everything.path != ds.path


def test_a_time_cutoff_and_a_base_vocabulary_for_updates(ray_session, tmp_path: Path) -> None:
    """data.time_cutoff leaves the later rows out and the manifest records the latest kept time; a dataset
    prepared with data.vocab_from keeps every base id at its index (the k-core never drops one) and
    appends the new ids."""
    rng = np.random.default_rng(5)
    n = 800
    log = pd.DataFrame(
        {
            "user_id": [f"u{u:03d}" for u in rng.integers(0, 60, n)],
            "item_id": [f"i{i:03d}" for i in rng.zipf(1.3, n) % 150],
            "timestamp": np.arange(n) * 10,
        }
    )
    hot = pd.DataFrame({"user_id": [f"u{u:03d}" for u in range(10)], "item_id": "i900", "timestamp": 10 * n + 1})
    log = pd.concat([log, hot], ignore_index=True)  # a new item that comes after the cutoff, often
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    cutoff = 10 * 599
    cache = str(tmp_path / "cache")
    base = load_or_prepare(DataConfig(path=str(path), cache_dir=cache, time_cutoff=cutoff), progress=False)
    past = log[log.timestamp <= cutoff]
    assert base.manifest["num_interactions"] == len(past) and base.manifest["max_timestamp"] == cutoff
    assert set(base.item_vocab()["item_id"].to_pylist()) == set(past.item_id)

    least = 6  # the k-core's minimum item count
    cfg = DataConfig(path=str(path), cache_dir=cache, vocab_from=str(base.path), min_item_interactions=least)
    full = load_or_prepare(cfg, progress=False)
    assert full.manifest["max_timestamp"] == 10 * n + 1
    for kind in ("user", "item"):
        old = getattr(base, f"{kind}_vocab")().sort_by(f"{kind}_index")
        new = getattr(full, f"{kind}_vocab")().sort_by(f"{kind}_index")
        assert new.slice(0, old.num_rows).equals(old)  # every base id, at its index
        added = new[f"{kind}_id"].to_pylist()[old.num_rows :]
        assert added == sorted(added) and not set(added) & set(old[f"{kind}_id"].to_pylist())
    counts = Counter(log.item_id)
    new_items = full.item_vocab()["item_id"].to_pylist()[base.item_vocab().num_rows :]
    assert new_items and all(counts[i] >= least for i in new_items)  # the k-core applies to new ids only
    dropped = {i for i in set(log.item_id) - set(past.item_id) if counts[i] < least}
    assert dropped and not dropped & set(new_items)
    rare_base = [i for i in base.item_vocab()["item_id"].to_pylist() if counts[i] < least]
    assert rare_base  # ... base items as rare as the dropped ones stay


def test_the_temporal_split(ray_session, tmp_path: Path) -> None:
    """data.split=temporal: per user the first interaction after the cutoff is the test target (its history
    everything up to the cutoff), the last one up to it the valid target; later ones are left out and
    counted, and users with nothing up to the cutoff are filtered."""
    rows = [
        ("a", "i1", 1), ("a", "i2", 2), ("a", "i3", 3), ("a", "i4", 11), ("a", "i5", 12),  # 3 past, 2 after
        ("b", "i1", 4), ("b", "i6", 13),  # 1 past: no valid target, still a test target
        ("c", "i2", 5), ("c", "i3", 6),  # no after: a valid target, no test target
        ("d", "i7", 14),  # nothing up to the cutoff: filtered
    ]  # fmt: skip
    path = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    cfg = DataConfig(path=str(path), cache_dir=str(tmp_path / "c"), split="temporal", time_cutoff=10)
    ds = load_or_prepare(cfg, progress=False)
    m = ds.manifest
    assert (m["num_interactions"], m["num_after_cutoff"], m["num_filtered"]) == (8, 1, 1)
    assert (m["num_users"], m["num_valid"], m["num_test"]) == (3, 2, 2)
    ids = ds.item_ids()
    seq = ds.sequences(["user_id", "user_index"])
    users = dict(zip(seq["user_id"].to_pylist(), seq["user_index"].to_pylist(), strict=True))

    def named(split: str) -> dict[str, tuple[list[str], str]]:
        ex = ds.split(split)
        by_index = {v: k for k, v in users.items()}
        return {
            by_index[u]: ([ids[i] for i in h], ids[t])
            for u, h, t in zip(ex.user_index.tolist(), ex.histories, ex.targets.tolist(), strict=True)
        }

    assert named("test") == {"a": (["i1", "i2", "i3"], "i4"), "b": (["i1"], "i6")}
    assert named("valid") == {"a": (["i1", "i2"], "i3"), "c": (["i2"], "i3")}
    assert [list(map(ids.__getitem__, s)) for s in ds.train_sequences()] == [["i1", "i2"], ["i1"], ["i2"]]
    with pytest.raises(RaysysError, match="needs a cutoff"):
        load_or_prepare(cfg.model_copy(update={"time_cutoff": None}), progress=False)
