"""Which searched keys mattered: for each objective, fANOVA's share of the objective's
variance explained by each key over a sweep's finished trials (Optuna's evaluator, fitted
on the trials as they are, whatever searcher chose them).

Below MIN_TRIALS finished trials the forest has too little to split on, and the figures
would be noise presented as a ranking: the result then says "not enough trials".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

MIN_TRIALS = 8
EVALUATOR = "fANOVA"


def optuna_distribution(d: Any):
    """A searched key's domain (search_spaces.Domain: kind, values, low, high) as Optuna's."""

    if d.kind in ("choice", "grid"):
        return CategoricalDistribution(list(d.values or ()))
    if d.kind == "randint":  # both bounds included, as in the spec
        return IntDistribution(int(d.low), int(d.high))
    return FloatDistribution(float(d.low), float(d.high), log=d.kind == "loguniform")


def _usable(row: dict[str, Any], metric: str, keys: Sequence[str]) -> bool:
    value = row.get(metric)
    return (
        row.get("status") == "done"
        and isinstance(value, int | float)
        and math.isfinite(value)
        and all(k in row["config"] for k in keys)
    )


def importances(
    search: Sequence[tuple[str, Any]],
    rows: list[dict[str, Any]],
    objectives: Sequence[tuple[str, str]],
    *,
    min_trials: int = MIN_TRIALS,
) -> dict[str, dict[str, Any]]:
    """objective -> {"trials": n, "values": {key: importance, ...}} (the importances sum to
    1, largest first), or {"trials": n, "note": why there are none}."""
    keys = [key for key, d in search if not (d.values is not None and len(d.values) < 2)]
    out: dict[str, dict[str, Any]] = {}
    for metric, mode in objectives:
        usable = [r for r in rows if _usable(r, metric, keys)]
        entry: dict[str, Any] = {"trials": len(usable), "evaluator": EVALUATOR}
        if not keys:
            entry["note"] = "nothing searched"
        elif len(usable) < min_trials:
            entry["note"] = f"not enough trials ({len(usable)} finished, at least {min_trials})"
        elif len({r[metric] for r in usable}) < 2:
            entry["note"] = f"every trial has the same {metric}"
        else:
            entry["values"] = _fanova(search, keys, usable, metric, mode)
        out[metric] = entry
    return out


def _fanova(search, keys, usable, metric: str, mode: str) -> dict[str, float]:

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line

    domains = dict(search)
    distributions = {k: optuna_distribution(domains[k]) for k in keys}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for r in usable:
        study.add_trial(
            optuna.trial.create_trial(
                params={k: r["config"][k] for k in keys},
                distributions=distributions,
                value=float(r[metric]),
            )
        )
    found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    return {k: float(v) for k, v in found.items()}


def format_importances(found: dict[str, dict[str, Any]]) -> list[str]:
    """Lines for the console: one per objective."""
    lines = []
    for metric, entry in found.items():
        if "values" in entry:
            ranked = ", ".join(f"{k} {v:.2f}" for k, v in entry["values"].items())
            lines.append(f"  {metric} ({entry['evaluator']}, {entry['trials']} trials): {ranked}")
        else:
            lines.append(f"  {metric}: {entry['note']}")
    return lines
