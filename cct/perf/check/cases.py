"""The cases of the GPU check (cct/perf/check/run.py). Each takes the device seam and the sizes,
runs one path of the pipeline that only a GPU exercises, and returns a JSON-ready dict:
`ok` (the path worked), `summary` (the one printed figure) and its figures. Targets (MFU,
ratios) are reported as met or missed; they never turn a working path into a failure.
"""

from __future__ import annotations

import datetime
import json
import math
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from cct.checkpoint import load_model, save_checkpoint
from cct.config import OptimConfig, TrainConfig
from cct.data import DeviceAugment, load_dataset
from cct.data.augment import normalize
from cct.device import autocast
from cct.engine import Trainer, make_trainer
from cct.measure import count_macs
from cct.models import create_model
from cct.optim import make_optimizer, param_groups
from cct.perf.check.gpu import Gpu
from cct.perf.suite import sharing
from cct.perf.workload import RECIPE_AUGMENT, peak_tflops_for

VARIANT = "cct_7_3x1_32"
CIFAR_IMAGES, CIFAR_EPOCHS = 50_000, 300
# Targets of the performance issue, reported as met or missed.
MFU_TARGET = 0.35
CIFAR_300_MINUTES_TARGET = 8.0
LSMHA_RATIO_TARGET = 1.3  # 32 heads x 8 against 4 heads x 64, step time
SHARING_TARGET = 1.5  # summed samples/s of 4 processes against 1
# samples/s the input pipeline must feed one GPU training a CCT-7 (research estimate for an
# A100: 5-11 k images/s); the recipe's augmentation alone should exceed the upper end
AUGMENT_TARGET = 11_000


@dataclass(frozen=True)
class CheckSizes:
    img_size: int
    classes: int
    images: int  # synthetic training images on the device
    batch: int
    train_steps: int  # the training case
    warmup: int  # untimed steps before any timing
    timed_steps: int  # per attention / compile configuration
    share_counts: tuple[int, ...]
    share_seconds: float
    compile_backend: str
    model: dict[str, Any] = field(default_factory=dict)  # overrides of every model


GPU_SIZES = CheckSizes(32, 100, 20_000, 128, 300, 10, 30, (1, 2, 4), 10.0, "inductor")
# --quick: the logic on a CPU in seconds (tests); tiny models, the eager compile backend.
QUICK_SIZES = CheckSizes(
    16, 10, 256, 16, 40, 1, 2, (1, 2), 0.5, "eager", {"embed_dim": 32, "depth": 4}
)


def synthetic(sizes: CheckSizes, device: torch.device):
    """CIFAR-shaped synthetic data (class templates plus noise: a loss that can fall)."""
    cfg = TrainConfig.from_dict(
        {
            "model": {"variant": VARIANT},
            "data": {
                "dataset": "synthetic",
                "synthetic_train": sizes.images + 100,
                "synthetic_test": 10,
                "synthetic_classes": sizes.classes,
                "synthetic_size": sizes.img_size,
                "val_size": 100,
            },
        }
    )
    return load_dataset(cfg.data, device)


def build(gpu: Gpu, sizes: CheckSizes, **overrides: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(
        VARIANT,
        num_classes=sizes.classes,
        img_size=sizes.img_size,
        **{**sizes.model, **overrides},
    )
    return model.to(gpu.device)


def trainer_for(model: torch.nn.Module, gpu: Gpu, sizes: CheckSizes, **kw: Any) -> Trainer:
    """The engine's step with the CIFAR recipe's augmentation, at its peak learning rate
    within a few steps (a short warmup), so a few hundred steps show the loss fall."""
    c = 3
    return make_trainer(
        model,
        optim=OptimConfig(epochs=1, warmup_epochs=0.05),
        augment=DeviceAugment(RECIPE_AUGMENT, sizes.classes, [0.5] * c, [0.25] * c),
        steps_per_epoch=max(sizes.train_steps, 20),
        bf16=gpu.device.type == "cuda",
        **kw,
    )


def batch_draw(data, batch: int, seed: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Random training batches (images, labels) drawn on the device, as the engine draws them."""
    gen = torch.Generator(device=data.train_x.device).manual_seed(seed)
    n = len(data.train_y)

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, n, (batch,), generator=gen, device=data.train_x.device)
        return data.train_x[idx], data.train_y[idx]

    return draw


def step_fn(trainer: Trainer, data, batch: int) -> Callable[[], torch.Tensor]:
    draw = batch_draw(data, batch, seed=1)
    return lambda: trainer.train_step(*draw())


def timed(step: Callable[[], Any], steps: int, gpu: Gpu) -> tuple[float, list[Any]]:
    """Seconds per step over `steps` steps, synchronised at both ends only; their outputs."""
    gpu.synchronize()
    t0 = time.perf_counter()
    out = [step() for _ in range(steps)]
    gpu.synchronize()
    return (time.perf_counter() - t0) / steps, out


def met(ok: bool) -> str:
    return "met" if ok else "missed"


# --------------------------------------------------------------------------------------
# the cases


def probe_loss(model: torch.nn.Module, data, bf16: bool) -> float:
    """Cross-entropy on fixed held-out images, without augmentation (eval mode)."""
    x = normalize(data.val_x, data.mean, data.std)
    model.eval()
    with torch.no_grad(), autocast(x.device, bf16):
        loss = F.cross_entropy(model(x).float(), data.val_y).item()
    model.train()
    return loss


def train(gpu: Gpu, sizes: CheckSizes) -> dict[str, Any]:
    """bf16 training of cct_7_3x1_32: the loss falls; samples/s, MFU, 300 CIFAR epochs."""
    data = synthetic(sizes, gpu.device)
    model = build(gpu, sizes)
    bf16 = gpu.device.type == "cuda"
    first = probe_loss(model, data, bf16)
    step = step_fn(trainer_for(model, gpu, sizes), data, sizes.batch)
    for _ in range(sizes.warmup):
        step()
    seconds, losses = timed(step, sizes.train_steps, gpu)
    last = probe_loss(model, data, bf16)
    rate = sizes.batch / seconds
    flops_per_sample = 3 * 2 * count_macs(model, (3, sizes.img_size, sizes.img_size)).total
    peak = peak_tflops_for(gpu.name()) if gpu.device.type == "cuda" else None
    mfu = flops_per_sample * rate / (peak * 1e12) if peak else None
    minutes = CIFAR_IMAGES * CIFAR_EPOCHS / rate / 60
    ok = math.isfinite(last) and last < first
    steps = sizes.warmup + sizes.train_steps
    summary = f"held-out loss {first:.3f} -> {last:.3f} in {steps} steps, {rate:,.0f} samples/s"
    if mfu is not None:
        summary += (
            f", MFU {100 * mfu:.1f}% (target {100 * MFU_TARGET:.0f}%: {met(mfu >= MFU_TARGET)})"
        )
    else:
        summary += ", MFU n/a (device not in the peak table)"
    summary += f", 300 CIFAR epochs ~{minutes:.1f} min (target {CIFAR_300_MINUTES_TARGET:g}: {met(minutes <= CIFAR_300_MINUTES_TARGET)})"
    return {
        "ok": ok,
        "summary": summary,
        "heldout_loss_before": first,
        "heldout_loss_after": last,
        "train_loss_last_step": float(losses[-1]),
        "samples_per_s": rate,
        "step_ms": 1e3 * seconds,
        "mfu": mfu,
        "peak_tflops": peak,
        "cifar100_300_epochs_minutes": minutes,
        "precision": "bf16" if gpu.device.type == "cuda" else "fp32",
    }


def augment(gpu: Gpu, sizes: CheckSizes) -> dict[str, Any]:
    """The cct300 recipe's augmentation alone (RandomResizedCrop, flip, per-image RandAugment,
    erasing, mixup/cutmix) on the device, as training draws it: samples/s at 4x the batch."""
    data = synthetic(sizes, gpu.device)
    aug = DeviceAugment(RECIPE_AUGMENT, sizes.classes, [0.5] * 3, [0.25] * 3)
    batch = 4 * sizes.batch
    draw = batch_draw(data, batch, seed=0)
    gen = torch.Generator(device=data.train_x.device).manual_seed(0)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        return aug(*draw(), gen)

    for _ in range(sizes.warmup):
        step()
    seconds, out = timed(step, sizes.timed_steps, gpu)
    x, target = out[-1]
    ok = bool(torch.isfinite(x).all()) and bool(
        torch.allclose(target.sum(1), torch.ones(batch, device=target.device))
    )
    rate = batch / seconds
    return {
        "ok": ok,
        "summary": f"cct300 augmentation {rate:,.0f} samples/s at batch {batch}"
        f" (target {AUGMENT_TARGET:,}: {met(rate >= AUGMENT_TARGET)})",
        "samples_per_s": rate,
        "batch_ms": 1e3 * seconds,
        "batch": batch,
        "target_samples_per_s": AUGMENT_TARGET,
    }


def fused_adamw(gpu: Gpu, sizes: CheckSizes) -> dict[str, Any]:
    """The engine's AdamW is the fused one on CUDA; its step against the foreach one."""
    model = build(gpu, sizes)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    ours = make_optimizer(model, OptimConfig(), gpu.device)
    foreach = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, foreach=True)
    fused = bool(ours.defaults.get("fused"))
    expected = gpu.device.type == "cuda"
    ms = {}
    for name, opt in (("fused" if fused else "engine", ours), ("foreach", foreach)):
        opt.step()  # state allocation
        ms[name] = 1e3 * timed(opt.step, max(5, sizes.timed_steps), gpu)[0]
    finite = all(torch.isfinite(p).all().item() for p in model.parameters())
    ok = fused == expected and finite
    text = ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
    return {
        "ok": ok,
        "summary": f"engine optimizer fused={fused} (expected {expected}); step {text}",
        "fused": fused,
        "step_ms": ms,
    }


def compiled(gpu: Gpu, sizes: CheckSizes) -> dict[str, Any]:
    """torch.compile of the training step: compile time, speed-up over eager."""
    data = synthetic(sizes, gpu.device)
    eager = step_fn(trainer_for(build(gpu, sizes), gpu, sizes), data, sizes.batch)
    for _ in range(sizes.warmup):
        eager()
    eager_s = timed(eager, sizes.timed_steps, gpu)[0]
    trainer = trainer_for(build(gpu, sizes), gpu, sizes)
    trainer.module = torch.compile(trainer.module, backend=sizes.compile_backend)
    step = step_fn(trainer, data, sizes.batch)
    t0 = time.perf_counter()
    step()
    gpu.synchronize()
    compile_s = time.perf_counter() - t0
    for _ in range(sizes.warmup):
        step()
    compiled_s, losses = timed(step, sizes.timed_steps, gpu)
    ok = bool(torch.isfinite(torch.stack(losses)).all())
    speedup = eager_s / compiled_s
    return {
        "ok": ok,
        "summary": f"backend {sizes.compile_backend}: first step {compile_s:.1f} s, "
        f"step {1e3 * compiled_s:.1f} ms vs eager {1e3 * eager_s:.1f} ms ({speedup:.2f}x)",
        "compile_seconds": compile_s,
        "step_ms_compiled": 1e3 * compiled_s,
        "step_ms_eager": 1e3 * eager_s,
        "speedup": speedup,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collectives(gpu: Gpu, sizes: CheckSizes) -> dict[str, Any]:
    """A one-rank process group on the device's backend: one all-reduce, one DDP step."""
    store = torch_dist.TCPStore(
        "127.0.0.1", _free_port(), 1, True, timeout=datetime.timedelta(seconds=60)
    )
    torch_dist.init_process_group(gpu.dist_backend, store=store, rank=0, world_size=1)
    try:
        t = torch.full((1024,), 3.0, device=gpu.device)
        torch_dist.all_reduce(t)
        reduced = bool((t == 3.0).all().item())
        data = synthetic(sizes, gpu.device)
        model = build(gpu, sizes)
        trainer = trainer_for(model, gpu, sizes)
        ids = [gpu.device.index] if gpu.device.type == "cuda" else None
        trainer.module = DistributedDataParallel(model, device_ids=ids)
        step = step_fn(trainer, data, sizes.batch)
        losses = torch.stack([step() for _ in range(2)])
        ddp_ok = bool(torch.isfinite(losses).all())
    finally:
        torch_dist.destroy_process_group()
    return {
        "ok": reduced and ddp_ok,
        "summary": f"{gpu.dist_backend}: all-reduce {'ok' if reduced else 'WRONG'}, "
        f"DDP step {'ok' if ddp_ok else 'not finite'}; SyncBatchNorm needs two GPUs (not run)",
        "backend": gpu.dist_backend,
        "all_reduce_ok": reduced,
        "ddp_step_ok": ddp_ok,
    }


# aten ops of torch's SDPA backends, as the profiler names them, most specific first.
SDPA_OPS = (
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "flash (CPU)"),
    ("aten::_scaled_dot_product_flash_attention", "flash"),
    ("aten::_scaled_dot_product_efficient_attention", "memory-efficient"),
    ("aten::_scaled_dot_product_cudnn_attention", "cuDNN"),
    ("aten::_scaled_dot_product_attention_math", "math"),
)


def sdpa_backend(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> str:
    """Which SDPA kernel a training-mode forward runs, read off the profiled aten ops."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with autocast(x.device, bf16):
            model(x)
    names = {e.key for e in prof.key_averages()}
    for op, label in SDPA_OPS:
        if op in names:
            return label
    return "written out (no SDPA)"


ATTENTION_CONFIGS = (
    ("4x64", {"num_heads": 4, "head_dim": 64}),
    ("25x4", {"num_heads": 25, "head_dim": 4}),
    ("32x8", {"num_heads": 32, "head_dim": 8}),
    ("4x64 conv_blocks=3", {"num_heads": 4, "head_dim": 64, "conv_blocks": 3}),
)


def attention(gpu: Gpu, sizes: CheckSizes) -> dict[str, Any]:
    """Head structures: the SDPA backend each runs, its step time against 4 heads x 64."""
    data = synthetic(sizes, gpu.device)
    bf16 = gpu.device.type == "cuda"
    rows = {}
    for label, overrides in ATTENTION_CONFIGS:
        model = build(gpu, sizes, **overrides)
        trainer = trainer_for(model, gpu, sizes)
        x = normalize(data.train_x[: sizes.batch], trainer.augment.mean, trainer.augment.std)
        backend = sdpa_backend(model, x, bf16)
        step = step_fn(trainer, data, sizes.batch)
        for _ in range(sizes.warmup):
            step()
        rows[label] = {"backend": backend, "step_ms": 1e3 * timed(step, sizes.timed_steps, gpu)[0]}
    base = rows["4x64"]["step_ms"]
    for r in rows.values():
        r["ratio_to_4x64"] = r["step_ms"] / base
    ratio = rows["32x8"]["ratio_to_4x64"]
    parts = [f"{k} {v['backend']} {v['ratio_to_4x64']:.2f}x" for k, v in rows.items()]
    return {
        "ok": True,
        "summary": "; ".join(parts)
        + f" (32x8 target <= {LSMHA_RATIO_TARGET}x: {met(ratio <= LSMHA_RATIO_TARGET)})",
        "configs": rows,
    }


def shared_device(gpu: Gpu, sizes: CheckSizes) -> dict[str, Any]:
    """1, 2 and 4 small-trial processes training at once on the device: summed samples/s."""
    totals = {}
    for n in sizes.share_counts:
        cfg = sharing.worker_config(
            "ours",
            n,
            device=gpu.device,
            seconds=sizes.share_seconds,
            quick=sizes.compile_backend == "eager",
            bf16=gpu.device.type == "cuda",
            num_workers=0,
            batch=max(sizes.batch, 8),
            warmup=sizes.warmup,
        )
        totals[n] = sum(r["samples_per_s"] for r in sharing.run_group(cfg, n))
    most = max(totals)
    gain = totals[most] / totals[1]
    text = ", ".join(f"{n}: {v:,.0f}" for n, v in totals.items())
    target = f"{most} vs 1 target >= {SHARING_TARGET}x: {met(gain >= SHARING_TARGET)}"
    return {
        "ok": all(v > 0 for v in totals.values()),
        "summary": f"summed samples/s {text} ({gain:.2f}x; {target})",
        "samples_per_s": {str(n): v for n, v in totals.items()},
        "gain": gain,
    }


def parse_shp_bench(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the check keeps from `python -m analysis.bench`'s JSON."""
    fast, train_part = report["fast"], report["train"]
    seconds = fast["seconds_extrapolated_50k_10k"]
    fraction = fast["fraction_of_300_epoch_training"]
    return {
        "ok": math.isfinite(seconds) and seconds > 0,
        "summary": f"all 7 blocks ~{seconds:,.0f} s at 50,000 / 10,000 images "
        f"({100 * fraction:.2f}% of a 300-epoch run of "
        f"~{train_part['training_300_epochs_seconds_extrapolated'] / 60:,.0f} min)",
        "analysis_seconds_extrapolated": seconds,
        "fraction_of_300_epochs": fraction,
        "measured_wall_s": fast["seconds_measured"]["total_wall"],
    }


def shp_analysis(gpu: Gpu, sizes: CheckSizes) -> dict[str, Any]:
    """The SHP analysis of all 7 blocks on the device, by `python -m analysis.bench` (which
    imports no mlflow: it runs on a bare GPU box)."""
    if sizes.compile_backend == "eager":  # --quick
        return {"ok": True, "skipped": True, "summary": "skipped under --quick (minutes on a CPU)"}
    cmd = [sys.executable, "-m", "analysis.bench", "--no-agreement", "--device", "cuda"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {
            "ok": False,
            "summary": f"analysis.bench exited {out.returncode}: {' | '.join(tail)}",
        }
    return parse_shp_bench(json.loads(out.stdout[out.stdout.index("{") :]))


def checkpoint(gpu: Gpu, sizes: CheckSizes) -> dict[str, Any]:
    """Save the model and optimizer from the device, load them back: same weights."""
    model = build(gpu, sizes)
    opt = make_optimizer(model, OptimConfig(), gpu.device)
    cfg = TrainConfig.from_dict({"model": {"variant": VARIANT, **sizes.model}})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint"
        t0 = time.perf_counter()
        save_checkpoint(
            path,
            model=model,
            cfg=cfg,
            epoch=1,
            metrics={},
            train_state={"optimizer": opt.state_dict()},
        )
        loaded, _ = load_model(path, map_location=gpu.device)
        seconds = time.perf_counter() - t0
        sizes_mb = {f.name: f.stat().st_size / 2**20 for f in path.iterdir()}
    theirs = loaded.state_dict()
    same = all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    return {
        "ok": same,
        "summary": f"round trip {seconds:.2f} s, weights {'identical' if same else 'DIFFER'}, "
        + ", ".join(f"{k} {v:.1f} MB" for k, v in sorted(sizes_mb.items())),
        "seconds": seconds,
        "file_mb": sizes_mb,
    }


CASES: dict[str, Callable[[Gpu, CheckSizes], dict[str, Any]]] = {
    "train_bf16": train,
    "augment": augment,
    "fused_adamw": fused_adamw,
    "nccl": collectives,
    "attention": attention,
    "checkpoint": checkpoint,
    "sharing": shared_device,
    "shp_analysis": shp_analysis,
    "compile": compiled,
}
# Seconds each case may take on a GPU before it is stopped (the whole check: 5 minutes).
CAPS_S = {
    "train_bf16": 60,
    "augment": 30,
    "fused_adamw": 20,
    "nccl": 30,
    "attention": 60,
    "checkpoint": 20,
    "sharing": 90,
    "shp_analysis": 90,
    "compile": 120,
}


def run_case(name: str, gpu: Gpu, sizes: CheckSizes) -> dict[str, Any]:
    """One case with its peak device memory; an exception is a failed case, with its text."""
    gpu.reset_peak()
    t0 = time.perf_counter()
    try:
        result = CASES[name](gpu, sizes)
    except Exception as e:  # the report says what broke; the other cases still run
        result = {"ok": False, "summary": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    result["seconds"] = time.perf_counter() - t0
    result["peak_mb"] = gpu.peak_mb()
    return result
