"""Fixed-seed hold-out splits and the hash that names them.

The validation set must be the same for every trial of a sweep (SPEC 3), so it depends only
on (labels, size, split_seed) — never on the training seed — and is summarized by a short
hash that every trial logs, so two runs can be checked to have used the same split.
"""

from __future__ import annotations

import hashlib

import numpy as np


def holdout(labels: np.ndarray, size: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..N-1 into (kept, held) with exactly `size` held, both ascending.

    Stratified: after a seeded shuffle, each sample is keyed by its rank within its class
    divided by the class size, so taking the `size` smallest keys takes every class in
    proportion (up to rounding). `stream` separates several hold-outs made from one seed.
    """
    n = len(labels)
    if not 0 <= size < n:
        raise ValueError(f"cannot hold out {size} of {n} samples (need 0 <= size < {n})")
    order = np.random.default_rng([seed, stream]).permutation(n)
    y = labels[order]
    rank = np.empty(n, dtype=np.float64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        rank[where] = (np.arange(len(where)) + 0.5) / len(where)
    chosen = order[np.argsort(rank, kind="stable")[:size]]
    held = np.zeros(n, dtype=bool)
    held[chosen] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def split_hash(name: str, seed: int, val_ids: np.ndarray, test_ids: np.ndarray) -> str:
    """16 hex digits of sha256 over (dataset name, split seed, val ids, test ids)."""
    h = hashlib.sha256(f"{name}:{seed}:".encode())
    h.update(np.ascontiguousarray(val_ids, dtype="<i8").tobytes())
    h.update(b"|")
    h.update(np.ascontiguousarray(test_ids, dtype="<i8").tobytes())
    return h.hexdigest()[:16]
