"""`raysys prepare`: read, validate and prepare an interaction log into a cached dataset directory.

    raysys prepare --config jobs/configs/ml100k.yaml --out runs/ml100k
    python jobs/prepare.py --config jobs/configs/quickstart.yaml data.synthetic.num_interactions=200000

setup (load the config) -> prepare or reuse the cached dataset -> copy its manifest into the run dir
-> summary. The dataset itself stays in `data.cache_dir/<key>`; `dataset_path` in summary.json says where.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from raysys.config import Config
from raysys.data.dataset import MANIFEST
from raysys.data.prepare import prepare_or_reuse

DESCRIPTION = "read, validate and prepare an interaction log with Ray Data (cached by config and input checksums)"
RUN_MANIFEST = "data_manifest.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def run(cfg: Config, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Prepare (or reuse) the dataset of `cfg.data`; returns the summary written to summary.json."""
    result = prepare_or_reuse(cfg.data, progress=not getattr(args, "quiet", False))
    dataset = result.dataset
    shutil.copyfile(dataset.path / MANIFEST, Path(out_dir) / RUN_MANIFEST)
    manifest = dataset.manifest
    return {
        "dataset_path": str(dataset.path),
        "cache_hit": result.cache_hit,
        "seconds": round(result.seconds, 3),
        **{
            key: manifest[key]
            for key in (
                "num_users",
                "num_items",
                "item_vocab_size",
                "num_interactions",
                "num_valid",
                "num_test",
                "num_dropped",
                "num_filtered",
                "num_held_out",
                "num_input_rows",
                "num_cold_items",
                "has_text",
                "has_ratings",
            )
        },
    }
