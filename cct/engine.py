"""The training engine: `fit`, which the standalone CLI (`python -m cct.train`) and the sweep's
Ray workers both call, and `Trainer.train_step`, the one training step that `fit` runs on every
batch and that every benchmark of this pipeline times. Config in, metrics out through
callbacks, no globals.

fit = setup_run -> train_epochs (per epoch: train_epoch, validate, save_epoch when due;
at the last: finish, then its report) -> on_end.

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
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from cct import dist
from cct.checkpoint import load_train_state, read_description, save_checkpoint, unwrap
from cct.config import CheckpointEvery, ConfigError, OptimConfig, TrainConfig
from cct.data import (
    DeviceAugment,
    DeviceData,
    epoch_indices,
    eval_batches,
    load_dataset,
    normalize,
)
from cct.device import allow_tf32, autocast, keep_freed_memory, use_bf16
from cct.measure import count_macs, count_params, device_name, measure_speed
from cct.models import CCT, create_model
from cct.models.authors import init_weights
from cct.optim import lr_at, make_optimizer


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run is stopped and reported failed."""


class OutOfMemoryAtStart(RuntimeError):
    """The device ran out of memory before this attempt's first optimizer step: the model,
    its batch or the latency measurement does not fit (or, on a shared device, a
    neighbour holds the memory)."""


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


def build_model(cfg: TrainConfig, data: DeviceData) -> CCT:
    return create_model(
        cfg.model.variant,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        img_size=data.img_size,
        **cfg.model.overrides(),
    )


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy against soft targets (B, K); float32 even under bf16 autocast."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


# --------------------------------------------------------------------------------------
# the training step


@dataclass(kw_only=True)
class Trainer:
    """One training step and everything it touches. Built by `make_trainer`, both for `fit`
    and for the benchmarks, so a benchmark pays for what training pays for."""

    model: nn.Module  # the bare model: its gradients are clipped, its weights saved
    module: nn.Module  # what the step calls: `model`, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    augment: DeviceAugment
    gen: torch.Generator  # augmentation draws (fit reseeds it every epoch)
    optim: OptimConfig  # the learning-rate schedule and gradient clipping
    steps_per_epoch: int  # the schedule's epoch, in steps
    bf16: bool  # forward under bf16 autocast
    step: int = 0  # optimizer steps taken: where the schedule is

    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One optimizer step on uint8 images x (B, C, H, W) and int64 labels y (B,).

        Returns the batch's mean loss, detached and still on the device: reading it is the
        caller's choice, so a loop of steps never waits for the device.
        """
        lr = lr_at(self.step, steps_per_epoch=self.steps_per_epoch, cfg=self.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, targets = self.augment(x, y, self.gen)  # float32 (B, C, H, W), soft targets (B, K)
        with autocast(x.device, self.bf16):
            logits = self.module(x)  # (B, K)
        loss = soft_cross_entropy(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.optim.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        self.optimizer.step()
        self.step += 1
        return loss.detach()


def make_trainer(
    model: nn.Module,
    *,
    optim: OptimConfig,
    augment: DeviceAugment,
    steps_per_epoch: int,
    bf16: bool,
    compile: bool = False,
    world_size: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
) -> Trainer:
    """The training step for `model` (already on its device), in training mode.

    A benchmark passes neither `optimizer` nor `step` and gets the recipe's AdamW at the
    schedule's first step; `fit` passes the optimizer and step it resumed.
    """
    device = next(model.parameters()).device
    if optimizer is None:
        optimizer = make_optimizer(model, optim, device)
    module: nn.Module = model
    if world_size > 1:
        if device.type == "cuda":
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        module = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compile:
        module = torch.compile(module)
    module.train()
    return Trainer(
        model=model,
        module=module,
        optimizer=optimizer,
        augment=augment,
        gen=torch.Generator(device=device).manual_seed(0),
        optim=optim,
        steps_per_epoch=steps_per_epoch,
        bf16=bf16,
        step=step,
    )


# --------------------------------------------------------------------------------------
# the run


@dataclass
class Progress:
    """The run's counters; a checkpoint's train_state.pt holds them (and the step count)."""

    epoch: int = 0  # epochs completed
    best_val: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # epochs since the best validation accuracy (early stopping)
    last_val: float = 0.0  # latest validation accuracy, reported between evaluations


@dataclass(kw_only=True)
class Run:
    """Everything `fit` carries from one epoch to the next, on one rank."""

    cfg: TrainConfig
    rank: dist.Rank
    device: torch.device
    data: DeviceData
    trainer: Trainer  # model, wrapper, optimizer, schedule, augmentation
    per_rank_batch: int
    objectives: dict[str, Any]  # params, MACs, latency: every report carries them
    progress: Progress
    best_state: dict[str, Tensor] | None = None  # weights of the best epoch (final_weights=best)

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    @property
    def bf16(self) -> bool:
        return self.trainer.bf16


def fit(
    cfg: TrainConfig,
    *,
    callbacks: Callbacks | None = None,
    resume_from: Path | None = None,
    data: DeviceData | None = None,
    latency_shared: bool = False,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train `cfg` to the end (or early stop) and return the final result on every rank.

    `resume_from` is a checkpoint folder written by an earlier call; training continues
    with the epoch after the one it holds. The last epoch is evaluated, checkpointed and
    reported before `on_end` (where a sweep runs its analysis): a crash in `on_end`
    resumes from that checkpoint without training again. `device` is one a scheduler
    assigned (Ray Train's workers); None picks it from `cfg.device`.
    """
    callbacks = callbacks or NoCallbacks()
    rank, device = dist.setup(cfg.device if device is None else device)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    allow_tf32(device)
    keep_freed_memory(device)
    data = data or load_dataset(cfg.data, device)
    run: Run | None = None
    try:
        run = setup_run(
            cfg,
            data=data,
            rank=rank,
            device=device,
            callbacks=callbacks,
            resume_from=resume_from,
            latency_shared=latency_shared,
        )
        first_step = run.trainer.step
        last = read_description(Path(resume_from))["metrics"] if resume_from else {}
        if last.get("final") or run.progress.epoch >= cfg.optim.epochs:
            # Resumed from the last epoch's checkpoint: the run died after saving it, in
            # its report or in `on_end`. Nothing is trained; the last report comes again.
            result, artifacts = finish(run)
            report_last_epoch_again(run, result, last, callbacks)
        else:
            result, artifacts = train_epochs(run, callbacks)
    except torch.OutOfMemoryError as e:
        if run is None or run.trainer.step == first_step:
            raise OutOfMemoryAtStart(f"out of memory before the first step on {device}: {e}") from e
        raise
    callbacks.on_end(result, artifacts)
    if artifacts is not None:
        shutil.rmtree(artifacts, ignore_errors=True)
    return result


def train_epochs(run: Run, callbacks: Callbacks) -> tuple[dict[str, Any], Path | None]:
    """The epochs from the one after `run.progress.epoch` to the last (or an early stop):
    every epoch reported, a checkpoint when `checkpoint_every` is due and at the last one.
    Returns what `finish` returned at the last epoch."""
    cfg = run.cfg
    due = CheckpointDue(cfg.checkpoint_every, epoch=run.progress.epoch)
    for epoch in range(run.progress.epoch + 1, cfg.optim.epochs + 1):
        metrics = train_epoch(run, epoch)
        stop_early = validate(run, epoch)
        # Every report carries every metric (schedulers and searchers need them each time).
        metrics["val_accuracy"] = run.progress.last_val
        metrics["best_val_accuracy"] = run.progress.best_val
        # Not "done": Ray Tune reads a reported `done` as "stop this trial now", which
        # would kill the trial before its Train run has shut down.
        metrics["final"] = epoch == cfg.optim.epochs or stop_early
        if metrics["final"]:
            # Final evaluation before the last report, so that report carries test accuracy.
            result, artifacts = finish(run)
            metrics.update(
                val_accuracy=result["val_accuracy"], test_accuracy=result["test_accuracy"]
            )
        save = metrics["final"] or due(epoch)
        checkpoint = save_epoch(run, metrics) if save else None  # rank 0 only
        callbacks.on_epoch_end(metrics, checkpoint)
        if checkpoint is not None:
            shutil.rmtree(checkpoint.parent, ignore_errors=True)
        if metrics["final"]:
            return result, artifacts
    raise AssertionError("unreachable: the last epoch is final")


class CheckpointDue:
    """`checkpoint_every`: due after `epochs` epochs or `minutes` minutes since the last
    save (or the start of this attempt), whichever comes first. Rank 0 alone saves, so
    the ranks' clocks need not agree."""

    def __init__(self, every: CheckpointEvery, *, epoch: int) -> None:
        self.every, self.epoch, self.t = every, epoch, time.monotonic()

    def __call__(self, epoch: int) -> bool:
        due = (
            epoch - self.epoch >= self.every.epochs
            or time.monotonic() - self.t >= 60 * self.every.minutes
        )
        if due:
            self.epoch, self.t = epoch, time.monotonic()
        return due


# --------------------------------------------------------------------------------------
# fit's steps, in the order it takes them


def setup_run(
    cfg: TrainConfig,
    *,
    data: DeviceData,
    rank: dist.Rank,
    device: torch.device,
    callbacks: Callbacks,
    resume_from: Path | None = None,
    latency_shared: bool = False,
) -> Run:
    """The model, its size and speed (told to `callbacks.on_start`), the optimizer and the
    counters, resumed from `resume_from` when given, and the training step around them."""
    per_rank_batch, steps_per_epoch = _batch_split(cfg, data, rank)
    bf16 = use_bf16(cfg.precision, device)
    model = build_model(cfg, data).to(device)
    info = describe(model, cfg=cfg, data=data, rank=rank, bf16=bf16, latency_shared=latency_shared)

    if cfg.init_from is not None and resume_from is None:
        info["init_from"] = init_weights(
            model, cfg.init_from, variant=cfg.model.variant
        )  # epoch 1, a fresh optimizer
    optimizer = make_optimizer(model, cfg.optim, device)
    progress, step, best_state = Progress(), 0, None
    if resume_from is not None:
        # Into the bare model, before make_trainer wraps it in DDP / compile.
        progress, step = _restore(Path(resume_from), model, optimizer, device)
        best = Path(resume_from) / "best.pt"
        if cfg.final_weights == "best" and best.exists():
            best_state = torch.load(best, map_location=device, weights_only=True)
    info["first_epoch"] = progress.epoch + 1  # this attempt's
    callbacks.on_start(info)
    trainer = make_trainer(
        model,
        optim=cfg.optim,
        augment=DeviceAugment(data.augment, data.num_classes, data.mean, data.std),
        steps_per_epoch=steps_per_epoch,
        bf16=bf16,
        compile=cfg.compile,
        world_size=rank.world_size,
        optimizer=optimizer,
        step=step,
    )
    return Run(
        cfg=cfg,
        rank=rank,
        device=device,
        data=data,
        trainer=trainer,
        per_rank_batch=per_rank_batch,
        objectives={k: info[k] for k in ("params", "macs", "latency_ms")},
        progress=progress,
        best_state=best_state,
    )


def _batch_split(cfg: TrainConfig, data: DeviceData, rank: dist.Rank) -> tuple[int, int]:
    """(images per rank per step, steps per epoch); ConfigError when the batch cannot work."""
    batch, world = cfg.optim.batch_size, rank.world_size
    if batch % world:
        raise ConfigError(f"optim.batch_size={batch} is not divisible by the world size {world}")
    steps_per_epoch = len(data.train_y) // batch
    if steps_per_epoch < 1:
        raise ConfigError(
            f"optim.batch_size={batch} exceeds the {len(data.train_y)} training images"
        )
    return batch // world, steps_per_epoch


def describe(
    model: CCT,
    *,
    cfg: TrainConfig,
    data: DeviceData,
    rank: dist.Rank,
    bf16: bool,
    latency_shared: bool,
) -> dict[str, Any]:
    """What `on_start` reports. Size and speed are measured before the first epoch, so
    every report can carry every objective."""
    device = next(model.parameters()).device
    input_shape = (data.in_channels, data.img_size, data.img_size)
    macs = count_macs(model, input_shape)
    speed = measure_speed(model, input_shape, runs=cfg.latency_runs, bf16=bf16, batch_size=64)
    return {
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


def _restore(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[Progress, int]:
    """Load a checkpoint's weights and optimizer state; returns (counters, steps taken)."""
    desc = read_description(path)
    model.load_state_dict(torch.load(path / "model.pt", map_location=device, weights_only=True))
    train_state = load_train_state(path, device)
    if train_state is None:
        raise FileNotFoundError(f"{path} holds weights but no train_state.pt: it cannot be resumed")
    optimizer.load_state_dict(train_state["optimizer"])
    progress = Progress(
        epoch=int(desc["epoch"]),
        best_val=float(train_state["best_val"]),
        best_epoch=int(train_state["best_epoch"]),
        stale=int(train_state.get("stale", 0)),  # absent in checkpoints written before
        last_val=float(train_state.get("last_val", 0.0)),
    )
    return progress, int(train_state["step"])


def train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One pass of `train_step` over this rank's share of the training set; the epoch's
    metrics (loss, speed, last learning rate, objectives)."""
    cfg, rank, data, trainer = run.cfg, run.rank, run.data, run.trainer
    # Seeded per (seed, epoch, rank): a resumed run draws what an unbroken one would,
    # augmentation from the trainer's generator, dropout and drop-path from torch's global one.
    epoch_seed = cfg.seed * 1_000_003 + epoch * 1009 + rank.rank
    trainer.gen.manual_seed(epoch_seed)
    torch.manual_seed(epoch_seed)
    idx = epoch_indices(  # (steps, per-rank batch)
        len(data.train_y),
        epoch=epoch,
        seed=cfg.seed,
        rank=rank.rank,
        world_size=rank.world_size,
        batch_size=run.per_rank_batch,
        device=run.device,
    )
    trainer.module.train()
    loss_sum = torch.zeros((), device=run.device)
    t0 = time.perf_counter()
    for batch in idx:
        loss = trainer.train_step(data.train_x[batch], data.train_y[batch])
        loss_sum += loss * len(batch)

    # The log interval: the one host sync of the epoch.
    totals = dist.all_reduce_sum(
        torch.stack([loss_sum, torch.tensor(float(idx.numel()), device=run.device)])
    )
    train_loss = (totals[0] / totals[1]).item()
    seconds = time.perf_counter() - t0
    if not math.isfinite(train_loss):
        raise TrainingDiverged(
            f"training loss became {train_loss} at epoch {epoch} (lr {cfg.optim.lr})"
        )
    run.progress.epoch = epoch
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "samples_per_s": totals[1].item() / seconds,
        "epoch_seconds": seconds,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        **run.objectives,
    }


def validate(run: Run, epoch: int) -> bool:
    """Validation accuracy when this epoch is due for one (`eval_every`, and the last),
    tracked for best weights and early stopping; True when the run should stop early."""
    cfg, p = run.cfg, run.progress
    if epoch % cfg.eval_every == 0 or epoch == cfg.optim.epochs:
        data = run.data
        val_acc = evaluate(
            run.model, data.val_x, data.val_y, data=data, rank=run.rank, bf16=run.bf16
        )
        if val_acc > p.best_val:
            p.best_val, p.best_epoch, p.stale = val_acc, epoch, 0
            if cfg.final_weights == "best":
                run.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        else:
            p.stale += cfg.eval_every
        p.last_val = val_acc
    return cfg.max_epochs_without_gain is not None and p.stale >= cfg.max_epochs_without_gain


def save_epoch(run: Run, metrics: dict[str, Any]) -> Path | None:
    """Rank 0: this epoch's resumable checkpoint in a fresh temporary folder (the caller
    deletes it once the callbacks have copied it). Other ranks: None."""
    if not run.rank.is_main:
        return None
    path = Path(tempfile.mkdtemp(prefix="cct-ckpt-")) / "checkpoint"
    save_checkpoint(
        path,
        model=run.model,
        cfg=run.cfg,
        epoch=metrics["epoch"],
        metrics=metrics,
        train_state={
            "optimizer": run.trainer.optimizer.state_dict(),
            "step": run.trainer.step,
            **dataclasses.asdict(run.progress),
        },
    )
    if run.best_state is not None:
        torch.save(run.best_state, path / "best.pt")
    return path


def finish(run: Run) -> tuple[dict[str, Any], Path | None]:
    """Final validation and test accuracy (of the best epoch's weights with
    final_weights=best); rank 0 writes the logits and final checkpoint into a temporary
    folder for `on_end` (None on other ranks)."""
    cfg, data, rank, bf16, p = run.cfg, run.data, run.rank, run.bf16, run.progress
    if run.best_state is not None:
        run.model.load_state_dict(run.best_state)
    val_acc = evaluate(run.model, data.val_x, data.val_y, data=data, rank=rank, bf16=bf16)
    test_acc = evaluate(run.model, data.test_x, data.test_y, data=data, rank=rank, bf16=bf16)
    result = {
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "best_val_accuracy": p.best_val,
        "best_epoch": p.best_epoch,
        "epochs": p.epoch,
        "weights": cfg.final_weights,
        **run.objectives,
    }
    artifacts = None
    if rank.is_main:
        artifacts = Path(tempfile.mkdtemp(prefix="cct-final-"))
        bare = unwrap(run.model)
        np.savez(
            artifacts / "logits.npz",
            val_logits=predict(bare, data.val_x, data, bf16=bf16).cpu().numpy(),
            val_ids=data.val_ids.cpu().numpy(),
            val_labels=data.val_y.cpu().numpy(),
            test_logits=predict(bare, data.test_x, data, bf16=bf16).cpu().numpy(),
            test_ids=data.test_ids.cpu().numpy(),
            test_labels=data.test_y.cpu().numpy(),
            split_hash=np.array(data.split_hash),
        )
        save_checkpoint(
            artifacts / "checkpoint", model=run.model, cfg=cfg, epoch=p.epoch, metrics=result
        )
    return result, artifacts


def report_last_epoch_again(
    run: Run, result: dict[str, Any], last: dict[str, Any], callbacks: Callbacks
) -> None:
    """Report the resumed checkpoint's epoch (`last`: its metrics) again, final figures
    included: its report may never have arrived. Trackers skip what they already logged."""
    callbacks.on_epoch_end(
        {
            **last,
            **run.objectives,
            "epoch": run.progress.epoch,
            "final": True,
            "val_accuracy": result["val_accuracy"],
            "test_accuracy": result["test_accuracy"],
        },
        None,
    )


# --------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict(
    model: nn.Module,
    x: Tensor,
    data: DeviceData,
    *,
    bf16: bool,
    batch_size: int = 512,
) -> Tensor:
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
    x: Tensor,
    y: Tensor,
    *,
    data: DeviceData,
    rank: dist.Rank,
    bf16: bool,
) -> float:
    """Accuracy over the whole set: each rank scores a shard, the counts are summed."""
    shard = slice(rank.rank, None, rank.world_size)
    logits = predict(unwrap(model), x[shard], data, bf16=bf16)
    counts = torch.stack(
        [
            (logits.argmax(-1) == y[shard]).sum().float(),
            torch.tensor(float(len(y[shard])), device=x.device),
        ]
    )
    counts = dist.all_reduce_sum(counts)
    return (counts[0] / counts[1]).item()
