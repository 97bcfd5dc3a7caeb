"""The two engines the one training loop drives: plain torch (one process) and DeepSpeed (Ray workers).

    engine = PlainEngine(modules, cfg, total_steps)        # the in-process loop, a direct Tune trial
    engine = DeepSpeedEngine(modules, cfg, total_steps, eval_model)   # a Ray Train worker (ZeRO 0-3, gloo / NCCL)
    engine.backward(loss, scale, boundary)   # scale = 1 / micro-batches in this accumulation group
    engine.step() -> {"lr", "grad_norm"}     # on the group's boundary: clip, AdamW, lr schedule, zero grads

Both take the same torch AdamW (`make_optimizer`) and lr schedule, so an optimizer step is the same
arithmetic in both. The loop owns gradient accumulation: it says which micro-batch closes a group
(`boundary`), and DeepSpeed is told so before that micro-batch's backward (its all-reduce or ZeRO
reduction runs there) instead of counting micro-batches itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raysys.config import TrainingConfig
from raysys.objectives.distillation import HiddenAlignment
from raysys.train.deepspeed_config import deepspeed_config
from raysys.train.schedule import lr_scheduler

DEEPSPEED_DIR = "deepspeed"  # DeepSpeed's own checkpoint folder inside a raysys checkpoint
DEEPSPEED_TAG = "ds"
PLAIN_STATE_FILE = "training_state.pt"  # PlainEngine: modules, AdamW, lr schedule, steps


class TrainedModules(nn.Module):
    """What the optimizer trains: the model, plus the student->teacher hidden projection when on."""

    def __init__(self, model: nn.Module, alignment: HiddenAlignment | None = None) -> None:
        super().__init__()
        self.model = model
        self.alignment = alignment


def make_optimizer(modules: Sequence[nn.Module], cfg: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `modules`; weight decay on matrices only.

    Biases and LayerNorm gains are 1-d: decaying them only pulls the network off its normalisation
    (the nanoGPT / BERT convention). Embedding tables are matrices and are decayed.
    """
    params = {id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def grad_norm(module: nn.Module) -> float:
    """Global 2-norm of the gradients held by `module`'s parameters."""
    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


class PlainEngine:
    """One process, torch AdamW: what the in-process loop and a direct Tune trial train with."""

    def __init__(self, modules: TrainedModules, cfg: TrainingConfig, total_steps: int) -> None:
        self.modules = modules
        self.optimizer = make_optimizer([modules], cfg)
        self.scheduler = lr_scheduler(self.optimizer, cfg, total_steps)
        self.grad_clip = cfg.grad_clip
        self.steps = 0
        self.device = next(modules.parameters()).device

    def backward(self, loss: torch.Tensor, scale: float, boundary: bool) -> None:
        (loss * scale).backward()

    def step(self) -> dict[str, float]:
        """Clip the global gradient norm, step AdamW and the lr schedule, clear the gradients."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return {"lr": lr, "grad_norm": float(norm)}

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def eval_model(self) -> nn.Module:
        """The trained model itself (the caller switches modes)."""
        return self.modules.model

    def weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the model's weights."""
        return {name: value.detach().to("cpu", copy=True) for name, value in self.modules.model.state_dict().items()}

    def save(self, folder: Path) -> None:
        state = {
            "modules": self.modules.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "steps": self.steps,
        }
        torch.save(state, folder / PLAIN_STATE_FILE)

    def load(self, folder: Path) -> None:
        state = torch.load(folder / PLAIN_STATE_FILE, map_location=self.device, weights_only=True)
        self.modules.load_state_dict(state["modules"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state["steps"]

    def apply_settings(self, cfg: TrainingConfig) -> None:
        """Put `cfg`'s lr (through the schedule's base lr) and weight decay on a restored optimizer,
        keeping its moments and step count (a PBT trial restored from a donor's checkpoint).

        make_optimizer's first group holds the decayed matrices, the second the undecayed vectors.
        """
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler.base_lrs = [cfg.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["lr"] = cfg.lr, cfg.lr * factor
        self.optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay


class DeepSpeedEngine:
    """DeepSpeed around the same AdamW and schedule: ZeRO 0-3, gloo on CPU, NCCL + bf16 on GPU."""

    def __init__(
        self, modules: TrainedModules, cfg: TrainingConfig, total_steps: int, eval_model: nn.Module | None = None
    ) -> None:
        """eval_model: a second instance of the model (same class and shape) that validation runs on."""
        self.deepspeed = import_deepspeed(cfg.use_gpu)
        optimizer = make_optimizer([modules], cfg)
        self.engine, *_ = self.deepspeed.initialize(
            model=modules,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler(optimizer, cfg, total_steps),
            config=deepspeed_config(cfg, use_gpu=cfg.use_gpu),
            dist_init_required=False,
        )
        self.modules: TrainedModules = self.engine.module
        self.device = self.engine.device
        self._eval_model = eval_model
        self._norm: float | None = None

    @property
    def steps(self) -> int:
        return self.engine.global_steps

    def backward(self, loss: torch.Tensor, scale: float, boundary: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss * scale, scale_wrt_gas=False)
        if not boundary:
            self.engine.step()  # DeepSpeed counts every micro-batch; off the boundary it updates nothing
        elif self.engine.zero_optimization_stage() == 0:
            # Without ZeRO the gradients were all-reduced in this boundary backward, so the local norm
            # is the global one; DeepSpeed clips without keeping it. ZeRO computes it over the shards.
            self._norm = grad_norm(self.modules)

    def step(self) -> dict[str, float]:
        """The boundary micro-batch's step: DeepSpeed clips, steps AdamW and the schedule, zeroes."""
        lr = self.lr()
        self.engine.step()
        norm = self._norm if self._norm is not None else self.engine.get_global_grad_norm()
        self._norm = None
        return {"lr": lr, "grad_norm": float(norm) if norm is not None else 0.0}

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def eval_model(self) -> nn.Module:
        """A plain copy of the model holding the consolidated weights (ZeRO-3 shards gathered)."""
        if self._eval_model is None:
            raise ValueError("this engine was built without an eval_model")
        self._eval_model.load_state_dict(self.weights())
        return self._eval_model

    def weights(self) -> dict[str, torch.Tensor]:
        """A full CPU copy of the model's weights on every rank (ZeRO-3 shards gathered first)."""
        model = self.modules.model
        with self.deepspeed.zero.GatheredParameters(list(model.parameters())):
            return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder / DEEPSPEED_DIR), tag=DEEPSPEED_TAG)

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder / DEEPSPEED_DIR), tag=DEEPSPEED_TAG)


def import_deepspeed(use_gpu: bool) -> Any:
    """DeepSpeed, imported inside the worker: its accelerator is chosen at import (CPU unless the
    workers have GPUs), and the C++ op it builds on first use goes to a shared cache instead of each
    worker's home."""
    _deepspeed_environment(use_gpu)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo", auto_mpi_discovery=False)
    return deepspeed


def prebuild_cpu_ops() -> Path:
    """Build DeepSpeed's CPU shared-memory comm op into the cache the workers use (what `make install`
    runs, so a first training run does not spend 30-90 s compiling it); returns the cache folder."""
    _deepspeed_environment(use_gpu=False)
    from deepspeed.accelerator import get_accelerator

    get_accelerator().create_op_builder("ShareMemCommBuilder").load(verbose=False)
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def _deepspeed_environment(use_gpu: bool) -> None:
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    repo = Path(__file__).resolve().parents[2]
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(repo / ".cache" / "torch_extensions"))


if __name__ == "__main__":
    print(f"DeepSpeed CPU ops built into {prebuild_cpu_ops()}")
