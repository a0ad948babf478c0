"""Measuring a committee: run the selector on validation views, then read the members' and the
committee's test accuracy once (SPEC section 6). Pure: no MLflow, no files.

"Gain over best" is the committee's test accuracy minus that of the member with the best
*validation* accuracy (picking the best member by test would peek).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis.committee.select import (
    Candidate,
    Combine,
    Selection,
    accuracy,
    combine,
    committee_accuracy,
    diversity_matrices,
    mean_pairwise,
    select,
)


@dataclass(frozen=True)
class Report:
    """The committee measured: validation figures from selection, test figures once."""

    members: list[Candidate]
    selection: Selection
    member_val: list[float]
    member_test: list[float]
    val_accuracy: float
    test_accuracy: float
    gain_over_best: float  # test, vs the member with the best validation accuracy
    val_gain_over_best: float
    diversity: dict[str, float | None]  # mean over member pairs, unscaled
    member_diversity: dict[str, list[float | None]]  # per member: mean to the others


def choose(
    candidates: Sequence[Candidate],
    *,
    size: int | None,
    max_size: int,
    tolerance: float | None,
    diversity: Sequence[str],
    combine_how: Combine,
) -> Selection:
    """Run the selector on the candidates' validation views: no test array is passed on."""
    return select(
        [c.val_view() for c in candidates],
        size=size,
        max_size=max_size,
        tolerance=tolerance,
        diversity=diversity,
        combine_how=combine_how,
    )


def hand_picked(candidates: Sequence[Candidate], combine_how: Combine) -> Selection:
    """--members: the given runs, best validation accuracy first, measured as a committee."""
    accs = [accuracy(c.val_logits, c.val_labels) for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (-accs[i], i))
    labels = candidates[0].val_labels
    curve = [
        committee_accuracy([candidates[i].val_logits for i in order[:k]], labels, combine_how)
        for k in range(1, len(order) + 1)
    ]
    return Selection(
        members=order,
        pool=order,
        tolerance=float("nan"),
        best_val=accs[order[0]],
        curve=curve,
    )


def measure(
    candidates: Sequence[Candidate], selection: Selection, diversity: Sequence[str], how: Combine
) -> Report:
    """Committee and member accuracies (test read here, once) and the diversity figures."""
    members = [candidates[i] for i in selection.members]
    logits_val = [m.val_logits for m in members]
    logits_test = [m.test_logits for m in members]
    member_val = [accuracy(m.val_logits, m.val_labels) for m in members]
    member_test = [accuracy(m.test_logits, m.test_labels) for m in members]
    val = accuracy(combine(logits_val, how), members[0].val_labels)
    test = accuracy(combine(logits_test, how), members[0].test_labels)
    raw = diversity_matrices([m.val_view() for m in members], diversity)
    idx = list(range(len(members)))
    per_member = {t: [mean_pairwise_to(m, i, idx) for i in idx] for t, m in raw.items()}
    return Report(
        members=members,
        selection=selection,
        member_val=member_val,
        member_test=member_test,
        val_accuracy=val,
        test_accuracy=test,
        gain_over_best=test - member_test[0],  # members[0] has the best val accuracy
        val_gain_over_best=val - member_val[0],
        diversity={t: mean_pairwise(m, idx) for t, m in raw.items()},
        member_diversity=per_member,
    )


def mean_pairwise_to(matrix: np.ndarray, i: int, idx: Sequence[int]) -> float | None:
    """Mean of a term from member i to the others, over those where it is available."""
    row = [matrix[i, j] for j in idx if j != i and np.isfinite(matrix[i, j])]
    return float(np.mean(row)) if row else None
