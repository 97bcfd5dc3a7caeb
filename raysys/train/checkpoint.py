"""Training checkpoints: what a Ray Train checkpoint directory holds, how it is sealed, how resume picks one.

Layout of one checkpoint (`checkpoint_step<global step>` under the Ray run directory; every rank
writes its own files into a local folder and Ray merges the folders on upload):

    deepspeed/ds/...           DeepSpeed `save_checkpoint` (model, optimizer, lr schedule; ZeRO shards per rank)
    deepspeed/latest           DeepSpeed's tag file (rank 0)
    train_state.json           rank 0: epoch, global step, best epoch and its valid metrics, epochs
                               without improvement, the history records so far
    best_model.safetensors     rank 0: consolidated weights of the best epoch so far
    manifest-rank<r>.json      written LAST by rank r: every file rank r wrote, with its size; its node

A checkpoint is complete when the manifests of all `world_size` ranks are there and every file they
list has the listed size. Resume takes the newest complete checkpoint and logs why each newer one
was skipped, so a checkpoint cut short by a crash (or an interrupted upload) is never loaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from raysys.run import write_json_atomic

logger = logging.getLogger(__name__)

DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "ds"
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


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    """The training state rank 0 saved in a (complete) checkpoint."""
    return json.loads((ckpt_dir / STATE_FILE).read_text())


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    ok = isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) and "world_size" in manifest
    return manifest if ok else None
