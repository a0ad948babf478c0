"""Each training worker's own output kept with its trial: prints, warnings and Python
logging (Ray Train's and ours) go to a file as well as where they went before (Ray's log
files, or the terminal with --verbose), and the file becomes the artifact
`logs/rank<k>-<node>-<pid>.log` of the trial's MLflow run when the attempt ends.

One file per rank and attempt: a restarted trial keeps its earlier attempts' logs (the pid
tells them apart). An attempt whose process is killed (its node lost, SIGKILL) uploads
nothing; its lines stay in that node's Ray log files. Output written by C code straight to the file descriptors (NCCL, a
segfault) is only in Ray's files.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient

from analysis.runs import LOGS_DIR


class Tee(io.TextIOBase):
    """A text stream that writes to each of `streams`."""

    def __init__(self, *streams: io.TextIOBase) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def fileno(self) -> int:  # what faulthandler and subprocess ask of sys.stderr
        return self.streams[0].fileno()

    def isatty(self) -> bool:
        return False


def log_name(rank: int, node_id: str) -> str:
    return f"rank{rank}-{node_id[:8]}-{os.getpid()}.log"


@contextmanager
def kept_output(path: Path) -> Iterator[Path]:
    """Within: this process's stdout and stderr also written to `path`, and so what every
    logging handler writing to them prints (Ray's own handlers hold the streams they were
    given, so each is pointed at the copy for the while; no handler is added, so nothing is
    written twice)."""
    out = path.open("a", buffering=1)
    before = sys.stdout, sys.stderr
    tees = {id(s): Tee(s, out) for s in before}
    swapped = [(h, h.stream) for h in _stream_handlers() if id(getattr(h, "stream", None)) in tees]
    for h, stream in swapped:
        h.setStream(tees[id(stream)])
    sys.stdout, sys.stderr = tees[id(before[0])], tees[id(before[1])]
    try:
        yield path
    finally:
        sys.stdout, sys.stderr = before
        for h, stream in swapped:
            h.setStream(stream)
        out.close()


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    return [
        h
        for lg in loggers
        for h in lg.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


@contextmanager
def trial_log(tracking_uri: str, run_id: str, rank: int, node_id: str) -> Iterator[None]:
    """Keep this worker's output while the block runs, then log it to the trial's run."""
    with tempfile.TemporaryDirectory(prefix="cct-worker-log-") as d:
        path = Path(d) / log_name(rank, node_id)
        try:
            with kept_output(path):
                yield
        finally:
            try:
                MlflowClient(tracking_uri).log_artifact(run_id, str(path), LOGS_DIR)
            except Exception as e:  # never hide the error that ended the attempt
                print(f"could not log this worker's output to MLflow: {e}", file=sys.stderr)
