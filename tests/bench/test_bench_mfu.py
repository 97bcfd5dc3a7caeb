"""jobs/bench/mfu.py: the FLOP count by hand, and the GPU benchmark's code path run on CPU (tiny model,
one-process DeepSpeed engine, the Ray worker's `micro_step` and step)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench_mfu():
    spec = importlib.util.spec_from_file_location("bench_mfu", REPO / "jobs" / "bench" / "mfu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_flops_terms() -> None:
    flops = _bench_mfu().step_flops(non_embedding=1000, layers=2, hidden=8, num_items=50, batch=3, max_len=4)
    tokens = 12
    assert flops["dense"] == 6 * 1000 * tokens
    assert flops["attention"] == 12 * 2 * 4 * 8 * tokens
    assert flops["catalog_softmax"] == 6 * 8 * 50 * tokens
    assert flops["total"] == flops["dense"] + flops["attention"] + flops["catalog_softmax"]


@pytest.mark.slow
def test_bench_mfu_runs_the_worker_step_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_PORT": "29533"}
    cmd = [
        sys.executable,
        "jobs/bench/mfu.py",
        "--device",
        "cpu",
        "--tiny",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((tmp_path / "bench_mfu.json").read_text())
    assert figures["model"]["non_embedding_params"] > 0
    assert figures["tokens_per_s"] > 0 and figures["matmul_tflops"] > 0
    assert 0 < figures["mfu_vs_matmul"]
    assert all(math.isfinite(loss) for loss in figures["loss_first_last"])


def test_bench_mfu_without_a_gpu_says_so(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = subprocess.run(
        [sys.executable, "jobs/bench/mfu.py", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "no CUDA device" in done.stderr and "Traceback" not in done.stderr
