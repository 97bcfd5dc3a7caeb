"""The prepared-dataset cache: content fingerprints, cache keys, manifest checks, atomic publishing.

A prepared dataset lives in `data.cache_dir/<key>`, where the key hashes the data config (without
`cache_dir` and `max_len`, which do not change the prepared data) and the SHA-256 of every input file.
Sizes and modification times are not enough (a file rewritten within a second, or copied with its
mtime, would be missed), and hashing is cheap: about 0.5 s per GB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from raysys.config import DataConfig, config_hash
from raysys.data.dataset import FORMAT_VERSION, MANIFEST
from raysys.data.sequences import file_sha256

KEY_EXCLUDE = {"cache_dir", "max_len"}


def fingerprint_files(paths: list[str]) -> list[dict[str, Any]]:
    """[{path, size, sha256}] of the input files, in the given order."""
    return [{"path": str(p), "size": os.path.getsize(p), "sha256": file_sha256(p)} for p in paths]


def data_config_hash(cfg: DataConfig) -> str:
    """Hash of the data settings that change the prepared data."""
    return config_hash(cfg, exclude=KEY_EXCLUDE)


def dataset_key(cfg: DataConfig, inputs: list[dict[str, Any]]) -> str:
    """Cache key: the data-config hash plus the inputs' content checksums (not their paths)."""
    payload = json.dumps({"config": data_config_hash(cfg), "inputs": [f["sha256"] for f in inputs]})
    return f"{data_config_hash(cfg)[:8]}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def is_complete(folder: Path) -> bool:
    """True when `folder` holds a manifest of this format whose output files all exist with the recorded
    size and SHA-256 (a half-copied or edited dataset is prepared again, not trusted)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if manifest.get("format_version") != FORMAT_VERSION or not manifest.get("outputs"):
        return False
    for entry in manifest["outputs"]:
        path = folder / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["size"] or file_sha256(path) != entry["sha256"]:
            return False
    return True


def publish(tmp: Path, target: Path) -> None:
    """Move a freshly prepared folder into place atomically (rename within the cache directory).

    A stale, incomplete folder at `target` is replaced; a complete one (another process finished the
    same key first) is kept and `tmp` is discarded.
    """
    if target.exists():
        if is_complete(target):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        target.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:
        if not is_complete(target):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
