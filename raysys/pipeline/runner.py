"""Resumable stages: each one runs in its own directory of the run and is skipped when already done.

    runner = StageRunner(root=Path("runs/x"), hashes=stage_hashes(cfg), remote=None, force=False)
    summary = runner.stage("finetune", cfg, lambda d: finetune.run(cfg, d, args), check=check_model_dir)

A stage is *done* when `RUN/<stage>/summary.json` exists, the config hash it records is the one the
current config gives that stage (`stage_hashes`: the sections the stage reads, plus the hashes of
the stages it consumes, so a new teacher retrains the student too) and its `check` accepts the
outputs (a model directory loads, a prepared dataset is complete). Otherwise the stage runs again:
its directory is cleared first when it holds the work of another config or a finished run, and kept
when an earlier attempt with the same config was cut short, so Ray Train resumes from its
checkpoints. With `remote` (an s3:// or gs:// run), each finished stage directory is uploaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysys import storage
from raysys.config import Config, config_hash
from raysys.console import console, duration, stage_line
from raysys.errors import RaysysError
from raysys.files import write_json_atomic
from raysys.run import start_run, utc_now, write_summary

SUMMARY = "summary.json"
MARKER = "stage.json"  # written when a stage starts: which config hash its directory's work belongs to
StageBody = Callable[[Path], dict[str, Any]]
StageCheck = Callable[[Path, dict[str, Any]], None]


def combine(*parts: str) -> str:
    """One short hash of several hashes (order matters)."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


def stage_hashes(cfg: Config) -> dict[str, str]:
    """The config hash of every pipeline stage: the sections it reads and the stages it consumes.

    The evaluation settings enter only the evaluate stage (training validates on NDCG@10 whatever
    `eval.ks` lists), so changing a cut-off re-evaluates without retraining; `distill.teacher` (and
    `finetune.init_from` when the pretrain stage runs) are set by the pipeline itself and stand for the
    hash of the stage whose model they name. The teacher is the finetune stage's model.
    """
    data = config_hash(cfg.data, exclude={"cache_dir"})
    pretrain = combine(data, config_hash(cfg.teacher), config_hash(cfg.pretrain))
    finetune = combine(
        data,
        config_hash(cfg.teacher),
        config_hash(cfg.finetune, exclude={"init_from"} if cfg.pipeline.pretrain else set()),
        pretrain if cfg.pipeline.pretrain else "no-pretrain",
    )
    teacher = finetune  # the fine-tuned teacher is the one the student learns from and that ships
    distill = config_hash(cfg.distill, exclude={"teacher"})
    tune = combine(teacher, config_hash(cfg.student), distill, config_hash(cfg.tune), config_hash(cfg.eval))
    tuned = tune if cfg.pipeline.run_tune else "no-tune"
    student = combine(teacher, config_hash(cfg.student), distill, tuned)
    teacher_keys = {"teacher", "lambda_kd", "lambda_hidden", "temperature", "kd_topk", "init_items"}
    alone = config_hash(cfg.distill, exclude=teacher_keys)
    student_no_kd = combine(data, config_hash(cfg.student), alone, tuned)  # kd_control: no teacher, no KD terms
    control = student_no_kd if cfg.pipeline.kd_control else "no-control"
    evaluate = combine(teacher, student, config_hash(cfg.eval), control)
    export = combine(teacher, student)
    return {
        "prepare": data,
        "embed_items": combine(data, "item-text"),  # the encoder and the texts key its file
        "pretrain": pretrain,
        "finetune": finetune,
        "tune": tune,
        "student": student,
        "student_no_kd": student_no_kd,
        "evaluate": evaluate,
        "export": export,
        "serve_smoke": combine(export, config_hash(cfg.serve)),
    }


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when it is missing or unreadable."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


@dataclass
class StageRunner:
    """Runs the stages of one pipeline run under `root` and records what each did."""

    root: Path
    hashes: dict[str, str]
    remote: str | None = None  # the run's URI when its home is an object store
    force: bool = False
    log: Callable[[str], None] = console.say
    # Called once, before the first stage that is not skipped (the pipeline starts Ray there, so a
    # fully resumed run starts nothing).
    setup: Callable[[], None] | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> {"skipped", "seconds"}

    def stage(
        self,
        name: str,
        cfg: Config,
        body: StageBody,
        check: StageCheck,
        describe: Callable[[dict[str, Any]], str] | None = None,
    ) -> dict[str, Any]:
        """The summary of stage `name`: reused when done (see the module docstring), else `body(dir)`'s.

        describe(summary): the few words the stage's "done" line adds (a metric, a count)."""
        stage_dir = self.root / name
        config_hash_ = self.hashes[name]
        summary = None if self.force else self.reusable(stage_dir, config_hash_, check)
        if summary is not None:
            self.log(stage_line("·", name, "skipped", "up to date"))
            self.records[name] = {"skipped": True, "seconds": 0.0}
            return summary
        if self.setup is not None:
            self.setup()
            self.setup = None
        self.log(stage_line("▶", name, "", ""))
        start = time.perf_counter()
        self._prepare_dir(stage_dir, config_hash_)
        start_run(stage_dir, cfg)
        summary = {**body(stage_dir), "config_hash": config_hash_}
        write_summary(stage_dir, name, summary)
        if self.remote:
            storage.upload_dir(stage_dir, storage.join(self.remote, name))
        seconds = round(time.perf_counter() - start, 1)
        self.records[name] = {"skipped": False, "seconds": seconds}
        summary = read_json(stage_dir / SUMMARY) or summary
        self.log(stage_line("✓", name, duration(seconds), describe(summary) if describe else ""))
        return summary

    def reusable(self, stage_dir: Path, config_hash_: str, check: StageCheck) -> dict[str, Any] | None:
        """The stage's summary when its outputs are done for this config hash and pass `check`."""
        summary = read_json(stage_dir / SUMMARY)
        if summary is None or summary.get("config_hash") != config_hash_:
            return None
        try:
            check(stage_dir, summary)
        except RaysysError as exc:
            self.log(f"  {stage_dir.name}: its outputs are not usable ({exc}); running it again")
            return None
        return summary

    def _prepare_dir(self, stage_dir: Path, config_hash_: str) -> None:
        """Clear `stage_dir` unless it holds an interrupted attempt of this very config; mark it as ours."""
        marker = read_json(stage_dir / MARKER)
        interrupted = marker is not None and marker.get("config_hash") == config_hash_
        if stage_dir.exists() and (self.force or not interrupted or (stage_dir / SUMMARY).exists()):
            shutil.rmtree(stage_dir)
        write_json_atomic(
            stage_dir / MARKER, {"stage": stage_dir.name, "config_hash": config_hash_, "started_at": utc_now()}
        )

    def location(self, *parts: str) -> str:
        """Where `RUN/<parts>` lives once the run is finished: a local path or a URI."""
        if self.remote:
            return storage.join(self.remote, *parts)
        return str(self.root.joinpath(*parts).resolve())
