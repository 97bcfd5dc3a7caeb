"""`raysys pipeline`: the main job, from the interaction log to a served student, resumable.

    raysys pipeline --config jobs/configs/quickstart.yaml --out runs/quickstart
    raysys pipeline --config jobs/configs/ml100k.yaml --out runs/ml100k pipeline.run_tune=true
    raysys pipeline --config jobs/configs/quickstart.yaml --out s3://bucket/runs/quickstart --force
    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/quickstart.yaml --out /abs/run

prepare -> [embed_items (item-text embeddings by Ray Data batch inference, when a model uses text)] ->
[pretrain (the teacher's self-supervised mix; pipeline.pretrain=true)] -> finetune (the
teacher: next item from pretrain's weights, or from scratch) -> [tune] -> student (distill; the tuned
settings when tune ran) -> [student_no_kd (pipeline.kd_control: the same student without its teacher)]
-> evaluate (teacher, student, [student_no_kd], popularity, item-kNN; full ranking) -> export (what ships) ->
serve_smoke (deploy the student, POST /recommend, take it down) -> report.html -> summary.json
{"models": {"teacher": {"metrics", "path"}, "student": {...}, "popularity": {"metrics"},
"itemknn": {"metrics"}}, "serve_smoke", "stages"}.

Each stage writes RUN/<stage>/ and is skipped on a rerun when it is done for the same config
(raysys.pipeline.runner); `--force` or pipeline.force=true reruns everything. An `s3://` or `gs://`
--out runs in a local staging directory that first receives what the bucket already holds; each
finished stage is uploaded, then the report and summary.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from raysys import storage
from raysys.config import Config
from raysys.console import LOG_FILE, console
from raysys.eval.evaluator import slice_metric
from raysys.pipeline import stages
from raysys.pipeline.runner import StageRunner, stage_hashes
from raysys.report import build_report
from raysys.run import write_summary

DESCRIPTION = (
    "the main job: prepare, [embed_items], [pretrain], finetune, [tune], distill, evaluate, export, serve smoke, "
    "report (resumable)"
)
TOP_LEVEL_FILES = ("config.yaml", "summary.json", "report.html")
PROVENANCE = ("stage", "config_hash", "raysys_version", "finished_at")  # a stage summary's bookkeeping keys


class RunLocation(argparse.Action):
    """`--out DIR` or `--out s3://bucket/run`. The CLI writes the resolved config and summary.json
    into args.out, so a URI is replaced there by its local staging directory and kept in args.out_uri."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.out_uri = values if storage.is_uri(values) else None
        setattr(namespace, self.dest, str(storage.staging_dir(values)) if namespace.out_uri else values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="rerun every stage (same as pipeline.force=true)")
    # This stage's --out also takes a URI: it replaces the common --out ("resolve" drops the old one).
    output = parser.add_argument_group("output", conflict_handler="resolve")
    output.add_argument(
        "--out",
        metavar="DIR|URI",
        action=RunLocation,
        help="run directory or s3://bucket/path, gs://bucket/path (default: runs/pipeline-<time>)",
    )
    parser.set_defaults(out_uri=None)


def run(cfg: Config, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) every stage into out_dir; returns the summary written to summary.json."""
    start = time.perf_counter()
    remote = getattr(args, "out_uri", None)
    root = Path(out_dir)
    if remote:
        sync_down(remote, root, cfg)
    initialised_ray: list[bool] = []
    runner = StageRunner(
        root,
        stage_hashes(cfg),
        remote,
        force=cfg.pipeline.force or getattr(args, "force", False),
        setup=lambda: initialised_ray.append(init_ray(cfg)),
    )
    try:
        summary = run_stages(cfg, runner)
    finally:
        if any(initialised_ray):
            import ray

            ray.shutdown()
    summary = {**summary, "run_dir": runner.location(), "seconds": round(time.perf_counter() - start, 1)}
    write_summary(root, "pipeline", summary)  # before the report, which reads it; the CLI rewrites it the same
    report = build_report(root)
    if remote:
        for name in TOP_LEVEL_FILES:
            storage.upload_file(root / name, storage.join(remote, name))
    show_results(summary, runner, report.name)
    return summary


RESULT_COLUMNS = (  # (header, split or slice, metric)
    ("test ndcg@10", "test", "ndcg@10"),
    ("test hr@10", "test", "hr@10"),
    ("cold items hr@10", "test/cold_items", "hr@10"),
    ("short history ndcg@10", "test/short_history", "ndcg@10"),
)


def show_results(summary: dict[str, Any], runner: StageRunner, report_name: str) -> None:
    """The closing lines: every model x the key test metrics, then where everything is."""
    rows = []
    for name, entry in summary["models"].items():
        metrics = entry["metrics"]
        rows.append([name, *(_cell(slice_metric(metrics, part, key)) for _, part, key in RESULT_COLUMNS)])
    console.say()
    header = ["model", *(column[0] for column in RESULT_COLUMNS)]
    console.table("Results (test, full ranking over the catalog, seen items excluded)", header, rows)
    student = summary["models"].get("student", {}).get("path")
    lines = [
        ("report", runner.location(report_name)),
        ("tensorboard", f"tensorboard --logdir {runner.location()}"),
        ("models", ", ".join(e["path"] for e in summary["models"].values() if "path" in e)),
        ("serve", f"raysys serve --model {student}" if student else None),
        ("Ray's log", runner.location(LOG_FILE)),
    ]
    console.say()
    for label, value in lines:
        if value:
            console.say(f"{label:<12} {value}")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run_stages(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """The stages in order; the pipeline summary without the timing."""
    local_cfg = stages.localize_data(cfg)
    stages.prepare(local_cfg, runner)
    if stages.uses_text(cfg):
        stages.embed_items(local_cfg, runner)
    stages.teacher(local_cfg, runner)
    if cfg.pipeline.run_tune:
        stages.tune(local_cfg, runner)
    stages.student(local_cfg, runner)
    if cfg.pipeline.kd_control:
        stages.student_no_kd(local_cfg, runner)
    evaluation = stages.evaluate(local_cfg, runner)
    exported = stages.export(local_cfg, runner)
    smoke = stages.serve_smoke(local_cfg, runner)
    models = {name: {"metrics": entry["metrics"]} for name, entry in evaluation["models"].items()}
    for name, entry in exported["models"].items():
        models[name].update(entry)
    return {
        "models": models,
        "serve_smoke": {key: value for key, value in smoke.items() if key not in PROVENANCE},
        "stages": runner.records,
        "tuned": cfg.pipeline.run_tune,
    }


def sync_down(remote: str, root: Path, cfg: Config) -> None:
    """Make the staging directory a fresh copy of what the bucket holds for this run (resume state)."""
    if root.exists():
        shutil.rmtree(root)  # the bucket is the truth; a stale staging copy must not pass as done work
    storage.download_dir(remote, root)
    root.mkdir(parents=True, exist_ok=True)
    cfg.save(root / "config.yaml")


def init_ray(cfg: Config) -> bool:
    """Connect to the cluster (RAY_ADDRESS, e.g. inside `ray job submit`) or start a local one (with
    the serve smoke test's HTTP ingress); True when this call initialised Ray in this process (so the
    pipeline disconnects at the end)."""
    import ray
    from ray._private.worker import get_dashboard_url

    from raysys import cluster
    from raysys.serve.ingress import apply_ingress_env

    if ray.is_initialized():
        return False
    apply_ingress_env(cfg.serve)
    cluster.init_ray(include_dashboard=True)  # Ray Train V2 asks the dashboard whether a run is alive
    console.say(f"  Ray started (dashboard {get_dashboard_url() or 'not running'})")
    return True
