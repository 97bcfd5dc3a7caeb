"""Ranking and click-prediction metrics, and the mergeable sums the evaluator accumulates.

Ranking protocol (enforced here, used everywhere):
    rank = #candidates scored strictly higher than the target + #other candidates scored equal
so ties count against the target and a model that scores every item the same gets zero. Ranks are
0-based: rank 0 is the top of the list. With one held-out target per user (leave-one-out),
Recall@K equals HR@K; both are reported.

`RankingSums` holds sums, not means (sum of hr/ndcg/mrr, the user count, the set of items that
appeared in someone's top-K), so partial results from several workers or batches merge exactly
once by adding them (`merge`, or one all_reduce over `to_vector()`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raysys.data.dataset import FIRST_ITEM_INDEX

RANK_METRICS = ("hr", "ndcg", "mrr")
SAMPLED_PREFIX = "sampled_"


def ranks_and_top_k(
    scores: torch.Tensor, targets: torch.Tensor, excluded: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each target's 0-based rank among its user's candidates, ties counted against the target, and
    each user's top-k candidates (what they would be shown, for catalog coverage).

    scores [B, N] float; targets [B] long; excluded: (rows [E], items [E]) long pairs that may not be
    ranked for that row's user (pad and mask, items 0 and 1, never are; the target always is)
    -> ranks [B] long, exact below k and k otherwise (metrics at cut-offs <= k read nothing more),
       top items [B, k] long, -1 where a user has fewer than k candidates.

    One copy of the scores and one top-(k + 1) pass: the number of top-(k + 1) candidates scoring at
    least the target's score is min(rank, k) + 1 whichever tied items the top-k picks. A target scored
    -inf is ranked k (never a hit).
    """
    k = min(k, scores.shape[1] - 1)
    users = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[users, targets]  # [B]
    ranked = scores.clone(memory_format=torch.contiguous_format)  # [B, N]: non-candidates -inf
    ranked[:, :FIRST_ITEM_INDEX] = -torch.inf
    ranked[excluded] = -torch.inf
    ranked[users, targets] = target_scores
    values, items = ranked.topk(min(k + 1, scores.shape[1]), dim=1)  # [B, k + 1]
    ranks = (values >= target_scores[:, None]).sum(dim=1) - 1
    ranks = ranks.masked_fill(target_scores == -torch.inf, k)
    items = items[:, :k].masked_fill(values[:, :k] == -torch.inf, -1)
    return ranks, items


def sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among its sampled negatives (ties against the target).

    scores [B, N], targets [B] long, negatives [B, S] long item indices, -1 = no negative -> [B] long.
    """
    valid = negatives >= 0
    negative_scores = scores.gather(1, negatives.clamp(min=0))  # [B, S]
    return ((negative_scores >= scores.gather(1, targets[:, None])) & valid).sum(dim=1)


def hit_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """1.0 where the target is in the top k. ranks [B] long -> [B] float64."""
    return (ranks < k).double()


def ndcg_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """1 / log2(rank + 2) inside the top k, else 0 (one relevant item, so IDCG = 1). [B] -> [B] float64."""
    return torch.where(ranks < k, 1.0 / torch.log2(ranks.double() + 2.0), 0.0)


def mrr_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """1 / (rank + 1) inside the top k, else 0. [B] -> [B] float64."""
    return torch.where(ranks < k, 1.0 / (ranks.double() + 1.0), 0.0)


METRIC_FNS = {"hr": hit_at_k, "ndcg": ndcg_at_k, "mrr": mrr_at_k}


@dataclass
class RankingSums:
    """Mergeable partial sums of ranking metrics over a set of users.

    sums maps "hr@10" / "ndcg@10" / "mrr@10" (and "sampled_hr@10" ... when sampled negatives are
    used) to the sum over users; covered[i, j] is True when item j was in some user's top-ks[i].
    """

    ks: tuple[int, ...]
    num_items: int
    sampled: bool
    count: int
    sums: dict[str, float]
    covered: torch.Tensor  # [len(ks), num_items] bool

    @classmethod
    def empty(cls, ks: tuple[int, ...] | list[int], num_items: int, sampled: bool = False) -> RankingSums:
        """Zero sums for cut-offs `ks` over an item index space of size `num_items`."""
        ks = tuple(ks)
        names = [f"{m}@{k}" for k in ks for m in RANK_METRICS]
        if sampled:
            names += [SAMPLED_PREFIX + name for name in names]
        covered = torch.zeros(len(ks), num_items, dtype=torch.bool)
        return cls(ks, num_items, sampled, 0, dict.fromkeys(names, 0.0), covered)

    def add(self, ranks: torch.Tensor, top_items: torch.Tensor, ranks_sampled: torch.Tensor | None = None) -> None:
        """Add a batch of users: ranks [B] long, top_items [B, >= max(ks)] long (-1 = none),
        ranks_sampled [B] long (required when `sampled`)."""
        if self.sampled and ranks_sampled is None:
            raise ValueError("these sums include sampled metrics: pass ranks_sampled")
        self.count += int(ranks.numel())
        for k in self.ks:
            for name, fn in METRIC_FNS.items():
                self.sums[f"{name}@{k}"] += float(fn(ranks, k).sum())
                if ranks_sampled is not None and self.sampled:
                    self.sums[f"{SAMPLED_PREFIX}{name}@{k}"] += float(fn(ranks_sampled, k).sum())
        for row, k in enumerate(self.ks):
            shown = top_items[:, :k].reshape(-1)
            self.covered[row, shown[shown >= 0].cpu()] = True

    def merge(self, other: RankingSums) -> RankingSums:
        """The sums of both parts (disjoint user sets): a new object, neither input changes."""
        if (self.ks, self.num_items, self.sampled) != (other.ks, other.num_items, other.sampled):
            raise ValueError("cannot merge RankingSums of different ks, num_items or sampling")
        return RankingSums(
            self.ks,
            self.num_items,
            self.sampled,
            self.count + other.count,
            {name: value + other.sums[name] for name, value in self.sums.items()},
            self.covered | other.covered,
        )

    def to_vector(self) -> torch.Tensor:
        """[1 + len(sums) + len(ks) * num_items] float64: count, sums, coverage — summing such
        vectors (e.g. one all_reduce) and reading back with `from_vector` merges the parts."""
        head = torch.tensor([float(self.count), *self.sums.values()], dtype=torch.float64)
        return torch.cat([head, self.covered.reshape(-1).double()])

    def from_vector(self, vector: torch.Tensor) -> RankingSums:
        """A RankingSums shaped like this one holding the values of a (summed) `to_vector()`."""
        vector = vector.detach().cpu()
        num_sums = len(self.sums)
        sums = dict(zip(self.sums, vector[1 : 1 + num_sums].tolist(), strict=True))
        covered = vector[1 + num_sums :].reshape(len(self.ks), self.num_items) > 0
        return RankingSums(self.ks, self.num_items, self.sampled, round(float(vector[0])), sums, covered)

    def metrics(self) -> dict[str, float]:
        """Means over users plus coverage: "hr@10", "ndcg@10", "mrr@10", "recall@10", "coverage@10"
        (and "sampled_*"), and "num_users". An empty set of users gives 0.0 for every metric."""
        out: dict[str, float] = {}
        rankable = max(self.num_items - FIRST_ITEM_INDEX, 1)
        for row, k in enumerate(self.ks):
            for name in RANK_METRICS:
                out[f"{name}@{k}"] = self._mean(f"{name}@{k}")
            out[f"recall@{k}"] = out[f"hr@{k}"]  # one target per user: recall = hit rate
            out[f"coverage@{k}"] = float(self.covered[row, FIRST_ITEM_INDEX:].sum()) / rankable
        if self.sampled:
            for k in self.ks:
                for name in RANK_METRICS:
                    key = f"{SAMPLED_PREFIX}{name}@{k}"
                    out[key] = self._mean(key)
        out["num_users"] = self.count
        return out

    def _mean(self, name: str) -> float:
        return self.sums[name] / self.count if self.count else 0.0


# ------------------------------------------------------------------------------------ click prediction


def auc(labels: np.ndarray | torch.Tensor, probs: np.ndarray | torch.Tensor) -> float:
    """ROC AUC as the Mann-Whitney rank statistic: P(score of a positive > score of a negative),
    a tie counted as 1/2 (average ranks). labels [N] in {0, 1}, probs [N] float.

    Raises ValueError when the labels hold only one class (AUC is undefined).
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probs {p.shape} differ in shape")
    num_pos = float((y == 1).sum())
    num_neg = float((y == 0).sum())
    if num_pos + num_neg != len(y):
        raise ValueError("labels must be 0 or 1")
    if num_pos == 0 or num_neg == 0:
        raise ValueError("AUC is undefined when the labels hold only one class")
    ranks = _average_ranks(p)
    return float((ranks[y == 1].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])  # first index of each tie group
    ends = np.r_[starts[1:], len(values)]
    group_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def log_loss(labels: np.ndarray | torch.Tensor, probs: np.ndarray | torch.Tensor, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps] (so 0 and 1 stay finite).

    labels [N] in {0, 1}, probs [N] in [0, 1].
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1.0 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probs {p.shape} differ in shape")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))
