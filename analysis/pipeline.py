"""The SHP/SNP analysis of one trained model, end to end (SPEC section 4).

    analyze_model(model, data, blocks=..., units=..., out_dir=...)  -> summary dict

1. train pass   — the frozen network runs once over the training set for all analysed
                  blocks; mean-pooled features stay on the device (and, for seqpool, the
                  token features in half precision when they fit).
2. fit          — a fresh readout per block ("fast": L-BFGS on the cached features;
                  "faithful": the group's SGD recipe on augmented images).
3. held-out pass— the readout's own forward gives the mean logits per true label and the
                  accuracy; its pooling gives the per-label mean features, hence the fields.
4. per block    — fields -> normalised / binary matrices -> clusters, noise, SNR, head label
                  sets, ANDC pruning; written as block_<b>.npz, summary.json and pictures.

`analyze_features` is the same pipeline on any Extractor (block -> tokens), so tests can
plant features with a known answer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.andc import andc_mask, andc_prune, node_label_sets
from analysis.clusters import binarize, cluster_index, find_clusters, normalize
from analysis.features import (
    AnalysisError,
    BlockUnits,
    Extractor,
    Units,
    batches,
    block_units,
    cache_budget,
    collect_train_features,
    model_extractor,
    resolve_blocks,
)
from analysis.fields import check_fields, unit_fields
from analysis.readout import (
    FaithfulRecipe,
    FastRecipe,
    Fit,
    Pooling,
    Readout,
    faithful_optimizer,
    fit_linear,
    train_readouts,
)
from analysis.stats import cluster_stats, label_sets, overlap_matrix, specialisation
from cct.checkpoint import unwrap
from cct.data import DeviceAugment, DeviceData
from cct.data import normalize as normalize_images
from cct.models import CCT


@dataclass(frozen=True)
class ShpOptions:
    """Everything beyond the main choices; the defaults follow SPEC section 4."""

    # The matrices come from the validation split by default: committee selection reads
    # the head label sets and must never see test data (SPEC 6). "test" as in the papers.
    heldout: Literal["val", "test"] = "val"
    # [reconstructed] ANDC: keep W[j, n] where j is on node n's own diagonal, or ("clusters")
    # in the clusters of n's unit; "none" skips it
    andc: Literal["diagonal", "clusters", "none"] = "diagonal"
    andc_iters: int = 50  # "retrain briefly": masked L-BFGS iterations
    batch_size: int = 256  # images per feature pass batch
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA
    # bytes the fast seqpool fit may cache token features in (half precision); None: half
    # the free GPU memory, or 1 GiB on the CPU; 0: always stream them
    token_cache_bytes: int | None = None
    fast: FastRecipe = field(default_factory=FastRecipe)
    faithful: FaithfulRecipe = field(default_factory=FaithfulRecipe)
    seed: int = 0
    plots: bool = True
    max_units_plotted: int = 64


def analyze_model(
    model: CCT,
    data: DeviceData,
    *,
    blocks: str | Sequence[int] = "all",
    units: Units = "heads",
    pooling: Pooling = "mean",
    fit: Fit = "fast",
    threshold: float = 0.3,
    out_dir: Path,
    options: ShpOptions | None = None,
) -> dict[str, Any]:
    """Analyse `blocks` of a trained model on `data`; write block_<b>.npz, summary.json and
    pictures to `out_dir`; return the summary. The model must be on the data's device; it
    is put in eval mode for the analysis and restored afterwards."""
    model = unwrap(model)
    options = options or ShpOptions()
    chosen = resolve_blocks(model, blocks if isinstance(blocks, str) else list(blocks))
    layouts = [block_units(model, b, units) for b in chosen]
    dev = data.train_x.device
    model_dev = next(model.parameters()).device
    if model_dev != dev:
        raise AnalysisError(f"the model is on {model_dev} but the data on {dev}")
    bf16 = options.precision == "bf16" or (options.precision == "auto" and dev.type == "cuda")
    was_training = model.training
    model.eval()  # no dropout, no drop-path, BatchNorm running statistics
    try:
        extract = model_extractor(model, layouts, bf16) if layouts else None
        return analyze_features(
            extract,
            layouts,
            data,
            units=units,
            pooling=pooling,
            fit=fit,
            threshold=threshold,
            out_dir=out_dir,
            options=options,
        )
    finally:
        model.train(was_training)


def analyze_features(
    extract: Extractor | None,
    layouts: list[BlockUnits],
    data: DeviceData,
    *,
    units: str,
    pooling: Pooling,
    fit: Fit,
    threshold: float,
    out_dir: Path,
    options: ShpOptions,
) -> dict[str, Any]:
    """The pipeline on any Extractor: see the module docstring."""
    _check_choices(pooling, fit, threshold, options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    held_x, held_y = (
        (data.val_x, data.val_y) if options.heldout == "val" else (data.test_x, data.test_y)
    )
    summary: dict[str, Any] = {
        "units": units,
        "pooling": pooling,
        "fit": fit,
        "threshold": threshold,
        "heldout": options.heldout,
        "andc_rule": options.andc,
        "num_classes": data.num_classes,
        "n_train": int(data.train_y.shape[0]),
        "n_heldout": int(held_y.shape[0]),
        "options": dataclasses.asdict(options),
        "blocks": [],
    }
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
    t = time.perf_counter()
    readouts, train_pooled = _fit_readouts(extract, layouts, data, pooling, fit, options, summary)
    t1 = time.perf_counter()
    held = _heldout_pass(extract, readouts, held_x, held_y, data, options.batch_size)
    seconds["heldout_pass"] = _sync_time(t1)

    for lay in layouts:
        tb = time.perf_counter()
        entry = _analyse_block(
            lay,
            readouts[lay.block],
            held,
            train_pooled[lay.block],
            data,
            threshold,
            options,
            out_dir,
        )
        entry["seconds"] = time.perf_counter() - tb
        summary["blocks"].append(entry)
    seconds["analysis"] = _sync_time(t)
    if options.plots:
        from analysis.plots import plot_blocks  # matplotlib only when drawing

        tp = time.perf_counter()
        plot_blocks(summary["blocks"], out_dir / "blocks.png")
        seconds["plots"] = time.perf_counter() - tp
    summary = jsonable(summary)
    _write_json(out_dir / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------------------
# passes and fits


def _fit_readouts(
    extract: Extractor,
    layouts: list[BlockUnits],
    data: DeviceData,
    pooling: Pooling,
    fit: Fit,
    options: ShpOptions,
    info: dict[str, Any],
) -> tuple[dict[int, Readout], dict[int, Tensor]]:
    """Fresh readouts fitted on the training split; also the pooled training features under
    each fitted readout's pooling (for the train accuracy and ANDC's retraining)."""
    dev = data.train_x.device
    K = data.num_classes
    n = int(data.train_y.shape[0])
    readouts = {lay.block: Readout(lay.width, K, pooling).to(dev) for lay in layouts}
    fast = options.fast
    seconds = info["seconds"]
    t = time.perf_counter()
    pooled: dict[int, Tensor] = {}
    cache = None
    if pooling == "mean" or fit == "fast":
        pooled, cache = collect_train_features(
            extract,
            _inputs(data.train_x, data, options.batch_size),
            n=n,
            cache_tokens=pooling == "seqpool" and fit == "fast",
            cache_budget_bytes=(
                cache_budget(dev) if options.token_cache_bytes is None else options.token_cache_bytes
            ),
        )
    seconds["train_pass"] = _sync_time(t)

    t = time.perf_counter()
    gen = torch.Generator(device=dev).manual_seed(options.seed)
    if fit == "fast":
        for b, r in readouts.items():
            r.weight.data = fit_linear(
                pooled[b], data.train_y, K, weight_decay=fast.weight_decay, max_iter=fast.max_iter
            )
        if pooling == "seqpool" and fast.seqpool_epochs > 0:
            params = [p for r in readouts.values() for p in r.parameters()]
            opt = torch.optim.Adam(params, lr=fast.seqpool_lr, weight_decay=fast.weight_decay)
            stream = _token_stream(extract, data, cache, fast.seqpool_batch_size, gen, "none")
            train_readouts(
                readouts,
                stream,
                epochs=fast.seqpool_epochs,
                optimizer=opt,
                lr_at=lambda e: fast.seqpool_lr,
            )
            info["seqpool_tokens"] = "cached" if cache is not None else "streamed"
    else:
        rec = options.faithful
        params = [p for r in readouts.values() for p in r.parameters()]
        opt = faithful_optimizer(params, rec)
        stream = _token_stream(extract, data, None, rec.batch_size, gen, rec.augment)
        train_readouts(
            readouts,
            stream,
            epochs=rec.epochs,
            optimizer=opt,
            lr_at=lambda e: rec.lr * rec.lr_decay**e,
        )
    del cache
    seconds["fit"] = _sync_time(t)

    if pooling == "seqpool":  # pooled features depend on the fitted score: one more pass
        t = time.perf_counter()
        pooled = _pooled_pass(extract, readouts, data.train_x, data, options.batch_size)
        seconds["train_pooled_pass"] = _sync_time(t)
    return readouts, pooled


def _inputs(x: Tensor, data: DeviceData, batch_size: int) -> Iterator[Tensor]:
    for xb, _ in batches(x, x, batch_size):
        yield normalize_images(xb, data.mean, data.std)


def _token_stream(
    extract: Extractor,
    data: DeviceData,
    cache: dict[int, Tensor] | None,
    batch_size: int,
    gen: torch.Generator,
    augment: str,
):
    """(epoch) -> shuffled batches of (tokens per block, soft targets): from the half-precision
    cache, or by re-running the frozen network on (augmented) images."""
    n, K, dev = int(data.train_y.shape[0]), data.num_classes, data.train_x.device
    spec = data.augment
    if augment == "geometric":  # shifts and flips only, hard labels
        spec = dataclasses.replace(spec, mixup=0.0, cutmix=0.0, erase_prob=0.0, label_smoothing=0.0)
    aug = DeviceAugment(spec, K, data.mean, data.std) if augment != "none" else None

    def stream(epoch: int):
        order = torch.randperm(n, generator=gen, device=dev)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            y = data.train_y[idx]
            if cache is not None:
                yield {b: c[idx].float() for b, c in cache.items()}, F.one_hot(y, K).float()
                continue
            if aug is None:
                x, targets = (
                    normalize_images(data.train_x[idx], data.mean, data.std),
                    F.one_hot(y, K).float(),
                )
            else:
                x, targets = aug(data.train_x[idx], y, gen)
            yield extract(x), targets

    return stream


@torch.no_grad()
def _pooled_pass(
    extract: Extractor, readouts: dict[int, Readout], x: Tensor, data: DeviceData, batch_size: int
) -> dict[int, Tensor]:
    parts: dict[int, list[Tensor]] = {b: [] for b in readouts}
    for xb in _inputs(x, data, batch_size):
        tokens = extract(xb)
        for b, r in readouts.items():
            parts[b].append(r.pool(tokens[b]))
    return {b: torch.cat(p) for b, p in parts.items()}


@dataclass
class _Held:
    """Per block: per-sample pooled features, per-label sums; shared labels and counts."""

    pooled: dict[int, Tensor]  # (n, W) float32
    pooled_sum: dict[int, Tensor]  # (K, W) float64
    logits_sum: dict[int, Tensor]  # (K, K) float64, from the readout's forward
    correct: dict[int, Tensor]  # () int64
    y: Tensor
    counts: Tensor  # (K,)


@torch.no_grad()
def _heldout_pass(
    extract: Extractor,
    readouts: dict[int, Readout],
    x: Tensor,
    y: Tensor,
    data: DeviceData,
    batch_size: int,
) -> _Held:
    K, dev = data.num_classes, x.device
    held = _Held({b: [] for b in readouts}, {}, {}, {}, y, torch.bincount(y, minlength=K))
    for b, r in readouts.items():
        held.pooled_sum[b] = torch.zeros(K, r.weight.shape[1], dtype=torch.float64, device=dev)
        held.logits_sum[b] = torch.zeros(K, K, dtype=torch.float64, device=dev)
        held.correct[b] = torch.zeros((), dtype=torch.int64, device=dev)
    for xb, yb in batches(x, y, batch_size):
        tokens = extract(normalize_images(xb, data.mean, data.std))
        for b, r in readouts.items():
            logits = r(tokens[b])  # the readout's own forward, independent of the fields
            pooled = r.pool(tokens[b])
            held.pooled[b].append(pooled)
            held.pooled_sum[b].index_add_(0, yb, pooled.double())
            held.logits_sum[b].index_add_(0, yb, logits.double())
            held.correct[b] += (logits.argmax(1) == yb).sum()
    held.pooled = {b: torch.cat(p) for b, p in held.pooled.items()}
    return held


# --------------------------------------------------------------------------------------
# one block: fields -> matrices -> clusters -> statistics -> ANDC -> files


def _analyse_block(
    lay: BlockUnits,
    readout: Readout,
    held: _Held,
    train_pooled: Tensor,
    data: DeviceData,
    threshold: float,
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
    binary = binarize(normalized, threshold)
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
    arrays: dict[str, np.ndarray] = {}
    if options.andc != "none":
        if options.andc == "diagonal":  # each node's own diagonal
            mask = andc_mask(node_label_sets(weight, class_pooled, threshold))
        else:  # the clusters of each node's unit
            mask = andc_mask(sets, lay.unit_size)
        report, pruned_w = andc_prune(
            weight,
            mask,
            train_pooled=train_pooled,
            train_y=data.train_y,
            heldout_pooled=held.pooled[b],
            heldout_y=held.y,
            weight_decay=options.fast.weight_decay,
            iters=options.andc_iters,
        )
        entry["andc"] = {"rule": options.andc, **report}
        arrays["andc_mask"] = mask
        arrays["andc_weight"] = pruned_w.cpu().numpy().astype(np.float32)

    np.savez_compressed(
        out_dir / f"block_{b}.npz",
        fields=f.astype(np.float32),
        logits=logits.cpu().numpy().astype(np.float32),
        normalized=normalized.astype(np.float32),
        binary=binary,
        clusters=np.stack([cluster_index(c, K) for c in clusters]).astype(np.int16),
        label_sets=sets,
        overlaps=overlap_matrix(sets).astype(np.int32),
        readout_weight=weight.cpu().numpy().astype(np.float32),
        label_counts=held.counts.cpu().numpy(),
        **arrays,
    )
    if options.plots:
        from analysis.plots import plot_unit_matrices

        title = f"block {b} ({lay.kind}), {lay.unit}s, readout acc {acc:.3f}"
        for name, mats, is_binary in (("normalized", normalized, False), ("binary", binary, True)):
            plot_unit_matrices(
                mats,
                out_dir / f"block_{b}_{name}.png",
                title=f"{title}: {name} (threshold {threshold})"
                if is_binary
                else f"{title}: {name}",
                unit_name=lay.unit,
                binary=is_binary,
                max_units=options.max_units_plotted,
            )
    return entry


# --------------------------------------------------------------------------------------
# small helpers


def _check_choices(pooling: str, fit: str, threshold: float, options: ShpOptions) -> None:
    if pooling not in ("mean", "seqpool"):
        raise AnalysisError(f"pooling={pooling!r}: choose from mean, seqpool")
    if fit not in ("fast", "faithful"):
        raise AnalysisError(f"fit={fit!r}: choose from fast, faithful")
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


def _sync_time(t0: float) -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # timing only: the device work must be finished
    return time.perf_counter() - t0


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
