"""What the sweep prints while it runs: a compact status table of the unfinished trials at
most every `every_s` seconds, and one line per trial that ends (the final summary lists
them all). Ray's own output (worker lines, Tune's
per-trial boxes) stays in Ray's log files unless `--verbose`.

    12:03:24  2 running, 1 pending, 1 finished
      trial        status   model.embed_dim  model.num_heads  epoch  val_acc  ETA
      5d5f1_00003  running  64               4                22/25  0.9778   0:03
      5d5f1_00002  pending  64               2                -/25   -        -
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

from analysis.runs import FAILURE_MESSAGE_TAG, FAILURE_TAG

# Loggers whose INFO/WARNING lines only repeat what the sweep prints itself: a new sqlite
# store's table creation, Ray's note that token authentication is on (the secure default).
QUIET_LOGGERS = (
    "mlflow.store.db.utils",
    "alembic.runtime.migration",
    "ray._private.authentication.authentication_token_setup",
    "optuna",  # "study created / using an existing study", "Trial N finished ..." per trial
)


@contextmanager
def quiet_libraries(verbose: bool):
    """Raise the chatty libraries' loggers to ERROR for the block (all of them: `verbose`)."""
    loggers = [] if verbose else [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_table(rows: list[dict[str, str]], columns: list[str]) -> list[str]:
    """Left-aligned columns, widths from the header and the cells."""
    widths = [max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for r in rows:
        lines.append("  " + "  ".join(r.get(c, "").ljust(w) for c, w in zip(columns, widths)))
    return [line.rstrip() for line in lines]


class StatusTable(Callback):
    """Driver-side: prints the table at most every `every_s` seconds while trials report,
    and a line when a trial ends. `epochs` is the base config's epoch count (a searched
    `optim.epochs` overrides it per trial)."""

    def __init__(self, searched: list[str], epochs: int, every_s: float = 30.0) -> None:
        self.searched, self.epochs, self.every_s = searched, epochs, every_s
        self.last_print = -math.inf
        self.latest: dict[str, dict] = {}  # trial id -> its latest result (Tune updates
        # trial.last_result only after the callbacks have seen a result)

    def _last(self, trial) -> dict:
        return self.latest.get(trial.trial_id) or trial.last_result or {}

    def _row(self, trial) -> dict[str, str]:
        last = self._last(trial)
        total = int(trial.config.get("optim.epochs", self.epochs))
        epoch = last.get("epoch")
        row = {"trial": str(trial.trial_id), "status": trial.status.lower()}
        for key in self.searched:
            row[key] = _value(trial.config.get(key, ""))
        row["epoch"] = f"{epoch}/{total}" if epoch is not None else f"-/{total}"
        val = last.get("val_accuracy")
        row["val_acc"] = f"{val:.4f}" if isinstance(val, float) else "-"
        per_epoch = last.get("epoch_seconds")  # training time alone: start-up is not repeated
        if trial.status == "RUNNING" and epoch and per_epoch:
            row["ETA"] = _eta(per_epoch * (total - epoch))
        else:
            row["ETA"] = "-"
        return row

    def lines(self, trials: list) -> list[str]:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status.lower()] = counts.get(t.status.lower(), 0) + 1
        order = ("running", "pending", "paused", "terminated", "error")
        words = {"terminated": "finished", "error": "errored"}
        head = ", ".join(f"{counts[s]} {words.get(s, s)}" for s in order if s in counts)
        columns = ["trial", "status", *self.searched, "epoch", "val_acc", "ETA"]
        rows = [self._row(t) for t in trials if t.status not in ("TERMINATED", "ERROR")]
        return [f"{time.strftime('%H:%M:%S')}  {head}", *format_table(rows, columns)]

    def _print(self, trials: list) -> None:
        self.last_print = time.monotonic()
        print("\n".join(self.lines(trials)), flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.latest[trial.trial_id] = result
        if time.monotonic() - self.last_print >= self.every_s:
            self._print(trials)

    def _ended(self, trial, how: str) -> None:
        last = self._last(trial)
        if last.get(FAILURE_TAG):  # the worker's report of a failure no retry heals
            message = last.get(FAILURE_MESSAGE_TAG, "")
            print(
                f"trial {trial.trial_id} failed for good ({last[FAILURE_TAG]}), not retried:"
                f" {message}",
                flush=True,
            )
            return
        val = last.get("val_accuracy")
        shown = f"val_accuracy {val:.4f}" if isinstance(val, float) else "no result"
        print(
            f"trial {trial.trial_id} {how}: {shown} after {last.get('epoch', 0)} epoch(s)",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "errored")
