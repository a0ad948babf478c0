"""The sweep's own console: the status table of unfinished trials, its pace, and the line
each ended trial gets (a failure no retry heals says why)."""

from __future__ import annotations

from types import SimpleNamespace

from orchestrator import callbacks
from orchestrator.callbacks import StatusTable
from orchestrator.console import format_table


def _trial(trial_id, status, heads, last=None):
    return SimpleNamespace(
        trial_id=trial_id,
        status=status,
        config={"model.num_heads": heads, "optim.lr": 5.0e-4},
        last_result=last,
    )


def test_the_table_lists_unfinished_trials_with_their_values_epochs_and_eta():
    table = StatusTable(["model.num_heads", "optim.lr"], epochs=25)
    trials = [
        _trial("a", "RUNNING", 2, {"epoch": 5, "val_accuracy": 0.5, "epoch_seconds": 3.0}),
        _trial("b", "PENDING", 4),
        _trial("c", "TERMINATED", 8, {"epoch": 25, "val_accuracy": 0.9}),
    ]
    head, header, *rows = table.lines(trials)
    assert head.endswith("1 running, 1 pending, 1 finished")
    assert header.split() == ["trial", "status", "model.num_heads", "optim.lr", "epoch",
                              "val_acc", "ETA"]  # fmt: skip
    assert [r.split() for r in rows] == [
        ["a", "running", "2", "0.0005", "5/25", "0.5000", "1:00"],  # 20 epochs x 3 s
        ["b", "pending", "4", "0.0005", "-/25", "-", "-"],
    ]  # the finished trial is left to the final summary
    assert rows[0].index("5/25") == rows[1].index("-/25") == header.index("epoch")  # aligned


def test_a_result_is_shown_before_tune_stores_it_and_the_table_comes_at_most_every_interval(
    monkeypatch, capsys
):
    now = [100.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    table = StatusTable(["model.num_heads"], epochs=10, every_s=30)
    a = _trial("a", "RUNNING", 2)  # Tune has not yet set last_result
    table.on_trial_result(1, [a], a, {"epoch": 1, "val_accuracy": 0.25, "epoch_seconds": 2.0})
    first = capsys.readouterr().out
    assert "1/10" in first and "0.2500" in first and "0:18" in first
    now[0] += 29
    table.on_trial_result(2, [a], a, {"epoch": 2, "val_accuracy": 0.5, "epoch_seconds": 2.0})
    assert capsys.readouterr().out == ""  # within the interval
    now[0] += 1
    table.on_trial_result(3, [a], a, {"epoch": 3, "val_accuracy": 0.6, "epoch_seconds": 2.0})
    assert "3/10" in capsys.readouterr().out


def test_an_ended_trial_gets_one_line_and_a_failure_says_why(capsys):
    table = StatusTable([], epochs=10)
    done = _trial("a", "TERMINATED", 2, {"epoch": 10, "val_accuracy": 0.875})
    table.on_trial_complete(1, [done], done)
    assert capsys.readouterr().out == "trial a finished: val_accuracy 0.8750 after 10 epoch(s)\n"
    bad = _trial("b", "TERMINATED", 2, {"epoch": 1, "failure_reason": "diverged",
                                        "failure_message": "loss is nan at epoch 1"})  # fmt: skip
    table.on_trial_complete(2, [bad], bad)
    assert capsys.readouterr().out == (
        "trial b failed for good (diverged), not retried: loss is nan at epoch 1\n"
    )


def test_columns_are_as_wide_as_their_widest_cell():
    lines = format_table([{"x": "1", "y": "long value"}, {"x": "22"}], ["x", "y"])
    assert lines == ["  x   y", "  1   long value", "  22"]
