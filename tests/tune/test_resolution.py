"""A stage resolves its dataset once: a 16-trial Population Based Training search, whose trials start
and restart in processes of their own, hashes each input and cached output file exactly once (in
the driver) and resolves the data config once; the trials only open the resolved directory. Counted
in every process the real `raysys tune` command starts, by `raysys.bench.probe`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raysys.bench.probe import probe_env, read_probe

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_16_trial_pbt_search_hashes_its_inputs_once(tiny_data: dict, tmp_path: Path) -> None:
    config = {
        "data": tiny_data,
        "student": {"hidden_size": 8, "num_layers": 1, "num_heads": 2, "dropout": 0.0},
        "distill": {"epochs": 2, "batch_size": 256, "lambda_kd": 0.0, "lambda_ssl": 0.0, "patience": 2},
        "eval": {"ks": [10]},
        "tune": {
            "num_samples": 16,
            "searcher": "random",
            "scheduler": "pbt",
            "perturbation_interval": 1,
            "cpus_per_trial": 1,
            "space": {"distill.lr": {"kind": "loguniform", "low": 1e-5, "high": 3e-2}},
        },
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    log, out = tmp_path / "probe.jsonl", tmp_path / "run"
    env = probe_env(tmp_path / "probe", log)
    env["RAY_ADDRESS"] = "local"  # its own local cluster: every process it starts loads the probe
    command = [sys.executable, "-m", "raysys.cli", "tune", "--config", str(path), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stderr[-3000:]

    records = read_probe(log)
    hashed = Counter(r["path"] for r in records if r["event"] == "sha256")
    opened_by = {r["pid"] for r in records if r["event"] == "open"}
    resolved_by = {r["pid"] for r in records if r["event"] == "resolve"}
    table = pd.read_csv(out / "results.csv")
    print(f"{len(hashed)} files hashed {sum(hashed.values())} times; {len(opened_by)} processes opened the dataset")
    assert len(table) == 16 and table["exploits"].sum() > 0  # PBT restarted trials from donors' checkpoints
    assert hashed and set(hashed.values()) == {1}  # the input log and every cached output, once each
    assert sum(r["event"] == "resolve" for r in records) == 1 and len(resolved_by) == 1
    assert len(opened_by - resolved_by) >= 2  # the trials opened the resolved directory, hashing nothing
    assert json.loads((out / "summary.json").read_text())["trials"]["total"] == 16
