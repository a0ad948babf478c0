"""The untrained reference of a trial's SHP analysis (SPEC 8: "the same analysis of an
untrained or label-shuffled model as the reference"): the trial's architecture with its
initial weights - re-drawn as the engine draws them, torch.manual_seed(the trial's seed)
then the engine's own build_model - analysed by the very pipeline and options of the trained
model, on the same data, in the trial itself (where the data are already on the device).
Logged under `shp_reference/` (analysis/runs.py), never over `shp/`.

Whatever the untrained model shows along the blocks (a readout on deeper random features, a
threshold that favours some block widths) is the pipeline's own trend; the report subtracts
it from the trained model's.

    analyse_reference(checkpoint, out_dir=..., data=..., **options) -> summary
    log_reference(summary, out_dir, run_id, client)
    run_reference(tracker, checkpoint, options, data)   # the worker's hook
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from analysis.runs import SHP_REFERENCE_DIR
from analysis.shp.options import ShpOptions
from analysis.shp.pipeline import analyze_model
from cct.checkpoint import read_description
from cct.config import TrainConfig
from cct.data import DeviceData
from cct.engine import build_model
from cct.models import CCT

REFERENCE = "untrained"  # the summary's `reference` field: what the model is


def untrained_model(checkpoint: Path, data: DeviceData) -> CCT:
    """The checkpoint's architecture with the initial weights its trial drew: the engine
    seeds with the config's seed and calls build_model next (cct/engine.py), so do we."""
    cfg = TrainConfig.from_dict(read_description(Path(checkpoint))["config"])
    with torch.random.fork_rng(devices=[]):  # leave the caller's generator as it was
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, data)
    return model.to(data.train_x.device).eval()


def analyse_reference(
    checkpoint: Path,
    *,
    out_dir: Path,
    data: DeviceData,
    blocks: str | Sequence[int] = "all",
    options: ShpOptions | None = None,
) -> dict[str, Any]:
    """analyze_model on the untrained model of `checkpoint`, with the trained model's blocks
    and options, on `data` (the trial's own)."""
    model = untrained_model(checkpoint, data)
    summary = analyze_model(model, data, blocks=blocks, out_dir=Path(out_dir), options=options)
    summary["reference"] = REFERENCE
    return summary


def log_reference(
    summary: dict[str, Any], out_dir: Path, run_id: str, client: MlflowClient
) -> None:
    """The reference's folder under `shp_reference/` of the trial's run (no metrics: the
    per-block metrics belong to the trained model)."""
    del summary  # written into out_dir by the pipeline
    client.log_artifacts(run_id, str(out_dir), artifact_path=SHP_REFERENCE_DIR)


def run_reference(tracker: Any, checkpoint: Path, options: dict[str, Any], data: Any) -> None:
    """The worker's hook: analyse and log the reference when the sweep asks for it
    (analysis.reference: true); `tracker` a RunTracker (anything without run_id: not logged)."""
    settings = dict(options)  # the sweep file's `analysis:` section
    if not settings.pop("reference", False):
        return
    blocks = settings.pop("blocks", "all")
    with tempfile.TemporaryDirectory(prefix="shp-reference-") as out:
        summary = analyse_reference(
            checkpoint, out_dir=Path(out), data=data, blocks=blocks, options=ShpOptions(**settings)
        )
        if getattr(tracker, "run_id", None):
            log_reference(summary, Path(out), tracker.run_id, tracker.client)
