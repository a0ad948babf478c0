"""Soft-committee selection, pure: no MLflow, no files, no test data (SPEC section 6).

    Candidate          one trained model: architecture, val/test logits, head label sets
    ValView            what a selector may see: the candidate minus every test array
    select(views, ...) -> Selection   the greedy diversity rule
    combine(logits, how)              the committee's output: mean softmax or mean logits

Candidates are the models whose validation accuracy is within `tolerance` of the best (by
default one binomial standard error, sqrt(p(1-p)/n_val), of the best model's accuracy, and
never less than one validation image, 1/n_val: at 100 % the standard error is 0 and the pool
would shrink to exact ties).
Greedy: start from the best, repeatedly add the candidate with the highest combined
diversity score against the members chosen so far; stop at `size` members, or (with
`max_size`) once adding the next one no longer raises the committee's validation accuracy.

Combined diversity score of a candidate c against members S:
    mean over the enabled terms t (available for c) of   mean_{s in S} D_t[c, s]
Each pairwise term D_t is in [0, 1] and divided by its largest value among the candidates so
that the terms weigh equally (raw prediction disagreement is ~0.05 while architecture
distance is ~0.5). The terms:
    architecture   mean over num_heads, head_dim, embed_dim, conv_blocks, depth of
                   |log2(1+a) - log2(1+b)| / (range of log2(1+x) over the candidates);
                   log scale because widths grow by factors. Plus a 0/1 term for variant.
    disagreement   fraction of validation samples whose argmax predictions differ.
    labelsets      symmetric best-match Jaccard distance between the two models' per-head
                   label sets (all analysed attention blocks pooled): for each head of one
                   model the closest head of the other, averaged both ways (a Chamfer
                   distance, so models with different head counts compare). Unavailable
                   when a model has no SHP summary; then the score of that candidate uses
                   the other terms only.
Ties go to the higher validation accuracy, then to the earlier candidate, so the result is
deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Combine = Literal["probs", "logits"]
DIVERSITY_TERMS = ("architecture", "disagreement", "labelsets")
ARCH_NUMERIC = ("num_heads", "head_dim", "embed_dim", "conv_blocks", "depth")
EPS = 1e-12  # float slack when comparing accuracies and scores


class CommitteeError(Exception):
    """Bad input for a committee; the message names the run or value (CLI: exit 2)."""


class TooFewCandidates(CommitteeError):
    """Fewer models within the tolerance of the best than the committee needs."""

    def __init__(self, found: int, need: int, tolerance: float, best: float, run_id: str) -> None:
        super().__init__(
            f"{found} candidate(s) within {100 * tolerance:.2f} points of the best validation "
            f"accuracy {100 * best:.2f}% ({run_id}); need {need}"
        )
        self.found, self.need = found, need


@dataclass(frozen=True)
class ValView:
    """The validation-only face of a candidate: all a selector ever receives."""

    run_id: str
    arch: dict[str, Any]
    val_logits: np.ndarray  # (n_val, classes) float32
    val_labels: np.ndarray  # (n_val,)
    label_sets: tuple[frozenset[int], ...] | None  # one per head, None without SHP output


@dataclass(frozen=True)
class Candidate:
    """One trained model of a sweep, with everything the report needs."""

    run_id: str
    arch: dict[str, Any]
    val_logits: np.ndarray
    val_labels: np.ndarray
    val_ids: np.ndarray
    test_logits: np.ndarray
    test_labels: np.ndarray
    test_ids: np.ndarray
    split_hash: str
    label_sets: tuple[frozenset[int], ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # trial id, checkpoint URI, ...

    def val_view(self) -> ValView:
        return ValView(self.run_id, self.arch, self.val_logits, self.val_labels, self.label_sets)


@dataclass(frozen=True)
class Selection:
    """The outcome of a selector, all on validation."""

    members: list[int]  # indices into the views, best model first
    pool: list[int]  # the candidates within tolerance
    tolerance: float  # as a fraction (0.006 = 0.6 points)
    best_val: float
    curve: list[float]  # committee val accuracy after 1, 2, ... members
    rejected: tuple[int, float] | None = None  # max_size mode: the member that did not help
    unavailable: dict[str, list[str]] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------
# committee arithmetic


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)  # stable: exp of non-positive numbers
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def combine(logits_list: Sequence[np.ndarray], how: Combine = "probs") -> np.ndarray:
    """The committee's (n, classes) output: mean of softmax ("probs") or of logits."""
    if not logits_list:
        raise CommitteeError("a committee needs at least one member")
    if how == "probs":
        return np.mean([softmax(x) for x in logits_list], axis=0)
    if how == "logits":
        return np.mean([x.astype(np.float64) for x in logits_list], axis=0)
    raise CommitteeError(f"combine {how!r}: choose probs or logits")


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax is the label (first maximum wins ties)."""
    return float((np.argmax(scores, axis=1) == labels).mean())


def committee_accuracy(
    logits_list: Sequence[np.ndarray], labels: np.ndarray, how: Combine = "probs"
) -> float:
    return accuracy(combine(logits_list, how), labels)


def default_tolerance(best_val: float, n_val: int) -> float:
    """One binomial standard error of the best model's validation accuracy (SPEC 6), and at
    least one validation image."""
    return max(math.sqrt(best_val * (1.0 - best_val) / n_val), 1.0 / n_val)


# --------------------------------------------------------------------------------------
# checks


def candidate_pool(
    accs: Sequence[float], n_val: int, tolerance: float | None = None
) -> tuple[list[int], float]:
    """The indices of the validation accuracies within `tolerance` (a fraction; None: one
    binomial SE) of the best, and that tolerance: the committee's candidates."""
    best = max(accs)
    tol = default_tolerance(best, n_val) if tolerance is None else tolerance
    return [i for i, a in enumerate(accs) if a >= best - tol - EPS], tol


def check_same_split(candidates: Sequence[Candidate], reference: int = 0) -> None:
    """Refuse, naming them, candidates whose split hash or sample ids differ from the
    reference's: their logits would not describe the same images in the same order."""
    ref = candidates[reference]
    bad = []
    for c in candidates:
        why = []
        if c.split_hash != ref.split_hash:
            why.append(f"split hash {c.split_hash!r} != {ref.split_hash!r}")
        if not np.array_equal(c.val_ids, ref.val_ids):
            why.append("validation sample ids differ")
        if not np.array_equal(c.test_ids, ref.test_ids):
            why.append("test sample ids differ")
        if why:
            bad.append(f"{c.run_id} ({', '.join(why)})")
    if bad:
        raise CommitteeError(
            f"runs not on the split of {ref.run_id}: {'; '.join(bad)}; "
            "committee members must share one validation/test split"
        )


# --------------------------------------------------------------------------------------
# pairwise diversity terms, each (n, n) with values in [0, 1] or NaN when unavailable


def architecture_distance(archs: Sequence[dict[str, Any]]) -> np.ndarray:
    n = len(archs)
    parts = []
    for key in ARCH_NUMERIC:
        vals = [a.get(key) for a in archs]
        if any(v is None for v in vals):
            continue  # unknown for some model: leave the field out for everyone
        x = np.log2(1.0 + np.asarray(vals, dtype=np.float64))
        span = x.max() - x.min()
        parts.append(np.abs(x[:, None] - x[None, :]) / span if span > 0 else np.zeros((n, n)))
    variants = [str(a.get("variant")) for a in archs]
    parts.append(np.array([[float(u != v) for v in variants] for u in variants]))
    return np.mean(parts, axis=0)


def disagreement(views: Sequence[ValView]) -> np.ndarray:
    preds = np.stack([np.argmax(v.val_logits, axis=1) for v in views])  # (n, n_val)
    return (preds[:, None, :] != preds[None, :, :]).mean(axis=2)


def _jaccard_distance(a: frozenset[int], b: frozenset[int]) -> float:
    union = len(a | b)
    return 0.0 if union == 0 else 1.0 - len(a & b) / union


def label_set_distance(a: Sequence[frozenset[int]], b: Sequence[frozenset[int]]) -> float:
    """Symmetric best-match (Chamfer) Jaccard distance between two models' head label sets."""
    if not a or not b:
        return float("nan")
    d = np.array([[_jaccard_distance(x, y) for y in b] for x in a])  # (heads_a, heads_b)
    return 0.5 * (d.min(axis=1).mean() + d.min(axis=0).mean())


def label_set_matrix(views: Sequence[ValView]) -> np.ndarray:
    n = len(views)
    out = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            a, b = views[i].label_sets, views[j].label_sets
            if a is not None and b is not None:
                out[i, j] = 0.0 if i == j else label_set_distance(a, b)
    return out


def diversity_matrices(views: Sequence[ValView], terms: Sequence[str]) -> dict[str, np.ndarray]:
    """The enabled pairwise terms, unscaled (what the report prints)."""
    unknown = sorted(set(terms) - set(DIVERSITY_TERMS))
    if unknown:
        raise CommitteeError(
            f"diversity terms {','.join(unknown)}: choose from {', '.join(DIVERSITY_TERMS)}"
        )
    makers = {
        "architecture": lambda: architecture_distance([v.arch for v in views]),
        "disagreement": lambda: disagreement(views),
        "labelsets": lambda: label_set_matrix(views),
    }
    return {t: makers[t]() for t in DIVERSITY_TERMS if t in terms}


def _scaled(matrix: np.ndarray) -> np.ndarray:
    off = matrix[~np.eye(len(matrix), dtype=bool)]
    off = off[np.isfinite(off)]
    top = off.max() if off.size else 0.0
    return matrix / top if top > 0 else np.where(np.isfinite(matrix), 0.0, np.nan)


def diversity_score(scaled: dict[str, np.ndarray], c: int, members: Sequence[int]) -> float:
    """Mean over the terms available for c of its mean scaled distance to the members."""
    vals = []
    for m in scaled.values():
        row = m[c, list(members)]
        if np.all(np.isfinite(row)):
            vals.append(float(row.mean()))
    return float(np.mean(vals)) if vals else 0.0


def mean_pairwise(matrix: np.ndarray, members: Sequence[int]) -> float | None:
    """Mean of a term over the member pairs where it is available (label sets may be
    missing for some members); None when no pair has it."""
    idx = list(members)
    vals = [matrix[i, j] for k, i in enumerate(idx) for j in idx[k + 1 :]]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------------------
# the selector


def select(
    views: Sequence[ValView],
    *,
    size: int | None = None,
    max_size: int = 5,
    tolerance: float | None = None,
    diversity: Sequence[str] = DIVERSITY_TERMS,
    combine_how: Combine = "probs",
) -> Selection:
    """Greedy diverse committee from validation data only (see the module docstring).

    `size` fixes the number of members; otherwise up to `max_size` members are taken while
    each one raises the committee's validation accuracy (a committee has at least two
    members then). `tolerance` is a fraction (0.01 = 1 point); None means one binomial SE."""
    for v in views:
        if not isinstance(v, ValView):  # structural guarantee: no test arrays get in
            raise TypeError(f"select() takes ValView, got {type(v).__name__}")
    if not views:
        raise CommitteeError("no candidate runs")
    if size is not None and size < 1:
        raise CommitteeError(f"size {size}: must be >= 1")
    if size is None and max_size < 2:
        raise CommitteeError(f"max_size {max_size}: must be >= 2")
    accs = [accuracy(v.val_logits, v.val_labels) for v in views]
    best = int(np.argmax(accs))  # first maximum: ties go to the earlier candidate
    pool, tol = candidate_pool(accs, len(views[best].val_labels), tolerance)
    need = size if size is not None else 2
    if len(pool) < need:
        raise TooFewCandidates(len(pool), need, tol, accs[best], views[best].run_id)

    sub = [views[i] for i in pool]  # terms are scaled over the candidates only
    raw = diversity_matrices(sub, diversity)
    scaled = {t: _scaled(m) for t, m in raw.items()}
    local = [pool.index(best)]
    curve = [accs[best]]
    rejected = None
    limit = size if size is not None else max_size
    while len(local) < min(limit, len(pool)):
        rest = [c for c in range(len(pool)) if c not in local]
        # highest score, then higher val accuracy, then earlier candidate
        pick = max(rest, key=lambda c: (diversity_score(scaled, c, local), accs[pool[c]], -c))
        acc = committee_accuracy(
            [sub[i].val_logits for i in [*local, pick]], views[best].val_labels, combine_how
        )
        if size is None and len(local) >= 2 and acc <= curve[-1] + EPS:
            rejected = (pool[pick], acc)
            break
        local.append(pick)
        curve.append(acc)
    unavailable = {}
    if "labelsets" in raw:
        unavailable["labelsets"] = [v.run_id for v in sub if v.label_sets is None]
    return Selection(
        members=[pool[i] for i in local],
        pool=pool,
        tolerance=tol,
        best_val=accs[best],
        curve=curve,
        rejected=rejected,
        unavailable=unavailable,
    )
