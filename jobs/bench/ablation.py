"""Ablation: what each part of the student's loss, and self-supervised pretraining, is worth.

    python jobs/bench/ablation.py --configs jobs/configs/ml100k.yaml,jobs/configs/quickstart.yaml \
        --seeds 0,1,2 --out runs/ablation

Rows, per dataset and seed (every model chosen at its best validation epoch, test NDCG@10 reported):
  student alone      L_rec                              (distill.lambda_ssl=0, lambda_kd=0)
  student + SSL      L_rec + λ_ssl·L_ssl                (CL4SRec contrastive, --lambda-ssl)
  student + KD       L_rec + λ_kd·L_kd                  (from the teacher below; the config's λ_kd, T)
  student + both     L_rec + λ_ssl·L_ssl + λ_kd·L_kd
  teacher scratch    next-item from random weights      (the teacher the students learn from)
  teacher pretrain→fine-tune   masked-item + contrastive pretraining (--pretrain-epochs), then the
                     same next-item fine-tune from those weights
All other settings are the config's own (lr, T, epochs, patience); only the terms switch.
Training runs in-process (raysys.train.local: the same losses, batches and early stopping as the
Ray Train workers) with batch_size x num_workers as the batch, which is the workers' global batch:
36 trainings on 2 cores do not fit the budget with Ray's per-run start-up.
Writes ablation.csv (one row per run) and ablation.md (mean ± std) into --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

from raysys.config import Config, load_config
from raysys.data.dataset import PreparedDataset
from raysys.data.prepare import load_or_prepare
from raysys.train.local import global_batch, train_local
from raysys.train.loop import TrainOutcome, resolve_auto
from raysys.train.tasks import Stage, task_for

STUDENT_VARIANTS = {  # name -> (lambda_ssl on?, lambda_kd on?)
    "student alone": (False, False),
    "student + SSL": (True, False),
    "student + KD": (False, True),
    "student + both": (True, True),
}
FIELDS = ["dataset", "seed", "model", "test_ndcg@10", "test_hr@10", "valid_ndcg@10", "best_epoch", "seconds"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="jobs/configs/ml100k.yaml,jobs/configs/quickstart.yaml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pretrain-epochs", type=int, default=10, help="masked-item + contrastive epochs")
    parser.add_argument("--masked-weight", type=float, default=1.0)
    parser.add_argument("--contrastive-weight", type=float, default=0.1)
    parser.add_argument("--lambda-ssl", type=float, default=0.1, help="λ_ssl of the +SSL rows")
    parser.add_argument("--lambda-kd", type=float, default=None, help="λ_kd of the +KD rows (default: the config's)")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every config")
    return parser.parse_args()


def train_and_test(
    name: str, cfg: Config, stage: Stage, dataset: PreparedDataset
) -> tuple[dict[str, Any], TrainOutcome]:
    """Train in process at the workers' global batch (best valid epoch kept) and measure test figures."""
    start = time.perf_counter()
    result = train_local(
        global_batch(resolve_auto(cfg, stage, dataset)[0], stage),  # loss=auto as the Ray Train run resolves it
        stage,
        dataset,
        test=True,
        on_epoch=lambda r: print(
            f"  {name} epoch {r['epoch']}: valid ndcg@10 {r['valid_ndcg@10']:.4f} ({r['seconds']} s)", flush=True
        ),
    )
    row = {
        "model": name,
        "test_ndcg@10": round(result.test["ndcg@10"], 4),
        "test_hr@10": round(result.test["hr@10"], 4),
        "valid_ndcg@10": round(result.valid["ndcg@10"], 4),
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return row, result


def with_section(cfg: Config, section: str, **changes: Any) -> Config:
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=changes)})


def one_seed(
    cfg: Config, dataset: PreparedDataset, seed: int, args: argparse.Namespace, models: Path
) -> list[dict[str, Any]]:
    """The six rows of one seed; the teachers are exported under `models` (the KD students load one)."""
    rows = []
    next_item = with_section(cfg, "pretrain", task="next_item", seed=seed, init_from=None)
    row, scratch = train_and_test("teacher scratch", next_item, "pretrain", dataset)
    rows.append(row)
    teacher_dir = task_for(cfg, "pretrain").export(scratch.model, models / "scratch", dataset, scratch.metrics)

    ssl = with_section(
        next_item,
        "pretrain",
        task="pretrain",
        epochs=args.pretrain_epochs,
        patience=args.pretrain_epochs,
        weight_next_item=0.0,
        weight_masked_item=args.masked_weight,
        weight_contrastive=args.contrastive_weight,
    )
    start = time.perf_counter()
    pretrained = train_local(global_batch(resolve_auto(ssl, "pretrain", dataset)[0], "pretrain"), "pretrain", dataset)
    pretrained_dir = task_for(cfg, "pretrain").export(pretrained.model, models / "ssl", dataset, pretrained.metrics)
    pretrain_s = time.perf_counter() - start
    fine_tune = with_section(next_item, "pretrain", init_from=pretrained_dir["model_dir"])
    row, _ = train_and_test("teacher pretrain→fine-tune", fine_tune, "pretrain", dataset)
    row["seconds"] = round(row["seconds"] + pretrain_s, 1)
    rows.append(row)

    for name, (use_ssl, use_kd) in STUDENT_VARIANTS.items():
        student = with_section(
            cfg,
            "distill",
            seed=seed,
            teacher=teacher_dir["model_dir"] if use_kd else None,
            lambda_ssl=args.lambda_ssl if use_ssl else 0.0,
            lambda_kd=(args.lambda_kd or cfg.distill.lambda_kd) if use_kd else 0.0,
            lambda_hidden=0.0,
        )
        rows.append(train_and_test(name, student, "distill", dataset)[0])
    return rows


def summarize(rows: list[dict[str, Any]]) -> str:
    """Mean ± std of test NDCG@10 per dataset and model."""
    lines = [
        "| dataset | model | test NDCG@10 (mean ± std) | test HR@10 | valid NDCG@10 | seeds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    keys = list(dict.fromkeys((r["dataset"], r["model"]) for r in rows))
    for dataset, model in keys:
        group = [r for r in rows if r["dataset"] == dataset and r["model"] == model]

        def stat(key: str, group: list[dict] = group) -> str:
            values = [r[key] for r in group]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.4f} ± {std:.4f}"

        lines.append(
            f"| {dataset} | {model} | {stat('test_ndcg@10')} | {stat('test_hr@10')} "
            f"| {stat('valid_ndcg@10')} | {len(group)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for config in args.configs.split(","):
        cfg = load_config(config, args.overrides)
        dataset = load_or_prepare(cfg.data, progress=False)
        name = Path(config).stem
        for seed in [int(s) for s in args.seeds.split(",")]:
            for row in one_seed(cfg, dataset, seed, args, out / "models" / f"{name}-{seed}"):
                rows.append({"dataset": name, "seed": seed, **row})
                print(json.dumps(rows[-1]), flush=True)
                write_csv(out / "ablation.csv", rows)  # partial results survive an interrupted run
    (out / "ablation.md").write_text(summarize(rows))
    print(summarize(rows))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
