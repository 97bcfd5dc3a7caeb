"""Click prediction (`pretrain.task=ctr`): P(click | history, candidate) from a pretrained teacher.

Rows are labelled (history, candidate) pairs, one per training item that has a history before it.
With ratings in the log, an item rated >= `ctr_rating_threshold` is a click (1) and one rated below
an explicit non-click (0). A log with no explicit non-click (implicit feedback, or every rating high)
gets `ctr_negatives` non-clicks per click instead: the same history with a uniform item, drawn anew
in every epoch's batches. Selected and reported by AUC (and log loss) on each user's held-out item.
The whole click model (encoder + head) is saved beside the model directory, which holds the
fine-tuned encoder so it stays a usable teacher.

Batch: {"input_ids" [P, max_len] left-padded histories, "candidates" [P], "labels" [P] float 1 / 0}.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raysys.config import PretrainConfig
from raysys.data.batches import SequenceParts, TrainingRows, pad_histories, sampled_items, sequence_parts
from raysys.data.dataset import PreparedDataset
from raysys.eval.collectives import max_over_ranks
from raysys.eval.metrics import auc, log_loss
from raysys.models.ctr import ClickModel
from raysys.models.teacher import build_teacher
from raysys.objectives.ctr import ctr_loss
from raysys.train.engines import TrainedModules
from raysys.train.tasks.base import Batch, Evaluate, eval_mode
from raysys.train.tasks.pretrain import PretrainTask

CLICK_MODEL_FILE = "click_model.safetensors"


class ClickTask(PretrainTask):
    """Fine-tune the teacher with a click head on labelled (history, candidate) pairs."""

    name = "ctr"
    metric = "auc"

    @property
    def train_cfg(self) -> PretrainConfig:
        return getattr(self.cfg, self.section)

    def columns(self, dataset: PreparedDataset) -> list[str]:
        return super().columns(dataset) + (["ratings"] if dataset.manifest.get("has_ratings") else [])

    def check(self, dataset: PreparedDataset) -> None:
        """Any pretrain settings fine-tune; the objective weights do not apply."""

    def build_model(self, num_items: int, text_emb: torch.Tensor | None) -> nn.Module:
        return ClickModel(build_teacher(self.cfg.teacher, num_items, self.cfg.data.max_len, text_emb=text_emb))

    def sequence_model(self, model: nn.Module) -> nn.Module:
        return model.encoder

    def rows(self, parts: SequenceParts, num_items: int) -> TrainingRows:
        cfg = self.train_cfg
        return click_rows(parts, self.cfg.data.max_len, num_items, cfg.ctr_rating_threshold, cfg.ctr_negatives)

    def batch(self, rows: TrainingRows, indices: np.ndarray, rng: np.random.Generator) -> Batch:
        histories, columns = rows.take(indices)
        candidates = columns["candidates"].copy()
        sampled = columns["sampled"]
        candidates[sampled] = sampled_items(candidates[sampled], rows.num_items, rng)
        return {"input_ids": histories, "candidates": candidates, "labels": columns["labels"]}

    def loss(self, modules: TrainedModules, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
        return {"loss": ctr_loss(modules.model, batch)}

    def targets(self, batch: Batch) -> int:
        return int(batch["candidates"].size)

    def evaluator(self, dataset: PreparedDataset) -> Evaluate:
        """evaluate(model, split): AUC and log loss on each user's held-out item of the split."""
        pairs = {split: self.eval_pairs(dataset, split) for split in ("valid", "test")}

        def evaluate(model: nn.Module, split: str) -> dict[str, float]:
            with eval_mode(model):
                return click_metrics(model, pairs[split])

        return evaluate

    def eval_pairs(self, dataset: PreparedDataset, split: str) -> dict[str, np.ndarray]:
        """Click-prediction examples of the valid or test split (`eval_pairs`), the same on every rank."""
        examples = dataset.split(split)
        ratings = None
        if dataset.manifest.get("has_ratings"):
            table = dataset.sequences(["ratings"])
            rows = table["ratings"].to_numpy(zero_copy_only=False)[examples.user_index]
            offset = np.array([len(h) for h in examples.histories])  # the target follows its history
            ratings = np.array([float(r[i]) for r, i in zip(rows, offset, strict=True)], dtype=np.float32)
        cfg = self.train_cfg
        rng = np.random.default_rng([cfg.seed, 0 if split == "valid" else 1])
        return eval_pairs(
            examples.histories,
            examples.targets,
            ratings,
            self.cfg.data.max_len,
            dataset.num_items,
            rng,
            cfg.ctr_rating_threshold,
        )

    def export(self, model: nn.Module, out_dir: Path, dataset: PreparedDataset, metrics: dict) -> dict[str, Any]:
        """The fine-tuned encoder as `out_dir/model`, the whole click model as `out_dir/click_model.safetensors`."""
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(out_dir / CLICK_MODEL_FILE))
        return super().export(model, out_dir, dataset, metrics)


@torch.no_grad()
def click_metrics(model: ClickModel, pairs: dict[str, np.ndarray], batch_size: int = 1024) -> dict[str, float]:
    """AUC and log loss of `model`'s click probabilities on labelled pairs."""
    probs = [
        model.click_probability(
            torch.from_numpy(pairs["input_ids"][i : i + batch_size]),
            torch.from_numpy(pairs["candidates"][i : i + batch_size]),
        )
        for i in range(0, len(pairs["labels"]), batch_size)
    ]
    p = torch.cat(probs).numpy()
    return {"auc": auc(pairs["labels"], p), "log_loss": log_loss(pairs["labels"], p), "num_pairs": float(p.size)}


def click_rows(
    parts: SequenceParts, max_len: int, num_items: int, rating_threshold: float, negatives_per_click: int
) -> TrainingRows:
    """One row per training item that has a history (the `max_len` items before it), labelled by its
    rating; when no rank's log has an explicit non-click, each click also gets `negatives_per_click`
    rows whose candidate is drawn at batch time (column "sampled")."""
    flat = parts.flat
    user_start = np.repeat(parts.offsets, parts.lengths)
    target = np.flatnonzero(np.arange(flat.size) - user_start >= 1)  # every item with a history
    start = np.maximum(user_start[target], target - max_len)
    labels = np.ones(target.size, dtype=bool) if parts.ratings is None else parts.ratings[target] >= rating_threshold
    sampled = np.zeros(target.size, dtype=bool)
    if not max_over_ranks(float((~labels).any())):
        copies = 1 + negatives_per_click
        target, start, labels = (
            np.tile(target, copies),
            np.tile(start, copies),
            np.arange(copies * target.size) < target.size,
        )
        sampled = ~labels
    columns = {"candidates": flat[target], "labels": labels.astype(np.float32), "sampled": sampled}
    return TrainingRows(flat, start, target, max_len, columns, num_items)


def ctr_pairs(
    sequences: Sequence[np.ndarray],
    max_len: int,
    num_items: int,
    rng: np.random.Generator,
    ratings: Sequence[np.ndarray] | None = None,
    rating_threshold: float = 4.0,
    negatives_per_click: int = 1,
) -> dict[str, np.ndarray]:
    """Every click-prediction row of `sequences` (whole sequences as training parts) as one batch,
    sampled candidates drawn from `rng`: {"input_ids" [P, max_len], "candidates" [P], "labels" [P]}."""
    rows = click_rows(sequence_parts(sequences, ratings), max_len, num_items, rating_threshold, negatives_per_click)
    histories, columns = rows.take(np.arange(len(rows)), trim=False)
    candidates = columns["candidates"].copy()
    candidates[columns["sampled"]] = sampled_items(candidates[columns["sampled"]], num_items, rng)
    return {"input_ids": histories, "candidates": candidates, "labels": columns["labels"]}


def eval_pairs(
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    target_ratings: np.ndarray | None,
    max_len: int,
    num_items: int,
    rng: np.random.Generator,
    rating_threshold: float = 4.0,
) -> dict[str, np.ndarray]:
    """Click-prediction examples of a held-out split: each user's history and held-out item.

    With ratings, the held-out item is a click when rated >= `rating_threshold`, else a non-click.
    Without ratings (or when every held-out item is a click) each held-out item is a click and one
    uniform item (never it) with the same history is a non-click, so the AUC is defined.
    """
    input_ids = pad_histories(histories, max_len)
    candidates = np.asarray(targets, dtype=np.int64)
    labels = np.ones(candidates.size, dtype=bool)
    if target_ratings is not None:
        labels = np.asarray(target_ratings) >= rating_threshold
    if labels.all():
        input_ids = np.concatenate([input_ids, input_ids])
        candidates = np.concatenate([candidates, sampled_items(candidates, num_items, rng)])
        labels = np.arange(candidates.size) < targets.size
    return {"input_ids": input_ids, "candidates": candidates, "labels": labels.astype(np.float32)}
