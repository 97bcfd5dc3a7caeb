"""Quality against the peer: teacher and student test NDCG@10 on ml-100k, mean of 3 seeds.

    python jobs/bench/quality.py --config jobs/configs/ml100k.yaml --seeds 0,1,2 --out runs/quality

Per seed, the real commands a user runs, with the shipped defaults (chosen on validation only), and the
teacher trained as the pipeline trains it (self-supervised pretraining first when `pipeline.pretrain`):
    raysys pretrain --config jobs/configs/ml100k.yaml pretrain.seed=S --out OUT/pretrain-S  # pipeline.pretrain
    raysys finetune --config jobs/configs/ml100k.yaml finetune.seed=S [finetune.init_from=OUT/pretrain-S/model] \
        --out OUT/teacher-S
    raysys distill  --config jobs/configs/ml100k.yaml distill.seed=S distill.teacher=OUT/teacher-S/model \
        --out OUT/student-S
Targets (../shared/peers: RecBole SASRec test NDCG@10 0.0670): teacher >= 1.2x (0.0804), student
>= 1.1x (0.0737) and >= 95 % of the teacher. Writes quality.json and quality.md into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
from pathlib import Path
from typing import Any

from raysys.bench.commands import TimedRun, run_stage
from raysys.config import load_config
from raysys.files import write_json_atomic
from raysys.run import utc_now

PEERS = Path(__file__).resolve().parents[3] / "shared" / "peers"
TEACHER_VS_PEER, STUDENT_VS_PEER, STUDENT_VS_TEACHER = 1.2, 1.1, 0.95
METRICS = ["ndcg@10", "hr@10", "mrr@10"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/configs/ml100k.yaml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--peer", default=str(PEERS / "results.json"))
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument(
        "--reuse-teachers",
        action="store_true",
        help="keep the teachers of an earlier run in --out (from its quality.json); train the students again",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    return parser.parse_args()


def one_seed(
    args: argparse.Namespace, seed: int, out: Path, peer_valid: float, previous: dict[str, Any] | None
) -> dict[str, Any]:
    """Teacher then student for one seed; their valid/test figures and command times (and the
    teacher's seconds to the peer's best validation NDCG@10, as jobs/bench/training.py measures it).

    `previous` (--reuse-teachers): this seed's row of an earlier run whose teacher finished; the
    teacher is kept and only the student is trained again."""
    row: dict[str, Any] = {"seed": seed}
    runs = []
    if previous is None:
        teacher = train_teacher(args, seed, out, peer_valid)
        runs.append(("teacher", teacher))
    else:
        row["teacher"] = previous["teacher"]
        # A finished run directory would be resumed (and its old result returned): train afresh.
        shutil.rmtree(out / f"student-{seed}", ignore_errors=True)
    student_overrides = [
        *args.overrides,
        f"distill.seed={seed}",
        f"distill.teacher={out / f'teacher-{seed}' / 'model'}",
    ]
    runs.append(("student", run_stage("distill", args.config, student_overrides, out / f"student-{seed}")))
    for name, run in runs:
        metrics = run.summary["metrics"]
        row[name] = {
            "valid": {k: round(metrics["valid"][k], 4) for k in METRICS},
            "test": {k: round(metrics["test"][k], 4) for k in METRICS},
            "best_epoch": run.summary["best_epoch"],
            "seconds": run.seconds,
        }
    if previous is None:
        row["teacher"]["seconds_to_peer_valid"] = teacher.seconds_to_target
    return row


def train_teacher(args: argparse.Namespace, seed: int, out: Path, peer_valid: float) -> TimedRun:
    """The pipeline's teacher stages for one seed: pretrain (when `pipeline.pretrain`), then finetune;
    `seconds` and `seconds_to_target` (reached during the fine-tune) count both."""
    init: list[str] = []
    pretrain_s = 0.0
    if load_config(args.config, args.overrides).pipeline.pretrain:
        pretrained = run_stage(
            "pretrain", args.config, [*args.overrides, f"pretrain.seed={seed}"], out / f"pretrain-{seed}"
        )
        init, pretrain_s = [f"finetune.init_from={out / f'pretrain-{seed}' / 'model'}"], pretrained.seconds
    teacher = run_stage(
        "finetune",
        args.config,
        [*args.overrides, f"finetune.seed={seed}", *init],
        out / f"teacher-{seed}",
        target=("valid_ndcg@10", peer_valid),
    )
    to_target = None if teacher.seconds_to_target is None else teacher.seconds_to_target + pretrain_s
    return dataclasses.replace(teacher, seconds=teacher.seconds + pretrain_s, seconds_to_target=to_target)


def aggregate(rows: list[dict[str, Any]], peer_test_ndcg: float) -> dict[str, Any]:
    """Mean ± std over seeds and the three target checks."""
    out: dict[str, Any] = {}
    for name in ("teacher", "student"):
        for split in ("valid", "test"):
            values = [r[name][split]["ndcg@10"] for r in rows]
            out[f"{name}_{split}_ndcg@10"] = {
                "mean": round(statistics.mean(values), 4),
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            }
    teacher, student = out["teacher_test_ndcg@10"]["mean"], out["student_test_ndcg@10"]["mean"]
    out["targets"] = {
        "teacher_vs_peer": round(teacher / peer_test_ndcg, 3),
        "student_vs_peer": round(student / peer_test_ndcg, 3),
        "student_vs_teacher": round(student / teacher, 3),
        "teacher_met": teacher >= TEACHER_VS_PEER * peer_test_ndcg,
        "student_met": student >= STUDENT_VS_PEER * peer_test_ndcg and student >= STUDENT_VS_TEACHER * teacher,
    }
    return out


def markdown(results: dict[str, Any]) -> str:
    agg = results["aggregate"]
    lines = [
        f"peer (RecBole SASRec) test NDCG@10 {results['peer_test_ndcg@10']}",
        "",
        "| model | valid NDCG@10 | test NDCG@10 | vs peer | per-seed test NDCG@10 |",
        "|---|---:|---:|---:|---|",
    ]
    for name in ("teacher", "student"):
        valid, test = agg[f"{name}_valid_ndcg@10"], agg[f"{name}_test_ndcg@10"]
        seeds = ", ".join(str(r[name]["test"]["ndcg@10"]) for r in results["seeds"])
        lines.append(
            f"| {name} | {valid['mean']} ± {valid['std']} | {test['mean']} ± {test['std']} "
            f"| {agg['targets'][f'{name}_vs_peer']}x | {seeds} |"
        )
    lines += ["", f"targets: {json.dumps(agg['targets'])}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sasrec = json.loads(Path(args.peer).read_text())["SASRec"]
    peer, peer_valid = sasrec["test"]["ndcg@10"], sasrec["best_valid_ndcg@10"]
    results: dict[str, Any] = {
        "started_at": utc_now(),
        "config": args.config,
        "overrides": args.overrides,
        "peer_test_ndcg@10": peer,
        "load_avg_at_start": os.getloadavg(),
        "seeds": [],
    }
    earlier = {}
    if args.reuse_teachers and (out / "quality.json").is_file():
        rows = json.loads((out / "quality.json").read_text())["seeds"]
        earlier = {r["seed"]: r for r in rows if (out / f"teacher-{r['seed']}" / "summary.json").is_file()}
    for seed in [int(s) for s in args.seeds.split(",")]:
        results["seeds"].append(one_seed(args, seed, out, peer_valid, earlier.get(seed)))
        print(f"seed {seed}: {json.dumps(results['seeds'][-1])}", flush=True)
        write_json_atomic(out / "quality.json", results)  # partial results survive an interrupted run
    results["aggregate"] = aggregate(results["seeds"], peer)
    results["load_avg_at_end"] = os.getloadavg()
    write_json_atomic(out / "quality.json", results)
    (out / "quality.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
