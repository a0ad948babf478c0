"""Standalone training: `python -m cct.train [--config FILE] [--set key=value ...]`.

Runs the same `cct.engine.fit` the sweep workers call, on one process or under
`torchrun --nproc_per_node N -m cct.train ...` (gloo on CPU, NCCL on GPU). Writes the
checkpoint (every epoch, for --resume), the final checkpoint, logits and metrics to --out.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cct import dist
from cct.checkpoint import read_description
from cct.cli import OneLineParser, fail
from cct.config import ConfigError, TrainConfig
from cct.data import DatasetError
from cct.data.shapes import dataset_shape
from cct.engine import TrainingDiverged, fit
from cct.models import resolve_settings
from cct.typed_reader import flatten, parse_override, set_dotted

EXAMPLE = "python -m cct.train --set data.dataset=digits --set optim.epochs=30"


class ConsoleCallbacks:
    """Prints progress and keeps files in `out` (rank 0 only)."""

    def __init__(self, out: Path, is_main: bool, cfg: TrainConfig) -> None:
        self.out, self.is_main, self.t0 = out, is_main, time.perf_counter()
        self.cfg = cfg
        self.history: list[dict[str, Any]] = []

    def on_start(self, info: dict[str, Any]) -> None:
        if self.is_main:
            # Written only now, once data and shapes have passed their checks.
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            print(
                f"model: {info['params']:,} params, {info['macs'] / 1e9:.3f} GMACs "
                f"({info['macs_with_attn'] / 1e9:.3f} with attention matmuls), "
                f"latency {info['latency_ms']:.2f} ms on {info['device']} ({info['precision']}); "
                f"data: {info['n_train']} train / {info['n_val']} val / {info['n_test']} test, "
                f"{info['world_size']} process(es)",
                flush=True,
            )
            if "init_from" in info:
                print(f"weights from {info['init_from']}; epoch 1, a fresh optimizer", flush=True)
            (self.out / "info.json").write_text(json.dumps(info, indent=2))

    def on_epoch_end(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        if not self.is_main:
            return
        self.history.append(metrics)
        val = metrics.get("val_accuracy")
        print(
            f"epoch {metrics['epoch']:4d}  loss {metrics['train_loss']:.4f}  "
            + (f"val {val:.4f}  " if val is not None else "")
            + f"{metrics['samples_per_s']:,.0f} samples/s  {time.perf_counter() - self.t0:.1f}s",
            flush=True,
        )
        if checkpoint is not None:
            target = self.out / "checkpoint"
            tmp = self.out / "checkpoint.incoming"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint, tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)

    def on_end(self, result: dict[str, Any], artifacts: Path | None) -> None:
        if not self.is_main or artifacts is None:
            return
        shutil.rmtree(self.out / "final", ignore_errors=True)
        shutil.copytree(artifacts, self.out / "final")
        (self.out / "metrics.json").write_text(
            json.dumps({"result": result, "history": self.history}, indent=2)
        )


def parse_config(config_file: str | None, sets: list[str]) -> TrainConfig:
    raw: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {config_file}: no such file")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(
                f"--config {config_file}: not valid YAML ({e})".replace("\n", " ")
            ) from None
    for item in sets:
        parts, value = parse_override(item)
        set_dotted(raw, ".".join(parts), value)
    cfg = TrainConfig.from_dict(raw)
    # Shape errors (unknown variant, impossible widths) surface here, before any data loads.

    classes, channels, size = dataset_shape(cfg.data)
    resolve_settings(
        cfg.model.variant,
        num_classes=classes,
        in_channels=channels,
        img_size=size,
        **cfg.model.overrides(),
    )
    return cfg


def resume_mismatch(cfg: TrainConfig, checkpoint: Path) -> str | None:
    """Why `cfg` cannot continue `checkpoint` (None if it can). Only the epoch budget may
    change: anything else would silently train a different run."""

    old = flatten(read_description(checkpoint)["config"])
    new = flatten(cfg.to_dict())
    changed = sorted(k for k in new if k != "optim.epochs" and old.get(k) != new[k])
    if not changed:
        return None
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed[:5])
    return f"the config differs from the checkpoint's ({shown}); use another --out for a new run"


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m cct.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML file with a TrainConfig (model/data/optim sections)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted key"
    )
    p.add_argument("--out", default="runs/train", help="output folder (default: runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    args = p.parse_args(argv)

    try:
        cfg = parse_config(args.config, args.set)
    except ConfigError as e:
        fail(e)
    out = Path(args.out)
    resume_from = out / "checkpoint" if args.resume else None
    if resume_from is not None and not (resume_from / "model.json").exists():
        fail(f"--resume: no checkpoint in {resume_from}")

    if resume_from is not None:
        problem = resume_mismatch(cfg, resume_from)
        if problem:
            fail(f"--resume: {problem}")

    rank, _ = dist.setup(cfg.device)
    try:
        result = fit(
            cfg, callbacks=ConsoleCallbacks(out, rank.is_main, cfg), resume_from=resume_from
        )
    except (ConfigError, DatasetError) as e:
        fail(e)
    except TrainingDiverged as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    dist.teardown()
    if rank.is_main:
        print(
            f"done: val {result['val_accuracy']:.4f}  test {result['test_accuracy']:.4f}  "
            f"({result['epochs']} epochs, {result['weights']} weights) -> {out}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
