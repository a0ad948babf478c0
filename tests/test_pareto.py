"""The Pareto front (analysis/pareto.py), as the sweep summary and the report use it."""

from analysis.pareto import pareto_front

OBJECTIVES = (("val_accuracy", "max"), ("latency_ms", "min"))


def row(name, acc, lat):
    return {"trial_id": name, "val_accuracy": acc, "latency_ms": lat}


def test_front_keeps_exactly_the_non_dominated_trials():
    rows = [
        row("fast", 0.90, 1.0),
        row("accurate", 0.97, 3.0),
        row("balanced", 0.95, 2.0),
        row("dominated", 0.94, 2.5),  # worse than balanced on both
        row("tie", 0.95, 2.0),  # equal to balanced: neither dominates
        row("missing", None, 0.5),  # no accuracy: cannot be ranked
    ]
    names = {r["trial_id"] for r in pareto_front(rows, OBJECTIVES)}
    assert names == {"fast", "accurate", "balanced", "tie"}


def test_modes_are_respected():
    rows = [row("a", 0.9, 1.0), row("b", 0.8, 2.0)]
    flipped = (("val_accuracy", "min"), ("latency_ms", "max"))
    assert [r["trial_id"] for r in pareto_front(rows, OBJECTIVES)] == ["a"]
    assert [r["trial_id"] for r in pareto_front(rows, flipped)] == ["b"]
