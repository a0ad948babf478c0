"""ANDC pruning [reconstructed] (SPEC 4.8).

Keep readout weight W[j, n] only where label j is recognised by node n, zero the rest, and
retrain briefly with the mask held (a short masked L-BFGS from the pruned weights on the
cached pooled training features, pooling unchanged). Two rules:
- "diagonal" (default): label j is on the diagonal of node n's own binarised matrix — the
  single-node field of n, computed from the same readout, whatever the analysed units are;
- "clusters" (variant): label j is in a cluster of n's unit (its head, for units="heads").
Singletons count as clusters, so for single-node units (nodes, ff, filters) both coincide.
Reports the pruned fraction and held-out accuracy before, right after pruning, and after
the retraining. The mask is chosen on one half of the held-out images and the accuracies
measured on the other (`split_halves`): a mask chosen and judged on the same images would
flatter itself.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from analysis.shp.clusters import binarize, normalize
from analysis.shp.fields import unit_fields
from analysis.shp.readout import fit_linear
from analysis.shp.stats import label_sets


def andc_mask(sets: np.ndarray, unit_size: int = 1) -> np.ndarray:
    """(K, W) bool from label sets (U, K) of units of `unit_size` nodes:
    mask[j, n] = label j in the set of n's unit (unit_size 1: node n's own set)."""
    return np.repeat(np.asarray(sets, dtype=bool).T, unit_size, axis=1)


def node_label_sets(weight: Tensor, class_mean_pooled: Tensor, threshold: float) -> np.ndarray:
    """(W, K) bool: the diagonal of every node's own binarised single-node matrix."""
    fields = unit_fields(weight, class_mean_pooled, 1).cpu().numpy()  # (W, K, K)
    return label_sets(binarize(normalize(fields), threshold))


def split_halves(n: int, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Two disjoint halves of n held-out positions, fixed by `seed`: (choose, judge)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).to(device)
    return perm[: n // 2], perm[n // 2 :]


def class_means(pooled: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """(K, W) float64 mean pooled feature per label (labels absent: zero rows)."""
    sums = torch.zeros(num_classes, pooled.shape[1], dtype=torch.float64, device=pooled.device)
    sums.index_add_(0, y, pooled.double())
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1).double()[:, None]
    return sums / counts


def accuracy(weight: Tensor, pooled: Tensor, y: Tensor) -> float:
    return float(((pooled @ weight.t()).argmax(1) == y).float().mean())


def andc_prune(
    weight: Tensor,
    mask: np.ndarray,
    *,
    train_pooled: Tensor,
    train_y: Tensor,
    heldout_pooled: Tensor,
    heldout_y: Tensor,
    weight_decay: float,
    iters: int,
) -> tuple[dict[str, Any], Tensor]:
    """Prune `weight` (K, W) to `mask`, retrain `iters` masked L-BFGS steps; (report, weights)."""
    t = time.perf_counter()
    m = torch.as_tensor(mask, device=weight.device)
    pruned = weight * m
    retrained = fit_linear(
        train_pooled,
        train_y,
        weight.shape[0],
        weight_decay=weight_decay,
        max_iter=iters,
        init=pruned,
        mask=m,
    )
    report = {
        "pruned_fraction": float(1.0 - m.float().mean()),
        "accuracy_before": accuracy(weight, heldout_pooled, heldout_y),
        "accuracy_pruned": accuracy(pruned, heldout_pooled, heldout_y),
        "accuracy_after": accuracy(retrained, heldout_pooled, heldout_y),
        "retrain_iters": iters,
        "seconds": time.perf_counter() - t,
    }
    return report, retrained
