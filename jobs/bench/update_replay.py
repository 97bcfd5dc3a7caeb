"""Benchmark `raysys update` against a full retrain on a temporal replay (issue 18).

    python jobs/bench/update_replay.py --out runs/bench_update --seeds 0,1,2          # ml-100k, 3 chunks
    python jobs/bench/update_replay.py --config jobs/configs/tiny.yaml --seeds 0 --out /tmp/replay   # a smoke

Per seed: the base run is `raysys pipeline` on the first `--train-share` (90 %) of the log's time
(`data.time_cutoff`); `raysys serve` serves its student (its own cluster); the rest of the log, in time
order, is replayed through POST /events in `--chunks` chunks, and after each chunk:

- `raysys update` from the last promoted run (update.event_log = the endpoint's log; no swap): NDCG@10 of
  its candidate on its held-out events (the newest 10 % of what it learns from) and its wall time;
- a full retrain: `raysys pipeline` (the same config and seed) on exactly the update's training rows
  (its DIR/source), its student evaluated on the same held-out examples (`holdout_examples.parquet`);
  its time is that of the pipeline's teacher and student stages (pretrain, finetune, student).

Resumable: a step whose summary.json exists is skipped, and the replay continues after what the
endpoint's event log already holds. Writes OUT/update_replay.json and prints the table: per chunk, the
means over seeds, and the targets (update time <= 25 % of a full retrain's, quality >= 98 %). Runs skip
the control student (`pipeline.kd_control=false`). `--merge jobs/bench/results/update_replay_ml100k.json`
adds the seeds an earlier session measured (their rows are kept there) to the table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
TRAINING_STAGES = ("pretrain", "finetune", "student")  # the full retrain's teacher and student stages


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "jobs" / "configs" / "ml100k.yaml"))
    parser.add_argument("--out", default="runs/bench_update_replay")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--train-share", type=float, default=0.9, help="share of the log's time the base trains on")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every run")
    parser.add_argument("--merge", metavar="JSON", help="an earlier update_replay.json: its other seeds join the table")
    args = parser.parse_args(argv)
    if args.chunks < 1 or not 0 < args.train_share < 1:
        parser.error("--chunks must be >= 1 and --train-share within (0, 1)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["RAY_ADDRESS"] = "local"  # every command starts its own cluster
    cutoff, replay = split_log(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    earlier = json.loads(Path(args.merge).read_text())["runs"] if args.merge else []
    runs = [r for r in earlier if r["seed"] not in seeds]  # a later session's seeds join an earlier one's
    result: dict[str, Any] = {"settings": vars(args), "cutoff": cutoff, "replayed": len(replay), "runs": runs}
    for seed in seeds:
        result["runs"] += run_seed(args, out, seed, cutoff, replay)
        (out / "update_replay.json").write_text(json.dumps(result, indent=2))
    result["table"] = table(result["runs"], args.chunks)
    (out / "update_replay.json").write_text(json.dumps(result, indent=2))
    print_table(result["table"])
    return result


def split_log(args: argparse.Namespace) -> tuple[int, list[dict[str, Any]]]:
    """The time cutoff at --train-share of the log's time span and the interactions after it, in time order."""
    from raysys.config import load_config
    from raysys.data.prepare import load_or_prepare
    from raysys.data.updates import dataset_rows

    cfg = load_config(args.config, args.set)
    rows = dataset_rows(load_or_prepare(cfg.data, progress=False))
    times = rows["timestamp"].to_numpy()
    cutoff = int(times.min() + args.train_share * (times.max() - times.min()))
    later = rows.filter(rows["timestamp"].to_numpy() > cutoff).sort_by([("timestamp", "ascending")])
    return cutoff, later.to_pylist()


def run_seed(args, out: Path, seed: int, cutoff: int, replay: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The base run, the endpoint, then per chunk: replay, update, full retrain."""
    seeds = [f"{section}.seed={seed}" for section in ("pretrain", "finetune", "distill")]
    # No control student (student_no_kd): not part of a retrain's teacher and student stages, an hour less
    overrides = ["pipeline.kd_control=false", *args.set, *seeds]
    base = out / f"base-s{seed}"
    command("pipeline", args.config, [*overrides, f"data.time_cutoff={cutoff}"], base)
    serve_dir = out / f"serve-s{seed}"
    server, url = start_server(base / "export" / "student", serve_dir)
    rows, promoted = [], base
    try:
        for chunk, part in enumerate(np.array_split(np.arange(len(replay)), args.chunks), start=1):
            post_events(url, serve_dir / "event_log", replay, int(part[-1]) + 1 if len(part) else 0)
            update_dir = out / f"update{chunk}-s{seed}"
            log = serve_dir / "event_log"
            update = command("update", args.config, [*overrides, f"update.base_run={promoted}",
                                                     f"update.event_log={log}"], update_dir)  # fmt: skip
            full_dir = out / f"full{chunk}-s{seed}"
            data = [f"data.path={update_dir / 'source'}", "data.format=parquet", "data.event_col=event"]
            if (update_dir / "item_texts.parquet").is_file():  # the base's item texts, as the update read them
                data += [f"data.item_path={update_dir / 'item_texts.parquet'}", "data.item_text_fields=[text]"]
            full = command("pipeline", args.config, [*overrides, *data], full_dir)
            rows.append(chunk_row(seed, chunk, update_dir, update, full_dir, full))
            if update["promoted"]:
                promoted = update_dir
    finally:
        stop_server(server)
    return rows


def chunk_row(seed: int, chunk: int, update_dir: Path, update: dict, full_dir: Path, full: dict) -> dict[str, Any]:
    """One chunk's figures: held-out NDCG@10 of the candidate, the serving model and the full retrain."""
    from raysys.config import EvalConfig
    from raysys.data.updates import HoldoutExamples
    from raysys.eval.holdout import evaluate_holdout
    from raysys.models.export import load_model_dir

    examples = HoldoutExamples.read(update_dir / "holdout_examples.parquet")
    full_metrics = evaluate_holdout(load_model_dir(full_dir / "student" / "model"), examples, EvalConfig(ks=[10]))
    full_seconds = sum(full["stages"][s]["seconds"] for s in TRAINING_STAGES if s in full["stages"])
    return {
        "seed": seed,
        "chunk": chunk,
        "events": update["events"],
        "promoted": update["promoted"],
        "update_ndcg@10": update["models"]["candidate"]["metrics"]["ndcg@10"],
        "serving_ndcg@10": update["models"]["serving"]["metrics"]["ndcg@10"],
        "full_ndcg@10": full_metrics["ndcg@10"],
        "update_seconds": update["seconds"]["total"],
        "full_seconds": round(full_seconds, 2),
    }


def table(runs: list[dict[str, Any]], chunks: int) -> list[dict[str, Any]]:
    """Per chunk, then over all chunks ("all"): the means over the runs and the two ratios of means the
    issue sets targets on (quality: update / full retrain NDCG@10; time: update / full retrain seconds)."""
    groups = [(chunk, [r for r in runs if r["chunk"] == chunk]) for chunk in range(1, chunks + 1)]
    out = [_means(chunk, rows) for chunk, rows in groups if rows]
    if len(out) > 1:
        out.append(_means("all", runs))
    return out


def _means(chunk: int | str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("update_ndcg@10", "serving_ndcg@10", "full_ndcg@10", "update_seconds", "full_seconds")
    mean = {k: statistics.mean(r[k] for r in rows) for k in keys}
    return {
        "chunk": chunk,
        "seeds": len({r["seed"] for r in rows}),
        **{k: round(v, 4) for k, v in mean.items()},
        "quality_share": _share(mean["update_ndcg@10"], mean["full_ndcg@10"]),
        "time_share": _share(mean["update_seconds"], mean["full_seconds"]),
    }


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 3) if whole else None


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ["chunk", "seeds", "update NDCG@10", "serving", "full retrain", "quality (>= 0.98)", "update s"]
    print("| " + " | ".join([*header, "full s", "time (<= 0.25)"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['chunk']} | {r['seeds']} | {r['update_ndcg@10']:.4f} | {r['serving_ndcg@10']:.4f} | "
            f"{r['full_ndcg@10']:.4f} | {r['quality_share']} | {r['update_seconds']:.0f} | {r['full_seconds']:.0f} | "
            f"{r['time_share']} |"
        )


# ------------------------------------------------------------------------------------ commands


def command(stage: str, config: str, overrides: list[str], out_dir: Path) -> dict[str, Any]:
    """`raysys <stage>` into out_dir (skipped when its summary.json exists); its summary."""
    summary = out_dir / "summary.json"
    if not summary.is_file():
        argv = [sys.executable, "-m", "raysys.cli", stage, "--config", config, *overrides, "--out", str(out_dir)]
        with open(out_dir.with_name(out_dir.name + ".log"), "w") as log:
            done = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"raysys {stage} failed (exit {done.returncode}): see {log.name}")
    return json.loads(summary.read_text())


def start_server(model_dir: Path, serve_dir: Path) -> tuple[subprocess.Popen, str]:
    """`raysys serve` of the base student in the background (its own cluster, log in serve_dir/event_log)."""
    from raysys.files import free_port

    port = free_port()
    argv = [sys.executable, "-m", "raysys.cli", "serve", "--model", str(model_dir), "--port", str(port)]
    log = open(serve_dir.with_name(serve_dir.name + ".log"), "a")  # noqa: SIM115 - closed with the process
    server = subprocess.Popen(
        [*argv, "--out", str(serve_dir)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(1)
    stop_server(server)
    raise SystemExit(f"raysys serve did not come up: see {log.name}")


def stop_server(server: subprocess.Popen) -> None:
    """Ctrl-C (a clean stop seals the event log), SIGKILL if it hangs."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def post_events(url: str, log: Path, replay: list[dict[str, Any]], upto: int) -> None:
    """POST /events for replay[:upto], after what the endpoint's log already holds (resumable)."""
    from raysys.data.event_log import read_log

    done = read_log(log).num_rows if log.is_dir() else 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for row in replay[done:upto]:
            body = {"user_id": row["user_id"], "item_ids": [row["item_id"]], "timestamp": row["timestamp"]}
            for _ in range(20):
                answer = client.post("/events", json=body)
                if answer.status_code == 200:
                    break
                time.sleep(1.0)  # 503 while the endpoint is busy: as a client, retry
            else:
                raise SystemExit(f"POST /events kept failing: {answer.status_code} {answer.text[:200]}")


if __name__ == "__main__":
    main()
