"""Where the sampled softmax starts to pay: the item loss's forward + backward time per target, full
softmax against the sampled one (in-batch + uniform negatives, logQ), over catalog sizes and targets per
batch, side by side in one process.

    python jobs/bench/softmax_crossover.py --out runs/bench_softmax
    python jobs/bench/softmax_crossover.py --items 1000,10000,100000 --targets 650,5000 --threads 1

The full softmax scores each target against the whole catalog (cost ~ items); the sampled one against
the batch's targets and `num_negatives` draws (cost ~ targets per batch + negatives). The crossover is
the catalog size above which the sampled one is faster at a given number of targets per batch; per
target, both costs are linear, so it is reported as `crossover_ratio` = items / (targets per batch +
negatives) at the crossover. `loss=auto` switches at a higher ratio
(`raysys.objectives.softmax.SAMPLED_ABOVE`), because the sampled softmax also learns less per epoch.

Writes OUT/softmax_crossover.json (rows: items, targets, full_ms, sampled_ms, speedup) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from raysys.config import TrainingConfig
from raysys.objectives.softmax import SAMPLED_ABOVE, item_loss

DEFAULT_ITEMS = "500,1000,2000,5000,10000,20000,50000,100000"
DEFAULT_TARGETS = "650,5000"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default=DEFAULT_ITEMS, help="catalog sizes, comma-separated")
    parser.add_argument("--targets", default=DEFAULT_TARGETS, help="targets per batch, comma-separated")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size (the project default: 64)")
    parser.add_argument("--negatives", type=int, default=TrainingConfig().num_negatives)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a Ray Train CPU worker has 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.items = [int(v) for v in args.items.split(",")]
    args.targets = [int(v) for v in args.targets.split(",")]
    if min(args.items) < 3 or min(args.targets) < 1 or args.repeats < 1:
        parser.error("--items >= 3, --targets >= 1, --repeats >= 1")
    return args


def time_loss(loss: str, items: int, targets: int, hidden: int, negatives: int, repeats: int) -> float:
    """Median milliseconds of one forward + backward of the item loss."""
    generator = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(items, hidden, generator=generator) * 0.02)
    states = torch.randn(targets, hidden, generator=generator, requires_grad=True)
    labels = torch.randint(2, items, (targets,), generator=generator)
    cfg = TrainingConfig(loss=loss, num_negatives=negatives)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        item_loss(states, labels, table, cfg, generator).backward()
        times.append(time.perf_counter() - start)
        table.grad = states.grad = None
    return 1000 * float(np.median(times[1:]))


def crossover_ratio(rows: list[dict], targets: int, negatives: int) -> float | None:
    """items / (targets + negatives) at the first catalog size where sampled is faster (None: never)."""
    for row in sorted((r for r in rows if r["targets"] == targets), key=lambda r: r["items"]):
        if row["sampled_ms"] < row["full_ms"]:
            return round(row["items"] / (targets + negatives), 2)
    return None


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'items':>8} {'targets':>8} {'full ms':>9} {'sampled ms':>11} {'full/sampled':>13}")
    for targets in args.targets:
        for items in args.items:
            full = time_loss("full", items, targets, args.hidden, args.negatives, args.repeats)
            sampled = time_loss("sampled", items, targets, args.hidden, args.negatives, args.repeats)
            rows.append(
                {"items": items, "targets": targets, "full_ms": round(full, 3), "sampled_ms": round(sampled, 3)}
            )
            rows[-1]["speedup"] = round(full / sampled, 2)
            print(f"{items:>8} {targets:>8} {full:>9.2f} {sampled:>11.2f} {full / sampled:>13.2f}")
    ratios = {str(t): crossover_ratio(rows, t, args.negatives) for t in args.targets}
    print(f"crossover items / (targets + negatives): {ratios}; loss=auto switches at {SAMPLED_ABOVE:g}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k != "out"}
        payload = {"rows": rows, "crossover_ratio": ratios, "sampled_above": SAMPLED_ABOVE, "settings": settings}
        payload["load_average"] = list(os.getloadavg())
        (args.out / "softmax_crossover.json").write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
