"""jobs/bench/quality.py trains the teacher as the pipeline does: pretrain first when pipeline.pretrain."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from raysys.bench.commands import TimedRun

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def quality():
    spec = importlib.util.spec_from_file_location("quality", REPO / "jobs" / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pretrain", [True, False])
def test_the_teacher_is_pretrained_then_fine_tuned_when_the_pipeline_would(quality, monkeypatch, tmp_path, pretrain):
    calls: list[tuple[str, list[str], Path]] = []

    def fake_run_stage(stage, config, overrides, out_dir, **kwargs):
        calls.append((stage, overrides, out_dir))
        return TimedRun(out_dir, 10.0, 4.0 if stage == "finetune" else None, 2, {}, [])

    monkeypatch.setattr(quality, "run_stage", fake_run_stage)
    args = argparse.Namespace(config=str(REPO / "jobs/configs/tiny.yaml"), overrides=[f"pipeline.pretrain={pretrain}"])
    teacher = quality.train_teacher(args, 3, tmp_path, peer_valid=0.1)
    if pretrain:
        assert [c[0] for c in calls] == ["pretrain", "finetune"]
        assert f"finetune.init_from={tmp_path / 'pretrain-3' / 'model'}" in calls[1][1]
        assert (teacher.seconds, teacher.seconds_to_target) == (20.0, 14.0)
    else:
        assert [c[0] for c in calls] == ["finetune"] and (teacher.seconds, teacher.seconds_to_target) == (10.0, 4.0)
    assert "finetune.seed=3" in calls[-1][1] and calls[-1][2] == tmp_path / "teacher-3"
