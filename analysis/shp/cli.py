"""Single-head / single-node performance of a trained CCT, per block.

    python -m analysis.shp --checkpoint runs/x/final/checkpoint --blocks all --out shp_out
    python -m analysis.shp --run-id 3f2a... --tracking-uri sqlite:///mlflow.db

Writes block_<b>.npz, summary.json and pictures to --out; with --run-id it analyses that
MLflow run's `checkpoint/` artifact and logs the results back to the run under `shp/`, with
per-block metrics shp_readout_accuracy / shp_snr_labels / shp_snr_area (step = block).
Bad input is one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import get_args

import torch

from analysis.shp.features import UNITS, AnalysisError
from analysis.shp.pipeline import ShpOptions
from cct.cli import OneLineParser, fail
from cct.config import SHP_THRESHOLD, SHP_THRESHOLD_RANGE, ShpFit, ShpPooling
from cct.device import DeviceUnavailable, resolve_device


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m analysis.shp", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="checkpoint folder (model.json + model.pt)")
    src.add_argument("--run-id", help="MLflow run whose 'checkpoint/' artifact to analyse")
    p.add_argument(
        "--blocks", default="all", help="all | none | comma-separated indices, e.g. 0,3,6"
    )
    p.add_argument("--units", default="heads", choices=UNITS)
    p.add_argument("--pooling", default="mean", choices=get_args(ShpPooling))
    p.add_argument("--fit", default="fast", choices=get_args(ShpFit))
    p.add_argument("--threshold", type=float, default=SHP_THRESHOLD)
    p.add_argument("--out", type=Path, default=Path("shp_out"))
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--heldout", default="val", choices=("val", "test"))
    p.add_argument("--andc", default="diagonal", choices=("diagonal", "clusters", "none"))
    p.add_argument("--faithful-epochs", type=int, default=None, help="override the recipe's 200")
    p.add_argument("--batch-size", type=int, default=256, help="images per feature batch")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_blocks(text: str) -> str | list[int]:
    text = text.strip()
    if text in ("all", "none"):
        return text
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        fail(f"--blocks {text!r}: expected all, none or comma-separated block indices")
    if not out:
        fail(f"--blocks {text!r}: no block index given")
    return out


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name, with_index=True)
    except DeviceUnavailable:
        fail("--device cuda: no CUDA device is visible")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    blocks = parse_blocks(args.blocks)
    if SHP_THRESHOLD_RANGE.problem(args.threshold):
        fail(f"--threshold {args.threshold}: {SHP_THRESHOLD_RANGE.problem(args.threshold)}")
    if args.batch_size < 1 or (args.faithful_epochs is not None and args.faithful_epochs < 0):
        fail("--batch-size must be >= 1 and --faithful-epochs >= 0")
    device = _device(args.device)
    options = ShpOptions(
        heldout=args.heldout,
        andc=args.andc,
        batch_size=args.batch_size,
        plots=not args.no_plots,
        seed=args.seed,
    )
    if args.faithful_epochs is not None:
        options = dataclasses.replace(
            options, faithful=dataclasses.replace(options.faithful, epochs=args.faithful_epochs)
        )

    # imported here so `--help` and argument errors stay fast
    from mlflow.exceptions import MlflowException

    from analysis.shp.pipeline import analyze_checkpoint
    from cct.config import ConfigError
    from cct.data import DatasetError

    with tempfile.TemporaryDirectory(prefix="shp-ckpt-") as tmp:
        try:
            if args.run_id:
                from analysis.shp.mlflow_io import download_checkpoint

                path = download_checkpoint(args.run_id, Path(tmp), args.tracking_uri)
            else:
                path = args.checkpoint
            summary = analyze_checkpoint(
                path,
                out_dir=args.out,
                blocks=blocks,
                units=args.units,
                pooling=args.pooling,
                fit=args.fit,
                threshold=args.threshold,
                device=device,
                options=options,
            )
            if args.run_id:
                from analysis.shp.mlflow_io import log_to_mlflow

                log_to_mlflow(summary, args.out, args.run_id, tracking_uri=args.tracking_uri)
        except (AnalysisError, FileNotFoundError, ConfigError, DatasetError, MlflowException) as e:
            fail(str(e))
    _print_summary(summary, args.out)
    return 0


def _print_summary(summary: dict, out: Path) -> None:
    def fmt(v: object) -> str:
        return "null" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    print(
        f"{'block':>5} {'kind':>11} {'acc':>6} {'clust/unit':>10} {'noise':>6} {'snr_lab':>7} {'snr_area':>8}"
    )
    for b in summary["blocks"]:
        print(
            f"{b['block']:>5} {b['kind']:>11} {fmt(b['readout_accuracy']):>6} "
            f"{fmt(b['clusters_per_unit']):>10} {fmt(b['mean_noise']):>6} "
            f"{fmt(b['snr_labels']):>7} {fmt(b['snr_area']):>8}"
        )
    print(f"written to {out}")
