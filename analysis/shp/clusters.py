"""Label matrices and greedy square clusters (SPEC 4.4-4.5).

normalise: each unit's F[u] divided by its own maximum; a unit whose maximum is not positive
gets an all-zero matrix. binarise: 1 where the normalised value is >= threshold.
Clusters: candidates are the labels whose diagonal element is 1. In label order, the first
free candidate seeds a cluster; every later free candidate joins it if the cluster stays an
all-ones square block (every row and column pair among its labels is 1). Then the next free
candidate seeds the next cluster. Singletons count. Noise = ones outside the cluster blocks.
"""

from __future__ import annotations

import numpy as np

from cct.config import SHP_THRESHOLD_RANGE


def normalize(fields: np.ndarray) -> np.ndarray:
    """(U, K, K) -> each unit divided by its own max; all zero where the max is not positive."""
    f = np.asarray(fields, dtype=np.float64)
    peak = f.reshape(f.shape[0], -1).max(1)
    out = np.zeros_like(f)
    pos = peak > 0
    out[pos] = f[pos] / peak[pos, None, None]
    return out


def binarize(normalized: np.ndarray, threshold: float) -> np.ndarray:
    """1 where normalized >= threshold. threshold must be in (0, 1] so all-zero units stay zero."""
    if SHP_THRESHOLD_RANGE.problem(threshold):
        raise ValueError(f"threshold {SHP_THRESHOLD_RANGE.problem(threshold)}")
    return (np.asarray(normalized) >= threshold).astype(np.uint8)


def find_clusters(binary: np.ndarray) -> list[list[int]]:
    """Greedy all-ones square clusters of one (K, K) binary matrix, in label order."""
    b = np.asarray(binary).astype(bool).tolist()  # Python lists: fast scalar access
    free = [i for i in range(len(b)) if b[i][i]]
    clusters: list[list[int]] = []
    while free:
        cluster = [free[0]]
        for d in free[1:]:
            if all(b[d][c] and b[c][d] for c in cluster):
                cluster.append(d)
        clusters.append(cluster)
        taken = set(cluster)
        free = [i for i in free if i not in taken]
    return clusters


def noise(binary: np.ndarray, clusters: list[list[int]]) -> int:
    """Ones outside the cluster blocks (the blocks are all ones by construction)."""
    return int(np.asarray(binary).astype(bool).sum()) - sum(len(c) ** 2 for c in clusters)


def cluster_index(clusters: list[list[int]], num_classes: int) -> np.ndarray:
    """(K,) int: the cluster number of each label, -1 outside any cluster."""
    out = np.full(num_classes, -1, dtype=np.int64)
    for k, c in enumerate(clusters):
        out[c] = k
    return out
