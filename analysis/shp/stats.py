"""Per-block statistics (SPEC 4.6) and head specialisation (SPEC 4.7).

Cluster figures come two ways: over the units that have at least one cluster (the main
figures, as the papers average) and over all units (`*_all_units`). SNR [reconstructed],
two variants side by side, over units with a cluster:
  snr_labels = mean labels in clusters / mean noise
  snr_area   = mean ones inside the cluster blocks / mean noise
A zero mean noise gives null SNRs (JSON holds no infinity) and noise_free = true.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.shp.clusters import noise


def _mean(a: np.ndarray) -> float | None:
    return float(a.mean()) if a.size else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def cluster_stats(binary: np.ndarray, clusters: list[list[list[int]]]) -> dict[str, Any]:
    """Cluster, noise and SNR figures of one block; binary (U, K, K), clusters per unit."""
    n_clusters = np.array([len(c) for c in clusters], dtype=np.float64)
    labels = np.array([sum(len(x) for x in c) for c in clusters], dtype=np.float64)
    area = np.array([sum(len(x) ** 2 for x in c) for c in clusters], dtype=np.float64)
    noises = np.array([noise(b, c) for b, c in zip(binary, clusters)], dtype=np.float64)
    has = n_clusters > 0
    mean_noise = _mean(noises[has])
    mean_labels = _mean(labels[has])
    mean_area = _mean(area[has])
    total = n_clusters.sum()
    return {
        "num_units": len(clusters),
        "units_with_cluster": int(has.sum()),
        "clusters_per_unit": _mean(n_clusters),
        "clusters_per_clustered_unit": _mean(n_clusters[has]),
        "mean_cluster_size": float(labels.sum() / total) if total else None,
        "mean_labels_in_clusters": mean_labels,
        "mean_labels_in_clusters_all_units": _mean(labels),
        "mean_area_in_clusters": mean_area,
        "mean_area_in_clusters_all_units": _mean(area),
        "mean_noise": mean_noise,
        "mean_noise_all_units": _mean(noises),
        "snr_labels": _ratio(mean_labels, mean_noise),
        "snr_area": _ratio(mean_area, mean_noise),
        "noise_free": mean_noise == 0.0,
        "unit_noise": noises.astype(int).tolist(),  # per unit
        "unit_clusters": n_clusters.astype(int).tolist(),  # per unit
    }


def label_sets(binary: np.ndarray) -> np.ndarray:
    """(U, K) bool: the labels each unit recognises — the ones on its diagonal.

    Every diagonal label lands in some cluster (singletons count), so this is also the union
    of the unit's clusters: the "diagonal" and "cluster" readings of a label set coincide.
    """
    return np.diagonal(binary, axis1=1, axis2=2).astype(bool).copy()


def specialisation(sets: np.ndarray) -> dict[str, Any]:
    """Head label-set figures: sizes, pairwise overlaps, label coverage, heads per label.

    sets (U, K) bool. Overlap of units u != v = |S_u & S_v|; Jaccard = overlap / |S_u | S_v|
    (pairs of two empty sets are left out of the Jaccard mean)."""
    s = sets.astype(np.int64)
    U, K = s.shape
    overlap = s @ s.T  # (U, U)
    sizes = s.sum(1)
    union = sizes[:, None] + sizes[None, :] - overlap
    iu = np.triu_indices(U, k=1)
    pair_overlap = overlap[iu]
    pair_union = union[iu]
    jac = pair_overlap[pair_union > 0] / pair_union[pair_union > 0]
    per_label = s.sum(0)
    return {
        "label_sets": [np.flatnonzero(row).tolist() for row in sets],
        "label_set_sizes": sizes.tolist(),
        "label_set_size_mean": _mean(sizes.astype(np.float64)),
        "pairwise_overlap_mean": _mean(pair_overlap.astype(np.float64)),
        "pairwise_overlap_max": int(pair_overlap.max()) if pair_overlap.size else None,
        "pairwise_jaccard_mean": _mean(jac),
        "coverage": float((per_label > 0).mean()) if K else None,
        "uncovered_labels": np.flatnonzero(per_label == 0).tolist(),
        "heads_per_label": per_label.tolist(),
        "heads_per_label_mean": _mean(per_label.astype(np.float64)),
        "heads_per_label_min": int(per_label.min()) if K else None,
        "heads_per_label_max": int(per_label.max()) if K else None,
    }


def overlap_matrix(sets: np.ndarray) -> np.ndarray:
    """(U, U) int: |S_u & S_v| (diagonal: the set sizes)."""
    s = sets.astype(np.int64)
    return s @ s.T
