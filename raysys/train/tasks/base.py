"""What a training task is: the config section it trains on, the model it builds, its rows and batches,
its loss, its evaluation and the metric that selects the best epoch. Every driver (the in-process loop,
a direct Tune trial, a Ray Train worker) runs every task through this interface and nothing else.

    task = task_for(cfg, "pretrain")                 # raysys.train.tasks: PretrainTask, DistillTask, ClickTask
    modules = build_modules(task, dataset, text_emb, device)   # seeded model (+ teacher, alignment)
    rows = task.rows(training_parts(sequences), num_items)   # this rank's training examples
    batch = task.batch(rows, indices, rng)           # numpy arrays; the loop makes them tensors
    terms = task.loss(modules, batch, generator)     # {"loss", <term>...}
    metrics = task.evaluator(dataset)(model, "valid")
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from raysys.config import Config, EvalConfig, ModelConfig, TrainingConfig
from raysys.data.batches import SequenceParts, TrainingRows, window_rows
from raysys.data.dataset import FIRST_ITEM_INDEX, PreparedDataset
from raysys.errors import RaysysError
from raysys.eval.evaluator import evaluate_split, train_items
from raysys.models.common import SequenceModel, mark_id_less
from raysys.models.export import export_model_dir
from raysys.train.engines import TrainedModules
from raysys.train.state import VALID_METRIC

Batch = dict[str, np.ndarray]
Evaluate = Callable[[nn.Module, str], dict[str, float]]  # (model, "valid" | "test") -> metrics


class Task(ABC):
    """One training task over a config. Subclasses set the class attributes and the abstract methods."""

    name: ClassVar[str]
    model_section: ClassVar[str]  # "teacher" | "student": the model config the task builds and exports
    metric: ClassVar[str] = VALID_METRIC  # validation metric that picks the best epoch

    def __init__(self, cfg: Config, section: str) -> None:
        self.cfg = cfg
        self.section = section  # the config section holding the training settings

    @property
    def train_cfg(self) -> TrainingConfig:
        """The training settings (epochs, batch, lr, workers, ...) of the task's section."""
        return getattr(self.cfg, self.section)

    @property
    def model_cfg(self) -> ModelConfig:
        return getattr(self.cfg, self.model_section)

    # ---------------------------------------------------------------------- set-up (driver and workers)

    @abstractmethod
    def check(self, dataset: PreparedDataset) -> None:
        """Raise RaysysError for settings the workers would fail on (called on the driver)."""

    def text_emb(self, dataset: PreparedDataset) -> torch.Tensor | None:
        """[num_items, text_dim] item-text table when the task's model uses text, else None."""
        if not self.model_cfg.use_text:
            return None
        from raysys.models.text_encoder import item_text_embeddings, text_emb_tensor

        table = item_text_embeddings(dataset, progress=False)
        if table is None:
            section = self.model_section
            raise RaysysError(
                "the dataset has no item text", where=f"{section}.use_text", hint=f"set {section}.use_text=false"
            )
        return text_emb_tensor(table, dataset.num_items)

    @abstractmethod
    def build_model(self, num_items: int, text_emb: torch.Tensor | None) -> nn.Module:
        """The trained model, freshly initialised (the caller seeds)."""

    def sequence_model(self, model: nn.Module) -> SequenceModel:
        """The next-item model inside the trained model (itself, unless a head wraps it)."""
        return model

    def attach(self, model: nn.Module, device: torch.device | str) -> nn.Module | None:
        """Load what the task needs besides the model (a frozen teacher, initial weights); return an
        extra trained module (the hidden alignment) or None."""
        return None

    # ------------------------------------------------------------------------------ rows and batches

    def columns(self, dataset: PreparedDataset) -> list[str]:
        """The prepared sequences-table columns the rows are cut from."""
        return ["user_index", "items", "train_len"]

    def rows(self, parts: SequenceParts, num_items: int) -> TrainingRows:
        """This rank's training examples: next-item windows of the users' training parts."""
        return window_rows(parts, self.cfg.data.max_len)

    @abstractmethod
    def batch(self, rows: TrainingRows, indices: np.ndarray, rng: np.random.Generator) -> Batch:
        """The rows at `indices` as one batch of numpy arrays (random choices drawn from `rng`)."""

    @abstractmethod
    def loss(self, modules: TrainedModules, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
        """{"loss": scalar to backpropagate, <term>: scalar...} on one batch of tensors."""

    def targets(self, batch: Batch) -> int:
        """How many targets the batch trains (next items; the throughput figure counts them)."""
        return int((batch["labels"] != 0).sum())

    # -------------------------------------------------------------------------- evaluation and export

    def evaluator(self, dataset: PreparedDataset) -> Evaluate:
        """evaluate(model, split): full-ranking metrics with NDCG@10 among them (eval mode, restored after)."""
        eval_cfg = self.evaluator_config()
        splits = {split: dataset.split(split) for split in ("valid", "test")}
        max_len, num_items = self.cfg.data.max_len, dataset.num_items

        def evaluate(model: nn.Module, split: str) -> dict[str, float]:
            with eval_mode(model):
                return evaluate_split(model.next_item_scores, splits[split], num_items, eval_cfg, max_len)

        return evaluate

    def evaluator_config(self) -> EvalConfig:
        """The evaluation settings of `evaluator` (the config's, with NDCG@10 among the cut-offs)."""
        return with_k10(self.cfg.eval)

    def export(self, model: nn.Module, out_dir: Path, dataset: PreparedDataset, metrics: dict) -> dict[str, Any]:
        """Write the model directory `out_dir/model`; returns the summary entries it adds."""
        model_dir = export_model_dir(
            self.sequence_model(model),
            out_dir / "model",
            dataset,
            kind=self.model_section,
            model_cfg=self.model_cfg,
            max_len=self.cfg.data.max_len,
            metrics=metrics,
        )
        return {"model_dir": str(model_dir)}


def build_modules(
    task: Task, dataset: PreparedDataset, text_emb: torch.Tensor | None, device: torch.device | str = "cpu"
) -> TrainedModules:
    """The one set-up of every driver: seed, build the model, load what the task attaches (teacher,
    alignment), start from `init_from`'s weights (`warm_start`) and, for a model with item text, pin the
    ID vectors of items absent from the training parts (`pin_unseen_item_ids`).

    The same seed gives the same initial weights on every rank and in every driver."""
    seed_everything(task.train_cfg.seed)
    model = task.build_model(dataset.num_items, text_emb)
    alignment = task.attach(model, device)
    init_from = getattr(task.train_cfg, "init_from", None)
    if init_from:  # a fine-tune or an update: the model directory's weights, grown to this catalog
        from raysys.models.export import warm_start

        warm_start(task.sequence_model(model), init_from, dataset.item_ids())
    if text_emb is not None:
        pin_unseen_item_ids(task.sequence_model(model), train_items(dataset))
    return TrainedModules(model, alignment).to(device)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (model initialisation, dropout) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pin_unseen_item_ids(model: SequenceModel, seen_items: np.ndarray) -> RemovableHandle:
    """Hold the ID embedding of every item absent from training at zero (returns the hook's handle),
    and mark those items (`model.items.unseen`, [num_items] bool) so no training loss uses them as
    negatives (`raysys.models.common.unseen_items`).

    Why: an item that never occurs in training is never a positive, only a softmax negative, so a
    free ID vector would learn nothing but "never recommend me" and bury a cold item whatever its
    text says. Pinned at zero, a cold item's embedding is its projected text alone, which the
    projection learned on the warm items it resembles. Zero gradient keeps it at zero under AdamW
    (zero moments give a zero update; decoupled weight decay of zero is zero). As a negative, its
    projected text would still be pushed away from every user, and with it the text of its topic
    mates: the softmax therefore leaves it out (measured on the synthetic default, student with text,
    6 epochs: cold-item test HR@10 0.010 -> 0.053, valid NDCG@10 0.5244 -> 0.5262). Pad and mask rows
    are left alone (the mask token is a trained input of masked-item pretraining).
    """
    weight = model.items.id_embedding.weight  # [num_items, H]
    unseen = torch.ones(weight.shape[0], dtype=torch.bool)
    unseen[torch.from_numpy(np.asarray(seen_items, dtype=np.int64))] = False
    unseen[:FIRST_ITEM_INDEX] = False
    unseen = unseen.to(weight.device)
    with torch.no_grad():
        weight[unseen] = 0.0
    model.items.register_buffer("unseen", unseen, persistent=False)  # moves with the model, never saved
    mark_id_less(model.items, unseen)  # ranking in validation gives them the model's new_item_boost
    items = model.items  # the hook reads the buffer, which follows the model to its device
    return weight.register_hook(lambda grad: grad.masked_fill(items.unseen[:, None], 0.0))


class eval_mode:
    """`with eval_mode(model):` eval mode inside, the caller's mode restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def with_k10(eval_cfg: EvalConfig) -> EvalConfig:
    """Model selection reads ndcg@10: make sure the evaluator computes it."""
    return eval_cfg if 10 in eval_cfg.ks else eval_cfg.model_copy(update={"ks": sorted({*eval_cfg.ks, 10})})
