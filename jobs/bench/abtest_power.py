"""The A/B analysis' power and false-positive rate on simulated populations (issue 19).

    python jobs/bench/abtest_power.py --out runs/bench_abtest_power
    python jobs/bench/abtest_power.py --users 1000,4000 --lifts 0.1,0.2 --runs 200 --base-ctr 0.05

For each number of users (split 50/50) and each relative lift of variant b's CTR over a's (--base-ctr),
--runs simulated tests (raysys.eval.ab_simulation: 1 + Poisson(impressions - 1) lists per user, each user's
own click propensity from a Beta of concentration --concentration around its variant's CTR) are analysed
as `raysys abtest` does; reported: the share of runs in which the user-level test finds b better at alpha
0.05 (power; at lift 0, the false-positive rate in either direction), and the same for the
impression-level test. Writes OUT/abtest_power.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from raysys.eval.ab_simulation import rejection_rate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="500,1000,2000,5000,10000")
    parser.add_argument("--lifts", default="0,0.05,0.1,0.2")
    parser.add_argument("--base-ctr", type=float, default=0.1)
    parser.add_argument("--impressions", type=float, default=5.0, help="mean recommendation lists per user")
    parser.add_argument("--concentration", type=float, default=2.0, help="Beta concentration of users' propensity")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", default="runs/bench_abtest_power")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for users in [int(u) for u in args.users.split(",")]:
        for lift in [float(x) for x in args.lifts.split(",")]:
            start = time.perf_counter()
            ctr = {"a": args.base_ctr, "b": args.base_ctr * (1 + lift)}
            kwargs = {"impressions": args.impressions, "concentration": args.concentration}
            rate = rejection_rate(users, ctr, runs=args.runs, **kwargs)
            seconds = round(time.perf_counter() - start, 1)
            row = {"users": users, "lift": lift, "power_users": rate["p_value"],
                   "power_impressions": rate["p_value_impressions"], "seconds": seconds}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "abtest_power.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print(f"\nbase CTR {args.base_ctr}, {args.impressions} lists per user, concentration {args.concentration}, "
          f"{args.runs} runs per cell; share rejecting at alpha 0.05 (lift 0: false positives)")  # fmt: skip
    print("| users | lift | user-level test | impression-level test |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['users']} | {r['lift']:.0%} | {r['power_users']:.3f} | {r['power_impressions']:.3f} |")


if __name__ == "__main__":
    main()
