"""Synthetic interaction logs with planted sequential structure (the embedded default data).

    files = generate_logs(SyntheticConfig(num_users=40_000, num_interactions=1_000_000), Path("data/syn"))
    files.interactions  # Parquet: user_id string, item_id string, timestamp int64 (unix s), rating float32
    files.items         # Parquet: item_id string, title string, text string

What is planted, and which model can find it:
- topics: every item belongs to one topic, and its title and text are built from that topic's words, so
  items of a topic share words and a text encoder places an unseen item next to its topic mates;
- popularity: power law (Zipf) over the items of a topic and over topics;
- Markov chains: every item has a few likely successors in its topic, and after an item a user follows
  one of them with probability `follow_prob` -- a sequence model learns this, a popularity ranking cannot;
- sessions and drift: gaps are minutes within a session and about a day between sessions; at a session
  break a user often switches to another of their interest topics, and now and then replaces an interest
  with a new topic, so interests drift over time;
- noise (`noise_prob`, default none): a share of the interactions are items drawn by popularity from any
  topic, which no model can predict, and the user goes on from there -- real logs are this noisy;
- cold items: a slice of each topic's items (`cold_item_fraction`) appears only as one of a user's last
  two interactions (the leave-one-out valid/test targets), never in a training part. A cold target is
  drawn from the topic the user is in, so text can recommend it and item IDs cannot.
  `build_catalog(cfg).cold_item_ids()` lists them (for tests and cold-start slices).

Generation is vectorised: users are simulated in chunks of about `ROWS_PER_CHUNK` interactions, and one
step of the loop advances every user of a chunk by one interaction (users are ordered by sequence length,
longest first, so the users still active at a step are a prefix). Each chunk is written as one Parquet
row group, its rows in time order. The output depends only on the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysys.config import SyntheticConfig
from raysys.errors import RaysysError
from raysys.files import atomic_path

INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"
INTERACTIONS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float32())]
)
ITEMS_SCHEMA = pa.schema([("item_id", pa.string()), ("title", pa.string()), ("text", pa.string())])

ROWS_PER_CHUNK = 1_000_000  # interactions simulated (and written as one row group) at a time
MIN_USERS_PER_CHUNK = 256
SUCCESSOR_WEIGHTS = np.array([0.6, 0.3, 0.1])  # how a user picks among an item's planted successors
NUM_INTERESTS = 3  # topics a user is interested in at any time
SESSION_BREAK_PROB = 0.15  # chance that the gap before an interaction ends a session
SWITCH_AT_BREAK_PROB = 0.5  # chance of moving to another interest topic at a session break
SWITCH_IN_SESSION_PROB = 0.03
DRIFT_AT_BREAK_PROB = 0.1  # chance that a session break replaces one interest with a new topic
TOPIC_EXPONENT = 0.8  # Zipf exponent of topic popularity
SESSION_GAP_S = 120.0  # median gap inside a session
BREAK_GAP_S = 86_400.0  # median gap between sessions
START_TIME = 1_577_836_800  # 2020-01-01 UTC; users start within the following year
START_SPREAD_S = 365 * 86_400
WORDS_PER_TOPIC = 12
GENERIC_WORDS = np.array(
    [
        "guide",
        "edition",
        "classic",
        "collection",
        "volume",
        "series",
        "deluxe",
        "original",
        "special",
        "complete",
        "essential",
        "premium",
        "mini",
        "pro",
        "set",
        "pack",
    ]
)
SYLLABLES = np.array([c + v for c in "bdfgklmnprstvz" for v in "aeiou"])


@dataclass(frozen=True)
class SyntheticFiles:
    """The two Parquet files of a generated log."""

    interactions: Path
    items: Path


@dataclass(frozen=True)
class TopicSampler:
    """Draws items of given topics by popularity: one CDF over items sorted by topic.

    `cdf[j] = topic_of(items[j]) + cumulative share of items[j] within its topic`; a topic's last value is
    exactly topic + 1, so `searchsorted(cdf, topic + u)` with u in [0, 1) lands inside that topic.
    """

    items: np.ndarray  # [M] int32 item indices, grouped by topic
    cdf: np.ndarray  # [M] float64, increasing

    def sample(self, topics: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Items [N] int32 for topics [N] and uniforms u [N] in [0, 1)."""
        return self.items[np.searchsorted(self.cdf, topics + u, side="right")]


@dataclass(frozen=True)
class ItemCatalog:
    """Items with their topics, popularity, successors and text (index = internal item index)."""

    item_ids: pa.Array  # [I] string, external ids "i<n>" (a permutation, so ids say nothing of topics)
    topic: np.ndarray  # [I] int32
    is_cold: np.ndarray  # [I] bool
    successors: np.ndarray  # [I, len(SUCCESSOR_WEIGHTS)] int32 warm items of the same topic
    warm: TopicSampler
    cold: TopicSampler | None  # None when cold_item_fraction == 0
    topic_cdf: np.ndarray  # [T] float64 cumulative topic popularity
    titles: pa.Array  # [I] string
    texts: pa.Array  # [I] string

    def cold_item_ids(self) -> list[str]:
        """External ids of the cold items."""
        return self.item_ids.filter(pa.array(self.is_cold)).to_pylist()

    def sample_topics(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """[n] int64 topics drawn by topic popularity."""
        return np.searchsorted(self.topic_cdf, rng.random(n), side="right")


def generate_logs(cfg: SyntheticConfig, out_dir: Path) -> SyntheticFiles:
    """Generate the interaction log and the item file into `out_dir` (see the module docstring).

    Deterministic in `cfg` (seed included); writes through temporary files so a half-written log is never
    mistaken for a complete one. Memory stays at about one chunk of ROWS_PER_CHUNK interactions.
    """
    _validate(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = build_catalog(cfg)
    lengths = sequence_lengths(cfg, np.random.default_rng([cfg.seed, 1]))
    files = SyntheticFiles(interactions=out_dir / INTERACTIONS_FILE, items=out_dir / ITEMS_FILE)
    _write_interactions(cfg, catalog, lengths, files.interactions)
    _write_items(catalog, files.items)
    return files


def _validate(cfg: SyntheticConfig) -> None:
    if cfg.num_interactions < 3 * cfg.num_users:
        raise RaysysError(
            f"num_interactions ({cfg.num_interactions}) must be at least 3 x num_users ({cfg.num_users}) "
            "so every user has a train, valid and test interaction",
            where="data.synthetic",
        )
    if cfg.num_items < 2 * cfg.num_topics:
        raise RaysysError(
            f"num_items ({cfg.num_items}) must be at least 2 x num_topics ({cfg.num_topics})",
            where="data.synthetic",
            hint="every topic needs a warm item and room for a cold one",
        )
    if cfg.num_topics * WORDS_PER_TOPIC > len(SYLLABLES) ** 3:
        raise RaysysError(f"num_topics ({cfg.num_topics}) is too large for the word generator", where="data.synthetic")


def build_catalog(cfg: SyntheticConfig) -> ItemCatalog:
    """The item side of the world: topics, warm/cold split, popularity, successors and text."""
    rng = np.random.default_rng([cfg.seed, 0])
    num_items, num_topics = cfg.num_items, cfg.num_topics
    topic = (np.arange(num_items) % num_topics).astype(np.int32)  # equal-size topics
    order = np.lexsort((rng.random(num_items), topic))  # items grouped by topic, random within a topic
    topic_size = np.bincount(topic, minlength=num_topics)
    rank = np.arange(num_items) - np.repeat(np.cumsum(topic_size) - topic_size, topic_size)  # rank in topic
    num_cold = _cold_per_topic(cfg.cold_item_fraction, topic_size)
    cold_in_order = rank < num_cold[topic[order]]
    is_cold = np.zeros(num_items, dtype=bool)
    is_cold[order[cold_in_order]] = True
    # Popularity ranks count separately among a topic's warm and cold items: both have a head and a tail.
    pop_rank = np.where(cold_in_order, rank, rank - num_cold[topic[order]])
    weight = (pop_rank + 1.0) ** -cfg.popularity_exponent
    warm = _topic_sampler(order[~cold_in_order], topic[order[~cold_in_order]], weight[~cold_in_order], num_topics)
    cold = None
    if cold_in_order.any():
        cold = _topic_sampler(order[cold_in_order], topic[order[cold_in_order]], weight[cold_in_order], num_topics)
    topic_weight = (rng.permutation(num_topics) + 1.0) ** -TOPIC_EXPONENT
    titles, texts = _item_text(rng, topic, num_topics)
    item_ids = pa.array(np.char.add("i", rng.permutation(num_items).astype(str)))
    return ItemCatalog(
        item_ids=item_ids,
        topic=topic,
        is_cold=is_cold,
        successors=_successors(rng, warm, topic),
        warm=warm,
        cold=cold,
        topic_cdf=_closed_cdf(topic_weight),
        titles=titles,
        texts=texts,
    )


def _cold_per_topic(fraction: float, topic_size: np.ndarray) -> np.ndarray:
    """[T] cold items per topic: round(fraction * num_items) spread evenly, but at least one per topic (so a
    cold target can always stay in the user's topic) and at most all but one (a topic keeps a warm item)."""
    if fraction == 0:
        return np.zeros(len(topic_size), dtype=np.int64)
    total = round(fraction * topic_size.sum())
    even = total // len(topic_size) + (np.arange(len(topic_size)) < total % len(topic_size))
    return np.clip(even, 1, topic_size - 1)


def _closed_cdf(weight: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weight) / weight.sum()
    cdf[-1] = 1.0  # so a uniform in [0, 1) never falls past the end
    return cdf


def _topic_sampler(items: np.ndarray, topics: np.ndarray, weight: np.ndarray, num_topics: int) -> TopicSampler:
    """Items and weights grouped by topic (every topic present) -> TopicSampler."""
    total = np.bincount(topics, weights=weight, minlength=num_topics)
    cum = np.cumsum(weight)
    before = np.concatenate([[0.0], np.cumsum(total)[:-1]])[topics]  # weight of the topics before
    share = (cum - before) / total[topics]
    last = np.r_[topics[1:] != topics[:-1], True]
    share[last] = 1.0
    return TopicSampler(items=items.astype(np.int32), cdf=topics + share)


def _successors(rng: np.random.Generator, warm: TopicSampler, topic: np.ndarray) -> np.ndarray:
    """[I, K] popular warm items of each item's topic, not the item itself (where the topic allows)."""
    k = len(SUCCESSOR_WEIGHTS)
    topics = np.repeat(topic, k)
    pos = np.searchsorted(warm.cdf, topics + rng.random(len(topics)), side="right")
    start = np.searchsorted(warm.cdf, topics, side="right")
    end = np.searchsorted(warm.cdf, topics + 1.0, side="right")
    self_loop = warm.items[pos] == np.repeat(np.arange(len(topic)), k)
    pos = np.where(self_loop, np.where(pos + 1 < end, pos + 1, start), pos)  # the next item of the topic
    return warm.items[pos].reshape(len(topic), k)


def _item_text(rng: np.random.Generator, topic: np.ndarray, num_topics: int) -> tuple[pa.Array, pa.Array]:
    """Titles "<topic word> <topic word> <generic word>" and texts that add four more topic words and one
    word of a random topic (noise). Words are pronounceable nonsense, distinct across topics."""
    num_words = num_topics * WORDS_PER_TOPIC
    code = rng.choice(len(SYLLABLES) ** 3, size=num_words, replace=False)
    s = len(SYLLABLES)
    words = pa.array(np.char.add(np.char.add(SYLLABLES[code // s**2], SYLLABLES[code // s % s]), SYLLABLES[code % s]))
    pick = topic[:, None] * WORDS_PER_TOPIC + rng.integers(0, WORDS_PER_TOPIC, size=(len(topic), 6))
    topic_word = [words.take(pa.array(pick[:, j])) for j in range(pick.shape[1])]
    generic = pa.array(GENERIC_WORDS[rng.integers(0, len(GENERIC_WORDS), size=len(topic))])
    noise = words.take(pa.array(rng.integers(0, num_words, size=len(topic))))
    title = pc.binary_join_element_wise(topic_word[0], topic_word[1], generic, " ")
    body = pc.binary_join_element_wise(*topic_word[2:], "with", noise, " ")
    return title, pc.binary_join_element_wise(title, body, ": ")


def sequence_lengths(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """[U] int64 long-tailed (log-normal) sequence lengths, each >= the minimum, summing to num_interactions."""
    num_users = cfg.num_users
    minimum = min(cfg.min_sequence_length, cfg.num_interactions // num_users)
    extra_total = cfg.num_interactions - minimum * num_users
    raw = rng.lognormal(0.0, 1.0, size=num_users)
    extra = raw / raw.sum() * extra_total
    lengths = minimum + np.floor(extra).astype(np.int64)
    short = cfg.num_interactions - int(lengths.sum())
    lengths[np.argsort(np.floor(extra) - extra, kind="stable")[:short]] += 1  # largest remainders first
    return lengths


def _write_interactions(cfg: SyntheticConfig, catalog: ItemCatalog, lengths: np.ndarray, path: Path) -> None:
    mean_len = max(1, cfg.num_interactions // cfg.num_users)
    users_per_chunk = max(MIN_USERS_PER_CHUNK, ROWS_PER_CHUNK // mean_len)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, INTERACTIONS_SCHEMA) as writer:
        for chunk, first in enumerate(range(0, cfg.num_users, users_per_chunk)):
            users = np.arange(first, min(first + users_per_chunk, cfg.num_users))
            rng = np.random.default_rng([cfg.seed, 2, chunk])
            table = _simulate_chunk(cfg, catalog, users, lengths[users], rng)
            writer.write_table(table, row_group_size=2 * ROWS_PER_CHUNK)  # a chunk is one row group


def _write_items(catalog: ItemCatalog, path: Path) -> None:
    number = pc.cast(pc.utf8_slice_codeunits(catalog.item_ids, 1), pa.int64())
    by_id = pc.sort_indices(number)  # rows in id order, which says nothing of topics
    table = pa.table(
        [catalog.item_ids.take(by_id), catalog.titles.take(by_id), catalog.texts.take(by_id)], schema=ITEMS_SCHEMA
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


@dataclass
class _UserState:
    """What the simulation carries per user of a chunk (row j = the j-th longest sequence)."""

    item: np.ndarray  # [n] int32 the last item
    time: np.ndarray  # [n] int64 the last timestamp
    interests: np.ndarray  # [n, NUM_INTERESTS] topics


def _simulate_chunk(
    cfg: SyntheticConfig, catalog: ItemCatalog, users: np.ndarray, lengths: np.ndarray, rng: np.random.Generator
) -> pa.Table:
    """Simulate the users of one chunk; returns their interactions as a table in timestamp order.

    Rows are laid out step-major: step t holds users 0..active[t]-1 (sorted longest first), so each step
    writes one contiguous slice.
    """
    by_length = np.argsort(-lengths, kind="stable")
    length = lengths[by_length]
    active = np.searchsorted(-length, -np.arange(length[0]), side="left")  # [T] users with length > t
    step_start = np.concatenate([[0], np.cumsum(active)])
    items = np.empty(step_start[-1], dtype=np.int32)
    times = np.empty(step_start[-1], dtype=np.int64)
    ratings = np.empty(step_start[-1], dtype=np.float32)
    n = len(users)
    interests = catalog.sample_topics(rng, n * NUM_INTERESTS).reshape(n, NUM_INTERESTS)
    first = catalog.warm.sample(interests[:, 0], rng.random(n))
    state = _UserState(item=first, time=START_TIME + rng.integers(0, START_SPREAD_S, size=n), interests=interests)
    followed = np.zeros(n, dtype=bool)
    for t, m in enumerate(active):
        if t > 0:
            followed = _step(cfg, catalog, state, length[:m] - t, rng)
        rows = slice(step_start[t], step_start[t + 1])
        items[rows], times[rows] = state.item[:m], state.time[:m]
        ratings[rows] = _ratings(rng, followed[:m])
    user_of_row = (np.arange(len(items)) - np.repeat(step_start[:-1], active)).astype(np.int64)
    in_time_order = np.argsort(times, kind="stable")
    user_ids = pa.array(np.char.add("u", users[by_length].astype(str)))
    return pa.table(
        [
            user_ids.take(pa.array(user_of_row[in_time_order])),
            catalog.item_ids.take(pa.array(items[in_time_order])),
            pa.array(times[in_time_order]),
            pa.array(ratings[in_time_order]),
        ],
        schema=INTERACTIONS_SCHEMA,
    )


def _step(
    cfg: SyntheticConfig, catalog: ItemCatalog, state: _UserState, remaining: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Advance the first m = len(remaining) users by one interaction, in place; returns [m] bool, whether
    each user followed a planted successor. `remaining` counts this interaction and those after it."""
    m = len(remaining)
    last, interests = state.item[:m], state.interests[:m]
    session_break = rng.random(m) < SESSION_BREAK_PROB
    break_gap = rng.lognormal(np.log(BREAK_GAP_S), 1.2, m)
    gap = np.where(session_break, break_gap, rng.lognormal(np.log(SESSION_GAP_S), 1.0, m))
    state.time[:m] += 1 + gap.astype(np.int64)  # strictly increasing per user: no ties to break

    drift = session_break & (rng.random(m) < DRIFT_AT_BREAK_PROB)
    slot = rng.integers(0, NUM_INTERESTS, size=m)
    interests[drift, slot[drift]] = catalog.sample_topics(rng, int(drift.sum()))

    r = rng.random(m)
    p_switch = np.where(session_break, SWITCH_AT_BREAK_PROB, SWITCH_IN_SESSION_PROB)
    switch = r < p_switch
    follow = ~switch & (r < p_switch + (1.0 - p_switch) * cfg.follow_prob)
    topic = np.where(switch, interests[np.arange(m), rng.integers(0, NUM_INTERESTS, size=m)], catalog.topic[last])
    choice = np.searchsorted(np.cumsum(SUCCESSOR_WEIGHTS), rng.random(m) * SUCCESSOR_WEIGHTS.sum(), side="right")
    nxt = np.where(follow, catalog.successors[last, choice], catalog.warm.sample(topic, rng.random(m)))
    if cfg.noise_prob > 0:  # drawn only then: a log without noise is the same as before the option
        noise = rng.random(m) < cfg.noise_prob
        k = int(noise.sum())
        nxt[noise] = catalog.warm.sample(catalog.sample_topics(rng, k), rng.random(k))
        follow &= ~noise

    if catalog.cold is not None:
        # One of the last two interactions (the valid/test targets) may be a cold item of the user's topic.
        cold = (remaining <= 2) & (rng.random(m) < cfg.cold_target_prob)
        nxt[cold] = catalog.cold.sample(catalog.topic[nxt[cold]], rng.random(int(cold.sum())))
    state.item[:m] = nxt
    return follow


def _ratings(rng: np.random.Generator, followed: np.ndarray) -> np.ndarray:
    """[m] float32 whole stars 1..5; following a planted chain is rated a little higher."""
    mean = np.where(followed, 4.1, 3.5)
    return np.clip(np.rint(mean + rng.normal(0.0, 0.9, size=len(followed))), 1, 5).astype(np.float32)
