"""Training checkpoints: what a checkpoint directory holds, how it is written and sealed, how resume
picks one and loads it. Ray Train workers and direct Tune trials write the same layout; each epoch's
checkpoint goes to `ray.train.report` / `tune.report` (under the Ray run directory,
`checkpoint_step<global step>`; every rank writes its own files into a local folder and Ray merges the
folders on upload):

    deepspeed/ds/..., latest   DeepSpeed `save_checkpoint` (model, optimizer, lr schedule; ZeRO shards per rank)
      or training_state.pt     the plain engine's modules, AdamW, lr schedule and step count
    train_state.json           rank 0: `TrainState` (epoch, step, best epoch and its valid metrics, epochs
                               without improvement, the history records so far)
    best_model.safetensors     rank 0: consolidated weights of the best epoch so far
    manifest-rank<r>.json      written LAST by rank r: every file rank r wrote, with its size; its node

A checkpoint is complete when the manifests of all `world_size` ranks are there and every file they
list has the listed size. Resume takes the newest complete checkpoint and logs why each newer one
was skipped, so a checkpoint cut short by a crash (or an interrupted upload) is never loaded.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from raysys.files import write_json_atomic
from raysys.train.state import TrainState

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
BEST_WEIGHTS_FILE = "best_model.safetensors"
MANIFEST_PREFIX = "manifest-rank"
CHECKPOINT_PREFIX = "checkpoint_"


def checkpoint_dir_name(global_step: int) -> str:
    """`checkpoint_step00000042`: names sort in step order, so the newest is the last."""
    return f"{CHECKPOINT_PREFIX}step{global_step:08d}"


def write_manifest(ckpt_dir: Path, rank: int, world_size: int, global_step: int, node_id: str | None = None) -> Path:
    """Seal this rank's part of a checkpoint: list every file under `ckpt_dir` with its size (and
    the Ray node that wrote it, for provenance).

    Call it after everything else is written; the manifest's presence is what marks the part complete.
    """
    files = {
        str(path.relative_to(ckpt_dir)): path.stat().st_size
        for path in sorted(ckpt_dir.rglob("*"))
        if path.is_file() and not path.name.startswith(MANIFEST_PREFIX)
    }
    payload = {"rank": rank, "world_size": world_size, "global_step": global_step, "node_id": node_id, "files": files}
    return write_json_atomic(ckpt_dir / f"{MANIFEST_PREFIX}{rank}.json", payload)


def incomplete_reason(ckpt_dir: Path) -> str | None:
    """Why `ckpt_dir` is not a complete checkpoint, or None when it is."""
    if not ckpt_dir.is_dir():
        return "not a directory"
    first = _read_manifest(ckpt_dir / f"{MANIFEST_PREFIX}0.json")
    if first is None:
        return f"{MANIFEST_PREFIX}0.json is missing or unreadable"
    for rank in range(int(first["world_size"])):
        manifest = first if rank == 0 else _read_manifest(ckpt_dir / f"{MANIFEST_PREFIX}{rank}.json")
        if manifest is None:
            return f"{MANIFEST_PREFIX}{rank}.json is missing or unreadable"
        for name, size in manifest["files"].items():
            path = ckpt_dir / name
            if not path.is_file():
                return f"{name} (rank {rank}) is missing"
            if path.stat().st_size != size:
                return f"{name} (rank {rank}) has {path.stat().st_size} bytes, the manifest says {size}"
    return None


def find_resume_checkpoint(latest: Path | None, run_dir: Path | None) -> Path | None:
    """The newest complete checkpoint among `latest` (Ray's) and the `checkpoint_*` folders of
    `run_dir`; logs a warning naming each incomplete one it skips. None when there is none."""
    candidates = checkpoint_dirs(run_dir) if run_dir is not None else []
    if latest is not None:
        candidates = [latest] + [c for c in candidates if c.resolve() != latest.resolve()]
    for ckpt_dir in candidates:
        reason = incomplete_reason(ckpt_dir)
        if reason is None:
            return ckpt_dir
        logger.warning("skipping incomplete checkpoint %s: %s", ckpt_dir, reason)
    return None


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The checkpoint folders of a Ray run directory, newest first (none when it does not exist)."""
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()), reverse=True)


def read_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The training state rank 0 saved in a (complete) checkpoint."""
    return json.loads((Path(ckpt_dir) / STATE_FILE).read_text())


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    ok = isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) and "world_size" in manifest
    return manifest if ok else None


@contextmanager
def written(
    engine: Any, state: TrainState, best_weights: dict[str, torch.Tensor], *, rank: int = 0, world_size: int = 1
) -> Iterator[Path]:
    """A temporary folder holding this rank's part of a checkpoint, sealed by its manifest (yields its path)."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="raysys-ckpt-") as tmp:
        folder = Path(tmp)
        engine.save(folder)
        if rank == 0:
            save_file(best_weights, str(folder / BEST_WEIGHTS_FILE))
            write_json_atomic(folder / STATE_FILE, state.to_dict())
        write_manifest(folder, rank, world_size, state.step, _node_id())
        yield folder


def load(engine: Any, ckpt_dir: Path) -> tuple[TrainState, dict[str, torch.Tensor]]:
    """Load a complete checkpoint into `engine`; returns its training state (with this resume noted)
    and the best weights so far."""
    from safetensors.torch import load_file

    engine.load(ckpt_dir)
    state = TrainState.from_dict(read_state(ckpt_dir))
    state.resumed_from.append(state.step)
    return state, load_file(str(ckpt_dir / BEST_WEIGHTS_FILE))


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
