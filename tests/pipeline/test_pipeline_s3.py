"""The pipeline end to end on tiny synthetic data with its run directory in S3 (moto on 127.0.0.1),
then again from a fresh staging directory: every stage is found done in the bucket and skipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from raysys import storage
from raysys.cli import main
from raysys.config import load_config
from raysys.models.export import load_model_dir
from raysys.pipeline import stages
from raysys.pipeline.stages import localize_data

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "jobs" / "configs" / "tiny.yaml"
BUCKET = "raysys-pipeline"
STAGES = ["prepare", "finetune", "student", "evaluate", "export", "serve_smoke"]


@pytest.fixture(scope="module")
def s3_endpoint(s3_server):
    """The session's moto S3 server (tests/conftest.py) with this module's bucket."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return s3_server


def test_data_input_from_s3_is_copied_to_a_stable_local_path(tmp_path: Path, s3_endpoint: str) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,2\n")
    storage.upload_file(log, f"s3://{BUCKET}/data/log.csv")
    cfg = load_config(None, [f"data.path=s3://{BUCKET}/data/log.csv", f"data.cache_dir={tmp_path / 'cache'}"])

    first, second = localize_data(cfg), localize_data(cfg)

    local = Path(first.data.path)
    assert local.read_text() == log.read_text() and local.name == "log.csv"
    assert second.data.path == first.data.path  # stable: the prepared-dataset cache keeps hitting
    assert cfg.data.path.startswith("s3://")  # the run's own config keeps the URI


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pipeline_runs_into_s3_and_resumes_from_it(tmp_path: Path, s3_endpoint: str, ray_session) -> None:
    uri = f"s3://{BUCKET}/{tmp_path.name}/run"
    argv = ["pipeline", "--config", str(TINY), "--out", uri]

    assert main(argv) == 0

    summary = json.loads(storage.read_text(f"{uri}/summary.json"))
    assert set(summary["models"]) == {"teacher", "student", "popularity", "itemknn"}
    for name in ("teacher", "student"):
        assert summary["models"][name]["path"] == f"{uri}/export/{name}"
        for file in ("config.json", "model.safetensors", "item_vocab.parquet"):
            assert storage.exists(f"{uri}/{stages.TRAINED_BY[name]}/model/{file}")
    for entry in summary["models"].values():
        assert 0.0 <= entry["metrics"]["test"]["ndcg@10"] <= entry["metrics"]["test"]["hr@10"] <= 1.0
    smoke = summary["serve_smoke"]
    assert len(smoke["top_items"]) == 10 and smoke["latency_ms"]["p50"] > 0 and smoke["fallback"] is None
    assert "<h2>Metrics</h2>" in storage.read_text(f"{uri}/report.html")
    student = load_model_dir(storage.download(f"{uri}/export/student", tmp_path / "student"))
    assert student.model_version == smoke["model_version"] and student.kind == "student"
    assert [name for name, rec in summary["stages"].items() if not rec["skipped"]] == STAGES

    shutil.rmtree(storage.staging_dir(uri))  # another machine: only the bucket knows what is done
    assert main(argv) == 0

    again = json.loads(storage.read_text(f"{uri}/summary.json"))
    assert [name for name, rec in again["stages"].items() if rec["skipped"]] == STAGES
    assert again["models"]["student"]["metrics"] == summary["models"]["student"]["metrics"]
