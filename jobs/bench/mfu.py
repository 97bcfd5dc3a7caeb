"""Teacher pretraining throughput and model FLOPs utilisation (MFU) on one GPU, bf16, DeepSpeed alone.

    python jobs/bench/mfu.py --out runs/bench_mfu                         # on the GPU machine
    python jobs/bench/mfu.py --device cpu --tiny --steps 3 --out /tmp/mfu # smoke run of the same path

The step is `raysys.train.loop.micro_step` + `engine.step()`, what the one training loop runs on every
Ray Train worker, on a one-process `DeepSpeedEngine` (the worker's engine: our AdamW and lr schedule,
`deepspeed_config`) and the pretraining task's loss. Only Ray is left out: the GPU machine has no
Ray. The teacher is the
HF Llama the product builds (`build_teacher`), by default with >= 100 M non-embedding parameters,
trained on next-item prediction with the full softmax over the catalog, on full-length windows of
random items (no padding, so every position is a trained token).

FLOPs per step (the PaLM convention; backward = 2x forward):
    6 * N * T                 N non-embedding parameters, T = batch * max_len tokens
  + 12 * layers * L * H * T   attention scores and values (QK^T, AV), full square
  + 6 * H * V * T             the catalog softmax: [T, H] x [H, V] scores, forward and backward
MFU = achieved FLOP/s / peak, against the spec dense bf16 peak (`--peak-tflops`, H100 SXM 989.4) and
against the rate of a large bf16 matmul measured on the same device in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysys.config import Config, DataConfig, PretrainConfig, TeacherConfig
from raysys.data.batches import next_item_batch
from raysys.data.dataset import FIRST_ITEM_INDEX
from raysys.models.common import count_non_embedding_params
from raysys.train.engines import DeepSpeedEngine, TrainedModules
from raysys.train.loop import micro_step
from raysys.train.tasks import PretrainTask
from raysys.train.tasks.base import seed_everything

H100_SXM_BF16_TFLOPS = 989.4  # dense, without sparsity (NVIDIA H100 SXM datasheet)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--items", type=int, default=50_000, help="catalog size V")
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32, help="micro-batch (sequences)")
    parser.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, kernels)")
    parser.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_TFLOPS)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--tiny", action="store_true", help="a small model for a CPU smoke run")
    parser.add_argument("--out", default="runs/bench_mfu")
    return parser.parse_args()


def step_flops(
    non_embedding: int, layers: int, hidden: int, num_items: int, batch: int, max_len: int
) -> dict[str, float]:
    """Model FLOPs of one training step (forward + backward), by term."""
    tokens = batch * max_len
    terms = {
        "dense": 6.0 * non_embedding * tokens,
        "attention": 12.0 * layers * max_len * hidden * tokens,
        "catalog_softmax": 6.0 * hidden * num_items * tokens,
    }
    return {**terms, "total": sum(terms.values())}


def matmul_tflops(device: str, size: int, repeats: int = 20) -> float:
    """Measured rate of a [size, size] x [size, size] matmul (bf16 on GPU, fp32 on CPU), TFLOP/s."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2.0 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def random_windows(rng: np.random.Generator, batch: int, max_len: int, num_items: int) -> dict[str, np.ndarray]:
    """Full-length windows of random real items [batch, max_len + 1] -> a next-item batch."""
    return next_item_batch(rng.integers(FIRST_ITEM_INDEX, num_items, size=(batch, max_len + 1)))


def build_engine(args: argparse.Namespace, task: PretrainTask) -> DeepSpeedEngine:
    """The teacher inside the DeepSpeed engine a Ray worker builds, in a one-process world (nccl on
    GPU, gloo on CPU) set up with the variables Ray Train's backend sets for each worker."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("LOCAL_RANK", "0")
    if args.device == "cuda":
        torch.cuda.set_device(0)
    modules = TrainedModules(task.build_model(args.items, None)).to(args.device)
    return DeepSpeedEngine(modules, task.train_cfg, total_steps=args.warmup + args.steps)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "error: no CUDA device here; run on the GPU machine, or pass --device cpu --tiny for a smoke run"
        )
    if args.tiny:
        args.hidden, args.layers, args.heads, args.items, args.max_len, args.batch = 64, 2, 2, 1000, 50, 8
        args.matmul_size = 512
    seed_everything(0)
    teacher_cfg = TeacherConfig(
        arch="llama", hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads, dropout=0.0
    )
    train_cfg = PretrainConfig(
        task="next_item",
        loss="full",  # the full-catalog step whose FLOPs step_flops counts
        batch_size=args.batch,
        lr=1e-4,
        warmup_steps=0,
        grad_clip=1.0,
        zero_stage=args.zero,
        use_gpu=args.device == "cuda",
    )
    cfg = Config(data=DataConfig(max_len=args.max_len), teacher=teacher_cfg, pretrain=train_cfg)
    task = PretrainTask(cfg, "pretrain")
    engine = build_engine(args, task)
    generator = torch.Generator().manual_seed(0)
    non_embedding = count_non_embedding_params(engine.modules.model)
    flops = step_flops(non_embedding, args.layers, args.hidden, args.items, args.batch, args.max_len)
    rng = np.random.default_rng(0)
    engine.modules.train()
    losses = []
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            _sync(args.device)
            start = time.perf_counter()
        batch = random_windows(rng, args.batch, args.max_len, args.items)
        losses.append(micro_step(engine, task, batch, generator, 1.0, boundary=True)["loss"])
        engine.step()
    _sync(args.device)
    seconds = time.perf_counter() - start
    achieved = flops["total"] * args.steps / seconds / 1e12
    measured_peak = matmul_tflops(args.device, args.matmul_size)
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "model": {
            "arch": "llama",
            "hidden": args.hidden,
            "layers": args.layers,
            "heads": args.heads,
            "non_embedding_params": non_embedding,
            "catalog": args.items,
            "max_len": args.max_len,
        },
        "batch": args.batch,
        "zero_stage": args.zero,
        "precision": "bf16" if args.device == "cuda" else "fp32",
        "step_ms": round(1000 * seconds / args.steps, 2),
        "tokens_per_s": round(args.batch * args.max_len * args.steps / seconds, 1),
        "tflops_per_step": {k: round(v / 1e12, 6) for k, v in flops.items()},
        "achieved_tflops": round(achieved, 4),
        "matmul_tflops": round(measured_peak, 2),
        "mfu_vs_spec": round(achieved / args.peak_tflops, 4) if args.device == "cuda" else None,
        "mfu_vs_matmul": round(achieved / measured_peak, 4),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }
    if args.device == "cuda":
        figures["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_mfu.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
