"""Full-ranking evaluation of next-item scorers on the leave-one-out splits, protocol in code.

    metrics = evaluate_split(model.next_item_scores, dataset.split("valid"), dataset.num_items,
                             cfg.eval, max_len=cfg.data.max_len)      # {"ndcg@10": ..., "hr@10": ...}
    nested = evaluate_dataset(lambda split: scorer, dataset, cfg.eval, max_len)
                                        # {"valid": {...}, "test": {...}, "test/short_history": {...}, ...}

The protocol: every rankable item (indices 2..num_items-1; pad 0 and mask 1 never) is ranked; the
user's whole history is excluded from the candidates (`exclude_seen`) except the target itself,
which stays rankable even when it was seen before (repeat consumption); ties count against the
target (see `raysys.eval.metrics`). Sampled-negative metrics appear only when
`sampled_negatives > 0`, always under "sampled_*" keys.

Distributed: inside a torch.distributed process group (e.g. a Ray Train worker) every rank calls
with the same examples; each rank scores its strided shard and the partial sums are all-reduced
once, so every rank returns the metrics of all users. `presharded=True` says the caller already
gave each rank its own disjoint examples; `sync=False` evaluates locally without communicating.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from raysys.config import EvalConfig
from raysys.data.batches import pad_histories
from raysys.data.dataset import FIRST_ITEM_INDEX, PreparedDataset, SplitExamples
from raysys.errors import RaysysError
from raysys.eval.collectives import all_reduce, in_process_group, rank, world_size
from raysys.eval.metrics import RankingSums, ranks_and_top_k, sampled_ranks

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # input_ids [B, L] long -> scores [B, num_items]
ALL = "all"


@dataclass(frozen=True)
class EvalBatch:
    """One batch of evaluation users, with everything the protocol needs besides the scores."""

    rows: np.ndarray  # [B] positions of these users in their SplitExamples
    input_ids: torch.Tensor  # [B, L] int64, left-padded most recent max_len history items
    targets: torch.Tensor  # [B] int64
    excluded: tuple[torch.Tensor, torch.Tensor]  # (rows [E], items [E]) int64: may not be ranked for that user
    negatives: torch.Tensor | None  # [B, S] int64 sampled negatives (-1 = none), or None


def evaluate_split(
    score_fn: ScoreFn,
    examples: SplitExamples,
    num_items: int,
    cfg: EvalConfig,
    max_len: int,
    *,
    sync: bool | None = None,
    presharded: bool = False,
) -> dict[str, float]:
    """Full-ranking metrics of one split: "hr@K", "ndcg@K", "mrr@K", "recall@K", "coverage@K" for
    each K in cfg.ks ("sampled_*" too when cfg.sampled_negatives > 0), and "num_users".

    score_fn maps input_ids [B, L] (left-padded via `pad_histories`) to scores [B, num_items].
    sync: all-reduce over the torch.distributed process group (None = when one is initialised).
    """
    slices = {ALL: np.ones(len(examples.targets), dtype=bool)}
    return evaluate_slices(score_fn, examples, num_items, cfg, max_len, slices, sync=sync, presharded=presharded)[ALL]


def evaluate_slices(
    score_fn: ScoreFn,
    examples: SplitExamples,
    num_items: int,
    cfg: EvalConfig,
    max_len: int,
    slices: dict[str, np.ndarray],
    *,
    sync: bool | None = None,
    presharded: bool = False,
) -> dict[str, dict[str, float]]:
    """`evaluate_split` for several user subsets at once (each scored once): slices maps a name to
    a bool mask [N] over the examples; returns the metrics of each slice."""
    sync = resolve_sync(sync)
    sums = {name: RankingSums.empty(check_ks(cfg), num_items, cfg.sampled_negatives > 0) for name in slices}
    rows = local_rows(len(examples.targets), sync, presharded)
    for batch in iter_eval_batches(examples, num_items, cfg, max_len, rows):
        add_batch(sums, score_batch(score_fn, batch, num_items), batch, slices)
    if sync:
        sums = all_reduce_sums(sums)
    return {name: part.metrics() for name, part in sums.items()}


def choose_on_valid(
    score_fns: tuple[ScoreFn, ...],
    combine: Callable[[list[torch.Tensor], float], torch.Tensor],
    grid: tuple[float, ...],
    valid: SplitExamples,
    num_items: int,
    cfg: EvalConfig,
    max_len: int,
    *,
    metric: str = "ndcg@10",
    sync: bool | None = None,
) -> tuple[float, dict[float, float]]:
    """The grid value whose combined scores have the best validation `metric` (the smallest such value on
    a tie), and every value's metric. Each batch is scored once by every score_fn ([B, num_items] each);
    `combine(scores, value)` gives a new [B, num_items] tensor per value. Inside a process group each
    rank scores its shard and all values' sums are all-reduced together once."""
    ks = check_ks(cfg)
    if metric.partition("@")[2] not in {str(k) for k in ks}:
        raise RaysysError(f"validation metric {metric!r} needs its cut-off in eval.ks={list(ks)}", where="eval.ks")
    sync = resolve_sync(sync)
    all_users = {ALL: np.ones(len(valid.targets), dtype=bool)}
    sums = {str(v): RankingSums.empty(ks, num_items, cfg.sampled_negatives > 0) for v in grid}
    for batch in iter_eval_batches(valid, num_items, cfg, max_len, local_rows(len(valid.targets), sync, False)):
        scores = [score_batch(fn, batch, num_items) for fn in score_fns]
        for v in grid:
            add_batch({ALL: sums[str(v)]}, combine(scores, v), batch, all_users)
    if sync:
        sums = all_reduce_sums(sums)
    values = {v: sums[str(v)].metrics()[metric] for v in grid}
    return max(grid, key=lambda v: (values[v], -v)), values


def evaluate_dataset(
    scorer_for_split: Callable[[str], ScoreFn],
    dataset: PreparedDataset,
    cfg: EvalConfig,
    max_len: int,
    *,
    sync: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of "valid", "valid/cold_items", "test", "test/short_history", "test/cold_items" and
    "test/warm_items" (see `slice_masks`).

    scorer_for_split("valid" | "test") gives the score_fn for that split, so a baseline can be fitted
    on exactly the histories the protocol allows at that point (a trained model ignores the name).
    """
    seen = train_items(dataset)
    valid = dataset.split("valid")
    valid_slices = {"valid": np.ones(len(valid.targets), dtype=bool), "valid/cold_items": cold_targets(valid, seen)}
    out = evaluate_slices(scorer_for_split("valid"), valid, dataset.num_items, cfg, max_len, valid_slices, sync=sync)
    test = dataset.split("test")
    slices = slice_masks(test, seen, cfg.short_history_max)
    out.update(evaluate_slices(scorer_for_split("test"), test, dataset.num_items, cfg, max_len, slices, sync=sync))
    return out


def slice_masks(test: SplitExamples, seen_in_train: np.ndarray, short_history_max: int) -> dict[str, np.ndarray]:
    """Bool masks [N] over the test examples: "test" (everyone), "test/short_history" (at most
    `short_history_max` interactions in the whole sequence: train + valid + test), "test/cold_items"
    (targets that occur in no user's training part) and "test/warm_items" (the others)."""
    full_lengths = np.fromiter((len(h) + 1 for h in test.histories), dtype=np.int64, count=len(test.histories))
    cold = cold_targets(test, seen_in_train)
    return {
        "test": np.ones(len(test.targets), dtype=bool),
        "test/short_history": full_lengths <= short_history_max,
        "test/cold_items": cold,
        "test/warm_items": ~cold,
    }


def slice_metric(metrics: dict[str, dict[str, float]], part: str, key: str) -> float | None:
    """metrics[part][key], or None when that split or slice is absent or holds no users (its zeros
    would read as a measured 0)."""
    values = metrics.get(part, {})
    return None if values.get("num_users", 1) == 0 else values.get(key)


def cold_targets(examples: SplitExamples, seen_in_train: np.ndarray) -> np.ndarray:
    """[N] bool: the example's target occurs in no user's training part (a cold item)."""
    return ~np.isin(examples.targets, seen_in_train)


def train_items(dataset: PreparedDataset) -> np.ndarray:
    """Sorted unique item indices that occur in some user's training part."""
    parts = dataset.train_sequences()
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int32)


# ------------------------------------------------------------------------------------ batch machinery


def iter_eval_batches(
    examples: SplitExamples, num_items: int, cfg: EvalConfig, max_len: int, rows: np.ndarray | None = None
) -> Iterator[EvalBatch]:
    """The examples at `rows` (default: all) in batches of cfg.batch_size users, shortest histories
    first, each batch padded only to its longest history (at most `max_len`): on short-history logs
    most of a full-width batch would be padding. Scores do not depend on the padding, and the metrics
    are sums over users, so the order changes nothing but the time."""
    rows = np.arange(len(examples.targets)) if rows is None else np.asarray(rows)
    lengths = np.fromiter((len(examples.histories[i]) for i in rows), dtype=np.int64, count=len(rows))
    rows = rows[np.argsort(lengths, kind="stable")]
    for start in range(0, len(rows), cfg.batch_size):
        idx = rows[start : start + cfg.batch_size]
        histories = [examples.histories[i] for i in idx]
        width = min(max_len, max(1, max(len(h) for h in histories)))
        targets = torch.from_numpy(examples.targets[idx].astype(np.int64))
        negatives = None
        if cfg.sampled_negatives > 0:
            negatives = sample_negatives(
                examples.user_index[idx], histories, targets.numpy(), num_items, cfg.sampled_negatives, cfg.seed
            )
        yield EvalBatch(
            rows=idx,
            input_ids=torch.from_numpy(pad_histories(histories, width)),
            targets=targets,
            excluded=excluded_pairs(histories, cfg.exclude_seen),
            negatives=negatives,
        )


def excluded_pairs(histories: list[np.ndarray], exclude_seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [E], items [E]) int64: every item of each user's history when `exclude_seen` (the target
    stays rankable even when seen: `ranks_and_top_k` puts it back), else nothing."""
    if not exclude_seen or not histories:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    lengths = torch.tensor([len(h) for h in histories], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    return rows, torch.from_numpy(np.concatenate(histories).astype(np.int64))


def sample_negatives(
    user_index: np.ndarray,
    histories: list[np.ndarray],
    targets: np.ndarray,
    num_items: int,
    num_negatives: int,
    seed: int,
) -> torch.Tensor:
    """[B, num_negatives] int64: per user, items drawn uniformly without replacement from the
    rankable items outside their history and target (-1 pads when fewer exist).

    User u's draw comes from a generator seeded (seed, u), so it does not depend on batching or
    on how users are sharded over workers.
    """
    pool = num_items - FIRST_ITEM_INDEX
    out = np.full((len(histories), num_negatives), -1, dtype=np.int64)
    for row, (user, history, target) in enumerate(zip(user_index, histories, targets, strict=True)):
        excluded = np.unique(np.append(history, target))
        excluded = excluded[excluded >= FIRST_ITEM_INDEX]
        want = min(num_negatives, pool - len(excluded))
        if want <= 0:
            continue
        rng = np.random.default_rng([seed, int(user)])
        # A uniform draw of want + |excluded| distinct items holds at least `want` allowed ones, and
        # dropping the excluded keeps the rest a uniform sample of the allowed items.
        draw = rng.choice(pool, size=min(pool, want + len(excluded)), replace=False) + FIRST_ITEM_INDEX
        out[row, :want] = draw[~np.isin(draw, excluded)][:want]
    return torch.from_numpy(out)


def score_batch(score_fn: ScoreFn, batch: EvalBatch, num_items: int) -> torch.Tensor:
    """score_fn on a batch, checked: [B, num_items] float32 without NaN."""
    with torch.no_grad():
        scores = score_fn(batch.input_ids)
    expected = (len(batch.rows), num_items)
    if tuple(scores.shape) != expected:
        raise RaysysError(
            f"the scorer returned scores of shape {tuple(scores.shape)}, expected {expected}",
            where="evaluation",
            hint="the model and the dataset must share the item index space (same num_items)",
        )
    scores = scores.float()
    if torch.isnan(scores.amax(dim=1)).any():  # a row's max is NaN iff the row holds one (a tenth of isnan's time)
        raise RaysysError("the scorer returned NaN scores", where="evaluation", hint="check the model weights")
    return scores


def add_batch(
    sums: dict[str, RankingSums], scores: torch.Tensor, batch: EvalBatch, slices: dict[str, np.ndarray]
) -> None:
    """Add one scored batch to the sums of every slice (slices[name]: bool [N] over the examples)."""
    device = scores.device
    targets = batch.targets.to(device)
    excluded = (batch.excluded[0].to(device), batch.excluded[1].to(device))
    any_sums = next(iter(sums.values()))
    ranks, top_items = ranks_and_top_k(scores, targets, excluded, max(any_sums.ks))
    ranks, top_items = ranks.cpu(), top_items.cpu()
    ranks_sampled = None
    if batch.negatives is not None:
        ranks_sampled = sampled_ranks(scores, targets, batch.negatives.to(device)).cpu()
    for name, mask in slices.items():
        keep = torch.from_numpy(mask[batch.rows])
        sums[name].add(ranks[keep], top_items[keep], None if ranks_sampled is None else ranks_sampled[keep])


def check_ks(cfg: EvalConfig) -> tuple[int, ...]:
    """cfg.ks as a tuple, after checking every cut-off is a positive integer."""
    if not cfg.ks or any(k < 1 for k in cfg.ks):
        raise RaysysError(f"cut-offs must be positive integers, got {cfg.ks}", where="eval.ks")
    return tuple(cfg.ks)


# ------------------------------------------------------------------------------------ distribution


def resolve_sync(sync: bool | None) -> bool:
    """None -> whether a process group is initialised; True without one is an error."""
    if sync is None:
        return in_process_group()
    if sync and not in_process_group():
        raise RaysysError("sync=True needs an initialised torch.distributed process group", where="evaluation")
    return sync


def local_rows(num_examples: int, sync: bool, presharded: bool) -> np.ndarray:
    """The example positions this process scores: a strided 1/world_size share when it syncs over a
    process group and was handed everything, else all of them."""
    if sync and not presharded:
        return np.arange(rank(), num_examples, world_size())
    return np.arange(num_examples)


def all_reduce_sums(sums: dict[str, RankingSums]) -> dict[str, RankingSums]:
    """Sum partial RankingSums over every rank with ONE all_reduce (all slices packed together)."""
    vectors = [part.to_vector() for part in sums.values()]
    pieces = torch.split(all_reduce(torch.cat(vectors)), [len(v) for v in vectors])
    return {name: part.from_vector(piece) for (name, part), piece in zip(sums.items(), pieces, strict=True)}
