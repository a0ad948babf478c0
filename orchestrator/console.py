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
from contextlib import contextmanager
from typing import Any

from orchestrator import moved

# StatusTable moved to orchestrator.callbacks; a sweep saved before the move finds it here
# (orchestrator/moved.py).
__getattr__ = moved.moved_names(__name__)

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


def format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_eta(seconds: float | None) -> str:
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
