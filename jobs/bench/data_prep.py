"""Benchmark the data stage: raysys prepare (Ray Data) against a single-process pandas/pyarrow baseline.

    python jobs/bench/data_prep.py --sizes 1e6,5e6 --out runs/bench_data
    python jobs/bench/data_prep.py --sizes 2e7 --out runs/bench_data_20m     # the 20 M target run (long)

For each size a synthetic log is generated once (not timed). Each implementation then runs in its own
subprocess, so its peak memory is its own: PeakMemorySampler reads the subprocess tree (with Ray's GCS,
raylet and workers for raysys) every 0.25 s. Ray is started before the clock starts; its start-up is
reported apart (`ray_start_s`). Both implementations do the same work: read Parquet, reject nulls and
negative timestamps, drop duplicate (user, item, timestamp) rows, build item/user vocabularies, sort each
user's interactions by time (stable), leave-one-out split, write the sequences as Parquet. Their outputs
are checked to be identical (a fingerprint of every user's sequence, timestamps, ratings and split).

Targets: at 20 M interactions raysys peaks below 8 GiB and reaches at least 0.5x the pandas throughput.
Writes bench_data.csv and bench_data.json into --out.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysys.bench.memory import PeakMemorySampler
from raysys.config import DataConfig, SyntheticConfig
from raysys.data.dataset import FIRST_ITEM_INDEX, SEQUENCES_DIR
from raysys.data.synthetic import generate_logs
from raysys.errors import RaysysError

GIB = 2**30
TARGET_SIZE = 20_000_000
TARGET_PEAK_GIB = 8.0
TARGET_RATIO = 0.5
IMPLS = ("pandas", "raysys")
KEYS = ("user_id", "item_id", "timestamp")
SEQUENCE_COLUMNS = {
    "items": np.int64,
    "timestamps": np.int64,
    "ratings": np.float32,
    "train_len": np.int64,
    "valid_target": np.int64,
    "test_target": np.int64,
}


def synthetic_config(size: int, seed: int = 0) -> SyntheticConfig:
    """The benchmark's world at `size` interactions: 25 per user on average, 100 per item."""
    num_items = max(1000, size // 100)
    return SyntheticConfig(
        num_interactions=size,
        num_users=max(1, size // 25),
        num_items=num_items,
        num_topics=max(20, num_items // 100),
        seed=seed,
    )


# --- the pandas/pyarrow baseline: one process, vectorised ---------------------------------------------


def pandas_prepare(interactions: Path, out_dir: Path) -> None:
    """Prepare `interactions` into `out_dir` with pandas + numpy + pyarrow in this process, in the layout
    of raysys.data.dataset (vocabularies sorted by id, as raysys does for non-integer ids)."""
    frame = pd.read_parquet(interactions, columns=[*KEYS, "rating"])
    nulls = frame[list(KEYS)].isna().sum()
    if nulls.any():
        raise RaysysError(f"null values in {nulls[nulls > 0].to_dict()}", where=str(interactions))
    if (frame["timestamp"] < 0).any():
        raise RaysysError("negative timestamps", where=str(interactions))
    user, user_vocab = pd.factorize(frame["user_id"], sort=True)
    item, item_vocab = pd.factorize(frame["item_id"], sort=True)
    timestamp, rating = frame["timestamp"].to_numpy(), frame["rating"].to_numpy(np.float32)
    del frame
    order = np.lexsort((timestamp, user))  # stable: file order breaks ties
    user, item, timestamp, rating = user[order], item[order], timestamp[order], rating[order]
    keep = ~_duplicates_among_ties(user, item, timestamp)
    user, item, timestamp, rating = user[keep], item[keep], timestamp[keep], rating[keep]
    user_index = np.arange(len(user_vocab), dtype=np.int32)
    lengths = np.bincount(user, minlength=len(user_vocab))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    items = (item + FIRST_ITEM_INDEX).astype(np.int32)
    train_len, valid_target, test_target = _leave_one_out(items, offsets, lengths)
    sequences = pa.table(
        {
            "user_index": user_index,
            "user_id": pa.array(np.asarray(user_vocab, dtype=object), pa.string()),
            "items": pa.ListArray.from_arrays(offsets, items),
            "timestamps": pa.ListArray.from_arrays(offsets, timestamp),
            "ratings": pa.ListArray.from_arrays(offsets, rating),
            "train_len": train_len,
            "valid_target": valid_target,
            "test_target": test_target,
        }
    )
    _write_outputs(out_dir, sequences, item_vocab, user_vocab)


def _duplicates_among_ties(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """[N] bool: repeats of an earlier (user, item, timestamp) row, for rows sorted by (user, timestamp).

    A duplicate shares its (user, timestamp) with its neighbours, so only those runs of ties are hashed
    (pandas `duplicated` on all rows costs several times the sort)."""
    same = (user[1:] == user[:-1]) & (timestamp[1:] == timestamp[:-1])
    tied = np.zeros(len(user), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    rows = np.flatnonzero(tied)
    duplicate = np.zeros(len(user), dtype=bool)
    duplicate[rows] = pd.DataFrame({"u": user[rows], "i": item[rows], "t": timestamp[rows]}).duplicated().to_numpy()
    return duplicate


def _leave_one_out(
    items: np.ndarray, offsets: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[U] train_len, valid_target, test_target (targets 0 for users with < 3 interactions)."""
    split = lengths >= 3
    train_len = np.where(split, lengths - 2, lengths).astype(np.int32)
    last = np.maximum(offsets[1:] - 1, 0)
    valid_target = np.where(split, items[np.maximum(last - 1, 0)], 0).astype(np.int32)
    test_target = np.where(split, items[last], 0).astype(np.int32)
    return train_len, valid_target, test_target


def _write_outputs(out_dir: Path, sequences: pa.Table, item_vocab: pd.Index, user_vocab: pd.Index) -> None:
    (out_dir / SEQUENCES_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(sequences, out_dir / SEQUENCES_DIR / "part-00000.parquet", row_group_size=1 << 17)
    item_index = np.arange(FIRST_ITEM_INDEX, FIRST_ITEM_INDEX + len(item_vocab), dtype=np.int32)
    pq.write_table(
        pa.table({"item_id": pa.array(np.asarray(item_vocab, dtype=object)), "item_index": item_index}),
        out_dir / "item_vocab.parquet",
    )
    user_index = np.arange(len(user_vocab), dtype=np.int32)
    pq.write_table(
        pa.table({"user_id": pa.array(np.asarray(user_vocab, dtype=object)), "user_index": user_index}),
        out_dir / "user_vocab.parquet",
    )


# --- one implementation in its own process ----------------------------------------------------------


def run_one(impl: str, interactions: Path, work_dir: Path, result_file: Path) -> None:
    """Child-process entry: time one implementation and write its figures to `result_file`."""
    result: dict[str, Any] = {"impl": impl, "ray_start_s": None}
    if impl == "pandas":
        start = time.perf_counter()
        pandas_prepare(interactions, work_dir / "prepared")
        result["seconds"] = time.perf_counter() - start
        sequences_dir = work_dir / "prepared" / SEQUENCES_DIR
    else:
        import ray

        from raysys.data.prepare import load_or_prepare

        start = time.perf_counter()
        # As raysys.data.prepare.ensure_ray would start it, but before the clock starts.
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        result["ray_start_s"] = time.perf_counter() - start
        cfg = DataConfig(path=str(interactions), format="parquet", cache_dir=str(work_dir / "cache"))
        start = time.perf_counter()
        dataset = load_or_prepare(cfg, progress=False)
        result["seconds"] = time.perf_counter() - start
        ray.shutdown()
        sequences_dir = dataset.path / SEQUENCES_DIR
    result_file.write_text(json.dumps({**result, **sequences_summary(sequences_dir)}))


def sequences_summary(sequences_dir: Path) -> dict[str, Any]:
    """Counts and a content fingerprint of a prepared `sequences/` folder (users in user_index order)."""
    table = pq.read_table(sequences_dir).sort_by("user_index")
    digest = hashlib.sha256("\x00".join(table["user_id"].to_pylist()).encode())
    for name, dtype in SEQUENCE_COLUMNS.items():
        column = table[name].combine_chunks()
        if pa.types.is_list(column.type):
            digest.update(pc.list_value_length(column).to_numpy().astype(np.int64).tobytes())
            column = pc.list_flatten(column)
        digest.update(column.to_numpy().astype(dtype).tobytes())
    items = table["items"].combine_chunks()
    return {
        "num_users": table.num_rows,
        "num_items": len(pc.unique(pc.list_flatten(items))),
        "num_interactions": int(pc.sum(pc.list_value_length(items)).as_py()),
        "fingerprint": digest.hexdigest()[:16],
    }


def measure(impl: str, interactions: Path, work_dir: Path) -> dict[str, Any]:
    """Run one implementation in a subprocess under the peak-memory sampler; its figures plus memory."""
    work_dir.mkdir(parents=True, exist_ok=True)
    result_file = work_dir / "result.json"
    command = [
        sys.executable,
        __file__,
        "--run-one",
        impl,
        "--input",
        str(interactions),
        "--work",
        str(work_dir),
        "--result",
        str(result_file),
    ]
    log_file = work_dir.parent.parent / "logs" / f"{work_dir.name}.log"  # Ray Data's chatter goes here
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        with PeakMemorySampler(pid=child.pid, interval_s=0.25) as memory:
            code = child.wait()
    if code != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{impl} run failed with exit code {code}; the end of {log_file}:\n{tail}")
    peak = memory.peak
    result = json.loads(result_file.read_text())
    shutil.rmtree(work_dir, ignore_errors=True)
    return {
        **result,
        "peak_pss_gib": peak.pss_bytes / GIB,
        "peak_rss_gib": peak.rss_bytes / GIB,
        "peak_shm_gib": peak.shm_bytes / GIB,
        "max_processes": peak.num_processes,
    }


# --- the driver -------------------------------------------------------------------------------------


def bench_size(size: int, out_dir: Path) -> list[dict[str, Any]]:
    """Generate the log of `size` interactions once, then measure both implementations on it."""
    data_dir = out_dir / "data" / f"n{size}"
    start = time.perf_counter()
    files = generate_logs(synthetic_config(size), data_dir)
    generate_s = time.perf_counter() - start
    print(f"[{size:,}] generated in {generate_s:.1f} s", flush=True)
    rows = []
    for impl in IMPLS:
        result = measure(impl, files.interactions, out_dir / "work" / f"n{size}-{impl}")
        seconds = result["seconds"]
        rows.append({"size": size, **result, "interactions_per_s": size / seconds, "generate_s": generate_s})
        print(f"[{size:,}] {impl}: {seconds:.1f} s, peak {result['peak_pss_gib']:.2f} GiB", flush=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    pandas_row, raysys_row = rows
    parity = pandas_row["fingerprint"] == raysys_row["fingerprint"]
    for row in rows:
        row["ratio_vs_pandas"] = row["interactions_per_s"] / pandas_row["interactions_per_s"]
        row["outputs_identical"] = parity
    return rows


COLUMNS = (
    "size",
    "impl",
    "seconds",
    "interactions_per_s",
    "peak_pss_gib",
    "peak_rss_gib",
    "peak_shm_gib",
    "ratio_vs_pandas",
    "ray_start_s",
    "generate_s",
    "num_users",
    "num_items",
    "outputs_identical",
)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'size':>11} {'impl':>7} {'seconds':>8} {'inter/s':>11} {'peak GiB':>9} {'rss GiB':>8} "
        f"{'ratio':>6} {'ray start':>9} {'identical':>9}"
    )
    for r in rows:
        ray_start = f"{r['ray_start_s']:.1f}" if r["ray_start_s"] is not None else "-"
        print(
            f"{r['size']:>11,} {r['impl']:>7} {r['seconds']:>8.2f} {r['interactions_per_s']:>11,.0f} "
            f"{r['peak_pss_gib']:>9.2f} {r['peak_rss_gib']:>8.2f} {r['ratio_vs_pandas']:>6.2f} {ray_start:>9} "
            f"{str(r['outputs_identical']):>9}"
        )


def check_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The 20 M targets, when 20 M was run; the raysys/pandas ratio at every size."""
    raysys_rows = {r["size"]: r for r in rows if r["impl"] == "raysys"}
    checks: dict[str, Any] = {f"ratio_at_{size}": r["ratio_vs_pandas"] for size, r in raysys_rows.items()}
    if TARGET_SIZE in raysys_rows:
        target = raysys_rows[TARGET_SIZE]
        checks["peak_below_8_gib_at_20m"] = target["peak_pss_gib"] < TARGET_PEAK_GIB
        checks["ratio_at_least_0.5_at_20m"] = target["ratio_vs_pandas"] >= TARGET_RATIO
    return checks


def environment() -> dict[str, Any]:
    import psutil
    import ray

    return {
        "cpus": os.cpu_count(),
        "memory_gib": psutil.virtual_memory().total / GIB,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "pandas": pd.__version__,
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,5e6,2e7", help="comma-separated interaction counts")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_data"))
    parser.add_argument("--run-one", choices=IMPLS, help=argparse.SUPPRESS)  # child-process mode
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        run_one(args.run_one, args.input, args.work, args.result)
        return
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    rows = [row for size in sizes for row in bench_size(size, args.out)]
    for scratch in ("data", "work"):
        shutil.rmtree(args.out / scratch, ignore_errors=True)
    print_table(rows)
    checks = check_targets(rows)
    print("\n" + json.dumps(checks, indent=2))
    with open(args.out / "bench_data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    # A busy machine slows both implementations unevenly: keep the load beside the figures.
    load = {"load_avg_1m_before": load_before, "load_avg_1m_after": os.getloadavg()[0]}
    payload = {"rows": rows, "targets": checks, "environment": {**environment(), **load}}
    (args.out / "bench_data.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
