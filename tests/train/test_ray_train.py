"""Ray Train + DeepSpeed training end to end on tiny synthetic data: the pretrain and distill stages
through the CLI, resume, a worker killed mid-run. Tiny models (hidden 16, one layer), 2 CPU workers
with fractional CPUs so the Ray Data tasks feeding them run beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from raysys.cli import main
from raysys.config import load_config
from raysys.models.export import load_model_dir
from raysys.train.checkpoint import STATE_FILE, checkpoint_dirs, find_resume_checkpoint, incomplete_reason, read_state
from raysys.train.history import read_history
from raysys.train.ray_train import RAY_RUN_NAME, fit

pytestmark = pytest.mark.timeout(600)

TINY_MODEL = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.0}
TRAINING = {"batch_size": 64, "lr": 5e-3, "num_workers": 2, "cpus_per_worker": 0.5, "patience": 5}


@pytest.fixture(scope="module")
def ray_train_session(ray_session):
    return ray_session


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, tiny_data: dict) -> Path:
    """A config file: the tiny synthetic data, tiny teacher and student."""
    root = tmp_path_factory.mktemp("tiny")
    config = {
        "data": tiny_data,
        "teacher": {"arch": "gpt2", **TINY_MODEL},
        "student": TINY_MODEL,
        "pretrain": {**TRAINING, "epochs": 2},
        "distill": {**TRAINING, "epochs": 2, "lambda_kd": 1.0, "lambda_ssl": 0.1},
        "eval": {"ks": [10]},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(stage: str, config: Path, out: Path, *overrides: str) -> dict:
    assert main([stage, "--config", str(config), *overrides, "--out", str(out)]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_pretrain_then_distill_through_the_cli(ray_train_session, tiny_config: Path, tmp_path: Path) -> None:
    teacher = run_cli("pretrain", tiny_config, tmp_path / "teacher")
    assert {"valid", "test"} <= set(teacher["metrics"])
    assert 0 <= teacher["metrics"]["test"]["ndcg@10"] <= 1 and teacher["metrics"]["valid"]["ndcg@10"] > 0
    assert teacher["epochs_run"] == 2 and teacher["optimizer_steps"] > 0
    history = read_history(tmp_path / "teacher")
    assert [r["epoch"] for r in history] == [1, 2] and history[1]["loss"] < history[0]["loss"]
    assert list((tmp_path / "teacher" / "tensorboard").glob("events.out.tfevents.*"))
    assert all(r["checkpoint_seconds"] > 0 for r in history)
    # loss and length_buckets "auto" (the teacher's defaults) resolved from the data: written into the
    # run's config and summary
    resolved, written = teacher["resolved"], load_config(tmp_path / "teacher" / "config.yaml").pretrain
    assert resolved["pretrain.loss"]["value"] == written.loss and written.loss in ("full", "sampled")
    assert resolved["pretrain.length_buckets"]["value"] == written.length_buckets != "auto"
    loaded = load_model_dir(teacher["model_dir"])
    assert loaded.kind == "teacher" and loaded.metrics["valid"] == teacher["metrics"]["valid"]

    # The student with item text: its new_item_boost ("auto") is chosen on valid after training, and the
    # model directory, the run's config and summary.json agree on it and on the figures it gives.
    text = ("student.use_text=true", "student.id_dropout=0.5")
    student = run_cli("distill", tiny_config, tmp_path / "student", f"distill.teacher={teacher['model_dir']}", *text)
    assert {"valid", "test"} <= set(student["metrics"]) and student["teacher"] == teacher["model_dir"]
    served = load_model_dir(student["model_dir"])
    assert served.kind == "student" and served.metrics["test"] == student["metrics"]["test"]
    boost = student["resolved"]["student.new_item_boost"]
    assert isinstance(boost["value"], float) and boost["value"] >= 0 and "valid" in boost["reason"]
    assert served.config["model_config"]["new_item_boost"] == boost["value"] == served.model.items.new_item_boost
    assert load_config(tmp_path / "student" / "config.yaml").student.new_item_boost == boost["value"]
    assert served.model.items.id_less is not None and served.model.items.id_less.any()  # the log's cold items
    kd = [r["kd"] for r in read_history(tmp_path / "student")]
    assert all(value > 0 for value in kd)  # the teacher's forward ran on the workers


@pytest.mark.slow
def test_worker_killed_mid_training_resumes_to_the_target_step(
    ray_train_session, tiny_config: Path, tmp_path: Path
) -> None:
    cfg = load_config(tiny_config, ["pretrain.epochs=3", "pretrain.max_failures=1"])
    outcome = fit(cfg, "pretrain", tmp_path, fail_in_epoch=2)  # rank 1 dies after epoch 2's first step
    assert (tmp_path / "injected_failure_done").exists()
    per_epoch = len(outcome.history[0]["step_losses"])
    assert outcome.optimizer_steps == 3 * per_epoch and outcome.epochs_run == 3
    assert [r["epoch"] for r in read_history(tmp_path)] == [1, 2, 3]  # epoch 2 redone once, logged once
    assert read_state(outcome.checkpoint)["resumed_from"] == [per_epoch]


@pytest.mark.slow
def test_relaunch_skips_an_incomplete_checkpoint(
    ray_train_session, tiny_config: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(tiny_config, ["pretrain.epochs=2", "pretrain.num_to_keep=3"])
    first = fit(cfg, "pretrain", tmp_path)
    run_dir = tmp_path / RAY_RUN_NAME
    checkpoints = checkpoint_dirs(run_dir)[::-1]  # oldest first
    assert len(checkpoints) == 2 and read_state(checkpoints[-1])["epoch"] == 2
    # Truncate a DeepSpeed shard of the newest checkpoint: resume must fall back to epoch 1's.
    shard = max((p for p in (checkpoints[-1] / "deepspeed").rglob("*.pt")), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="raysys.train.checkpoint"):
        assert find_resume_checkpoint(checkpoints[-1], run_dir) == checkpoints[0]
    assert "skipping incomplete checkpoint" in caplog.text and "bytes, the manifest says" in caplog.text

    again = fit(load_config(tiny_config, ["pretrain.epochs=3", "pretrain.num_to_keep=3"]), "pretrain", tmp_path)
    assert again.epochs_run == 3 and again.optimizer_steps == first.optimizer_steps // 2 * 3
    assert [r["epoch"] for r in read_history(tmp_path)] == [1, 2, 3]
    assert (again.checkpoint / STATE_FILE).is_file()


@pytest.mark.slow
def test_zero_stages_give_the_same_losses(ray_train_session, tiny_config: Path, tmp_path: Path) -> None:
    # 2 workers x 2 epochs x ~10 micro-batches of 16 = ~20 optimizer steps on the same shards and seed.
    losses, grad_norms = {}, {}
    for stage in (0, 2, 3):
        overrides = [f"pretrain.zero_stage={stage}", "pretrain.batch_size=16", "pretrain.epochs=2", "pretrain.lr=0.01"]
        outcome = fit(load_config(tiny_config, overrides), "pretrain", tmp_path / f"zero{stage}")
        history = read_history(tmp_path / f"zero{stage}")
        losses[stage] = [r["loss"] for r in history] + [r["valid_ndcg@10"] for r in history]
        grad_norms[stage] = [r["grad_norm"] for r in history]
        assert outcome.optimizer_steps >= 16 and min(grad_norms[stage]) > 0
    print(f"losses and valid ndcg@10 by ZeRO stage: {losses}; mean grad norms: {grad_norms}")
    for stage in (2, 3):
        assert losses[stage] == pytest.approx(losses[0], abs=1e-3)
        assert grad_norms[stage] == pytest.approx(grad_norms[0], rel=1e-3)


TWO_NODES = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from raysys.config import load_config
from raysys.train.ray_train import fit

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
cluster.add_node(num_cpus=2)
ray.init(address=cluster.address, log_to_driver=False)
cfg = load_config(sys.argv[1], ["pretrain.epochs=1", "pretrain.placement_strategy=SPREAD"])
outcome = fit(cfg, "pretrain", __import__("pathlib").Path(sys.argv[2]))
nodes = [json.load(open(outcome.checkpoint / f"manifest-rank{r}.json"))["node_id"] for r in (0, 1)]
print("NODES " + json.dumps(nodes))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_training_spreads_over_two_ray_nodes(tiny_config: Path, tmp_path: Path) -> None:
    # A separate process: this test's two-node cluster cannot share the session's Ray instance.
    import subprocess
    import sys

    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODES)
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_config), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=420,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("NODES")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    nodes = json.loads(lines[0][len("NODES ") :])
    assert len(set(nodes)) == 2 and all(nodes)


@pytest.mark.slow
def test_driver_killed_after_the_first_checkpoint_relaunches_and_resumes(tiny_config: Path, tmp_path: Path) -> None:
    # The driver is a separate `raysys pretrain` process (its own local Ray cluster, in its own process
    # group): SIGKILL the whole group once the first complete checkpoint is on disk, then run the same
    # command again. The relaunch must resume from that checkpoint, not start over.
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "raysys.cli",
        "pretrain",
        "--config",
        str(tiny_config),
        "pretrain.epochs=4",
        "pretrain.num_to_keep=4",
        "--out",
        str(out),
    ]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not _complete_checkpoints(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "the first run ended before it could be killed"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # Ray's worker processes run in sessions of their own: one may still seal the checkpoint it was
    # writing before it notices its raylet is gone. What the relaunch can resume from is what is on
    # disk once that has settled.
    killed_at = _settled(lambda: {read_state(c)["step"] for c in _complete_checkpoints(out)})
    assert killed_at and not (out / "summary.json").exists()

    done = subprocess.run(command, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    state = read_state(Path(checkpoint_dirs(out / RAY_RUN_NAME)[0]))
    assert summary["epochs_run"] == 4 and state["epoch"] == 4
    assert state["resumed_from"] and state["resumed_from"][0] in killed_at  # resumed, not restarted
    assert [r["epoch"] for r in read_history(out)] == [1, 2, 3, 4]


def _settled(read, quiet_s: float = 5.0, timeout_s: float = 60.0):
    """`read()` once it has returned the same value for `quiet_s` seconds (or after `timeout_s`)."""
    import time

    value, since, deadline = read(), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def _complete_checkpoints(out: Path) -> list[Path]:
    """Checkpoints of the run that a resume would accept (every rank's manifest written)."""
    run_dir = out / RAY_RUN_NAME
    if not run_dir.is_dir():
        return []
    return [c for c in checkpoint_dirs(run_dir) if incomplete_reason(c) is None]


@pytest.mark.slow
def test_click_prediction_fine_tune_from_the_pretrained_teacher(
    ray_train_session, tiny_config: Path, tmp_path: Path
) -> None:
    teacher = run_cli("pretrain", tiny_config, tmp_path / "teacher", "pretrain.epochs=2")
    ctr = run_cli(
        "pretrain",
        tiny_config,
        tmp_path / "ctr",
        "pretrain.task=ctr",
        f"pretrain.init_from={teacher['model_dir']}",
        "pretrain.epochs=3",
        "pretrain.lr=0.01",
    )
    assert ctr["task"] == "ctr" and ctr["epochs_run"] == 3
    for split in ("valid", "test"):
        assert set(ctr["metrics"][split]) >= {"auc", "log_loss"}
        assert 0.5 < ctr["metrics"][split]["auc"] <= 1.0  # the pretrained encoder already ranks the click first
    history = read_history(tmp_path / "ctr")
    assert [r["epoch"] for r in history] == [1, 2, 3] and all(
        "valid_auc" in r and r["items_per_s"] > 0 for r in history
    )
    assert (tmp_path / "ctr" / "click_model.safetensors").is_file()
    assert load_model_dir(ctr["model_dir"]).kind == "teacher"  # the fine-tuned encoder stays a usable teacher
