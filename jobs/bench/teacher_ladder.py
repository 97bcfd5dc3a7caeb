"""The teacher size ladder: each size x regularisation / lr setting, pretrained self-supervised, then
fine-tuned on next item from those weights (the pipeline's pretrain -> finetune), on one prepared dataset.

    python jobs/bench/teacher_ladder.py --config jobs/configs/ml100k.yaml --out runs/ladder           # here, CPU
    python jobs/bench/teacher_ladder.py --dataset DIR --device cuda --parallel 8 --out runs/ladder    # a GPU machine
    python jobs/bench/teacher_ladder.py ... --sizes 512x8 --settings shipped,reg --best-seeds 1,2

Phase 1 trains every size x setting at `--seeds`; phase 2 (with `--best-seeds`) trains each size's best
setting on valid again at those seeds. Every run uses the config's pretrain and finetune sections with
the setting's overrides; nothing is chosen on test (test NDCG@10 is read once per run, at its best
valid epoch, for the table). Runs train in this process's loop (`train_local`) at the sections'
`batch_size`. `--minutes` stops a run between epochs past that wall time: it is marked `capped` and
keeps its validation curve. Each finished run is appended to `ladder.jsonl` at once, and an invocation
with the same `--out` skips the runs already there (resumable); `ladder.json` holds the table.

`--dataset` opens a prepared dataset directory directly (item text embedded beside it, as the pipeline's
embed_items stage leaves it), so a machine without Ray can run the ladder; otherwise the config's data
section is prepared (or reused from the cache) with Ray Data here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from raysys.config import Config, load_config
from raysys.data.dataset import PreparedDataset
from raysys.models.common import count_non_embedding_params
from raysys.train.local import train_local
from raysys.train.tasks import PretrainTask

# hidden size, layers, heads (head width 64 from 256 up); 1024x8 is the MFU benchmark's teacher (GPU only)
SIZES = {
    "128x2": (128, 2, 2),
    "256x4": (256, 4, 4),
    "512x4": (512, 4, 8),
    "512x8": (512, 8, 8),
    "1024x8": (1024, 8, 16),
}

# Regularisation / lr settings: "teacher.", "pretrain." and "finetune." keys go to that section, bare
# keys to both training sections (pretrain and finetune).
SETTINGS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "reg": {"teacher.dropout": 0.3, "weight_decay": 0.1, "lr": 0.001, "warmup_steps": 100},
    "low_lr": {"teacher.dropout": 0.2, "weight_decay": 0.05, "lr": 0.0005, "warmup_steps": 200},
    "heavy": {"teacher.dropout": 0.5, "weight_decay": 0.1, "lr": 0.001, "warmup_steps": 100},
    "long_ssl": {"teacher.dropout": 0.3, "weight_decay": 0.1, "lr": 0.001, "warmup_steps": 100, "pretrain.epochs": 30},
}


class TimeUp(Exception):
    """Raised between epochs once a run's wall-time cap has passed."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/configs/ml100k.yaml")
    parser.add_argument("--dataset", default=None, help="a prepared dataset directory (no Ray needed)")
    parser.add_argument("--sizes", default="128x2,256x4,512x4,512x8")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--best-seeds", default="", help="phase 2: each size's best setting again at these seeds")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (processes)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap of one run (both stages)")
    parser.add_argument("--out", default="runs/ladder")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return parser.parse_args()


def run_config(cfg: Config, size: str, setting: str, seed: int) -> Config:
    """The config of one ladder run: the teacher's size, the setting's overrides, the seed."""
    hidden, layers, heads = SIZES[size]
    updates: dict[str, dict[str, Any]] = {
        "teacher": {"hidden_size": hidden, "num_layers": layers, "num_heads": heads},
        "pretrain": {"seed": seed},
        "finetune": {"seed": seed},
    }
    for key, value in SETTINGS[setting].items():
        section, _, name = key.rpartition(".")
        for target in [section] if section else ["pretrain", "finetune"]:
            updates[target][name] = value
    return cfg.model_copy(update={name: getattr(cfg, name).model_copy(update=u) for name, u in updates.items()})


def stage_figures(outcome, seconds: float) -> dict[str, Any]:
    """A stage's best epoch, its figures and the validation curve."""
    return {
        "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.epochs_run,
        "seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / max(len(outcome.history), 1), 2),
        "valid_ndcg@10": round(outcome.valid["ndcg@10"], 4),
        "valid_curve": [round(r["valid_ndcg@10"], 4) for r in outcome.history],
    }


def train_stage(cfg: Config, stage: str, dataset: PreparedDataset, device: str, deadline: float | None):
    """One stage in this process, stopped between epochs at `deadline` (then None, the curve kept)."""
    curve: list[dict[str, Any]] = []

    def on_epoch(record: dict[str, Any]) -> None:
        curve.append(record)
        if deadline is not None and time.time() > deadline:
            raise TimeUp

    start = time.perf_counter()
    try:
        outcome = train_local(cfg, stage, dataset, on_epoch=on_epoch, test=stage == "finetune", device=device)
    except TimeUp:
        return None, curve, time.perf_counter() - start
    return outcome, curve, time.perf_counter() - start


def ladder_run(
    cfg: Config, dataset_dir: str, size: str, setting: str, seed: int, device: str, minutes: float | None, threads: int
) -> dict[str, Any]:
    """Pretrain, then finetune from those weights; returns the run's row of the table."""
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    dataset = PreparedDataset.open(dataset_dir)
    cfg = run_config(cfg, size, setting, seed)
    deadline = time.time() + 60 * minutes if minutes else None
    row: dict[str, Any] = {"size": size, "setting": setting, "seed": seed, "device": device}
    outcome, curve, seconds = train_stage(cfg, "pretrain", dataset, device, deadline)
    if outcome is None:
        return {**row, "capped": "pretrain", "pretrain_curve": [round(r["valid_ndcg@10"], 4) for r in curve]}
    row["non_embedding_params"] = count_non_embedding_params(outcome.model)  # text projection included
    row["pretrain"] = stage_figures(outcome, seconds)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = PretrainTask(cfg, "pretrain").export(outcome.model.cpu(), Path(tmp), dataset, outcome.metrics)
        finetune = cfg.finetune.model_copy(update={"init_from": model_dir["model_dir"]})
        outcome, curve, seconds = train_stage(
            cfg.model_copy(update={"finetune": finetune}), "finetune", dataset, device, deadline
        )
    if outcome is None:
        return {**row, "capped": "finetune", "finetune_curve": [round(r["valid_ndcg@10"], 4) for r in curve]}
    row["finetune"] = stage_figures(outcome, seconds)
    row["valid_ndcg@10"] = row["finetune"]["valid_ndcg@10"]
    row["test_ndcg@10"] = round(outcome.test["ndcg@10"], 4)
    return row


def open_dataset(args: argparse.Namespace, cfg: Config) -> str:
    """The prepared dataset's directory, its item text embedded beside it (CPU machine, with Ray)."""
    if args.dataset:
        return args.dataset
    from raysys.data.prepare import load_or_prepare
    from raysys.models.text_encoder import item_text_embeddings

    dataset = load_or_prepare(cfg.data, progress=False)
    if cfg.teacher.use_text:
        item_text_embeddings(dataset, progress=False)
    return str(dataset.path)


def run_all(args: argparse.Namespace, cfg: Config, dataset_dir: str, jobs: list[tuple[str, str, int]]) -> list[dict]:
    """`jobs` (size, setting, seed) across `--parallel` processes; each row appended to ladder.jsonl."""
    out = Path(args.out)
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    context = multiprocessing.get_context("spawn")
    rows = []
    with ProcessPoolExecutor(args.parallel, mp_context=context) as pool:
        futures = [
            pool.submit(ladder_run, cfg, dataset_dir, size, setting, seed, args.device, args.minutes, threads)
            for size, setting, seed in jobs
        ]
        for future in as_completed(futures):
            job = jobs[futures.index(future)]
            try:
                row = future.result()
            except Exception as error:  # one failed run (e.g. out of GPU memory) is recorded, not fatal
                failure = f"{type(error).__name__}: {error}"[:300]
                row = {"size": job[0], "setting": job[1], "seed": job[2], "error": failure}
            rows.append(row)
            with (out / "ladder.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(summary_line(row), flush=True)
    return rows


def summary_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['size']:>6} {row['setting']:>8} seed {row['seed']}: failed: {row['error']}"
    if "capped" in row:
        return f"{row['size']:>6} {row['setting']:>8} seed {row['seed']}: capped in {row['capped']}"
    return (
        f"{row['size']:>6} {row['setting']:>8} seed {row['seed']}: params {row['non_embedding_params']:>10,}"
        f"  s/epoch {row['pretrain']['seconds_per_epoch']:>6} / {row['finetune']['seconds_per_epoch']:>6}"
        f"  best epoch {row['finetune']['best_epoch']:>3}"
        f"  valid {row['valid_ndcg@10']:.4f}  test {row['test_ndcg@10']:.4f}"
    )


def finished_rows(path: Path) -> list[dict[str, Any]]:
    """The runs an earlier invocation finished (ladder.jsonl; failed ones are run again)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if "error" not in row]


def done_jobs(rows: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    return {(row["size"], row["setting"], row["seed"]) for row in rows}


def best_settings(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Each size's setting with the highest mean valid NDCG@10 over its finished runs."""
    scores: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if "valid_ndcg@10" in row:
            scores.setdefault((row["size"], row["setting"]), []).append(row["valid_ndcg@10"])
    best: dict[str, tuple[float, str]] = {}
    for (size, setting), values in scores.items():
        mean = sum(values) / len(values)
        if size not in best or mean > best[size][0]:
            best[size] = (mean, setting)
    return {size: setting for size, (_, setting) in best.items()}


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.overrides)
    unknown = [s for s in args.sizes.split(",") if s not in SIZES] + [
        s for s in args.settings.split(",") if s not in SETTINGS
    ]
    if unknown:
        raise SystemExit(f"error: unknown size or setting {unknown}; sizes {list(SIZES)}, settings {list(SETTINGS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; run on the GPU machine, or pass --device cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset_dir = open_dataset(args, cfg)
    finished = finished_rows(out / "ladder.jsonl")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [
        (size, setting, seed)
        for size in args.sizes.split(",")
        for setting in args.settings.split(",")
        for seed in seeds
    ]
    rows = finished + run_all(args, cfg, dataset_dir, [job for job in jobs if job not in done_jobs(finished)])
    if args.best_seeds:
        best = best_settings(rows)
        print(f"best setting per size on valid: {best}", flush=True)
        again = [(size, setting, int(seed)) for size, setting in best.items() for seed in args.best_seeds.split(",")]
        rows += run_all(args, cfg, dataset_dir, [job for job in again if job not in done_jobs(rows)])
    (out / "ladder.json").write_text(json.dumps({"best_on_valid": best_settings(rows), "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
