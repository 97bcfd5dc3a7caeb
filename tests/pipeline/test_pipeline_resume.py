"""Resume logic of the pipeline without Ray: stage hashes, skip / rerun / force, interrupted stages,
the tuned config, recipe defaults and the --out URI flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raysys.cli import parse_args
from raysys.config import Config, load_config
from raysys.errors import RaysysError
from raysys.pipeline import stages
from raysys.pipeline.runner import MARKER, StageRunner, stage_hashes
from raysys.recipes import evaluate as evaluate_recipe

ROOT = Path(__file__).resolve().parents[2]


def _changed(before: Config, **overrides: str) -> set[str]:
    """The stages whose hash changes when the dotted overrides are applied."""
    after = load_config(None, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])
    old, new = stage_hashes(before), stage_hashes(after)
    return {name for name in old if old[name] != new[name]}


def test_stage_hashes_follow_what_each_stage_reads() -> None:
    base = Config()
    everything = {
        "prepare",
        "embed_items",
        "pretrain",
        "finetune",
        "tune",
        "student",
        "student_no_kd",
        "evaluate",
        "export",
        "serve_smoke",
    }
    teacher_and_after = everything - {"prepare", "embed_items", "pretrain", "student_no_kd"}  # the control: no teacher
    assert _changed(base, data__max_len=20) == everything
    assert _changed(base, finetune__lr=0.01) == teacher_and_after
    assert _changed(base, pretrain__lr=0.01) == {"pretrain"}  # pretraining is off: nothing else reads it
    assert _changed(base, finetune__init_from="/a/model") == teacher_and_after
    students = {"tune", "student", "student_no_kd", "evaluate", "export", "serve_smoke"}
    assert _changed(base, distill__lambda_kd=0.5) == students - {"student_no_kd"}  # the control has no KD
    assert _changed(base, distill__lr=0.01) == students
    assert _changed(base, eval__ks="[5]") == {"tune", "evaluate"}
    assert _changed(base, serve__max_batch_size=8) == {"serve_smoke"}
    assert _changed(base, distill__teacher="/elsewhere/model") == set()  # the pipeline sets it itself
    assert _changed(base, data__cache_dir="/other/cache") == set()
    assert _changed(base, tune__num_samples=2) == {"tune"}  # the student ignores tune unless it ran
    tuned = load_config(None, ["pipeline.run_tune=true"])
    assert _changed(tuned, tune__num_samples=2) == students
    pretrained = load_config(None, ["pipeline.pretrain=true"])
    on = {"pipeline__pretrain": "true"}
    assert _changed(pretrained, **on, pretrain__lr=0.01) == teacher_and_after | {"pretrain"}  # all downstream
    assert _changed(pretrained, **on, finetune__init_from="/a/model") == set()  # the pipeline sets it itself
    assert _changed(base, **on) == teacher_and_after  # the teacher now starts from pretrain
    assert _changed(base, pipeline__kd_control="true") == {"evaluate"}  # evaluates the control too


class Body:
    """A stage body that counts its calls and writes one output file."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, stage_dir: Path) -> dict:
        self.calls += 1
        (stage_dir / "out.txt").write_text(str(self.calls))
        return {"value": self.calls}


def _ok(stage_dir: Path, summary: dict) -> None:
    if not (stage_dir / "out.txt").is_file():
        raise RaysysError("out.txt is missing", where=str(stage_dir))


def _runner(root: Path, hashes: dict[str, str], force: bool = False) -> StageRunner:
    return StageRunner(root, hashes, force=force, log=lambda line: None)


def test_done_stage_is_skipped_and_rerun_on_change_force_or_bad_output(tmp_path: Path) -> None:
    cfg, body = Config(), Body()
    first = _runner(tmp_path, {"teacher": "h1"}).stage("teacher", cfg, body, _ok)
    assert first["value"] == 1 and first["config_hash"] == "h1" and first["stage"] == "teacher"
    assert (tmp_path / "teacher" / "config.yaml").is_file()

    again = _runner(tmp_path, {"teacher": "h1"})
    assert again.stage("teacher", cfg, body, _ok)["value"] == 1 and body.calls == 1
    assert again.records["teacher"] == {"skipped": True, "seconds": 0.0}

    assert _runner(tmp_path, {"teacher": "h2"}).stage("teacher", cfg, body, _ok)["value"] == 2  # new config
    assert _runner(tmp_path, {"teacher": "h2"}, force=True).stage("teacher", cfg, body, _ok)["value"] == 3
    (tmp_path / "teacher" / "out.txt").unlink()  # outputs no longer valid
    assert _runner(tmp_path, {"teacher": "h2"}).stage("teacher", cfg, body, _ok)["value"] == 4


def test_interrupted_stage_keeps_its_work_only_for_the_same_config(tmp_path: Path) -> None:
    stage_dir = tmp_path / "teacher"
    stage_dir.mkdir()
    (stage_dir / MARKER).write_text(json.dumps({"config_hash": "h1"}))
    (stage_dir / "checkpoint.bin").write_text("partial")  # what a crashed Ray Train run leaves

    seen: list[bool] = []

    def body(d: Path) -> dict:
        seen.append((d / "checkpoint.bin").is_file())
        return {}

    _runner(tmp_path, {"teacher": "h1"}).stage("teacher", Config(), body, lambda d, s: None)
    assert (stage_dir / "summary.json").is_file() and seen == [True]  # same config: resumed from the checkpoint

    (stage_dir / "summary.json").unlink()
    (stage_dir / MARKER).write_text(json.dumps({"config_hash": "other"}))
    _runner(tmp_path, {"teacher": "h1"}).stage("teacher", Config(), body, lambda d, s: None)
    assert seen == [True, False]  # another config's leftovers are cleared first


def test_tuned_takes_only_the_searched_keys(tmp_path: Path) -> None:
    cfg = load_config(None, ["distill.epochs=7", "distill.lr=0.001", "student.dropout=0.2"])
    best = load_config(None, ["distill.epochs=2", "distill.lr=0.005", "student.dropout=0.1", "distill.lambda_kd=1.5"])
    best.save(tmp_path / "best.yaml")

    out = stages.tuned(cfg, tmp_path / "best.yaml")

    assert out.distill.lr == 0.005 and out.student.dropout == 0.1 and out.distill.lambda_kd == 1.5
    assert out.distill.epochs == 7  # not searched: the pipeline's own value


def test_tune_stage_refuses_a_pretrain_search(tmp_path: Path) -> None:
    cfg = load_config(None, ["pipeline.run_tune=true", "tune.stage=pretrain"])
    with pytest.raises(RaysysError, match="tune.stage"):
        stages.tune(cfg, _runner(tmp_path, stage_hashes(cfg)))


def test_recipe_args_are_the_recipes_own_defaults() -> None:
    args = stages.recipe_args(evaluate_recipe, baseline="popularity", quiet=True)
    assert args.baseline == "popularity" and args.model is None and args.num_workers == 1 and args.quiet


def test_out_flag_stages_a_uri_locally() -> None:
    remote = parse_args(["pipeline", "--out", "s3://bucket/run", "--force", "pretrain.epochs=1"])
    assert remote.out_uri == "s3://bucket/run" and Path(remote.out).name == "run" and remote.force
    assert remote.overrides == ["pretrain.epochs=1"] and "://" not in remote.out
    local = parse_args(["pipeline", "--out", "runs/x"])
    assert local.out == "runs/x" and local.out_uri is None and not local.force


@pytest.mark.parametrize("name", ["quickstart.yaml", "tiny.yaml"])
def test_shipped_pipeline_configs_load_and_name_their_command(name: str) -> None:
    path = ROOT / "jobs" / "configs" / name
    cfg = load_config(path)
    assert cfg.data.format == "synthetic"
    assert f"raysys pipeline --config jobs/configs/{name}" in path.read_text()


def test_setup_runs_once_before_the_first_stage_that_runs(tmp_path: Path) -> None:
    calls: list[str] = []
    body = Body()
    StageRunner(tmp_path, {"a": "h", "b": "h"}, log=lambda line: None, setup=lambda: calls.append("setup")).stage(
        "a", Config(), body, _ok
    )
    runner = StageRunner(tmp_path, {"a": "h", "b": "h"}, log=lambda line: None, setup=lambda: calls.append("setup"))
    runner.stage("a", Config(), body, _ok)  # done: skipped, no setup
    assert calls == ["setup"]
    runner.stage("b", Config(), body, _ok)
    runner.stage("b", Config(), body, _ok)
    assert calls == ["setup", "setup"] and body.calls == 2
