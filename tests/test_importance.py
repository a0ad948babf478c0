"""Which searched keys mattered: fANOVA over the finished trials, and no ranking at all
below the minimum number of trials."""

from __future__ import annotations

import random

from analysis.importance import MIN_TRIALS, format_importances, importances
from search_spaces import Domain

SEARCH = [
    ("model.embed_dim", Domain("grid", values=(32, 64))),
    ("model.num_heads", Domain("choice", values=(2, 4, 8))),
    ("optim.lr", Domain("loguniform", low=1.0e-4, high=1.0e-2)),
]


def _rows(n: int, seed: int = 0) -> list[dict]:
    """Trials whose accuracy follows the head count alone (plus a little noise)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        config = {
            "model.embed_dim": rng.choice([32, 64]),
            "model.num_heads": rng.choice([2, 4, 8]),
            "optim.lr": 10 ** rng.uniform(-4, -2),
        }
        accuracy = 0.5 + 0.05 * config["model.num_heads"] + rng.gauss(0, 0.005)
        rows.append({"status": "done", "config": config, "val_accuracy": accuracy})
    return rows


def test_the_key_that_drives_the_objective_carries_most_of_its_variance():
    found = importances(SEARCH, _rows(16), [("val_accuracy", "max")])["val_accuracy"]
    assert found["trials"] == 16
    values = found["values"]
    assert set(values) == {"model.embed_dim", "model.num_heads", "optim.lr"}
    assert abs(sum(values.values()) - 1) < 1e-6
    assert list(values)[0] == "model.num_heads" and values["model.num_heads"] > 0.7
    line = format_importances({"val_accuracy": found})[0]
    assert line.startswith("  val_accuracy (fANOVA, 16 trials): model.num_heads 0.")


def test_below_the_minimum_there_is_no_ranking_and_only_finished_trials_count():
    rows = _rows(MIN_TRIALS)
    rows[0]["status"] = "error"  # failed, interrupted or stopped trials are not evidence
    rows[1]["val_accuracy"] = float("nan")
    found = importances(SEARCH, rows, [("val_accuracy", "max")])["val_accuracy"]
    assert "values" not in found
    assert found["note"] == f"not enough trials ({MIN_TRIALS - 2} finished, at least {MIN_TRIALS})"


def test_an_objective_that_never_moves_is_said_so():
    rows = _rows(MIN_TRIALS + 2)
    for r in rows:
        r["val_accuracy"] = 0.9
    found = importances(SEARCH, rows, [("val_accuracy", "max")])["val_accuracy"]
    assert found["note"] == "every trial has the same val_accuracy"
