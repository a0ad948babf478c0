"""The SHP/SNP analysis of one trained model, end to end (SPEC section 4).

    analyze_model(model, data, blocks=..., out_dir=..., options=ShpOptions(...))  -> summary
    analyze_checkpoint(checkpoint_folder, out_dir=..., blocks=..., options=...)  -> summary

1. train pass   — the frozen network runs once over the training set for all analysed
                  blocks; mean-pooled features stay on the device (and, for seqpool, the
                  token features in half precision when they fit).
2. fit          — a fresh readout per block ("fast": L-BFGS on the cached features;
                  "faithful": the group's SGD recipe on augmented images).
3. held-out pass— the readout's own forward gives the mean logits per true label and the
                  accuracy; its pooling gives the per-label mean features, hence the fields.
4. per block    — fields -> normalised / binary matrices -> clusters, noise, SNR, head label
                  sets, ANDC pruning; written as block_<b>.npz, summary.json and pictures.
Steps 1-3 live in passes.py, step 4 here.

`analyze_features` is the same pipeline on any Extractor (block -> tokens), so tests can
plant features with a known answer.

Outputs (a "unit" is a head for units="heads", else a node; a filter on conv blocks):
  block_<b>.npz   fields (U, K, K) raw mean fields, row = true label, column = output;
                  logits (K, K) the readout's mean logits per true label (its own forward);
                  normalized, binary (U, K, K); clusters (U, K) cluster number per label or -1;
                  label_sets (U, K); overlaps (U, U); readout_weight (K, W); label_counts (K,);
                  andc_mask (K, W), andc_weight (K, W) unless andc="none"
  summary.json    run settings, seconds per stage, and `blocks`: per block `block`, `kind`,
                  `unit`, `num_units`, `readout_accuracy` (held-out), cluster figures
                  (`clusters_per_unit`, `mean_cluster_size`, `mean_labels_in_clusters`,
                  `mean_noise`, ... and `*_all_units`), `snr_labels`, `snr_area` (null when
                  `noise_free`), head label-set figures (`label_sets`, `coverage`,
                  `heads_per_label`, `pairwise_overlap_mean`, ...), `andc`; never NaN/Infinity
  block_<b>_normalized.png, block_<b>_binary.png, blocks.png
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from torch import Tensor

from analysis.progress import bar
from analysis.shp.andc import andc_mask, andc_prune, class_means, node_label_sets, split_halves
from analysis.shp.clusters import binarize, cluster_index, find_clusters, normalize
from analysis.shp.features import (
    UNITS,
    AnalysisError,
    BlockUnits,
    Extractor,
    block_units,
    model_extractor,
    resolve_blocks,
)
from analysis.shp.fields import check_fields, unit_fields
from analysis.shp.options import ShpOptions
from analysis.shp.passes import HeldOut, fit_readouts, heldout_pass, sync_time
from analysis.shp.readout import Fit, Pooling, Readout
from analysis.shp.stats import cluster_stats, label_sets, overlap_matrix, specialisation
from cct.checkpoint import load_model, unwrap
from cct.config import TrainConfig
from cct.data import DeviceData, load_dataset
from cct.device import resolve_device, use_bf16
from cct.models import CCT

__all__ = ["ShpOptions", "analyze_checkpoint", "analyze_features", "analyze_model", "jsonable"]


def analyze_model(
    model: CCT,
    data: DeviceData,
    *,
    blocks: str | Sequence[int] = "all",
    out_dir: Path,
    options: ShpOptions | None = None,
) -> dict[str, Any]:
    """Analyse `blocks` of a trained model on `data`; write block_<b>.npz, summary.json and
    pictures to `out_dir`; return the summary. The model must be on the data's device; it
    is put in eval mode for the analysis and restored afterwards."""
    model = unwrap(model)
    options = options or ShpOptions()
    _check_choices(options)
    chosen = resolve_blocks(model, blocks if isinstance(blocks, str) else list(blocks))
    layouts = [block_units(model, b, options.units) for b in chosen]
    dev = data.train_x.device
    model_dev = next(model.parameters()).device
    if model_dev != dev:
        raise AnalysisError(f"the model is on {model_dev} but the data on {dev}")
    bf16 = use_bf16(options.precision, dev)
    was_training = model.training
    model.eval()  # no dropout, no drop-path, BatchNorm running statistics
    try:
        extract = model_extractor(model, layouts, bf16) if layouts else None
        return analyze_features(extract, layouts, data, out_dir=out_dir, options=options)
    finally:
        model.train(was_training)


def analyze_checkpoint(
    checkpoint: Path,
    *,
    out_dir: Path,
    blocks: str | Sequence[int] = "all",
    device: str | torch.device = "auto",
    options: ShpOptions | None = None,
    data: DeviceData | None = None,
) -> dict[str, Any]:
    """analyze_model on a checkpoint folder: rebuild the model, check the blocks, then load
    the dataset its config names (same split seed, so the same held-out images), unless
    `data` is that dataset already on `device` (the training run's own copy).
    device "auto" is the current CUDA device when there is one, else the CPU."""

    device = resolve_device(device, with_index=True)
    checkpoint = Path(checkpoint)
    if not (checkpoint / "model.json").is_file() or not (checkpoint / "model.pt").is_file():
        raise FileNotFoundError(
            f"{checkpoint}: not a checkpoint folder (needs model.json and model.pt)"
        )
    model, description = load_model(checkpoint, map_location=device)
    _check_choices(options or ShpOptions())
    resolve_blocks(model, blocks if isinstance(blocks, str) else list(blocks))  # before data
    if data is None:
        data = load_dataset(TrainConfig.from_dict(description["config"]).data, device)
    return analyze_model(model.to(device), data, blocks=blocks, out_dir=out_dir, options=options)


def analyze_features(
    extract: Extractor | None,
    layouts: list[BlockUnits],
    data: DeviceData,
    *,
    out_dir: Path,
    options: ShpOptions,
) -> dict[str, Any]:
    """The pipeline on any Extractor: see the module docstring."""
    _check_choices(options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    held_x, held_y = (
        (data.val_x, data.val_y) if options.heldout == "val" else (data.test_x, data.test_y)
    )
    summary = _settings(data, held_y, options)
    if not layouts:
        summary = jsonable(summary)
        _write_json(out_dir / "summary.json", summary)
        return summary
    if extract is None:
        raise AnalysisError("blocks to analyse but no feature extractor")
    if held_y.numel() == 0:
        raise AnalysisError(f"the {options.heldout} split is empty: nothing to build matrices on")

    seconds: dict[str, float] = {}
    summary["seconds"] = seconds
    # a tick for the readouts, the held-out pass, each block and the plots
    with bar(2 + len(layouts) + bool(options.plots), "SHP analysis") as ticks:
        t = time.perf_counter()
        ticks.set_postfix_str("training features and readouts")
        readouts, train_pooled = fit_readouts(
            extract, layouts, data, options.pooling, options.fit, options, summary
        )
        ticks.update()
        t1 = time.perf_counter()
        ticks.set_postfix_str("held-out pass")
        held = heldout_pass(extract, readouts, held_x, held_y, data, options.batch_size)
        seconds["heldout_pass"] = sync_time(t1)
        ticks.update()

        for lay in layouts:
            ticks.set_postfix_str(f"block {lay.block}")
            tb = time.perf_counter()
            entry = _analyse_block(
                lay,
                readouts[lay.block],
                held,
                train_pooled[lay.block],
                data,
                options,
                out_dir,
            )
            entry["seconds"] = time.perf_counter() - tb
            summary["blocks"].append(entry)
            ticks.update()
        seconds["analysis"] = sync_time(t)
        if options.plots:
            # deferred: matplotlib (about 1.4 s) only when plots are asked for
            from analysis.shp.plots import plot_blocks  # matplotlib only when drawing

            ticks.set_postfix_str("plots")
            tp = time.perf_counter()
            plot_blocks(summary["blocks"], out_dir / "blocks.png")
            seconds["plots"] = time.perf_counter() - tp
            ticks.update()
    summary = jsonable(summary)
    _write_json(out_dir / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------------------
# one block: fields -> matrices -> clusters -> statistics -> ANDC -> files


def _analyse_block(
    lay: BlockUnits,
    readout: Readout,
    held: HeldOut,
    train_pooled: Tensor,
    data: DeviceData,
    options: ShpOptions,
    out_dir: Path,
) -> dict[str, Any]:
    b, K = lay.block, data.num_classes
    weight = readout.weight.detach()
    denom = held.counts.clamp_min(1).double()[:, None]  # labels absent from held-out: rows 0
    class_pooled = held.pooled_sum[b] / denom
    logits = held.logits_sum[b] / denom
    fields = unit_fields(weight, class_pooled, lay.unit_size)  # (U, K, K)
    err = check_fields(fields, logits)

    f = fields.cpu().numpy()
    normalized = normalize(f)
    binary = binarize(normalized, options.threshold)
    clusters = [find_clusters(m) for m in binary]
    sets = label_sets(binary)

    acc = float(held.correct[b]) / int(held.y.shape[0])
    train_acc = float(((train_pooled @ weight.t()).argmax(1) == data.train_y).float().mean())
    entry: dict[str, Any] = {
        "block": b,
        "kind": lay.kind,
        "unit": lay.unit,
        "num_units": lay.num_units,
        "unit_size": lay.unit_size,
        "width": lay.width,
        "readout_accuracy": acc,
        "readout_train_accuracy": train_acc,
        "fields_check_max_abs_error": err,
        **cluster_stats(binary, clusters),
        **specialisation(sets),
    }
    arrays: dict[str, np.ndarray] = {
        "fields": f.astype(np.float32),
        "logits": logits.cpu().numpy().astype(np.float32),
        "normalized": normalized.astype(np.float32),
        "binary": binary,
        "clusters": np.stack([cluster_index(c, K) for c in clusters]).astype(np.int16),
        "label_sets": sets,
        "overlaps": overlap_matrix(sets).astype(np.int32),
        "readout_weight": weight.cpu().numpy().astype(np.float32),
        "label_counts": held.counts.cpu().numpy(),
    }
    if options.andc != "none":
        report, mask, pruned_w = _andc(lay, weight, held, train_pooled, data, options)
        entry["andc"] = {"rule": options.andc, **report}
        arrays["andc_mask"] = mask
        arrays["andc_weight"] = pruned_w.cpu().numpy().astype(np.float32)

    np.savez_compressed(out_dir / f"block_{b}.npz", **arrays)
    if options.plots:
        title = f"block {b} ({lay.kind}), {lay.unit}s, readout acc {acc:.3f}"
        _plot_block(lay, normalized, binary, title, options, out_dir)
    return entry


def _andc(
    lay: BlockUnits,
    weight: Tensor,
    held: HeldOut,
    train_pooled: Tensor,
    data: DeviceData,
    options: ShpOptions,
) -> tuple[dict[str, Any], np.ndarray, Tensor]:
    """ANDC with its mask chosen on one half of the held-out images (each node's own
    diagonal, or the clusters of each node's unit) and its accuracies on the other half."""
    b, K = lay.block, data.num_classes
    pooled = held.pooled[b]
    choose, judge = split_halves(len(held.y), options.seed, pooled.device)
    class_pooled = class_means(pooled[choose], held.y[choose], K)
    if options.andc == "diagonal":
        mask = andc_mask(node_label_sets(weight, class_pooled, options.threshold))
    else:
        f = unit_fields(weight, class_pooled, lay.unit_size).cpu().numpy()
        mask = andc_mask(label_sets(binarize(normalize(f), options.threshold)), lay.unit_size)
    report, pruned_w = andc_prune(
        weight,
        mask,
        train_pooled=train_pooled,
        train_y=data.train_y,
        heldout_pooled=pooled[judge],
        heldout_y=held.y[judge],
        weight_decay=options.fast.weight_decay,
        iters=options.andc_iters,
    )
    report = {**report, "mask_images": int(len(choose)), "accuracy_images": int(len(judge))}
    return report, mask, pruned_w


def _plot_block(
    lay: BlockUnits,
    normalized: np.ndarray,
    binary: np.ndarray,
    title: str,
    options: ShpOptions,
    out_dir: Path,
) -> None:
    # deferred: matplotlib (about 1.4 s) only when plots are asked for
    from analysis.shp.plots import plot_unit_matrices  # matplotlib only when drawing

    for name, mats, is_binary in (("normalized", normalized, False), ("binary", binary, True)):
        plot_unit_matrices(
            mats,
            out_dir / f"block_{lay.block}_{name}.png",
            title=f"{title}: {name}" + (f" (threshold {options.threshold})" if is_binary else ""),
            unit_name=lay.unit,
            binary=is_binary,
            max_units=options.max_units_plotted,
        )


# --------------------------------------------------------------------------------------
# small helpers


def _settings(data: DeviceData, held_y: Tensor, options: ShpOptions) -> dict[str, Any]:
    """The head of summary.json: how the analysis was made, on how many images."""
    return {
        "units": options.units,
        "pooling": options.pooling,
        "fit": options.fit,
        "threshold": options.threshold,
        "heldout": options.heldout,
        "andc_rule": options.andc,
        "num_classes": data.num_classes,
        "n_train": int(data.train_y.shape[0]),
        "n_heldout": int(held_y.shape[0]),
        "options": dataclasses.asdict(options),
        "blocks": [],
    }


def _check_choices(options: ShpOptions) -> None:
    for what, value, choices in (
        ("units", options.units, UNITS),
        ("pooling", options.pooling, get_args(Pooling)),
        ("fit", options.fit, get_args(Fit)),
    ):
        if value not in choices:
            raise AnalysisError(f"{what}={value!r}: choose from {', '.join(choices)}")
    threshold = options.threshold
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise AnalysisError(f"threshold={threshold!r}: must be in (0, 1]")
    if options.heldout not in ("val", "test"):
        raise AnalysisError(f"heldout={options.heldout!r}: choose from val, test")
    if options.andc not in ("diagonal", "clusters", "none"):
        raise AnalysisError(f"andc={options.andc!r}: choose from diagonal, clusters, none")
    if options.faithful.augment not in ("geometric", "train", "none"):
        raise AnalysisError(
            f"faithful augment={options.faithful.augment!r}: choose from geometric, train, none"
        )


def jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become null (JSON cannot hold them)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _write_json(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(jsonable(summary), indent=1, allow_nan=False))
