"""The passes over the data behind the analysis: fit every analysed block's readout on the
training split, then one held-out pass for logits, accuracy and per-label mean features.

Each pass runs the frozen network once per batch for all analysed blocks (see features.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.shp.features import (
    BlockUnits,
    Extractor,
    batches,
    cache_budget,
    collect_train_features,
)
from analysis.shp.options import ShpOptions
from analysis.shp.readout import (
    Fit,
    Pooling,
    Readout,
    faithful_optimizer,
    fit_linear,
    train_readouts,
)
from cct.data import DeviceAugment, DeviceData
from cct.data import normalize as normalize_images


def fit_readouts(
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
                cache_budget(dev)
                if options.token_cache_bytes is None
                else options.token_cache_bytes
            ),
        )
    seconds["train_pass"] = sync_time(t)

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
    seconds["fit"] = sync_time(t)

    if pooling == "seqpool":  # pooled features depend on the fitted score: pool again
        t = time.perf_counter()
        if cache is not None:
            with torch.no_grad():
                pooled = {
                    b: torch.cat([r.pool(c.float()) for c in cache[b].split(options.batch_size)])
                    for b, r in readouts.items()
                }
        else:
            pooled = _pooled_pass(extract, readouts, data.train_x, data, options.batch_size)
        seconds["train_pooled_pass"] = sync_time(t)
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
class HeldOut:
    """Per block: per-sample pooled features, per-label sums; shared labels and counts."""

    pooled: dict[int, Tensor]  # (n, W) float32
    pooled_sum: dict[int, Tensor]  # (K, W) float64
    logits_sum: dict[int, Tensor]  # (K, K) float64, from the readout's forward
    correct: dict[int, Tensor]  # () int64
    y: Tensor
    counts: Tensor  # (K,)


@torch.no_grad()
def heldout_pass(
    extract: Extractor,
    readouts: dict[int, Readout],
    x: Tensor,
    y: Tensor,
    data: DeviceData,
    batch_size: int,
) -> HeldOut:
    K, dev = data.num_classes, x.device
    held = HeldOut({b: [] for b in readouts}, {}, {}, {}, y, torch.bincount(y, minlength=K))
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


def sync_time(t0: float) -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # timing only: the device work must be finished
    return time.perf_counter() - t0
