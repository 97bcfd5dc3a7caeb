"""Which distillation ingredients pay (issue 20, part 2): the student alone against the student with each
ingredient, the same teacher, 3 seeds, chosen on validation.

    python jobs/bench/distill_ingredients.py --config jobs/configs/ml100k.yaml --seeds 0,1,2 --out runs/distill
    python jobs/bench/distill_ingredients.py --dataset DIR --device cuda ...     # a GPU machine (no Ray)
    python jobs/bench/distill_ingredients.py ... --teacher-size 512x4 --teacher-setting reg   # a ladder teacher

Per seed the teacher is trained as the pipeline trains it (the config's pretrain section, then the
finetune section from those weights; `--teacher-size` / `--teacher-setting` pick a rung of
jobs/bench/teacher_ladder.py) and exported to OUT/teachers/seed-S; then one student per ingredient
(`--ingredients`, INGREDIENTS below), each on the config's distill section with only its own changes,
at the same seed (the same initial weights and batches). Training runs in this process
(`train_local`, the workers' global batch, best valid epoch kept); test NDCG@10 is read once per run.

An ingredient *pays* when its mean valid NDCG@10 beats "student alone" by at least one standard
deviation over the seeds (the larger of the two rows' stds). Each finished run is appended to
ingredients.jsonl at once and a rerun with the same --out skips it (resumable); ingredients.md holds
the table. jobs/bench/ablation.py measures the loss terms and pretraining; this measures KD itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_ladder import SETTINGS, SIZES, open_dataset, run_config  # noqa: E402

from raysys.config import Config, load_config  # noqa: E402
from raysys.data.dataset import PreparedDataset  # noqa: E402
from raysys.train.local import global_batch, train_local  # noqa: E402
from raysys.train.tasks import PretrainTask  # noqa: E402

BASELINE = "student alone"
OTHER_SEEDS = "the other seeds' teachers"  # an ingredient's extra_teachers: filled in per seed
# name -> changes to the distill section (beside teacher and seed); the rest is the config's own
INGREDIENTS: dict[str, dict[str, Any]] = {
    BASELINE: {"lambda_kd": 0.0, "lambda_hidden": 0.0, "init_items": "random"},
    "+ KD full catalog": {"lambda_hidden": 0.0, "init_items": "random", "kd_topk": None},
    "+ KD top-50": {"lambda_hidden": 0.0, "init_items": "random", "kd_topk": 50},
    "+ hidden alignment": {"lambda_kd": 0.0, "lambda_hidden": 1.0, "init_items": "random"},
    "+ teacher item init": {"lambda_kd": 0.0, "lambda_hidden": 0.0, "init_items": "teacher"},
    "+ KD + teacher item init": {"lambda_hidden": 0.0, "init_items": "teacher", "kd_topk": None},
    # KD from the ensemble of every seed's teacher (this seed's first): distill.extra_teachers
    "+ KD from the seeds' teacher ensemble": {
        "lambda_hidden": 0.0,
        "init_items": "random",
        "kd_topk": None,
        "extra_teachers": OTHER_SEEDS,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/configs/ml100k.yaml")
    parser.add_argument("--dataset", default=None, help="a prepared dataset directory, item text beside it (no Ray)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ingredients", default=",".join(INGREDIENTS), help="names from INGREDIENTS")
    parser.add_argument("--teacher-size", default=None, help=f"a ladder size {list(SIZES)} (default: the config's)")
    parser.add_argument("--teacher-setting", default="shipped", help=f"a ladder setting {list(SETTINGS)}")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default="runs/distill_ingredients")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args(argv)
    unknown = [name for name in args.ingredients.split(",") if name not in INGREDIENTS]
    if args.teacher_size is not None and args.teacher_size not in SIZES:
        unknown.append(args.teacher_size)
    if args.teacher_setting not in SETTINGS:
        unknown.append(args.teacher_setting)
    if unknown:
        parser.error(
            f"unknown {unknown}: ingredients {list(INGREDIENTS)}, sizes {list(SIZES)}, settings {list(SETTINGS)}"
        )
    return args


def teacher_config(cfg: Config, args: argparse.Namespace, seed: int) -> Config:
    """The config the seed's teacher trains with: a ladder rung, or the config's own teacher."""
    if args.teacher_size is not None:
        return run_config(cfg, args.teacher_size, args.teacher_setting, seed)
    sections = {name: getattr(cfg, name).model_copy(update={"seed": seed}) for name in ("pretrain", "finetune")}
    return cfg.model_copy(update=sections)


def train(cfg: Config, stage: str, dataset: PreparedDataset, device: str):
    """One stage in this process at its workers' global batch; (outcome, seconds)."""
    start = time.perf_counter()
    outcome = train_local(global_batch(cfg, stage), stage, dataset, test=stage != "pretrain", device=device)
    return outcome, time.perf_counter() - start


def figures(outcome, seconds: float) -> dict[str, Any]:
    return {
        "valid_ndcg@10": round(outcome.valid["ndcg@10"], 4),
        "test_ndcg@10": round(outcome.test["ndcg@10"], 4),
        "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.epochs_run,
        "seconds": round(seconds, 1),
    }


def train_teacher(cfg: Config, dataset: PreparedDataset, out: Path, device: str) -> tuple[str, dict[str, Any]]:
    """Pretrain (when pipeline.pretrain), then fine-tune from it; the teacher's model dir and figures."""
    done = out / "teacher.json"
    if done.is_file():
        return str(out / "finetune" / "model"), json.loads(done.read_text())
    finetune = cfg.finetune
    if cfg.pipeline.pretrain:
        pretrained, _ = train(cfg, "pretrain", dataset, device)
        task = PretrainTask(cfg, "pretrain")
        model_dir = task.export(pretrained.model.cpu(), out / "pretrain", dataset, pretrained.metrics)
        finetune = finetune.model_copy(update={"init_from": model_dir["model_dir"]})
    cfg = cfg.model_copy(update={"finetune": finetune})
    outcome, seconds = train(cfg, "finetune", dataset, device)
    task = PretrainTask(cfg, "finetune")
    model_dir = task.export(outcome.model.cpu(), out / "finetune", dataset, outcome.metrics)["model_dir"]
    row = figures(outcome, seconds)
    done.write_text(json.dumps(row))
    return model_dir, row


def student_config(cfg: Config, name: str, teacher_dirs: dict[int, str], seed: int) -> Config:
    """The distill section of ingredient `name` at `seed`, from that seed's teacher (and, for an ensemble,
    every other seed's)."""
    changes = {**INGREDIENTS[name], "teacher": teacher_dirs[seed], "seed": seed}
    if changes.get("extra_teachers") == OTHER_SEEDS:
        changes["extra_teachers"] = [path for other, path in teacher_dirs.items() if other != seed]
        if not changes["extra_teachers"]:
            raise SystemExit(f"error: {name!r} needs more than one seed (--seeds)")
    if "lambda_kd" not in changes and cfg.distill.lambda_kd <= 0:
        raise SystemExit(f"error: {name!r} needs distill.lambda_kd > 0 in the config")
    return cfg.model_copy(update={"distill": cfg.distill.model_copy(update=changes)})


def finished(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: mean ± std of valid and test NDCG@10, and (students) the valid gain and whether it pays."""

    def stats(group: list[dict[str, Any]], key: str) -> tuple[float, float]:
        values = [r[key] for r in group]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    names = list(dict.fromkeys(r["model"] for r in rows))
    base = [r for r in rows if r["model"] == BASELINE]
    lines = []
    for name in names:
        group = [r for r in rows if r["model"] == name]
        valid, valid_std = stats(group, "valid_ndcg@10")
        test, test_std = stats(group, "test_ndcg@10")
        line = {
            "model": name,
            "seeds": len(group),
            "valid": round(valid, 4),
            "valid_std": round(valid_std, 4),
            "test": round(test, 4),
            "test_std": round(test_std, 4),
        }
        if base and name in INGREDIENTS and name != BASELINE:
            base_valid, base_std = stats(base, "valid_ndcg@10")
            line["valid_gain"] = round(valid - base_valid, 4)
            line["pays"] = len(group) > 1 and valid - base_valid >= max(valid_std, base_std)
        lines.append(line)
    return lines


def markdown(lines: list[dict[str, Any]]) -> str:
    out = [
        "| model | seeds | valid NDCG@10 | test NDCG@10 | valid gain over the student alone | pays |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for line in lines:
        gain = f"{line['valid_gain']:+.4f}" if "valid_gain" in line else ""
        pays = {True: "yes", False: "no"}.get(line.get("pays"), "")
        out.append(
            f"| {line['model']} | {line['seeds']} | {line['valid']:.4f} ± {line['valid_std']:.4f} "
            f"| {line['test']:.4f} ± {line['test_std']:.4f} | {gain} | {pays} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; run on the GPU machine, or pass --device cpu")
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = PreparedDataset.open(open_dataset(args, cfg))
    log = out / "ingredients.jsonl"
    rows = finished(log)
    seeds = [int(s) for s in args.seeds.split(",")]
    teacher_dirs = {}
    for seed in seeds:  # every teacher first: an ensemble ingredient needs them all
        teacher_cfg = teacher_config(cfg, args, seed)
        teacher_dirs[seed], teacher = train_teacher(
            teacher_cfg, dataset, out / "teachers" / f"seed-{seed}", args.device
        )
        if not any(r["model"] == "teacher" and r["seed"] == seed for r in rows):
            rows.append({"model": "teacher", "seed": seed, **teacher})
            with log.open("a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    for seed in seeds:
        teacher_cfg = teacher_config(cfg, args, seed)
        for name in args.ingredients.split(","):
            if any(r["model"] == name and r["seed"] == seed for r in rows):
                continue
            outcome, seconds = train(
                student_config(teacher_cfg, name, teacher_dirs, seed), "distill", dataset, args.device
            )
            rows.append({"model": name, "seed": seed, **figures(outcome, seconds)})
            with log.open("a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
            print(json.dumps(rows[-1]), flush=True)
    lines = table(rows)
    (out / "ingredients.json").write_text(json.dumps({"settings": vars(args), "table": lines, "runs": rows}, indent=2))
    (out / "ingredients.md").write_text(markdown(lines))
    print(markdown(lines))
    return lines


if __name__ == "__main__":
    main()
