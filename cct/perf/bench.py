"""Size and speed of one variant: `python -m cct.perf.bench --variant NAME [--set model.key=value ...]`.

Reports parameters, MACs both ways (without / with the attention matmuls), batch-1 latency,
large-batch inference throughput, training samples/s of the engine's own step
(`Trainer.train_step`: scheduled learning rate, device augmentation, forward under bf16 autocast
on GPU, backward, clipping if configured, fused AdamW) and, on CUDA, the model-FLOPs
utilisation. Torch only (no ray, no mlflow), so it runs on a bare GPU box.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cct.cli import OneLineParser, fail
from cct.config import ConfigError, DataConfig, OptimConfig, TrainConfig
from cct.data import DATASETS, AugmentSpec, DeviceAugment
from cct.data.shapes import dataset_shape
from cct.device import allow_tf32, keep_freed_memory, resolve_device, sync, use_bf16
from cct.engine import make_trainer
from cct.measure import count_macs, count_params, device_name, measure_speed
from cct.models import create_model, resolve_settings
from cct.perf.workload import RECIPE_AUGMENT, RECIPE_TRAIN_IMAGES, peak_tflops_for, utilisation
from cct.typed_reader import parse_override, set_dotted


def time_training(
    model: torch.nn.Module,
    input_shape: tuple[int, int, int],
    *,
    num_classes: int,
    augment: AugmentSpec,
    batch_size: int,
    steps: int,
    warmup: int,
    bf16: bool,
    compile: bool = False,
    optim: OptimConfig | None = None,
) -> float:
    """Seconds per full training step: `steps` steps timed together after `warmup` untimed
    ones, synchronised only at both ends so the host can queue ahead as it does in training.

    The step is the engine's `Trainer.train_step`, what `fit` runs per batch, with the
    recipe's optimizer settings unless `optim` is given. Data is random uint8 on the device,
    since the data values do not change the cost.
    """
    device = next(model.parameters()).device
    channels = input_shape[0]
    trainer = make_trainer(
        model,
        optim=optim or OptimConfig(),
        augment=DeviceAugment(augment, num_classes, [0.5] * channels, [0.25] * channels),
        steps_per_epoch=RECIPE_TRAIN_IMAGES // batch_size,
        bf16=bf16,
        compile=compile,
    )
    gen = trainer.gen
    pool = torch.randint(
        0, 256, (2 * batch_size, *input_shape), generator=gen, device=device, dtype=torch.uint8
    )
    labels = torch.randint(0, num_classes, (2 * batch_size,), generator=gen, device=device)

    def step() -> None:
        idx = torch.randint(0, len(labels), (batch_size,), generator=gen, device=device)
        trainer.train_step(pool[idx], labels[idx])

    for _ in range(warmup):  # allocator, cuDNN autotuning, compilation
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def benchmark(
    variant: str,
    overrides: dict[str, Any] | None = None,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    img_size: int | None = None,
    augment: AugmentSpec = RECIPE_AUGMENT,
    batch_size: int = 256,
    train_batch_size: int = 128,
    runs: int = 100,
    train_steps: int = 20,
    train_warmup: int = 5,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
    peak_tflops: float | None = None,
) -> dict[str, Any]:
    """Measure one variant (with model overrides) and return a flat, JSON-ready dict.

    precision "auto" is bf16 on CUDA and fp32 elsewhere. MFU is reported on CUDA (or wherever
    `peak_tflops` is given): 3 x forward FLOPs (2 x MACs, attention matmuls included) x batch
    per training step, over the step time and the peak.
    """
    dev = resolve_device(device)
    allow_tf32(dev)
    keep_freed_memory(dev)  # as the engine does
    bf16 = use_bf16(precision, dev)

    torch.manual_seed(0)
    model = create_model(
        variant,
        num_classes=num_classes,
        in_channels=in_channels,
        img_size=img_size,
        **(overrides or {}),
    ).to(dev)
    s = model.settings
    input_shape = (s.in_channels, s.img_size, s.img_size)
    macs = count_macs(model, input_shape)

    inference_model = torch.compile(model) if compile else model
    speed = measure_speed(inference_model, input_shape, batch_size=batch_size, runs=runs, bf16=bf16)
    step_s = time_training(
        model,
        input_shape,
        num_classes=s.num_classes,
        augment=augment,
        batch_size=train_batch_size,
        steps=train_steps,
        warmup=train_warmup,
        bf16=bf16,
        compile=compile,
    )

    name = device_name(dev)
    if peak_tflops is None and dev.type == "cuda" and bf16:  # the table holds bf16 peaks only
        peak_tflops = peak_tflops_for(name)
    return {
        "variant": variant,
        "overrides": dict(overrides or {}),
        "settings": dataclasses.asdict(s),
        "device": name,
        "precision": "bf16" if bf16 else "fp32",
        "compile": compile,
        "torch": torch.__version__,
        "params": count_params(model),
        "macs": macs.without_attn_matmuls,
        "macs_with_attn": macs.total,
        "latency_ms": speed.latency_ms,
        "latency_runs": runs,
        "batch_size": batch_size,
        "throughput": speed.throughput,
        "train_batch_size": train_batch_size,
        "train_steps": train_steps,
        "train_step_ms": step_s * 1e3,
        "train_samples_per_s": train_batch_size / step_s,
        **utilisation(macs.total * train_batch_size, step_s, peak_tflops),
    }


def format_table(r: dict[str, Any]) -> str:
    rows = [
        ("variant", r["variant"] + (f"  {r['overrides']}" if r["overrides"] else "")),
        ("device", f"{r['device']}, {r['precision']}" + (", compiled" if r["compile"] else "")),
        ("parameters", f"{r['params']:,}"),
        ("GMACs (no attn matmuls)", f"{r['macs'] / 1e9:.4f}"),
        ("GMACs (with attn matmuls)", f"{r['macs_with_attn'] / 1e9:.4f}"),
        ("latency, batch 1", f"{r['latency_ms']:.3f} ms (median of {r['latency_runs']})"),
        (f"inference, batch {r['batch_size']}", f"{r['throughput']:,.0f} images/s"),
        (
            f"training, batch {r['train_batch_size']}",
            f"{r['train_samples_per_s']:,.1f} samples/s ({r['train_step_ms']:.1f} ms/step)",
        ),
        ("model TFLOP/s (training)", f"{r['model_tflops_per_s']:.3f}"),
    ]
    if r["mfu"] is not None:
        rows.append(("MFU", f"{100 * r['mfu']:.1f}% of {r['peak_tflops']:g} TFLOP/s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def parse_overrides(variant: str, sets: list[str]) -> dict[str, Any]:
    """`model.key=value` strings -> validated model overrides (ConfigError names the value)."""
    raw: dict[str, Any] = {"model": {"variant": variant}}
    for item in sets:
        parts, value = parse_override(item)
        if parts[0] != "model" or len(parts) < 2 or parts[1] == "variant":
            raise ConfigError(
                f"--set {item!r}: expected model.key=value (e.g. model.num_heads=8); "
                "the variant is chosen with --variant"
            )
        set_dotted(raw, ".".join(parts), value)
    return TrainConfig.from_dict(raw).model.overrides()


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m cct.perf.bench", description=__doc__.splitlines()[0])
    p.add_argument("--variant", required=True, help="registered variant, e.g. cct_7_3x1_32")
    p.add_argument("--set", action="append", default=[], metavar="model.KEY=VALUE")
    p.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        help="take classes, channels, size and augmentation from this dataset "
        "(default: 10 classes, 3 channels, the variant's size, the CIFAR recipe's augmentation)",
    )
    p.add_argument("--img-size", type=int, help="input size (default: the variant's or dataset's)")
    p.add_argument("--batch-size", type=int, default=256, help="inference throughput batch")
    p.add_argument("--train-batch-size", type=int, default=128)
    p.add_argument("--runs", type=int, default=100, help="timed batch-1 runs (>= 100 for reports)")
    p.add_argument("--train-steps", type=int, default=20, help="timed training steps")
    p.add_argument("--train-warmup", type=int, default=5, help="untimed training steps first")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: table)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the result here")
    args = p.parse_args(argv)

    shape: dict[str, Any] = {"img_size": args.img_size}
    augment = RECIPE_AUGMENT
    try:
        overrides = parse_overrides(args.variant, args.set)
        for flag in ("batch_size", "train_batch_size", "runs", "train_steps"):
            if getattr(args, flag) < 1:
                raise ConfigError(
                    f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}"
                )
        if args.dataset is not None:
            data = DataConfig(dataset=args.dataset, img_size=args.img_size)
            classes, channels, size = dataset_shape(data)
            shape = {"num_classes": classes, "in_channels": channels, "img_size": size}
            augment = DATASETS[args.dataset].augment(size)
        # Shape errors (unknown variant, impossible widths) before anything is timed.

        resolve_settings(args.variant, **shape, **overrides)
        resolve_device(args.device)  # DeviceUnavailable is a ConfigError: one line
    except ConfigError as e:
        fail(e)

    result = benchmark(
        args.variant,
        overrides,
        **shape,
        augment=augment,
        batch_size=args.batch_size,
        train_batch_size=args.train_batch_size,
        runs=args.runs,
        train_steps=args.train_steps,
        train_warmup=max(0, args.train_warmup),
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        peak_tflops=args.peak_tflops,
    )
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
