"""The pipeline's stages, each a thin call of the stage recipe it stands for.

Every function takes the config the stage runs with and the `StageRunner`, and returns the stage's
summary (see `raysys.pipeline.runner` for when a stage is skipped). Recipes are called through their
public interface `run(cfg, out_dir, args)` with the defaults of their own flags, so the pipeline
runs exactly what `raysys <stage>` runs.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

from raysys import storage
from raysys.config import Config, config_from_dict, load_config
from raysys.errors import RaysysError
from raysys.pipeline.runner import StageRunner
from raysys.run import write_summary

MODEL_DIR = "model"  # the model directory inside the teacher and student stage directories
EXPORT_DIR = "export"  # the export stage's directory: RUN/export/<teacher|student>, the model dirs that ship
SHIPPED = ("teacher", "student")
TRAINED_BY = {  # the stage whose RUN/<stage>/model each model is
    "teacher": "finetune",
    "student": "student",
    "student_no_kd": "student_no_kd",
}
TUNE_BEST = "best.yaml"  # the tune recipe's resolved config of its best trial
SCORERS = ("teacher", "student", "popularity", "itemknn")
CONTROL = "student_no_kd"  # pipeline.kd_control: the student trained without its teacher
INPUTS_DIR = "inputs"  # under data.cache_dir: local copies of s3:// / gs:// data inputs


def recipe_args(module: ModuleType, **values: Any) -> argparse.Namespace:
    """The recipe's own flags at their defaults, with `values` set (what `raysys <stage>` would parse)."""
    parser = argparse.ArgumentParser()
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in values.items():
        setattr(args, key, value)
    return args


def localize_data(cfg: Config) -> Config:
    """`cfg` with data.path / data.item_path copied from an object store to data.cache_dir/inputs.

    The readers and the input checksums work on local files; the copy's place depends only on the
    URI, so the prepared-dataset cache (keyed by the path and the contents) keeps hitting.
    """
    updates: dict[str, str] = {}
    for key in ("path", "item_path"):
        value = getattr(cfg.data, key)
        if storage.is_uri(value):
            if any(ch in value for ch in "*?["):
                raise RaysysError(
                    "globs are not supported in object-store URIs",
                    where=f"data.{key}",
                    hint="name the file or the folder",
                )
            local = storage.local_mirror(value, Path(cfg.data.cache_dir).expanduser() / INPUTS_DIR)
            updates[key] = str(storage.download(value, local))
    if not updates:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})


# ------------------------------------------------------------------------------- checks


def check_prepared(stage_dir: Path, summary: dict[str, Any]) -> None:
    """The prepared dataset the summary names is still complete in the cache."""
    from raysys.data.cache import is_complete

    if not is_complete(Path(summary["dataset_path"])):
        raise RaysysError("the prepared dataset is gone or incomplete", where=summary["dataset_path"])


def check_model_dir(stage_dir: Path, summary: dict[str, Any]) -> None:
    """The stage's model directory loads."""
    from raysys.models.export import load_model_dir

    load_model_dir(stage_dir / MODEL_DIR)


def check_tuned(stage_dir: Path, summary: dict[str, Any]) -> None:
    """The tune stage's best.yaml is a valid config."""
    load_config(stage_dir / TUNE_BEST)


def check_keys(*keys: str):
    """A check that the summary holds `keys` (stages whose outputs are their summary)."""

    def check(stage_dir: Path, summary: dict[str, Any]) -> None:
        missing = [key for key in keys if key not in summary]
        if missing:
            raise RaysysError(f"summary.json lacks {', '.join(missing)}", where=str(stage_dir))

    return check


def describe_data(summary: dict[str, Any]) -> str:
    """The prepare stage's done line: the dataset's size, and whether the cache served it."""
    cached = " (cached)" if summary.get("cache_hit") else ""
    return (
        f"{summary['num_users']:,} users, {summary['num_items']:,} items, "
        f"{summary['num_interactions']:,} interactions{cached}"
    )


def describe_training(summary: dict[str, Any]) -> str:
    """A training stage's done line: the best epoch and its validation NDCG@10."""
    valid = summary["metrics"]["valid"]
    metric = "ndcg@10" if "ndcg@10" in valid else "auc"
    return f"best epoch {summary['best_epoch']} of {summary['epochs_run']}, valid {metric} {valid[metric]:.4f}"


# ------------------------------------------------------------------------------- stages


def prepare(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """Prepare (or reuse from the cache) the dataset of `cfg.data`."""
    from raysys.recipes import prepare as recipe

    return runner.stage(
        "prepare", cfg, lambda d: recipe.run(cfg, d, recipe_args(recipe, quiet=True)), check_prepared, describe_data
    )


def uses_text(cfg: Config) -> bool:
    """Whether a trained model reads item-text embeddings (the embed_items stage then runs)."""
    return cfg.teacher.use_text or cfg.student.use_text


def embed_items(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """Embed the dataset's item texts with Ray Data batch inference, cached beside the dataset."""
    from raysys.recipes import embed_items as recipe

    return runner.stage(
        "embed_items",
        cfg,
        lambda d: recipe.run(cfg, d, recipe_args(recipe)),
        check_embedded,
        lambda s: f"{s['items']:,} item texts" + (" (cached)" if s["cache_hit"] else ""),
    )


def check_embedded(stage_dir: Path, summary: dict[str, Any]) -> None:
    """The embeddings file the summary names is still there."""
    if not Path(summary["cache_file"]).is_file():
        raise RaysysError("the item-text embeddings are gone", where=summary["cache_file"])


def pretrain(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """Pretrain the teacher with the self-supervised mix of `cfg.pretrain` on Ray Train (RUN/pretrain/model)."""
    from raysys.recipes import pretrain as recipe

    if cfg.pretrain.task != "pretrain":
        raise RaysysError(
            f"the pipeline's pretrain stage runs the self-supervised mix, not task {cfg.pretrain.task}",
            where="pretrain.task",
            hint="set pretrain.task=pretrain (the fine-tune task belongs in finetune.task)",
        )
    return runner.stage(
        "pretrain", cfg, lambda d: recipe.run(cfg, d, recipe_args(recipe)), check_model_dir, describe_training
    )


def finetune(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """Fine-tune the teacher on next item from the pretrain stage's model (from scratch, or from the
    config's own `finetune.init_from`, when `pipeline.pretrain` is off); RUN/finetune/model is the teacher."""
    from raysys.recipes import finetune as recipe

    if cfg.pipeline.pretrain:
        init_from = str((runner.root / "pretrain" / MODEL_DIR).resolve())
        cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"init_from": init_from})})
    return runner.stage(
        "finetune", cfg, lambda d: recipe.run(cfg, d, recipe_args(recipe)), check_model_dir, describe_training
    )


def teacher(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """The teacher: `pretrain` (when `pipeline.pretrain`) then `finetune`; the fine-tune stage's summary."""
    if cfg.pipeline.pretrain:
        pretrain(cfg, runner)
    return finetune(cfg, runner)


def with_teacher(cfg: Config, runner: StageRunner) -> Config:
    """`cfg` whose distill.teacher is the teacher's model directory (the finetune stage's)."""
    model_dir = runner.root / TRAINED_BY["teacher"] / MODEL_DIR
    distill = cfg.distill.model_copy(update={"teacher": str(model_dir.resolve())})
    return cfg.model_copy(update={"distill": distill})


def tune(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """Search the distill stage's hyper-parameters (`raysys tune`); writes RUN/tune/best.yaml."""
    try:
        recipe = importlib.import_module("raysys.recipes.tune")
    except ModuleNotFoundError:
        raise RaysysError(
            "the tune stage is not installed (raysys.recipes.tune)",
            where="pipeline.run_tune",
            hint="set pipeline.run_tune=false",
        ) from None
    if cfg.tune.stage != "distill":
        raise RaysysError(
            "the pipeline tunes the student (after the teacher is trained)",
            where="tune.stage",
            hint="set tune.stage=distill, or run `raysys tune` on its own",
        )
    tune_cfg = with_teacher(cfg, runner)
    return runner.stage(
        "tune",
        tune_cfg,
        lambda d: recipe.run(tune_cfg, d, recipe_args(recipe)),
        check_tuned,
        lambda s: f"{s['trials']['total']} trials, best valid ndcg@10 {s['best']['valid_ndcg@10']:.4f}",
    )


def tuned(cfg: Config, best_yaml: Path) -> Config:
    """`cfg` with the searched keys (`tune.space`, e.g. distill.lr, student.dropout) set to the best
    trial's values from the tune run's best.yaml; everything else (epochs, data paths, serving) stays
    as this pipeline resolved it."""
    best = load_config(best_yaml).to_dict()
    raw = cfg.to_dict()
    for key in cfg.tune.space:
        *sections, name = key.split(".")
        source, target = best, raw
        for section in sections:
            source, target = source[section], target[section]
        target[name] = source[name]
    return config_from_dict(raw, where=str(best_yaml))


def student_settings(cfg: Config, runner: StageRunner) -> Config:
    """`cfg` with the tuned student settings when the tune stage ran."""
    return tuned(cfg, runner.root / "tune" / TUNE_BEST) if cfg.pipeline.run_tune else cfg


def student(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """Distil the student from the teacher (with the tuned settings when the tune stage ran)."""
    from raysys.recipes import distill as recipe

    student_cfg = with_teacher(student_settings(cfg, runner), runner)
    return runner.stage(
        "student",
        student_cfg,
        lambda d: recipe.run(student_cfg, d, recipe_args(recipe)),
        check_model_dir,
        describe_training,
    )


def student_no_kd(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """The same student at the same budget without its teacher (lambda_kd = lambda_hidden = 0, random
    item embeddings): what distillation bought, beside the student (`pipeline.kd_control`)."""
    from raysys.recipes import distill as recipe

    settings = student_settings(cfg, runner)
    alone = settings.distill.model_copy(
        update={"teacher": None, "lambda_kd": 0.0, "lambda_hidden": 0.0, "init_items": "random"}
    )
    control_cfg = settings.model_copy(update={"distill": alone})
    return runner.stage(
        CONTROL,
        control_cfg,
        lambda d: recipe.run(control_cfg, d, recipe_args(recipe)),
        check_model_dir,
        describe_training,
    )


def evaluate(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """Full-ranking metrics of the teacher, the student and both baselines (`raysys evaluate` each)."""
    return runner.stage(
        "evaluate",
        cfg,
        lambda d: _evaluate_all(cfg, runner.root, d),
        check_keys("models"),
        lambda s: "test: " + ", ".join(f"{n} {m['metrics']['test']['ndcg@10']:.4f}" for n, m in s["models"].items()),
    )


def _evaluate_all(cfg: Config, root: Path, stage_dir: Path) -> dict[str, Any]:
    """RUN/evaluate/<scorer>/summary.json for each scorer, and their metrics side by side."""
    from raysys.recipes import evaluate as recipe

    models: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for name in (*SCORERS, CONTROL) if cfg.pipeline.kd_control else SCORERS:
        if name in TRAINED_BY:
            args = recipe_args(recipe, model=str(root / TRAINED_BY[name] / MODEL_DIR), quiet=True)
        else:
            args = recipe_args(recipe, baseline=name, quiet=True)
        summary = recipe.run(cfg, stage_dir / name, args)
        write_summary(stage_dir / name, "evaluate", summary)
        models[name] = {"metrics": summary["metrics"], "scorer": summary["scorer"], "seconds": summary["seconds"]}
    return {"models": models, "protocol": summary["protocol"], "dataset": summary["dataset"]}


def export(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """What ships: the teacher's and the student's model directories, checked to load and copied to
    RUN/export/<name>, with their location, version, size and parameter count."""
    return runner.stage(
        "export",
        cfg,
        lambda d: _export_models(runner, d),
        check_exported,
        lambda s: f"-> {runner.location(EXPORT_DIR)}",
    )


def _export_models(runner: StageRunner, stage_dir: Path) -> dict[str, Any]:
    from raysys.models.export import load_model_dir

    models = {}
    for name in SHIPPED:
        target = stage_dir / name
        shutil.copytree(runner.root / TRAINED_BY[name] / MODEL_DIR, target, dirs_exist_ok=True)  # over a cut-short copy
        loaded = load_model_dir(target)
        models[name] = {
            "path": runner.location(EXPORT_DIR, name),
            "kind": loaded.kind,
            "model_version": loaded.model_version,
            "num_parameters": sum(p.numel() for p in loaded.model.parameters()),
            "bytes": sum(f.stat().st_size for f in target.rglob("*") if f.is_file()),
        }
    return {"models": models}


def check_exported(stage_dir: Path, summary: dict[str, Any]) -> None:
    """Every shipped model directory under RUN/export loads."""
    from raysys.models.export import load_model_dir

    for name in SHIPPED:
        load_model_dir(stage_dir / name)


def serve_smoke(cfg: Config, runner: StageRunner) -> dict[str, Any]:
    """Serve the student for one /recommend query: latency and the top items (nothing stays running)."""
    from raysys.pipeline.smoke import serve_smoke as smoke

    model_dir = runner.root / EXPORT_DIR / "student"
    return runner.stage(
        "serve_smoke",
        cfg,
        lambda d: smoke(cfg.serve, model_dir),
        check_keys("latency_ms"),
        lambda s: f"POST /recommend p50 {s['latency_ms']['p50']} ms over {s['latency_ms']['requests']} requests",
    )
