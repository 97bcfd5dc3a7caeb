"""Batch scoring for serving: a loaded model directory plus the items added to it while serving.

`ServingModel.predict(batch)` is plain, synchronous PyTorch (no Ray, no HTTP): the Serve replica
calls it from a worker thread for each dynamic batch, the benchmark calls it in-process as the
floor, and tests call it directly. It is the one ranker: a history's known ids (its most recent
max_len) are scored against the catalog, seen and excluded ids are dropped, and a history with no
known id gets the most popular items instead. Three serving needs shape it:

- the item table [N, H] is computed once per model, not per request (with text, the projection of
  every item's text vector would otherwise be redone for each batch);
- items added through /items are appended to that table: score embedding = the model's text
  projection of the item's text embedding (a new item has no trained ID embedding), and its score
  takes the model's new_item_boost as the model's own ID-less items do (`ItemEmbedding`);
- k, exclude_seen and the exclude list are per request.

The catalog (table, ids, index) is replaced as a whole when items are added, never mutated, so a
batch running in a thread always sees one consistent catalog.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from raysys.config import DataConfig
from raysys.data.batches import pad_histories
from raysys.data.dataset import FIRST_ITEM_INDEX
from raysys.models.export import LoadedModel, load_model_dir


def negative_events(model_config: dict) -> list[str]:
    """The event types a model directory's training left out as not positives (`data.negative_events`),
    which /events logs but keeps out of live histories; the default for directories from before."""
    return list(model_config.get("dataset", {}).get("negative_events", DataConfig().negative_events))


@dataclass(frozen=True)
class Query:
    """One recommendation request after id resolution: a history of original ids, most recent last."""

    history: Sequence[str]
    k: int = 10
    exclude_seen: bool = True  # every id of the history, however long
    exclude: Sequence[str] = ()
    max_inputs: int | None = None  # the model reads at most this many of the most recent known ids


@dataclass(frozen=True)
class Recommendation:
    """Top items for one query, best first; `fallback` is set when the model could not rank."""

    items: list[tuple[str, float]]
    unknown_items: list[str]
    fallback: Literal["popularity"] | None = None


@dataclass(frozen=True)
class Catalog:
    """Every recommendable item: the model's items (indices 2..num_items-1) then the added ones."""

    table: torch.Tensor  # [N, H] score embeddings; rows 0 and 1 (pad, mask) are never returned
    boost: torch.Tensor  # [N] added to every score: the model's new_item_boost at ID-less rows, else 0
    item_ids: list[str]  # [N] original ids ("" for pad and mask)
    index: dict[str, int] = field(repr=False)  # original id -> row
    popular: np.ndarray = field(repr=False)  # rows by popularity, most popular first (added items last)
    popular_counts: np.ndarray = field(repr=False)  # interaction counts, aligned with `popular`

    @property
    def size(self) -> int:
        """Recommendable items (pad and mask excluded)."""
        return len(self.item_ids) - FIRST_ITEM_INDEX


class ServingModel:
    """A model directory ready to serve: cached item table, training histories, added items."""

    def __init__(self, loaded: LoadedModel, *, int8: bool = False) -> None:
        self.model = quantize_int8(loaded.model.eval()) if int8 else loaded.model.eval()
        self.int8 = int8
        self.version = loaded.model_version
        self.trained_at: str | None = loaded.config.get("trained_at")
        self.negative_events = frozenset(negative_events(loaded.config))
        self.max_len = loaded.max_len
        self.num_model_items = loaded.num_items  # rows the model can also take as input
        self.user_histories = loaded.user_histories
        with torch.inference_mode():
            table = self.model.item_embeddings().detach().float().contiguous()
        self.catalog = _base_catalog(loaded, table)
        self.synced_store_items = 0  # how many of the live store's added items this catalog has taken in
        self.synced_store_epoch = ""  # ... of which store incarnation

    @classmethod
    def load(cls, path: str, *, int8: bool = False) -> ServingModel:
        return cls(load_model_dir(path), int8=int8)

    @property
    def uses_text(self) -> bool:
        return self.model.items.uses_text

    @property
    def added_items(self) -> int:
        return len(self.catalog.item_ids) - self.num_model_items

    @torch.inference_mode()
    def add_items(self, items: Sequence[tuple[str, np.ndarray]]) -> list[str]:
        """Append new items from their [text_dim] text embeddings; returns the ids actually added
        (ids the catalog already has are skipped). Needs a model trained with item text."""
        if not self.uses_text:
            raise ValueError("this model has no text tower: new items cannot be scored from text")
        old = self.catalog
        new = [(item_id, emb) for item_id, emb in dict(items).items() if item_id not in old.index]
        if not new:
            return []
        projection = self.model.items.text_projection
        text = torch.from_numpy(np.stack([emb for _, emb in new]).astype(np.float32))  # [M, text_dim]
        rows = projection(text.to(projection.weight.dtype)).float()  # [M, H]
        ids = old.item_ids + [item_id for item_id, _ in new]
        first = len(old.item_ids)
        self.catalog = Catalog(
            table=torch.cat([old.table, rows]),
            boost=torch.cat([old.boost, torch.full((len(new),), float(self.model.items.new_item_boost))]),
            item_ids=ids,
            index={**old.index, **{item_id: first + j for j, (item_id, _) in enumerate(new)}},
            popular=np.concatenate([old.popular, np.arange(first, len(ids))]),
            popular_counts=np.concatenate([old.popular_counts, np.zeros(len(new))]),
        )
        return [item_id for item_id, _ in new]

    @torch.inference_mode()
    def predict(self, batch: Sequence[Query]) -> list[Recommendation]:
        """Rank the catalog for every query of the batch in one forward pass and one top-k."""
        catalog = self.catalog  # one consistent catalog for the whole batch
        rows = [self._resolve(query, catalog) for query in batch]
        ranked = [i for i, (inputs, _, _) in enumerate(rows) if len(inputs)]
        top: dict[int, list[tuple[str, float]]] = {}
        if ranked:
            scores = self._score([rows[i][0] for i in ranked], catalog)  # [B', N]
            lists = _top_k(scores, [rows[i][1] for i in ranked], [batch[i].k for i in ranked], catalog)
            top = dict(zip(ranked, lists, strict=True))
        out = []
        for i, (_, banned, unknown) in enumerate(rows):
            if i in top:
                out.append(Recommendation(top[i], unknown))
            else:
                out.append(Recommendation(_popular(catalog, banned, batch[i].k), unknown, "popularity"))
        return out

    def _resolve(self, query: Query, catalog: Catalog) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(model input indices, banned rows, unknown ids) for one query."""
        index = catalog.index
        known = [index[i] for i in query.history if i in index]
        unknown = [i for i in query.history if i not in index]
        unknown += [i for i in query.exclude if i not in index]
        banned = [index[i] for i in query.exclude if i in index] + (known if query.exclude_seen else [])
        # Added items have no input embedding: they count as seen but cannot be fed to the model.
        inputs = [i for i in known if i < self.num_model_items][-(query.max_inputs or len(known)) :]
        inputs = np.asarray(inputs, dtype=np.int64)
        return inputs, np.asarray(banned, dtype=np.int64), unknown

    def _score(self, histories: list[np.ndarray], catalog: Catalog) -> torch.Tensor:
        """[B] histories of item indices -> [B, N] scores over the catalog."""
        length = min(self.max_len, max(len(h) for h in histories))
        input_ids = torch.from_numpy(pad_histories(histories, length))  # [B, L], left-padded
        state = self.model.user_state(input_ids).float()  # [B, H]
        return state @ catalog.table.T + catalog.boost  # [B, N]


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` with dynamic int8 quantisation of its transformer Linear layers (int8
    weights, activations quantised per call) for CPU serving. The item embeddings and the text
    projection stay float: scores are dot products with them, and new items are projected by them."""
    from torch.ao.quantization import quantize_dynamic

    names = {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not name.startswith("items.")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao quantisation announces its move to torchao on every call
        return quantize_dynamic(model, names, dtype=torch.qint8)


def _base_catalog(loaded: LoadedModel, table: torch.Tensor) -> Catalog:
    index = dict(loaded.item_index)
    popularity = loaded.popularity
    rows = np.asarray([index[i] for i in popularity["item_id"].to_pylist()], dtype=np.int64)
    counts = popularity["count"].to_numpy().astype(np.float64)
    boost = loaded.model.items.boost_new_items(torch.zeros(table.shape[0])).float()  # [N]
    return Catalog(
        table=table, boost=boost, item_ids=list(loaded.item_ids), index=index, popular=rows, popular_counts=counts
    )


def _top_k(
    scores: torch.Tensor, banned: list[np.ndarray], ks: list[int], catalog: Catalog
) -> list[list[tuple[str, float]]]:
    """Per row of [B, N] scores, the k best items skipping pad/mask and banned rows (k clipped to
    what is left). Scores are masked in place; one batched top-k serves every row."""
    scores[:, :FIRST_ITEM_INDEX] = -torch.inf
    allowed = []
    for row, rows_banned in enumerate(banned):
        rows_banned = np.unique(rows_banned[rows_banned >= FIRST_ITEM_INDEX])
        scores[row, torch.from_numpy(rows_banned)] = -torch.inf
        allowed.append(scores.shape[1] - FIRST_ITEM_INDEX - len(rows_banned))
    values, indices = scores.topk(min(max(ks), scores.shape[1]), dim=1)  # [B, k_max], best first
    values, indices = values.tolist(), indices.tolist()
    out = []
    for row, k in enumerate(ks):
        n = max(0, min(k, allowed[row]))
        out.append([(catalog.item_ids[i], float(v)) for i, v in zip(indices[row][:n], values[row][:n], strict=True)])
    return out


def _popular(catalog: Catalog, banned: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The k most popular rows not banned (the cold-start fallback); scores are interaction counts."""
    keep = ~np.isin(catalog.popular, banned)
    rows, counts = catalog.popular[keep][:k], catalog.popular_counts[keep][:k]
    return [(catalog.item_ids[r], float(c)) for r, c in zip(rows.tolist(), counts.tolist(), strict=True)]
