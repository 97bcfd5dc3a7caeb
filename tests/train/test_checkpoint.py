"""Checkpoint sealing and selection without Ray: manifests per rank, incomplete checkpoints skipped
with a logged reason, the newest complete one chosen; the DeepSpeed config; the history files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raysys.config import PretrainConfig
from raysys.train.checkpoint import (
    MANIFEST_PREFIX,
    checkpoint_dir_name,
    find_resume_checkpoint,
    incomplete_reason,
    write_manifest,
)
from raysys.train.deepspeed_config import deepspeed_config
from raysys.train.history import read_history, write_history


def fake_checkpoint(run_dir: Path, step: int, world_size: int = 2) -> Path:
    """A checkpoint folder as Ray leaves it after merging every rank's upload."""
    folder = run_dir / checkpoint_dir_name(step)
    for rank in range(world_size):
        part = folder / "deepspeed" / "ds"
        part.mkdir(parents=True, exist_ok=True)
        (part / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(b"x" * (100 + rank))
        if rank == 0:
            (folder / "train_state.json").write_text(json.dumps({"epoch": step}))
        write_manifest(folder, rank, world_size, step)
    return folder


def test_manifest_lists_each_ranks_files_and_names_sort_by_step(tmp_path: Path) -> None:
    folder = fake_checkpoint(tmp_path, 12)
    manifest = json.loads((folder / f"{MANIFEST_PREFIX}0.json").read_text())
    assert manifest["world_size"] == 2 and manifest["global_step"] == 12
    assert manifest["files"]["deepspeed/ds/zero_pp_rank_0_optim_states.pt"] == 100
    assert not any(name.startswith(MANIFEST_PREFIX) for name in manifest["files"])
    assert incomplete_reason(folder) is None
    names = [checkpoint_dir_name(100), checkpoint_dir_name(9)]
    assert sorted(names) == names[::-1]


def test_missing_manifest_and_truncated_shard_are_reasons(tmp_path: Path) -> None:
    no_manifest = fake_checkpoint(tmp_path, 1)
    (no_manifest / f"{MANIFEST_PREFIX}1.json").unlink()
    assert incomplete_reason(no_manifest) == f"{MANIFEST_PREFIX}1.json is missing or unreadable"
    truncated = fake_checkpoint(tmp_path, 2)
    shard = truncated / "deepspeed" / "ds" / "zero_pp_rank_1_optim_states.pt"
    shard.write_bytes(b"x" * 10)
    assert "has 10 bytes, the manifest says 101" in incomplete_reason(truncated)
    assert incomplete_reason(tmp_path / "absent") == "not a directory"


def test_resume_takes_the_newest_complete_checkpoint_and_logs_the_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second, third = (fake_checkpoint(tmp_path, step) for step in (1, 2, 3))
    (third / f"{MANIFEST_PREFIX}0.json").unlink()  # cut short before rank 0 sealed it
    (second / "train_state.json").write_text("{}")  # rewritten after sealing: size differs
    with caplog.at_level("WARNING", logger="raysys.train.checkpoint"):
        assert find_resume_checkpoint(third, tmp_path) == first
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 2 and str(third) in skipped[0] and "manifest-rank0.json is missing" in skipped[0]
    assert str(second) in skipped[1] and "train_state.json (rank 0) has 2 bytes" in skipped[1]
    assert find_resume_checkpoint(None, tmp_path / "nothing") is None
    assert find_resume_checkpoint(None, tmp_path) == first  # a relaunched driver: Ray knows none


def test_deepspeed_config_follows_the_training_section() -> None:
    cfg = PretrainConfig(batch_size=32, grad_accum=4, grad_clip=0.5, zero_stage=3)
    config = deepspeed_config(cfg, use_gpu=False)
    assert config["train_micro_batch_size_per_gpu"] == 32 and config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5 and config["zero_optimization"]["stage"] == 3
    assert config["bf16"]["enabled"] is False and deepspeed_config(cfg, use_gpu=True)["bf16"]["enabled"] is True
    assert "gradient_clipping" not in deepspeed_config(PretrainConfig(grad_clip=None), use_gpu=False)
    assert "optimizer" not in config and "scheduler" not in config  # ours are passed as client objects


def test_history_is_rewritten_whole(tmp_path: Path) -> None:
    write_history(tmp_path, [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}])
    write_history(tmp_path, [{"epoch": 1, "loss": 2.0}])  # after resuming from epoch 1
    assert read_history(tmp_path) == [{"epoch": 1, "loss": 2.0}]
    assert read_history(tmp_path / "none") == []
