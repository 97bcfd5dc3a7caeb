"""Rebuild a run's report.html:

python -m raysys.report RUN_DIR [--ablation CSV] [--tune-results CSV] [--bench-serve DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raysys.report.report import build_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m raysys.report", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a `raysys pipeline` run directory")
    parser.add_argument("--ablation", type=Path, help="an ablation CSV (default: RUN_DIR/ablation.csv if present)")
    parser.add_argument("--tune-results", type=Path, help="a tune results CSV (default: RUN_DIR/tune/results.csv)")
    parser.add_argument("--bench-serve", type=Path, help="a jobs/bench/serving.py --out folder")
    args = parser.parse_args(argv)
    path = build_report(
        args.run_dir, ablation=args.ablation, tune_results=args.tune_results, bench_serve=args.bench_serve
    )
    print(path)


if __name__ == "__main__":
    main()
