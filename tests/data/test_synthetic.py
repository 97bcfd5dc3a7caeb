"""The synthetic log: deterministic, well-typed, cold items only as valid/test targets, and a planted
sequential structure that a first-order Markov model finds and a popularity ranking does not."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raysys.config import SyntheticConfig
from raysys.data import synthetic
from raysys.data.synthetic import build_catalog, generate_logs
from raysys.errors import RaysysError

CFG = SyntheticConfig(num_users=2000, num_items=1000, num_interactions=50_000, num_topics=20, seed=3)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The module's log, sorted by (user, time) with each row's position and its user's length."""
    files = generate_logs(CFG, tmp_path_factory.mktemp("synthetic"))
    frame = pq.read_table(files.interactions).to_pandas()
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    frame["position"] = frame.groupby("user_id").cumcount()
    frame["length"] = frame.groupby("user_id")["item_id"].transform("size")
    return frame


def test_same_seed_same_files_other_seed_different(tmp_path: Path) -> None:
    small = CFG.model_copy(update={"num_users": 300, "num_items": 200, "num_interactions": 5000})
    a = generate_logs(small, tmp_path / "a")
    b = generate_logs(small, tmp_path / "b")
    c = generate_logs(small.model_copy(update={"seed": small.seed + 1}), tmp_path / "c")
    assert a.interactions.read_bytes() == b.interactions.read_bytes()
    assert a.items.read_bytes() == b.items.read_bytes()
    assert not pq.read_table(a.interactions).equals(pq.read_table(c.interactions))
    assert not pq.read_table(a.items).equals(pq.read_table(c.items))


def test_sizes_columns_and_types(tmp_path: Path) -> None:
    files = generate_logs(CFG, tmp_path)
    interactions, items = pq.read_table(files.interactions), pq.read_table(files.items)
    assert interactions.schema == synthetic.INTERACTIONS_SCHEMA
    assert items.schema == synthetic.ITEMS_SCHEMA
    assert interactions.num_rows == CFG.num_interactions
    assert items.num_rows == CFG.num_items
    assert all(column.null_count == 0 for column in interactions.columns + items.columns)
    frame = interactions.to_pandas()
    assert frame["user_id"].nunique() == CFG.num_users
    assert frame["user_id"].str.fullmatch(r"u\d+").all() and frame["item_id"].str.fullmatch(r"i\d+").all()
    assert set(frame["item_id"]) <= set(items["item_id"].to_pylist())
    assert frame["rating"].between(1, 5).all()
    assert (frame["timestamp"] >= synthetic.START_TIME).all()


def test_sequences_are_long_tailed_with_increasing_time(log: pd.DataFrame) -> None:
    lengths = log.groupby("user_id").size()
    assert lengths.min() >= CFG.min_sequence_length
    assert lengths.max() > 5 * lengths.median()  # a long tail, not a fixed length
    same_user = log["user_id"].to_numpy()[1:] == log["user_id"].to_numpy()[:-1]
    gaps = np.diff(log["timestamp"].to_numpy())[same_user]
    assert (gaps > 0).all()  # strictly increasing: no ties for a stable sort to break
    assert np.median(gaps) < 3600 < np.quantile(gaps, 0.95)  # short gaps within sessions, long between


def test_popularity_is_a_power_law(log: pd.DataFrame) -> None:
    counts = log["item_id"].value_counts().to_numpy()
    assert counts[0] > 20 * np.median(counts)


def test_cold_items_are_only_the_last_two_interactions(log: pd.DataFrame) -> None:
    cold = set(build_catalog(CFG).cold_item_ids())
    assert len(cold) == round(CFG.cold_item_fraction * CFG.num_items)
    is_cold = log["item_id"].isin(cold)
    from_end = (log["length"] - log["position"])[is_cold]
    assert from_end.between(1, 2).all()  # valid (second-last) or test (last) target, never in training
    targets = log[log["length"] - log["position"] <= 2]
    share = targets["item_id"].isin(cold).mean()
    assert 0.5 * CFG.cold_target_prob < share < 1.5 * CFG.cold_target_prob
    assert log.loc[is_cold, "item_id"].nunique() > 0.8 * len(cold)


def test_item_text_shares_topic_words(log: pd.DataFrame) -> None:
    """A cold target's text shares topic words with the item before it far more often than a random item's."""
    catalog = build_catalog(CFG)
    not_topical = set(synthetic.GENERIC_WORDS) | {"with"}
    texts = zip(catalog.item_ids.to_pylist(), catalog.texts.to_pylist(), strict=True)
    words = {item: set(re.findall(r"[a-z]+", text)) - not_topical for item, text in texts}
    rows = np.flatnonzero(log["item_id"].isin(catalog.cold_item_ids()).to_numpy())
    previous, target = log["item_id"].to_numpy()[rows - 1], log["item_id"].to_numpy()[rows]
    shuffled = np.random.default_rng(0).permutation(target)
    shared = np.mean([bool(words[p] & words[t]) for p, t in zip(previous, target, strict=True)])
    by_chance = np.mean([bool(words[p] & words[t]) for p, t in zip(previous, shuffled, strict=True)])
    assert shared > 0.7
    assert shared > 3 * by_chance


def test_markov_beats_popularity_on_test_hr10(log: pd.DataFrame) -> None:
    """Chronological leave-one-out; first-order transition counts on the train parts vs item counts."""
    item, _ = pd.factorize(log["item_id"])
    position, length = log["position"].to_numpy(), log["length"].to_numpy()
    train = position < length - 2
    num_items = item.max() + 1
    popularity = np.bincount(item[train], minlength=num_items).astype(np.float64)
    pair = train[:-1] & train[1:] & (log["user_id"].to_numpy()[:-1] == log["user_id"].to_numpy()[1:])
    transitions = np.zeros((num_items, num_items))
    np.add.at(transitions, (item[:-1][pair], item[1:][pair]), 1.0)
    test = np.flatnonzero(position == length - 1)
    last_history_item = item[test - 1]  # the test history ends with the valid target
    markov_scores = transitions[last_history_item] + 1e-6 * popularity  # popularity breaks ties
    hr_markov = _hit_rate_at_10(markov_scores, item[test])
    hr_popularity = _hit_rate_at_10(np.broadcast_to(popularity, markov_scores.shape), item[test])
    assert hr_markov >= 1.5 * hr_popularity
    assert hr_markov > 0.3


def test_noise_takes_users_off_the_last_item_s_topic(tmp_path: Path) -> None:
    """noise_prob=0.5: about half the steps leave the last item's topic by chance (a topic-popularity
    draw), so consecutive items share a topic far less often; the log keeps its size."""
    quiet = generate_logs(CFG, tmp_path / "quiet")
    noisy = generate_logs(CFG.model_copy(update={"noise_prob": 0.5}), tmp_path / "noisy")
    catalog = build_catalog(CFG)
    topic_of = dict(zip(catalog.item_ids.to_pylist(), catalog.topic.tolist(), strict=True))

    def same_topic_share(path: Path) -> float:
        frame = pq.read_table(path).to_pandas().sort_values(["user_id", "timestamp"], kind="stable")
        topic, user = frame["item_id"].map(topic_of).to_numpy(), frame["user_id"].to_numpy()
        pair = user[1:] == user[:-1]
        return float((topic[1:] == topic[:-1])[pair].mean())

    quiet_share, noisy_share = same_topic_share(quiet.interactions), same_topic_share(noisy.interactions)
    assert quiet_share > 0.9 and noisy_share < quiet_share - 0.35, (quiet_share, noisy_share)
    assert pq.read_table(noisy.interactions).num_rows == CFG.num_interactions


def _hit_rate_at_10(scores: np.ndarray, targets: np.ndarray) -> float:
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    return float((top == targets[:, None]).any(axis=1).mean())


def test_many_chunks_keep_every_invariant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "ROWS_PER_CHUNK", 4000)
    monkeypatch.setattr(synthetic, "MIN_USERS_PER_CHUNK", 16)
    cfg = CFG.model_copy(update={"num_users": 600, "num_interactions": 15_000})
    files = generate_logs(cfg, tmp_path)
    parquet = pq.ParquetFile(files.interactions)
    assert parquet.metadata.num_row_groups == 4  # 600 users, 4000 // 25 = 160 per chunk
    frame = parquet.read().to_pandas()
    assert len(frame) == cfg.num_interactions and frame["user_id"].nunique() == cfg.num_users
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    from_end = frame.groupby("user_id").cumcount(ascending=False)
    assert (from_end[frame["item_id"].isin(build_catalog(cfg).cold_item_ids())] <= 1).all()


def test_lengths_sum_exactly_and_respect_the_minimum() -> None:
    cfg = SyntheticConfig(num_users=777, num_interactions=12_345, min_sequence_length=6)
    lengths = synthetic.sequence_lengths(cfg, np.random.default_rng(0))
    assert lengths.sum() == 12_345 and lengths.min() == 6


@pytest.mark.parametrize(
    ("update", "message"),
    [({"num_users": 5000, "num_interactions": 10_000}, "3 x num_users"), ({"num_topics": 600}, "2 x num_topics")],
)
def test_impossible_configs_are_errors(update: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(RaysysError, match=message):
        generate_logs(CFG.model_copy(update=update), tmp_path)


def test_no_cold_items_when_the_fraction_is_zero(tmp_path: Path) -> None:
    cfg = CFG.model_copy(update={"num_users": 300, "num_interactions": 5000, "cold_item_fraction": 0.0})
    assert build_catalog(cfg).cold_item_ids() == []
    assert pc.count_distinct(pq.read_table(generate_logs(cfg, tmp_path).interactions)["item_id"]).as_py() > 100
