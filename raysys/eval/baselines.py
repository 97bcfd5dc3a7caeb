"""Non-neural baselines as score functions, so the SAME evaluator ranks them like any model.

    scorer = build_baseline("popularity", dataset, "test")     # fitted on train + valid items
    evaluate_split(scorer, dataset.split("test"), dataset.num_items, cfg.eval, max_len)

Each baseline is fitted only on what the protocol lets a model see at that point: for the valid
split every user's training part; for the test split every user's training part plus their valid
item (`allowed_histories`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from raysys.data.dataset import FIRST_ITEM_INDEX, PreparedDataset
from raysys.errors import RaysysError

BASELINES = ("popularity", "itemknn")
DEFAULT_NEIGHBORS = 100  # similar items kept per item: bounds the similarity matrix at 100 x num_items
# Most recent history items an item-kNN score sums over. On ml-100k (valid NDCG@10) the last 2-5 items
# score 0.107 and the whole 50-item window 0.075: the next item follows the latest ones.
DEFAULT_RECENT = 5


def allowed_histories(dataset: PreparedDataset, split: Literal["valid", "test"]) -> list[np.ndarray]:
    """Every user's items known before `split` is predicted: the training part, plus the valid
    target for the test split (users too short to evaluate keep their whole sequence as training)."""
    train = dataset.train_sequences()
    if split == "valid":
        return train
    if split != "test":
        raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
    valid = dataset.split("valid")
    extended = list(train)
    for user, target in zip(valid.user_index, valid.targets, strict=True):
        extended[user] = np.append(train[user], target)
    return extended


class PopularityScorer:
    """Scores every item by its interaction count, the same for every user."""

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = torch.as_tensor(counts, dtype=torch.float32)  # [num_items]

    @classmethod
    def fit(cls, histories: list[np.ndarray], num_items: int) -> PopularityScorer:
        """Counts over `histories` (every occurrence counts; pad and mask stay 0)."""
        flat = np.concatenate(histories) if histories else np.empty(0, dtype=np.int64)
        counts = np.bincount(flat, minlength=num_items)[:num_items].astype(np.float32)
        counts[:FIRST_ITEM_INDEX] = 0.0
        return cls(counts)

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] -> [B, num_items] (the counts, broadcast)."""
        return self.counts.expand(input_ids.shape[0], -1)


class ItemKNNScorer:
    """Item-based k-nearest neighbours: score(j) = sum over the user's `recent` latest items i of sim(i, j).

    sim is the cosine similarity of items' user sets in the fitted histories, pruned to each item's
    `neighbors` most similar items, stored as a scipy CSR matrix (fine for 100k+ items).
    """

    def __init__(self, similarity: sp.csr_matrix, recent: int = DEFAULT_RECENT) -> None:
        self.similarity = similarity  # [num_items, num_items], zero diagonal
        self.recent = recent

    @classmethod
    def fit(
        cls,
        histories: list[np.ndarray],
        num_items: int,
        neighbors: int = DEFAULT_NEIGHBORS,
        recent: int = DEFAULT_RECENT,
    ) -> ItemKNNScorer:
        """Cosine item-item similarity from the user x item incidence of `histories`."""
        return cls(cosine_item_similarity(histories, num_items, neighbors), recent)

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] left-padded -> [B, num_items] float32 (padding and mask ignored)."""
        ids = input_ids[:, -self.recent :].cpu().numpy()  # left padding: the latest items are the last columns
        rows, cols = np.nonzero(ids >= FIRST_ITEM_INDEX)
        bag = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, ids[rows, cols])),
            shape=(ids.shape[0], self.similarity.shape[0]),
        )  # [B, num_items]: how often each item is in the window
        return torch.from_numpy((bag @ self.similarity).toarray())


def cosine_item_similarity(histories: list[np.ndarray], num_items: int, neighbors: int) -> sp.csr_matrix:
    """[num_items, num_items] CSR: cos(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|) over users' item
    sets, diagonal zeroed, each row pruned to its `neighbors` largest entries."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    users = np.repeat(np.arange(len(histories)), lengths)
    items = np.concatenate(histories).astype(np.int64) if histories else np.empty(0, dtype=np.int64)
    ones = np.ones(len(items), dtype=np.float32)
    incidence = sp.csr_matrix((ones, (users, items)), shape=(len(histories), num_items))  # [users, items]
    incidence.data[:] = 1.0  # a repeated item counts once per user (duplicates were summed)
    co_counts = (incidence.T @ incidence).tocsr()  # [num_items, num_items] users in common
    co_counts = (co_counts - sp.diags(co_counts.diagonal())).tocsr()  # an item is not its own neighbour
    co_counts.eliminate_zeros()
    norms = np.sqrt(np.asarray(incidence.sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    scale = sp.diags(1.0 / norms)
    return keep_top_per_row((scale @ co_counts @ scale).tocsr(), neighbors)


def keep_top_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Zero all but the k largest entries of every row (ties broken arbitrarily but deterministically)."""
    data, indptr = matrix.data, matrix.indptr
    keep = np.zeros(len(data), dtype=bool)
    for row in range(matrix.shape[0]):
        start, stop = indptr[row], indptr[row + 1]
        if stop - start <= k:
            keep[start:stop] = True
        else:
            keep[start + np.argpartition(-data[start:stop], k - 1)[:k]] = True
    pruned = matrix.copy()
    pruned.data = np.where(keep, data, 0.0).astype(np.float32)
    pruned.eliminate_zeros()
    return pruned


def build_baseline(
    name: str, dataset: PreparedDataset, split: Literal["valid", "test"]
) -> PopularityScorer | ItemKNNScorer:
    """The baseline `name` ("popularity" or "itemknn") fitted on the histories allowed for `split`."""
    histories = allowed_histories(dataset, split)
    if name == "popularity":
        return PopularityScorer.fit(histories, dataset.num_items)
    if name == "itemknn":
        return ItemKNNScorer.fit(histories, dataset.num_items)
    raise RaysysError(f"unknown baseline {name!r}", where="--baseline", hint=f"choose one of {', '.join(BASELINES)}")
