"""Which teacher family learns best here? Trains each `teacher.arch` with the same budget and prints
validation NDCG@10 (the default `teacher.arch` is the winner; choices are made on valid only).

    python jobs/bench/teacher_arch.py --config jobs/configs/ml100k.yaml --archs gpt2,llama,bert --epochs 30

BERT trains on the masked-item (Cloze) objective, the causal families on next-item at every position.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from raysys.config import Config, load_config
from raysys.data.prepare import load_or_prepare
from raysys.train.local import train_local


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/configs/ml100k.yaml")
    parser.add_argument("--archs", default="gpt2,llama,bert")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="runs/bench_arch")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return parser.parse_args()


def train_one(cfg: Config, arch: str, seed: int, epochs: int) -> dict:
    """Train one teacher of family `arch`; returns its best validation figures and timing."""
    dataset = load_or_prepare(cfg.data, progress=False)
    teacher_cfg = cfg.teacher.model_copy(update={"arch": arch})
    objective = {"weight_next_item": 0.0, "weight_masked_item": 1.0} if arch == "bert" else {}
    train_cfg = cfg.pretrain.model_copy(update={"epochs": epochs, "seed": seed, "task": "pretrain", **objective})
    start = time.perf_counter()
    result = train_local(
        cfg.model_copy(update={"teacher": teacher_cfg, "pretrain": train_cfg}),
        "pretrain",
        dataset,
        on_epoch=lambda r: print(
            f"  {arch} seed {seed} epoch {r['epoch']}: valid ndcg@10 {r['valid_ndcg@10']:.4f}", flush=True
        ),
    )
    seconds = time.perf_counter() - start
    return {
        "arch": arch,
        "seed": seed,
        "best_epoch": result.best_epoch,
        "valid_ndcg@10": round(result.valid["ndcg@10"], 4),
        "valid_hr@10": round(result.valid["hr@10"], 4),
        "seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / len(result.history), 2),
    }


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.overrides)
    rows = [
        train_one(cfg, arch, int(seed), args.epochs) for arch in args.archs.split(",") for seed in args.seeds.split(",")
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "arch.json").write_text(json.dumps(rows, indent=2))
    print(f"{'arch':6} {'seed':>4} {'best ep':>7} {'valid ndcg@10':>13} {'valid hr@10':>11} {'s/epoch':>8}")
    for r in rows:
        print(
            f"{r['arch']:6} {r['seed']:>4} {r['best_epoch']:>7} {r['valid_ndcg@10']:>13.4f}"
            f" {r['valid_hr@10']:>11.4f} {r['seconds_per_epoch']:>8.2f}"
        )


if __name__ == "__main__":
    main()
