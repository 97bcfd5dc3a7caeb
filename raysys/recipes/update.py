"""`raysys update`: learn from the event log, promote only what is better, swap without a failed request.

    raysys update --config jobs/configs/ml100k.yaml update.base_run=runs/ml100k \
        update.event_log=runs/serve/event_log --out runs/u1
    raysys update --config runs/u1/config.yaml update.base_run=runs/u1 update.serve_app=raysys --out runs/u2

From the base run (a pipeline run or an earlier update: RUN/prepare/summary.json names its dataset,
RUN/finetune/model is its teacher and RUN/student/model its student):

1. events: the event log's interactions the base has not learnt from: those logged after an earlier
   update's log position (`event_log_position`: per writer, the last record it read), plus the events that
   update held out (DIR/held_out.parquet); for a pipeline run, those timed after its dataset's latest
   interaction (the manifest's `max_timestamp`). The newest `update.holdout_fraction` of them, by time,
   are held out (never trained on);
2. prepare: the base dataset's rows plus the other new events (DIR/source), with `data.vocab_from` = the
   base dataset, so old ids keep their indices and new users and items are appended (item text where the
   item file has it); negative events (`data.negative_events`) are left out, repeats of a row dropped;
3. teacher, student: the fine-tune and the distillation continued from the base models' weights
   (`init_from`; new items start fresh) for `update.epochs` at `update.lr` (the student with `update.lambda_ssl`);
4. evaluate: the candidate student and the serving one (the base run's) on the held-out events, each user's
   first held-out positive with everything before it as history (raysys.eval.holdout);
5. promote: when the candidate's NDCG@10 is not below the serving model's by more than `update.promote_margin`;
   with `update.serve_app`, the running application then serves the candidate (a hot reload).

summary.json: {"promoted", "reason", "models": {"candidate", "serving"}: {"model_dir", "metrics"}, "events",
"vocab", "event_log_position", "swap", "seconds"}. A promoted run's DIR is the next update's base run.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raysys.config import Config
from raysys.errors import RaysysError

HELD_OUT = "held_out.parquet"  # DIR/: the events this update held out (the next one trains on them)
HOLDOUT = "holdout_examples.parquet"  # DIR/: the evaluation examples made of them
ITEM_TEXTS = "item_texts.parquet"  # DIR/: the base dataset's item texts, the update's item file
DESCRIPTION = "continue a run's teacher and student on the newly logged events; promote the student if not worse"
METRIC = "ndcg@10"


def run(cfg: Config, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The update of `cfg.update.base_run` into `out_dir` (see the module docstring); its summary."""
    from raysys.data.dataset import PreparedDataset
    from raysys.data.updates import (
        holdout_examples,
        latest_time,
        local_log,
        logged_since,
        split_newest,
        write_update_source,
    )

    start = time.perf_counter()
    base, log = base_run(cfg), event_log(cfg)
    if cfg.update.variant is not None and not cfg.update.serve_app:
        raise RaysysError("an A/B variant to swap needs the application", where="update.variant",
                          hint="set update.serve_app too (serve.app_name of the running endpoint)")  # fmt: skip
    dataset = PreparedDataset.open(_read_summary(base / "prepare")["dataset_path"])
    cutoff = latest_time(dataset)
    seconds: dict[str, float] = {}
    earlier = _read_summary(base) if (base / "summary.json").is_file() else {}
    position = earlier.get("event_log_position") if earlier.get("stage") == "update" else None
    log = str(local_log(log, cfg.data.cache_dir))  # an s3:// / gs:// log: copied once
    new, reached = logged_since(log, cutoff, cfg.data.cache_dir, position)
    new = with_earlier_holdout(new, base)
    train, held = split_newest(new, cfg.update.holdout_fraction)
    pq.write_table(held, _mkdir(out_dir) / HELD_OUT)  # never trained on here: the next update trains on them
    events = {"cutoff": cutoff, "new": new.num_rows, "trained_on": train.num_rows, "held_out": held.num_rows}
    if new.num_rows == 0:
        return _not_promoted(f"no events were logged after the base dataset's latest ({cutoff})", events, start)
    events["since"] = "the last update's log position" if position is not None else f"time {cutoff}"

    update_cfg = updated_config(cfg, base, dataset, write_update_source(dataset, train, out_dir / "source"))
    seconds["prepare"], prepared = _timed(lambda: _stage("prepare", update_cfg, out_dir))
    reuse_text_embeddings(dataset.path, Path(prepared["dataset_path"]))
    logged_texts = add_logged_texts(log, PreparedDataset.open(prepared["dataset_path"]), cfg.data.cache_dir)
    seconds["teacher"], _ = _timed(lambda: _stage("finetune", update_cfg, out_dir))
    student_cfg = with_student(update_cfg, out_dir)
    seconds["student"], _ = _timed(lambda: _stage("distill", student_cfg, out_dir, "student"))

    new_dataset = PreparedDataset.open(prepared["dataset_path"])
    examples = holdout_examples(new_dataset, train, held, update_cfg.data.negative_events)
    examples.write(out_dir / HOLDOUT)  # what any other model can be measured on (jobs/bench/update_replay.py)
    seconds["evaluate"], models = _timed(lambda: evaluate_models(cfg, base, out_dir, examples))
    promoted, reason = decide(models["candidate"]["metrics"], models["serving"]["metrics"], cfg.update.promote_margin)
    swap = None
    if promoted and cfg.update.serve_app:
        candidate = out_dir / "student" / "model"
        seconds["swap"], swap = _timed(lambda: _swap(cfg.update.serve_app, candidate, cfg.update.variant))
    vocab = {
        "new_items": new_dataset.num_items - dataset.num_items,
        "new_users": len(new_dataset.user_vocab()) - len(dataset.user_vocab()),
        "items_with_logged_text": logged_texts,
    }
    seconds["total"] = round(time.perf_counter() - start, 2)
    return {
        "promoted": promoted,
        "reason": reason,
        "models": models,
        "events": {**events, "holdout_users": len(examples.users)},
        "vocab": vocab,
        "base_run": str(base),
        "dataset_path": prepared["dataset_path"],
        "event_log_position": reached,
        "swap": swap,
        "seconds": seconds,
    }


def with_earlier_holdout(new, base: Path):
    """`new` with the events the base update held out (evaluated on there, never trained on), time order."""
    from raysys.data.updates import SOURCE_SCHEMA

    held = base / HELD_OUT
    if not held.is_file():
        return new
    table = pa.concat_tables([pq.read_table(held, schema=SOURCE_SCHEMA), new])
    return table.sort_by([("timestamp", "ascending")])


def base_run(cfg: Config) -> Path:
    """`update.base_run`, checked to hold a prepared dataset, a teacher and a student."""
    if not cfg.update.base_run:
        raise RaysysError("no base run to update", where="update.base_run", hint="update.base_run=runs/<pipeline run>")
    base = Path(cfg.update.base_run).expanduser()
    for part in ("prepare/summary.json", "finetune/model", "student/model"):
        if not (base / part).exists():
            raise RaysysError(f"the base run has no {part}", where=str(base), hint="a finished pipeline or update run")
    return base


def event_log(cfg: Config) -> str:
    """`update.event_log`, else `serve.event_log`."""
    log = cfg.update.event_log or cfg.serve.event_log
    if not log:
        raise RaysysError("no event log to learn from", where="update.event_log", hint="update.event_log=RUN/event_log")
    return log


def updated_config(cfg: Config, base: Path, dataset, source: Path) -> Config:
    """`cfg` training on `source` (SOURCE_SCHEMA rows) over the base vocabulary, with the base's item
    texts (unless data.item_path names a file), the teacher and student continued from the base run's."""
    data = cfg.data.model_copy(
        update={
            "path": str(source),
            "format": "parquet",
            "user_col": "user_id",
            "item_col": "item_id",
            "time_col": "timestamp",
            "rating_col": None,
            "event_col": "event",
            "vocab_from": str(dataset.path),
            "time_cutoff": None,
            "cold_item_holdout": 0.0,  # everything the base kept is trained on now
            "on_bad_rows": "drop",  # a replayed event repeats a row: counted in num_dropped, not fatal
        }
    )
    texts = dataset.item_text()
    if cfg.data.item_path is None and texts is not None:  # the base's texts (a RecBole .item beside its log, ...)
        items = source.with_name(ITEM_TEXTS)
        pq.write_table(texts.select(["item_id", "text"]), items)
        data = data.model_copy(update={"item_path": str(items), "item_text_fields": ["text"]})
    budget = {"epochs": cfg.update.epochs, "lr": cfg.update.lr}
    finetune = cfg.finetune.model_copy(update={"init_from": str(base / "finetune" / "model"), **budget})
    student = {"init_from": str(base / "student" / "model"), "lambda_ssl": cfg.update.lambda_ssl, **budget}
    distill = cfg.distill.model_copy(update=student)
    return cfg.model_copy(update={"data": data, "finetune": finetune, "distill": distill})


def reuse_text_embeddings(base: Path, target: Path) -> None:
    """Copy the base dataset's cached item-text embeddings beside the new dataset: they are keyed by the
    (item id, text) pairs, so they serve it when no item with text was added, and are ignored otherwise."""
    for cached in base.glob("item_text_emb-*.parquet"):
        if not (target / cached.name).exists():
            shutil.copyfile(cached, target / cached.name)


def add_logged_texts(log: str, dataset, cache_dir: str) -> int:
    """Put the text embeddings logged by POST /items beside the new dataset, for its items without text
    in the item file (raysys.models.text_encoder.LOGGED_EMB_FILE); returns how many."""
    from raysys.data.updates import logged_items
    from raysys.models.text_encoder import LOGGED_EMB_FILE

    items, texts = logged_items(log, cache_dir), dataset.item_text()
    have = set(texts["item_id"].to_pylist()) if texts is not None else set()
    known = set(dataset.item_ids()) - have
    keep = [i in known for i in items["item_id"].to_pylist()]
    if any(keep):
        pq.write_table(items.filter(pa.array(keep)), dataset.path / LOGGED_EMB_FILE)
    return sum(keep)


def with_student(cfg: Config, out_dir: Path) -> Config:
    """The distillation from the updated teacher (DIR/finetune/model)."""
    distill = cfg.distill.model_copy(update={"teacher": str(out_dir / "finetune" / "model")})
    return cfg.model_copy(update={"distill": distill})


def evaluate_models(cfg: Config, base: Path, out_dir: Path, examples) -> dict[str, Any]:
    """The candidate and the serving student on the held-out examples."""
    from raysys.eval.holdout import evaluate_holdout
    from raysys.models.export import load_model_dir

    dirs = {"candidate": out_dir / "student" / "model", "serving": base / "student" / "model"}
    return {
        name: {"model_dir": str(path), "metrics": evaluate_holdout(load_model_dir(path), examples, cfg.eval)}
        for name, path in dirs.items()
    }


def decide(candidate: dict[str, float], serving: dict[str, float], margin: float) -> tuple[bool, str]:
    """Promote unless the candidate is worse than the serving model by more than `margin` (NDCG@10)."""
    if not candidate["num_users"]:
        return False, "no held-out event could be evaluated (no positive held-out event)"
    new, old = candidate[METRIC], serving[METRIC]
    if new < old - margin:
        return False, (
            f"the candidate is worse: held-out {METRIC} {new:.4f} against the serving model's {old:.4f}, "
            f"below by {old - new:.4f}, more than update.promote_margin {margin}"
        )
    return True, f"held-out {METRIC} {new:.4f} against the serving model's {old:.4f} (update.promote_margin {margin})"


def _stage(stage: str, cfg: Config, out_dir: Path, name: str | None = None) -> dict[str, Any]:
    """Run a stage's recipe into DIR/<name> (its summary.json written), a fresh directory each time."""
    import importlib

    from raysys.cli import STAGES
    from raysys.pipeline.stages import recipe_args
    from raysys.run import start_run, write_summary

    stage_dir = out_dir / (name or stage)
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    start_run(stage_dir, cfg)
    recipe = importlib.import_module(STAGES[stage])
    summary = recipe.run(cfg, stage_dir, recipe_args(recipe, quiet=True))
    write_summary(stage_dir, stage, summary)
    return summary


def _swap(app: str, model_dir: Path, variant: str | None) -> dict[str, Any]:
    from raysys.cluster import init_ray
    from raysys.serve.deploy import swap_model

    init_ray()
    return swap_model(app, str(model_dir.resolve()), variant=variant)


def _not_promoted(reason: str, events: dict[str, Any], start: float) -> dict[str, Any]:
    return {
        "promoted": False,
        "reason": reason,
        "models": {},
        "events": events,
        "swap": None,
        "seconds": {"total": round(time.perf_counter() - start, 2)},
    }


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return round(time.perf_counter() - start, 2), value


def _read_summary(stage_dir: Path) -> dict[str, Any]:
    import json

    return json.loads((stage_dir / "summary.json").read_text())
