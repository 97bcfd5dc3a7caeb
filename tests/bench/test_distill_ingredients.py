"""jobs/bench/distill_ingredients.py: an ingredient pays only by a standard deviation on valid, every
ingredient changes only its own keys, and a run over tiny data is resumable."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from raysys.config import Config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(REPO / "jobs" / "bench"))  # the script imports the ladder beside it
    path = REPO / "jobs" / "bench" / "distill_ingredients.py"
    spec = importlib.util.spec_from_file_location("distill_ingredients", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_ingredient_pays_by_one_std_on_valid_and_test_is_never_read(study) -> None:
    def rows(model: str, valid: list[float], test: float) -> list[dict]:
        return [{"model": model, "seed": s, "valid_ndcg@10": v, "test_ndcg@10": test} for s, v in enumerate(valid)]

    runs = (
        rows("student alone", [0.100, 0.102, 0.104], 0.5)  # std 0.002
        + rows("+ KD full catalog", [0.104, 0.106, 0.108], 0.0)  # +0.004 >= 0.002: pays
        + rows("+ KD top-50", [0.101, 0.103, 0.105], 0.9)  # +0.001: no, whatever its test
        + rows("+ hidden alignment", [0.090, 0.110, 0.130], 0.0)  # +0.008 but std 0.02: no
    )
    lines = {line["model"]: line for line in study.table(runs)}
    assert "pays" not in lines["student alone"]
    assert lines["+ KD full catalog"]["pays"] and lines["+ KD full catalog"]["valid_gain"] == pytest.approx(0.004)
    assert not lines["+ KD top-50"]["pays"] and not lines["+ hidden alignment"]["pays"]
    assert "| + KD full catalog | 3 | 0.1060 ± 0.0020 |" in study.markdown(list(lines.values()))


def test_each_ingredient_changes_only_its_keys(study) -> None:
    cfg = Config.model_validate(
        {"distill": {"lambda_kd": 3.0, "temperature": 1.0, "kd_topk": 20, "lambda_hidden": 0.5}}
    )
    alone = study.student_config(cfg, "student alone", {4: "T"}, 4).distill
    assert (alone.lambda_kd, alone.lambda_hidden, alone.init_items, alone.teacher, alone.seed) == (
        0,
        0,
        "random",
        "T",
        4,
    )
    full = study.student_config(cfg, "+ KD full catalog", {4: "T"}, 4).distill
    assert (full.lambda_kd, full.temperature, full.kd_topk, full.lambda_hidden) == (3.0, 1.0, None, 0)
    init = study.student_config(cfg, "+ teacher item init", {4: "T"}, 4).distill
    assert (init.lambda_kd, init.init_items) == (0, "teacher")
    with pytest.raises(SystemExit, match="lambda_kd > 0"):
        study.student_config(Config.model_validate({"distill": {"lambda_kd": 0}}), "+ KD top-50", {0: "T"}, 0)
    ensemble = study.student_config(cfg, "+ KD from the seeds' teacher ensemble", {0: "A", 4: "T", 7: "B"}, 4)
    assert (ensemble.distill.teacher, ensemble.distill.extra_teachers, ensemble.distill.lambda_kd) == (
        "T",
        ["A", "B"],
        3,
    )
    assert full.extra_teachers == []
    with pytest.raises(SystemExit, match="more than one seed"):
        study.student_config(cfg, "+ KD from the seeds' teacher ensemble", {4: "T"}, 4)
    with pytest.raises(SystemExit):
        study.parse_args(["--ingredients", "student alone,+ magic"])


@pytest.mark.slow
def test_a_tiny_study_trains_a_teacher_and_each_student_and_resumes(study, ray_session, tiny_data, tmp_path) -> None:
    config = tmp_path / "tiny.yaml"
    training = {"epochs": 2, "batch_size": 32, "num_workers": 1}
    sections = {"pretrain": training, "finetune": training, "distill": {**training, "lambda_kd": 1.0}}
    config.write_text(json.dumps({"data": tiny_data, **sections, "pipeline": {"pretrain": True}}))
    names = "student alone,+ KD top-50,+ teacher item init"
    argv = ["--config", str(config), "--seeds", "0", "--ingredients", names, "--out", str(tmp_path / "out")]
    lines = {line["model"]: line for line in study.main(argv)}
    assert set(lines) == {"teacher", *names.split(",")}
    assert (tmp_path / "out" / "teachers" / "seed-0" / "finetune" / "model").is_dir()
    logged = (tmp_path / "out" / "ingredients.jsonl").read_text().splitlines()
    assert len(logged) == 4
    study.main(argv)  # everything done: nothing is trained or logged again
    assert (tmp_path / "out" / "ingredients.jsonl").read_text().splitlines() == logged
