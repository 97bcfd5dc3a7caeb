"""The model directory: the contract between training and serving, the same for teacher and student.

    config.json            kind, architecture, the model config, num_items, max_len, format and model
                           version, trained_at, raysys version: enough to rebuild the model
    model.safetensors      consolidated weights (incl. the item text table when the model uses text)
    item_vocab.parquet     item_id string, item_index int32 (0 = pad, 1 = mask, items from 2)
    user_history.parquet   user_id string, items list<string>: each user's most recent max_len ORIGINAL
                           item ids over the whole log (train + valid + test), as serving sees them now
    popularity.parquet     item_id string, count int64 (interactions in the whole log), most popular first
    metrics.json           the figures the model was selected on
    item_text_emb.parquet  item_id, item_index, embedding list<float32> (only when the model uses text)

    export_model_dir(model, "runs/x/model", dataset, kind="student", model_cfg=cfg.student, max_len=50,
                     metrics={"valid": {...}})
    loaded = load_model_dir("runs/x/model")   # the model (eval mode), vocabulary, histories, popularity
    ServingModel(loaded).predict([Query(["i12", "i7"], k=10)])   # ranking: raysys.serve.scoring, the one ranker

Loading needs only `raysys.models` (no training code). The directory is written into a temporary
sibling and renamed into place, so a reader never sees half a model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from raysys import __version__
from raysys.config import DataConfig, StudentConfig, TeacherConfig
from raysys.data.dataset import FIRST_ITEM_INDEX, PreparedDataset
from raysys.errors import RaysysError
from raysys.files import write_json_atomic
from raysys.models.common import SequenceModel, mark_id_less
from raysys.models.student import build_student
from raysys.models.teacher import build_teacher
from raysys.models.text_encoder import emb_table
from raysys.run import utc_now

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ITEM_VOCAB_FILE = "item_vocab.parquet"
USER_HISTORY_FILE = "user_history.parquet"
POPULARITY_FILE = "popularity.parquet"
METRICS_FILE = "metrics.json"
TEXT_EMB_FILE = "item_text_emb.parquet"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, ITEM_VOCAB_FILE, USER_HISTORY_FILE, POPULARITY_FILE, METRICS_FILE)
TEXT_EMB_KEY = "items.text_emb"  # the text table's name in the state dict (ItemEmbedding buffer)

ModelKind = Literal["teacher", "student"]
CONFIG_CLASSES: dict[str, type] = {"teacher": TeacherConfig, "student": StudentConfig}


# ---------------------------------------------------------------------------------------------- export


def export_model_dir(
    model: nn.Module,
    out_dir: str | Path,
    dataset: PreparedDataset,
    *,
    kind: ModelKind,
    model_cfg: TeacherConfig | StudentConfig,
    max_len: int,
    metrics: dict[str, Any],
    model_version: str | None = None,
    text_emb: pa.Table | None = None,
) -> Path:
    """Write the model directory for `model` (trained on `dataset`) to `out_dir`; returns its path.

    `model` may be wrapped (DDP's `.module`); its weights are saved as they are, so a sharded
    (ZeRO-3) model must be consolidated first. `text_emb` is the item text embedding table
    (text_encoder.EMB_SCHEMA); when the model uses text and none is given, it is taken from the
    model's own text buffer. `model_version` defaults to `<kind>-<UTC time>`.
    """
    model = getattr(model, "module", model)
    _check_export_args(model, kind, model_cfg, max_len, dataset)
    out_dir = Path(out_dir)
    trained_at = utc_now()
    config = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "architecture": model_cfg.arch,
        "model_config": model_cfg.model_dump(mode="json"),
        "num_items": dataset.num_items,
        "max_len": max_len,
        "hidden_size": model.hidden_size,
        "uses_text": model.items.uses_text,
        "model_version": model_version or f"{kind}-{trained_at.replace(':', '').replace('-', '')}",
        "trained_at": trained_at,
        "raysys_version": __version__,
        "dataset": {
            "path": str(dataset.path),
            "key": dataset.manifest.get("key"),
            "num_users": dataset.num_users,
            # event types that are not positives (data.negative_events): serving keeps them out of histories
            "negative_events": dataset.manifest.get("negative_events", DataConfig().negative_events),
        },
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        _write_contents(tmp, model, dataset, config, metrics, max_len, text_emb)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_export_args(
    model: nn.Module, kind: str, model_cfg: TeacherConfig | StudentConfig, max_len: int, dataset: PreparedDataset
) -> None:
    if kind not in CONFIG_CLASSES:
        raise ValueError(f"kind must be 'teacher' or 'student', not {kind!r}")
    if not isinstance(model_cfg, CONFIG_CLASSES[kind]):
        raise ValueError(f"a {kind} needs a {CONFIG_CLASSES[kind].__name__}, got {type(model_cfg).__name__}")
    if not isinstance(model, SequenceModel):
        raise ValueError(f"expected a raysys SequenceModel, got {type(model).__name__}")
    if model.items.uses_text != model_cfg.use_text:
        raise ValueError(f"model uses_text={model.items.uses_text} but model_cfg.use_text={model_cfg.use_text}")
    if model.num_items != dataset.num_items or model.max_len != max_len:
        raise ValueError(
            f"model has num_items={model.num_items}, max_len={model.max_len}; "
            f"dataset/config say num_items={dataset.num_items}, max_len={max_len}"
        )


def _write_contents(
    out: Path,
    model: SequenceModel,
    dataset: PreparedDataset,
    config: dict[str, Any],
    metrics: dict[str, Any],
    max_len: int,
    text_emb: pa.Table | None,
) -> None:
    vocab = dataset.item_vocab().select(["item_id", "item_index"]).sort_by("item_index")
    id_of_index = _id_of_index(vocab, dataset.num_items)
    sequences = dataset.sequences(["user_index", "user_id", "items"])  # sequences() sorts by user_index
    save_model(model, str(out / WEIGHTS_FILE), metadata={"format": "pt", "kind": config["kind"]})
    pq.write_table(vocab, out / ITEM_VOCAB_FILE)
    pq.write_table(user_history_table(sequences, id_of_index, max_len), out / USER_HISTORY_FILE)
    pq.write_table(popularity_table(sequences["items"], id_of_index), out / POPULARITY_FILE)
    if model.items.uses_text:
        table = text_emb if text_emb is not None else _model_text_table(model, id_of_index)
        pq.write_table(table, out / TEXT_EMB_FILE)
    write_json_atomic(out / METRICS_FILE, metrics)
    write_json_atomic(out / CONFIG_FILE, config)  # last: its presence marks a complete directory


def _id_of_index(vocab: pa.Table, num_items: int) -> pa.Array:
    """[num_items] string array, original id of each item index ("" for pad and mask)."""
    ids = np.full(num_items, "", dtype=object)
    ids[vocab["item_index"].to_numpy()] = vocab["item_id"].to_numpy(zero_copy_only=False)
    return pa.array(ids, pa.string())


def user_history_table(sequences: pa.Table, id_of_index: pa.Array, max_len: int) -> pa.Table:
    """user_id + each user's last `max_len` items as original ids, from (user_id, items list<int32>)."""
    items = sequences["items"].combine_chunks()
    offsets = items.offsets.to_numpy()
    ends = offsets[1:]
    starts = np.maximum(offsets[:-1], ends - max_len)
    lengths = ends - starts
    # Flat positions of the kept tail of every list: start of its row + 0..length-1.
    row_start = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    keep = row_start + np.arange(lengths.sum())
    flat = items.values.to_numpy()[keep]
    kept_ids = id_of_index.take(pa.array(flat, pa.int64()))
    new_offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    histories = pa.ListArray.from_arrays(new_offsets, kept_ids)
    return pa.table({"user_id": sequences["user_id"].combine_chunks(), "items": histories})


def popularity_table(items: pa.ChunkedArray, id_of_index: pa.Array) -> pa.Table:
    """item_id + interaction count over all sequences, every real item, most popular first."""
    flat = items.combine_chunks().flatten().to_numpy()
    counts = np.bincount(flat, minlength=len(id_of_index))[FIRST_ITEM_INDEX:]
    order = np.argsort(-counts, kind="stable")
    return pa.table(
        {
            "item_id": id_of_index.slice(FIRST_ITEM_INDEX).take(pa.array(order)),
            "count": pa.array(counts[order].astype(np.int64)),
        }
    )


def _model_text_table(model: SequenceModel, id_of_index: pa.Array) -> pa.Table:
    """The model's own text buffer as an EMB_SCHEMA table (items with a non-zero text vector)."""
    text = model.items.text_emb.detach().float().cpu()  # [num_items, text_dim]
    rows = torch.nonzero(text.abs().sum(dim=1) > 0).flatten().numpy()
    return emb_table(id_of_index.take(pa.array(rows)).to_pylist(), rows, text[rows].numpy())


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished `tmp` to `out_dir`; an existing `out_dir` is moved aside first, then removed."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        os.replace(out_dir, old / out_dir.name)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ load


@dataclass
class LoadedModel:
    """A model directory in memory: the model in eval mode plus its vocabulary, histories, popularity."""

    path: Path
    config: dict[str, Any]
    model: SequenceModel
    item_ids: list[str]  # index -> original id ("" for pad and mask)
    item_index: dict[str, int] = field(repr=False)  # original id -> index

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def max_len(self) -> int:
        return int(self.config["max_len"])

    @property
    def num_items(self) -> int:
        return int(self.config["num_items"])

    @property
    def model_version(self) -> str:
        return self.config["model_version"]

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / METRICS_FILE).read_text())

    @cached_property
    def user_histories(self) -> dict[str, list[str]]:
        """user_id -> most recent max_len original item ids, chronological."""
        table = pq.read_table(self.path / USER_HISTORY_FILE)
        return dict(zip(table["user_id"].to_pylist(), table["items"].to_pylist(), strict=True))

    @cached_property
    def popularity(self) -> pa.Table:
        """item_id, count; most popular first."""
        return pq.read_table(self.path / POPULARITY_FILE)

    @torch.no_grad()
    def next_item_scores(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] long item indices (left-padded) -> [B, num_items] scores (the evaluator's score_fn)."""
        return self.model.next_item_scores(input_ids)


def load_model_dir(path: str | Path, *, device: str = "cpu") -> LoadedModel:
    """Rebuild the model of a model directory (eval mode) with its vocabulary.

    Raises RaysysError for a missing, incomplete or corrupt directory or another format version.
    """
    path = Path(path).expanduser()
    config = read_model_config(path)
    model = _build_model(path, config)
    model.to(device).eval()
    vocab = _read_parquet(path / ITEM_VOCAB_FILE)
    item_ids = _id_of_index(vocab, int(config["num_items"])).to_pylist()
    item_index = dict(zip(vocab["item_id"].to_pylist(), vocab["item_index"].to_pylist(), strict=True))
    return LoadedModel(path=path, config=config, model=model, item_ids=item_ids, item_index=item_index)


def read_model_config(path: Path) -> dict[str, Any]:
    """config.json of a model directory, after checking the directory is complete and of our format."""
    if not path.is_dir():
        raise RaysysError("model directory not found", where=str(path), hint="pass the directory a train stage wrote")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise RaysysError(
            f"incomplete model directory: missing {', '.join(missing)}", where=str(path), hint="re-export the model"
        )
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RaysysError(f"config.json is not valid JSON ({exc})", where=str(path / CONFIG_FILE)) from None
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        got = config.get("format_version") if isinstance(config, dict) else None
        raise RaysysError(
            f"model format version {got!r} is not {FORMAT_VERSION}",
            where=str(path / CONFIG_FILE),
            hint=f"re-export the model with raysys {__version__}",
        )
    absent = [key for key in ("kind", "model_config", "num_items", "max_len", "model_version") if key not in config]
    if absent or config["kind"] not in CONFIG_CLASSES:
        raise RaysysError(f"config.json lacks {absent} or has an unknown kind", where=str(path / CONFIG_FILE))
    return config


def _build_model(path: Path, config: dict[str, Any]) -> SequenceModel:
    kind = config["kind"]
    try:
        model_cfg = CONFIG_CLASSES[kind].model_validate(config["model_config"])
    except ValueError as exc:
        raise RaysysError(f"model_config does not validate ({exc})", where=str(path / CONFIG_FILE)) from None
    builder = build_teacher if kind == "teacher" else build_student
    weights = path / WEIGHTS_FILE
    try:
        text_emb = _read_text_emb(weights) if model_cfg.use_text else None
        model = builder(model_cfg, int(config["num_items"]), int(config["max_len"]), text_emb=text_emb)
        load_model(model, str(weights), strict=True)
        mark_id_less(model.items)  # the rows pinned at zero: items scored from their text (+ new_item_boost)
    except (SafetensorError, RuntimeError, OSError, KeyError) as exc:
        raise RaysysError(
            f"weights do not load into the {kind} that config.json describes ({str(exc).splitlines()[0]})",
            where=str(weights),
            hint="the directory is corrupt or was edited; re-export the model",
        ) from None
    return model


def _read_text_emb(weights: Path) -> torch.Tensor:
    """The [num_items, text_dim] text table saved with the weights (the model needs it to be built)."""
    with safe_open(str(weights), framework="pt") as f:
        return f.get_tensor(TEXT_EMB_KEY)


def _read_parquet(file: Path) -> pa.Table:
    try:
        return pq.read_table(file)
    except (OSError, pa.ArrowInvalid) as exc:
        raise RaysysError(f"unreadable Parquet file ({exc})", where=str(file), hint="re-export the model") from None


@torch.no_grad()
def warm_start(model: nn.Module, model_dir: str | Path, item_ids: list[str]) -> int:
    """Load the weights of `model_dir` into `model`, a model of the same shape built for a dataset whose
    items (`item_ids`, index order, pad and mask included) start with the directory's (data.vocab_from).
    A parameter whose first dimension grew with the catalog keeps the old rows and its fresh values for
    the new items; buffers then stay the new model's (the new catalog's text embeddings, its masks).
    Returns how many items are new."""
    loaded = load_model_dir(model_dir)
    old_ids = loaded.item_ids
    if item_ids[: len(old_ids)] != old_ids:
        raise RaysysError(
            "the model's items are not the first of this dataset's",
            where=str(model_dir),
            hint="prepare the dataset with data.vocab_from=<the model's dataset>",
        )
    old, new = loaded.model.state_dict(), model.state_dict()
    if len(old_ids) == len(item_ids):
        model.load_state_dict(old)
        return 0
    parameters = {name for name, _ in model.named_parameters()}
    for name, tensor in new.items():
        source = old.get(name)
        if source is None or source.shape[1:] != tensor.shape[1:] or source.shape[0] > tensor.shape[0]:
            raise RaysysError(f"the model's {name} does not fit this model", where=str(model_dir))
        if source.shape == tensor.shape:
            if name in parameters or source.shape[0] != len(old_ids):
                tensor.copy_(source)
        elif name in parameters:
            tensor[: source.shape[0]].copy_(source)
    return len(item_ids) - len(old_ids)
