"""What the SHP analysis costs next to training, and how close `fast` is to `faithful`.

    python -m analysis.bench [--train-steps 4] [--subset-train 1500]
        [--subset-heldout 500] [--faithful-steps 3] [--agreement-epochs 30] [--device auto]
        [--no-agreement] [--merge-into DIR/bench.json]

Prints one JSON object:
- train: seconds per training step of cct_7_3x1_32 (100 classes, 32x32, batch 128, the
  engine's own `Trainer.train_step`, as `fit` runs it), timed after
  warm-up steps and extrapolated to one epoch of 50,000 images and to 300 epochs;
- fast: the `fast` analysis of all 7 blocks on a CIFAR-100-shaped synthetic subset, per
  stage, extrapolated to 50,000 training / 10,000 held-out images (the passes and fits scale
  linearly with the images; per-block statistics do not depend on them, but are scaled too,
  an upper bound) and as a fraction of the 300-epoch training;
- faithful_cct7: faithful readout steps (batch 100, all 7 blocks at once) timed on the
  subset and extrapolated to the recipe's 200 epochs of 50,000 images;
- agreement: a small digits CCT trained here, analysed with `fast` and with the full
  `faithful` recipe (200 epochs), with per-block readout accuracy and SNR side by side.
Numbers measured on a small subset are labelled with the subset size; every extrapolation
says how it was made. --merge-into adds the "analysis time, all blocks" row (fast next to
faithful) to the report of `python -m cct.perf` (cct/perf/report.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from analysis.shp.pipeline import ShpOptions, analyze_model
from analysis.shp.readout import FaithfulRecipe
from cct.checkpoint import load_model
from cct.cli import OneLineParser, fail
from cct.config import TrainConfig
from cct.data import DeviceAugment, load_dataset
from cct.device import DeviceUnavailable, resolve_device, sync, use_bf16
from cct.engine import NoCallbacks, build_model, fit, make_trainer
from cct.perf.report import make_row, merge_rows, run_info
from cct.perf.timing import load_average

FULL_TRAIN, FULL_HELDOUT, EPOCHS = 50_000, 10_000, 300


def cifar_like(n_train: int, n_heldout: int, device: torch.device):
    cfg = TrainConfig.from_dict(
        {
            "model": {"variant": "cct_7_3x1_32"},
            "data": {
                "dataset": "synthetic",
                "synthetic_train": n_train + n_heldout,
                "synthetic_test": 100,
                "synthetic_classes": 100,
                "synthetic_size": 32,
                "val_size": n_heldout,
            },
        }
    )
    return cfg, load_dataset(cfg.data, device)


def time_training(cfg, data, device, steps: int, warmup: int = 2) -> dict:
    """The engine's train_step (cct/engine.py, what fit runs), timed after `warmup` steps."""
    torch.manual_seed(0)
    model = build_model(cfg, data).to(device)
    trainer = make_trainer(
        model,
        optim=cfg.optim,
        augment=DeviceAugment(data.augment, data.num_classes, data.mean, data.std),
        steps_per_epoch=FULL_TRAIN // cfg.optim.batch_size,
        bf16=use_bf16(cfg.precision, device),
    )
    times = []
    for i in range(warmup + steps):
        idx = torch.randint(0, len(data.train_y), (cfg.optim.batch_size,), device=device)
        sync(device)
        t = time.perf_counter()
        trainer.train_step(data.train_x[idx], data.train_y[idx])
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    per_step = sum(times) / len(times)
    steps_per_epoch = FULL_TRAIN // cfg.optim.batch_size
    epoch = per_step * steps_per_epoch
    return {
        "model": "cct_7_3x1_32",
        "batch_size": cfg.optim.batch_size,
        "steps_timed": steps,
        "seconds_per_step": per_step,
        "epoch_seconds_extrapolated": epoch,
        "how": f"seconds_per_step x {steps_per_epoch} steps (50,000 images / batch 128)",
        "training_300_epochs_seconds_extrapolated": epoch * EPOCHS,
    }, model.eval()


def time_fast(model, data, out: Path) -> dict:
    n_train, n_held = len(data.train_y), len(data.val_y)
    t = time.perf_counter()
    s = analyze_model(model, data, blocks="all", out_dir=out)  # heads, fast: the defaults
    total = time.perf_counter() - t
    sec = s["seconds"]
    blocks_s = sum(b["seconds"] for b in s["blocks"])
    andc_s = sum(b["andc"]["seconds"] for b in s["blocks"])
    scale_train, scale_held = FULL_TRAIN / n_train, FULL_HELDOUT / n_held
    extrapolated = (
        (sec["train_pass"] + sec["fit"] + andc_s) * scale_train
        + sec["heldout_pass"] * scale_held
        + (blocks_s - andc_s)
        + sec.get("plots", 0.0)
    )
    return {
        "subset": {"n_train": n_train, "n_heldout": n_held, "classes": data.num_classes},
        "seconds_measured": {
            **sec,
            "per_block_work": blocks_s,
            "andc_retraining": andc_s,
            "total_wall": total,
        },
        "seconds_extrapolated_50k_10k": extrapolated,
        "how": (
            "train pass, fit and ANDC retraining x 50,000/n_train; held-out pass"
            " x 10,000/n_heldout; fields, clusters, statistics and plots as measured"
            " (they depend on classes and units, not on images)"
        ),
        "readout_accuracy": [b["readout_accuracy"] for b in s["blocks"]],
    }, s


def time_faithful_steps(model, data, out: Path, steps: int) -> dict:
    """One epoch of the faithful loop on the first steps*100 images, all 7 blocks at once."""
    n = steps * 100
    sub = dataclasses.replace(
        data, train_x=data.train_x[:n], train_y=data.train_y[:n], train_ids=data.train_ids[:n]
    )
    opts = ShpOptions(fit="faithful", plots=False, andc="none", faithful=FaithfulRecipe(epochs=1))
    s = analyze_model(model, sub, blocks="all", out_dir=out, options=opts)
    per_step = s["seconds"]["fit"] / steps
    return {
        "steps_timed": steps,
        "seconds_per_step_all_7_blocks": per_step,
        "readout_fit_seconds_extrapolated": per_step * (FULL_TRAIN // 100) * 200,
        "how": "seconds_per_step x 500 steps (50,000 / batch 100) x 200 epochs",
    }


class _KeepModel(NoCallbacks):
    """fit() callbacks that keep the final model (fit returns metrics only)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.model = device, None

    def on_end(self, result: dict, artifacts: Path | None) -> None:
        if artifacts is not None:
            self.model, _ = load_model(artifacts / "checkpoint", map_location=self.device)


def agreement(device: torch.device, epochs: int, out: Path) -> dict:
    """A small digits CCT (3 blocks, 4 heads), analysed with fast and the full faithful recipe."""
    cfg = TrainConfig.from_dict(
        {
            "model": {
                "variant": "cct_2_3x2_32",
                "tokenizer_layers": 1,
                "embed_dim": 64,
                "depth": 3,
                "num_heads": 4,
            },
            "data": {"dataset": "digits"},
            "optim": {"epochs": epochs, "warmup_epochs": 2, "lr": 0.002, "batch_size": 64},
            "latency_runs": 2,
            "device": device.type,
        }
    )
    data = load_dataset(cfg.data, device)
    keep = _KeepModel(device)
    t = time.perf_counter()
    result = fit(cfg, data=data, callbacks=keep)
    report: dict = {
        "model": "cct_2_3x2_32, embed 64, 3 blocks, 4 heads, digits",
        "train_epochs": epochs,
        "train_seconds": time.perf_counter() - t,
        "model_val_accuracy": result["val_accuracy"],
        "n_train": len(data.train_y),
        "n_heldout": len(data.val_y),
    }
    runs = {}
    for mode in ("fast", "faithful"):
        s = analyze_model(
            keep.model.to(device),
            data,
            blocks="all",
            out_dir=out / mode,
            options=ShpOptions(fit=mode, plots=False),
        )
        runs[mode] = s
        report[mode] = {
            "seconds": s["seconds"]["analysis"],
            "blocks": [
                {
                    k: b[k]
                    for k in (
                        "block",
                        "readout_accuracy",
                        "snr_labels",
                        "snr_area",
                        "mean_noise",
                        "clusters_per_unit",
                    )
                }
                for b in s["blocks"]
            ],
        }
    diffs = []
    for bf, bs in zip(runs["fast"]["blocks"], runs["faithful"]["blocks"]):
        zf = np.load(out / "fast" / f"block_{bf['block']}.npz")
        zs = np.load(out / "faithful" / f"block_{bs['block']}.npz")
        diffs.append(
            {
                "block": bf["block"],
                "readout_accuracy_fast_minus_faithful": bf["readout_accuracy"]
                - bs["readout_accuracy"],
                "snr_labels_fast_minus_faithful": _diff(bf["snr_labels"], bs["snr_labels"]),
                "snr_area_fast_minus_faithful": _diff(bf["snr_area"], bs["snr_area"]),
                "binary_entries_equal": float((zf["binary"] == zs["binary"]).mean()),
                "label_sets_equal": float((zf["label_sets"] == zs["label_sets"]).mean()),
            }
        )
    report["differences"] = diffs
    report["speedup_fast_over_faithful"] = report["faithful"]["seconds"] / report["fast"]["seconds"]
    return report


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def analysis_row(report: dict) -> dict:
    """The benchmark row: the fast analysis of all blocks next to the faithful readout fit,
    both extrapolated to CIFAR's 50,000 / 10,000 images (lower is better)."""
    fast, faithful = report["fast"], report["faithful_cct7"]
    sub = fast["subset"]
    return make_row(
        "analysis/all_blocks",
        figure="SHP analysis, all 7 blocks, s",
        config="cct_7_3x1_32, 100 classes, extrapolated to 50,000 / 10,000 images",
        unit="s",
        higher_is_better=False,
        ours=[fast["seconds_extrapolated_50k_10k"]],
        reference=[faithful["readout_fit_seconds_extrapolated"]],
        notes=f"ours: fast ({fast['seconds_measured']['total_wall']:.1f} s measured on "
        f"{sub['n_train']} + {sub['n_heldout']} images, "
        f"{100 * fast['fraction_of_300_epoch_training']:.2f}% of a 300-epoch training); "
        "reference: the faithful recipe's readout fit alone (SGD, 200 epochs)",
    )


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(prog="python -m analysis.bench", description=__doc__.split("\n")[0])
    p.add_argument("--train-steps", type=int, default=4)
    p.add_argument("--subset-train", type=int, default=1500)
    p.add_argument("--subset-heldout", type=int, default=500)
    p.add_argument("--faithful-steps", type=int, default=3)
    p.add_argument("--agreement-epochs", type=int, default=30)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-agreement", action="store_true", help="skip the fast/faithful agreement")
    p.add_argument("--merge-into", type=Path, metavar="BENCH_JSON", help="add the row here")
    args = p.parse_args(argv)
    start = load_average()
    try:
        device = resolve_device(args.device)
    except DeviceUnavailable as e:
        fail(e)
    report: dict = {
        "machine": {
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        }
    }
    cfg, data = cifar_like(args.subset_train, args.subset_heldout, device)
    report["train"], model = time_training(cfg, data, device, args.train_steps)
    with tempfile.TemporaryDirectory() as tmp:
        report["fast"], _ = time_fast(model, data, Path(tmp) / "fast")
        report["fast"]["fraction_of_300_epoch_training"] = (
            report["fast"]["seconds_extrapolated_50k_10k"]
            / report["train"]["training_300_epochs_seconds_extrapolated"]
        )
        report["faithful_cct7"] = time_faithful_steps(
            model, data, Path(tmp) / "faithful", args.faithful_steps
        )
        report["faithful_cct7"]["fraction_of_300_epoch_training"] = (
            report["faithful_cct7"]["readout_fit_seconds_extrapolated"]
            / report["train"]["training_300_epochs_seconds_extrapolated"]
        )
        if not args.no_agreement:
            report["agreement"] = agreement(device, args.agreement_epochs, Path(tmp) / "agree")
    print(json.dumps(report, indent=1))
    if args.merge_into is not None:
        run = run_info("analysis.bench", report["machine"]["device"], start)
        merge_rows(args.merge_into, [analysis_row(report)], run=run)
        print(f"merged into {args.merge_into}")
