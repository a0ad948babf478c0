"""The training engine: one function, `fit`, that the standalone CLI (`python -m cct.train`)
and the sweep's Ray workers both call. Config in, metrics out through callbacks, no globals.

The step loop has no host syncs: data and augmentation live on the device, the loss is
accumulated on the device, and the one `.item()` per epoch (the log interval) is where the
loss is read and checked for NaN.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cct import dist
from cct.checkpoint import load_train_state, read_description, save_checkpoint, unwrap
from cct.config import ConfigError, TrainConfig
from cct.data import (
    DeviceAugment,
    DeviceData,
    epoch_indices,
    eval_batches,
    load_dataset,
    normalize,
)
from cct.device import allow_tf32, autocast, use_bf16
from cct.measure import count_macs, count_params, device_name, measure_speed
from cct.models import CCT, create_model
from cct.optim import lr_at, make_optimizer


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run is stopped and reported failed."""


class Callbacks(Protocol):
    """What a caller hears from `fit`. Every rank gets every call (Ray Train needs every
    worker to report); only rank 0 gets a checkpoint folder and artifacts."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_epoch_end(self, metrics: dict[str, Any], checkpoint: Path | None) -> None: ...

    def on_end(self, result: dict[str, Any], artifacts: Path | None) -> None: ...


class NoCallbacks:
    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        pass

    def on_end(self, result: dict[str, Any], artifacts: Path | None) -> None:
        pass


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    best_val: float = -1.0
    best_epoch: int = 0
    step: int = 0
    stale: int = 0  # epochs since the best validation accuracy (early stopping)
    last_val: float = 0.0  # latest validation accuracy, reported between evaluations


def build_model(cfg: TrainConfig, data: DeviceData) -> CCT:
    return create_model(
        cfg.model.variant,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        img_size=data.img_size,
        **cfg.model.overrides(),
    )


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def fit(
    cfg: TrainConfig,
    *,
    callbacks: Callbacks | None = None,
    resume_from: Path | None = None,
    data: DeviceData | None = None,
    latency_shared: bool = False,
) -> dict[str, Any]:
    """Train `cfg` to the end (or early stop) and return the final result on every rank.

    `resume_from` is a checkpoint folder written by an earlier call; training continues
    with the epoch after the one it holds.
    """
    callbacks = callbacks or NoCallbacks()
    rank, device = dist.setup(cfg.device)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    bf16 = use_bf16(cfg.precision, device)
    allow_tf32(device)

    data = data or load_dataset(cfg.data, device)
    per_rank_batch = cfg.optim.batch_size // rank.world_size
    if per_rank_batch * rank.world_size != cfg.optim.batch_size:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} is not divisible by the world size {rank.world_size}"
        )
    steps_per_epoch = len(data.train_y) // cfg.optim.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} exceeds the {len(data.train_y)} training images"
        )
    model = build_model(cfg, data).to(device)
    input_shape = (data.in_channels, data.img_size, data.img_size)

    # Size and speed before the first epoch, so every report can carry every objective.
    macs = count_macs(model, input_shape)
    speed = measure_speed(model, input_shape, runs=cfg.latency_runs, bf16=bf16, batch_size=64)
    info = {
        "params": count_params(model),
        "macs": macs.without_attn_matmuls,
        "macs_with_attn": macs.total,
        "latency_ms": speed.latency_ms,
        "throughput": speed.throughput,
        "device": device_name(device),
        "precision": "bf16" if bf16 else "fp32",
        "latency_shared": latency_shared,
        "world_size": rank.world_size,
        "split_hash": data.split_hash,
        "settings": dataclasses.asdict(model.settings),
        "n_train": len(data.train_y),
        "n_val": len(data.val_y),
        "n_test": len(data.test_y),
    }
    callbacks.on_start(info)
    objectives = {k: info[k] for k in ("params", "macs", "latency_ms")}

    optimizer = make_optimizer(model, cfg.optim, device)
    state = _State()
    if resume_from is not None:
        state = _restore(Path(resume_from), model, optimizer, device)

    train_model: nn.Module = model
    if rank.world_size > 1:
        if device.type == "cuda":
            train_model = nn.SyncBatchNorm.convert_sync_batchnorm(train_model)
        train_model = DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        train_model = torch.compile(train_model)

    augment = DeviceAugment(data.augment, data.num_classes, data.mean, data.std)
    gen = torch.Generator(device=device)
    result: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    if (
        cfg.final_weights == "best"
        and resume_from is not None
        and (Path(resume_from) / "best.pt").exists()
    ):
        best_state = torch.load(
            Path(resume_from) / "best.pt", map_location=device, weights_only=True
        )

    for epoch in range(state.epoch + 1, cfg.optim.epochs + 1):
        # Seeded per (seed, epoch, rank): a resumed run draws what an unbroken one would,
        # augmentation from `gen`, dropout and drop-path from torch's global generator.
        epoch_seed = cfg.seed * 1_000_003 + epoch * 1009 + rank.rank
        gen.manual_seed(epoch_seed)
        torch.manual_seed(epoch_seed)
        idx = epoch_indices(
            len(data.train_y),
            epoch=epoch,
            seed=cfg.seed,
            rank=rank.rank,
            world_size=rank.world_size,
            batch_size=per_rank_batch,
            device=device,
        )
        train_model.train()
        loss_sum = torch.zeros((), device=device)
        t0 = time.perf_counter()
        for batch in idx:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(state.step, steps_per_epoch=steps_per_epoch, cfg=cfg.optim)
            x, targets = augment(data.train_x[batch], data.train_y[batch], gen)
            with autocast(device, bf16):
                logits = train_model(x)
            loss = soft_cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            loss_sum += loss.detach() * len(batch)
            state.step += 1

        # The log interval: the one host sync of the epoch.
        totals = dist.all_reduce_sum(
            torch.stack([loss_sum, torch.tensor(float(idx.numel()), device=device)])
        )
        train_loss = (totals[0] / totals[1]).item()
        seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"training loss became {train_loss} at epoch {epoch} (lr {cfg.optim.lr})"
            )
        state.epoch = epoch

        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "samples_per_s": totals[1].item() / seconds,
            "epoch_seconds": seconds,
            "lr": optimizer.param_groups[0]["lr"],
            **objectives,
        }
        if epoch % cfg.eval_every == 0 or epoch == cfg.optim.epochs:
            val_acc = evaluate(model, data.val_x, data.val_y, data, rank, bf16)
            if val_acc > state.best_val:
                state.best_val, state.best_epoch, state.stale = val_acc, epoch, 0
                if cfg.final_weights == "best":
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state.stale += cfg.eval_every
            state.last_val = val_acc
        # Every report carries every metric (schedulers and searchers need them each time).
        metrics["val_accuracy"] = state.last_val
        metrics["best_val_accuracy"] = state.best_val
        stop_early = (
            cfg.max_epochs_without_gain is not None and state.stale >= cfg.max_epochs_without_gain
        )
        # Not "done": Ray Tune reads a reported `done` as "stop this trial now", which
        # would kill the trial before its Train run has shut down.
        metrics["final"] = epoch == cfg.optim.epochs or stop_early
        if metrics["final"]:
            # Final evaluation before the last report, so that report carries test accuracy.
            result = _finish(cfg, model, data, rank, bf16, state, objectives, callbacks, best_state)
            metrics.update(
                val_accuracy=result["val_accuracy"], test_accuracy=result["test_accuracy"]
            )

        checkpoint_dir = None
        if rank.is_main:
            checkpoint_dir = Path(tempfile.mkdtemp(prefix="cct-ckpt-")) / "checkpoint"
            save_checkpoint(
                checkpoint_dir,
                model=model,
                cfg=cfg,
                epoch=epoch,
                metrics=metrics,
                train_state={
                    "optimizer": optimizer.state_dict(),
                    **dataclasses.asdict(state),
                },
            )
            if best_state is not None:
                torch.save(best_state, checkpoint_dir / "best.pt")
        callbacks.on_epoch_end(metrics, checkpoint_dir)
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir.parent, ignore_errors=True)
        if stop_early:
            break

    if result is None:
        # Resumed from the last epoch's checkpoint: the run may have died after saving it
        # but before its report reached anyone (a sweep driver killed at that moment).
        # Finish, and report that last epoch again, final figures included; trackers skip
        # what they already logged.
        result = _finish(cfg, model, data, rank, bf16, state, objectives, callbacks, best_state)
        last = read_description(Path(resume_from))["metrics"] if resume_from else {}
        callbacks.on_epoch_end(
            {
                **last,
                **objectives,
                "epoch": state.epoch,
                "final": True,
                "val_accuracy": result["val_accuracy"],
                "test_accuracy": result["test_accuracy"],
            },
            None,
        )
    return result


def _restore(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> _State:
    desc = read_description(path)
    model.load_state_dict(torch.load(path / "model.pt", map_location=device, weights_only=True))
    train_state = load_train_state(path, device)
    if train_state is None:
        raise FileNotFoundError(f"{path} holds weights but no train_state.pt: it cannot be resumed")
    optimizer.load_state_dict(train_state["optimizer"])
    return _State(
        epoch=int(desc["epoch"]),
        best_val=float(train_state["best_val"]),
        best_epoch=int(train_state["best_epoch"]),
        step=int(train_state["step"]),
        stale=int(train_state.get("stale", 0)),  # absent in checkpoints written before
        last_val=float(train_state.get("last_val", 0.0)),
    )


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    data: DeviceData,
    bf16: bool,
    batch_size: int = 512,
) -> torch.Tensor:
    """Logits (float32) for uint8 images `x`, in their order."""
    model.eval()
    out = []
    for xb, _ in eval_batches(
        x, torch.zeros(len(x), dtype=torch.long, device=x.device), batch_size
    ):
        with autocast(x.device, bf16):
            out.append(model(normalize(xb, data.mean, data.std)).float())
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    data: DeviceData,
    rank: dist.Rank,
    bf16: bool,
) -> float:
    """Accuracy over the whole set: each rank scores a shard, the counts are summed."""
    shard = slice(rank.rank, None, rank.world_size)
    logits = predict(unwrap(model), x[shard], data, bf16)
    counts = torch.stack(
        [
            (logits.argmax(-1) == y[shard]).sum().float(),
            torch.tensor(float(len(y[shard])), device=x.device),
        ]
    )
    counts = dist.all_reduce_sum(counts)
    return (counts[0] / counts[1]).item()


def _finish(
    cfg, model, data, rank, bf16, state, objectives, callbacks, best_state
) -> dict[str, Any]:
    if best_state is not None:
        model.load_state_dict(best_state)
    val_acc = evaluate(model, data.val_x, data.val_y, data, rank, bf16)
    test_acc = evaluate(model, data.test_x, data.test_y, data, rank, bf16)
    result = {
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "best_val_accuracy": state.best_val,
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "weights": cfg.final_weights,
        **objectives,
    }
    artifacts = None
    if rank.is_main:
        artifacts = Path(tempfile.mkdtemp(prefix="cct-final-"))
        bare = unwrap(model)
        np.savez(
            artifacts / "logits.npz",
            val_logits=predict(bare, data.val_x, data, bf16).cpu().numpy(),
            val_ids=data.val_ids.cpu().numpy(),
            val_labels=data.val_y.cpu().numpy(),
            test_logits=predict(bare, data.test_x, data, bf16).cpu().numpy(),
            test_ids=data.test_ids.cpu().numpy(),
            test_labels=data.test_y.cpu().numpy(),
            split_hash=np.array(data.split_hash),
        )
        save_checkpoint(
            artifacts / "checkpoint",
            model=model,
            cfg=cfg,
            epoch=state.epoch,
            metrics=result,
        )
    callbacks.on_end(result, artifacts)
    if artifacts is not None:
        shutil.rmtree(artifacts, ignore_errors=True)
    return result
