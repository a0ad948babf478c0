"""The Pareto front: the one copy, used by the sweep summary and by the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

Row = TypeVar("Row", bound=Mapping[str, Any])
Objectives = Sequence[tuple[str, Literal["max", "min"]]]


def pareto_front(rows: Sequence[Row], objectives: Objectives) -> list[Row]:
    """The rows no other row dominates (at least as good on every objective, better on one),
    in their input order. A row missing an objective cannot be ranked and is left out."""

    def score(row: Row) -> list[float]:
        return [float(row[m]) if mode == "max" else -float(row[m]) for m, mode in objectives]

    scored = [(r, score(r)) for r in rows if all(r.get(m) is not None for m, _ in objectives)]
    return [
        r
        for r, s in scored
        if not any(
            all(o >= x for o, x in zip(other, s)) and any(o > x for o, x in zip(other, s))
            for _, other in scored
        )
    ]
