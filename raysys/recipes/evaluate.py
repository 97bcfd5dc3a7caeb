"""`raysys evaluate`: full-ranking metrics of a baseline, a model directory, or a model fused with a baseline.

    raysys evaluate --config jobs/configs/ml100k.yaml --baseline popularity --out runs/pop
    raysys evaluate --config jobs/configs/ml100k.yaml --model runs/distill/model --fuse popularity --out runs/eval
    raysys evaluate --config jobs/configs/ml100k.yaml --baseline itemknn eval.sampled_negatives=100 --num-workers 2

setup (dataset, scorer) -> fusion weight on valid (with --fuse) -> valid, test and test slices on one
process or several Ray Train workers -> summary.json {"metrics": {"valid": ..., "valid/cold_items": ...,
"test": ..., "test/short_history": ..., "test/cold_items": ..., "test/warm_items": ...}, "scorer": ...,
"protocol": ..., "dataset": ...}.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from raysys.config import Config, EvalConfig
from raysys.data.dataset import PreparedDataset
from raysys.data.prepare import load_or_prepare
from raysys.errors import RaysysError
from raysys.eval.baselines import BASELINES, build_baseline
from raysys.eval.distributed import evaluate_on_ray
from raysys.eval.evaluator import ScoreFn, evaluate_dataset
from raysys.eval.fusion import FusedScorer, choose_fusion_weight
from raysys.models.export import LoadedModel, load_model_dir

DESCRIPTION = "full-ranking evaluation (valid, test and slices) of a model directory or a baseline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", choices=BASELINES, help="evaluate this baseline")
    parser.add_argument("--model", metavar="DIR", help="evaluate this model directory (written by a train stage)")
    parser.add_argument(
        "--fuse", choices=BASELINES, help="with --model: fuse its scores with this baseline (weight chosen on valid)"
    )
    parser.add_argument(
        "--num-workers", type=int, default=1, metavar="N", help="Ray Train workers sharing the users (default 1)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def run(cfg: Config, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate what the flags name on `cfg.data`; returns the summary written to summary.json."""
    check_arguments(args)
    start = time.perf_counter()
    dataset = load_or_prepare(cfg.data, progress=not args.quiet)
    summary: dict[str, Any] = {}
    if args.baseline:
        scorer_for_split = partial(build_baseline, args.baseline, dataset)
        max_len = cfg.data.max_len
        summary["scorer"] = {"baseline": args.baseline}
    else:
        loaded = load_checked_model(args.model, dataset)
        scorer_for_split = ModelScorers(str(loaded.path), dataset)
        max_len = loaded.max_len
        summary["scorer"] = {"model": str(loaded.path), "kind": loaded.kind, "model_version": loaded.model_version}
        if args.fuse:
            scorer_for_split, summary["fusion"] = choose_fusion(loaded, args.fuse, dataset, cfg.eval)
    evaluate = partial(evaluate_dataset, scorer_for_split, dataset, cfg.eval, max_len)
    if args.num_workers > 1:
        metrics = evaluate_on_ray(evaluate, num_workers=args.num_workers, storage_path=Path(out_dir).resolve() / "ray")
    else:
        metrics = evaluate()
    return {
        "metrics": metrics,
        **summary,
        "protocol": protocol(cfg.eval, max_len),
        "dataset": {"path": str(dataset.path), "num_users": dataset.num_users, "item_vocab_size": dataset.num_items},
        "num_workers": args.num_workers,
        "seconds": round(time.perf_counter() - start, 3),
    }


def check_arguments(args: argparse.Namespace) -> None:
    """Exactly one of --baseline / --model; --fuse only with --model; at least one worker."""
    if bool(args.baseline) == bool(args.model):
        raise RaysysError("pass exactly one of --baseline NAME or --model DIR", where="command line")
    if args.fuse and not args.model:
        raise RaysysError("--fuse fuses a model with a baseline: it needs --model DIR", where="command line")
    if args.num_workers < 1:
        raise RaysysError(f"--num-workers must be at least 1, got {args.num_workers}", where="command line")


@lru_cache(maxsize=4)
def cached_model(model_dir: str) -> LoadedModel:
    """load_model_dir once per process (the valid and test scorers share the model)."""
    return load_model_dir(model_dir)


def load_checked_model(model_dir: str, dataset: PreparedDataset) -> LoadedModel:
    """The model directory, after checking it shares the dataset's item index space."""
    loaded = cached_model(str(Path(model_dir).expanduser().resolve()))
    vocab = dataset.item_vocab()
    dataset_index = dict(zip(vocab["item_id"].to_pylist(), vocab["item_index"].to_pylist(), strict=True))
    if loaded.num_items != dataset.num_items or loaded.item_index != dataset_index:
        raise RaysysError(
            f"the model's item vocabulary ({loaded.num_items} indices) is not the dataset's ({dataset.num_items})",
            where=str(loaded.path),
            hint="evaluate with the data config the model was trained on",
        )
    return loaded


@dataclass(frozen=True)
class ModelScorers:
    """scorer_for_split of a model directory, optionally fused with a baseline at a fixed weight.

    Holds the path, not the model, so it pickles small to Ray workers, which load the model once each.
    """

    model_dir: str
    dataset: PreparedDataset
    fuse: str | None = None
    weight: float = 0.0

    def __call__(self, split: str) -> ScoreFn:
        model_fn = cached_model(self.model_dir).next_item_scores
        if self.fuse is None:
            return model_fn
        return FusedScorer(model_fn, build_baseline(self.fuse, self.dataset, split), self.weight)


def choose_fusion(
    loaded: LoadedModel, baseline: str, dataset: PreparedDataset, cfg: EvalConfig
) -> tuple[ModelScorers, dict[str, Any]]:
    """Pick the fusion weight on the valid split; the fused scorers and what to report about them."""
    metric = "ndcg@10" if 10 in cfg.ks else f"ndcg@{max(cfg.ks)}"
    valid_baseline = build_baseline(baseline, dataset, "valid")
    choice = choose_fusion_weight(
        loaded.next_item_scores,
        valid_baseline,
        dataset.split("valid"),
        dataset.num_items,
        cfg,
        loaded.max_len,
        metric=metric,
        sync=False,
    )
    report = {
        "baseline": baseline,
        "weight": choice.weight,
        "chosen_on": f"valid {choice.metric} (so the fused valid metrics are optimistic; test is not)",
        "valid_grid": {str(w): value for w, value in choice.valid.items()},
    }
    return ModelScorers(str(loaded.path), dataset, baseline, choice.weight), report


def protocol(cfg: EvalConfig, max_len: int) -> dict[str, Any]:
    """How the figures were computed, saved beside them."""
    out: dict[str, Any] = {
        "ranking": "full catalog (item indices 2..num_items-1)",
        "exclude_seen": cfg.exclude_seen,
        "repeat_target": "the target stays rankable even when it is in the history",
        "ties": "count against the target",
        "split": "leave-one-out; test history = train + valid items",
        "ks": list(cfg.ks),
        "max_len": max_len,
        "short_history_max": cfg.short_history_max,
    }
    if cfg.sampled_negatives > 0:
        out["sampled"] = f"sampled_* metrics rank each target against {cfg.sampled_negatives} sampled negatives"
    return out
