"""Single-head / single-node performance of a trained CCT, per block.

    python -m analysis.shp --checkpoint runs/x/final/checkpoint --blocks all --out shp_out
    python -m analysis.shp --run-id 3f2a... --tracking-uri sqlite:///mlflow.db
    python -m analysis.shp --checkpoint cct_7_3x1_32_c100_300e.pth   # the CCT authors' file

A --checkpoint that is a file is a state dict in the CCT authors' layout
(SHI-Labs/Compact-Transformers; cct/models/authors.py): its variant and class count are
given (--variant, --num-classes) or read off the tensor shapes, its dataset given
(--dataset) or taken from the class count. Their models trained on all the training images,
so our validation split was in their training data: such a checkpoint is analysed on test
by default, and every output says so. It is no MLflow trial, hence never a committee
candidate.

Writes block_<b>.npz, summary.json and pictures to --out; with --run-id it analyses that
MLflow run's `checkpoint/` artifact and logs the results back to the run under `shp/`, with
per-block metrics shp_readout_accuracy / shp_snr_labels / shp_snr_area (step = block).
Bad input is one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
    src.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint folder (model.json + model.pt), or a state dict file in the CCT "
        "authors' layout",
    )
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
    p.add_argument(
        "--heldout",
        default=None,
        choices=("val", "test"),
        help="split the matrices come from (default: val; test for an authors' checkpoint)",
    )
    p.add_argument("--variant", help="authors' checkpoint: its variant (default: from shapes)")
    p.add_argument("--num-classes", type=int, help="authors' checkpoint: its class count")
    p.add_argument(
        "--dataset", help="authors' checkpoint: dataset to analyse on (default: by class count)"
    )
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
    if args.checkpoint is not None and not args.checkpoint.exists():
        fail(f"--checkpoint {args.checkpoint}: no such file or folder")
    authors = args.checkpoint is not None and args.checkpoint.is_file()
    if not authors and (args.variant or args.num_classes or args.dataset):
        fail("--variant/--num-classes/--dataset: only for a state dict file in the authors' layout")
    heldout = args.heldout or ("test" if authors else "val")
    options = ShpOptions(
        units=args.units,
        pooling=args.pooling,
        fit=args.fit,
        threshold=args.threshold,
        heldout=heldout,
        andc=args.andc,
        batch_size=args.batch_size,
        plots=not args.no_plots,
        seed=args.seed,
    )
    if args.faithful_epochs is not None:
        options = dataclasses.replace(
            options, faithful=dataclasses.replace(options.faithful, epochs=args.faithful_epochs)
        )

    # deferred: the pipeline, torch and mlflow load after the arguments are checked
    from mlflow.exceptions import MlflowException

    # deferred: the pipeline, torch and mlflow load after the arguments are checked
    from analysis.shp.pipeline import analyze_checkpoint
    from cct.config import ConfigError
    from cct.data import DatasetError

    if authors:
        summary = _analyse_authors(args, blocks, device, options)
        _print_summary(summary, args.out)
        return 0
    with tempfile.TemporaryDirectory(prefix="shp-ckpt-") as tmp:
        try:
            if args.run_id:
                # deferred: the pipeline, torch and mlflow load after the arguments are checked
                from analysis.shp.mlflow_io import download_checkpoint

                path = download_checkpoint(args.run_id, Path(tmp), args.tracking_uri)
            else:
                path = args.checkpoint
            summary = analyze_checkpoint(
                path,
                out_dir=args.out,
                blocks=blocks,
                device=device,
                options=options,
            )
            if args.run_id:
                # deferred: the pipeline, torch and mlflow load after the arguments are checked
                from analysis.shp.mlflow_io import log_to_mlflow

                log_to_mlflow(summary, args.out, args.run_id, tracking_uri=args.tracking_uri)
        except (AnalysisError, FileNotFoundError, ConfigError, DatasetError, MlflowException) as e:
            fail(str(e))
    _print_summary(summary, args.out)
    return 0


AUTHORS_DATASETS = {100: "cifar100", 10: "cifar10", 102: "flowers102"}
AUTHORS_NOTE = (
    "a CCT authors' checkpoint: trained on all the training images, so our validation split "
    "was in its training data"
)


def _analyse_authors(args, blocks, device: torch.device, options: ShpOptions) -> dict:
    """The analysis of a state dict in the authors' layout; the summary says where the
    checkpoint came from and which split the matrices were made on."""
    # deferred: the pipeline, torch and mlflow load after the arguments are checked
    from analysis.shp.pipeline import analyze_model, jsonable
    from cct.config import ConfigError, DataConfig
    from cct.data import DatasetError, load_dataset
    from cct.models.authors import AuthorsCheckpointError, load_authors_checkpoint

    try:
        loaded = load_authors_checkpoint(
            args.checkpoint, variant=args.variant, num_classes=args.num_classes
        )
        dataset = args.dataset or AUTHORS_DATASETS.get(loaded.num_classes)
        if dataset is None:
            fail(f"--dataset: none known with {loaded.num_classes} classes; give --dataset")
        data = load_dataset(DataConfig(dataset=dataset), device)
        if data.num_classes != loaded.num_classes:
            fail(
                f"--dataset {dataset}: {data.num_classes} classes, the checkpoint has {loaded.num_classes}"
            )
        summary = analyze_model(
            loaded.model.to(device), data, blocks=blocks, out_dir=args.out, options=options
        )
    except (AuthorsCheckpointError, AnalysisError, ConfigError, DatasetError) as e:
        fail(str(e))
    note = f"{AUTHORS_NOTE}; analysed on {options.heldout}"
    summary["checkpoint"] = {
        "layout": "CCT authors (SHI-Labs/Compact-Transformers)",
        "file": str(args.checkpoint),
        "model": loaded.describe(),
        "dataset": dataset,
        "note": note,
    }
    (args.out / "summary.json").write_text(json.dumps(jsonable(summary), indent=1))
    print(f"{loaded.describe()}\nnote: {note}")
    return summary


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
    print(f"held-out split: {summary.get('heldout')}; written to {out}")
    if "checkpoint" in summary:
        print(f"note: {summary['checkpoint']['note']}")
